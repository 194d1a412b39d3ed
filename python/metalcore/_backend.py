"""Glue between torch tensors and the native core: descriptors, streams, device support.

The core borrows memory that torch owns. Every output and workspace is allocated here, through
torch (so its caching allocator serves them and CUDA graph capture works); the core only launches
kernels on torch's current stream and never synchronizes the host.
"""

from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch

from . import _native

__all__ = ["desc", "opt_desc", "stream_of", "stream_getter", "has_backend", "warn_fallback", "empty", "empty_like", "set_poison", "fast_apply", "capturing", "SUPPORTED_DEVICE_TYPES"]

#: Device types with a metalcore backend. Everything else falls back to PyTorch (with a warning).
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")

_DTYPE_NAMES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}
# Dtypes a descriptor may carry: the floating ones, and int32 for integer outputs such as `info`.
_DESC_NAMES = {**_DTYPE_NAMES, torch.int32: "int32", torch.int64: "int64"}

Desc = Tuple[int, str, Tuple[int, ...], Tuple[int, ...], str, int]


def _choose_cpu_pool() -> str:
    """Runs the CPU kernels' parallel loops on PyTorch's OpenMP team when torch uses one.

    torch's OpenMP workers keep spinning for a while after each of torch's parallel ops; a kernel
    run on a second pool (rayon) right after one then shares the cores with those spinning workers
    and takes up to twice as long. On the team itself, the spinning workers take the kernel's work
    instead. ``METALCORE_CPU_POOL=rayon`` keeps rayon's pool. Returns the pool in use:
    ``"host"`` (the OpenMP team) or ``"rayon"``."""
    import os

    want = os.environ.get("METALCORE_CPU_POOL", "openmp")
    if want not in ("openmp", "rayon"):
        raise ValueError(f"METALCORE_CPU_POOL: expected 'openmp' or 'rayon', got {want!r}")
    if want == "openmp" and not (torch.backends.openmp.is_available() and "parallel backend: OpenMP" in torch.__config__.parallel_info()):
        want = "rayon"
    return _native.cpu_pool(want)


#: Where the CPU kernels' parallel loops run: "host" (PyTorch's OpenMP team) or "rayon".
CPU_POOL = _choose_cpu_pool()


def desc(t: torch.Tensor, arg: str, shape=None, strides=None) -> Desc:
    """Describes `t` for the core: (data_ptr, dtype, shape, strides, device type, device index);
    `shape` and `strides`, when given, stand for `t`'s own (a view of the same memory)."""
    name = _DESC_NAMES.get(t.dtype)
    if name is None:
        raise TypeError(f"{arg}: expected a floating dtype (float16, bfloat16, float32 or float64), got {t.dtype}")
    dev = t.device
    index = dev.index
    return (t.data_ptr(), name, t.shape if shape is None else shape, t.stride() if strides is None else strides, dev.type,
            -1 if index is None else index)


def batch_desc(t: torch.Tensor, arg: str, rows: int, cols: int) -> Desc:
    """`desc` of the contiguous `t` (``*, rows, cols``) seen as ``(batch, rows, cols)``, with no
    torch op (a reshape costs several microseconds of host time on a small batch)."""
    if not t.is_contiguous():
        raise ValueError(f"{arg}: expected a contiguous tensor")
    nb = t.numel() // (rows * cols) if rows * cols else (t.shape[:-2].numel() if t.dim() >= 2 else 1)
    # The view's shape and strides passed in: `t`'s own are not read (host time).
    return desc(t, arg, (nb, rows, cols), (rows * cols, cols, 1))


def opt_desc(t: Optional[torch.Tensor], arg: str) -> Optional[Desc]:
    return None if t is None else desc(t, arg)


_poison = False


def set_poison(on: bool) -> bool:
    """Test hook: when on, every output metalcore allocates is filled with NaN before the kernel
    runs, so an element the kernel fails to write shows up. Returns the previous setting."""
    global _poison
    prev, _poison = _poison, bool(on)
    return prev


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocates an op's output through torch (poisoned with NaN under `set_poison(True)`). The
    sizes go in as separate ints: half the host time of a torch.Size argument."""
    t = torch.empty(*shape, dtype=dtype, device=device) if len(shape) else torch.empty((), dtype=dtype, device=device)
    return _poisoned(t) if _poison else t


def empty_like(t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A contiguous output of `t`'s shape and device (`empty`'s poisoning applies); a third of the
    host time of ``torch.empty(t.shape, ...)``."""
    o = torch.empty_like(t, dtype=dtype, memory_format=torch.contiguous_format)
    return _poisoned(o) if _poison else o


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    return t.fill_(float("nan") if t.is_floating_point() else -(2**31) + 7)


