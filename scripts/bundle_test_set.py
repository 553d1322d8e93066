"""Write the bundled Fashion-MNIST test set, undiscard/data/fashion_mnist_test.npz (np.savez_compressed).

Usage: python scripts/bundle_test_set.py [--root /usr/share/datasets/fashion-mnist]
(from the checkout, with the package installed: ``pip install -e .``)
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from undiscard.data.fashion_mnist import BUNDLED_TEST, DEBIAN_ROOT, load_fashion_mnist


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=DEBIAN_ROOT, help="directory with the idx files")
    args = ap.parse_args()
    try:
        images, labels = load_fashion_mnist("test", args.root)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    np.savez_compressed(BUNDLED_TEST, images=images.astype(np.uint8), labels=labels.astype(np.uint8))
    size = BUNDLED_TEST.stat().st_size
    print(f"wrote {BUNDLED_TEST} ({images.shape[0]} images, {size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
