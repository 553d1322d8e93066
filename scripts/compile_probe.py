"""What torch.compile does with a wrapped model, per backend (results/compile/README.md).

Three cases on a tiny CNN (three stride-2 convs, BatchNorm, a linear head; 3 images of 32x32), each after
``torch.compiler.reset()``: ``torch.compile(wrap(net, budget=1))``, ``torch.compile(wrap(net, budget=4))``
and ``wrap(torch.compile(net), budget=4)``, compared with the eager outputs (bit for bit, and the largest
difference). Prints one line per case: OK/FAIL, seconds (compilation included), the result.

    python scripts/compile_probe.py eager aot_eager inductor
"""
import sys
import time

import torch
from torch import nn

import undiscard

torch.set_num_threads(1)
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                    nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                    nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def probe(name: str, fn) -> None:
    torch.compiler.reset()
    t = time.time()
    try:
        with torch.no_grad():
            out = fn()
        print(f"{name}: OK {time.time() - t:.1f}s (equal, max abs diff) = {out}", flush=True)
    except Exception as e:  # noqa: BLE001 - a probe reports whatever fails
        print(f"{name}: FAIL {time.time() - t:.1f}s {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)


def compare(y: torch.Tensor, ref: torch.Tensor) -> tuple[bool, float]:
    return torch.equal(y, ref), float((y - ref).abs().max())


with torch.no_grad():
    ref1 = net(X)
    model = undiscard.wrap(net, budget=4)
    ref4 = model(X)
for backend in sys.argv[1:] or ["eager", "aot_eager", "inductor"]:
    probe(f"{backend}: compile(wrap(net, budget=1))",
          lambda: compare(torch.compile(undiscard.wrap(net, budget=1), backend=backend)(X), ref1))
    probe(f"{backend}: compile(wrap(net, budget=4))", lambda: compare(torch.compile(model, backend=backend)(X), ref4))
    probe(f"{backend}: wrap(compile(net), budget=4)",
          lambda: compare(undiscard.wrap(torch.compile(net, backend=backend), budget=4)(X), ref4))
