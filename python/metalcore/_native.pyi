# Type stubs of the private native module (crates/metalcore-py). Descriptors are built by _backend.desc.
from typing import List, Optional, Tuple

Desc = Tuple[int, str, Tuple[int, ...], Tuple[int, ...], str, int]

def cuda_driver_present() -> bool: ...
def nvrtc_present() -> bool: ...
def nvrtc_version() -> Tuple[int, int]: ...
def compile_all_kernels(arch: str) -> List[str]: ...
def norm_fwd_into(
    kind: str,
    x: Desc,
    residual: Optional[Desc],
    weight: Optional[Desc],
    bias: Optional[Desc],
    out: Desc,
    residual_out: Optional[Desc],
    mean: Optional[Desc],
    rstd: Optional[Desc],
    eps: float,
    offset: float,
    cast_before_weight: bool,
    stream: int,
) -> None: ...

# (kind, grad_out, x, weight, mean, rstd, grad_residual_out, grad_x, grad_weight, grad_bias)
BwdDescs = Tuple[str, Desc, Desc, Optional[Desc], Optional[Desc], Desc, Optional[Desc], Desc, Optional[Desc], Optional[Desc]]

def norm_bwd_workspace(tensors: BwdDescs, offset: float, cast_before_weight: bool) -> int: ...
def norm_bwd_into(
    tensors: BwdDescs, workspace: Optional[Desc], offset: float, cast_before_weight: bool, stream: int
) -> None: ...
def softmax_fwd_into(x: Desc, out: Desc, stream: int) -> None: ...
def softmax_bwd_into(y: Desc, grad_out: Desc, grad_x: Desc, stream: int) -> None: ...
