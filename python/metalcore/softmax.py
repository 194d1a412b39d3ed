"""Softmax along any dimension, forward and backward, on the metalcore core.

Semantics of ``torch.softmax(x, dim)``: computed in float32 for half/bfloat16 inputs (float64 for
float64), returned in the input's dtype; a row of ``-inf`` gives NaN, as in torch. The backward
needs only the forward's output. ``dim`` other than the last is moved last (a copy when the rows
are not contiguous) and the result is returned as a view in the original dimension order.

Entry paths as in :mod:`metalcore.rmsnorm`: ``SoftmaxFunction`` (eager), the custom ops
``torch.ops.metalcore.softmax_fwd`` / ``softmax_bwd`` (``torch.compile``), and ``torch.softmax``
(with a one-time warning) on devices without a metalcore backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _native
from ._backend import check_float, desc, empty, fast_apply, has_backend, stream_of, warn_fallback
from ._norm import rows

__all__ = ["fused_softmax", "SoftmaxFunction", "MetalSoftmax"]


def _check(x: Tensor, dim: int) -> int:
    """Validates `x` and returns `dim` normalized to [0, x.dim())."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    check_float("x", x)
    nd = max(x.dim(), 1)
    if not isinstance(dim, int) or not -nd <= dim < nd:
        raise ValueError(f"dim: expected an int in [{-nd}, {nd - 1}] for a {x.dim()}-d x, got {dim!r}")
    return dim % nd


def _last(t: Tensor, dim: int) -> Tensor:
    return t if t.dim() == 0 or dim == t.dim() - 1 else t.movedim(dim, -1)


def _fwd(x: Tensor, dim: int) -> Tensor:
    xl = _last(x, dim)
    n = xl.shape[-1] if xl.dim() else 1
    y = empty(xl.shape, x.dtype, x.device)
    if y.numel():
        x2 = rows(xl.reshape(1) if xl.dim() == 0 else xl, n)  # keep the view alive during the call
        _native.softmax_fwd_into(desc(x2, "x"), desc(y.view(-1, n), "out"), stream_of(x))
    return y if x.dim() == 0 or dim == x.dim() - 1 else y.movedim(-1, dim)


def _bwd(y: Tensor, dy: Tensor, dim: int) -> Tensor:
    yl, dyl = _last(y, dim), _last(dy, dim)
    n = yl.shape[-1] if yl.dim() else 1
    dx = empty(yl.shape, y.dtype, y.device)
    if dx.numel():
        y2 = rows(yl.reshape(1) if yl.dim() == 0 else yl, n)
        dy2 = rows(dyl.reshape(1) if dyl.dim() == 0 else dyl, n)
        _native.softmax_bwd_into(desc(y2, "y"), desc(dy2, "grad_out"), desc(dx.view(-1, n), "grad_x"), stream_of(y))
    return dx if y.dim() == 0 or dim == y.dim() - 1 else dx.movedim(-1, dim)


class SoftmaxFunction(torch.autograd.Function):
    """``SoftmaxFunction.apply(x, dim)``: softmax with a fused backward."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int = -1) -> Tensor:  # type: ignore[override]
        d = _check(x, dim)
        y = _fwd(x, d)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(y)
        ctx.dim = d
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return _bwd(y, dy.to(y.dtype), ctx.dim), None


_apply = fast_apply(SoftmaxFunction)


@torch.library.custom_op("metalcore::softmax_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_fwd(x: Tensor, dim: int) -> Tensor:
    return _fwd(x, _check(x, dim)).contiguous()  # a copy only for dim != last (the fake's layout)


@_op_fwd.register_fake
def _(x, dim):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("metalcore::softmax_bwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_bwd(y: Tensor, grad_out: Tensor, dim: int) -> Tensor:
    return _bwd(y, grad_out, _check(y, dim)).contiguous()


@_op_bwd.register_fake
def _(y, grad_out, dim):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.dim = inputs[1]


def _backward(ctx, dy):
    (y,) = ctx.saved_tensors
    return torch.ops.metalcore.softmax_bwd(y, dy, ctx.dim), None


torch.library.register_autograd("metalcore::softmax_fwd", _backward, setup_context=_setup)


def fused_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``x`` along ``dim`` (any dimension; rows of any length), like ``torch.softmax``.

    Args:
        x: float16, bfloat16, float32 or float64 tensor on CPU or CUDA.
        dim: the dimension to normalize over.

    Returns:
        A tensor of ``x``'s shape and dtype (for ``dim`` other than the last, a view whose memory is
        laid out with ``dim`` last).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not has_backend(x.device):
        _check(x, dim)
        warn_fallback("fused_softmax", x.device)
        return torch.softmax(x, dim)
    if torch.compiler.is_compiling():
        return torch.ops.metalcore.softmax_fwd(x, dim)
    return _apply(x, dim)


class MetalSoftmax(torch.nn.Module):
    """Drop-in for ``torch.nn.Softmax(dim)``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return fused_softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
