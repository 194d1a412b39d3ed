"""Batched Cholesky factorization and solves against float64 torch.linalg, on every test device
(CUDA tensors take the documented torch.linalg fallback for now). The fallback itself also runs on
the CPU ("cpu-torch": metalcore's wrapper around torch.linalg's kernels), so CI covers it without a GPU."""

import warnings

import pytest
import torch

import metalcore.linalg as mlinalg
from metalcore import cholesky, cholesky_ex, cholesky_solve
from conftest import DEVICES, rel_err


@pytest.fixture(params=DEVICES + ["cpu-torch"])
def device(request, monkeypatch):
    if request.param == "cpu-torch":
        monkeypatch.setattr(mlinalg, "_native_device", lambda t: False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield "cpu"
        return
    yield request.param


def spd(batch, n, dtype, device, cond=None):
    """Random symmetric positive-definite matrices (optionally with condition number `cond`)."""
    g = torch.randn(batch + (n, n), dtype=torch.float64)
    if cond is None:
        a = g @ g.mT + n * torch.eye(n, dtype=torch.float64)
    else:
        q, _ = torch.linalg.qr(g)
        ev = torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), n, dtype=torch.float64)
        a = q @ torch.diag_embed(ev.expand(batch + (n,))) @ q.mT
        a = 0.5 * (a + a.mT)
    return a.to(dtype).to(device)


def recon_err(A, L, upper=False):
    A64, L64 = A.double().cpu(), L.double().cpu()
    R = L64.mT @ L64 if upper else L64 @ L64.mT
    if A.numel() == 0:
        return 0.0
    return ((R - A64).flatten(-2).norm(dim=-1) / A64.flatten(-2).norm(dim=-1).clamp_min(1e-300)).max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 16, 33, 64, 127])
@pytest.mark.parametrize("batch", [(), (1,), (5,), (2, 3)])
@pytest.mark.parametrize("upper", [False, True])
def test_cholesky_reconstructs(device, dtype, n, batch, upper):
    A = spd(batch, n, dtype, device)
    L = cholesky(A, upper=upper)
    assert L.shape == A.shape and L.dtype == A.dtype
    tri = L.triu(1) if not upper else L.tril(-1)
    assert torch.equal(tri, torch.zeros_like(tri)), "the other triangle is exactly zero"
    assert recon_err(A, L, upper) <= (1e-5 if dtype == torch.float32 else 1e-12)
    ref = torch.linalg.cholesky(A.double(), upper=upper)
    assert rel_err(L, ref) < (1e-5 if dtype == torch.float32 else 1e-12)


