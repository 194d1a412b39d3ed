"""RMSNorm and fused residual-add + RMSNorm, forward and backward, on the metalcore core.

Semantics follow HF transformers:

- ``casting="llama"`` (LlamaRMSNorm, Qwen2RMSNorm, ...): the norm is computed in float32, cast to
  the input dtype, then multiplied by ``weight + offset``; the output takes
  ``torch.promote_types(x.dtype, weight.dtype)``.
- ``casting="gemma"`` (GemmaRMSNorm): everything in float32 with ``offset=1.0`` (``1 + w``), one cast to
  the input dtype at the end.

float64 inputs are computed in float64 (HF would compute them in float32). Gradients flow to the
input, the weight and (for the fused op) the residual; the forward saves only the per-row ``1/rms``.

Two entry paths share one implementation: eager calls go through ``RMSNormFunction`` /
``FusedAddRMSNormFunction`` (``torch.autograd.Function``, the least Python overhead), and code
traced by ``torch.compile`` goes through the custom ops ``torch.ops.metalcore.rms_norm_fwd`` /
``rms_norm_bwd``, which carry fake (meta) implementations and an autograd registration, so
``torch.compile(fullgraph=True)`` traces them without graph breaks. Tensors on a device with no
metalcore backend (e.g. ``mps``) are computed by PyTorch's own ops (``metalcore.reference``), with a
one-time warning.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import reference
from ._backend import fast_apply, has_backend, warn_fallback
from ._norm import EagerCall, _sig, acc_dtype, bwd_impl, check_inputs, eager_forward, fwd_impl

__all__ = [
    "rms_norm",
    "fused_add_rmsnorm",
    "RMSNormFunction",
    "FusedAddRMSNormFunction",
    "MetalRMSNorm",
    "FusedAddRMSNorm",
]

_CASTINGS = ("llama", "gemma")


def _cast_before_weight(casting: str) -> bool:
    if casting not in _CASTINGS:
        raise ValueError(f"casting: expected one of {_CASTINGS}, got {casting!r}")
    return casting == "llama"


def _out_dtype(x: Tensor, weight: Optional[Tensor], cast_before_weight: bool) -> torch.dtype:
    if weight is not None and cast_before_weight:
        return torch.promote_types(x.dtype, weight.dtype)
    return x.dtype


def _check(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor]) -> None:
    check_inputs(x, residual, x.shape[-1] if isinstance(x, Tensor) and x.dim() else 0, weight=weight)


def _fwd_impl(
    x: Tensor,
    residual: Optional[Tensor],
    weight: Optional[Tensor],
    eps: float,
    offset: float,
    cast_before_weight: bool,
    want_rstd: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Returns (y, residual_out or None, rstd or None)."""
    y, res_out, _, rstd = fwd_impl("rms", x, x.shape[-1], residual, weight, None, eps, offset, cast_before_weight,
                                   _out_dtype(x, weight, cast_before_weight), want_rstd)
    return y, res_out, rstd


def _bwd_impl(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    rstd: Tensor,
    d_res_out: Optional[Tensor],
    offset: float,
    cast_before_weight: bool,
    need_dw: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Returns (dx, dw or None); `x` is the tensor that was normalized."""
    dx, dw, _ = bwd_impl("rms", dy, x, x.shape[-1], weight, None, rstd, d_res_out, offset, cast_before_weight,
                         need_dw, False)
    return dx, dw


# ----------------------------------------------------------------------------------------------
# Eager path: autograd.Function.


def _eager(ctx, x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], eps: float, offset: float,
           casting: str, wgrad: int) -> Tuple[Tensor, Optional[Tensor]]:
    """The eager forward: (y, residual_out or None); saves what the backward needs. `wgrad` is
    the weight's index among the Function's inputs."""
    ng = ctx.needs_input_grad
    want = any(ng[: wgrad + 1])
    e = None
    if isinstance(x, Tensor) and isinstance(weight, (Tensor, type(None))) and isinstance(residual, (Tensor, type(None))) \
            and EagerCall.eligible(x, residual, weight):

        def make() -> EagerCall:
            cast = _cast_before_weight(casting)
            _check(x, residual, weight)
            pdt = weight.dtype if weight is not None else x.dtype
            return EagerCall("rms", x, x.shape[-1], weight, eps, offset, cast, _out_dtype(x, weight, cast), want,
                             ng[wgrad], False, pdt)

        key = ("rms", x.shape, x.dtype, x.device, _sig(residual), _sig(weight), eps, offset, casting, ng)
        e, (y, res_out, _, rstd) = eager_forward(key, make, x, residual, weight, None)
        cast = e.cast
    else:
        cast = _cast_before_weight(casting)
        _check(x, residual, weight)
        y, res_out, rstd = _fwd_impl(x, residual, weight, eps, offset, cast, want)
    if want:
        ctx.save_for_backward(x if residual is None else res_out, weight, rstd)
    ctx.offset, ctx.cast, ctx.e = offset, cast, e
    return y, res_out


def _eager_bwd(ctx, dy: Tensor, d_res_out: Optional[Tensor], wgrad: int) -> Tuple[Tensor, Optional[Tensor]]:
    """(dx, dw or None) of the eager forward `_eager`."""
    xn, weight, rstd = ctx.saved_tensors
    e = ctx.e
    r = e.backward(dy, xn, weight, None, rstd, d_res_out) if e is not None else None
    if r is None:
        return _bwd_impl(dy, xn, weight, rstd, d_res_out, ctx.offset, ctx.cast, ctx.needs_input_grad[wgrad])
    return r[0], r[1]


class RMSNormFunction(torch.autograd.Function):
    """``RMSNormFunction.apply(x, weight, eps, offset, casting)``: RMSNorm with a fused backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], eps: float = 1e-6, offset: float = 0.0, casting: str = "llama") -> Tensor:  # type: ignore[override]
        return _eager(ctx, x, None, weight, eps, offset, casting, 1)[0]

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        dx, dw = _eager_bwd(ctx, dy, None, 1)
        return (dx if ctx.needs_input_grad[0] else None), dw, None, None, None


