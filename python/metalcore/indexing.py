"""Gather, scatter-add and index_select with torch semantics, forward and backward, on the
metalcore core.

- ``gather(input, dim, index)``: ``torch.gather``, ``out[..., j, ...] = input[..., index[..., j,
  ...], ...]`` along ``dim``; ``index`` has input's number of dimensions and at most input's size
  in every other dimension; the output has the index's shape.
- ``scatter_add(input, dim, index, src, deterministic=False)``: out-of-place ``torch.scatter_add``,
  a copy of ``input`` with ``src[..., j, ...]`` added at ``index[..., j, ...]`` along ``dim``
  (``index`` at most src's size in every dimension and input's in every other than ``dim``).
- ``index_select(input, dim, index)``: ``torch.index_select`` with a 1-D (or 0-d) index.

Data float16, bfloat16, float32 or float64; indices int64 or int32 (torch's gather and
scatter_add take int64 only). ``dim`` may be negative; 0-d tensors count as 1-D, as in torch.

gather and index_select copy elements (bit-exact). Sums are made in float32 (float64 for float64
data) and rounded once:

- scatter_add on the CPU: each output element is owned by one task that adds its terms in index
  order: deterministic whatever ``deterministic`` says.
- scatter_add on CUDA: ``atomicAdd`` into a float32 (float64) copy of ``input``, rounded to the
  data type at the end; the order of the atomics varies, so the last bits may vary run to run.
  With ``deterministic=True``, or under ``torch.use_deterministic_algorithms(True)``: the flat
  target offsets are sorted stably (``torch.sort``) and each target's run of terms is summed in
  that order by one thread, without float atomics: bit-identical run to run.
- Backward: gather → scatter-add of the gradient into zeros (deterministic as above, the mode read
  at forward time); scatter_add → the gradient itself for input and its gather (zero-padded to
  src's shape) for src; index_select → index_add of the gradient into zeros, always deterministic
  (the index sorted stably, each selected slice's terms summed in order). The backward ops are
  differentiable in turn (double backward).

Indices outside ``[0, size)`` raise ``IndexError``: the CPU kernels check every index they read;
CUDA indices are checked before the launch (one host-device sync). Under CUDA graph capture and
``torch.compile`` CUDA indices cannot be checked: gather and index_select then write NaN in their
place and the adds skip them, never reading or writing out of bounds.

Entry paths as in :mod:`metalcore.activations`: autograd Functions (eager), the custom ops
``torch.ops.metalcore.gather`` / ``scatter_add`` / ``index_select`` and their backward ops
``gather_backward`` / ``index_select_backward`` (``torch.compile``), and PyTorch's own ops (with a
one-time warning) on devices without a metalcore backend.
"""

from __future__ import annotations

import math
import operator
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _native, reference
from ._backend import capturing, check_float, check_same_device, desc, empty, fast_apply, has_backend, opt_desc, stream_of, warn_fallback

__all__ = ["gather", "scatter_add", "index_select", "GatherFunction", "ScatterAddFunction", "IndexSelectFunction"]

GATHER, SCATTER_ADD, SORTED_ADD = 0, 1, 2


def _launch(kind: int, check, table: Tensor, rows: Tensor, index: Tensor, perm: Optional[Tensor] = None) -> None:
    """Runs one op of the family on (outer, n, inner) views. `check` = (index, size, dim): the
    caller's index, to name an out-of-range value that a CPU kernel met."""
    if _native.index_into(kind, desc(table, "table"), desc(rows, "rows"), desc(index, "index"), opt_desc(perm, "perm"), stream_of(table)):
        _check_range(*check, known_bad=True)


