"""Cost of the Hugging Face families under the current search: split, units, and last_cost at B = 1, 2, 4, 8.

Tiny random-weight configs (tests/hf_archs.py; nothing is downloaded), 2 images, criterion entropy, one
thread. ``last_cost`` is in plain forwards of the network per image (FLOPs counted by the engine).

    python benchmarks/hf_cost.py
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import undiscard  # noqa: E402
from tests.hf_archs import CLASSIFIERS, SEGMENTERS, build  # noqa: E402

BUDGETS = (1, 2, 4, 8)


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'family':18} {'units':>5} {'searched':>8} {'cuts':>12}  " + " ".join(f"B={b:<5}" for b in BUDGETS)
          + "  split")
    for name in [*CLASSIFIERS, *SEGMENTERS]:
        net, x = build(name)
        task = "segmentation" if name in SEGMENTERS else None
        align = name != "mobilenet_v2_seg"  # see tests/test_hf_models.py
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = undiscard.wrap(net, budget=1, task=task, align=align, example_input=x[:1])
            costs = []
            for b in BUDGETS:
                with torch.no_grad():
                    model(x, budget=min(b, model.num_states))
                costs.append(model.last_cost)
        engine = model.prepare(x)
        print(f"{name:18} {len(model.units):5d} {len(model.search_units):8d} {str(engine.cut):>12}  "
              + " ".join(f"{c:7.2f}" for c in costs) + f"  {model.split_method}")


if __name__ == "__main__":
    main()
