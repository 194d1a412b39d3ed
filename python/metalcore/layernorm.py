"""LayerNorm and fused residual-add + LayerNorm, forward and backward, on the metalcore core.

Semantics follow ``torch.nn.functional.layer_norm``: statistics over the trailing
``normalized_shape`` dimensions, computed in float32 for half/bfloat16 inputs (float64 for float64),
``y = (x - mean) / sqrt(var + eps) * weight + bias`` rounded once to ``x.dtype``; the variance is
the biased one. ``weight`` and ``bias`` are optional and may have a different floating dtype than
``x`` (as under autocast), but the same dtype as each other. The forward saves the per-row mean
and ``1/std`` (float32) for the backward, which gives gradients for the input, weight, bias and
(for the fused op) the residual.

Entry paths as in :mod:`metalcore.rmsnorm`: ``LayerNormFunction`` / ``FusedAddLayerNormFunction``
(``autograd.Function``) in eager mode, the custom ops ``torch.ops.metalcore.layer_norm_fwd`` /
``layer_norm_bwd`` under ``torch.compile``, and PyTorch's own ``F.layer_norm`` (with a one-time
warning) on devices without a metalcore backend.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._backend import fast_apply, has_backend, warn_fallback
from ._norm import EagerCall, _sig, acc_dtype, bwd_impl, check_inputs, eager_forward, fwd_impl

__all__ = [
    "layer_norm",
    "fused_add_layernorm",
    "LayerNormFunction",
    "FusedAddLayerNormFunction",
    "MetalLayerNorm",
    "FusedAddLayerNorm",
]

_Shape = Union[int, Sequence[int]]


def _norm_shape(x: Tensor, normalized_shape: _Shape) -> Tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(int(s) for s in normalized_shape)
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if len(shape) == 0 or len(shape) > x.dim() or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"normalized_shape: expected the trailing dimensions of x (shape {tuple(x.shape)}), got {shape}")
    return shape


def _param(name: str, p: Optional[Tensor], shape: Tuple[int, ...], n: int) -> Optional[Tensor]:
    """`p` of shape `normalized_shape`, flattened to (n,)."""
    if p is None:
        return None
    if not isinstance(p, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(p).__name__}")
    if tuple(p.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape} (normalized_shape), got {tuple(p.shape)}")
    return p.reshape(n)


def _prepare(x, residual, normalized_shape, weight, bias):
    """Validates the arguments; returns (n, weight and bias flattened to (n,))."""
    shape = _norm_shape(x, normalized_shape)
    n = math.prod(shape)
    w, b = _param("weight", weight, shape, n), _param("bias", bias, shape, n)
    check_inputs(x, residual, n, weight=w, bias=b)
    if w is not None and b is not None and w.dtype != b.dtype:
        raise TypeError(f"bias: expected dtype {w.dtype} (the dtype of weight), got {b.dtype}")
    return n, w, b


def _unflatten(g: Optional[Tensor], like: Optional[Tensor]) -> Optional[Tensor]:
    if g is None or like is None:
        return None
    # (n,) already for 1-D parameters; a view by a torch.Size costs ~7 µs of host time
    return g if like.dim() == 1 else g.view(*like.shape)


# ----------------------------------------------------------------------------------------------
# Eager path: autograd.Function.


def _eager(ctx, x: Tensor, residual: Optional[Tensor], normalized_shape: _Shape, weight: Optional[Tensor],
           bias: Optional[Tensor], eps: float, first_param: int):
    """The eager forward: (y, residual_out or None); saves what the backward needs.
    `first_param` is the weight's index among the Function's inputs."""
    ng = ctx.needs_input_grad
    want = any(ng[: first_param + 2])
    e = None
    if isinstance(x, Tensor) and all(isinstance(t, (Tensor, type(None))) for t in (residual, weight, bias)) \
            and isinstance(normalized_shape, (int, tuple, list, torch.Size)) and EagerCall.eligible(x, residual, weight, bias):

        def make() -> EagerCall:
            n, w, b = _prepare(x, residual, normalized_shape, weight, bias)
            pdt = w.dtype if w is not None else (b.dtype if b is not None else x.dtype)
            return EagerCall("layer", x, n, w, eps, 0.0, False, x.dtype, want, ng[first_param], ng[first_param + 1], pdt)

        ns = normalized_shape if isinstance(normalized_shape, int) else tuple(normalized_shape)
        key = ("layer", x.shape, x.dtype, x.device, _sig(residual), ns, _sig(weight), _sig(bias), eps, ng)
        # The parameters flattened to (n,), as `_prepare` does (a view: they are contiguous).
        w = weight if weight is None or weight.dim() == 1 else weight.view(-1)
        b = bias if bias is None or bias.dim() == 1 else bias.view(-1)
        e, (y, s, mean, rstd) = eager_forward(key, make, x, residual, w, b)
        n = e.n
    else:
        n, w, b = _prepare(x, residual, normalized_shape, weight, bias)
        y, s, mean, rstd = fwd_impl("layer", x, n, residual, w, b, eps, 0.0, False, x.dtype, want)
    if want:
        ctx.save_for_backward(x if residual is None else s, w, mean, rstd)
    ctx.n, ctx.weight, ctx.bias, ctx.e = n, weight, bias, e
    ctx.param_dtype = (b.dtype if b is not None else None)
    return y, s


def _eager_bwd(ctx, dy: Tensor, d_s: Optional[Tensor], first_param: int):
    """(dx, dw, db) of `_eager`, the parameter gradients shaped like the parameters (or None)."""
    xn, w, mean, rstd = ctx.saved_tensors
    e = ctx.e
    r = e.backward(dy, xn, w, mean, rstd, d_s) if e is not None else None
    if r is None:
        need_dw, need_db = ctx.needs_input_grad[first_param], ctx.needs_input_grad[first_param + 1]
        r = bwd_impl("layer", dy, xn, ctx.n, w, mean, rstd, d_s, 0.0, False, need_dw, need_db, ctx.param_dtype)
    dx, dw, db = r
    return dx, _unflatten(dw, ctx.weight), _unflatten(db, ctx.bias)


class LayerNormFunction(torch.autograd.Function):
    """``LayerNormFunction.apply(x, normalized_shape, weight, bias, eps)``: LayerNorm with a fused
    backward."""

    @staticmethod
    def forward(ctx, x: Tensor, normalized_shape: _Shape, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5) -> Tensor:  # type: ignore[override]
        return _eager(ctx, x, None, normalized_shape, weight, bias, eps, 2)[0]

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        dx, dw, db = _eager_bwd(ctx, dy, None, 2)
        return (dx if ctx.needs_input_grad[0] else None), None, dw, db, None


class FusedAddLayerNormFunction(torch.autograd.Function):
    """``FusedAddLayerNormFunction.apply(x, residual, normalized_shape, weight, bias, eps)`` returns
    ``(layer_norm(x + residual), x + residual)``."""

    @staticmethod
    def forward(ctx, x: Tensor, residual: Tensor, normalized_shape: _Shape, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5):  # type: ignore[override]
        if residual is None:
            raise TypeError("residual: expected a torch.Tensor, got None")
        return _eager(ctx, x, residual, normalized_shape, weight, bias, eps, 3)

    @staticmethod
    def backward(ctx, dy: Tensor, d_s: Optional[Tensor]):  # type: ignore[override]
        dx, dw, db = _eager_bwd(ctx, dy, d_s, 3)
        return dx, dx, None, dw, db, None


_ln_apply = fast_apply(LayerNormFunction)
_fused_apply = fast_apply(FusedAddLayerNormFunction)

# ----------------------------------------------------------------------------------------------
# Compiled path: torch.library custom ops (on flattened (n,) parameters) with fake implementations
# and autograd.

_EMPTY = (0,)


@torch.library.custom_op("metalcore::layer_norm_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_fwd(
    x: Tensor, residual: Optional[Tensor], n: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (y, residual_out — empty without residual, mean, rstd)."""
    check_inputs(x, residual, n, weight=weight, bias=bias)
    y, s, mean, rstd = fwd_impl("layer", x, n, residual, weight, bias, eps, 0.0, False, x.dtype, True)
    assert mean is not None and rstd is not None
    return y, (s if s is not None else x.new_empty(_EMPTY)), mean, rstd