def _check_range(index: Tensor, size: int, dim: int, known_bad: bool = False) -> None:
    """Raises IndexError naming an index outside [0, size) (one host-device sync). Skipped on the
    CPU, whose kernels check every index they read (`known_bad`: one was out of range), and where
    the values cannot be read: under torch.compile and CUDA graph capture."""
    if not known_bad and (torch.compiler.is_compiling() or not index.numel() or index.device.type == "cpu" or capturing(index)):
        return
    lo, hi = torch.stack(torch.aminmax(index)).tolist()
    if known_bad or lo < 0 or hi >= size:
        raise IndexError(f"index: {lo if lo < 0 else hi} is out of range for dimension {dim} of input (size {size})")


def _view3(t: Tensor, dim: int, write: bool = False) -> Optional[Tensor]:
    """`t` as (outer, t.shape[dim], inner): a view where the strides allow it, else a copy, or None
    for an operand that is written (which must be a view)."""
    s = tuple(t.shape)
    shape = (math.prod(s[:dim]), s[dim], math.prod(s[dim + 1:]))
    if not write:
        return t.reshape(shape)
    try:
        return t.view(shape)
    except RuntimeError:
        return None


def _narrow(t: Tensor, shape, keep: Optional[int] = None) -> Tensor:
    """`t` cut to `shape` in every dimension but `keep` (a view)."""
    if tuple(t.shape) == tuple(shape):
        return t
    return t[tuple(slice(None) if d == keep else slice(0, s) for d, s in enumerate(shape))]


def _flat_keys(index: Tensor, dim: int, out: Tensor) -> Tensor:
    """The offset in the contiguous `out` of each index element's target (in the index's row-major
    order), -1 where the index lies outside [0, out.shape[dim])."""
    kd = torch.int32 if out.numel() < 2**31 else torch.int64
    key = index.to(kd) * out.stride(dim)
    for d in range(index.dim()):
        if d != dim and index.shape[d] > 1:
            shape = [1] * index.dim()
            shape[d] = -1
            key += torch.arange(index.shape[d], dtype=kd, device=index.device).view(shape) * out.stride(d)
    return key.masked_fill_((index < 0) | (index >= out.shape[dim]), -1).reshape(-1)


def _gather_fwd(input: Tensor, dim: int, index: Tensor) -> Tensor:
    dim %= max(input.dim(), 1)
    out = empty(index.shape, input.dtype, input.device)
    if out.numel():
        _launch(GATHER, (index, input.shape[dim], dim), _view3(_narrow(input, index.shape, dim), dim), _view3(out, dim, True), _view3(index, dim))
    return out


def _index_select_fwd(input: Tensor, dim: int, index: Tensor) -> Tensor:
    dim %= max(input.dim(), 1)
    shape = list(input.shape)
    shape[dim] = index.numel()
    out = empty(shape, input.dtype, input.device)
    if out.numel():
        rows = _view3(out, dim, True)
        o, j, i = rows.shape
        _launch(GATHER, (index, input.shape[dim], dim), _view3(input, dim), rows, index.reshape(1, j, 1).expand(o, j, i))
    return out


def _scatter_add_fwd(input: Optional[Tensor], shape, dtype: torch.dtype, dim: int, index: Tensor, src: Tensor, deterministic: bool) -> Tensor:
    """`input` (zeros of `shape` and `dtype` when None) plus the scatter-add of `src` along `dim`."""
    dim %= max(len(shape), 1)
    dev, k, check = src.device, index.numel(), (index, shape[dim], dim)
    if deterministic and src.is_cuda:
        out = torch.zeros(shape, dtype=dtype, device=dev) if input is None else input.clone(memory_format=torch.contiguous_format)
        if k and out.numel():
            keys, perm = torch.sort(_flat_keys(index, dim, out), stable=True)
            rows = _narrow(src, index.shape).reshape(1, k, 1)
            _launch(SORTED_ADD, check, out.view(1, out.numel(), 1), rows, keys.view(1, k, 1), perm)
        return out
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    ws = torch.zeros(shape, dtype=acc, device=dev) if input is None else input.to(acc, memory_format=torch.contiguous_format, copy=True)
    if k and ws.numel():
        src = _narrow(src, index.shape)
        table = _view3(_narrow(ws, index.shape, dim), dim, True)
        if table is not None:
            o, _, i = table.shape
            j = index.shape[dim]
            _launch(SCATTER_ADD, check, table, src.reshape(o, j, i), index.reshape(o, j, i))
        else:  # the narrowed output is no (outer, n, inner) view: address it by flat offsets
            _launch(SCATTER_ADD, check, ws.view(1, ws.numel(), 1), src.reshape(1, k, 1), _flat_keys(index, dim, ws).view(1, k, 1))
    return ws.to(dtype)


