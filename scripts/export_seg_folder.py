"""Write the bundled segmentation test split as a segmentation folder, to try ``undiscard eval`` on.

    python scripts/export_seg_folder.py /tmp/fmnist_seg [--limit 200]
    undiscard eval --task segmentation --model zoo:seg_fpn --data /tmp/fmnist_seg --budget 1,4 --shift 4

``DIR/images/NNNN.png`` (96x96 grayscale canvases) and ``DIR/masks/NNNN.png`` (palette PNGs, class index
per pixel: 0 background, k + 1 Fashion-MNIST class k).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from undiscard.data import segmentation as segdata
from undiscard.data.seg_folder import write_seg_folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write (images/ and masks/ are created)")
    ap.add_argument("--limit", type=int, default=None, help="first N canvases (default: all 2,000)")
    args = ap.parse_args()
    images, masks = segdata.load_seg_test()
    n = len(images) if args.limit is None else min(args.limit, len(images))
    write_seg_folder(args.out, images[:n], masks[:n])
    print(f"wrote {n} canvases to {args.out}/images and {args.out}/masks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
