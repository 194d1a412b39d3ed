"""metalcore: fast linear algebra and LLM-training ops for PyTorch, on a Rust core.

Backends: CPU (Rust + rayon) and CUDA (kernels compiled at run time by NVRTC, launched on
PyTorch's current stream). Tensors on other devices fall back to PyTorch's own ops, with a
one-time warning.
"""

from . import reference
from ._backend import SUPPORTED_DEVICE_TYPES, cuda_available
from .activations import (
    ActivationFunction,
    GLUFunction,
    MetalGELU,
    MetalSiLU,
    MetalSwiGLU,
    bias_gelu,
    bias_silu,
    geglu,
    metal_gelu,
    metal_silu,
    swiglu,
    swiglu_bwd,
)
from .loss import (
    CrossEntropyFunction,
    MetalCrossEntropyLoss,
    MetalFusedLinearCrossEntropyLoss,
    cross_entropy,
    fused_linear_cross_entropy,
)
from .embedding import EmbeddingBagFunction, MetalEmbeddingBag, embedding_bag
from .indexing import GatherFunction, IndexSelectFunction, ScatterAddFunction, gather, index_select, scatter_add
from .layernorm import (
    FusedAddLayerNorm,
    FusedAddLayerNormFunction,
    LayerNormFunction,
    MetalLayerNorm,
    fused_add_layernorm,
    layer_norm,
)
from .linalg import (
    CholeskyEx,
    SolveEx,
    cholesky,
    cholesky_ex,
    cholesky_solve,
    frobenius_norm_batched,
    solve,
    solve_ex,
    syrk_batched,
    trace_batched,
    trsm,
    trsm_batched,
)
from .optim import MetalAdamW
from .rope import RoPEFunction, RotaryEmbedding, apply_rotary_pos_emb, apply_rotary_pos_emb_single, rope_forward
from .softmax import MetalSoftmax, SoftmaxFunction, fused_softmax
from .rmsnorm import (
    FusedAddRMSNorm,
    FusedAddRMSNormFunction,
    MetalRMSNorm,
    RMSNormFunction,
    fused_add_rmsnorm,
    rms_norm,
)

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_DEVICE_TYPES",
    "cuda_available",
    "reference",
    "rms_norm",
    "fused_add_rmsnorm",
    "RMSNormFunction",
    "FusedAddRMSNormFunction",
    "MetalRMSNorm",
    "FusedAddRMSNorm",
    "layer_norm",
    "fused_add_layernorm",
    "LayerNormFunction",
    "FusedAddLayerNormFunction",
    "MetalLayerNorm",
    "FusedAddLayerNorm",
    "fused_softmax",
    "SoftmaxFunction",
    "MetalSoftmax",
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
    "cross_entropy",
    "CrossEntropyFunction",
    "MetalCrossEntropyLoss",
    "fused_linear_cross_entropy",
    "MetalFusedLinearCrossEntropyLoss",
    "MetalAdamW",
    "embedding_bag",
    "EmbeddingBagFunction",
    "MetalEmbeddingBag",
    "gather",
    "scatter_add",
    "index_select",
    "GatherFunction",
    "ScatterAddFunction",
    "IndexSelectFunction",
    "apply_rotary_pos_emb",
    "apply_rotary_pos_emb_single",
    "rope_forward",
    "RoPEFunction",
    "RotaryEmbedding",
    "cholesky",
    "cholesky_ex",
    "cholesky_solve",
    "CholeskyEx",
    "solve",
    "solve_ex",
    "SolveEx",
    "trsm",
    "trsm_batched",
    "syrk_batched",
    "frobenius_norm_batched",
    "trace_batched",
]