def _index_add_fwd(shape, dtype: torch.dtype, dim: int, index: Tensor, src: Tensor) -> Tensor:
    """Zeros of `shape` with the slices of `src` added at `index` along `dim`, deterministically."""
    dim %= max(len(shape), 1)
    out = torch.zeros(shape, dtype=dtype, device=src.device)
    if index.numel() and out.numel():
        keys, perm = torch.sort(index, stable=True)
        table = _view3(out, dim, True)
        o, _, i = table.shape
        j = index.numel()
        _launch(SORTED_ADD, (index, shape[dim], dim), table, src.reshape(o, j, i), keys.view(1, j, 1).expand(o, j, i), perm)
    return out


def _pad_to(t: Tensor, shape) -> Tensor:
    """`t` zero-padded at the end of each dimension to `shape`."""
    pads = [p for d in reversed(range(t.dim())) for p in (0, shape[d] - t.shape[d])]
    return F.pad(t, pads) if any(p != 0 for p in pads) else t


# Autograd, shared by the eager Functions and the custom ops: saved state and backward formulas.
def _gather_setup(ctx, inputs, output):
    input, dim, index = inputs
    ctx.save_for_backward(index)
    ctx.args = (dim, list(input.shape), torch.are_deterministic_algorithms_enabled())


def _gather_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    dim, shape, det = ctx.args
    return torch.ops.metalcore.gather_backward(grad, dim, index, shape, det), None, None


def _scatter_setup(ctx, inputs, output):
    _, dim, index, src, _ = inputs
    ctx.save_for_backward(index)
    ctx.args = (dim, list(src.shape))


def _scatter_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    dim, src_shape = ctx.args
    grad_src = _pad_to(torch.ops.metalcore.gather(grad, dim, index), src_shape) if ctx.needs_input_grad[3] else None
    return grad, None, None, grad_src, None


def _index_select_setup(ctx, inputs, output):
    input, dim, index = inputs
    ctx.save_for_backward(index)
    ctx.args = (dim, list(input.shape))


def _index_select_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    dim, shape = ctx.args
    return torch.ops.metalcore.index_select_backward(grad, dim, index, shape), None, None


def _adjoint_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])
    ctx.args = (inputs[1], len(inputs))


def _adjoint_backward(adjoint):
    """The backward of an op linear in its first argument whose adjoint is `adjoint(grad, dim, index)`."""

    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        dim, n = ctx.args
        return (adjoint(grad, dim, index),) + (None,) * (n - 1)

    return backward


class GatherFunction(torch.autograd.Function):
    """``GatherFunction.apply(input, dim, index)``: :func:`gather` on checked, at least 1-D
    arguments with ``dim`` in ``[0, ndim)``."""

    @staticmethod
    def forward(ctx, input, dim, index):  # type: ignore[override]
        out = _gather_fwd(input, dim, index)
        _gather_setup(ctx, (input, dim, index), out)
        return out

    backward = staticmethod(_gather_backward)


class ScatterAddFunction(torch.autograd.Function):
    """``ScatterAddFunction.apply(input, dim, index, src, deterministic)``: :func:`scatter_add` on
    checked, at least 1-D arguments."""

    @staticmethod
    def forward(ctx, input, dim, index, src, deterministic):  # type: ignore[override]
        out = _scatter_add_fwd(input, input.shape, input.dtype, dim, index, src, deterministic)
        _scatter_setup(ctx, (input, dim, index, src, deterministic), out)
        return out

    backward = staticmethod(_scatter_backward)


