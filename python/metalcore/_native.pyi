# Type stubs of the private native module (crates/metalcore-py). Descriptors are built by _backend.desc.
from typing import List, Optional, Tuple

Desc = Tuple[int, str, Tuple[int, ...], Tuple[int, ...], str, int]

def cuda_driver_present() -> bool: ...
def nvrtc_present() -> bool: ...
def nvrtc_version() -> Tuple[int, int]: ...
def compile_all_kernels(arch: str) -> List[str]: ...
# (kind, grad_out, x, weight, mean, rstd, grad_residual_out, grad_x, grad_weight, grad_bias)
BwdDescs = Tuple[str, Desc, Desc, Optional[Desc], Optional[Desc], Desc, Optional[Desc], Desc, Optional[Desc], Optional[Desc]]

class NormFwdPlan:
    def launch(self, x: int, residual: int, weight: int, bias: int, out: int, residual_out: int, mean: int, rstd: int,
               stream: int) -> None: ...

class NormBwdPlan:
    workspace_len: int
    def launch(self, grad_out: int, x: int, weight: int, mean: int, rstd: int, grad_residual_out: int, grad_x: int,
               grad_weight: int, grad_bias: int, workspace: Tuple[int, int], stream: int) -> None: ...

def norm_fwd_plan(
    kind: str, x: Desc, residual: Optional[Desc], weight: Optional[Desc], bias: Optional[Desc], out: Desc,
    residual_out: Optional[Desc], mean: Optional[Desc], rstd: Optional[Desc], eps: float, offset: float,
    cast_before_weight: bool,
) -> NormFwdPlan: ...
def norm_bwd_plan(tensors: BwdDescs, offset: float, cast_before_weight: bool) -> NormBwdPlan: ...
def softmax_fwd_into(x: Desc, out: Desc, stream: int) -> None: ...
def softmax_bwd_into(y: Desc, grad_out: Desc, grad_x: Desc, stream: int) -> None: ...
def cholesky_inplace(a: Desc, info: Desc, upper: bool, stream: int, src: Optional[Desc] = None, blas: int = 0) -> None: ...
def cholesky_solve_inplace(b: Desc, l: Desc, upper: bool, stream: int, blas: int = 0) -> None: ...
def lu_solve_into(a: Desc, lu: Optional[Desc], b: Desc, x: Desc, info: Desc, pivots: Optional[Desc], stream: int) -> None: ...
def trsm_inplace(a: Desc, b: Desc, lower: bool, trans: bool, unit: bool, stream: int, blas: int = 0) -> None: ...
def qr_into(a: Desc, q: Optional[Desc], r: Desc, stream: int) -> None: ...
def jacobi_into(a: Desc, s: Desc, u: Optional[Desc], v: Optional[Desc], info: Desc, eigh: bool, max_sweeps: int, stream: int) -> None: ...
def batched_into(kind: str, a: Desc, out: Desc) -> None: ...
# Activations: act code 0 silu, 1 gelu (exact), 2 gelu (tanh).
def act_fwd_into(act: int, x: Desc, bias: Optional[Desc], out: Desc, stream: int) -> None: ...
def act_bwd_into(act: int, x: Desc, bias: Optional[Desc], grad_out: Desc, grad_x: Desc, stream: int) -> None: ...
def glu_fwd_into(act: int, gate: Desc, up: Desc, out: Desc, stream: int) -> None: ...
def glu_bwd_into(
    act: int, gate: Desc, up: Desc, grad_out: Desc, grad_gate: Desc, grad_up: Desc, stream: int
) -> None: ...
def rope_into(
    q: Desc,
    q_out: Desc,
    k: Optional[Desc],
    k_out: Optional[Desc],
    cos: Desc,
    sin: Desc,
    position_ids: Optional[Desc],
    interleaved: bool,
    backward: bool,
    stream: int,
) -> None: ...
def cross_entropy_into(
    logits: Desc,
    target: Desc,
    loss: Desc,
    lse: Desc,
    grad: Optional[Desc],
    scale: Optional[Desc],
    skip_if_scale: Optional[Desc],
    backward: bool,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    stream: int,
) -> None: ...
def adamw_step(
    params: List[Desc],
    grads: List[Desc],
    exp_avgs: List[Desc],
    exp_avg_sqs: List[Desc],
    max_exp_avg_sqs: Optional[List[Desc]],
    masters: Optional[List[Desc]],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: float,
    maximize: bool,
    seed: Optional[int],
    stream: int,
) -> None: ...
def add_to_f32_scalars(ptrs: List[int], delta: float) -> List[float]: ...
def embag_fwd_into(
    mode: int, weight: Desc, indices: Desc, offsets: Desc, per_sample_weights: Optional[Desc], padding_idx: int,
    out: Desc, argmax: Optional[Desc], stream: int,
) -> None: ...
def embag_bwd_into(
    mode: int, grad_out: Desc, indices: Desc, offsets: Desc, per_sample_weights: Optional[Desc], padding_idx: int,
    sorted: Desc, argmax: Optional[Desc], grad_weight: Desc, stream: int,
) -> None: ...
# Gather / scatter-add / sorted index-add over 3-D (outer, n, inner) views: kind 0 gather (table -> rows),
# 1 scatter-add (rows -> float32/64 table), 2 sorted add (rows -> table, index sorted, perm int64).
# True when the CPU kernel met an index out of range (CUDA: always False).
def index_into(kind: int, table: Desc, rows: Desc, index: Desc, perm: Optional[Desc], stream: int) -> bool: ...
