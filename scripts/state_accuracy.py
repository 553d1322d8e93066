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
    python scripts/state_accuracy.py --model all --extend zero,replicate,background   # one row per model and mode

``--extend`` runs the states with each ``extend=`` mode (:mod:`undiscard.layers.extension`): what a phase
reads past the bottom/right edge.

Run from the checkout with the package installed (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from undiscard import zoo
from undiscard.data import load_train_val, normalize, resize, to_float
from undiscard.data.photos import load_photo, photo_names
from undiscard.evaluation.report import format_table, stamp
from undiscard.evaluation.runner import batches, evaluate_states
from undiscard.metrics import topk_correct
from undiscard.models.loading import load_model
from undiscard.wrapper import wrap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="zoo name (see `undiscard models`), efficientnet-lite0/1/2 (the bundled photos), or 'all' "
                         "for every zoo model")
    ap.add_argument("--limit", type=int, default=1000, help="validation images (default: 1000)")
    ap.add_argument("--units", default=None, help="comma-separated unit names (default: the zoo's searched units)")
    ap.add_argument("--extend", default="zero",
                    help="comma-separated extend= modes (zero, replicate, background); several: a summary per mode")
    ap.add_argument("--data", default=None, help="Fashion-MNIST idx directory (default: the Debian path)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = zoo.list_models() if args.model == "all" else [args.model.removeprefix("zoo:")]
    modes = [m.strip() for m in args.extend.split(",") if m.strip()]
    (_, _), (xv, yv) = load_train_val(args.data)
    results = []
    for name in names:
        for mode in modes:
            if name.startswith("efficientnet-lite"):
                results.append(_photo_states(name, mode, args.units))
            else:
                results.append(_states(name, mode, xv[:args.limit], torch.as_tensor(yv[:args.limit]), args.units))
    if args.json:
        print(json.dumps(stamp({"settings": vars(args), "rows": results}), indent=1, default=str))
    elif len(results) == 1:
        r = results[0]
        print(f"{r['model']} (extend={r['extend']}): units {', '.join(r['units'])}; {r['n']} validation images")
        print(format_table(r["rows"], [("state", "state"), ("dy", "dy"), ("dx", "dx"), ("top1", "top-1"),
                                       ("delta", "vs state 0"), ("translated", "translated")]))
    else:
        print(format_table([_summary(r) for r in results],
                           [("model", "model"), ("extend", "extend"), ("states", "states"), ("state0", "state 0"),
                            ("mean_state", "mean state"), ("mean_translated", "mean translated"),
                            ("gap", "gap"), ("worst_state", "worst state")]))


def _states(name: str, mode: str, images, y: torch.Tensor, units_arg: str | None) -> dict:
    loaded = load_model(f"zoo:{name}")
    chans = loaded.preprocess.in_chans
    raw = resize(to_float(images), loaded.preprocess.input_size)  # [0, 1]; 0 is the background
    x = normalize(raw, chans)
    units = units_arg.split(",") if units_arg else loaded.units
    net = loaded.model
    model = wrap(net, budget=1, units=units, extend=mode, example_input=x[:1])
    searched = model.search_units
    rows = evaluate_states(model, x, y)
    scale = raw.shape[-1] // searched[0].in_size[-1] if searched else 1  # image px per first-unit input px
    for r in rows:
        r["state"] = ",".join(map(str, r["state"]))
        r["translated"] = _translated_top1(net, raw, y, r["dy"] * scale, r["dx"] * scale, chans)
    return {"model": name, "extend": mode, "units": [u.name for u in searched], "n": len(x), "rows": rows}


def _photo_states(name: str, mode: str, units_arg: str | None, crops_per_photo: int = 24, seed: int = 0) -> dict:
    """An ImageNet model on crops of the bundled photos (no labels): "top-1" is agreement with the plain
    model's class for the crop, for each state and for the crop moved by the state's offset (a real crop
    of the photo, no fill)."""
    loaded = load_model(name)
    pre, size = loaded.preprocess, loaded.preprocess.input_size
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    photos = [load_photo(p) for p in photo_names()]
    margin = (photos[0].shape[-1] - size) // 2
    g = torch.Generator().manual_seed(seed)
    corners = [(k, int(a), int(b)) for k in range(len(photos))
               for a, b in (torch.randint(-margin // 2, margin // 2 + 1, (crops_per_photo, 2), generator=g)).tolist()]

    def crops(dy: int, dx: int) -> torch.Tensor:
        return torch.stack([photos[k][:, margin + a + dy:margin + a + dy + size, margin + b + dx:margin + b + dx + size]
                            for k, a, b in corners])

    x = (crops(0, 0) - mean) / std
    model = wrap(loaded.model, budget=1, units=units_arg.split(",") if units_arg else loaded.units, extend=mode,
                 example_input=x[:1])
    searched = model.search_units
    with torch.no_grad():
        y = torch.cat([loaded.model(x[s]).argmax(-1) for s in batches(len(x), 32)])
    rows = evaluate_states(model, x, y, batch_size=32)
    scale = size // searched[0].in_size[-1] if searched else 1
    for r in rows:
        r["state"] = ",".join(map(str, r["state"]))
        dy, dx = r["dy"] * scale, r["dx"] * scale
        moved = (crops(dy, dx) - mean) / std
        with torch.no_grad():
            agree = sum(int((loaded.model(moved[s]).argmax(-1) == y[s]).sum()) for s in batches(len(x), 32))
        r["translated"] = 100.0 * agree / len(x)
    return {"model": name, "extend": mode, "units": [u.name for u in searched], "n": len(x), "rows": rows}


def _summary(result: dict) -> dict:
    """Per model and mode: mean single-state top-1 against the mean top-1 of the same translations."""
    rows = result["rows"]
    mean = sum(r["top1"] for r in rows) / len(rows)
    translated = sum(r["translated"] for r in rows) / len(rows)
    return {"model": result["model"], "extend": result["extend"], "states": len(rows), "state0": rows[0]["top1"],
            "mean_state": mean, "mean_translated": translated, "gap": mean - translated,
            "worst_state": min(r["top1"] for r in rows)}


@torch.no_grad()
def _translated_top1(net: torch.nn.Module, raw: torch.Tensor, y: torch.Tensor, dy: int, dx: int, chans: int) -> float:
    """Top-1 of the plain network on ``raw`` moved up by ``dy`` and left by ``dx`` pixels, zero fill."""
    moved = F.pad(raw, (0, dx, 0, dy))[..., dy:, dx:]
    correct = sum(topk_correct(net(normalize(moved[s], chans)), y[s], 1) for s in batches(len(raw), 250))
    return 100.0 * correct / len(raw)


if __name__ == "__main__":
    main()
