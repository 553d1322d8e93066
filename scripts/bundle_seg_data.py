"""Write the bundled segmentation test split, undiscard/data/fmnist_seg_test.npz (np.savez_compressed).

    python scripts/bundle_seg_data.py [--n 1000] [--seed 0] [--stats]

Canvases 0..n-1 of ``canvas_generator("test", seed)`` (objects from the Fashion-MNIST *test* images,
read from the bundled copy), stored as uint8 images and label maps with the seed, the generator config
and each canvas's object layout. ``--stats`` prints the per-pixel mean/std of 2,000 *train* canvases
(the MEAN/STD constants of undiscard.data.segmentation; needs the Debian Fashion-MNIST train files).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from undiscard.data import segmentation as seg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="number of test canvases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(seg.BUNDLED_SEG_TEST))
    ap.add_argument("--stats", action="store_true", help="print the train canvases' mean/std instead")
    args = ap.parse_args()
    try:
        if args.stats:
            x, y = seg.canvas_generator("train", seed=args.seed).batch(range(2000))
            x = x.astype(np.float64) / 255.0
            print(f"train canvases: mean {x.mean():.4f} std {x.std():.4f}, background share {(y == 0).mean():.4f}")
            return 0
        gen = seg.canvas_generator("test", seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seg.save_seg_split(args.out, gen, args.n)
    size = Path(args.out).stat().st_size
    images, masks = seg.load_seg_test(args.out)
    print(f"wrote {args.out} ({len(images)} canvases {images.shape[1]}x{images.shape[2]}, {size / 1e6:.2f} MB); "
          f"class pixel shares {np.round(np.bincount(masks.ravel(), minlength=seg.NUM_CLASSES) / masks.size, 4)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
