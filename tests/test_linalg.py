"""Batched Cholesky, LU and QR factorizations and their solves against float64 torch.linalg, on
every test device. The documented torch.linalg fallback (devices with no backend, CUDA matrices too
large for one block) also runs on the CPU ("cpu-torch": metalcore's wrapper around torch.linalg's
kernels), so CI covers it without a GPU."""

import os
import tempfile
import warnings

import pytest
import torch

import metalcore.linalg as mlinalg
from metalcore import cholesky, cholesky_ex, cholesky_solve
from conftest import DEVICES, rel_err


@pytest.fixture
def device(linalg_device):
    return linalg_device


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
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 16, 31, 32, 33, 64, 127, 150])
@pytest.mark.parametrize("batch", [(), (1,), (5,), (2, 3)])
@pytest.mark.parametrize("upper", [False, True])
def test_cholesky_reconstructs(device, dtype, n, batch, upper):
    A = spd(batch, n, dtype, device)
    A0 = A.clone()
    L = cholesky(A, upper=upper)
    assert torch.equal(A, A0), "the input is read in place, never written"
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


@pytest.mark.parametrize("n, dtype", [(6, torch.float64), (13, torch.float32), (32, torch.float64), (50, torch.float64),
                                      (50, torch.float32), (100, torch.float32), (200, torch.float64)])
def test_failures_are_reported_per_batch_element(device, n, dtype):
    A = spd((4,), n, dtype, device)
    A[1, 3, 3] = -50.0 * n  # indefinite
    A[2] = 0.0  # singular (semi-definite)
    A[3, 0, 0] = float("nan")
    L, info = cholesky_ex(A)
    assert info.dtype == torch.int32 and info.shape == (4,)
    t_info = torch.linalg.cholesky_ex(A.cpu()).info  # LAPACK's (cuSOLVER reports no NaN pivot)
    assert info[0] == 0 and info[1] > 0 and info[2] == 1 and info[3] == 1
    assert torch.equal(info.cpu(), t_info.cpu().to(torch.int32))
    assert recon_err(A[0], L[0]) < (1e-12 if dtype == torch.float64 else 1e-5)
    with pytest.raises(torch.linalg.LinAlgError, match=r"batch element \(1,\)"):
        cholesky(A)
    with pytest.raises(torch.linalg.LinAlgError):
        cholesky_ex(A, check_errors=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [5, 16, 32])
def test_failures_stay_in_their_lane(device, dtype, n):
    """Across several CPU lane groups (8 or 16 matrices side by side, the last one partial), each
    failing matrix is reported on its own and leaves its neighbours' results untouched."""
    batch = 37
    A = spd((batch,), n, dtype, device)
    A[1, 3, 3] = -50.0 * n  # indefinite, first group
    A[17, n - 1, n - 1] = 0.0  # semi-definite at the last step, second group
    A[20, 0, 0] = float("nan")
    A[36] = 0.0  # the partial last group
    bad = {1: 4, 17: n, 20: 1, 36: 1}
    L, info = cholesky_ex(A)
    want = torch.zeros(batch, dtype=torch.int32)
    for i, v in bad.items():
        want[i] = v
    assert torch.equal(info.cpu(), want)
    assert torch.equal(torch.linalg.cholesky_ex(A.cpu()).info.to(torch.int32), want)
    ok = [i for i in range(batch) if i not in bad]
    assert recon_err(A[ok], L[ok]) <= (1e-5 if dtype == torch.float32 else 1e-12)
    # LU: exactly singular at 1 and 36, NaN at 20 (its solution is NaN, no info), others solved.
    M = torch.randn(batch, n, n, dtype=dtype, device=device)
    M[1, :, 2] = 0.0
    M[36] = 0.0
    M[20, n // 2, 0] = float("nan")
    B = torch.randn(batch, n, 3, dtype=dtype, device=device)
    X, info = solve_ex(M, B)
    assert info[1] > 0 and info[36] == 1
    ok = [i for i in range(batch) if i not in (1, 20, 36)]
    assert (info[ok] == 0).all() and torch.isnan(X[20]).all()
    assert residual(M[ok], X[ok], B[ok]) <= (1e-5 if dtype == torch.float32 else 1e-13)
    Q, R = qr(M)
    assert torch.isnan(R[20]).any()
    ok = [i for i in range(batch) if i != 20]
    rec, orth = qr_errs(M[ok], Q[ok], R[ok])
    assert rec <= (1e-5 if dtype == torch.float32 else 1e-12) and orth <= (1e-5 if dtype == torch.float32 else 1e-12)


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


@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 16, 33, 64])
def test_cholesky_solve_batched(device, upper, dtype, n):
    """37 systems: the CPU's 16-lane groups, two full and a partial one; our factor (row-major)
    and torch's (column-major, read as the other triangle)."""
    A = spd((37,), n, dtype, device)
    for k in (1, 3):
        B = torch.randn(37, n, k, dtype=dtype, device=device)
        ref = torch.cholesky_solve(B.double(), torch.linalg.cholesky(A.double(), upper=upper), upper=upper)
        for F in (cholesky(A, upper=upper), torch.linalg.cholesky(A, upper=upper)):
            X = cholesky_solve(B, F, upper=upper)
            assert X.shape == B.shape and rel_err(X, ref) <= (1e-5 if dtype == torch.float32 else 1e-12) * n


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


