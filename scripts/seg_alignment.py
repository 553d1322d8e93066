"""Does a state's segmentation output move by the state's offset? And what does offset alignment buy?

For each seg-zoo model: (1) for the first single states, the shift (-8..8 px) of the state's label map
that best matches the plain model's labels, beside the state's offset times the stride before the first
searched unit (what ``align=True`` shifts by); (2) mIoU of the plain model and of the search at ``--budget``
with ``align=True`` and ``align=False``, on the first ``--limit`` bundled test canvases.

    python scripts/seg_alignment.py --limit 200 --budget 4
"""
from __future__ import annotations

import argparse
import itertools
import warnings

import torch

import undiscard
from undiscard.data.segmentation import load_seg_test, to_input
from undiscard.data.shift import translate
from undiscard.geometry import state_offset
from undiscard.metrics.segmentation import confusion_matrix, mean_iou
from undiscard.zoo import segmentation as segzoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--models", default="seg_segformer,seg_deeplabv3plus")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    images, masks = load_seg_test()
    x, y = to_input(images[:args.limit]), torch.as_tensor(masks[:args.limit]).long()
    for name in args.models.split(","):
        net = segzoo.create_model(name)
        model = undiscard.wrap(net, budget=args.budget, task="segmentation", example_input=x[:1])
        units = model.search_units
        with torch.no_grad():
            plain = torch.cat([net(x[i:i + 50]).argmax(1) for i in range(0, len(x), 50)])
            print(f"{name}: units {[(u.name, u.rate) for u in units]}")
            for state in list(itertools.product(*(range(u.num_phases) for u in units)))[1:6]:
                out = model.run_state(x[:16], state).argmax(1)
                off = [int(o) for o in state_offset(state, [u.rate for u in units], [u.spatial for u in units])]
                best = min((float((translate(out, dy, dx, fill=-1) != plain[:16]).float().mean()), dy, dx)
                           for dy in range(-8, 9) for dx in range(-8, 9))
                print(f"  state {state}: offset {tuple(off)} (first-unit px); best-matching shift of its labels "
                      f"{best[1:]} px, disagreement {100 * best[0]:.1f}%")
            scores = {"plain": plain}
            for align in (True, False):
                m = undiscard.wrap(net, budget=args.budget, task="segmentation", align=align)
                scores[f"B={args.budget} align={align}"] = torch.cat([m(x[i:i + 50]).argmax(1)
                                                                     for i in range(0, len(x), 50)])
        for key, pred in scores.items():
            print(f"  {key}: mIoU {100 * float(mean_iou(confusion_matrix(pred, y, 11))):.2f}")


if __name__ == "__main__":
    main()
