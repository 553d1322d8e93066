"""Write the bundled segmentation test split (or the validation split) as a segmentation folder.

    python scripts/export_seg_folder.py /tmp/fmnist_seg [--limit 200]
    undiscard eval --task segmentation --model zoo:seg_fpn --data /tmp/fmnist_seg --budget 1,4 --shift 4
    python scripts/export_seg_folder.py /tmp/seg_val --split val --limit 500   # for undiscard calibrate

``--split val``: canvases generated (seeded, ``--seed``) from the 5,000 Fashion-MNIST *train* images held
out of training (the split the zoo's training validates on; needs the Fashion-MNIST idx files, ``--data``),
never the test images.

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
    ap.add_argument("--limit", type=int, default=None, help="first N canvases (default: all 2,000 test; val: 500)")
    ap.add_argument("--split", choices=("test", "val"), default="test")
    ap.add_argument("--seed", type=int, default=0, help="val: the canvas generator's seed (default 0, as training)")
    ap.add_argument("--data", default=None, help="val: Fashion-MNIST idx directory (default: the Debian path)")
    args = ap.parse_args()
    if args.split == "test":
        images, masks = segdata.load_seg_test()
        n = len(images) if args.limit is None else min(args.limit, len(images))
    else:
        n = 500 if args.limit is None else args.limit
        images, masks = segdata.canvas_generator("val", seed=args.seed, root=args.data).batch(range(n))
    write_seg_folder(args.out, images[:n], masks[:n])
    print(f"wrote {n} canvases to {args.out}/images and {args.out}/masks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
