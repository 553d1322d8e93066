"""What a wrapped model checks about its inputs, and the one-line errors it gives when the network fails.

- :func:`check_net`: ``wrap`` was given a module (not a model name, a class, None);
- :func:`check_input`: a batched image tensor (N, C, H, W); :func:`check_example`, one to set up on (on a
  device that holds values), and :func:`finite_example`, the first image without NaN or inf in it (setup
  checks the split against the model's output, which a non-finite image would make meaningless);
- :func:`check_search_input`: at budget > 1 the search runs without autograd, so an input that
  requires grad is refused rather than silently given no gradient (and a meta tensor, which holds no values);
- :func:`image_batch`, the batch given as ``model(x)`` or ``model(pixel_values=x)``;
- :func:`warn_not_finite`: a warning naming how many images hold NaN or inf (their outputs will not be
  finite; the other images are unaffected);
- :func:`run_network`: the network itself on a batch (budget 1), its failures explained;
- :func:`empty_output`: the network's output for a batch of 0 images, even for a network whose forward
  cannot take one;
- :func:`input_error`: why the network's own forward failed on an input, in one
  :class:`~undiscard.errors.PhaseError`: a dtype or device other than the model's, a channel count
  other than its first convolution's, a size below the smallest it runs on, or else its own error.
"""
from __future__ import annotations

import itertools
import warnings

import torch
from torch import Tensor, nn

from ._testtime import TestTimeModule
from .analysis.outputs import OutputSelector, present, select_output
from .errors import PhaseError, UndiscardError
from .layers.plans import phase_plan

__all__ = ["check_net", "check_example", "finite_example", "check_input", "check_search_input", "check_chunk_size", "image_batch",
           "warn_not_finite", "run_network", "empty_output", "input_error", "smallest_size", "first_line"]


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_net(net: object) -> None:
    """``wrap`` takes a module not wrapped yet: say so in one line for anything else (None, a model name, a
    class, a wrapped model, a ``torch.compile``'d module: its graph capture cannot be split or phased)."""
    if isinstance(net, TestTimeModule):
        raise UndiscardError("net is already wrapped: wrap the original network (wrapped.net is a copy of it)")
    if type(net).__name__ == "OptimizedModule" and isinstance(getattr(net, "_orig_mod", None), nn.Module):
        raise UndiscardError("net is a torch.compile'd module: wrap the original network and compile the wrapped "
                             "model instead, torch.compile(undiscard.wrap(net._orig_mod, ...))")
    if isinstance(net, str):
        raise UndiscardError(f"wrap() needs a torch.nn.Module, got the string {net!r}: load it first, e.g. "
                             f"undiscard.models.loading.load_model({net!r}).model")
    if isinstance(net, type) and issubclass(net, nn.Module):
        raise UndiscardError(f"wrap() needs a torch.nn.Module instance, got the class {net.__name__}: "
                             f"pass {net.__name__}(...)")
    if not isinstance(net, nn.Module):
        raise UndiscardError(f"wrap() needs a torch.nn.Module, got {type(net).__name__}")


def check_example(x: object) -> None:
    """A :class:`PhaseError` unless ``x`` is a batched image tensor with at least one image (for setup)."""
    if not isinstance(x, Tensor) or x.dim() < 3:
        raise PhaseError(f"expected a batched image tensor (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.shape[0] == 0:
        raise PhaseError("prepare() needs at least one example image, got a batch of 0")
    _check_not_meta(x)


def _check_not_meta(x: Tensor) -> None:
    if x.device.type == "meta":
        raise PhaseError("the input is on the meta device, which holds no values: the phase search compares the "
                         "states' outputs, so budget > 1 needs tensors on a real device (budget 1 runs net(x) as is)")


def finite_example(x: Tensor) -> Tensor:
    """The first image of ``x`` (a batch of 1) whose values are all finite, to set the model up on; a
    :class:`PhaseError` when every image holds NaN or inf."""
    if not x.is_floating_point():
        return x[:1].clone()
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.any()):
        raise PhaseError(f"all {x.shape[0]} input images hold NaN or infinite values: the model is set up on a "
                         "finite image (check the input and its normalisation, e.g. a std of 0 or nan)")
    i = int(finite.nonzero()[0, 0])
    return x[i:i + 1].clone()


def check_search_input(x: Tensor) -> None:
    """What a search (budget > 1) cannot take, as one :class:`PhaseError`: a meta tensor (no values to
    compare), or an input that requires grad while grad mode is on (the search runs without autograd, so
    the input would silently get no gradient); then :func:`warn_not_finite`."""
    _check_not_meta(x)
    if x.requires_grad and torch.is_grad_enabled():
        raise PhaseError("the input requires grad, but gradients do not flow through the phase search (budget > 1 "
                         "runs without autograd): pass x.detach() or run under torch.no_grad(), or use budget=1, "
                         "which is net(x) and differentiable")
    warn_not_finite(x, stacklevel=5)