def test_large_and_ill_conditioned(device):
    A = spd((2,), 512, torch.float64, device)
    assert recon_err(A, cholesky(A)) < 1e-12
    A = spd((4,), 32, torch.float32, device, cond=1e6)
    assert recon_err(A, cholesky(A)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(device, dtype):
    A = spd((3,), 8, torch.float32, device).to(dtype)
    L = cholesky(A)
    assert L.dtype == dtype
    exact = torch.linalg.cholesky(A.double())  # of the 16-bit input itself
    # Computed in float32: within 2x the error of merely rounding the exact factor to `dtype`.
    assert rel_err(L, exact) <= 2 * rel_err(exact.to(dtype), exact) + 1e-6


def test_only_the_lower_triangle_is_read(device):
    A = spd((3,), 9, torch.float64, device)
    junk = A.tril() + torch.randn_like(A).triu(1) * 100
    assert torch.equal(cholesky(junk), cholesky(A))


def test_failures_are_reported_per_batch_element(device):
    A = spd((4,), 6, torch.float64, device)
    A[1, 3, 3] = -50.0  # indefinite
    A[2] = 0.0  # singular (semi-definite)
    A[3, 0, 0] = float("nan")
    L, info = cholesky_ex(A)
    assert info.dtype == torch.int32 and info.shape == (4,)
    t_info = torch.linalg.cholesky_ex(A.cpu()).info  # LAPACK's (cuSOLVER reports no NaN pivot)
    assert info[0] == 0 and info[1] > 0 and info[2] == 1 and info[3] == 1
    assert torch.equal(info.cpu(), t_info.cpu().to(torch.int32))
    assert recon_err(A[0], L[0]) < 1e-12
    with pytest.raises(torch.linalg.LinAlgError, match=r"batch element \(1,\)"):
        cholesky(A)
    with pytest.raises(torch.linalg.LinAlgError):
        cholesky_ex(A, check_errors=True)


@pytest.mark.parametrize("shape", [(0, 4, 4), (3, 0, 0), (0, 0)])
def test_empty(device, shape):
    A = torch.zeros(shape, device=device)
    L, info = cholesky_ex(A)
    assert L.shape == A.shape and info.shape == shape[:-2] and (info == 0).all()
    X = cholesky_solve(torch.zeros(shape[:-1] + (2,), device=device), L)
    assert X.shape == shape[:-1] + (2,)


def test_non_contiguous_input(device):
    A = spd((3,), 10, torch.float64, device)
    At = A.mT.contiguous().mT  # column-major storage of the same (symmetric) matrices
    assert not At.is_contiguous() and rel_err(cholesky(At), cholesky(A)) < 1e-14
    B = torch.randn(3, 5, 10, dtype=torch.float64, device=device).mT  # (3, 10, 5), strided
    X = cholesky_solve(B, cholesky(A))
    assert rel_err(A @ X, B) < 1e-12
    for upper in (False, True):  # torch's factors are column-major: read in place as the other triangle
        Lt = torch.linalg.cholesky(A, upper=upper)
        X = cholesky_solve(B, Lt, upper=upper)
        assert rel_err(X, torch.cholesky_solve(B, Lt, upper=upper)) < 1e-12


@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cholesky_solve_with_broadcasting(device, upper, dtype):
    A = spd((2, 1), 12, dtype, device)  # batch (2, 1)
    B = torch.randn(3, 12, 4, dtype=dtype, device=device)  # batch (3,) -> broadcast (2, 3)
    X = cholesky_solve(B, cholesky(A, upper=upper), upper=upper)
    assert X.shape == (2, 3, 12, 4)
    res = (A.double() @ X.double() - B.double()).flatten(-2).norm(dim=-1)
    scale = A.double().flatten(-2).norm(dim=-1) * X.double().flatten(-2).norm(dim=-1)
    assert (res / scale).max() <= (1e-5 if dtype == torch.float32 else 1e-13)


def test_gradients(device):
    A = spd((2,), 5, torch.float64, device).requires_grad_()
    # Symmetric parametrisation (the factorization reads one triangle of a symmetric matrix).
    assert torch.autograd.gradcheck(lambda a: cholesky(0.5 * (a + a.mT)), (A,))
    assert torch.autograd.gradcheck(lambda a: cholesky(0.5 * (a + a.mT), upper=True), (A,))
    g = torch.randn(2, 5, 5, dtype=torch.float64, device=device)
    (ours,) = torch.autograd.grad(cholesky(A), (A,), g)
    (ref,) = torch.autograd.grad(torch.linalg.cholesky(A), (A,), g)
    assert rel_err(ours, ref) < 1e-12, "same formula and symmetric convention as torch"
    L = cholesky(A.detach()).requires_grad_()
    B = torch.randn(2, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b, l: cholesky_solve(b, l), (B, L))
    U = cholesky(A.detach(), upper=True).requires_grad_()
    assert torch.autograd.gradcheck(lambda b, u: cholesky_solve(b, u, upper=True), (B, U))


def test_bad_input(device):
    with pytest.raises(ValueError, match="A: expected a batch of square matrices"):
        cholesky(torch.ones(3, 4, device=device))
    with pytest.raises(ValueError, match="A: expected a batch of square matrices"):
        cholesky(torch.ones(4, device=device))
    with pytest.raises(TypeError, match="A: expected a floating dtype"):
        cholesky(torch.ones(3, 3, dtype=torch.int64, device=device))
    L = torch.eye(3, device=device)
    with pytest.raises(ValueError, match=r"B: expected shape \(\*, 3, k\)"):
        cholesky_solve(torch.ones(4, 2, device=device), L)
    with pytest.raises(TypeError, match="B: expected dtype"):
        cholesky_solve(torch.ones(3, 2, dtype=torch.float64, device=device), L)
    with pytest.raises(ValueError, match="does not broadcast"):
        cholesky_solve(torch.ones(2, 3, 2, device=device), L.expand(3, 3, 3))


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_uses_the_documented_torch_fallback():
    import metalcore._backend as bk

    bk._warned.discard(("cholesky", "cuda"))
    A = spd((2,), 4, torch.float32, "cuda")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        L = cholesky(A)
    assert recon_err(A, L) < 1e-5
    assert any("no CUDA kernel" in str(r.message) for r in rec)


# ---------------------------------------------------------------------------------------------
# LU solve

from metalcore import solve, solve_ex  # noqa: E402


def residual(A, X, B):
    A64, X64, B64 = A.double().cpu(), X.double().cpu(), B.double().cpu()
    vec = X64.dim() == A64.dim() - 1 or X64.dim() == 1
    if vec:
        X64, B64 = X64.unsqueeze(-1), B64.unsqueeze(-1)
    r = (A64 @ X64 - B64).flatten(-2).norm(dim=-1)
    s = A64.flatten(-2).norm(dim=-1) * X64.flatten(-2).norm(dim=-1)
    return (r / s.clamp_min(1e-300)).max().item() if r.numel() else 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 16, 33, 64, 127])
