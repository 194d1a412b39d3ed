# Type stubs of the private native module (crates/metalcore-py). Descriptors are built by _backend.desc.
from typing import List, Optional, Tuple

Desc = Tuple[int, str, Tuple[int, ...], Tuple[int, ...], str, int]

def cuda_driver_present() -> bool: ...
def nvrtc_present() -> bool: ...
def nvrtc_version() -> Tuple[int, int]: ...
def compile_all_kernels(arch: str) -> List[str]: ...
def rms_norm_fwd_into(
    x: Desc,
    residual: Optional[Desc],
    weight: Optional[Desc],
    out: Desc,
    residual_out: Optional[Desc],
    rstd: Optional[Desc],
    eps: float,
    offset: float,
    cast_before_weight: bool,
    stream: int,
) -> None: ...
def rms_norm_bwd_workspace(
    grad_out: Desc,
    x: Desc,
    weight: Optional[Desc],
    rstd: Desc,
    grad_residual_out: Optional[Desc],
    grad_x: Desc,
    grad_weight: Optional[Desc],
    offset: float,
    cast_before_weight: bool,
) -> int: ...
def rms_norm_bwd_into(
    grad_out: Desc,
    x: Desc,
    weight: Optional[Desc],
    rstd: Desc,
    grad_residual_out: Optional[Desc],
    grad_x: Desc,
    grad_weight: Optional[Desc],
    workspace: Optional[Desc],
    offset: float,
    cast_before_weight: bool,
    stream: int,
) -> None: ...
