"""Rules of the package's structure, checked on its source with ``ast``.

- No module calls another module's private names: an attribute ``X._name`` where ``X`` is not
  ``self``/``cls``/``super()``, or ``from M import _name`` of a module of ours, fails — in the package,
  ``scripts/`` and ``benchmarks/``. A private *module* (``search/_engine.py``) may be imported by the modules
  of its own package (and their subpackages), never from outside it. Third-party privates the code must
  use (torch internals, torchvision's and EfficientNet-Lite's own methods that the splits call) are an
  explicit allow-list, each with its reason; a name on it may not be one of our own private names. Tests
  may look inside.
- No import circle among the package's modules, counting every import: at import time, inside
  functions (lazy) and under ``if TYPE_CHECKING:``.
- Packages by layer (:data:`LAYERS`, low to high): no import points up a layer, counting every import.
- The public surface is ``undiscard.__all__``: every name in it exists, and ``from undiscard import *``
  gives exactly those names.
- The product of rates is computed in one place, :mod:`undiscard.analysis.geometry`.
- Scripts and benchmarks import only the package (and third-party code): never ``tests``, another
  script, or the checkout through ``sys.path``.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "undiscard"
SCANNED = [PACKAGE, ROOT / "scripts", ROOT / "benchmarks"]

THIRD_PARTY_PRIVATES = {
    "_version": "torch.Tensor's version counter: chain.py detects in-place ops between module calls",
    "_C": "torch._C, the operator registry the torchvision::nms workaround queries (_compat.py)",
    "_dispatch_find_schema_or_throw": "torch._C's schema lookup, same workaround",
    "_assert": "torch._assert, what torch.fx records for an assert (graph_split.py)",
    "_forward_hooks": "torch.nn.Module's hook dict (hook_split.py, unshare.py)",
    "_forward_pre_hooks": "torch.nn.Module's pre-hook dict (unshare.py)",
    "_parameters": "torch.nn.Module's parameter dict (unshare.py copies a module shallowly)",
    "_buffers": "torch.nn.Module's buffer dict (unshare.py)",
    "_modules": "torch.nn.Module's child dict (unshare.py)",
    "_ConvNd": "torch's base class of every convolution (inputs.py finds a model's first one)",
    "_fields": "a namedtuple's field names, its public API (outputs.py returns results in a network's namedtuple)",
    "_transform_input": "torchvision GoogLeNet's input transform, the first stage of its split",
    "_process_input": "torchvision ViT's patchify, the first stage of its split",
    **{name: "efficientnet_lite_pytorch EfficientNet's own layers and settings (its split)"
       for name in ("_global_params", "_blocks", "_conv_stem", "_bn0", "_swish", "_conv_head", "_bn1", "_fc",
                    "_dropout", "_avg_pooling")},
}


def _files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if root.is_dir() for p in root.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _target(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` statement reads from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - (0 if is_package else 1)]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _own_private_names() -> set[str]:
    """Private names the package defines: functions, classes, module globals, attributes set on self."""
    names: set[str] = set()
    for path in _files(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {n for n in names if _private(n)}


def _violations() -> list[str]:
    found = []
    for path in _files(*SCANNED):
        module, is_package = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                    continue
                if node.attr not in THIRD_PARTY_PRIVATES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom):
                source = _target(module, is_package, node)
                if source == "undiscard" or source.startswith("undiscard."):
                    found += [f"{path.relative_to(ROOT)}:{node.lineno}: from {source} import {a.name}"
                              for a in node.names if _private(a.name)
                              and not _own_private_module(f"{source}.{a.name}", module, is_package)]
    return found


def _own_private_module(target: str, module: str, is_package: bool) -> bool:
    """``target`` is a private module of the package that ``module`` belongs to (or of a package above it)."""
    if not (ROOT / (target.replace(".", "/") + ".py")).exists():
        return False
    package = module if is_package else module.rsplit(".", 1)[0]
    owner = target.rsplit(".", 1)[0]
    return package == owner or package.startswith(owner + ".")


def test_no_module_calls_another_modules_private_names():
    assert _violations() == []


def test_the_allow_list_names_only_third_party_privates():
    assert sorted(set(THIRD_PARTY_PRIVATES) & _own_private_names()) == []


def test_the_private_name_rule_catches_a_cross_module_call(tmp_path, monkeypatch):
    """The rule itself: a module calling ``model._search`` is reported, ``self._x`` and ``super()._apply`` not."""
    pkg = tmp_path / "undiscard"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import _helper\n\ndef f(model, self):\n"
                              "    self._x\n    super()._apply\n    return model._search(1)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SCANNED", [pkg])
    assert _violations() == ["undiscard/a.py:1: from undiscard.b import _helper",
                             "undiscard/a.py:6: model._search"]


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements run when the module is imported (not those under ``if TYPE_CHECKING:``)."""
    out: list[ast.stmt] = []
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return out