@pytest.mark.parametrize("k", [None, 1, 5])
@pytest.mark.parametrize("batch", [3, 11])  # fewer than, and more than, the 8 SIMD lanes (with a partial group)
def test_solve_residual(device, dtype, n, k, batch):
    A = torch.randn(batch, n, n, dtype=dtype, device=device)
    B = torch.randn((batch, n) if k is None else (batch, n, k), dtype=dtype, device=device)
    X = solve(A, B)
    assert X.shape == B.shape and X.dtype == dtype
    assert residual(A, X, B) <= (1e-5 if dtype == torch.float32 else 1e-13)


def test_solve_large_and_ill_conditioned(device):
    A = torch.randn(2, 512, 512, dtype=torch.float64, device=device)
    B = torch.randn(2, 512, 3, dtype=torch.float64, device=device)
    assert residual(A, solve(A, B), B) < 1e-13
    q, _ = torch.linalg.qr(torch.randn(4, 32, 32, dtype=torch.float64))
    A = (q * torch.logspace(0, -6, 32, dtype=torch.float64)) @ q.mT  # cond 1e6
    A = A.float().to(device)
    B = torch.randn(4, 32, 2, device=device)
    assert residual(A, solve(A, B), B) <= 1e-5


def test_solve_broadcasting_and_vector_rules(device):
    A = torch.randn(3, 1, 5, 5, device=device, dtype=torch.float64)
    B = torch.randn(4, 5, 2, device=device, dtype=torch.float64)
    X = solve(A, B)
    assert X.shape == (3, 4, 5, 2) and rel_err(X, torch.linalg.solve(A, B)) < 1e-12
    v = torch.randn(5, device=device, dtype=torch.float64)
    assert solve(A, v).shape == torch.linalg.solve(A, v).shape
    b = torch.randn(3, 1, 5, device=device, dtype=torch.float64)  # A.shape[:-1]: a batch of vectors
    assert rel_err(solve(A, b), torch.linalg.solve(A, b)) < 1e-12


def test_solve_half_non_contiguous_and_empty(device):
    A = torch.randn(4, 8, 8, device=device) + 4 * torch.eye(8, device=device)
    B = torch.randn(4, 8, 3, device=device)
    Xh = solve(A.half(), B.half())
    assert Xh.dtype == torch.float16
    ref = torch.linalg.solve(A.half().double(), B.half().double())  # exact for the 16-bit inputs
    assert rel_err(Xh, ref) <= 2 * rel_err(ref.half(), ref) + 1e-6
    At = A.mT.contiguous().mT
    assert not At.is_contiguous() and rel_err(solve(At, B[..., ::2]), torch.linalg.solve(A, B[..., ::2])) < 1e-5
    assert solve(torch.zeros(0, 3, 3, device=device), torch.zeros(0, 3, device=device)).shape == (0, 3)
    assert solve(torch.zeros(2, 0, 0, device=device), torch.zeros(2, 0, 4, device=device)).shape == (2, 0, 4)


@pytest.mark.parametrize("batch", [3, 10])
def test_singular_matrices_are_reported_per_batch_element(device, batch):
    A = torch.randn(batch, 4, 4, dtype=torch.float64, device=device)
    A[1, :, 2] = 0.0  # exactly singular
    B = torch.randn(batch, 4, dtype=torch.float64, device=device)
    X, info = solve_ex(A, B)
    ok = [i for i in range(batch) if i != 1]
    assert info.dtype == torch.int32 and info[1] > 0 and (info[ok] == 0).all()
    assert (info.cpu() > 0).tolist() == (torch.linalg.solve_ex(A, B).info.cpu() > 0).tolist()
    assert residual(A[ok], X[ok], B[ok]) < 1e-12
    with pytest.raises(torch.linalg.LinAlgError, match=r"batch element \(1,\)"):
        solve(A, B)
    solve(A, B, fast=True)  # no check: undefined values for element 1, no error


def test_solve_gradients(device):
    A = (torch.randn(2, 4, 4, dtype=torch.float64, device=device) + 3 * torch.eye(4, dtype=torch.float64, device=device)).requires_grad_()
    B = torch.randn(2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (A, B))
    v = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (A, v))
    g = torch.randn(2, 4, 3, dtype=torch.float64, device=device)
    ours = torch.autograd.grad(solve(A, B), (A, B), g)
    ref = torch.autograd.grad(torch.linalg.solve(A, B), (A, B), g)
    assert all(rel_err(o, r) < 1e-12 for o, r in zip(ours, ref))