def check_chunk_size(chunk_size: object) -> None:
    """``wrap(chunk_size=...)``: an integer >= 1 (rows per pass), else one :class:`UndiscardError`."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise UndiscardError(f"chunk_size must be an integer >= 1 (rows per pass), got {chunk_size!r}")


def check_input(x: object) -> None:
    """A :class:`PhaseError` unless ``x`` is a 4-D tensor (N, C, H, W), and when called under
    ``torch.jit.trace``: a trace would freeze the searched states and the batch size of the example
    (the search is data-dependent Python control flow), so it is refused with what to do instead."""
    if torch.jit.is_tracing():
        raise PhaseError("torch.jit.trace cannot record a wrapped model: the per-image search is data-dependent, "
                         "so a trace would freeze the example's states and batch size; trace the network itself "
                         "(budget 1 is net(x)), or use the wrapped model eagerly or with torch.compile")
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise PhaseError(f"expected an image batch of shape (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")


def warn_not_finite(x: Tensor, stacklevel: int = 4) -> None:
    """A ``UserWarning`` when some images of ``x`` hold NaN or infinite values."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        warnings.warn(f"{bad} of {x.shape[0]} input images have NaN or infinite values: the search runs, but "
                      "their outputs will not be finite either", UserWarning, stacklevel=stacklevel)


def image_batch(x: object, pixel_values: object) -> Tensor:
    """The image batch a wrapped model is called with, given positionally (``model(x)``) or by the keyword
    Hugging Face models take it by (``model(pixel_values=x)``), checked by :func:`check_input`."""
    if (x is None) == (pixel_values is None):
        raise PhaseError("pass the image batch once: model(x) or model(pixel_values=x)")
    x = pixel_values if x is None else x
    check_input(x)
    return x  # type: ignore[return-value]


def run_network(net: nn.Module, x: Tensor, output: OutputSelector) -> object:
    """``net(x)`` with no phase plan, in the caller's grad mode, as a wrapped model returns it (the logits
    selected, or the output itself where it has a form: :func:`undiscard.analysis.outputs.present`); a failure is
    one :func:`input_error`."""
    try:
        with phase_plan(None):
            out = net(x)
    except Exception as err:
        raise input_error(net, x, err) from None
    return present(out, output)


def empty_output(net: nn.Module, x: Tensor, output: OutputSelector) -> Tensor:
    """The output for a batch of 0 images ``x``: ``net(x)`` itself, or, for a network whose forward cannot
    take 0 images (``x.view(x.size(0), -1)``), its output on one blank image, sliced to 0 rows (same shape
    per image, dtype and device): the logits tensor, whatever the network's output type."""
    with phase_plan(None):
        try:
            return select_output(net(x), output)
        except UndiscardError:
            raise
        except Exception:
            pass
        try:
            out = net(x.new_zeros((1, *x.shape[1:])))
        except Exception as err:
            raise input_error(net, x, err) from None
    return select_output(out, output)[:0]


def _model_tensor(net: nn.Module) -> Tensor | None:
    """The network's first floating-point parameter or buffer (its dtype and device), if any."""
    return next((t for t in itertools.chain(net.parameters(), net.buffers()) if t.is_floating_point()), None)


def input_error(net: nn.Module, x: Tensor, err: BaseException) -> PhaseError:
    """One clear error for an input (N, C, H, W) the network's own forward fails on, checked in order: a
    dtype or device other than the model's, a channel count other than its first convolution's, an
    input smaller than the model needs (found by running it on blank square inputs of 1, 2, 4, ...
    512 px, then bisecting: error path only), or else the model's own error (its first line)."""
    first, what = first_line(err), f"the model cannot run on input of shape {tuple(x.shape[1:])}"
    ref = _model_tensor(net)
    if ref is not None and x.dtype != ref.dtype:
        return PhaseError(f"{what}: input dtype {x.dtype} does not match the model's {ref.dtype}; convert the "
                          f"input (x.to({ref.dtype})) or the model (model.to({x.dtype})) ({first})")
    if ref is not None and x.device != ref.device:
        return PhaseError(f"{what}: input is on {x.device} but the model is on {ref.device}; move one of them "
                          f"({first})")
    conv = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is not None and x.shape[1] != conv[1].in_channels:
        c = x.shape[1]
        return PhaseError(f"{what}: it has {c} channel{'s' if c != 1 else ''} but the model's first "
                          f"convolution ({conv[0]}) expects {conv[1].in_channels} ({first})")
    sizes = smallest_size(net, x)
    h, w = x.shape[-2:]
    if sizes is not None and sizes[1] > min(h, w):
        return PhaseError(f"{what}: {h}x{w} pixels is too small; the smallest square input the model runs on "
                          f"is {sizes[1]}x{sizes[1]} ({first})")
    if sizes is not None:
        return PhaseError(f"{what}: the model runs on {sizes[0]}x{sizes[0]} inputs but not on {h}x{w}; does it "
                          f"need a fixed input size? ({first})")
    return PhaseError(f"{what}: {first}")


def smallest_size(net: nn.Module, x: Tensor, largest: int = 512) -> tuple[int, int] | None:
    """Square sizes (pixels) ``net`` runs on, with x's channels, dtype and device: the first power of
    two it runs on, and that bisected down (the smallest size it runs on if that is monotone; each
    answer is a size it did run on); None if it runs on none up to ``largest``."""

    def runs(size: int) -> bool:
        try:
            with torch.no_grad(), phase_plan(None):
                net(x.new_zeros((1, x.shape[1], size, size)))
            return True
        except Exception:
            return False

    size = 1
    while size <= largest and not runs(size):
        size *= 2
    if size > largest:
        return None
    power, low = size, size // 2  # the previous power of two failed (or is 0)
    while size - low > 1:
        mid = (low + size) // 2
        low, size = (low, mid) if runs(mid) else (mid, size)
    return power, size