class IndexSelectFunction(torch.autograd.Function):
    """``IndexSelectFunction.apply(input, dim, index)``: :func:`index_select` on checked, at least
    1-D arguments with a 1-D index."""

    @staticmethod
    def forward(ctx, input, dim, index):  # type: ignore[override]
        out = _index_select_fwd(input, dim, index)
        _index_select_setup(ctx, (input, dim, index), out)
        return out

    backward = staticmethod(_index_select_backward)


_gather_apply = fast_apply(GatherFunction)
_scatter_apply = fast_apply(ScatterAddFunction)
_index_select_apply = fast_apply(IndexSelectFunction)


# Compiled path: custom ops with fake implementations and autograd registrations.
@torch.library.custom_op("metalcore::gather", mutates_args=(), device_types=("cpu", "cuda"))
def _op_gather(input: Tensor, dim: int, index: Tensor) -> Tensor:
    return _gather_fwd(input, dim, index)


@_op_gather.register_fake
def _(input, dim, index):
    return input.new_empty(index.shape)


@torch.library.custom_op("metalcore::gather_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _op_gather_backward(grad: Tensor, dim: int, index: Tensor, shape: List[int], deterministic: bool) -> Tensor:
    return _scatter_add_fwd(None, shape, grad.dtype, dim, index, grad, deterministic)


@_op_gather_backward.register_fake
def _(grad, dim, index, shape, deterministic):
    return grad.new_empty(shape)


@torch.library.custom_op("metalcore::scatter_add", mutates_args=(), device_types=("cpu", "cuda"))
def _op_scatter_add(input: Tensor, dim: int, index: Tensor, src: Tensor, deterministic: bool) -> Tensor:
    return _scatter_add_fwd(input, input.shape, input.dtype, dim, index, src, deterministic)


@_op_scatter_add.register_fake
def _(input, dim, index, src, deterministic):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.custom_op("metalcore::index_select", mutates_args=(), device_types=("cpu", "cuda"))
def _op_index_select(input: Tensor, dim: int, index: Tensor) -> Tensor:
    return _index_select_fwd(input, dim, index)


@_op_index_select.register_fake
def _(input, dim, index):
    shape = list(input.shape)
    shape[dim] = index.numel()
    return input.new_empty(shape)


@torch.library.custom_op("metalcore::index_select_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _op_index_select_backward(grad: Tensor, dim: int, index: Tensor, shape: List[int]) -> Tensor:
    return _index_add_fwd(shape, grad.dtype, dim, index, grad)


@_op_index_select_backward.register_fake
def _(grad, dim, index, shape):
    return grad.new_empty(shape)


torch.library.register_autograd("metalcore::gather", _gather_backward, setup_context=_gather_setup)
torch.library.register_autograd("metalcore::scatter_add", _scatter_backward, setup_context=_scatter_setup)
torch.library.register_autograd("metalcore::index_select", _index_select_backward, setup_context=_index_select_setup)
torch.library.register_autograd("metalcore::gather_backward", _adjoint_backward(lambda g, d, i: torch.ops.metalcore.gather(g, d, i)),
                                setup_context=_adjoint_setup)
torch.library.register_autograd("metalcore::index_select_backward",
                                _adjoint_backward(lambda g, d, i: torch.ops.metalcore.index_select(g, d, i)), setup_context=_adjoint_setup)


# Public API: argument checks, then the fallback, the compiled path or the eager Function.
def _shape(t: Tensor):
    return tuple(t.shape) or (1,)


def _as1d(t: Tensor) -> Tensor:
    return t.reshape(1) if t.dim() == 0 else t


def _check(input, dim, index, **others) -> int:
    """Checks types, dtypes and devices; returns ``dim`` in ``[0, ndim)``."""
    for name, t in dict(input=input, index=index, **others).items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    check_float("input", input)
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"index: expected an int64 or int32 tensor, got {index.dtype}")
    check_same_device("input", input, index=index, **others)
    nd = max(input.dim(), 1)
    dim = operator.index(dim)
    if not -nd <= dim < nd:
        raise IndexError(f"dim: expected a dimension in [{-nd}, {nd - 1}] (input has shape {tuple(input.shape)}), got {dim}")
    return dim % nd


def _check_fits(index: Tensor, other: Tensor, name: str, skip: Optional[int] = None) -> None:
    """index.size(d) <= other.size(d) in every dimension d but `skip` (an empty index fits anything, as in torch)."""
    if not index.numel():
        return
    xs, os_ = _shape(index), _shape(other)
    if len(xs) != len(os_):
        raise ValueError(f"index: expected {len(os_)} dimensions (those of {name}), got shape {tuple(index.shape)}")
    for d, (a, b) in enumerate(zip(xs, os_)):
        if d != skip and a > b:
            raise ValueError(f"index: expected a size of at most {b} in dimension {d} (that of {name}), got shape {tuple(index.shape)}")


def gather(input: Tensor, dim: int, index: Tensor) -> Tensor:
    """``torch.gather(input, dim, index)``: the elements of ``input`` at ``index`` along ``dim``,
    in the index's shape (see the module docstring)."""
    dim = _check(input, dim, index)
    _check_fits(index, input, "input", skip=dim)
    if not has_backend(input.device):
        warn_fallback("gather", input.device)
        return reference.gather(input, dim, index)
    _check_range(index, _shape(input)[dim], dim)
    x, i = _as1d(input), _as1d(index)
    out = torch.ops.metalcore.gather(x, dim, i) if torch.compiler.is_compiling() else _gather_apply(x, dim, i)
    return out.reshape(()) if index.dim() == 0 else out


def scatter_add(input: Tensor, dim: int, index: Tensor, src: Tensor, deterministic: bool = False) -> Tensor:
    """Out-of-place ``torch.scatter_add(input, dim, index, src)``: ``input`` with each
    ``src[..., j, ...]`` added at ``index[..., j, ...]`` along ``dim``. ``deterministic=True`` makes
    the CUDA sums bit-identical run to run (the CPU's always are; see the module docstring)."""
    dim = _check(input, dim, index, src=src)
    if src.dtype != input.dtype:
        raise TypeError(f"src: expected dtype {input.dtype} (the dtype of input), got {src.dtype}")
    _check_fits(index, src, "src")
    _check_fits(index, input, "input", skip=dim)
    if not has_backend(input.device):
        warn_fallback("scatter_add", input.device)
        return reference.scatter_add(input, dim, index, src)
    _check_range(index, _shape(input)[dim], dim)
    det = bool(deterministic) or torch.are_deterministic_algorithms_enabled()
    x, i, s = _as1d(input), _as1d(index), _as1d(src)
    out = torch.ops.metalcore.scatter_add(x, dim, i, s, det) if torch.compiler.is_compiling() else _scatter_apply(x, dim, i, s, det)
    return out.reshape(()) if input.dim() == 0 else out


def index_select(input: Tensor, dim: int, index: Tensor) -> Tensor:
    """``torch.index_select(input, dim, index)``: the slices of ``input`` at the 1-D ``index`` along
    ``dim``; the gradient to ``input`` is summed deterministically."""
    dim = _check(input, dim, index)
    if index.dim() > 1:
        raise ValueError(f"index: expected a 1-D (or 0-d) tensor, got shape {tuple(index.shape)}")
    if input.dim() == 0 and index.numel() != 1:
        raise ValueError(f"index: a 0-d input takes exactly one index, got {index.numel()}")
    if not has_backend(input.device):
        warn_fallback("index_select", input.device)
        return reference.index_select(input, dim, index)
    _check_range(index, _shape(input)[dim], dim)
    x, i = _as1d(input), index.reshape(-1)
    out = torch.ops.metalcore.index_select(x, dim, i) if torch.compiler.is_compiling() else _index_select_apply(x, dim, i)
    return out.reshape(()) if input.dim() == 0 else out
