"""How good is each single state of a zoo model? Top-1 of the network run at one fixed state.

Every state (one phase per searched unit) is a network the model was never evaluated as. This runs
each of them alone (``model.run_state``) on validation images held out from the Fashion-MNIST *train*
split (never the test set) and prints its top-1 beside the original model's (the all-zero state), with
its offset in pixels of the first searched unit's input. Beside each state, ``translated`` is the
original model on the same images translated up/left by that offset in image pixels (zero fill, as in
training): where a state is far below its translation, the state is not a shift the model has learnt
to handle. States far below state 0 are what a search over those units has to aggregate away; they
explain a model on which the search loses.

    python scripts/state_accuracy.py --model swin --limit 1000 [--units a,b] [--json]

Run from the checkout with the package installed (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from undiscard.data import load_train_val, normalize, resize, to_float
from undiscard.evaluation import batches, evaluate_states
from undiscard.metrics import topk_correct
from undiscard.models import load_model
from undiscard.report import format_table
from undiscard.wrapper import wrap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="zoo name (see `undiscard models`)")
    ap.add_argument("--limit", type=int, default=1000, help="validation images (default: 1000)")
    ap.add_argument("--units", default=None, help="comma-separated unit names (default: the zoo's searched units)")
    ap.add_argument("--data", default=None, help="Fashion-MNIST idx directory (default: the Debian path)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    (_, _), (xv, yv) = load_train_val(args.data)
    loaded = load_model(f"zoo:{args.model.removeprefix('zoo:')}")
    chans = loaded.preprocess.in_chans
    raw = resize(to_float(xv[:args.limit]), loaded.preprocess.input_size)  # [0, 1]; 0 is the background
    x = normalize(raw, chans)
    y = torch.as_tensor(yv[:args.limit])
    units = args.units.split(",") if args.units else loaded.units
    net = loaded.model
    model = wrap(net, budget=1, units=units, example_input=x[:1])
    searched = model.search_units
    rows = evaluate_states(model, x, y)
    scale = raw.shape[-1] // searched[0].in_size[-1] if searched else 1  # image px per first-unit input px
    for r in rows:
        r["state"] = ",".join(map(str, r["state"]))
        r["translated"] = _translated_top1(net, raw, y, r["dy"] * scale, r["dx"] * scale, chans)
    if args.json:
        print(json.dumps({"model": args.model, "units": [u.name for u in searched], "n": len(x), "rows": rows},
                         indent=1))
        return
    print(f"{args.model}: units {', '.join(u.name for u in searched)}; {len(x)} validation images")
    print(format_table(rows, [("state", "state"), ("dy", "dy"), ("dx", "dx"), ("top1", "top-1"),
                              ("delta", "vs state 0"), ("translated", "translated")]))


@torch.no_grad()
def _translated_top1(net: torch.nn.Module, raw: torch.Tensor, y: torch.Tensor, dy: int, dx: int, chans: int) -> float:
    """Top-1 of the plain network on ``raw`` moved up by ``dy`` and left by ``dx`` pixels, zero fill."""
    moved = F.pad(raw, (0, dx, 0, dy))[..., dy:, dx:]
    correct = sum(topk_correct(net(normalize(moved[s], chans)), y[s], 1) for s in batches(len(raw), 250))
    return 100.0 * correct / len(raw)


if __name__ == "__main__":
    main()
