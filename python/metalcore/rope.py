"""Rotary position embedding (RoPE), forward and backward, on the metalcore core.

Semantics of HF transformers' ``apply_rotary_pos_emb(q, k, cos, sin, position_ids, unsqueeze_dim)``
(``q * cos + rotate_half(q) * sin``), in one pass over q and k:

- layouts: ``unsqueeze_dim=1`` for ``(batch, heads, seq, head_dim)`` tensors, ``unsqueeze_dim=2``
  for ``(batch, seq, heads, head_dim)``; q and k may have different head counts (GQA);
- ``cos``/``sin``: one row per token, ``(batch, seq, rot)`` or ``(seq, rot)`` (broadcast over the
  batch), as HF's ``LlamaRotaryEmbedding`` returns them; or, with ``position_ids`` ``(batch, seq)``,
  a ``(positions, rot)`` table that is indexed by them (HF's older convention; with 3-D cos/sin
  ``position_ids`` is ignored, as current HF does);
- ``rot < head_dim``: partial rotary — the first ``rot`` elements of each head are rotated, the rest
  pass through unchanged;
- ``interleaved=True``: GPT-J style, rotating pairs ``(2i, 2i+1)`` (cos/sin repeat each
  frequency twice, ``repeat_interleave``) instead of HF's halves;
- ``inplace=True`` writes the result into q and k (no output allocation).

Computed in float32 (float64 for float64 inputs), rounded once; cos/sin may have any floating dtype.
Gradients flow to q and k (the backward is the inverse rotation); cos and sin are treated as
constants — a cos or sin that requires grad raises ``NotImplementedError``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _native
from ._backend import capturing, check_float, check_same_device, desc, empty, fast_apply, has_backend, opt_desc, stream_of, warn_fallback

__all__ = ["apply_rotary_pos_emb", "apply_rotary_pos_emb_single", "rope_forward", "RoPEFunction", "RotaryEmbedding"]


def _layout(unsqueeze_dim: int) -> bool:
    """True for (batch, seq, heads, head_dim) tensors."""
    if unsqueeze_dim not in (1, 2):
        raise ValueError(f"unsqueeze_dim: expected 1 (batch, heads, seq, dim) or 2 (batch, seq, heads, dim), got {unsqueeze_dim!r}")
    return unsqueeze_dim == 2


def _logical(t: Tensor, bshd: bool) -> Tensor:
    """`t` as a (batch, heads, seq, head_dim) view."""
    return t.transpose(1, 2) if bshd else t


def _check_x(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    check_float(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor (batch, heads, seq, head_dim) or (batch, seq, heads, head_dim), got shape {tuple(t.shape)}")


def _tables(q: Tensor, cos: Tensor, sin: Tensor, position_ids: Optional[Tensor], bshd: bool, unsqueeze_dim: int):
    """Validates cos/sin (and position ids) against q and returns them as the core takes them:
    (cos, sin, position_ids) with cos/sin (batch, seq, rot) views, or a (positions, rot) table and
    int32 (batch, seq) ids."""
    ql = _logical(q, bshd)
    batch, seq, dim = ql.shape[0], ql.shape[2], ql.shape[3]
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        check_float(name, t)
    check_same_device("q", q, cos=cos, sin=sin, position_ids=position_ids)
    if cos.shape != sin.shape:
        raise ValueError(f"sin: expected the shape of cos {tuple(cos.shape)}, got {tuple(sin.shape)}")
    if sin.dtype != cos.dtype:
        raise TypeError(f"sin: expected the dtype of cos ({cos.dtype}), got {sin.dtype}")
    if torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad):
        raise NotImplementedError("cos/sin: gradients with respect to cos and sin are not computed; pass them detached")
    rot = cos.shape[-1] if cos.dim() else 0
    if rot % 2 or rot > dim or rot == 0:
        raise ValueError(f"cos: expected a last dimension (the rotary dimension) that is even and in [2, head_dim = {dim}], got {rot}")
    if position_ids is not None and cos.dim() == 2:
        if not isinstance(position_ids, Tensor) or position_ids.is_floating_point() or position_ids.is_complex():
            raise TypeError("position_ids: expected an integer tensor")
        try:
            pos = position_ids.expand(batch, seq) if position_ids.dim() <= 2 else None
        except RuntimeError:
            pos = None
        if pos is None:
            raise ValueError(f"position_ids: expected shape ({batch}, {seq}) or one that broadcasts to it, got {tuple(position_ids.shape)}")
        if pos.numel() and not capturing(pos):
            lo, hi = int(pos.min()), int(pos.max())
            if lo < 0 or hi >= cos.shape[0]:
                raise IndexError(f"position_ids: values must be in [0, {cos.shape[0]}) (the rows of cos), got [{lo}, {hi}]")
        return cos.contiguous(), sin.contiguous(), pos.to(torch.int32)
    c, s = cos, sin
    if c.dim() == 4:
        if c.shape[unsqueeze_dim] != 1:
            raise ValueError(f"cos: a 4-D cos must have size 1 at unsqueeze_dim={unsqueeze_dim}, got shape {tuple(cos.shape)}")
        c, s = c.squeeze(unsqueeze_dim), s.squeeze(unsqueeze_dim)
    if c.dim() == 2:
        c, s = c.unsqueeze(0), s.unsqueeze(0)
    if c.dim() != 3 or c.shape[1] != seq or c.shape[0] not in (1, batch):
        raise ValueError(f"cos: expected shape ({batch}, {seq}, rot), (1, {seq}, rot) or ({seq}, rot), got {tuple(cos.shape)}")
    if c.stride(-1) != 1 or c.stride() != s.stride():
        c, s = c.contiguous(), s.contiguous()
    return c.expand(batch, seq, rot), s.expand(batch, seq, rot), None



def _unit_last(t: Tensor) -> Tensor:
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _rotate(xs, cos: Tensor, sin: Tensor, pos: Optional[Tensor], bshd: bool, interleaved: bool, backward: bool, inplace: bool):
    """Rotates each tensor of `xs` (q, and k or None); returns the results (the inputs when in place)."""
    outs = []
    pairs = []
    for x in xs:
        if x is None:
            outs.append(None)
            continue
        if inplace:
            if x.shape[-1] > 1 and x.stride(-1) != 1:
                raise ValueError("inplace: the tensors must have unit stride in head_dim")
            out, xin = x, x
        else:
            xin = _unit_last(x)
            out = empty(x.shape, x.dtype, x.device)
        outs.append(out)
        pairs.append((_logical(xin, bshd), _logical(out, bshd)))
    (q, qo) = pairs[0]
    k, ko = pairs[1] if len(pairs) > 1 else (None, None)
    if q.numel() or (k is not None and k.numel()):
        _native.rope_into(
            desc(q, "q"), desc(qo, "q_out"), opt_desc(k, "k"), opt_desc(ko, "k_out"),
            desc(cos, "cos"), desc(sin, "sin"), opt_desc(pos, "position_ids"), interleaved, backward, stream_of(q),
        )
    return outs


class RoPEFunction(torch.autograd.Function):
    """``RoPEFunction.apply(q, k, cos, sin, position_ids, bshd, interleaved, inplace)`` → ``(q', k')``
    (``k`` may be None; cos/sin/position_ids as prepared by :func:`apply_rotary_pos_emb`)."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, pos, bshd, interleaved, inplace):  # type: ignore[override]
        qo, ko = _rotate((q, k), cos, sin, pos, bshd, interleaved, False, inplace)
        if inplace:
            ctx.mark_dirty(*[t for t in (q, k) if t is not None])
        ctx.save_for_backward(cos, sin, pos)
        ctx.flags = (bshd, interleaved)
        return qo, ko

    @staticmethod
    def backward(ctx, dq, dk):  # type: ignore[override]
        cos, sin, pos = ctx.saved_tensors
        bshd, interleaved = ctx.flags
        gq, gk = _rotate((dq, dk), cos, sin, pos, bshd, interleaved, True, False)
        return gq, gk, None, None, None, None, None, None