@pytest.fixture
def blocked_cholesky(monkeypatch):
    monkeypatch.setattr(mlinalg, "BLOCKED_CHOLESKY", True)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_kernel_and_the_documented_fallback_for_large_matrices(monkeypatch):
    import metalcore._backend as bk

    A = spd((2,), 40, torch.float32, "cuda")
    big = spd((2,), 600, torch.float64, "cuda")
    B = torch.randn(2, 600, 1, dtype=torch.float64, device="cuda")
    for blocked in (False, True):
        monkeypatch.setattr(mlinalg, "BLOCKED_CHOLESKY", blocked)
        for op in ("cholesky", "solve"):
            bk._warned.discard((op, "cuda"))
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            L = cholesky(A)
            Lbig = cholesky(big)
        assert recon_err(A, L) < 1e-5 and recon_err(big, Lbig) < 1e-12
        msgs = [str(r.message) for r in rec]
        if blocked:
            assert not msgs, "metalcore's kernels factor both, silently"
        else:
            assert len(msgs) == 1 and "shared memory" in msgs[0] and "falls back to PyTorch" in msgs[0]
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            X = solve(big, B)  # the blocked LU (test_cuda_blocked_lu_solve): no fallback
        assert residual(big, X, B) < 1e-12 and not rec


# Sizes that do not fit one block's shared memory on Hopper (float32 from 241, float64 from 170):
# the blocked path (128-column steps: diagonal block, panel and, in float32, the trailing update
# by metalcore's kernels; float64's update by cuBLAS SYRK). 513 float32 takes several panel
# blocks and update tiles per step.
BLOCKED = [(241, torch.float32), (256, torch.float32), (300, torch.float32), (513, torch.float32),
           (170, torch.float64), (300, torch.float64)]


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("n, dtype", BLOCKED)
@pytest.mark.parametrize("upper", [False, True])
def test_cuda_blocked_cholesky(blocked_cholesky, n, dtype, upper):
    A = spd((2,), n, dtype, "cuda")
    A0 = A.clone()
    L, info = cholesky_ex(A, upper=upper)
    assert torch.equal(A, A0), "the input is never written"
    assert (info == 0).all()
    tri = L.triu(1) if not upper else L.tril(-1)
    assert torch.equal(tri, torch.zeros_like(tri)), "the other triangle is exactly zero"
    assert recon_err(A, L, upper) <= (1e-5 if dtype == torch.float32 else 1e-12)
    ref = torch.linalg.cholesky(A.double(), upper=upper)
    assert rel_err(L, ref) < (1e-5 if dtype == torch.float32 else 1e-12)
    # A non-contiguous input (copied first).
    assert rel_err(cholesky(A.mT.contiguous().mT, upper=upper), L) < (1e-6 if dtype == torch.float32 else 1e-14)
    # Only the lower triangle is read: NaN above it changes nothing.
    poisoned = A.tril() + torch.full_like(A, float("nan")).triu(1)
    assert torch.equal(cholesky(poisoned, upper=upper), L)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("n, dtype", [(300, torch.float32), (600, torch.float64)])
def test_cuda_blocked_cholesky_failures_and_conditioning(blocked_cholesky, n, dtype):
    A = spd((5,), n, dtype, "cuda")
    late = n - 37  # in the last diagonal block
    A[1, late, late] = -50.0 * n
    A[2] = 0.0
    A[3, 200, 200] = float("nan")  # in a middle block
    A[4, 129, 129] = -50.0 * n  # past the first block
    L, info = cholesky_ex(A)
    expect = torch.linalg.cholesky_ex(A.cpu()).info.to(torch.int32)
    assert expect.tolist() == [0, late + 1, 1, 201, 130]
    assert torch.equal(info.cpu(), expect)
    assert recon_err(A[0], L[0]) < (1e-12 if dtype == torch.float64 else 1e-5)
    with pytest.raises(torch.linalg.LinAlgError, match=r"batch element \(1,\)"):
        cholesky(A)
    C = spd((1,), 512, torch.float32, "cuda", cond=1e6)
    assert recon_err(C, cholesky(C)) <= 1e-5


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_blocked_cholesky_look_ahead_changes_no_bit():
    # The look-ahead (the next block column's work on a side stream) runs the same kernels on the
    # same tiles as the plain steps: the factors agree bit for bit. The switch is read once per
    # process, so each variant runs in its own.
    import subprocess
    import sys

    code = """
import torch, metalcore as mc, metalcore.linalg as ml
ml.BLOCKED_CHOLESKY = True
torch.manual_seed(7)
out = []
for n in (700, 1100):
    g = torch.randn(n, n, device="cuda", dtype=torch.float64)
    a = (g @ g.mT / n + torch.eye(n, device="cuda", dtype=torch.float64)).float()
    a[n - 5, n - 5] = -1.0 if n == 1100 else a[n - 5, n - 5]
    L, info = mc.cholesky_ex(a)
    out += [L.cpu(), info.cpu()]
torch.save(out, __import__("sys").argv[1])
"""
    got = []
    for ahead in ("1", "0"):
        path = f"{tempfile.gettempdir()}/chol-ahead-{ahead}-{os.getpid()}.pt"
        env = dict(os.environ, METALCORE_CHOL_LOOKAHEAD=ahead)
        subprocess.run([sys.executable, "-c", code, path], check=True, env=env)
        got.append(torch.load(path))
        os.remove(path)
    (l1, i1, l2, i2), (m1, j1, m2, j2) = got
    assert i1.item() == 0 and i2.item() == 1100 - 4
    assert torch.equal(l1, m1) and torch.equal(i1, j1) and torch.equal(i2, j2)
    assert torch.equal(l2.isnan(), m2.isnan()) and torch.equal(l2.nan_to_num(), m2.nan_to_num())


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_blocked_cholesky_on_a_side_stream_and_in_a_graph(blocked_cholesky):
    A = spd((1,), 400, torch.float32, "cuda")
    ref = cholesky(A)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        L = cholesky(A, upper=True)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(L, ref.mT)
    static = A.clone()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):  # warm-up outside capture, as torch asks
        cholesky_ex(static)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        Lg, info = cholesky_ex(static)
    static.copy_(spd((1,), 400, torch.float32, "cuda"))
    Lg.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert info.item() == 0 and recon_err(static, Lg) < 1e-5


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
@pytest.mark.parametrize("batch", [3, 37])  # the CPU's per-matrix path; its 16-lane groups (two full, one partial)
def test_solve_residual(device, dtype, n, k, batch):
    A = torch.randn(batch, n, n, dtype=dtype, device=device)
    B = torch.randn((batch, n) if k is None else (batch, n, k), dtype=dtype, device=device)
    A0, B0 = A.clone(), B.clone()
    X = solve(A, B)
    assert torch.equal(A, A0) and torch.equal(B, B0), "the inputs are read in place, never written"
    assert X.shape == B.shape and X.dtype == dtype
    assert residual(A, X, B) <= (1e-5 if dtype == torch.float32 else 1e-13)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [65, 96, 127])
