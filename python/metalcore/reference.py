"""Plain, slow PyTorch formulas that the fused ops are tested against, and that the explicit
fallback for devices without a metalcore backend uses. The norms follow the HF transformers module
they name (https://github.com/huggingface/transformers, models/llama and models/gemma); the
indexing ops are PyTorch's own, with int32 indices widened where torch takes int64 only."""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def rms_norm(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    eps: float = 1e-6,
    offset: float = 0.0,
    casting: str = "llama",
) -> torch.Tensor:
    """RMSNorm as HF computes it.

    - ``casting="llama"`` (LlamaRMSNorm): compute in float32, cast to the input dtype, then multiply
      by ``weight + offset`` (the product takes torch's promoted dtype).
    - ``casting="gemma"`` (GemmaRMSNorm, with ``offset=1``): compute everything in float32, cast once.
    float64 inputs are computed in float64.
    """
    dtype = x.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    h = x.to(acc)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:
        return h.to(dtype)
    if casting == "llama":
        w = weight + offset if offset != 0.0 else weight
        return w * h.to(dtype)
    return (h * (weight.to(acc) + offset)).to(dtype)


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: Optional[torch.Tensor],
    eps: float = 1e-6,
    offset: float = 0.0,
    casting: str = "llama",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``s = x + residual``; returns ``(rms_norm(s), s)``."""
    s = x + residual
    return rms_norm(s, weight, eps, offset, casting), s


def gather(input: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``torch.gather``."""
    return torch.gather(input, dim, index.long())


def scatter_add(input: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Out-of-place ``torch.scatter_add``."""
    return torch.scatter_add(input, dim, index.long(), src)


def index_select(input: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``torch.index_select``."""
    return torch.index_select(input, dim, index)
