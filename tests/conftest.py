"""Shared test fixtures: the devices to test on, poisoned outputs, float64 references."""

import pytest
import torch

import metalcore
from metalcore import _backend

DEVICES = ["cpu"] + (["cuda"] if metalcore.cuda_available() else [])


def pytest_report_header(config):
    return f"metalcore test devices: {DEVICES}; torch {torch.__version__}"


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=DEVICES + ["cpu-torch"])
def linalg_device(request, monkeypatch):
    """The test devices plus "cpu-torch": CPU tensors sent down the linear algebra's documented
    torch.linalg fallback (the path of devices with no backend and of CUDA matrices too large for
    one block), so CI covers it without a GPU."""
    if request.param == "cpu-torch":
        import warnings

        import metalcore.linalg as mlinalg

        monkeypatch.setattr(mlinalg, "has_backend", lambda d: False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield "cpu"
        return
    yield request.param


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every output metalcore allocates starts as NaN, so unwritten elements fail the checks."""
    prev = _backend.set_poison(True)
    yield
    _backend.set_poison(prev)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64 (0 when both are empty); NaN anywhere gives inf."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    if a.numel() == 0 and ref.numel() == 0:
        return 0.0
    if not torch.isfinite(a).all():
        return float("inf")
    den = ref.norm().item()
    return (a - ref).norm().item() / (den if den > 0 else 1.0)


def assert_close_to_ref(ours, torch_lowp, ref64, *, what, floor=1e-6):
    """The quality bar: our error vs float64 is at most 2x PyTorch's own error in the same dtype
    (plus a tiny floor for dtypes where both are at rounding level)."""
    e_ours, e_torch = rel_err(ours, ref64), rel_err(torch_lowp, ref64)
    assert e_ours <= 2 * e_torch + floor, f"{what}: our error {e_ours:.3e} vs torch's {e_torch:.3e}"


def make(shape, dtype, device, *, scale=1.0, shift=0.0, requires_grad=False):
    """Fresh normal(shift, scale) values of `dtype` on `device` (drawn in float32 on the CPU)."""
    t = (torch.randn(shape, dtype=torch.float32) * scale + shift).to(dtype).to(device)
    return t.requires_grad_(requires_grad)


def grads_of(fn, inputs, dy):
    """Gradients of fn(*inputs) (one output or a tuple) with respect to the inputs that require
    grad, for the output gradients `dy` (one tensor or a tuple)."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    dys = dy if isinstance(dy, tuple) else (dy,)
    need = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.autograd.grad(outs, need, dys)