_apply = fast_apply(RoPEFunction)


@torch.library.custom_op("metalcore::rope", mutates_args=(), device_types=("cpu", "cuda"))
def _op_rope(x: Tensor, cos: Tensor, sin: Tensor, position_ids: Optional[Tensor], bshd: bool, interleaved: bool, backward: bool) -> Tensor:
    return _rotate((x,), cos, sin, position_ids, bshd, interleaved, backward, False)[0]


@_op_rope.register_fake
def _(x, cos, sin, position_ids, bshd, interleaved, backward):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _rope_setup(ctx, inputs, output):
    _, cos, sin, pos, bshd, interleaved, backward = inputs
    ctx.save_for_backward(cos, sin, pos)
    ctx.flags = (bshd, interleaved, backward)


def _rope_backward(ctx, g):
    cos, sin, pos = ctx.saved_tensors
    bshd, interleaved, backward = ctx.flags
    return torch.ops.metalcore.rope(g, cos, sin, pos, bshd, interleaved, not backward), None, None, None, None, None, None


torch.library.register_autograd("metalcore::rope", _rope_backward, setup_context=_rope_setup)


def _reference(x: Tensor, cos: Tensor, sin: Tensor, pos: Optional[Tensor], bshd: bool, interleaved: bool) -> Tensor:
    """The plain torch formula (devices without a metalcore backend)."""
    if pos is not None:
        cos, sin = cos[pos.long()], sin[pos.long()]
    c, s = cos.unsqueeze(2 if bshd else 1), sin.unsqueeze(2 if bshd else 1)
    rot = c.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
    else:
        x1, x2 = xr.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    return torch.cat(((xr * c + rotated * s).to(x.dtype), xp), dim=-1)


