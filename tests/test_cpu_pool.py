"""The CPU kernels give the same results on PyTorch's OpenMP team as on rayon's pool.

`metalcore._backend` installs libgomp's team (the pool torch itself runs on) at import when torch
uses OpenMP; `METALCORE_CPU_POOL=rayon` keeps rayon. These tests switch between the two through
`_native.cpu_pool` and compare every row-parallel kernel family bit for bit (each output element is
computed by the same code in the same order whichever thread runs its row), and the one kernel
that reduces across rows (the norms' weight gradient, summed in chunk order).
"""

from __future__ import annotations

import pytest
import torch

import metalcore
from metalcore import _backend, _native


def _uses_openmp() -> bool:
    return torch.backends.openmp.is_available() and "parallel backend: OpenMP" in torch.__config__.parallel_info()


@pytest.fixture
def restore_pool():
    yield
    _native.cpu_pool("openmp" if _backend.CPU_POOL == "host" else "rayon")


def test_default_pool_is_torchs_openmp_team_when_torch_uses_openmp(monkeypatch):
    if not _uses_openmp():
        assert _backend.CPU_POOL == "rayon"
        return
    expect = "rayon" if __import__("os").environ.get("METALCORE_CPU_POOL") == "rayon" else "host"
    assert _backend.CPU_POOL == expect


def test_bad_pool_name_raises(restore_pool):
    with pytest.raises(ValueError, match="kind: expected 'openmp' or 'rayon'"):
        _native.cpu_pool("tbb")


def _run_all(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    outs = []
    xr = x.clone().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    for f in (
        lambda a: metalcore.fused_softmax(a),
        lambda a: metalcore.layer_norm(a, (a.shape[-1],), wr, br),
        lambda a: metalcore.MetalRMSNorm(a.shape[-1]).to(a.dtype)(a),
        lambda a: metalcore.metal_silu(a),
        lambda a: metalcore.metal_gelu(a),
    ):
        for t in (xr, wr, br):
            t.grad = None
        y = f(xr)
        y.backward(g)
        outs += [y.detach().clone(), xr.grad.clone()]
        outs += [t.grad.clone() for t in (wr, br) if t.grad is not None]
    return outs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 7), (3, 4097), (513, 256), (2048, 1000)])
def test_same_results_on_either_pool(restore_pool, dtype, shape):
    if not _uses_openmp():
        pytest.skip("torch does not run on OpenMP here: only rayon's pool exists")
    gen = torch.Generator().manual_seed(hash(shape) % 1000)
    x = torch.randn(shape, generator=gen).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    w = torch.randn(shape[-1], generator=gen).to(dtype)
    b = torch.randn(shape[-1], generator=gen).to(dtype)
    assert _native.cpu_pool("rayon") == "rayon"
    ref = _run_all(x, g, w, b)
    assert _native.cpu_pool("openmp") == "host"
    got = _run_all(x, g, w, b)
    assert len(ref) == len(got)
    for r, o in zip(ref, got):
        assert torch.equal(r, o)


def _linalg_all(a: torch.Tensor, b: torch.Tensor):
    spd = a @ a.mT + a.shape[-1] * torch.eye(a.shape[-1], dtype=a.dtype)
    low = torch.linalg.cholesky(spd)
    q, r = metalcore.qr(a)
    s = metalcore.svd(a)
    e = metalcore.eigh(spd)
    lu = metalcore.lu_batched(a)
    return [metalcore.cholesky(spd), metalcore.cholesky_solve(b, low), metalcore.solve(a, b), metalcore.trsm(low, b),
            q, r, *s, *e, *lu, metalcore.syrk_batched(a), metalcore.frobenius_norm_batched(a), metalcore.trace_batched(a)]


@pytest.mark.parametrize("batch,n", [(37, 5), (300, 16), (40, 33), (9, 150)])
def test_linear_algebra_same_results_on_either_pool(restore_pool, batch, n):
    """Every batched linear-algebra path (lane groups up to 64², one matrix per task beyond,
    the parallel copy of the input into the output past 64²) gives bit-identical results on
    both pools."""
    if not _uses_openmp():
        pytest.skip("torch does not run on OpenMP here: only rayon's pool exists")
    gen = torch.Generator().manual_seed(batch * 1000 + n)
    a = torch.randn(batch, n, n, generator=gen, dtype=torch.float64).float()
    b = torch.randn(batch, n, 3, generator=gen).float()
    assert _native.cpu_pool("rayon") == "rayon"
    ref = _linalg_all(a, b)
    assert _native.cpu_pool("openmp") == "host"
    got = _linalg_all(a, b)
    for r, o in zip(ref, got):
        assert torch.equal(r, o)
