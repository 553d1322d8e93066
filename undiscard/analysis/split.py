"""Splitting a classifier into ``features`` (a chain of stages) and ``head``.

Aggregation (docs/semantics.md, "Aggregation") averages feature maps from several states and then applies the model's head, so
every supported model needs ``logits == head(features(x))``. A :class:`Split` says how, for one model:

- ``stages``: callables applied in order to the input; their composition is ``features``. Where a stage
  is an ``nn.Module`` it may later be refined into its own sub-stages (see :mod:`undiscard.analysis._chain`), which
  is what lets the search recompute only the network after a unit.
- ``head``: maps the (native) features to logits.
- ``layout``: how native features map to the (N, C, h, w) maps that aggregation aligns:
  ``"nchw"``; ``"nhwc"`` (Swin); ``"vector"`` for (N, C) features (a ViT's class token), treated as
  1x1 maps that cannot be aligned; ``"tokens"`` for (N, P + h*w, C) token sequences (timm ViT-style
  models, EfficientFormer) — the last h*w tokens become a map (h, w from the last unit's output size),
  the P prefix tokens are aggregated with the same weights but never shifted. It is decided once, when
  the split is verified (:meth:`Split.settle`): a split that says ``"nchw"`` but gives 3-D features is
  ``"tokens"``, 2-D ones ``"vector"``; ``alignable`` says whether its maps are a real grid to align.
  :meth:`Split.to_maps`/:meth:`Split.from_maps` convert with it.
- ``method``: which of the rules below made it (for reports), with the split's own detail in parentheses.
- ``form``: the network's output type (:func:`undiscard.analysis.outputs.output_form`), to give results back in.

Splits are tried in order, and the first that reproduces the model is used:

1. ``features=``/``head=`` given to ``wrap()`` (used as given; an error if they do not reproduce it);
1b. for a dense task (``at_output``: segmentation, whose states combine the output logits themselves), the
   *output split*: the features are the model's selected output, the head is the identity — no head to
   re-run per state; a class registered with ``register_split(..., at_output=True)`` (Hugging Face
   segmenters, :mod:`undiscard.analysis._hf_splits`) gives its encoder as stages, otherwise :func:`output_split`;
2. the registry below, keyed by the model's exact class (torchvision classifiers, EfficientNet-Lite, Hugging
   Face classifiers in :mod:`undiscard.analysis._hf_splits`);
3. any timm model (``forward_features``/``forward_head``);
4. graph capture (:mod:`undiscard.analysis._graph_split`): the model's ``torch.fx`` graph, cut after the last
   spatial feature map; the head is the rest of the graph, whatever the model's code does there;
5. the hook fallback (:mod:`undiscard.analysis._hook_split`) for models fx cannot trace: the model's own forward,
   stopped at its last module that returns a feature map and resumed at cuts before the units and
   after that module (earlier module calls skipped), so states and the head cost what runs after them.

Every split is verified once on the first input: ``head(features(x))`` must equal the model's logits
bit for bit (same shape, dtype and values); a split that crashes or differs is skipped, and when none is
left :class:`SplitError` says what was tried and what to pass. The logits are the model's output
selected by :mod:`undiscard.analysis.outputs` (a dict's ``"logits"``, a tuple's element 0, ``output=``).

Flatten + fully-connected heads (``x.view(x.size(0), -1)`` then Linear) are not translation-invariant:
aligned aggregation (the default) shifts each state's map back by its offset before averaging, so the
head sees every state's features at the positions the original model computes them at (see
:mod:`undiscard.analysis._graph_split`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .._compat import class_path
from .._registry import Registry
from ..errors import UndiscardError
from ..layers.plans import phase_plan
from ._graph_split import GraphSplitError, graph_split
from ._hook_split import HookSplitError, hook_split
from ._split import Split, SplitError, Stage, from_map, to_map
from .outputs import OutputError, OutputSelector, output_form, select_output

__all__ = ["Split", "SplitError", "get_split", "output_split", "register_split", "registered_splits", "list_splits", "to_map",
           "from_map"]

SplitFactory = Callable[..., Split]  # (model) -> Split, or (model, example input) -> Split (with_input=True)
_SPLITS: Registry[tuple[SplitFactory, bool]] = Registry("split")  # class path -> (factory, with_input)
_OUTPUT_SPLITS: Registry[SplitFactory] = Registry("output split")  # class path -> factory


def register_split(*classes: str | type, with_input: bool = False, at_output: bool = False, replace: bool = False
                   ) -> Callable[[SplitFactory], SplitFactory]:
    """Register a split factory for model classes (classes, or their fully qualified names). ``with_input``:
    the factory also takes the example input batch (for splits whose stages depend on the input size).
    ``at_output``: a dense task's split (identity head, :func:`output_split`) for those classes, taking
    ``(model, example input, output selector)``, used instead of the model's forward as one stage. A class
    that has one already is refused unless ``replace``."""

    def deco(fn: SplitFactory) -> SplitFactory:
        if at_output:
            _OUTPUT_SPLITS.add(classes, fn, replace)
        else:
            _SPLITS.add(classes, (fn, with_input), replace)
        return fn

    return deco


def registered_splits() -> list[str]:
    """Fully qualified names of the model classes with a registered split (either kind), sorted."""
    return sorted({*_SPLITS.names(), *_OUTPUT_SPLITS.names()})


list_splits = registered_splits  # undiscard.list_splits()


def _children(model: nn.Module, names: Sequence[str]) -> list[Stage]:
    return [getattr(model, n) for n in names]


def _pool_flatten(pool: Callable[[Tensor], Tensor], fc: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda f: fc(torch.flatten(pool(f), 1))


TV = "torchvision.models."


@register_split(TV + "resnet.ResNet")
def _tv_resnet(m: nn.Module) -> Split:
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return Split(_children(m, names), _pool_flatten(m.avgpool, m.fc))


@register_split(TV + "regnet.RegNet")
def _tv_regnet(m: nn.Module) -> Split:
    return Split(_children(m, ["stem", "trunk_output"]), _pool_flatten(m.avgpool, m.fc))


@register_split(TV + "mobilenetv2.MobileNetV2")
def _tv_mnv2(m: nn.Module) -> Split:
    pool = functools.partial(nn.functional.adaptive_avg_pool2d, output_size=(1, 1))
    return Split([m.features], _pool_flatten(pool, m.classifier))


@register_split(TV + "mobilenetv3.MobileNetV3", TV + "efficientnet.EfficientNet", TV + "vgg.VGG")
def _tv_features_avgpool(m: nn.Module) -> Split:
    return Split([m.features], _pool_flatten(m.avgpool, m.classifier))


@register_split(TV + "mnasnet.MNASNet")
def _tv_mnasnet(m: nn.Module) -> Split:
    return Split([m.layers], lambda f: m.classifier(f.mean([2, 3])))


@register_split(TV + "convnext.ConvNeXt")
def _tv_convnext(m: nn.Module) -> Split:
    return Split([m.features], lambda f: m.classifier(m.avgpool(f)))


@register_split(TV + "swin_transformer.SwinTransformer")
def _tv_swin(m: nn.Module) -> Split:
    return Split(_children(m, ["features", "norm", "permute"]), _pool_flatten(m.avgpool, m.head))


@register_split(TV + "shufflenetv2.ShuffleNetV2")
def _tv_shufflenet(m: nn.Module) -> Split:
    names = ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]
    return Split(_children(m, names), lambda f: m.fc(f.mean([2, 3])))


@register_split(TV + "squeezenet.SqueezeNet")
def _tv_squeezenet(m: nn.Module) -> Split:
    return Split([m.features], lambda f: torch.flatten(m.classifier(f), 1))


@register_split(TV + "googlenet.GoogLeNet")
def _tv_googlenet(m: nn.Module) -> Split:
    names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
             "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
             "inception5a", "inception5b"]
    return Split([m._transform_input, *_children(m, names)],
                 lambda f: m.fc(m.dropout(torch.flatten(m.avgpool(f), 1))))


@register_split(TV + "vision_transformer.VisionTransformer")
def _tv_vit(m: nn.Module) -> Split:
    def features(x: Tensor) -> Tensor:
        x = m._process_input(x)
        cls = m.class_token.expand(x.shape[0], -1, -1)
        return m.encoder(torch.cat([cls, x], dim=1))[:, 0]

    return Split([features], m.heads, layout="vector")


@register_split("efficientnet_lite_pytorch.model.EfficientNet")
def _effnet_lite(m: nn.Module) -> Split:
    rate = m._global_params.drop_connect_rate
    blocks: list[Stage] = []
    for idx, block in enumerate(m._blocks):
        r = rate * float(idx) / len(m._blocks) if rate else rate
        blocks.append(block if not r else functools.partial(block, drop_connect_rate=r))
    stages: list[Stage] = [m._conv_stem, m._bn0, m._swish, *blocks, m._conv_head, m._bn1, m._swish]

    def head(f: Tensor) -> Tensor:
        return m._fc(m._dropout(m._avg_pooling(f).view(f.shape[0], -1)))

    return Split(stages, head)


class _SelectedOutput:
    """The model's forward with its logits selected (:mod:`undiscard.analysis.outputs`): the output split's features."""

    def __init__(self, model: nn.Module, output: OutputSelector):
        self.model, self.output = model, output

    def __call__(self, x: Tensor) -> Tensor:
        return select_output(self.model(x), self.output)


def _identity(f: Tensor) -> Tensor:
    return f


def output_split(model: nn.Module, output: OutputSelector = None) -> Split:
    """The split of a dense task: features = the model's output logits (selected by ``output``), head = the
    identity. Its one stage is the model's own forward; :mod:`undiscard.analysis._chain` refines it into the model's
    children where they run as a chain. ``map_size`` is set when the split is verified."""
    return Split([_SelectedOutput(model, output)], _identity, method="output")


def _timm_split(m: nn.Module) -> Split:
    fmt = str(getattr(m, "output_fmt", "NCHW"))
    layout = "nhwc" if fmt.upper().endswith("NHWC") else "nchw"
    return Split([m.forward_features], m.forward_head, layout=layout)  # 3-D outputs become "tokens" in use


def _checked(split: Split, model: nn.Module, x: Tensor, expected: Tensor, output: OutputSelector,
             grid: tuple[int, int] | None) -> str | None:
    """None when ``head(features(x))`` is ``expected`` bit for bit (the split is then settled on these
    features, :meth:`Split.settle`); otherwise why not (one line)."""
    try:
        with torch.no_grad(), phase_plan(None):
            feats = split.features(x)
            got = split.head(feats)  # a head returns the selected logits itself
    except OutputError:
        raise
    except Exception as err:  # a split that crashes on the model is not its split
        text = str(err).strip()
        return f"it fails ({type(err).__name__}: {text.splitlines()[0] if text else ''})"
    if not isinstance(got, Tensor):
        return f"its head returns {type(got).__name__}, not the logits tensor"
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return f"it gives {tuple(got.shape)} {got.dtype} instead of {tuple(expected.shape)} {expected.dtype}"
    if not torch.equal(got, expected):
        diff = (got.double() - expected.double()).abs().nan_to_num(nan=float("inf")).max()
        return f"it differs from the model's output by up to {float(diff):.3g}"
    if isinstance(feats, Tensor):
        split.settle(feats, grid)
    return None


def _factories(model: nn.Module) -> list[tuple[str, Callable[[nn.Module, Tensor, OutputSelector], Split]]]:
    """The automatic splits to try for ``model``, in order (see module docstring)."""
    found: list[tuple[str, Callable[[nn.Module, Tensor, OutputSelector], Split]]] = []
    registered = _SPLITS.find(type(model))
    if registered is not None:
        factory, with_input = registered
        found.append(("registry", lambda m, x, o: factory(m, x) if with_input else factory(m)))
    if hasattr(model, "forward_features") and hasattr(model, "forward_head") and \
            type(model).__module__.startswith("timm."):
        found.append(("timm", lambda m, x, o: _timm_split(m)))
    found.append(("graph capture", graph_split))
    found.append(("hook fallback", hook_split))
    return found


def get_split(model: nn.Module, x: Tensor,
              features: Callable[[nn.Module, Tensor], Tensor] | None = None,
              head: Callable[[nn.Module, Tensor], Tensor] | None = None,
              layout: str = "nchw", output: OutputSelector = None, grid: tuple[int, int] | None = None,
              at_output: bool | None = False) -> Split:
    """The split of ``model`` (see module docstring), verified bit for bit on the sample input ``x``
    and settled there (:meth:`Split.settle`; ``grid``: the feature map's (h, w) for token layouts).

    ``at_output``: True for a dense task (the :func:`output_split` comes first, unless ``features``/``head``
    are given); None to decide from the model's output: a dense (N, K, H, W) output is split there.

    ``output`` selects the logits from the model's output (:mod:`undiscard.analysis.outputs`). Raises
    :class:`SplitError` (one line: what was tried, why each failed, what to pass) when no split
    reproduces ``model(x)``.
    """
    if (features is None) != (head is None):
        raise UndiscardError("pass both features= and head=, or neither")
    with torch.no_grad(), phase_plan(None):
        raw = model(x)
    split = _get_split(model, x, features, head, layout, output, grid, at_output, select_output(raw, output))
    split.form = output_form(raw, output)
    return split


def _get_split(model: nn.Module, x: Tensor, features: Callable[[nn.Module, Tensor], Tensor] | None,
               head: Callable[[nn.Module, Tensor], Tensor] | None, layout: str, output: OutputSelector,
               grid: tuple[int, int] | None, at_output: bool | None, expected: Tensor) -> Split:
    """:func:`get_split` once the model's logits ``expected`` on ``x`` are known."""
    if expected.dim() < 2 or expected.shape[0] != x.shape[0]:
        raise SplitError(f"the model's logits for a batch of {x.shape[0]} have shape {tuple(expected.shape)}: a "
                         "budget above 1 needs (N, ...) outputs that keep the batch dimension (a squeeze() drops "
                         "it, flatten(1) keeps it); budget=1 works as it is")
    if features is not None and head is not None:
        split = Split([functools.partial(features, model)], _SelectedHead(functools.partial(head, model), output),
                      layout=layout)
        why = _checked(split, model, x, expected, output, grid)
        if why is not None:
            raise SplitError(f"features=/head= do not reproduce the model: head(features(x)) != model(x), {why}")
        split.method = "features=/head="
        return split
    reasons: list[str] = []
    if at_output or (at_output is None and expected.dim() == 4):
        registered_output = _OUTPUT_SPLITS.find(type(model))
        candidates = [("registry", lambda: registered_output(model, x, output))] if registered_output else []
        for method, make in candidates + [("output", lambda: output_split(model, output))]:
            split = make()
            why = _checked(split, model, x, expected, output, grid)
            if why is None:
                split.method = "output" if method == "output" else f"output ({split.method or method})"
                split.map_size = (int(expected.shape[-2]), int(expected.shape[-1])) if expected.dim() == 4 else None
                return split
            reasons.append(f"{method} output: {why}")
    for method, make in _factories(model):
        try:
            split = make(model, x, output)
        except (GraphSplitError, HookSplitError) as err:
            reasons.append(f"{method}: {err}")
            continue
        why = _checked(split, model, x, expected, output, grid)
        if why is None:
            split.method = f"{method} ({split.method})" if split.method else method
            return split
        reasons.append(f"{method}: {why}")
    raise SplitError(f"cannot split {class_path(model)} into features and head ({'; '.join(reasons)}): pass "
                     "features=(model, x) -> maps and head=(model, maps) -> logits to wrap(); budget=1 needs no split")


class _SelectedHead:
    """A head whose output goes through the output rule (a user's head may return a dict too)."""

    def __init__(self, head: Callable[[Tensor], Any], output: OutputSelector):
        self.head, self.output = head, output

    def __call__(self, f: Tensor) -> Tensor:
        return select_output(self.head(f), self.output)