class FusedAddRMSNormFunction(torch.autograd.Function):
    """``FusedAddRMSNormFunction.apply(x, residual, weight, eps, offset, casting)`` returns
    ``(rms_norm(x + residual), x + residual)``."""

    @staticmethod
    def forward(ctx, x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float = 1e-6, offset: float = 0.0, casting: str = "llama"):  # type: ignore[override]
        if residual is None:
            raise TypeError("residual: expected a torch.Tensor, got None")
        return _eager(ctx, x, residual, weight, eps, offset, casting, 2)

    @staticmethod
    def backward(ctx, dy: Tensor, d_res_out: Optional[Tensor]):  # type: ignore[override]
        dx, dw = _eager_bwd(ctx, dy, d_res_out, 2)
        return dx, dx, dw, None, None, None


_rms_apply = fast_apply(RMSNormFunction)
_fused_apply = fast_apply(FusedAddRMSNormFunction)

# ----------------------------------------------------------------------------------------------
# Compiled path: torch.library custom ops with fake implementations and autograd.

_EMPTY = (0,)


@torch.library.custom_op("metalcore::rms_norm_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_fwd(
    x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], eps: float, offset: float, cast_before_weight: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (y, residual_out — empty without residual, rstd)."""
    _check(x, residual, weight)
    y, res_out, rstd = _fwd_impl(x, residual, weight, eps, offset, cast_before_weight, True)
    if res_out is None:
        res_out = x.new_empty(_EMPTY)
    assert rstd is not None
    return y, res_out, rstd


@_op_fwd.register_fake
def _(x, residual, weight, eps, offset, cast_before_weight):
    rows = 1
    for s in x.shape[:-1]:
        rows *= s
    y = x.new_empty(x.shape, dtype=_out_dtype(x, weight, cast_before_weight))
    res_out = x.new_empty(x.shape) if residual is not None else x.new_empty(_EMPTY)
    return y, res_out, x.new_empty((rows,), dtype=acc_dtype(x.dtype))


@torch.library.custom_op("metalcore::rms_norm_bwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_bwd(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    rstd: Tensor,
    d_residual_out: Optional[Tensor],
    offset: float,
    cast_before_weight: bool,
    need_dw: bool,
) -> Tuple[Tensor, Tensor]:
    """Returns (dx, dw — empty unless need_dw and a weight)."""
    dx, dw = _bwd_impl(dy, x, weight, rstd, d_residual_out, offset, cast_before_weight, need_dw)
    return dx, (dw if dw is not None else x.new_empty(_EMPTY))


@_op_bwd.register_fake
def _(dy, x, weight, rstd, d_residual_out, offset, cast_before_weight, need_dw):
    dw = weight.new_empty(weight.shape) if (need_dw and weight is not None) else x.new_empty(_EMPTY)
    return x.new_empty(x.shape), dw


def _setup_fwd(ctx, inputs, output):
    x, residual, weight, eps, offset, cast = inputs
    y, res_out, rstd = output
    ctx.save_for_backward(res_out if residual is not None else x, weight, rstd)
    ctx.has_residual, ctx.offset, ctx.cast = residual is not None, offset, cast
    ctx.mark_non_differentiable(rstd)


def _backward_fwd(ctx, dy, d_res_out, _d_rstd):
    xn, weight, rstd = ctx.saved_tensors
    need_dw = weight is not None and ctx.needs_input_grad[2]
    dres = d_res_out if ctx.has_residual else None
    dx, dw = torch.ops.metalcore.rms_norm_bwd(dy, xn, weight, rstd, dres, ctx.offset, ctx.cast, need_dw)
    return dx, (dx if ctx.has_residual else None), (dw if need_dw else None), None, None, None


torch.library.register_autograd("metalcore::rms_norm_fwd", _backward_fwd, setup_context=_setup_fwd)


# ----------------------------------------------------------------------------------------------
# Public API.


def rms_norm(
    x: Tensor,
    weight: Optional[Tensor] = None,
    eps: float = 1e-6,
    *,
    offset: float = 0.0,
    casting: str = "llama",
) -> Tensor:
    """RMSNorm over the last dimension of ``x`` (any leading shape).

    Args:
        x: float16, bfloat16, float32 or float64 tensor on CPU or CUDA.
        weight: optional scale of shape ``(x.shape[-1],)``, any floating dtype.
        eps: added to the mean square.
        offset: added to the weight (``1.0`` for Gemma's ``1 + w``).
        casting: ``"llama"`` or ``"gemma"`` (see the module docstring).

    Returns:
        A tensor of ``x``'s shape; dtype ``promote_types(x.dtype, weight.dtype)`` with Llama
        casting and a weight, else ``x.dtype``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not has_backend(x.device):
        _check(x, None, weight)
        warn_fallback("rms_norm", x.device)
        _cast_before_weight(casting)
        return reference.rms_norm(x, weight, eps, offset, casting)
    if torch.compiler.is_compiling():
        _check(x, None, weight)
        return torch.ops.metalcore.rms_norm_fwd(x, None, weight, eps, offset, _cast_before_weight(casting))[0]
    return _rms_apply(x, weight, eps, offset, casting)


def fused_add_rmsnorm(
    x: Tensor,
    residual: Tensor,
    weight: Optional[Tensor] = None,
    eps: float = 1e-6,
    *,
    offset: float = 0.0,
    casting: str = "llama",
) -> Tuple[Tensor, Tensor]:
    """``s = x + residual`` (rounded to ``x.dtype``) and ``rms_norm(s)`` in one pass.

    Returns:
        ``(normed, s)``: the normalized output and the new residual stream. Gradients flow to ``x``,
        ``residual`` and ``weight`` through both outputs.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not has_backend(x.device):
        _check(x, residual, weight)
        warn_fallback("fused_add_rmsnorm", x.device)
        _cast_before_weight(casting)
        return reference.fused_add_rms_norm(x, residual, weight, eps, offset, casting)
    if torch.compiler.is_compiling():
        _check(x, residual, weight)
        y, s, _ = torch.ops.metalcore.rms_norm_fwd(x, residual, weight, eps, offset, _cast_before_weight(casting))
        return y, s
    return _fused_apply(x, residual, weight, eps, offset, casting)


class MetalRMSNorm(torch.nn.Module):
    """Drop-in RMSNorm module (HF ``LlamaRMSNorm`` semantics by default).

    Args:
        hidden_size: size of the last dimension.
        eps: added to the mean square.
        elementwise_affine: learn a weight (initialised to ones, or to zeros when ``offset != 0``,
            as Gemma does with ``1 + w``).
        offset: added to the weight in the product.
        casting: ``"llama"`` or ``"gemma"``.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        *,
        offset: float = 0.0,
        casting: str = "llama",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _cast_before_weight(casting)
        self.hidden_size, self.eps, self.offset, self.casting = hidden_size, eps, offset, casting
        # HF modules call it variance_epsilon; keep both names readable.
        self.variance_epsilon = eps
        if elementwise_affine:
            init = torch.zeros if offset != 0.0 else torch.ones
            self.weight = torch.nn.Parameter(init(hidden_size, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps, offset=self.offset, casting=self.casting)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, offset={self.offset}, casting={self.casting!r}"


class FusedAddRMSNorm(MetalRMSNorm):
    """``forward(x, residual) -> (rms_norm(x + residual), x + residual)`` with a learned weight."""

    def forward(self, x: Tensor, residual: Tensor) -> Tuple[Tensor, Tensor]:  # type: ignore[override]
        return fused_add_rmsnorm(x, residual, self.weight, self.eps, offset=self.offset, casting=self.casting)
