"""Does a state's segmentation output move by the state's offset? What the lineage rule says, what the
outputs show, and what each alignment buys.

For each seg-zoo model and each searched unit: whether the unit moves the output by the lineage rule
(:mod:`undiscard.tasks._dense_alignment`: every path from the input to the output runs through it), and, for the
states that change only that unit's phase, the shift (-8..8 px) of the state's label map that best
matches the plain model's labels on the first 16 canvases, beside the state's offset times the stride
before the first searched unit (what ``align="offset"`` shifts by) and what the lineage rule shifts by.
Then mIoU of the plain model and of the search at ``--budget`` with ``align=True`` (the lineage rule, the
default), ``align="offset"`` and ``align=False``, on the first ``--limit`` bundled test canvases.

    python scripts/seg_alignment.py --limit 200 --budget 4
"""
from __future__ import annotations

import argparse
import warnings

import torch

import undiscard
from undiscard.analysis.geometry import state_offset
from undiscard.data.segmentation import load_seg_test, to_input
from undiscard.data.shift import translate
from undiscard.metrics.segmentation import confusion_matrix, mean_iou
from undiscard.zoo import segmentation as segzoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--models", default="seg_segformer,seg_deeplabv3plus,seg_fpn")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    images, masks = load_seg_test()
    x, y = to_input(images[:args.limit]), torch.as_tensor(masks[:args.limit]).long()
    for name in args.models.split(","):
        net = segzoo.create_model(name)
        model = undiscard.wrap(net, budget=args.budget, task="segmentation", example_input=x[:1])
        units = model.search_units
        rates, spatial = [u.rate for u in units], [u.spatial for u in units]
        scale = x.shape[-1] // units[0].in_size[1]  # P: output pixels per pixel of the first unit's grid
        with torch.no_grad():
            plain = torch.cat([net(x[i:i + 50]).argmax(1) for i in range(0, len(x), 50)])
            moves = model.task.units_moving_output(model.prepare(x[:1]), net(x[:1]))
            print(f"{name}: searched units {[(u.name, u.rate) for u in units]}; lineage: moves the output "
                  f"{list(moves)}")
            for j, unit in enumerate(units):
                for phase in (1, unit.rate, unit.rate + 1):  # (0, 1), (1, 0), (1, 1)
                    state = tuple(phase if i == j else 0 for i in range(len(units)))
                    out = model.run_state(x[:16], state).argmax(1)
                    dy, dx = state_offset(state, rates, spatial)
                    best = min((float((translate(out, sy, sx, fill=-1) != plain[:16]).float().mean()), sy, sx)
                               for sy in range(-8, 9) for sx in range(-8, 9))
                    lineage = (scale * dy, scale * dx) if moves[j] else (0, 0)
                    print(f"  {unit.name} phase {phase}: offset x P = {(scale * dy, scale * dx)} px, lineage "
                          f"shift {lineage} px; best-matching shift of its labels {best[1:]} px "
                          f"(disagreement {100 * best[0]:.1f}%)")
            scores = {"plain": plain}
            for align in (True, "offset", False):
                m = undiscard.wrap(net, budget=args.budget, task="segmentation", align=align)
                scores[f"B={args.budget} align={align!r}"] = torch.cat([m(x[i:i + 50]).argmax(1)
                                                                       for i in range(0, len(x), 50)])
        for key, pred in scores.items():
            print(f"  {key}: mIoU {100 * float(mean_iou(confusion_matrix(pred, y, 11))):.2f}")


if __name__ == "__main__":
    main()