def _import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports: at import time, or also inside functions (``lazy``)."""
    modules = {_module_name(p)[0]: p for p in _files(PACKAGE)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        tree = ast.parse(path.read_text())
        found = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] if lazy else \
            _top_level_imports(tree)
        for node in found:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                source = _target(name, is_package, node)
                subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [source] + subs  # from pkg import module
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_counting_lazy_and_type_checking_imports():
    graph = _import_graph(lazy=True)  # every import statement: top level, in functions, under TYPE_CHECKING
    assert "undiscard.wrapper" in graph and "undiscard.analysis.geometry" in graph["undiscard.wrapper"]
    assert _cycles(graph) == []
    assert _cycles(_import_graph()) == []


# The packages by layer, low to high: a module may import its own layer and those below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "_compat", "_eager", "_registry", "_atomic", "_files", "_progress", "_version"),  # foundations
    ("layers",),  # phases of one layer, phase plans
    ("analysis",),  # a model's units, geometry, outputs and splits
    ("data", "metrics"),  # images, labels, data sets; metrics as pure tensor functions
    ("search",),  # the engine, the search, criteria, state orders, adaptive selection
    ("tasks",),  # what differs between tasks: classification, segmentation, aggregation, attention
    ("wrapper", "settings", "selection", "_setup", "_testtime", "_inputs"),  # the wrapped model
    ("fitting", "tta"),  # calibration and aggregator training; image-space TTA
    ("evaluation", "models", "zoo"),  # evaluation runs, reports and plots; model loading and the zoo
    ("cli", "__main__"),  # the command line
]


def _layer(module: str) -> int | None:
    if module == "undiscard":
        return len(LAYERS)  # the public surface sits on top
    head = module.split(".")[1]
    return next((i for i, names in enumerate(LAYERS) if head in names), None)


def test_every_module_has_a_layer():
    assert sorted(m for m in _import_graph() if _layer(m) is None) == []


def test_no_import_points_up_a_layer():
    graph = _import_graph(lazy=True)
    up = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert up == []


def test_the_public_surface_is_all():
    import undiscard

    assert len(undiscard.__all__) == len(set(undiscard.__all__))
    assert [n for n in undiscard.__all__ if not hasattr(undiscard, n)] == []
    star: dict = {}
    exec("from undiscard import *", star)
    assert sorted(k for k in star if not k.startswith("__")) == sorted(n for n in undiscard.__all__
                                                                       if not n.startswith("__"))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_product_of_rates_is_computed_only_in_geometry():
    found = []
    for path in _files(PACKAGE):
        if path.name == "geometry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            products = (isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Mult)) or \
                (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("prod"))
            if products and any(w in ast.unparse(node) for w in ("rate", "num_phases")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == [], "use undiscard.analysis.geometry"


def _local_imports(path: Path, source: str | None = None) -> list[str]:
    """What a script imports from the checkout other than the package, and any ``sys.path`` edit
    (``source``: the script's text, default the file's)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else \
            ["." * node.level + (node.module or "")] if isinstance(node, ast.ImportFrom) else []
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: import {n}" for n in names
                  if n.startswith(".") or n.split(".")[0] in ("tests", "scripts", "benchmarks")
                  or (ROOT / "scripts" / f"{n.split('.')[0]}.py").exists()
                  or (ROOT / "benchmarks" / f"{n.split('.')[0]}.py").exists()]
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.path.insert", "sys.path.append"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_scripts_and_benchmarks_import_only_the_package():
    assert [f for path in _files(ROOT / "scripts", ROOT / "benchmarks") for f in _local_imports(path)] == []


def test_the_script_import_rule_catches_a_test_import():
    source = "import sys\nsys.path.insert(0, '..')\nfrom tests.hf_archs import build\nfrom compare_tta import x\n"
    found = _local_imports(ROOT / "scripts" / "probe.py", source)
    assert sorted(f.split(": ", 1)[1] for f in found) == ["import compare_tta", "import tests.hf_archs",
                                                           "sys.path.insert(0, '..')"]