def apply_rotary_pos_emb(
    q: Tensor,
    k: Optional[Tensor],
    cos: Tensor,
    sin: Tensor,
    position_ids: Optional[Tensor] = None,
    unsqueeze_dim: int = 1,
    *,
    interleaved: bool = False,
    inplace: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Applies RoPE to ``q`` and ``k`` like HF's ``apply_rotary_pos_emb`` (see the module docstring).

    Args:
        q, k: ``(batch, heads, seq, head_dim)`` (``unsqueeze_dim=1``) or ``(batch, seq, heads,
            head_dim)`` (``unsqueeze_dim=2``), one dtype; head counts may differ. ``k`` may be None.
        cos, sin: ``(batch, seq, rot)``, ``(1, seq, rot)`` or ``(seq, rot)``; or a ``(positions,
            rot)`` table with ``position_ids``.
        position_ids: integer ``(batch, seq)`` (or broadcastable) indices into 2-D cos/sin.
        interleaved: rotate pairs ``(2i, 2i+1)`` (GPT-J) instead of halves (HF/NeoX).
        inplace: write the results into ``q`` and ``k``.

    Returns:
        ``(q_embed, k_embed)`` in the layout and dtype of the inputs (``k_embed`` None without k).
    """
    _check_x("q", q)
    bshd = _layout(unsqueeze_dim)
    if k is not None:
        _check_x("k", k)
        check_same_device("q", q, k=k)
        if k.dtype != q.dtype:
            raise TypeError(f"k: expected dtype {q.dtype} (the dtype of q), got {k.dtype}")
        ql, kl = _logical(q, bshd), _logical(k, bshd)
        if (kl.shape[0], kl.shape[2], kl.shape[3]) != (ql.shape[0], ql.shape[2], ql.shape[3]):
            raise ValueError(f"k: expected the batch, seq and head_dim of q (shape {tuple(q.shape)}), got shape {tuple(k.shape)}")
    c, s, pos = _tables(q, cos, sin, position_ids, bshd, unsqueeze_dim)
    if not has_backend(q.device):
        warn_fallback("apply_rotary_pos_emb", q.device)
        outs = tuple(None if t is None else _reference(t, c, s, pos, bshd, interleaved) for t in (q, k))
        if inplace:
            for t, o in zip((q, k), outs):
                if t is not None:
                    t.copy_(o)
            return q, k
        return outs[0], outs[1]
    if torch.compiler.is_compiling():
        if inplace:
            raise NotImplementedError("inplace: not supported under torch.compile (use the out-of-place form)")
        qo = torch.ops.metalcore.rope(q, c, s, pos, bshd, interleaved, False)
        ko = None if k is None else torch.ops.metalcore.rope(k, c, s, pos, bshd, interleaved, False)
        return qo, ko
    return _apply(q, k, c, s, pos, bshd, interleaved, inplace)


def apply_rotary_pos_emb_single(
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    position_ids: Optional[Tensor] = None,
    unsqueeze_dim: int = 1,
    *,
    interleaved: bool = False,
    inplace: bool = False,
) -> Tensor:
    """RoPE on one tensor (:func:`apply_rotary_pos_emb` without ``k``)."""
    return apply_rotary_pos_emb(x, None, cos, sin, position_ids, unsqueeze_dim, interleaved=interleaved, inplace=inplace)[0]


#: The original API's name for the single-tensor form.
rope_forward = apply_rotary_pos_emb_single


class RotaryEmbedding(torch.nn.Module):
    """The cos/sin tables of HF's ``LlamaRotaryEmbedding`` (default rope type):
    ``inv_freq = 1 / base^(2i/dim)``; ``forward(x, position_ids)`` returns ``(cos, sin)`` of shape
    ``(batch, seq, dim)`` in ``x``'s dtype, computed in float32 (``interleaved=True`` repeats each
    frequency twice in a row instead of concatenating the halves). ``rotate(q, k, position_ids)``
    applies them."""

    def __init__(self, dim: int, max_position_embeddings: int = 2048, base: float = 10000.0, device=None,
                 *, interleaved: bool = False, unsqueeze_dim: int = 1) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim: expected a positive even rotary dimension, got {dim}")
        self.dim, self.base, self.max_position_embeddings = dim, float(base), max_position_embeddings
        _layout(unsqueeze_dim)
        self.interleaved, self.unsqueeze_dim = interleaved, unsqueeze_dim
        inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor) -> Tuple[Tensor, Tensor]:
        pos = position_ids if position_ids.dim() == 2 else position_ids.reshape(1, -1)
        freqs = pos.to(torch.float32)[..., None] * self.inv_freq.to(x.device)[None, None, :]
        emb = freqs.repeat_interleave(2, dim=-1) if self.interleaved else torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def rotate(self, q: Tensor, k: Optional[Tensor], position_ids: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        cos, sin = self(q, position_ids)
        return apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=self.unsqueeze_dim, interleaved=self.interleaved)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}, interleaved={self.interleaved}"