def test_cuda_solve_of_more_matrices_than_sms(dtype, n):
    # More matrices than SMs: the LU kernel runs with 4 warps per matrix instead of 8 past 64 rows.
    batch = torch.cuda.get_device_properties(0).multi_processor_count + 7
    A = torch.randn(batch, n, n, dtype=dtype, device="cuda")
    B = torch.randn(batch, n, 3, dtype=dtype, device="cuda")
    X = solve(A, B)
    assert residual(A, X, B) < (1e-5 if dtype == torch.float32 else 1e-12)


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
    Ah, Bh = A.half(), B.half()
    Xh = solve(Ah, Bh)
    assert Xh.dtype == torch.float16
    ref = torch.linalg.solve(Ah.double(), Bh.double())  # exact for the 16-bit inputs
    # Within twice the error of torch computing in float32 and rounding (the float32 part grows
    # with the condition number, which a random draw can make large).
    assert rel_err(Xh, ref) <= 2 * rel_err(torch.linalg.solve(Ah.float(), Bh.float()).half(), ref) + 1e-6
    At = A.mT.contiguous().mT
    Bs = B[..., ::2]
    assert not At.is_contiguous() and residual(A, solve(At, Bs), Bs) <= 1e-6
    assert solve(torch.zeros(0, 3, 3, device=device), torch.zeros(0, 3, device=device)).shape == (0, 3)
    assert solve(torch.zeros(2, 0, 0, device=device), torch.zeros(2, 0, 4, device=device)).shape == (2, 0, 4)


def test_failures_in_a_2d_batch_name_the_element_and_where(device):
    A = spd((2, 3), 5, torch.float32, device)
    A[1, 2, 3, 3] = -100.0  # the leading minor of order 4 is the first one not positive definite
    with pytest.raises(torch.linalg.LinAlgError, match=r"order 4 of batch element \(1, 2\)"):
        cholesky(A)
    M = torch.randn(2, 3, 4, 4, device=device)
    M[0, 1, :, 0] = 0.0  # U[0, 0] == 0
    with pytest.raises(torch.linalg.LinAlgError, match=r"batch element \(0, 1\)\): U\[0, 0\]"):
        solve(M, torch.randn(2, 3, 4, device=device))


def test_cpu_ops_return_the_status_of_info():
    # On the CPU the core's cholesky and LU report with the call whether info has a nonzero entry
    # (-1: none; else the first one's flattened index), so the check needs no torch op.
    A = spd((6,), 5, torch.float32, "cpu")
    _, info, first = mlinalg._factor(A, False)
    assert first == -1 and not info.any()
    A[4, 2, 2] = A[5, 0, 0] = -100.0
    _, info, first = mlinalg._factor(A, False)
    assert first == 4 and info.tolist() == [0, 0, 0, 0, 3, 1]
    M = torch.randn(6, 4, 4)
    _, X, _, info, first = mlinalg._lu(M, torch.randn(6, 4, 1), M.shape[:-2], False, False)
    assert first == -1
    M[3, :, 1] = 0.0
    _, X, _, info, first = mlinalg._lu(M, torch.randn(6, 4, 1), M.shape[:-2], False, False)
    assert first == 3 and info[3] > 0


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


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("n, dtype", [(300, torch.float32), (700, torch.float32), (300, torch.float64)])
def test_cuda_large_triangular_solves_use_cublas(n, dtype):
    # Operands past one block's shared memory: cuBLAS TRSM per matrix, no fallback warning.
    import metalcore._backend as bk

    for op in ("trsm", "cholesky_solve"):
        bk._warned.discard((op, "cuda"))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for lower in (True, False):
            A = tri((2,), n, torch.float64, "cpu", lower)
            off = A - torch.diag_embed(A.diagonal(dim1=-2, dim2=-1))
            A = (A - off + off / n ** 0.5).to(dtype).cuda()  # well conditioned at any n
            junk = A + (torch.randn_like(A).triu(1) if lower else torch.randn_like(A).tril(-1))
            B = torch.randn(2, n, 3, dtype=dtype, device="cuda")
            for transpose in (False, True):
                for unit in (False, True):
                    for rhs in (B, B[..., :1]):
                        X = trsm(junk, rhs, lower=lower, transpose=transpose, unit_diagonal=unit)
                        M = A.double().mT if transpose else A.double()
                        ref = torch.linalg.solve_triangular(M, rhs.double(), upper=(lower == transpose),
                                                            unitriangular=unit)
                        assert rel_err(X, ref) < (1e-5 if dtype == torch.float32 else 1e-12)
            S = spd((2, 1), n, dtype, "cuda")
            F = torch.linalg.cholesky(S, upper=not lower)  # (metalcore's is off by default at these sizes)
            for k in (1, 2):
                Bs = torch.randn(3, n, k, dtype=dtype, device="cuda")
                Xs = cholesky_solve(Bs, F, upper=not lower)
                assert Xs.shape == (2, 3, n, k) and residual(S.expand(2, 3, n, n), Xs, Bs.expand(2, 3, n, k)) < (
                    1e-5 if dtype == torch.float32 else 1e-12)
    assert not rec, [str(r.message) for r in rec]


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


