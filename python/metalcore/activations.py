"""Activations (SiLU, GELU exact and tanh), bias + activation, and gated linear units (SwiGLU,
GeGLU), forward and backward, on the metalcore core.

Semantics of ``F.silu`` / ``F.gelu(approximate=...)``: computed in float32 for half/bfloat16
inputs (float64 for float64), returned in the input's dtype. The fused forms keep their
intermediate in float32, so they round once where the unfused torch code rounds two or three
times:

- ``bias_gelu(x, b) = gelu(x + b)``, ``bias_silu(x, b) = silu(x + b)``, ``b`` of shape ``(x.shape[-1],)``;
- ``swiglu(gate, up) = silu(gate) * up`` (the Llama MLP), ``geglu(gate, up) = gelu(gate) * up``.

Backward passes recompute the activation from the saved input (nothing else is saved).
GELU-tanh is computed as ``x·σ(2u)``, the same function as HF's ``NewGELUActivation``
``0.5·x·(1 + tanh(u))`` but without the cancellation of ``1 + tanh(u)`` for negative ``x``.

Entry paths as in :mod:`metalcore.rmsnorm`: autograd Functions (eager), the custom ops
``torch.ops.metalcore.act_fwd`` / ``act_bwd`` / ``glu_fwd`` / ``glu_bwd`` (``torch.compile``), and
PyTorch's own ops (with a one-time warning) on devices without a metalcore backend.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _native
from ._backend import check_float, check_same_device, desc, empty, fast_apply, has_backend, opt_desc, stream_of, warn_fallback
from ._norm import rows

__all__ = [
    "metal_silu",
    "metal_gelu",
    "bias_silu",
    "bias_gelu",
    "swiglu",
    "swiglu_bwd",
    "geglu",
    "ActivationFunction",
    "GLUFunction",
    "MetalSiLU",
    "MetalGELU",
    "MetalSwiGLU",
]

SILU, GELU, GELU_TANH = 0, 1, 2
_NAMES = {SILU: "silu", GELU: "gelu", GELU_TANH: "gelu(approximate='tanh')"}


def _gelu_code(approximate: str) -> int:
    if approximate == "none":
        return GELU
    if approximate == "tanh":
        return GELU_TANH
    raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")


def _torch_act(act: int, x: Tensor) -> Tensor:
    if act == SILU:
        return F.silu(x)
    return F.gelu(x, approximate="tanh" if act == GELU_TANH else "none")


def _as_rows(t: Tensor) -> Tensor:
    """`t` as a (rows, n) view the core accepts (0-d tensors as one element)."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    return rows(t, t.shape[-1])


