"""Cost of ``undiscard.wrap`` at test time, against the plain forward pass (docs/benchmarks.md).

For each model (random weights, eval mode, ``torch.no_grad``, one fixed random batch) this measures

- the plain forward pass: images per second (median over ``--repeats`` timed runs after one warm-up);
- for each budget B: images per second of ``wrap(net, budget=B)`` (``prepare`` is called first, so unit
  discovery, chain cutting and FLOP counting are not timed; one warm-up call), the wall-time multiple
  of the plain pass, the FLOP multiple that the library reports (``model.last_cost``), and the ideal
  shared-prefix multiple (``model.last_cost_ideal``: every state recomputed only from its last non-zero unit
  on);
- for reference, the naive approach (B independent full forwards per image, = B) and, as a constant
  (not measured here), the paper's released code: ~30x at budget 16 on ResNet-18/224.

The cost target is checked at the end: budget 16 costs at most 11x the plain forward on
ResNet-18/224 on a 2-core CPU, in wall time and in FLOPs.

``--criteria`` measures several search criteria (default ``entropy``, the lazy search: one state per
image and step); ``offset``/``grid``/``random`` evaluate the first B states of their order as a list, and
``calibrated`` evaluates the first B states of a fixed order (``--order``: a file from ``undiscard
calibrate``, or ``deepest``/``shallowest``: one-unit states of the deepest/shallowest searched unit
first — the cheapest and the dearest order of one-unit states, bounding what a calibrated order costs).

This is a script, not a test: nothing here asserts on timings. Run from the repository root::

    python benchmarks/bench_cost.py                       # defaults: resnet18, mobilenet_v2, convnext_atto
    python benchmarks/bench_cost.py --budgets 1,16 --repeats 1 --models resnet18 --markdown
    python benchmarks/bench_cost.py --json cost.json

Wall-time numbers are only meaningful on an otherwise idle machine; the script records the load
average before and after the run so a busy machine shows in the output.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

import undiscard
from undiscard.errors import UndiscardError
from undiscard.evaluation.report import stamp
from undiscard.models.loading import load_model

DEFAULT_MODELS = "resnet18,mobilenet_v2,convnext_atto"
PAPER_CODE_COST_B16 = 30.0  # the paper's released code, measured here on ResNet-18/224 at budget 16 (not re-measured)
BUSY_LOADAVG = 1.0  # 1-min load average before the run above which wall times are flagged as unreliable
BUSY_CPU_SHARE = 0.75  # ... or when the timed calls got less than this share of their threads' CPU time
TARGET = {"model": "resnet18", "size": 224, "budget": 16, "max_x": 11.0, "threads": 2}
SMALL_TARGETS = {2: 2.0, 4: 3.5}  # static criteria: budget -> max multiple of the plain forward (FLOPs and wall)


# --- models ------------------------------------------------------------------------------------
def build_model(spec: str) -> tuple[str, nn.Module]:
    """A randomly initialised model in eval mode from ``name``, ``torchvision:name`` or ``timm:name``
    (:func:`undiscard.models.loading.load_model`; ``tv:`` is short for ``torchvision:``).

    A bare name is looked up in torchvision first, then timm.
    """
    source, _, name = spec.rpartition(":")
    source = {"tv": "torchvision"}.get(source, source)
    if source not in ("torchvision", "timm", ""):
        raise SystemExit(f"bench_cost: unknown model source {source!r} in {spec!r} (use torchvision: or timm:)")
    for src in [source] if source else ["torchvision", "timm"]:
        try:
            return name, load_model(f"{src}:{name}").model
        except UndiscardError as err:
            if source:
                raise SystemExit(f"bench_cost: {err}") from None
    try:  # any other name load_model knows (efficientnet-lite0 with its real weights, zoo:NAME, ...)
        return name, load_model(name).model
    except UndiscardError:
        pass
    raise SystemExit(f"bench_cost: unknown model {spec!r} (not in torchvision or timm)")


# --- timing ------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of ``fn``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


class ExpansionCounter:
    """Counts, during one call, how many states the engine evaluates from each searched unit's cut.

    A cost hook (``Engine.register_cost_hook``) installed for the untimed warm-up call only, so timed
    calls are untouched.
    """

    def __init__(self, engine: Any):
        self.engine = engine
        self.parents: dict[int, int] = {}

    def __enter__(self) -> "ExpansionCounter":
        def counting(depth: int | None, rows: int, flops: float, ideal: float) -> None:
            if depth is not None:  # None: the root pass
                self.parents[depth] = self.parents.get(depth, 0) + rows

        self._handle = self.engine.register_cost_hook(counting)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def synthetic_order(kind: str, units: list[Any]) -> list[tuple[int, ...]]:
    """``deepest``/``shallowest``: the states with one non-zero unit, that unit deepest (shallowest) first,
    phases 1..R²-1 in turn; then every other state in row-major order. The all-zero state first."""
    import itertools

    depths = range(len(units) - 1, -1, -1) if kind == "deepest" else range(len(units))
    single = [tuple(p if d == e else 0 for e in range(len(units))) for d in depths for p in range(1, units[d].num_phases)]
    rest = [s for s in itertools.product(*[range(u.num_phases) for u in units]) if s not in single]
    return rest[:1] + single + rest[1:]


def make_wrapped(net: nn.Module, x: torch.Tensor, budget: int, criterion: str, order: str) -> Any:
    if criterion != "calibrated":
        return undiscard.wrap(net, budget=budget, criterion=criterion).eval()
    if order in ("deepest", "shallowest"):
        probe = undiscard.wrap(net, budget=1, example_input=x[:1])
        states: Any = synthetic_order(order, probe.search_units)
    else:
        states = order
    return undiscard.wrap(net, budget=budget, criterion="calibrated", order=states).eval()


def bench_model(spec: str, args: argparse.Namespace, budgets: list[int], log: Callable[[str], None]) -> dict:
    torch.manual_seed(0)
    name, net = build_model(spec)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    n = x.shape[0]
    result: dict[str, Any] = {"model": name, "spec": spec,
                              "params_m": sum(p.numel() for p in net.parameters()) / 1e6, "rows": []}

    def plain() -> None:
        net(x)

    with torch.no_grad():
        plain()  # warm-up
        first = [timed(plain) for _ in range(args.repeats)]
    plain_wall, plain_cpu = [t[0] for t in first], [t[1] for t in first]
    log(f"{name}: plain {n / statistics.median(plain_wall):.1f} img/s")

    for criterion, b in [(c, b) for c in args.criterion_list for b in budgets]:
        row: dict[str, Any] = {"budget": b, "naive_x": float(b), "criterion": criterion}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = make_wrapped(net, x, b, criterion, args.order)
                with torch.no_grad():
                    t0 = time.perf_counter()
                    engine = model.prepare(x)
                    row["prepare_s"] = time.perf_counter() - t0
                    with ExpansionCounter(engine) as counter:
                        model(x)  # warm-up, also counts the states evaluated per cut (untimed)
                    costs: list[tuple[float, float]] = []

                    def ours() -> None:
                        model(x)
                        costs.append((model.last_cost, model.last_cost_ideal))

                    # Plain and ours alternate, so a change in machine load hits both alike.
                    pairs = [(timed(plain), timed(ours)) for _ in range(args.repeats)]
            row["warnings"] = sorted({str(w.message) for w in caught})
        except UndiscardError as exc:  # e.g. a budget above the model's number of states
            row["error"] = str(exc)
            result["rows"].append(row)
            log(f"{name}: {criterion} budget {b}: {exc}")
            continue
        p_wall, p_cpu = [p[0][0] for p in pairs], [p[0][1] for p in pairs]
        o_wall, o_cpu = [p[1][0] for p in pairs], [p[1][1] for p in pairs]
        plain_wall += p_wall
        plain_cpu += p_cpu
        med = statistics.median(o_wall)
        flop_x, ideal_x = costs[-1]
        row.update({
            "times_s": o_wall, "cpu_s": o_cpu, "plain_times_s": p_wall, "median_s": med, "img_s": n / med,
            "wall_x": med / statistics.median(p_wall),
            "cpu_x": statistics.median(o_cpu) / statistics.median(p_cpu),
            "flop_x": flop_x, "ideal_x": ideal_x,
            "flop_x_spread": [min(c[0] for c in costs), max(c[0] for c in costs)],
        })
        if engine.flops is not None and b > 1:
            row["states_per_image_by_cut"] = {str(d): m / n for d, m in sorted(counter.parents.items())}
        if "info" not in result:
            result["info"] = engine_info(model, engine)
        result["rows"].append(row)
        log(f"{name}: {criterion} budget {b}: {row['img_s']:.1f} img/s, wall {row['wall_x']:.2f}x, "
            f"FLOP {flop_x:.2f}x, ideal {ideal_x:.2f}x")
    med = statistics.median(plain_wall)
    result["plain"] = {"times_s": plain_wall, "cpu_s": plain_cpu, "median_s": med, "img_s": n / med}
    return result


def engine_info(model: Any, engine: Any) -> dict:
    """What the library decided for this model: units, searched units, chain, per-state cost."""
    flops = engine.flops
    base = flops.baseline if flops else 0.0
    return {
        "units": [{"name": u.name, "rate": u.rate} for u in model.units],
        "searched": [u.name for u in model.search_units],
        "num_states": model.num_states,
        "chain_segments": len(engine.chain.segments),
        "chain_verified": bool(engine.chain.verified),
        "baseline_gflops_per_image": base / 1e9,
        # one state evaluated from each searched unit's cut, in baseline-forward equivalents
        "state_x": [engine.row_flops(engine.cut[i]) / base for i in range(len(model.search_units))] if base else [],
        "ideal_state_x": [flops.tail[i] / base for i in range(len(model.search_units))] if base else [],
    }


# --- environment and report --------------------------------------------------------------------
def environment(threads: int) -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    versions = {"torch": torch.__version__, "undiscard": undiscard.__version__}
    for mod in ("torchvision", "timm"):
        if mod in sys.modules:
            versions[mod] = sys.modules[mod].__version__
    return {
        **versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "threads_requested": threads,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def cpu_share(results: list[dict], threads: int) -> float:
    """Process CPU time over (wall time x threads) of all timed calls: near 1 when nothing else competed.

    Another busy process takes cores from the benchmark's threads, which lowers this share.
    """
    wall = cpu = 0.0
    for r in results:
        wall += sum(r["plain"]["times_s"])
        cpu += sum(r["plain"]["cpu_s"])
        for row in r["rows"]:
            wall += sum(row.get("times_s", []))
            cpu += sum(row.get("cpu_s", []))
    return cpu / (wall * threads) if wall else 0.0


def target_check(results: list[dict], env: dict, size: int) -> dict:
    """Is budget 16 at most 11x the plain forward on ResNet-18/224 (2 threads)?"""
    out: dict[str, Any] = dict(TARGET)
    row = None
    if size == TARGET["size"]:
        for r in results:
            if r["model"] == TARGET["model"]:
                row = next((x for x in r["rows"] if x["budget"] == TARGET["budget"] and "error" not in x
                            and x.get("criterion", "entropy") == "entropy"), None)
    if row is None:
        out["evaluated"] = False
        return out
    out.update({
        "evaluated": True,
        "wall_x": row["wall_x"], "flop_x": row["flop_x"], "ideal_x": row["ideal_x"],
        "wall_met": row["wall_x"] <= TARGET["max_x"], "flop_met": row["flop_x"] <= TARGET["max_x"],
        "threads_match": env["torch_threads"] == TARGET["threads"],
    })
    return out


def fmt_table(results: list[dict], markdown: bool) -> str:
    head = ["model", "criterion", "budget", "img/s", "wall x", "FLOP x", "ideal x", "naive x"]
    lines: list[list[str]] = []
    for r in results:
        lines.append([r["model"], "-", "plain", f"{r['plain']['img_s']:.1f}", "1.00", "1.00", "1.00", "1"])
        for row in r["rows"]:
            crit = row.get("criterion", "entropy")
            if "error" in row:
                lines.append([r["model"], crit, str(row["budget"]), "error", "-", "-", "-", f"{row['naive_x']:.0f}"])
            else:
                lines.append([r["model"], crit, str(row["budget"]), f"{row['img_s']:.1f}", f"{row['wall_x']:.2f}",
                              f"{row['flop_x']:.2f}", f"{row['ideal_x']:.2f}", f"{row['naive_x']:.0f}"])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]

    def render(cells: list[str]) -> str:
        parts = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)

    out = [render(head)]
    if markdown:
        out.append("|" + "|".join(("-" * (w + 1) + ":") if i >= 3 else ("-" * (w + 2))
                                  for i, w in enumerate(widths)) + "|")
    else:
        out.append("  ".join("-" * w for w in widths))
    out.extend(render(l) for l in lines)
    return "\n".join(out)


def fmt_report(report: dict, markdown: bool) -> str:
    env, cfg, tgt = report["environment"], report["config"], report["target"]
    bullet = "- " if markdown else ""
    out = []
    if markdown:
        out.append(f"### undiscard cost, batch {cfg['batch']}, {cfg['size']} px\n")
    out.append(fmt_table(report["results"], markdown))
    out.append("")
    for r in report["results"]:
        for row in r["rows"]:
            if "error" in row:
                out.append(f"{bullet}error: {r['model']}, budget {row['budget']}: {row['error']}")
            for w in row.get("warnings", []):
                out.append(f"{bullet}warning: {r['model']}, budget {row['budget']}: {w}")
    out.append(f"{bullet}torch {env['torch']}, {env['torch_threads']} threads "
               f"(interop {env['torch_interop_threads']}), {env['cpu_count']} CPUs "
               f"({env['cpu_affinity']} usable), {env['processor']}; batch {cfg['batch']}, {cfg['size']} px, "
               f"median of {cfg['repeats']} after 1 warm-up")
    la0, la1 = report["loadavg_before"], report["loadavg_after"]
    busy = report["busy"]
    out.append(f"{bullet}contention check: load average (1 min) before/after {la0[0]:.2f} / {la1[0]:.2f} "
               f"(after includes this run); timed calls got {100 * report['cpu_share']:.0f}% of "
               f"{env['torch_threads']} threads' CPU time"
               + (" -- the machine was busy: wall-time numbers are not reliable" if busy else ""))
    out.append(f"{bullet}naive x: B independent full forwards per image; the paper's released code was measured "
               f"here at ~{PAPER_CODE_COST_B16:.0f}x at budget 16 on ResNet-18/224 (a constant, not re-measured)")
    if tgt["evaluated"]:
        verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
        out.append(f"{bullet}target (budget {tgt['budget']} <= {tgt['max_x']:.0f}x plain on {tgt['model']}/"
                   f"{tgt['size']}, {tgt['threads']} cores): wall {tgt['wall_x']:.2f}x {verdict(tgt['wall_met'])}"
                   + (" (machine busy: not conclusive)" if busy else "") + "; "
                   f"FLOP {tgt['flop_x']:.2f}x {verdict(tgt['flop_met'])} (ideal {tgt['ideal_x']:.2f}x"
                   + ")"
                   + ("" if tgt["threads_match"] else f" -- measured with {env['torch_threads']} threads, "
                      f"not {tgt['threads']}"))
    else:
        out.append(f"{bullet}target (budget {tgt['budget']} on {tgt['model']}/{tgt['size']}): not evaluated in this run")
    for r in report["results"]:
        for row in r["rows"]:
            limit = SMALL_TARGETS.get(row["budget"])
            if limit is None or "error" in row:
                continue
            ok = lambda v: "met" if v <= limit else "NOT met"  # noqa: E731
            out.append(f"{bullet}static-criterion target, {r['model']} {row.get('criterion', 'entropy')} budget "
                       f"{row['budget']} <= {limit}x: FLOP {row['flop_x']:.2f}x {ok(row['flop_x'])}, wall "
                       f"{row['wall_x']:.2f}x {ok(row['wall_x'])}" + (" (machine busy)" if busy else ""))
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Cost of undiscard.wrap against the plain forward pass.")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help="comma-separated names; bare names are looked up in torchvision, then timm; "
                        "prefix with torchvision: or timm: to choose (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="images per batch (default: %(default)s)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default: %(default)s)")
    p.add_argument("--budgets", default="1,4,8,16", help="comma-separated budgets (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--criteria", default="entropy",
                   help="comma-separated search criteria (default: %(default)s; calibrated needs --order)")
    p.add_argument("--order", default="deepest",
                   help="calibrated: a state order file, or deepest / shallowest (see the module docstring)")
    p.add_argument("--json", metavar="PATH", help="also write the full results as JSON to PATH")
    p.add_argument("--markdown", action="store_true", help="print the report as GitHub markdown")
    args = p.parse_args(argv)
    try:
        args.budget_list = [int(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        p.error(f"--budgets must be comma-separated integers, got {args.budgets!r}")
    if not args.budget_list or min(args.budget_list) < 1:
        p.error("--budgets must be positive integers")
    for opt in ("batch", "size", "repeats", "threads"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt} must be >= 1")
    args.criterion_list = [c.strip() for c in args.criteria.split(",") if c.strip()]
    unknown = [c for c in args.criterion_list if c not in undiscard.search.criteria.CRITERIA]
    if unknown or not args.criterion_list:
        p.error(f"--criteria: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(undiscard.search.criteria.CRITERIA)}")
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.model_list:
        p.error("--models is empty")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:  # only settable before any inter-op work has run
        pass

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    loadavg_before = list(os.getloadavg())
    t0 = time.perf_counter()
    results = [bench_model(spec, args, args.budget_list, log) for spec in args.model_list]
    env = environment(args.threads)
    report = {
        "environment": env,
        "config": {"models": args.model_list, "batch": args.batch, "size": args.size,
                   "budgets": args.budget_list, "repeats": args.repeats, "warmup": 1,
                   "criteria": args.criterion_list, "order": args.order, "aggregate": "entropy", "dtype": "float32", "weights": "random"},
        "loadavg_before": loadavg_before,
        "loadavg_after": list(os.getloadavg()),
        "elapsed_s": time.perf_counter() - t0,
        "paper_code_cost_b16": PAPER_CODE_COST_B16,
        "results": results,
    }
    report["cpu_share"] = cpu_share(results, min(env["torch_threads"], env["cpu_affinity"] or env["cpu_count"] or 1))
    report["busy"] = loadavg_before[0] > BUSY_LOADAVG or report["cpu_share"] < BUSY_CPU_SHARE
    report["target"] = target_check(results, env, args.size)
    print(fmt_report(report, args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stamp(report), f, indent=2)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