# ---------------------------------------------------------------------------------------------
# QR, qr_solve, lstsq, LU factors, Householder helpers

from metalcore import apply_householder, householder_vector, lstsq, lu_batched, qr, qr_solve  # noqa: E402


def qr_errs(A, Q, R):
    """(‖QR − A‖/‖A‖, ‖QᵀQ − I‖_max) over the batch, in float64."""
    A64, Q64, R64 = A.double().cpu(), Q.double().cpu(), R.double().cpu()
    if A64.numel() == 0:
        return 0.0, 0.0
    rec = ((Q64 @ R64 - A64).flatten(-2).norm(dim=-1) / A64.flatten(-2).norm(dim=-1).clamp_min(1e-300)).max().item()
    eye = torch.eye(Q64.shape[-1], dtype=torch.float64)
    orth = (Q64.mT @ Q64 - eye).abs().max().item() if Q64.numel() else 0.0
    return rec, orth


def signed_rows(r):
    """R (float64, CPU) with each row's sign flipped to make its diagonal entry non-negative: the
    reflectors are LAPACK's, so R matches torch's, but where a reflector's pivot is near zero
    rounding may pick the other (equally valid) sign, so signs are compared apart."""
    d = r.double().cpu().diagonal(dim1=-2, dim2=-1)
    sg = torch.where(d < 0, -1.0, 1.0).double()
    sg = torch.cat([sg, sg.new_ones(sg.shape[:-1] + (r.shape[-2] - sg.shape[-1],))], -1)
    return r.double().cpu() * sg.unsqueeze(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mn", [(1, 1), (2, 2), (7, 7), (16, 16), (33, 33), (64, 64), (127, 127), (40, 9), (128, 64), (9, 40), (3, 1), (1, 5)])
@pytest.mark.parametrize("mode", ["reduced", "complete", "r"])
@pytest.mark.parametrize("batch", [5, 37])  # the CPU's per-matrix path; its 16-lane groups (two full, one partial)
def test_qr_matches_reference(device, dtype, mn, mode, batch):
    m, n = mn
    A = torch.randn(batch, m, n, dtype=dtype, device=device)
    Q, R = qr(A, mode=mode)
    k = min(m, n)
    kq, kr = (m, m) if mode == "complete" else (k, k)
    assert R.shape == (batch, kr, n) and R.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.equal(R.tril(-1), torch.zeros_like(R)), "R is exactly upper triangular"
    Rt = torch.linalg.qr(A.double().cpu(), mode=mode).R
    assert rel_err(signed_rows(R), signed_rows(Rt)) <= tol * max(1, m) ** 0.5 * 4
    if mode == "r":
        assert Q.numel() == 0
        return
    assert Q.shape == (batch, m, kq)
    rec, orth = qr_errs(A, Q, R)
    assert rec <= tol and orth <= tol


@pytest.mark.parametrize("batch", [(), (0,), (1,), (2, 3)])
def test_qr_batch_shapes_and_non_contiguous(device, batch):
    A = torch.randn(batch + (12, 8), device=device)
    Q, R = qr(A)
    assert Q.shape == batch + (12, 8) and R.shape == batch + (8, 8)
    assert qr_errs(A, Q, R)[0] <= 1e-5
    B = torch.randn(3, 8, 12, device=device).mT  # non-contiguous (3, 12, 8)
    Q, R = qr(B)
    assert max(qr_errs(B, Q, R)) <= 1e-5
    E = torch.randn(4, 0, 3, device=device)
    Q, R = qr(E, mode="complete")
    assert Q.shape == (4, 0, 0) and R.shape == (4, 0, 3)
    E = torch.randn(2, 3, 0, device=device)
    Q, R = qr(E, mode="complete")
    assert torch.equal(Q.cpu(), torch.eye(3).expand(2, 3, 3)) and R.shape == (2, 3, 0)


def test_qr_ill_conditioned_rank_deficient_and_special(device):
    g = torch.randn(4, 48, 48, dtype=torch.float64)
    u, _ = torch.linalg.qr(g)
    v, _ = torch.linalg.qr(torch.randn(4, 48, 48, dtype=torch.float64))
    s = torch.logspace(0, -6, 48, dtype=torch.float64)
    A = (u @ torch.diag_embed(s.expand(4, 48)) @ v.mT).float().to(device)  # cond 1e6
    assert max(qr_errs(A, *qr(A))) <= 1e-5
    A[:, :, 5] = A[:, :, 2]  # rank deficient
    assert max(qr_errs(A, *qr(A))) <= 1e-5
    Z = torch.zeros(2, 6, 4, device=device)
    Q, R = qr(Z)
    assert torch.equal(R, torch.zeros_like(R)) and max(qr_errs(Z, Q, R)) == 0.0
    for batch in (3, 11):
        N = torch.randn(batch, 6, 4, device=device)
        N[1, 2, 1] = float("nan")
        Q, R = qr(N)
        assert torch.isnan(R[1]).any() and torch.isnan(Q[1]).any(), "NaN propagates"
        others = torch.cat([torch.arange(1), torch.arange(2, batch)])
        assert torch.isfinite(R[others]).all() and torch.isfinite(Q[others]).all(), "only into its own matrix"
    Z = torch.zeros(9, 5, 5, device=device)
    Z[3] = torch.randn(5, 5)
    Q, R = qr(Z)
    assert max(qr_errs(Z, Q, R)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_qr_half_inputs(device, dtype):
    A = torch.randn(3, 10, 6, device=device).to(dtype)
    Q, R = qr(A)
    assert Q.dtype == dtype and R.dtype == dtype
    Q32, R32 = qr(A.float())
    assert torch.equal(Q, Q32.to(dtype)) and torch.equal(R, R32.to(dtype))


@pytest.mark.parametrize("mn", [(6, 4), (5, 5), (3, 6)])
def test_qr_gradients(device, mn):
    A = torch.randn((2,) + mn, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: qr(a), (A,))
    # Against torch's own backward, with both outputs used.
    A2 = A.detach().clone().requires_grad_(True)
    gq, gr = torch.randn_like(qr(A2).Q), torch.randn_like(qr(A2).R)
    Q, R = qr(A2)
    ((Q * gq).sum() + (R * gr).sum()).backward()
    A3 = A.detach().clone().requires_grad_(True)
    Qt, Rt = torch.linalg.qr(A3)
    ((Qt * gq).sum() + (Rt * gr).sum()).backward()
    assert torch.allclose(A2.grad, A3.grad, atol=1e-10)
    with pytest.raises(RuntimeError, match="mode='r'"):
        qr(A, mode="r")


def test_qr_bad_input(device):
    with pytest.raises(TypeError, match="A: expected a torch.Tensor"):
        qr([[1.0]])
    with pytest.raises(TypeError, match="A: expected a floating dtype"):
        qr(torch.ones(3, 3, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match=r"A: expected a batch of matrices"):
        qr(torch.ones(3, device=device))
    with pytest.raises(ValueError, match="mode: expected one of"):
        qr(torch.ones(3, 3, device=device), mode="full")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mn", [(8, 8), (30, 7), (64, 33), (5, 9)])
def test_lstsq_and_qr_solve(device, dtype, mn):
    m, n = mn
    A = torch.randn(4, m, n, dtype=dtype, device=device)
    B = torch.randn(4, m, 3, dtype=dtype, device=device)
    res = lstsq(A, B)
    ref = torch.linalg.lstsq(A.double().cpu(), B.double().cpu(), driver="gelsd")
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    # The solution's error grows with A's condition number κ (a random 8×8 draw can reach 1e4 or
    # more): a backward-stable solver is within about κ·n·ε of the exact solution. So the bound
    # is the fixed one, twice LAPACK's own error on this draw, or 4κnε, whichever is largest (the
    # first two alone failed about once in ten runs: two stable solvers' forward errors on an
    # ill-conditioned draw can differ by more than 2×).
    own = rel_err(torch.linalg.lstsq(A.cpu(), B.cpu(), driver="gelsd").solution, ref.solution)
    kappa = torch.linalg.cond(A.double().cpu()).max().item()
    bound = max(tol, 2 * own, 4 * kappa * max(m, n) * torch.finfo(dtype).eps)
    assert rel_err(res.solution, ref.solution) <= bound
    if m > n:
        r64 = (A.double().cpu() @ ref.solution - B.double().cpu()).pow(2).sum(-2)
        assert rel_err(res.residuals, r64) <= tol
    else:
        assert res.residuals.numel() == 0
    assert res.rank.numel() == 0 and res.singular_values.numel() == 0
    x = qr_solve(A, B[..., 0])
    assert x.shape == (4, n) and rel_err(x, ref.solution[..., 0]) <= bound


def test_lstsq_broadcasting_gradients_and_errors(device):
    A = torch.randn(3, 7, 4, dtype=torch.float64, device=device, requires_grad=True)
    B = torch.randn(7, 2, dtype=torch.float64, device=device, requires_grad=True)
    X = lstsq(A, B).solution
    assert X.shape == (3, 4, 2)
    assert torch.autograd.gradcheck(lambda a, b: lstsq(a, b).solution, (A, B))
    Aw = torch.randn(2, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    Bw = torch.randn(2, 3, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda a: qr_solve(a, Bw), (Aw,))
    with pytest.raises(ValueError, match=r"B: expected shape \(\*, 7, k\)"):
        lstsq(A, torch.ones(6, 2, dtype=torch.float64, device=device))
    with pytest.raises(TypeError, match="B: expected dtype"):
        lstsq(A, torch.ones(7, 2, device=device))
    with pytest.raises(ValueError, match="driver"):
        lstsq(A, B, driver="gelsd")
    # torch's rule for B: a (4, 5) B against a (4, 4, 4) A is one matrix broadcast over the batch.
    Ab = torch.randn(4, 4, 4, dtype=torch.float64, device=device)
    Bb = torch.randn(4, 5, dtype=torch.float64, device=device)
    ref = torch.linalg.lstsq(Ab.cpu(), Bb.cpu()).solution
    assert rel_err(lstsq(Ab, Bb).solution, ref) < 1e-10 and rel_err(qr_solve(Ab, Bb), ref) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 5, 8, 9, 16, 17, 32, 33, 64])
def test_lu_batched_matches_lu_factor(device, dtype, n):
    A = torch.randn(6, n, n, dtype=dtype, device=device)
    LU, piv, info = lu_batched(A)
    assert LU.shape == A.shape and piv.shape == (6, n) and piv.dtype == torch.int32 and info.shape == (6,)
    P, L, U = torch.lu_unpack(LU.double().cpu(), piv.cpu())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel_err(P @ L @ U, A.double().cpu()) <= tol
    ref = torch.linalg.lu_factor_ex(A.double().cpu())
    assert torch.equal(piv.cpu(), ref.pivots.to(torch.int32)), "same pivots as LAPACK on random input"
    assert torch.equal(info.cpu(), torch.zeros(6, dtype=torch.int32))
    S = A.clone()
    S[2, :, 0] = 0  # singular: a zero column
    assert lu_batched(S).info.cpu().tolist() == [0, 0, 1, 0, 0, 0]


@pytest.mark.parametrize("n", [3, 8, 13, 16, 29, 32, 40])
def test_lu_pivots_on_ties_match_lapack(device, n):
    # Entries in {-1, 0, 1}: nearly every pivot search has ties, which LAPACK breaks by taking the
    # first row in its interchanged order; 7 matrices leave the last group of a warp partly empty.
    g = torch.Generator().manual_seed(n)
    A = torch.randint(-1, 2, (7, n, n), generator=g).double()
    A += 4 * torch.eye(n, dtype=torch.float64)  # nonsingular, yet ties below the diagonal remain
    A[1] = torch.randint(-1, 2, (n, n), generator=g).double()  # may be singular: info as LAPACK's
    ref = torch.linalg.lu_factor_ex(A)
    for dtype in (torch.float32, torch.float64):
        LU, piv, info = lu_batched(A.to(device=device, dtype=dtype))
        assert torch.equal(piv.cpu(), ref.pivots.to(torch.int32))
        assert torch.equal(info.cpu(), ref.info.to(torch.int32))
        ok = ref.info == 0
        assert rel_err(LU.cpu().double()[ok], ref.LU[ok]) <= (1e-6 if dtype == torch.float32 else 1e-14)


# Blocked LU of CUDA matrices past one block's shared memory (cuda/linalg.rs `lu_blocked`): panels
# of 128 columns, each factored in leaves whose shape follows the rows left (`lu_leaf_shape`). 241
# float32 and 170 float64 are the first such orders on Hopper; 1000 takes eight panels; 2100
# float32 starts with leaves of 8 columns, 8 rows per thread (of 512), and ends with leaves of 16;
# 1500 float64 has 4 rows per thread, leaves of 8.
BLOCKED_LU = [(241, torch.float32), (300, torch.float32), (1000, torch.float32), (2100, torch.float32),
              (170, torch.float64), (600, torch.float64), (1500, torch.float64)]


def lu_checks(A, LU, piv, tol):
    """P L U = A, and |L| <= 1 (partial pivoting), against float64 on the CPU."""
    P, L, U = torch.lu_unpack(LU.double().cpu(), piv.cpu())
    assert rel_err(P @ L @ U, A.double().cpu()) <= tol
    assert L.abs().max().item() <= 1.0


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("n, dtype", BLOCKED_LU)
def test_cuda_blocked_lu_solve(n, dtype):
    A = torch.randn(2, n, n, dtype=dtype, device="cuda")
    B = torch.randn(2, n, 3, dtype=dtype, device="cuda")
    A0, B0 = A.clone(), B.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # metalcore's kernels, no fallback warning
        X = solve(A, B)
        x1 = solve(A, B[..., 0])
        LU, piv, info = lu_batched(A)
    assert torch.equal(A, A0) and torch.equal(B, B0), "the inputs are never written"
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert residual(A, X, B) <= tol and residual(A, x1, B[..., 0]) <= tol
    assert torch.equal(info.cpu(), torch.zeros(2, dtype=torch.int32))
    lu_checks(A, LU, piv, tol)
    if dtype == torch.float64:
        # Random float64 input: no near-ties, so LAPACK's pivots exactly.
        ref = torch.linalg.lu_factor(A.cpu())
        assert torch.equal(piv.cpu(), ref.pivots.to(torch.int32))
        assert rel_err(LU, ref.LU) <= 1e-11
    # Non-contiguous and broadcast operands.
    Xt = solve(A.mT.contiguous().mT, B[:1])
    assert residual(A, Xt, B[:1].expand_as(B)) <= tol


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("n, dtype", [(4500, torch.float32), (2500, torch.float64), (4500, torch.float64)])
def test_cuda_blocked_lu_past_the_default_limit(monkeypatch, n, dtype):
    # The leaf shapes only larger orders reach (1024 threads past 4096 rows: leaves of 4 float32 or
    # 2 float64 columns; float64 past 2048: 8 rows per thread, leaves of 4), with the limit raised.
    monkeypatch.setattr(mlinalg, "BLOCKED_LU_MAX_N", {torch.float32: 8192, torch.float64: 8192})
    A = torch.randn(1, n, n, dtype=dtype, device="cuda")
    B = torch.randn(1, n, 2, dtype=dtype, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X = solve(A, B)
        LU, piv, info = lu_batched(A)
    assert residual(A, X, B) <= (1e-5 if dtype == torch.float32 else 1e-12) and info.item() == 0
    if dtype == torch.float64:
        ref = torch.linalg.lu_factor(A[0].cpu())
        assert torch.equal(piv[0].cpu(), ref.pivots.to(torch.int32))
        assert rel_err(LU[0], ref.LU) <= 1e-11


def with_fallback_warning(op, limit, fn):
    """fn()'s result, asserting that it warned (even if `op` warned before) that `op` falls back to
    PyTorch past the limit named `limit`."""
    import metalcore._backend as bk

    bk._warned.discard((op, "cuda"))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    assert any(limit in str(r.message) and "falls back to PyTorch" in str(r.message) for r in rec)
    return out


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_lu_past_the_limit_falls_back_with_a_warning():
    n = mlinalg.BLOCKED_LU_MAX_N[torch.float64] + 1
    A = torch.randn(n, n, dtype=torch.float64, device="cuda")
    B = torch.randn(n, 1, dtype=torch.float64, device="cuda")
    X = with_fallback_warning("solve", "BLOCKED_LU_MAX_N", lambda: solve(A, B))
    assert residual(A, X, B) <= 1e-12


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_blocked_lu_ties_match_lapack(dtype):
    # A Sylvester-Hadamard matrix with random signs on rows and columns and its rows shuffled:
    # every entry ±1, pivot searches full of ties (LAPACK takes the first row, in its interchanged
    # order, of largest magnitude), and elimination exact (multipliers 0 and ±1, entries small
    # integers), so the factors and pivots are LAPACK's exactly, whatever the order of the updates.
    n = 512
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    g = torch.Generator().manual_seed(5)
    sign = lambda: torch.randint(0, 2, (n,), generator=g).double() * 2 - 1  # noqa: E731
    A = (sign()[:, None] * H * sign()[None, :])[torch.randperm(n, generator=g)]
    ref = torch.linalg.lu_factor(A)
    assert (ref.pivots != torch.arange(1, n + 1)).sum() > n // 2, "mostly real interchanges"
    LU, piv, info = lu_batched(A.to(device="cuda", dtype=dtype)[None])
    assert info.item() == 0
    assert torch.equal(piv[0].cpu(), ref.pivots.to(torch.int32))
    assert torch.equal(LU[0].cpu().double(), ref.LU)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("n, dtype", [(300, torch.float32), (1100, torch.float32), (600, torch.float64)])
def test_cuda_blocked_lu_failures(n, dtype):
    A = torch.randn(5, n, n, dtype=dtype, device="cuda")
    A[1, :, n - 3] = 0  # a zero column in the last panel: U[n-3, n-3] is exactly zero
    A[2] = 0.0  # the zero matrix: the first pivot
    A[3, :, 130] = 0  # past the first panel
    A[4, 7, 7] = float("nan")
    B = torch.randn(5, n, 2, dtype=dtype, device="cuda")
    X, info = solve_ex(A, B)
    assert info.cpu().tolist() == [0, n - 2, 1, 131, 0]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert residual(A[0], X[0], B[0]) <= tol
    assert torch.isnan(X[4]).all(), "NaN input: NaN solution"
    with pytest.raises(torch.linalg.LinAlgError, match=r"batch element \(1,\)"):
        solve(A, B)
    # The zero column's matrix still factors as LAPACK does (elimination goes on past it).
    LU, piv, linfo = lu_batched(A[1:2])
    assert linfo.item() == n - 2
    lu_checks(A[1:2], LU, piv, tol)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_blocked_lu_on_a_side_stream():
    A = torch.randn(1, 700, 700, device="cuda")
    B = torch.randn(1, 700, 4, device="cuda")
    ref = solve(A, B)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        X = solve(A, B)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(X, ref)


# The blocked CUDA QR (matrices past one block's shared memory): panels of 128 columns, each
# factored in leaves whose width follows the rows left (`lu_leaf_shape`: float32 16 columns up to
# 2048 rows, 8 up to 4096, 4 past that with 1024 threads; float64 8, 4, 2). Square, tall and wide
# shapes, partial last panels and leaves; rows of a length that is not a multiple of 16 bytes
# (333, 257, 177: element-wise staging and loads instead of 16-byte pieces).
BLOCKED_QR = [((300, 300), torch.float32), ((1000, 1000), torch.float32), ((2100, 700), torch.float32),
              ((400, 900), torch.float32), ((4500, 200), torch.float32), ((333, 333), torch.float32),
              ((1001, 257), torch.float32), ((170, 170), torch.float64), ((1500, 600), torch.float64),
              ((600, 1300), torch.float64), ((4300, 150), torch.float64), ((301, 177), torch.float64)]


def qr_errs_cuda(A, Q, R):
    """qr_errs, computed on A's device (float64)."""
    A64, Q64, R64 = A.double(), Q.double(), R.double()
    rec = ((Q64 @ R64 - A64).flatten(-2).norm(dim=-1) / A64.flatten(-2).norm(dim=-1).clamp_min(1e-300)).max().item()
    eye = torch.eye(Q64.shape[-1], dtype=torch.float64, device=A.device)
    return rec, (Q64.mT @ Q64 - eye).abs().max().item()


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
@pytest.mark.parametrize("mn, dtype", BLOCKED_QR)
@pytest.mark.parametrize("mode", ["reduced", "complete", "r"])
def test_cuda_blocked_qr(monkeypatch, mn, dtype, mode):
    # The kernels at every shape, including those past the default limit (the 1024-thread leaves).
    monkeypatch.setattr(mlinalg, "BLOCKED_QR_MAX_M", {torch.float32: 8192, torch.float64: 8192})
    m, n = mn
    A = torch.randn(2, m, n, dtype=dtype, device="cuda")
    A0 = A.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # metalcore's kernels, no fallback warning
        Q, R = qr(A, mode=mode)
    assert torch.equal(A, A0), "the input is never written"
    k = min(m, n)
    kq, kr = (m, m) if mode == "complete" else (k, k)
    assert R.shape == (2, kr, n) and R.dtype == dtype
    assert torch.equal(R.tril(-1), torch.zeros_like(R)), "R is exactly upper triangular"
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    Rt = torch.linalg.qr(A.double().cpu(), mode=mode).R
    assert rel_err(signed_rows(R), signed_rows(Rt)) <= tol * m**0.5 * 4
    if mode == "r":
        assert Q.numel() == 0
        return
    assert Q.shape == (2, m, kq)
    rec, orth = qr_errs_cuda(A, Q, R)
    # The bound, or twice torch's own error in the same dtype where that is larger.
    trec, torth = qr_errs_cuda(A, *torch.linalg.qr(A, mode=mode))
    assert rec <= max(tol, 2 * trec) and orth <= max(tol, 2 * torth), (rec, orth, trec, torth)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_qr_past_the_limit_falls_back_with_a_warning():
    m = mlinalg.BLOCKED_QR_MAX_M[torch.float64] + 1
    A = torch.randn(m, 200, dtype=torch.float64, device="cuda")
    Q, R = with_fallback_warning("qr", "BLOCKED_QR_MAX_M", lambda: qr(A))
    assert max(qr_errs_cuda(A, Q, R)) <= 1e-12


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_qr_large_batches_of_small_matrices_fall_back_with_a_warning():
    A = torch.randn(mlinalg.BLOCKED_QR_BATCH + 1, 200, 180, device="cuda")
    Q, R = with_fallback_warning("qr", "BLOCKED_QR_BATCH", lambda: qr(A))
    assert max(qr_errs_cuda(A, Q, R)) <= 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a batch at the limit, or larger matrices: the blocked path
        Q, R = qr(A[: mlinalg.BLOCKED_QR_BATCH])
        assert max(qr_errs_cuda(A[:-1], Q, R)) <= 1e-5
        B = torch.randn(mlinalg.BLOCKED_QR_BATCH + 1, 300, 260, device="cuda")
        assert max(qr_errs_cuda(B, *qr(B))) <= 1e-5


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_blocked_qr_special_inputs():
    n = 600
    u, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    s = torch.logspace(0, -6, n, dtype=torch.float64)
    A = torch.stack([u @ torch.diag(s) @ v.mT, torch.randn(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64),
                     torch.randn(n, n, dtype=torch.float64)]).float().cuda()  # cond 1e6, random, zero, NaN
    A[1, :, 300] = A[1, :, 17]  # rank deficient, a column in the third panel repeats one of the first
    A[1, :, 140] = 0  # and a zero column in the second
    A[3, 250, 260] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Q, R = qr(A)
    rec, orth = qr_errs_cuda(A[:2], Q[:2], R[:2])
    assert rec <= 1e-5 and orth <= 1e-5
    assert torch.equal(R[2], torch.zeros_like(R[2])) and torch.equal(Q[2], torch.eye(n, device="cuda"))
    assert torch.isnan(R[3]).any() and torch.isnan(Q[3]).any(), "NaN propagates"
    assert torch.isfinite(R[:3]).all() and torch.isfinite(Q[:3]).all(), "only into its own matrix"
    # Non-contiguous input, a side stream, and the solves built on QR.
    B = torch.randn(2, 500, 700, device="cuda").mT
    ref = qr(B.contiguous())
    st = torch.cuda.Stream()
    st.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(st):
        Qb, Rb = qr(B)
    torch.cuda.current_stream().wait_stream(st)
    assert torch.equal(Qb, ref.Q) and torch.equal(Rb, ref.R)
    M = torch.randn(1200, 400, dtype=torch.float64, device="cuda")
    y = torch.randn(1200, 3, dtype=torch.float64, device="cuda")
    ref = torch.linalg.lstsq(M.cpu(), y.cpu()).solution
    assert rel_err(lstsq(M, y).solution, ref) <= 1e-10 and rel_err(qr_solve(M, y), ref) <= 1e-10
    # Gradients: the same backward as on every path, against torch's.
    G = torch.randn(300, 250, dtype=torch.float64, device="cuda", requires_grad=True)
    gq, gr = torch.randn(300, 250, dtype=torch.float64, device="cuda"), torch.randn(250, 250, dtype=torch.float64, device="cuda")
    Qg, Rg = qr(G)
    (ga,) = torch.autograd.grad((Qg * gq).sum() + (Rg * gr).sum(), G)
    Qt, Rt = torch.linalg.qr(G)
    (gt,) = torch.autograd.grad((Qt * gq).sum() + (Rt * gr).sum(), G)
    assert rel_err(ga, gt) <= 1e-9


def test_householder_helpers(device):
    x = torch.randn(4, 9, dtype=torch.float64, device=device)
    x[3, 1:] = 0
    v, tau, beta = householder_vector(x)
    assert torch.equal(v[..., 0], torch.ones(4, dtype=torch.float64, device=device)) and tau[3] == 0
    y = apply_householder(x[..., None], v, tau)[..., 0]
    assert torch.allclose(y[:, 0], beta) and y[:, 1:].abs().max() < 1e-14
    assert torch.allclose(beta.abs(), x.norm(dim=-1))
    # The first reflector of qr: R[0, 0] = beta.
    A = torch.randn(3, 9, 4, dtype=torch.float64, device=device)
    _, _, b0 = householder_vector(A[..., 0])
    assert torch.allclose(qr(A).R[:, 0, 0], b0)
    M = torch.randn(4, 9, 3, dtype=torch.float64, device=device)
    H = torch.eye(9, dtype=torch.float64, device=device) - tau[:, None, None] * v[:, :, None] * v[:, None, :]
    assert torch.allclose(apply_householder(M, v, tau), H @ M)
    with pytest.raises(ValueError, match="v: expected shape"):
        apply_householder(M, v[:, :5], tau)
