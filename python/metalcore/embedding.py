"""EmbeddingBag: sums, means or maxima of bags of embedding rows, with a deterministic dense
backward to the weight.

Semantics of ``F.embedding_bag`` (``mode`` ``"sum"``, ``"mean"`` or ``"max"``; ``offsets`` with or
without ``include_last_offset``, or 2-D ``indices`` of equal-size bags; ``per_sample_weights`` with
``"sum"``; ``padding_idx`` entries skipped, and not counted by ``"mean"``; an empty bag gives
zeros). Accumulation in float32 (float64 for float64 weights), in bag order. The weight's
gradient is dense and deterministic: the positions are sorted by index (stably) and each index's
run is summed in that order by one worker, never with atomics. ``per_sample_weights`` get their
gradient from PyTorch ops (``Σ_d w[i, d]·grad_out[bag, d]``). Indices outside the table and
malformed offsets raise (one host-device sync to check them).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _native
from ._backend import capturing, check_float, check_same_device, desc, empty, fast_apply, has_backend, opt_desc, stream_of, warn_fallback

__all__ = ["embedding_bag", "EmbeddingBagFunction", "MetalEmbeddingBag"]

_MODES = {"sum": 0, "mean": 1, "max": 2}



def _prepare(weight: Tensor, indices: Tensor, offsets: Optional[Tensor], mode: str, per_sample_weights: Optional[Tensor],
             padding_idx: Optional[int], include_last_offset: bool):
    """Validates the arguments and returns (flat int32 indices, int32 offsets of bags + 1,
    flat per-sample weights or None, padding index or -1)."""
    if not isinstance(weight, Tensor) or not isinstance(indices, Tensor):
        raise TypeError("weight, indices: expected torch.Tensors")
    check_float("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D (num_embeddings, embedding_dim) tensor, got shape {tuple(weight.shape)}")
    if mode not in _MODES:
        raise ValueError(f"mode: expected 'sum', 'mean' or 'max', got {mode!r}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise TypeError(f"indices: expected an integer tensor, got {indices.dtype}")
    check_same_device("weight", weight, indices=indices, offsets=offsets, per_sample_weights=per_sample_weights)
    num = weight.shape[0]
    if indices.dim() == 2:
        if offsets is not None:
            raise ValueError("offsets: must be None when indices is 2-D (each row is a bag)")
        bags, length = indices.shape
        off = torch.arange(0, bags * length + 1, max(length, 1), device=indices.device, dtype=torch.int32)[: bags + 1]
        if length == 0:
            off = torch.zeros(bags + 1, dtype=torch.int32, device=indices.device)
    elif indices.dim() == 1:
        if offsets is None:
            raise ValueError("offsets: required when indices is 1-D")
        if offsets.is_floating_point() or offsets.dim() != 1:
            raise TypeError("offsets: expected a 1-D integer tensor")
        off = offsets.to(torch.int32)
        if not include_last_offset:
            off = torch.cat((off, torch.full((1,), indices.numel(), dtype=torch.int32, device=off.device)))  # no host copy: capturable
        if off.numel() == 0:
            raise ValueError("offsets: with include_last_offset=True, expected at least one offset")
    else:
        raise ValueError(f"indices: expected a 1-D or 2-D tensor, got shape {tuple(indices.shape)}")
    idx = indices.reshape(-1).to(torch.int32).contiguous()
    n = idx.numel()
    psw = None
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(f"per_sample_weights: only supported with mode='sum', got mode={mode!r}")
        if per_sample_weights.shape != indices.shape:
            raise ValueError(f"per_sample_weights: expected the shape of indices {tuple(indices.shape)}, got {tuple(per_sample_weights.shape)}")
        if per_sample_weights.dtype != weight.dtype:
            raise TypeError(f"per_sample_weights: expected dtype {weight.dtype} (the dtype of weight), got {per_sample_weights.dtype}")
        psw = per_sample_weights.reshape(-1).contiguous()
    pad = -1
    if padding_idx is not None:
        if not -num <= padding_idx < num:
            raise ValueError(f"padding_idx: expected a value in [{-num}, {num}), got {padding_idx}")
        pad = padding_idx % num
    stats = None
    # The CPU kernel checks the ranges itself (and says so: see `_forward`), in one pass of its
    # own instead of these torch ops (about 45 µs of host time).
    if idx.device.type not in ("meta", "cpu") and not capturing(idx) and not torch.compiler.is_compiling():
        stats = _range_stats(idx, off)
    return idx, off.contiguous(), psw, pad, stats


def _range_stats(idx: Tensor, off: Tensor) -> Tensor:
    """What :func:`_check_ranges` needs, computed on the device without waiting for it:
    (offsets decrease somewhere, first offset, last offset[, smallest index, largest index])."""
    stats = [(off[1:] < off[:-1]).any().to(torch.int64), off[0].to(torch.int64), off[-1].to(torch.int64)]
    if idx.numel():
        lo, hi = torch.aminmax(idx)
        stats += [lo.to(torch.int64), hi.to(torch.int64)]
    return torch.stack(stats)


def _check_ranges(stats: Optional[Tensor], num: int, n: int) -> None:
    """Raises for an index outside ``[0, num)`` or malformed offsets (``off`` has a last offset).

    The statistics are read back in one copy, the call's one host-device sync (it used to take
    four). It comes right before the forward's launch, after the allocations and descriptors
    (the GPU idles from the sync to the launch). Launched before the check, the forward would have
    to finish before the host could go on, so the GPU would idle through the next call's host work
    instead of running this forward during it (measured on H200: eager forward 0.634 ms checked
    before the launch, 0.864 checked after). The kernels still clamp every index and offset, so
    a bad one reads nothing outside its tensor where the check does not run (graph capture,
    torch.compile)."""
    if stats is None:
        return
    decreasing, first, last, *lohi = stats.tolist()
    if lohi and (lohi[0] < 0 or lohi[1] >= num):
        bad = lohi[0] if lohi[0] < 0 else lohi[1]
        raise IndexError(f"indices: index {bad} is out of range for an embedding table of {num} rows")
    if decreasing or first != 0 or last > n:
        raise ValueError(f"offsets: expected non-decreasing offsets starting at 0 and at most {n} (the number of indices)")


def _forward(weight: Tensor, idx: Tensor, off: Tensor, psw: Optional[Tensor], code: int, pad: int,
             stats: Optional[Tensor] = None):
    """The forward; with `stats` (:func:`_range_stats`), checked right before the launch, after
    all the host work the launch needs (the GPU idles from the check's sync to the launch)."""
    bags, dim = off.numel() - 1, weight.shape[1]
    out = empty((bags, dim), weight.dtype, weight.device)
    argmax = empty((bags, dim), torch.int32, weight.device) if code == 2 else None
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    args = (code, desc(w, "weight"), desc(idx, "indices"), desc(off, "offsets"), opt_desc(psw, "per_sample_weights"), pad,
            desc(out, "out"), opt_desc(argmax, "argmax"), stream_of(weight))
    _check_ranges(stats, weight.shape[0], idx.numel())
    # On the CPU the kernel checks the indices and offsets first (True: one is out of range,
    # nothing computed), also where there is nothing to compute.
    if (bags and dim) or weight.device.type == "cpu":
        if _native.embag_fwd_into(*args):
            _check_ranges(_range_stats(idx, off), weight.shape[0], idx.numel())
            raise RuntimeError("embedding_bag: the kernel reported indices or offsets out of range that the check did not find")
    return out, argmax


def _grad_weight(g: Tensor, weight: Tensor, idx: Tensor, off: Tensor, psw: Optional[Tensor], argmax: Optional[Tensor],
                 code: int, pad: int) -> Tensor:
    """The dense, deterministic gradient of the weight (positions sorted by index, each index's run
    summed in order by one worker)."""
    gw = torch.zeros_like(weight, memory_format=torch.contiguous_format)
    if idx.numel() and weight.shape[1]:
        order = torch.sort(idx, stable=True).indices.to(torch.int32)
        _native.embag_bwd_into(code, desc(g, "grad_out"), desc(idx, "indices"), desc(off, "offsets"),
                               opt_desc(psw, "per_sample_weights"), pad, desc(order, "sorted"), opt_desc(argmax, "argmax"),
                               desc(gw, "grad_weight"), stream_of(weight))
    return gw


def _grad_psw(g: Tensor, weight: Tensor, idx: Tensor, off: Tensor, pad: int) -> Tensor:
    """``Σ_d w[i, d]·grad_out[bag(i), d]`` per position (0 at padding_idx), with torch ops."""
    counts = (off[1:] - off[:-1]).long()
    bag = torch.repeat_interleave(torch.arange(counts.numel(), device=idx.device), counts, output_size=idx.numel())
    rows = weight[idx.long()]
    return torch.where(idx == pad, torch.zeros((), dtype=weight.dtype, device=weight.device), (rows * g[bag]).sum(-1))


class EmbeddingBagFunction(torch.autograd.Function):
    """``EmbeddingBagFunction.apply(weight, indices, offsets, per_sample_weights, mode_code, padding)``
    with int32 flat indices and offsets of bags + 1 (see :func:`embedding_bag`)."""

    @staticmethod
    def forward(ctx, weight, idx, off, psw, code, pad, stats=None):  # type: ignore[override]
        out, argmax = _forward(weight, idx, off, psw, code, pad, stats)
        ctx.save_for_backward(weight, idx, off, psw, argmax)
        ctx.args = (code, pad)
        if argmax is not None:
            ctx.mark_non_differentiable(argmax)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        weight, idx, off, psw, argmax = ctx.saved_tensors
        code, pad = ctx.args
        g = g.to(weight.dtype).contiguous()
        gw = _grad_weight(g, weight, idx, off, psw, argmax, code, pad) if ctx.needs_input_grad[0] else None
        gpsw = _grad_psw(g, weight, idx, off, pad) if psw is not None and ctx.needs_input_grad[3] else None
        return gw, None, None, gpsw, None, None, None


_apply = fast_apply(EmbeddingBagFunction)


# The compiled path: the same kernels as opaque custom ops (argmax is an empty tensor unless
# mode is "max").
@torch.library.custom_op("metalcore::embedding_bag", mutates_args=(), device_types=("cpu", "cuda"))
def _op_embag(weight: Tensor, idx: Tensor, off: Tensor, psw: Optional[Tensor], code: int, pad: int) -> Tuple[Tensor, Tensor]:
    out, argmax = _forward(weight, idx, off, psw, code, pad)
    return out, argmax if argmax is not None else torch.empty(0, dtype=torch.int32, device=weight.device)


@_op_embag.register_fake
def _(weight, idx, off, psw, code, pad):
    shape = (off.shape[0] - 1, weight.shape[1])
    return weight.new_empty(shape), weight.new_empty(shape if code == 2 else (0,), dtype=torch.int32)


@torch.library.custom_op("metalcore::embedding_bag_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _op_embag_bwd(g: Tensor, weight: Tensor, idx: Tensor, off: Tensor, psw: Optional[Tensor], argmax: Tensor, code: int,
                  pad: int) -> Tensor:
    return _grad_weight(g.contiguous(), weight, idx, off, psw, argmax if code == 2 else None, code, pad)


@_op_embag_bwd.register_fake
def _(g, weight, idx, off, psw, argmax, code, pad):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _embag_setup(ctx, inputs, output):
    weight, idx, off, psw, code, pad = inputs
    ctx.save_for_backward(weight, idx, off, psw, output[1])
    ctx.args = (code, pad)
    ctx.mark_non_differentiable(output[1])


def _embag_backward(ctx, g, _g_argmax):
    weight, idx, off, psw, argmax = ctx.saved_tensors
    code, pad = ctx.args
    g = g.to(weight.dtype)
    gw = torch.ops.metalcore.embedding_bag_backward(g, weight, idx, off, psw, argmax, code, pad) if ctx.needs_input_grad[0] else None
    gpsw = _grad_psw(g, weight, idx, off, pad) if psw is not None and ctx.needs_input_grad[3] else None
    return gw, None, None, gpsw, None, None


torch.library.register_autograd("metalcore::embedding_bag", _embag_backward, setup_context=_embag_setup)


def embedding_bag(
    weight: Tensor,
    indices: Tensor,
    offsets: Optional[Tensor] = None,
    mode: str = "mean",
    per_sample_weights: Optional[Tensor] = None,
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
) -> Tensor:
    """``F.embedding_bag(indices, weight, offsets, mode=mode, ...)`` with the weight first (the
    original API's order). Returns ``(bags, embedding_dim)`` in the weight's dtype."""
    idx, off, psw, pad, stats = _prepare(weight, indices, offsets, mode, per_sample_weights, padding_idx, include_last_offset)
    if not has_backend(weight.device):
        _check_ranges(stats, weight.shape[0], idx.numel())
        warn_fallback("embedding_bag", weight.device)
        return torch.nn.functional.embedding_bag(idx.long(), weight, off[:-1].long(), mode=mode, per_sample_weights=psw,
                                                 padding_idx=None if pad < 0 else pad)
    if torch.compiler.is_compiling():
        return torch.ops.metalcore.embedding_bag(weight, idx, off, psw, _MODES[mode], pad)[0]
    return _apply(weight, idx, off, psw, _MODES[mode], pad, stats)


class MetalEmbeddingBag(torch.nn.Module):
    """Drop-in for ``torch.nn.EmbeddingBag`` (``max_norm``, ``scale_grad_by_freq`` and ``sparse``
    are not supported): ``forward(input, offsets=None, per_sample_weights=None)``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "mean", padding_idx: Optional[int] = None,
                 include_last_offset: bool = False, _weight: Optional[Tensor] = None, device=None, dtype=None) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode: expected 'sum', 'mean' or 'max', got {mode!r}")
        self.num_embeddings, self.embedding_dim, self.mode = num_embeddings, embedding_dim, mode
        self.include_last_offset = include_last_offset
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx: expected a value in [{-num_embeddings}, {num_embeddings}), got {padding_idx}")
            padding_idx %= num_embeddings
        self.padding_idx = padding_idx
        if _weight is None:
            w = torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype)
            torch.nn.init.normal_(w)
            if padding_idx is not None:
                with torch.no_grad():
                    w[padding_idx].fill_(0)
        else:
            w = _weight
        self.weight = torch.nn.Parameter(w)

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True, mode: str = "mean", padding_idx: Optional[int] = None,
                        include_last_offset: bool = False) -> "MetalEmbeddingBag":
        m = cls(embeddings.shape[0], embeddings.shape[1], mode, padding_idx, include_last_offset, _weight=embeddings)
        m.weight.requires_grad_(not freeze)
        return m

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None, per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return embedding_bag(self.weight, input, offsets, self.mode, per_sample_weights, self.padding_idx, self.include_last_offset)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}" + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}")