def _check_x(x: Tensor, bias: Optional[Tensor]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    check_float("x", x)
    if bias is None:
        return
    if not isinstance(bias, Tensor):
        raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
    check_same_device("x", x, bias=bias)
    n = x.shape[-1] if x.dim() else 1
    if bias.dim() != 1 or bias.shape[0] != n:
        raise ValueError(f"bias: expected shape ({n},) to match the last dimension of x, got {tuple(bias.shape)}")
    if bias.dtype != x.dtype:
        raise TypeError(f"bias: expected dtype {x.dtype} (the dtype of x), got {bias.dtype}")


def _check_glu(gate: Tensor, up: Tensor) -> None:
    for name, t in (("gate", gate), ("up", up)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    check_float("gate", gate)
    check_same_device("gate", gate, up=up)
    if up.shape != gate.shape:
        raise ValueError(f"up: expected shape {tuple(gate.shape)} (the shape of gate), got {tuple(up.shape)}")
    if up.dtype != gate.dtype:
        raise TypeError(f"up: expected dtype {gate.dtype} (the dtype of gate), got {up.dtype}")


def _bias_arg(bias: Optional[Tensor]) -> Optional[Tensor]:
    return None if bias is None else bias.contiguous()


def _act_fwd(x: Tensor, bias: Optional[Tensor], act: int) -> Tensor:
    y = empty(x.shape, x.dtype, x.device)
    if y.numel():
        x2, b = _as_rows(x), _bias_arg(bias)
        _native.act_fwd_into(act, desc(x2, "x"), opt_desc(b, "bias"), desc(y.view(x2.shape), "out"), stream_of(x))
    return y


def _act_bwd(x: Tensor, bias: Optional[Tensor], dy: Tensor, act: int) -> Tensor:
    dx = empty(x.shape, x.dtype, x.device)
    if dx.numel():
        x2, dy2, b = _as_rows(x), _as_rows(dy), _bias_arg(bias)
        _native.act_bwd_into(
            act, desc(x2, "x"), opt_desc(b, "bias"), desc(dy2, "grad_out"), desc(dx.view(x2.shape), "grad_x"), stream_of(x)
        )
    return dx


def _glu_fwd(gate: Tensor, up: Tensor, act: int) -> Tensor:
    h = empty(gate.shape, gate.dtype, gate.device)
    if h.numel():
        g2, u2 = _as_rows(gate), _as_rows(up)
        _native.glu_fwd_into(act, desc(g2, "gate"), desc(u2, "up"), desc(h.view(g2.shape), "out"), stream_of(gate))
    return h


def _glu_bwd(gate: Tensor, up: Tensor, dh: Tensor, act: int) -> Tuple[Tensor, Tensor]:
    dg = empty(gate.shape, gate.dtype, gate.device)
    du = empty(gate.shape, gate.dtype, gate.device)
    if dg.numel():
        g2, u2, dh2 = _as_rows(gate), _as_rows(up), _as_rows(dh)
        shape = g2.shape
        _native.glu_bwd_into(
            act,
            desc(g2, "gate"),
            desc(u2, "up"),
            desc(dh2, "grad_out"),
            desc(dg.view(shape), "grad_gate"),
            desc(du.view(shape), "grad_up"),
            stream_of(gate),
        )
    return dg, du


def _bias_grad(dx: Tensor, bias: Tensor) -> Tensor:
    return dx.reshape(-1, bias.shape[0]).sum(0, dtype=torch.float32).to(bias.dtype)


class ActivationFunction(torch.autograd.Function):
    """``ActivationFunction.apply(x, bias, act)``: ``f(x + bias)`` (``bias`` may be None); ``act``
    is 0 (SiLU), 1 (GELU) or 2 (GELU tanh)."""

    @staticmethod
    def forward(ctx, x: Tensor, bias: Optional[Tensor], act: int) -> Tensor:  # type: ignore[override]
        _check_x(x, bias)
        ctx.act = act
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            ctx.save_for_backward(x, bias)
        return _act_fwd(x, bias, act)

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        x, bias = ctx.saved_tensors
        dx = _act_bwd(x, bias, dy.to(x.dtype), ctx.act)
        db = _bias_grad(dx, bias) if bias is not None and ctx.needs_input_grad[1] else None
        return dx, db, None


class GLUFunction(torch.autograd.Function):
    """``GLUFunction.apply(gate, up, act)``: ``f(gate) * up``."""

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor, act: int) -> Tensor:  # type: ignore[override]
        _check_glu(gate, up)
        ctx.act = act
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            ctx.save_for_backward(gate, up)
        return _glu_fwd(gate, up, act)

    @staticmethod
    def backward(ctx, dh: Tensor):  # type: ignore[override]
        gate, up = ctx.saved_tensors
        dg, du = _glu_bwd(gate, up, dh.to(gate.dtype), ctx.act)
        return dg, du, None


_act_apply = fast_apply(ActivationFunction)
_glu_apply = fast_apply(GLUFunction)


# Compiled path: custom ops with fake implementations and autograd registrations.
@torch.library.custom_op("metalcore::act_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_act_fwd(x: Tensor, bias: Optional[Tensor], act: int) -> Tensor:
    return _act_fwd(x, bias, act)


@_op_act_fwd.register_fake
def _(x, bias, act):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("metalcore::act_bwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_act_bwd(x: Tensor, bias: Optional[Tensor], grad_out: Tensor, act: int) -> Tensor:
    return _act_bwd(x, bias, grad_out.to(x.dtype), act)


@_op_act_bwd.register_fake
def _(x, bias, grad_out, act):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _act_setup(ctx, inputs, output):
    x, bias, act = inputs
    ctx.save_for_backward(x, bias)
    ctx.act = act


def _act_backward(ctx, dy):
    x, bias = ctx.saved_tensors
    dx = torch.ops.metalcore.act_bwd(x, bias, dy, ctx.act)
    db = None if bias is None else _bias_grad(dx, bias)
    return dx, db, None


torch.library.register_autograd("metalcore::act_fwd", _act_backward, setup_context=_act_setup)


@torch.library.custom_op("metalcore::glu_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_glu_fwd(gate: Tensor, up: Tensor, act: int) -> Tensor:
    return _glu_fwd(gate, up, act)


@_op_glu_fwd.register_fake
def _(gate, up, act):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.custom_op("metalcore::glu_bwd", mutates_args=(), device_types=("cpu", "cuda"))
def _op_glu_bwd(gate: Tensor, up: Tensor, grad_out: Tensor, act: int) -> Tuple[Tensor, Tensor]:
    return _glu_bwd(gate, up, grad_out.to(gate.dtype), act)


@_op_glu_bwd.register_fake
def _(gate, up, grad_out, act):
    like = torch.empty_like(gate, memory_format=torch.contiguous_format)
    return like, torch.empty_like(like)


def _glu_setup(ctx, inputs, output):
    gate, up, act = inputs
    ctx.save_for_backward(gate, up)
    ctx.act = act


def _glu_backward(ctx, dh):
    gate, up = ctx.saved_tensors
    dg, du = torch.ops.metalcore.glu_bwd(gate, up, dh, ctx.act)
    return dg, du, None


torch.library.register_autograd("metalcore::glu_fwd", _glu_backward, setup_context=_glu_setup)


def _activation(x: Tensor, bias: Optional[Tensor], act: int, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not has_backend(x.device):
        _check_x(x, bias)
        warn_fallback(name, x.device)
        return _torch_act(act, x if bias is None else x + bias)
    if torch.compiler.is_compiling():
        _check_x(x, bias)
        return torch.ops.metalcore.act_fwd(x, bias, act)
    return _act_apply(x, bias, act)


def _glu(gate: Tensor, up: Tensor, act: int, name: str) -> Tensor:
    if not isinstance(gate, Tensor):
        raise TypeError(f"gate: expected a torch.Tensor, got {type(gate).__name__}")
    if not has_backend(gate.device):
        _check_glu(gate, up)
        warn_fallback(name, gate.device)
        return _torch_act(act, gate) * up
    if torch.compiler.is_compiling():
        _check_glu(gate, up)
        return torch.ops.metalcore.glu_fwd(gate, up, act)
    return _glu_apply(gate, up, act)


def metal_silu(x: Tensor) -> Tensor:
    """SiLU (swish) ``x·σ(x)``, like ``F.silu``. Any shape; float16, bfloat16, float32 or float64."""
    return _activation(x, None, SILU, "metal_silu")


def metal_gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU like ``F.gelu(x, approximate=...)``: ``"none"`` is ``x·Φ(x)``, ``"tanh"`` the tanh
    approximation (HF's ``gelu_new`` / ``gelu_pytorch_tanh``)."""
    return _activation(x, None, _gelu_code(approximate), "metal_gelu")


def bias_silu(x: Tensor, bias: Tensor) -> Tensor:
    """``silu(x + bias)`` in one pass, ``bias`` of shape ``(x.shape[-1],)`` and ``x``'s dtype."""
    if bias is None:
        raise TypeError("bias: expected a torch.Tensor, got None (use metal_silu without a bias)")
    return _activation(x, bias, SILU, "bias_silu")


def bias_gelu(x: Tensor, bias: Tensor, approximate: str = "none") -> Tensor:
    """``gelu(x + bias, approximate)`` in one pass, ``bias`` of shape ``(x.shape[-1],)`` and ``x``'s dtype."""
    if bias is None:
        raise TypeError("bias: expected a torch.Tensor, got None (use metal_gelu without a bias)")
    return _activation(x, bias, _gelu_code(approximate), "bias_gelu")


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """SwiGLU ``silu(gate) * up`` in one pass (the Llama MLP's ``act_fn(gate_proj(x)) * up_proj(x)``).
    ``gate`` and ``up`` have one shape and dtype."""
    return _glu(gate, up, SILU, "swiglu")


def geglu(gate: Tensor, up: Tensor, approximate: str = "none") -> Tensor:
    """GeGLU ``gelu(gate, approximate) * up`` in one pass."""
    return _glu(gate, up, _gelu_code(approximate), "geglu")


def swiglu_bwd(d_h: Tensor, gate: Tensor, up: Tensor) -> Tuple[Tensor, Tensor]:
    """Both gradients of ``h = silu(gate) * up`` for the output gradient ``d_h``, in one pass:
    ``(d_gate, d_up) = (d_h · up · silu'(gate), d_h · silu(gate))``."""
    if not isinstance(d_h, Tensor):
        raise TypeError(f"d_h: expected a torch.Tensor, got {type(d_h).__name__}")
    _check_glu(gate, up)
    check_same_device("gate", gate, d_h=d_h)
    if d_h.shape != gate.shape:
        raise ValueError(f"d_h: expected shape {tuple(gate.shape)} (the shape of gate), got {tuple(d_h.shape)}")
    check_float("d_h", d_h)
    if not has_backend(gate.device):
        warn_fallback("swiglu_bwd", gate.device)
        with torch.enable_grad():
            g, u = gate.detach().requires_grad_(), up.detach().requires_grad_()
            dg, du = torch.autograd.grad(F.silu(g) * u, (g, u), d_h)
        return dg, du
    if torch.compiler.is_compiling():
        return torch.ops.metalcore.glu_bwd(gate, up, d_h, SILU)
    return _glu_bwd(gate, up, d_h.to(gate.dtype), SILU)


class MetalSiLU(torch.nn.Module):
    """Drop-in for ``torch.nn.SiLU()``."""

    def forward(self, x: Tensor) -> Tensor:
        return metal_silu(x)


class MetalGELU(torch.nn.Module):
    """Drop-in for ``torch.nn.GELU(approximate=...)``."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        _gelu_code(approximate)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return metal_gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class MetalSwiGLU(torch.nn.Module):
    """``forward(gate, up) = silu(gate) * up``."""

    def forward(self, gate: Tensor, up: Tensor) -> Tensor:
        return swiglu(gate, up)