def _preload_nvrtc() -> None:
    """Makes NVRTC loadable by the core when it comes from NVIDIA's pip wheel (as torch's CUDA
    builds install it) rather than from a system toolkit on the loader's path: loading the wheel's
    libnvrtc-builtins and libnvrtc globally lets the core's dlopen find them by soname."""
    if _native.nvrtc_present():
        return
    import ctypes
    import glob
    import os
    import sys

    for base in sys.path:
        for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"):
            d = os.path.join(base, sub)
            libs = sorted(glob.glob(os.path.join(d, "libnvrtc.so.*")))
            if not libs:
                continue
            try:
                for b in sorted(glob.glob(os.path.join(d, "libnvrtc-builtins.so.*"))):
                    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
                ctypes.CDLL(libs[0], mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            if _native.nvrtc_present():
                return


_preload_nvrtc()


def _raw_stream_public(index: int) -> int:
    return torch.cuda.current_stream(index).cuda_stream


try:  # private, but 80x cheaper than the public call (0.07 us vs 5.5 us)
    _raw_stream_private = torch._C._cuda_getCurrentRawStream  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover - depends on the torch build
    _raw_stream_private = None


def stream_of(t: torch.Tensor) -> int:
    """Raw handle of torch's current stream on `t`'s device (0 for CPU tensors)."""
    if t.device.type != "cuda":
        return 0
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if _raw_stream_private is not None:
        return _raw_stream_private(index)
    return _raw_stream_public(index)


def stream_getter(device: torch.device):
    """A no-argument function returning torch's current raw stream on `device` (0 on CPU): the
    device's type and index resolved once, for paths that launch many times on one device."""
    if device.type != "cuda":
        return lambda: 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    get = _raw_stream_private if _raw_stream_private is not None else _raw_stream_public
    return lambda: get(index)


def blas_handle(t: torch.Tensor) -> int:
    """torch's cuBLAS handle for its current stream on `t`'s device (0 for CPU tensors), for the
    core's cuBLAS-built large-matrix paths: torch binds it to that stream, with a workspace from
    its own allocator, so those paths allocate nothing and are captured by CUDA graphs."""
    if t.device.type != "cuda":
        return 0
    if t.device.index is None or t.device.index == torch.cuda.current_device():
        return torch.cuda.current_blas_handle()
    with torch.cuda.device(t.device):
        return torch.cuda.current_blas_handle()


def has_backend(device: torch.device) -> bool:
    return device.type in SUPPORTED_DEVICE_TYPES


_warned: set = set()


def warn_fallback(op: str, device: torch.device, why: Optional[str] = None) -> None:
    """Warns once per (op, device type) that metalcore computes `op` with PyTorch's own ops."""
    key = (op, device.type)
    if key not in _warned:
        _warned.add(key)
        reason = why or f"metalcore has no backend for device type '{device.type}'"
        warnings.warn(
            f"{reason}: {op} falls back to PyTorch's own operations (same results, no speed-up)",
            RuntimeWarning,
            stacklevel=3,
        )


def check_same_device(ref_name: str, ref: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name}: expected a tensor on {ref.device} (the device of {ref_name}), got one on {t.device}")


def check_float(name: str, t: Optional[torch.Tensor]) -> None:
    if t is not None and t.dtype not in _DTYPE_NAMES:
        raise TypeError(f"{name}: expected a floating dtype (float16, bfloat16, float32 or float64), got {t.dtype}")


def fast_apply(cls):
    """``cls.apply`` for an ``autograd.Function`` subclass without the Python-level wrapper that
    ``Function.apply`` adds (argument binding for ``setup_context`` Functions, which ours are not,
    and unwrapping of dead functorch wrappers, ~15 µs per call). Whenever a functorch transform
    (vmap, grad, ...) is active the public ``cls.apply`` is used, unchanged."""
    raw = super(torch.autograd.Function, cls).apply  # torch._C._FunctionBase.apply bound to cls
    public = cls.apply
    active = torch._C._are_functorch_transforms_active

    def apply(*args):
        return public(*args) if active() else raw(*args)

    return apply


def capturing(t: torch.Tensor) -> bool:
    """True where no host sync is allowed: while torch.compile traces, or while `t`'s CUDA stream
    is being captured into a CUDA graph (checked in that order: the capture query itself would
    break a compiled graph)."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def cuda_available() -> bool:
    """True when torch sees a CUDA device and the CUDA driver library loads."""
    return torch.cuda.is_available() and _native.cuda_driver_present()