@_op_fwd.register_fake
def _(x, residual, n, weight, bias, eps):
    rows = x.numel() // n if n else 0
    acc = acc_dtype(x.dtype)
    s = x.new_empty(x.shape) if residual is not None else x.new_empty(_EMPTY)
    return x.new_empty(x.shape), s, x.new_empty((rows,), dtype=acc), x.new_empty((rows,), dtype=acc)


@torch.library.custom_op("metalcore::layer_norm_bwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_bwd(
    dy: Tensor,
    x: Tensor,
    n: int,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    d_residual_out: Optional[Tensor],
    need_dw: bool,
    need_db: bool,
    param_dtype: Optional[torch.dtype],
) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (dx, dw, db) — dw/db empty unless asked for."""
    dx, dw, db = bwd_impl("layer", dy, x, n, weight, mean, rstd, d_residual_out, 0.0, False, need_dw, need_db, param_dtype)
    return dx, (dw if dw is not None else x.new_empty(_EMPTY)), (db if db is not None else x.new_empty(_EMPTY))


@_op_bwd.register_fake
def _(dy, x, n, weight, mean, rstd, d_residual_out, need_dw, need_db, param_dtype):
    pdt = weight.dtype if weight is not None else (param_dtype or x.dtype)
    dw = x.new_empty((n,), dtype=pdt) if (need_dw and weight is not None) else x.new_empty(_EMPTY)
    db = x.new_empty((n,), dtype=pdt) if need_db else x.new_empty(_EMPTY)
    return x.new_empty(x.shape), dw, db


def _setup_fwd(ctx, inputs, output):
    x, residual, n, weight, bias, eps = inputs
    y, s, mean, rstd = output
    ctx.save_for_backward(s if residual is not None else x, weight, mean, rstd)
    ctx.has_residual, ctx.n = residual is not None, n
    ctx.param_dtype = bias.dtype if bias is not None else None
    ctx.mark_non_differentiable(mean, rstd)


def _backward_fwd(ctx, dy, d_s, _d_mean, _d_rstd):
    xn, weight, mean, rstd = ctx.saved_tensors
    need_dw = weight is not None and ctx.needs_input_grad[3]
    need_db = ctx.needs_input_grad[4]
    dres = d_s if ctx.has_residual else None
    dx, dw, db = torch.ops.metalcore.layer_norm_bwd(dy, xn, ctx.n, weight, mean, rstd, dres, need_dw, need_db, ctx.param_dtype)
    return (dx, (dx if ctx.has_residual else None), None, (dw if need_dw else None), (db if need_db else None), None)


torch.library.register_autograd("metalcore::layer_norm_fwd", _backward_fwd, setup_context=_setup_fwd)


def _compiled(x, residual, normalized_shape, weight, bias, eps):
    n, w, b = _prepare(x, residual, normalized_shape, weight, bias)
    return torch.ops.metalcore.layer_norm_fwd(x, residual, n, w, b, eps)


# ----------------------------------------------------------------------------------------------
# Public API.


def layer_norm(
    x: Tensor,
    normalized_shape: _Shape,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dimensions of ``x``, like
    ``torch.nn.functional.layer_norm``.

    Args:
        x: float16, bfloat16, float32 or float64 tensor on CPU or CUDA.
        normalized_shape: the trailing dimensions to normalize over (an int for the last one).
        weight, bias: optional tensors of shape ``normalized_shape`` (same floating dtype).
        eps: added to the variance.

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not has_backend(x.device):
        _prepare(x, None, normalized_shape, weight, bias)
        warn_fallback("layer_norm", x.device)
        return torch.nn.functional.layer_norm(x, _norm_shape(x, normalized_shape), weight, bias, eps)
    if torch.compiler.is_compiling():
        return _compiled(x, None, normalized_shape, weight, bias, eps)[0]
    return _ln_apply(x, normalized_shape, weight, bias, eps)


def fused_add_layernorm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: _Shape,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tuple[Tensor, Tensor]:
    """``s = x + residual`` (rounded to ``x.dtype``) and ``layer_norm(s)`` in one pass.

    Returns:
        ``(normed, s)``: the normalized output and the new residual stream. Gradients flow to ``x``,
        ``residual``, ``weight`` and ``bias`` through both outputs.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not has_backend(x.device):
        _prepare(x, residual, normalized_shape, weight, bias)
        warn_fallback("fused_add_layernorm", x.device)
        s = x + residual
        return torch.nn.functional.layer_norm(s, _norm_shape(x, normalized_shape), weight, bias, eps), s
    if torch.compiler.is_compiling():
        y, s, _, _ = _compiled(x, residual, normalized_shape, weight, bias, eps)
        return y, s
    return _fused_apply(x, residual, normalized_shape, weight, bias, eps)


class MetalLayerNorm(torch.nn.Module):
    """Drop-in for ``torch.nn.LayerNorm`` (same arguments, parameters and state dict)."""

    def __init__(
        self,
        normalized_shape: _Shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape: Tuple[int, ...] = tuple(int(s) for s in shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = torch.nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
            if bias:
                self.bias = torch.nn.Parameter(torch.zeros(self.normalized_shape, device=device, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class FusedAddLayerNorm(MetalLayerNorm):
    """``forward(x, residual) -> (layer_norm(x + residual), x + residual)`` with learned parameters."""

    def forward(self, x: Tensor, residual: Tensor) -> Tuple[Tensor, Tensor]:  # type: ignore[override]
        return fused_add_layernorm(x, residual, self.normalized_shape, self.weight, self.bias, self.eps)

