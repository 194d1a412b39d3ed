"""Cross-entropy over the last dimension of logits, with the gradient fused into the forward pass,
and a fused linear + cross-entropy that never materialises the full logits.

Semantics of ``F.cross_entropy(logits, target, ignore_index=..., label_smoothing=...,
reduction=...)`` for class-last logits ``(*, V)`` and integer targets ``(*)``, plus an optional
z-loss ``z · lse²`` per token (PaLM; ``lse`` = log-sum-exp of the row) added to each non-ignored
token's loss. ``reduction="mean"`` divides by the number of non-ignored targets (NaN when every
target is ignored, as torch). The loss has the logits' dtype; the per-row math is in float32
(float64 for float64 logits) and never needs a float32 copy of the logits: the kernels stream the
rows in their own dtype.

Speed: when the logits require grad and the reduction is ``mean`` or ``sum``, the forward writes
the gradient as well (one launch; on CUDA a row that fits is held on chip, so the logits are read
from memory once), assuming an output gradient of 1; the backward's kernel compares the scale
on the device and does nothing when the output gradient is 1 (no host sync, also under CUDA graph
capture), and recomputes the gradient scaled otherwise.
``reduction="none"`` computes the gradient in the backward from the saved log-sum-exp.

Targets outside ``[0, V)`` other than ``ignore_index`` raise ``IndexError`` (one host-device sync;
under CUDA graph capture and ``torch.compile`` they cannot be checked and give a NaN loss instead —
never an out-of-bounds read).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import _native
from ._backend import capturing, check_float, check_same_device, desc, empty, fast_apply, has_backend, opt_desc, stream_of, warn_fallback
from ._norm import rows

__all__ = ["cross_entropy", "CrossEntropyFunction", "MetalCrossEntropyLoss", "fused_linear_cross_entropy", "MetalFusedLinearCrossEntropyLoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(logits: Tensor, target: Tensor, ignore_index: int, label_smoothing: float, reduction: str, z_loss: float) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    check_float("logits", logits)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target: expected an integer tensor of class indices, got {target.dtype}")
    check_same_device("logits", logits, target=target)
    if logits.dim() < 1 or tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"target: expected shape {tuple(logits.shape[:-1])} (the logits' shape without the class dimension), got {tuple(target.shape)}")
    if logits.dim() >= 1 and logits.shape[-1] == 0:
        raise ValueError("logits: expected at least one class")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    if not float(z_loss) >= 0.0:
        raise ValueError(f"z_loss: expected a non-negative weight, got {z_loss}")
    if not -(2**31) <= int(ignore_index) < 2**31:
        raise ValueError(f"ignore_index: expected a 32-bit integer, got {ignore_index}")



def _check_targets(target: Tensor, classes: int, ignore_index: int) -> None:
    """Out-of-range targets raise (when the values may be read: this synchronizes with the GPU).
    The kernels never dereference such a target (its row's loss is NaN)."""
    t = target.reshape(-1)
    if t.numel() and not capturing(t) and not torch.compiler.is_compiling():
        # Few kernels and one small copy: the smallest and largest target that is not ignored.
        lo, hi = torch.stack(torch.aminmax(t.masked_fill(t == ignore_index, 0))).tolist()
        if lo < 0 or hi >= classes:
            bad = ((t < 0) | (t >= classes)) & (t != ignore_index)
            i = int(torch.nonzero(bad)[0, 0])
            raise IndexError(f"target: class index {int(t[i])} at flat position {i} is out of range [0, {classes}) and is not ignore_index ({ignore_index})")


def _targets(target: Tensor) -> Tensor:
    """Flat int32 targets (unchecked: see `_check_targets`)."""
    return target.reshape(-1).to(torch.int32).contiguous()


def _launch(x2: Tensor, t: Tensor, loss: Tensor, lse: Tensor, grad: Optional[Tensor], scale: Optional[Tensor], backward: bool,
            ignore_index: int, label_smoothing: float, z_loss: float, skip_if_scale: Optional[Tensor] = None) -> None:
    if x2.shape[0]:
        _native.cross_entropy_into(
            desc(x2, "logits"), desc(t, "target"), desc(loss, "loss"), desc(lse, "lse"), opt_desc(grad, "grad"),
            opt_desc(scale, "scale"), opt_desc(skip_if_scale, "skip_if_scale"), backward, int(ignore_index),
            float(label_smoothing), float(z_loss), stream_of(x2),
        )


def _reduce(per_row: Tensor, n_valid: Tensor, reduction: str, shape, dtype: torch.dtype) -> Tensor:
    if reduction == "none":
        return per_row.view(shape).to(dtype)
    total = per_row.sum()
    return (total / n_valid if reduction == "mean" else total).to(dtype)


class CrossEntropyFunction(torch.autograd.Function):
    """``CrossEntropyFunction.apply(logits, target, ignore_index, label_smoothing, reduction, z_loss,
    grad_mode)`` → ``(loss, z_loss_value)`` (the second output is for logging and not
    differentiable). ``grad_mode`` is ``torch.is_grad_enabled()`` of the caller: the gradient is
    written during the forward only when a backward can follow."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, reduction, z_loss, grad_mode=True):  # type: ignore[override]
        V = logits.shape[-1]
        x2 = rows(logits, V)
        t = _targets(target)
        acc = _acc(logits.dtype)
        n = x2.shape[0]
        loss_rows, lse = empty((n,), acc, logits.device), empty((n,), acc, logits.device)
        n_valid = (t != ignore_index).sum().to(acc)
        fused = grad_mode and ctx.needs_input_grad[0] and reduction != "none"
        grad = scale = None
        if fused:
            one = torch.ones((), dtype=acc, device=logits.device)
            # The backward's own formula with g = 1, so that its device-side comparison is exact.
            scale = (one / n_valid if reduction == "mean" else one).reshape(1)
            grad = empty(x2.shape, logits.dtype, logits.device)
        # The check synchronizes: everything the launch needs is queued first, so the GPU waits
        # only for the launch call itself after it.
        _check_targets(target, V, ignore_index)
        _launch(x2, t, loss_rows, lse, grad, scale, False, ignore_index, label_smoothing, z_loss)
        loss = _reduce(loss_rows, n_valid, reduction, target.shape, logits.dtype)
        zl = torch.where(t != ignore_index, z_loss * lse * lse, torch.zeros_like(lse))
        zval = _reduce(zl, n_valid, reduction, target.shape, logits.dtype)
        ctx.mark_non_differentiable(zval)
        ctx.save_for_backward(x2, t, lse, n_valid, grad, scale)
        ctx.args = (ignore_index, label_smoothing, reduction, z_loss, logits.shape)
        return loss, zval

    @staticmethod
    def backward(ctx, g, _gz):  # type: ignore[override]
        x2, t, lse, n_valid, grad, fused_scale = ctx.saved_tensors
        ignore_index, label_smoothing, reduction, z_loss, shape = ctx.args
        acc = lse.dtype
        if reduction == "none":
            scale = g.reshape(-1).to(acc).contiguous()
        elif reduction == "mean":
            scale = (g.to(acc) / n_valid).reshape(1)
        else:
            scale = g.to(acc).reshape(1)
        out = grad if grad is not None else empty(x2.shape, x2.dtype, x2.device)
        scratch = torch.empty_like(lse)
        # After a fused forward the kernel itself skips the work (on the device, no host sync) when
        # the incoming gradient leaves the scale unchanged (the usual loss.backward()).
        _launch(x2, t, scratch, lse, out, scale, True, ignore_index, label_smoothing, z_loss,
                skip_if_scale=fused_scale if grad is not None else None)
        return out.view(shape), None, None, None, None, None, None


_apply = fast_apply(CrossEntropyFunction)


# Compiled path: per-row forward and backward ops; the reduction is plain torch around them.
@torch.library.custom_op("metalcore::cross_entropy_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_fwd(logits: Tensor, target: Tensor, ignore_index: int, label_smoothing: float, z_loss: float) -> Tuple[Tensor, Tensor]:
    acc = _acc(logits.dtype)
    n = logits.shape[0]
    loss, lse = empty((n,), acc, logits.device), empty((n,), acc, logits.device)
    _launch(rows(logits, logits.shape[-1]), target, loss, lse, None, None, False, ignore_index, label_smoothing, z_loss)
    return loss, lse


@_op_fwd.register_fake
def _(logits, target, ignore_index, label_smoothing, z_loss):
    acc = _acc(logits.dtype)
    return logits.new_empty((logits.shape[0],), dtype=acc), logits.new_empty((logits.shape[0],), dtype=acc)


@torch.library.custom_op("metalcore::cross_entropy_bwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_bwd(logits: Tensor, target: Tensor, lse: Tensor, grad_rows: Tensor, ignore_index: int, label_smoothing: float, z_loss: float) -> Tensor:
    out = empty(logits.shape, logits.dtype, logits.device)
    scratch = torch.empty_like(lse)
    _launch(rows(logits, logits.shape[-1]), target, scratch, lse, out, grad_rows.to(lse.dtype).contiguous(), True,
            ignore_index, label_smoothing, z_loss)
    return out


@_op_bwd.register_fake
def _(logits, target, lse, grad_rows, ignore_index, label_smoothing, z_loss):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _ce_setup(ctx, inputs, output):
    logits, target, ignore_index, label_smoothing, z_loss = inputs
    ctx.save_for_backward(logits, target, output[1])
    ctx.args = (ignore_index, label_smoothing, z_loss)


def _ce_backward(ctx, g_loss, _g_lse):
    logits, target, lse = ctx.saved_tensors
    ignore_index, label_smoothing, z_loss = ctx.args
    return torch.ops.metalcore.cross_entropy_bwd(logits, target, lse, g_loss, ignore_index, label_smoothing, z_loss), None, None, None, None


torch.library.register_autograd("metalcore::cross_entropy_fwd", _ce_backward, setup_context=_ce_setup)


def _reference(logits, target, ignore_index, label_smoothing, reduction, z_loss):
    """torch's own cross-entropy (+ z-loss), for devices without a metalcore backend."""
    x = logits.reshape(-1, logits.shape[-1])
    t = target.reshape(-1).long()
    loss = torch.nn.functional.cross_entropy(x.float(), t, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none")
    lse = torch.logsumexp(x.float(), -1)
    valid = t != ignore_index
    zl = torch.where(valid, z_loss * lse * lse, torch.zeros_like(lse))
    n = valid.sum()
    return _reduce(loss + zl, n, reduction, target.shape, logits.dtype), _reduce(zl, n, reduction, target.shape, logits.dtype)


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    z_loss: float = 0.0,
    return_z_loss: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Cross-entropy of class-last ``logits`` ``(*, V)`` against integer ``target`` ``(*)``, like
    ``F.cross_entropy`` (see the module docstring), with an optional z-loss ``z_loss · lse²``.

    Returns:
        The loss (a scalar for ``mean``/``sum``, ``target``'s shape for ``none``) in the logits'
        dtype; with ``return_z_loss``, also the z-loss part alone (for logging, not differentiable).
    """
    _check(logits, target, ignore_index, label_smoothing, reduction, z_loss)
    if not has_backend(logits.device):
        warn_fallback("cross_entropy", logits.device)
        loss, zl = _reference(logits, target, ignore_index, label_smoothing, reduction, z_loss)
    elif torch.compiler.is_compiling():
        V = logits.shape[-1]
        x2 = logits.reshape(-1, V)
        t = target.reshape(-1).to(torch.int32)
        rows_loss, lse = torch.ops.metalcore.cross_entropy_fwd(x2, t, ignore_index, float(label_smoothing), float(z_loss))
        valid = t != ignore_index
        n = valid.sum().to(rows_loss.dtype)
        loss = _reduce(rows_loss, n, reduction, target.shape, logits.dtype)
        zl = _reduce(torch.where(valid, z_loss * lse.detach() ** 2, torch.zeros_like(lse)), n, reduction, target.shape, logits.dtype)
    else:
        loss, zl = _apply(logits, target, int(ignore_index), float(label_smoothing), reduction, float(z_loss), torch.is_grad_enabled())
    return (loss, zl) if return_z_loss else loss


class MetalCrossEntropyLoss(torch.nn.Module):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` (class-last logits), with an optional z-loss."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
        self.ignore_index, self.reduction, self.label_smoothing, self.z_loss = ignore_index, reduction, label_smoothing, z_loss

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(logits, target, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                             reduction=self.reduction, z_loss=self.z_loss)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, z_loss={self.z_loss}"


def _flce(x: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, ignore_index: int, label_smoothing: float,
          reduction: str, z_loss: float, chunk: int, need_x: bool, need_w: bool, need_b: bool):
    """(loss, grad_x or None, grad_weight or None (float32, float64 for float64), grad_bias or None):
    ``chunk`` tokens at a time; each chunk's logits buffer is overwritten by its gradient, then
    multiplied into grad_x and accumulated into grad_weight, so at most one chunk of logits exists."""
    H, V = x.shape[-1], weight.shape[0]
    x2 = x.reshape(-1, H)
    n = x2.shape[0]
    _check_targets(target, V, ignore_index)
    t = _targets(target)
    acc = _acc(x.dtype)
    n_valid = (t != ignore_index).sum().to(acc)
    scale = (1.0 / n_valid if reduction == "mean" else torch.ones((), dtype=acc, device=x.device)).reshape(1)
    need = need_x or need_w or need_b
    gdt = torch.float32 if weight.dtype != torch.float64 else weight.dtype
    grad_x = empty(x2.shape, x.dtype, x.device) if need_x else None
    grad_w = torch.zeros(weight.shape, dtype=gdt, device=x.device) if need_w else None
    grad_b = torch.zeros((V,), dtype=gdt, device=x.device) if need_b else None
    loss_rows = empty((n,), acc, x.device)
    lse = empty((n,), acc, x.device)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        xc = x2[s:e]
        logits = xc @ weight.T
        if bias is not None:
            logits = logits + bias
        _launch(logits, t[s:e], loss_rows[s:e], lse[s:e], logits if need else None, scale if need else None, False,
                ignore_index, label_smoothing, z_loss)
        if need_x:
            torch.mm(logits, weight, out=grad_x[s:e])
        if need_w:
            grad_w += (logits.T @ xc).to(grad_w.dtype)
        if need_b:
            grad_b += logits.sum(0, dtype=grad_b.dtype)
    loss = _reduce(loss_rows, n_valid, reduction, (), x.dtype)
    return loss, (None if grad_x is None else grad_x.view(x.shape)), grad_w, grad_b


def _scaled_grads(g: Tensor, grads, dtypes, one: bool):
    """The forward's gradients times the loss's gradient `g` (skipped when `one`), in `dtypes`."""
    outs = []
    for t, dtype in zip(grads, dtypes):
        if t is None:
            outs.append(None)
            continue
        t = t if one else t * g.to(t.dtype)
        outs.append(t if dtype is None else t.to(dtype))
    return outs


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """``apply(x, weight, bias, target, ignore_index, label_smoothing, reduction, z_loss, chunk)``:
    ``cross_entropy(x @ weight.T + bias, target)`` computed ``chunk`` tokens at a time (see
    :func:`_flce`); the forward also computes every gradient, the backward scales them."""

    @staticmethod
    def forward(ctx, x, weight, bias, target, ignore_index, label_smoothing, reduction, z_loss, chunk):  # type: ignore[override]
        need_b = bias is not None and ctx.needs_input_grad[2]
        loss, grad_x, grad_w, grad_b = _flce(x, weight, bias, target, ignore_index, label_smoothing, reduction, z_loss, chunk,
                                             ctx.needs_input_grad[0], ctx.needs_input_grad[1], need_b)
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.dtypes = (None, weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        one = not capturing(g) and bool(g == 1)
        gx, gw, gb = _scaled_grads(g, ctx.saved_tensors, ctx.dtypes, one)
        return gx, gw, gb, None, None, None, None, None, None


# The compiled path: the whole chunked loop as one opaque custom op returning the loss and the
# gradients it computed (empty tensors for those not wanted).
@torch.library.custom_op("metalcore::fused_linear_cross_entropy", mutates_args=(), device_types=("cpu", "cuda"))
def _op_flce(x: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, ignore_index: int, label_smoothing: float,
             reduction: str, z_loss: float, chunk: int, need_x: bool, need_w: bool, need_b: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    loss, gx, gw, gb = _flce(x, weight, bias, target, ignore_index, label_smoothing, reduction, z_loss, chunk, need_x, need_w, need_b)
    return tuple(x.new_empty(0) if t is None else t for t in (loss, gx, gw, gb))  # type: ignore[return-value]


@_op_flce.register_fake
def _(x, weight, bias, target, ignore_index, label_smoothing, reduction, z_loss, chunk, need_x, need_w, need_b):
    gdt = torch.float32 if weight.dtype != torch.float64 else weight.dtype
    return (x.new_empty(()), x.new_empty(x.shape if need_x else (0,)),
            weight.new_empty(weight.shape if need_w else (0,), dtype=gdt), weight.new_empty((weight.shape[0],) if need_b else (0,), dtype=gdt))


def _flce_setup(ctx, inputs, output):
    x, weight, bias, *_rest, need_x, need_w, need_b = inputs
    ctx.save_for_backward(*output[1:])
    ctx.needs = (need_x, need_w, need_b)
    ctx.dtypes = (None, weight.dtype, None if bias is None else bias.dtype)
    ctx.mark_non_differentiable(*output[1:])


def _flce_backward(ctx, g, *_g_grads):
    grads = [t if need else None for t, need in zip(ctx.saved_tensors, ctx.needs)]
    gx, gw, gb = _scaled_grads(g, grads, ctx.dtypes, False)
    return gx, gw, gb, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("metalcore::fused_linear_cross_entropy", _flce_backward, setup_context=_flce_setup)


def fused_linear_cross_entropy(
    x: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Optional[Tensor] = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    z_loss: float = 0.0,
    chunk_size: Optional[int] = None,
) -> Tensor:
    """``cross_entropy(x @ weight.T + bias, target)`` without materialising the logits: tokens are
    processed ``chunk_size`` at a time (default: about as many logits per chunk as ``x`` has
    elements), and every gradient is computed in the forward pass.

    Args:
        x: hidden states ``(*, H)``; weight: the LM head ``(V, H)``; bias: optional ``(V,)``;
        target: ``(*)`` class indices. ``reduction`` is ``mean`` or ``sum``.
    """
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        check_float(name, t)
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"weight: expected shape (V, {x.shape[-1] if x.dim() else '?'}) to match x of shape {tuple(x.shape)}, got {tuple(weight.shape)}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"weight/bias: expected dtype {x.dtype} (the dtype of x)")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_same_device("x", x, weight=weight, bias=bias)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum' (the fused form has no per-token output), got {reduction!r}")
    logits_like = x.new_empty(()).expand(x.shape[:-1] + (weight.shape[0],))  # shape only, no memory
    _check(logits_like, target, ignore_index, label_smoothing, reduction, z_loss)
    n, H, V = math.prod(x.shape[:-1]), x.shape[-1], weight.shape[0]
    chunk = int(chunk_size) if chunk_size else max(1, min(n, -(-n * H // V)))
    if chunk < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    if not has_backend(x.device):
        warn_fallback("fused_linear_cross_entropy", x.device)
        logits = torch.nn.functional.linear(x, weight, bias)
        return cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction, z_loss=z_loss)  # type: ignore[return-value]
    if torch.compiler.is_compiling():
        grad = torch.is_grad_enabled()
        need = [grad and t is not None and t.requires_grad for t in (x, weight, bias)]
        return torch.ops.metalcore.fused_linear_cross_entropy(x, weight, bias, target, int(ignore_index), float(label_smoothing),
                                                              reduction, float(z_loss), chunk, *need)[0]
    return FusedLinearCrossEntropyFunction.apply(x, weight, bias, target, int(ignore_index), float(label_smoothing), reduction, float(z_loss), chunk)


class MetalFusedLinearCrossEntropyLoss(torch.nn.Module):
    """``forward(weight, x, target, bias=None)``: :func:`fused_linear_cross_entropy` with fixed options
    (argument order as Liger's ``LigerFusedLinearCrossEntropyLoss``)."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                 chunk_size: Optional[int] = None) -> None:
        super().__init__()
        self.ignore_index, self.reduction, self.label_smoothing, self.z_loss, self.chunk_size = ignore_index, reduction, label_smoothing, z_loss, chunk_size

    def forward(self, weight: Tensor, x: Tensor, target: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        return fused_linear_cross_entropy(x, weight, target, bias, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                                          reduction=self.reduction, z_loss=self.z_loss, chunk_size=self.chunk_size)