def test_solve_bad_input(device):
    A = torch.randn(3, 3, device=device)
    with pytest.raises(ValueError, match="A: expected a batch of square matrices"):
        solve(torch.randn(3, 4, device=device), torch.randn(3, device=device))
    with pytest.raises(ValueError, match=r"B: expected shape"):
        solve(A, torch.randn(4, device=device))
    with pytest.raises(TypeError, match="B: expected dtype"):
        solve(A, torch.randn(3, dtype=torch.float64, device=device))
    with pytest.raises(TypeError, match="B: expected a floating dtype"):
        solve(A, torch.ones(3, dtype=torch.int64, device=device))


# ---------------------------------------------------------------------------------------------
# Triangular solve

from metalcore import trsm, trsm_batched  # noqa: E402


def tri(batch, n, dtype, device, lower, unit=False):
    t = torch.randn(batch + (n, n), dtype=torch.float64) * 0.3
    t = t.tril() if lower else t.triu()
    d = torch.diagonal(t, dim1=-2, dim2=-1)
    d.copy_(d.sign() * (1 + d.abs()))  # well away from 0
    return t.to(dtype).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 33, 127])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("unit", [False, True])
def test_trsm_matches_solve_triangular(device, dtype, n, lower, transpose, unit):
    A = tri((5,), n, dtype, device, lower)
    junk = A + (torch.randn_like(A).triu(1) if lower else torch.randn_like(A).tril(-1))  # other triangle ignored
    B = torch.randn(5, n, 3, dtype=dtype, device=device)
    X = trsm(junk, B, lower=lower, transpose=transpose, unit_diagonal=unit)
    M = A.double().mT if transpose else A.double()
    ref = torch.linalg.solve_triangular(M, B.double(), upper=(lower == transpose), unitriangular=unit)
    assert X.shape == B.shape and rel_err(X, ref) < (1e-5 if dtype == torch.float32 else 1e-12)


def test_trsm_layouts_broadcasting_and_grad(device):
    A = tri((2, 1), 6, torch.float64, device, lower=True)
    B = torch.randn(3, 6, 2, dtype=torch.float64, device=device)
    X = trsm(A, B)
    assert X.shape == (2, 3, 6, 2) and rel_err(A @ X, B.expand(2, 3, 6, 2)) < 1e-12
    Ac = A.mT.contiguous().mT  # column-major
    assert rel_err(trsm_batched(Ac, B, transpose=True), trsm(A, B, transpose=True)) < 1e-14
    a = tri((2,), 5, torch.float64, device, lower=False).requires_grad_()
    b = torch.randn(2, 5, 2, dtype=torch.float64, device=device, requires_grad=True)
    for tr in (False, True):
        for unit in (False, True):
            assert torch.autograd.gradcheck(lambda x, y: trsm(x, y, lower=False, transpose=tr, unit_diagonal=unit), (a, b))
    e = trsm(torch.zeros(0, 3, 3, device=device), torch.zeros(0, 3, 2, device=device))
    assert e.shape == (0, 3, 2)
    with pytest.raises(ValueError, match=r"B: expected shape \(\*, 3, k\)"):
        trsm(torch.eye(3, device=device), torch.ones(4, 2, device=device))


# ---------------------------------------------------------------------------------------------
# Batched helpers

from metalcore import frobenius_norm_batched, syrk_batched, trace_batched  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 7, 3), (2, 3, 16, 16), (4, 1, 1), (0, 3, 3), (3, 0, 4)])
def test_batched_helpers(device, dtype, shape):
    A = torch.randn(shape, dtype=torch.float32).to(dtype).to(device)
    A64 = A.double()

    def close(ours, exact):
        # Within 2x the error of rounding the exact result to `dtype` (plus a float32-level floor).
        floor = 1e-14 if dtype == torch.float64 else 1e-6
        assert rel_err(ours, exact) <= 2 * rel_err(exact.to(dtype), exact) + floor

    S = syrk_batched(A)
    assert S.shape == shape[:-2] + (shape[-1], shape[-1]) and S.dtype == dtype
    assert torch.equal(S, S.mT), "exactly symmetric"
    close(S, A64.mT @ A64)
    F = frobenius_norm_batched(A)
    assert F.shape == shape[:-2]
    close(F, torch.linalg.matrix_norm(A64))
    if shape[-1] == shape[-2]:
        T = trace_batched(A)
        assert T.shape == shape[:-2]
        close(T, A64.diagonal(dim1=-2, dim2=-1).sum(-1))


def test_batched_helpers_grad_and_errors(device):
    A = torch.randn(3, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    for f in (syrk_batched, frobenius_norm_batched, trace_batched):
        assert torch.autograd.gradcheck(f, (A,))
    Z = torch.zeros(2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(frobenius_norm_batched(Z).sum(), (Z,))
    assert torch.equal(g, torch.zeros_like(g))
    with pytest.raises(ValueError, match="square"):
        trace_batched(torch.ones(2, 3, 4, device=device))
    with pytest.raises(ValueError, match="A: expected a batch of matrices"):
        syrk_batched(torch.ones(3, device=device))
