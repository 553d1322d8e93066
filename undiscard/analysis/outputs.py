"""Which part of a model's output are the logits.

Many models return more than a tensor: a dict (``{"logits": ...}`` in Hugging Face style,
``{"out": ..., "aux": ...}`` for torchvision segmentation), a tuple with auxiliary outputs (torchvision
GoogLeNet/Inception return ``GoogLeNetOutputs(logits, aux2, aux1)`` in train-like configurations), or an
object with a ``.logits`` attribute (Hugging Face ``ModelOutput``). undiscard searches and aggregates one
tensor, the logits, chosen by this rule (``output=None``):

- a Tensor: itself;
- a Mapping: its ``"logits"`` entry, else its ``"out"`` entry, else its only Tensor value;
- a tuple or list (namedtuples included): its ``.logits`` attribute if it has one, else its element 0;
- any other object: its ``.logits`` attribute.

``wrap(net, output=...)`` overrides the rule: a ``str`` (a key of a Mapping, or an attribute name), an
``int`` (an index into a tuple or list) or a callable ``output(out) -> Tensor``. Whatever cannot be
selected is one :class:`OutputError` that names what the model returned and what to pass.

What a wrapped model returns (:func:`present`, :class:`OutputForm`): when the logits are a *field* of a
dataclass or namedtuple output — Hugging Face's ``ImageClassifierOutput``/``SemanticSegmenterOutput``,
whose ``logits`` the default rule selects, or the field named by ``output="name"`` — the wrapped model
gives its result back in that type: at budget 1 the network's output itself (the very object
``net(x)`` returned), above budget 1 a new instance whose selected field holds the aggregated logits
and whose other fields are None. They are not the original model's (its hidden states, attentions or
loss describe one forward pass, not the aggregate of several), and there is no loss (no labels are
given). Every other output (a tensor, a dict, a plain tuple, an object with a ``.logits`` attribute,
a callable ``output=``) gives the logits tensor, at every budget.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Union

from torch import Tensor

from ..errors import UndiscardError

__all__ = ["OutputError", "OutputSelector", "OutputForm", "select_output", "check_selector", "describe_output",
           "output_form", "present", "in_form"]

OutputSelector = Union[str, int, Callable[[Any], Tensor], None]

_HINT = "pass output= (a key, an index or a callable out -> logits tensor) to wrap()"


class OutputError(UndiscardError, TypeError):
    """The model's output has no part that can be taken as the logits."""


def describe_output(out: Any) -> str:
    """A short description of what a model returned, for error messages."""
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        keys = ", ".join(repr(k) for k in list(out.keys())[:8])
        return f"a {type(out).__name__} with keys {keys or '(none)'}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} elements"
    return f"a {type(out).__name__}"


def check_selector(output: OutputSelector) -> OutputSelector:
    """``output`` if it is a valid selector (None, str, int or callable); an OutputError otherwise."""
    if output is None or callable(output) or (isinstance(output, (str, int)) and not isinstance(output, bool)):
        return output
    raise OutputError(f"output= must be a key (str), an index (int) or a callable, got {type(output).__name__}")


def _tensor(value: Any, out: Any, how: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise OutputError(f"the model's output {how} is {describe_output(value)}, not a tensor "
                          f"(the model returned {describe_output(out)}): {_HINT}")
    return value


def select_output(out: Any, output: OutputSelector = None) -> Tensor:
    """The logits in a model's output ``out`` (see the module docstring for the rule)."""
    if output is None:
        if isinstance(out, Tensor):
            return out
        if isinstance(out, Mapping):
            for key in ("logits", "out"):
                if key in out:
                    return _tensor(out[key], out, f"[{key!r}]")
            tensors = [v for v in out.values() if isinstance(v, Tensor)]
            if len(tensors) == 1:
                return tensors[0]
            raise OutputError(f"the model returned {describe_output(out)} and none is 'logits' or 'out': {_HINT}")
        if isinstance(out, (tuple, list)):
            if isinstance(getattr(out, "logits", None), Tensor):
                return out.logits  # type: ignore[union-attr]
            if not out:
                raise OutputError(f"the model returned an empty {type(out).__name__}: {_HINT}")
            return _tensor(out[0], out, "element 0")
        if hasattr(out, "logits"):
            return _tensor(out.logits, out, ".logits")
        raise OutputError(f"the model returned {describe_output(out)}: {_HINT}")
    if callable(output):
        try:
            value = output(out)
        except Exception as err:  # the user's selector failed on this output: say so in one line
            raise OutputError(f"output={getattr(output, '__name__', output)!r} failed on the model's output "
                              f"({describe_output(out)}): {type(err).__name__}: {err}") from None
        return _tensor(value, out, f"selected by output={getattr(output, '__name__', 'callable')}")
    if isinstance(output, str):
        if isinstance(out, Mapping):
            if output not in out:
                raise OutputError(f"output={output!r}: the model returned {describe_output(out)}")
            return _tensor(out[output], out, f"[{output!r}]")
        if not hasattr(out, output):
            raise OutputError(f"output={output!r}: the model returned {describe_output(out)}, which has no "
                              f"attribute {output!r}")
        return _tensor(getattr(out, output), out, f".{output}")
    if isinstance(output, int) and not isinstance(output, bool):
        if not isinstance(out, (tuple, list)):
            raise OutputError(f"output={output}: the model returned {describe_output(out)}, not a tuple or list")
        if not -len(out) <= output < len(out):
            raise OutputError(f"output={output}: the model returned {describe_output(out)}")
        return _tensor(out[output], out, f"element {output}")
    raise OutputError(f"output= must be a key (str), an index (int) or a callable, got {type(output).__name__}")


def _field_names(out: Any) -> list[str] | None:
    """The field names of a dataclass instance or a namedtuple, else None."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [f.name for f in dataclasses.fields(out) if f.init]
    if isinstance(out, tuple) and isinstance(getattr(type(out), "_fields", None), tuple):
        return list(type(out)._fields)
    return None


@dataclass(frozen=True)
class OutputForm:
    """A network's output type and the field that holds its logits (see the module docstring)."""

    kind: type
    field: str
    names: tuple[str, ...]

    def build(self, logits: Tensor) -> Any:
        """A new output of this type: ``field`` = ``logits``, every other field None."""
        return self.kind(**{**{n: None for n in self.names}, self.field: logits})


def output_form(out: Any, output: OutputSelector = None) -> OutputForm | None:
    """The form a wrapped model gives results back in for the network output ``out``, or None (the
    logits tensor): a dataclass or namedtuple whose field ``logits`` (``output=None``) or ``output`` (a str)
    is the selected tensor."""
    names = _field_names(out)
    field = "logits" if output is None else output
    if names is None or not isinstance(field, str) or field not in names:
        return None
    if not isinstance(getattr(out, field, None), Tensor):
        return None
    return OutputForm(type(out), field, tuple(names))


def present(out: Any, output: OutputSelector = None) -> Any:
    """What a wrapped model returns for the network's own output ``out`` (budget 1): ``out`` itself where
    it has a form (:func:`output_form`), else its selected logits."""
    return out if output_form(out, output) is not None else select_output(out, output)


def in_form(form: OutputForm | None, logits: Tensor) -> Any:
    """``logits`` in ``form`` (a new output of the network's type), or the tensor itself without one."""
    return logits if form is None else form.build(logits)
