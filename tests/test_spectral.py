"""eigh / eigvalsh / svd / svdvals / pinv / svd_lowrank against float64 torch.linalg, on every
test device, plus the documented torch fallback ("cpu-torch": metalcore's wrapper around
torch.linalg's kernels, so CI covers it without a GPU)."""

import os

import pytest
import torch

import metalcore.linalg as mlinalg
from metalcore import eigh, eigvalsh, pinv, svd, svd_lowrank, svdvals


@pytest.fixture
def device(linalg_device):
    return linalg_device


def tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-12


def svd_errs(A, U, S, V):
    """(reconstruction, max orthogonality error of U and V, singular values) in float64."""
    A64, U64, S64, V64 = (t.double().cpu() for t in (A, U, S, V))
    norm = A64.flatten(-2).norm(dim=-1)
    rec = ((U64 * S64.unsqueeze(-2)) @ V64.mT - A64).flatten(-2).norm(dim=-1)
    rec = (rec / norm.clamp_min(1e-300)).max().item() if rec.numel() else 0.0
    eye = lambda k: torch.eye(k, dtype=torch.float64)  # noqa: E731
    orth = max((U64.mT @ U64 - eye(U64.shape[-1])).abs().max().item() if U64.numel() else 0.0,
               (V64.mT @ V64 - eye(V64.shape[-1])).abs().max().item() if V64.numel() else 0.0)
    ref = torch.linalg.svdvals(A64)
    sv = ((S64 - ref).abs().amax(-1) / norm.clamp_min(1e-300)).max().item() if ref.numel() else 0.0
    return rec, orth, sv


def sym(batch, n, dtype, device, spectrum=None):
    g = torch.randn(batch + (n, n), dtype=torch.float64)
    if spectrum is None:
        a = g + g.mT
    else:
        q, _ = torch.linalg.qr(g)
        a = q @ torch.diag_embed(spectrum.expand(batch + (n,))) @ q.mT
        a = 0.5 * (a + a.mT)
    return a.to(dtype).to(device)


def eigh_errs(A, L, V):
    A64, L64, V64 = (t.double().cpu() for t in (A, L, V))
    norm = A64.flatten(-2).norm(dim=-1).clamp_min(1e-300)
    rec = (((V64 * L64.unsqueeze(-2)) @ V64.mT - A64).flatten(-2).norm(dim=-1) / norm).max().item()
    orth = (V64.mT @ V64 - torch.eye(V64.shape[-1], dtype=torch.float64)).abs().max().item()
    ref = torch.linalg.eigvalsh(A64)
    ev = ((L64 - ref).abs().amax(-1) / norm).max().item()
    return rec, orth, ev


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mn", [(1, 1), (2, 2), (7, 7), (16, 16), (33, 33), (64, 64), (100, 100), (127, 127), (128, 128), (40, 9), (9, 40), (128, 64)])
def test_svd_random(device, dtype, mn):
    A = torch.randn((3,) + mn, dtype=dtype, device=device)
    U, S, V = svd(A)
    k = min(mn)
    assert U.shape == (3, mn[0], k) and S.shape == (3, k) and V.shape == (3, mn[1], k)
    assert U.dtype == S.dtype == V.dtype == dtype
    rec, orth, sv = svd_errs(A, U, S, V)
    assert rec <= tol(dtype) and orth <= tol(dtype) and sv <= tol(dtype)
    assert bool((S[..., :-1] >= S[..., 1:]).all()), "descending"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 16, 33, 64, 127, 128])
def test_eigh_random(device, dtype, n):
    A = sym((3,), n, dtype, device)
    L, V = eigh(A)
    assert L.shape == (3, n) and V.shape == (3, n, n) and L.dtype == V.dtype == dtype
    assert max(eigh_errs(A, L, V)) <= tol(dtype)
    assert bool((L[..., :-1] <= L[..., 1:]).all()), "ascending"
    assert torch.equal(eigvalsh(A), L)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 9, 40])
def test_eigvalsh_alone_matches_eigh(device, dtype, n):
    """eigvalsh skips the eigenvectors on the CPU (batch 11: a full side-by-side reduction group
    and a partial one) and returns eigh's values bit for bit, NaN and UPLO='U' included."""
    A = sym((11,), n, dtype, device)
    A[4, n - 1, 0] = float("nan")  # in the lower triangle: NaN values for that matrix
    L = eigvalsh(A)
    assert L.shape == (11, n) and L.dtype == dtype
    torch.testing.assert_close(L, eigh(A).eigenvalues, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(L[4]).all()
    ok = [i for i in range(11) if i != 4]
    A64 = A[ok].double().cpu()
    ref = torch.linalg.eigvalsh(A64)
    assert ((L[ok].double().cpu() - ref).abs().amax(-1) / A64.flatten(-2).norm(dim=-1)).max().item() <= tol(dtype)
    torch.testing.assert_close(eigvalsh(A.mT.contiguous(), UPLO="U"), L, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="UPLO"):
        eigvalsh(A, UPLO="X")


@pytest.mark.parametrize("n", [5, 33, 64])
def test_many_matrices_at_once(device, n):
    """Nine matrices: on the CPU eight of them are reduced side by side (one per SIMD lane), the
    ninth alone; one of the eight is zero and one has repeated eigenvalues."""
    A = sym((9,), n, torch.float32, device)
    A[2] = 0
    A[5] = sym((), n, torch.float32, device, torch.tensor([1.0, -2.0], dtype=torch.float64).repeat(n)[:n])
    L, V = eigh(A)
    assert max(eigh_errs(A, L, V)) <= 1e-5
    assert torch.equal(L[2], torch.zeros_like(L[2]))
    B = torch.randn(9, n + 3, n, device=device)
    assert max(svd_errs(B, *svd(B))) <= 1e-5


@pytest.mark.parametrize("n", [33, 65, 128])
def test_eigh_float32_groups_with_a_fallback(device, n):
    """Sixteen float32 matrices (on the CPU two groups of eight side by side, whose eigenvectors
    come from twisted vectors past 32 rows): Wilkinson's matrix (pairs of eigenvalues equal to
    float64 precision in one unreduced tridiagonal block: on the CPU that matrix falls back to the
    QL iteration with vectors), a cond-1e6 spread, close pairs, rank 3, and random ones."""
    W = torch.diag((torch.arange(n, dtype=torch.float64) - n // 2).abs())
    W += torch.diag(torch.ones(n - 1, dtype=torch.float64), 1) + torch.diag(torch.ones(n - 1, dtype=torch.float64), -1)
    pairs = torch.arange(n, dtype=torch.float64).div(2, rounding_mode="floor") + 1e-6 * (torch.arange(n) % 2)
    rank3 = torch.zeros(n, dtype=torch.float64)
    rank3[:3] = torch.tensor([3.0, -2.0, 1.0])
    A = torch.stack([W, sym((), n, torch.float64, "cpu", torch.logspace(0, -6, n, dtype=torch.float64)),
                     sym((), n, torch.float64, "cpu", pairs), sym((), n, torch.float64, "cpu", rank3)]
                    + [sym((), n, torch.float64, "cpu") for _ in range(12)]).float().to(device)
    L, V = eigh(A)
    assert max(eigh_errs(A, L, V)) <= 1e-5
    torch.testing.assert_close(eigvalsh(A), L, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [33, 48, 100])
def test_eigh_structured_past_32(device, dtype, n):
    """Past 32 rows CUDA reduces to tridiagonal form and solves that by bisection and twisted
    factorizations: repeated eigenvalues (exactly repeated in float64, where that kernel hands the
    matrix to Jacobi), the identity, a diagonal with repeats, zero, two equal diagonal blocks (the
    tridiagonal matrix splits), a lone off-diagonal pair, a sign and scale spread, and a NaN."""
    rep = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64).repeat(n)[:n]
    h = n // 2
    S = sym((), h, torch.float64, "cpu")
    blocks = torch.zeros(n, n, dtype=torch.float64)
    blocks[:h, :h] = S
    blocks[h:2 * h, h:2 * h] = S
    pair = torch.diag(rep)
    pair[n - 1, 0] = pair[0, n - 1] = 1e-3
    spread = sym((), n, torch.float64, "cpu", torch.logspace(0, -6, n, dtype=torch.float64) * (-1.0) ** torch.arange(n)) * 1e30
    A = torch.stack([sym((), n, torch.float64, "cpu", rep), 3 * torch.eye(n, dtype=torch.float64), torch.diag(rep),
                     torch.zeros(n, n, dtype=torch.float64), blocks, pair, spread, sym((), n, torch.float64, "cpu")])
    A = A.to(dtype)
    A[-1, 3, 1] = float("nan")
    A = A.to(device)
    L, V = eigh(A)
    assert torch.isnan(L[-1]).all() and torch.isnan(V[-1]).all()
    assert max(eigh_errs(A[:-1], L[:-1], V[:-1])) <= tol(dtype)
    # Subnormal and huge entries (the CUDA kernel scales by a power of two first).
    tiny, huge = (1e-39, 1e36) if dtype == torch.float32 else (1e-310, 1e150)  # eigenvalues stay below FLT_MAX
    for s in (tiny, huge):
        B = (sym((2,), n, torch.float64, "cpu") * s).to(dtype).to(device)
        assert max(eigh_errs(B, *eigh(B))) <= tol(dtype)
    assert torch.equal(L[1], torch.full_like(L[1], 3.0)) and torch.equal(V[1], torch.eye(n, dtype=dtype, device=device))
    assert torch.equal(L[3], torch.zeros_like(L[3]))
    assert torch.equal(L[2], torch.sort(rep.to(dtype).to(device)).values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_subnormal_and_huge_entries(device, dtype):
    """Matrices of subnormals and of huge entries keep full accuracy (every kernel first scales by
    a power of two): SVD and eigh through each CUDA path (registers up to 32, the tridiagonal eigh
    to 128, shared-memory Jacobi past that; 64 to 128 columns: the SVD's Gram preconditioning)."""
    scales = (1e-39, 1e35) if dtype == torch.float32 else (1e-310, 1e150)  # eigenvalues stay below FLT_MAX
    for s in scales:
        for mn in ((12, 7), (40, 33), (110, 100), (140, 140)):
            A = (torch.randn((2,) + mn, dtype=torch.float64) * s).to(dtype).to(device)
            assert max(svd_errs(A, *svd(A))) <= tol(dtype), (s, mn)
        for n in (16, 40, 140):
            B = (sym((2,), n, torch.float64, "cpu") * s).to(dtype).to(device)
            assert max(eigh_errs(B, *eigh(B))) <= tol(dtype), (s, n)


def test_ill_conditioned_rank_deficient_repeated(device):
    n = 48
    s = torch.logspace(0, -6, n, dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(4, n, n, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, n, n, dtype=torch.float64))
    A = (u * s.unsqueeze(-2)) @ v.mT
    A = A.float().to(device)
    assert max(svd_errs(A, *svd(A))) <= 1e-5
    # Tight clusters on both sides of 1e-3·σ₁, where the CPU's float32 SVD starts to
    # orthogonalize the columns of A·V (above it they are orthogonal as computed).
    levels = torch.tensor([1.0] * 16 + [1.0001e-3] * 8 + [0.9999e-3] * 8 + [1e-5] * 16, dtype=torch.float64)
    A = ((u * (levels * (1 + 1e-7 * torch.arange(n))).unsqueeze(-2)) @ v.mT).float().to(device)
    assert max(svd_errs(A, *svd(A))) <= 1e-5
    R = (torch.randn(3, 30, 5, dtype=torch.float64) @ torch.randn(3, 5, 20, dtype=torch.float64)).float().to(device)
    U, S, V = svd(R)  # rank 5 of 20: U completed to an orthonormal basis
    assert max(svd_errs(R, U, S, V)) <= 1e-5
    B = sym((3,), 40, torch.float32, device, torch.logspace(0, -6, 40, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(20))
    assert max(eigh_errs(B, *eigh(B))) <= 1e-5
    rep = torch.tensor([2.0] * 10 + [-1.0] * 10 + [0.5] * 12, dtype=torch.float64)
    C = sym((2,), 32, torch.float32, device, rep)
    assert max(eigh_errs(C, *eigh(C))) <= 1e-5
    I = torch.eye(9, device=device).expand(2, 9, 9)
    L, V = eigh(I)
    assert torch.equal(L, torch.ones_like(L)) and torch.equal(V, I)
    U, S, V = svd(I)
    assert torch.equal(S, torch.ones_like(S)) and torch.equal(U, I) and torch.equal(V, I)


def test_zero_matrix_n1_empty_and_non_contiguous(device):
    Z = torch.zeros(2, 6, 4, device=device)
    U, S, V = svd(Z)
    assert torch.equal(S, torch.zeros_like(S)) and max(svd_errs(Z, U, S, V)) <= 1e-6
    L, V = eigh(torch.zeros(2, 5, 5, device=device))
    assert torch.equal(L, torch.zeros_like(L)) and max(eigh_errs(torch.zeros(2, 5, 5), L, V)) == 0.0
    a = torch.tensor([[[-3.0]]], device=device)
    assert svd(a).S.item() == 3.0 and eigh(a).eigenvalues.item() == -3.0
    E = torch.randn(0, 5, 5, device=device)
    assert svd(E).U.shape == (0, 5, 5) and eigh(E).eigenvectors.shape == (0, 5, 5)
    X = torch.randn(3, 12, 20, device=device).mT  # (3, 20, 12), non-contiguous
    assert max(svd_errs(X, *svd(X))) <= 1e-5
    Y = sym((3,), 12, torch.float32, device).mT[..., ::1]
    assert max(eigh_errs(Y, *eigh(Y))) <= 1e-5


def test_full_matrices_compute_uv_svdvals_and_half(device):
    A = torch.randn(2, 10, 4, device=device)
    U, S, V = svd(A, full_matrices=True)
    assert U.shape == (2, 10, 10) and V.shape == (2, 4, 4)
    eye = torch.eye(10, dtype=torch.float64)
    assert (U.double().cpu().mT @ U.double().cpu() - eye).abs().max() <= 1e-5
    assert max(svd_errs(A, U[..., :4], S, V)) <= 1e-5
    W = torch.randn(2, 4, 10, device=device)
    U, S, V = svd(W, full_matrices=True)
    assert U.shape == (2, 4, 4) and V.shape == (2, 10, 10)
    r = svd(A, compute_uv=False)
    assert r.U.numel() == 0 and r.V.numel() == 0 and torch.allclose(r.S, svd(A).S, atol=1e-6)
    assert torch.allclose(svdvals(A), svd(A).S, atol=1e-6)
    H = A.to(torch.bfloat16)
    U, S, V = svd(H)
    assert S.dtype == torch.bfloat16
    ref = torch.linalg.svdvals(H.double().cpu())
    assert (S.double().cpu() - ref).abs().max() <= 2 * (ref.to(torch.bfloat16).double() - ref).abs().max() + 1e-6


def test_sign_convention_is_deterministic(device):
    A = torch.randn(4, 20, 12, device=device)
    U, S, V = svd(A)
    at = U.abs().argmax(dim=-2, keepdim=True)
    assert bool((torch.gather(U, -2, at) > 0).all())
    U2, S2, V2 = svd(-A)  # the same convention: U is unchanged, V flips
    assert torch.allclose(U2, U, atol=1e-5) and torch.allclose(V2, -V, atol=1e-5)
    B = sym((3,), 10, torch.float32, device)
    L, V = eigh(B)
    at = V.abs().argmax(dim=-2, keepdim=True)
    assert bool((torch.gather(V, -2, at) > 0).all())
    assert torch.equal(eigh(B).eigenvectors, V), "bitwise reproducible"


def test_nan_input_gives_nan_not_a_hang(device):
    A = torch.randn(3, 8, 8, device=device)
    A[1, 2, 3] = float("nan")
    U, S, V = svd(A)
    assert torch.isnan(S[1]).any() and torch.isfinite(S[0]).all() and torch.isfinite(S[2]).all()
    B = A + A.mT
    L, V = eigh(B)
    assert torch.isnan(L[1]).any() and torch.isfinite(L[0]).all()


def test_non_convergence_is_reported(device):
    if not mlinalg.has_backend(torch.device(device)):
        pytest.skip("torch.linalg's fallback has no sweep limit to exceed")
    A = torch.randn(2, 24, 24, device=device)
    with pytest.raises(torch.linalg.LinAlgError, match="did not converge"):
        svd(A, max_sweeps=1)
    # CPU eigh: tridiagonal QL, max_sweeps·n iterations per matrix (24 here; random matrices of
    # order 24 take about 40).
    method = "QL" if device == "cpu" else "Jacobi"
    with pytest.raises(torch.linalg.LinAlgError, match=rf"eigh: the {method} iteration did not converge \(batch element \(0,\)\)"):
        eigh(A + A.mT, max_sweeps=1)


def test_uplo_reads_one_triangle(device):
    A = sym((2,), 7, torch.float64, device)
    junk = A.clone()
    junk.triu_(1).add_(100.0)
    Lo = A.tril() + junk.triu(1)
    assert torch.allclose(eigh(Lo).eigenvalues, eigh(A).eigenvalues, atol=1e-12)
    Up = A.triu() + (A.tril(-1) + 100.0).tril(-1)
    assert torch.allclose(eigh(Up, UPLO="U").eigenvalues, eigh(A).eigenvalues, atol=1e-12)


@pytest.mark.parametrize("mn", [(6, 4), (5, 5), (3, 6)])
def test_svd_gradients(device, mn):
    A = torch.randn((2,) + mn, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: svd(a), (A,))
    assert torch.autograd.gradcheck(lambda a: svdvals(a), (A,))
    # Same as torch's backward for a loss invariant to the vectors' signs.
    wU, wS, wV = torch.randn(mn[0], min(mn)), torch.randn(min(mn)), torch.randn(mn[1], min(mn))
    wU, wS, wV = (t.double().to(device) for t in (wU, wS, wV))

    def loss(U, S, V):
        return (U * U * wU).sum() + (S * wS).sum() + (V * V * wV).sum()

    g_ours = torch.autograd.grad(loss(*svd(A)), A)[0]
    Ut, St, Vht = torch.linalg.svd(A, full_matrices=False)
    g_torch = torch.autograd.grad(loss(Ut, St, Vht.mT), A)[0]
    assert torch.allclose(g_ours, g_torch, atol=1e-9)


def test_eigh_gradients(device):
    X = torch.randn(2, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: eigh(x + x.mT), (X,))
    w = torch.randn(5, 5, dtype=torch.float64, device=device)

    def loss(L, V):
        return (L * torch.arange(5, device=device)).sum() + (V * V * w).sum()

    A = X + X.mT
    g_ours = torch.autograd.grad(loss(*eigh(A)), X)[0]
    g_torch = torch.autograd.grad(loss(*torch.linalg.eigh(A)), X)[0]
    assert torch.allclose(g_ours, g_torch, atol=1e-9)


@pytest.mark.parametrize("mn", [(7, 4), (4, 7), (6, 6)])
def test_pinv(device, mn):
    A = torch.randn((3,) + mn, dtype=torch.float64, device=device)
    assert torch.allclose(pinv(A), torch.linalg.pinv(A), atol=1e-10)
    R = torch.randn(3, mn[0], 2, dtype=torch.float64, device=device) @ torch.randn(3, 2, mn[1], dtype=torch.float64, device=device)
    assert torch.allclose(pinv(R), torch.linalg.pinv(R), atol=1e-8)
    assert torch.allclose(pinv(R, rcond=1e-3), torch.linalg.pinv(R, rtol=1e-3), atol=1e-8)
    H = sym((2,), 6, torch.float64, device)
    assert torch.allclose(pinv(H, hermitian=True), torch.linalg.pinv(H, hermitian=True), atol=1e-10)
    A.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: pinv(a), (A,))


def test_svd_lowrank(device):
    g = torch.Generator().manual_seed(0)
    L = torch.randn(300, 12, generator=g) @ torch.randn(12, 200, generator=g)
    W = L.to(device)
    U, S, V = svd_lowrank(W, q=12, niter=2)
    assert U.shape == (300, 12) and S.shape == (12,) and V.shape == (200, 12)
    assert ((U * S) @ V.mT - W).norm() / W.norm() <= 1e-5
    ref = torch.linalg.svdvals(L.double())[:12]
    assert ((S.double().cpu() - ref).abs().max() / ref[0]) <= 1e-5
    Wn = W + 1e-3 * torch.randn(300, 200, generator=g).to(device)
    U, S, V = svd_lowrank(Wn, q=16, niter=3)
    assert ((U * S) @ V.mT - Wn).norm() / Wn.norm() <= 2e-3


def test_bad_input(device):
    with pytest.raises(TypeError, match="A: expected a torch.Tensor"):
        svd([[1.0]])
    with pytest.raises(TypeError, match="A: expected a floating dtype"):
        svd(torch.ones(3, 3, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"A: expected a batch of square matrices"):
        eigh(torch.ones(3, 4, device=device))
    with pytest.raises(ValueError, match="UPLO"):
        eigh(torch.ones(3, 3, device=device), UPLO="X")
    with pytest.raises(ValueError, match="strategy"):
        svd(torch.ones(3, 3, device=device), strategy="qr")
    with pytest.raises(ValueError, match="q: expected"):
        svd_lowrank(torch.ones(5, 4, device=device), q=9)


# ---------------------------------------------------------------------------------------------
# The large-matrix CUDA eigh (float32 past 128 rows: blocked tridiagonal reduction, float64
# bisection and twisted factorizations, cuBLAS back-transformation).

from conftest import DEVICES  # noqa: E402

import metalcore.spectral as mspectral  # noqa: E402

needs_cuda = pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")


def big_errs_cuda(A, L, V):
    """eigh_errs on the GPU in float64 (the CPU's float64 eigvalsh of 1000² is slow)."""
    A64, L64, V64 = A.double(), L.double(), V.double()
    nrm = A64.flatten(-2).norm(dim=-1).clamp_min(1e-300)
    rec = (((V64 * L64.unsqueeze(-2)) @ V64.mT - A64).flatten(-2).norm(dim=-1) / nrm).max().item()
    orth = (V64.mT @ V64 - torch.eye(V64.shape[-1], dtype=torch.float64, device=A.device)).abs().max().item()
    ev = ((L64 - torch.linalg.eigvalsh(A64)).abs().amax(-1) / nrm).max().item()
    return rec, orth, ev


@pytest.mark.parametrize("float64", [False, True])
def test_big_eigh_scratch_layout_and_cluster_tolerance(float64):
    # The scratch regions the bindings report (scripts read them instead of recomputing):
    # ascending, 256-byte aligned, within eigh_work_len; the cluster tolerance is the kernels'
    # (1e-10 unless METALCORE_EIGH_CTOL_EXP sets it, read once by the core).
    from metalcore import _native

    es = 8 if float64 else 4
    for n in [129, 1000, 4097]:
        off = _native.eigh_work_layout(n, float64)
        assert len(off) == 12 and off[0] == 0
        assert all(b >= a and b % 256 == 0 for a, b in zip(off, off[1:]))
        assert off[1] == -(-n * n * es // 256) * 256  # the matrix being reduced comes first
        assert off[-1] <= _native.eigh_work_len(n, float64) * es < off[-1] + es
    k = os.environ.get("METALCORE_EIGH_CTOL_EXP")
    assert _native.eigh_cluster_tol() == pytest.approx(10.0 ** -int(k) if k else 1e-10)


@needs_cuda
@pytest.mark.parametrize("shape", [(2, 129), (1, 200), (1, 333), (1, 700), (1, 1025)])
def test_big_eigh_random(shape):
    batch, n = shape
    A = sym((batch,), n, torch.float32, "cuda")
    assert mspectral._big_eigh(A)
    # Poison: NaN blocks freed to torch's caching allocator, which hands them out again.
    poison = [torch.full((batch * n * n + 4096,), float("nan"), device="cuda") for _ in range(4)]
    del poison
    L, V = eigh(A)
    assert L.shape == (batch, n) and V.shape == (batch, n, n) and L.dtype == V.dtype == torch.float32
    assert max(big_errs_cuda(A, L, V)) <= 1e-5
    assert bool((L[..., :-1] <= L[..., 1:]).all()), "ascending"
    at = V.abs().argmax(dim=-2, keepdim=True)
    assert bool((torch.gather(V, -2, at) > 0).all()), "largest entry of each eigenvector positive"
    assert torch.equal(eigvalsh(A), L)


@needs_cuda
def test_big_eigh_structured():
    """Identity, zero, exactly repeated values (T splits), diagonal with repeats, cond 1e6, rank 5,
    two equal blocks, huge and tiny scales, a non-contiguous input and UPLO='U' (bit-equal), a
    bfloat16 input (computed in float32), and NaN (NaN outputs, other matrices unaffected)."""
    n = 300
    rep = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64).repeat(n)[:n]
    h = n // 2
    S = sym((), h, torch.float64, "cpu")
    blocks = torch.zeros(n, n, dtype=torch.float64)
    blocks[:h, :h] = S
    blocks[h:, h:] = S
    rank5 = torch.cat([torch.randn(5, dtype=torch.float64), torch.zeros(n - 5, dtype=torch.float64)])
    cases = [torch.eye(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64), sym((), n, torch.float64, "cpu", rep),
             torch.diag(rep), sym((), n, torch.float64, "cpu", torch.logspace(0, -6, n, dtype=torch.float64)),
             sym((), n, torch.float64, "cpu", rank5), blocks, sym((), n, torch.float64, "cpu") * 1e30,
             sym((), n, torch.float64, "cpu") * 1e-30]
    for c in cases:
        A = c.float().cuda()
        L, V = eigh(A)
        assert max(big_errs_cuda(A, L, V)) <= 1e-5
    A = sym((), n, torch.float32, "cuda")
    L, V = eigh(A)
    L2, V2 = eigh(A.mT.contiguous(), UPLO="U")
    assert torch.equal(L, L2) and torch.equal(V, V2)
    wide = torch.zeros(n, 2 * n, device="cuda")
    wide[:, ::2] = A
    L3, V3 = eigh(wide[:, ::2])
    assert torch.equal(L, L3) and torch.equal(V, V3)
    Lb, Vb = eigh(A.bfloat16())
    assert Lb.dtype == Vb.dtype == torch.bfloat16
    assert max(big_errs_cuda(A.bfloat16().float(), Lb.float(), Vb.float())) <= 1e-2
    B = torch.stack([A, A])
    B[1, 7, 3] = float("nan")
    Lb, Vb = eigh(B)
    assert torch.isnan(Lb[1]).all() and torch.isnan(Vb[1]).all()
    assert torch.equal(Lb[0], L) and torch.equal(Vb[0], V)


@needs_cuda
def test_big_eigh_flagged_matrix_redone_by_torch(monkeypatch):
    """A Wilkinson matrix has pairs of eigenvalues equal to float64 precision inside one unreduced
    block of T: the twisted factorizations cannot give orthogonal vectors there, the kernels flag
    it, and that matrix alone is recomputed by torch.linalg.eigh, with the one-time warning."""
    import metalcore._backend as mb

    monkeypatch.setattr(mb, "_warned", set())
    n = 301
    W = torch.diag((torch.arange(n, dtype=torch.float32) - n // 2).abs()) + torch.diag(torch.ones(n - 1), 1) + torch.diag(torch.ones(n - 1), -1)
    A = torch.stack([sym((), n, torch.float32, "cpu"), W]).cuda()
    with pytest.warns(RuntimeWarning, match="equal to float64 precision"):
        L, V = eigh(A)
    assert max(big_errs_cuda(A, L, V)) <= 1e-5
    L0, V0 = eigh(A[0])
    assert torch.equal(L[0], L0) and torch.equal(V[0], V0)


@needs_cuda
def test_big_eigh_gradients():
    X = torch.randn(150, 150, dtype=torch.float32, device="cuda", requires_grad=True)
    A = X + X.mT
    assert mspectral._big_eigh(A)
    w = torch.randn(150, 150, device="cuda")

    def loss(L, V):
        return (L * torch.arange(150, device="cuda")).sum() + (V * V * w).sum()

    g_ours = torch.autograd.grad(loss(*eigh(A)), X)[0].double()
    g32 = torch.autograd.grad(loss(*torch.linalg.eigh(A)), X)[0].double()
    g64 = torch.autograd.grad(loss(*torch.linalg.eigh(A.double())), X)[0]
    # Within twice torch's own float32 error (eigenvector gradients scale with 1/gap).
    assert (g_ours - g64).abs().max().item() <= 2 * (g32 - g64).abs().max().item() + 1e-5 * g64.abs().max().item()


# The large-matrix CUDA SVD (float32 past 168 columns: Gram matrix and its eigendecomposition in
# float64 by the large-matrix eigh kernels).


def svd_errs_cuda(A, U, S, V):
    """svd_errs on the GPU in float64."""
    A64, U64, S64, V64 = (t.double() for t in (A, U, S, V))
    norm = A64.flatten(-2).norm(dim=-1).clamp_min(1e-300)
    rec = (((U64 * S64.unsqueeze(-2)) @ V64.mT - A64).flatten(-2).norm(dim=-1) / norm).max().item()
    eye = lambda k: torch.eye(k, dtype=torch.float64, device=A.device)  # noqa: E731
    orth = max((U64.mT @ U64 - eye(U64.shape[-1])).abs().max().item(), (V64.mT @ V64 - eye(V64.shape[-1])).abs().max().item())
    sv = ((S64 - torch.linalg.svdvals(A64)).abs().amax(-1) / norm).max().item()
    return rec, orth, sv


@needs_cuda
@pytest.mark.parametrize("shape", [(1, 300, 300), (2, 500, 200), (1, 200, 700), (1, 1024, 1024)])
def test_big_svd_random(shape):
    A = torch.randn(shape, device="cuda")
    U, S, V = svd(A)
    k = min(shape[1:])
    assert U.shape == shape[:2] + (k,) and S.shape == (shape[0], k) and V.shape == (shape[0], shape[2], k)
    assert U.dtype == S.dtype == V.dtype == torch.float32
    assert max(svd_errs_cuda(A, U, S, V)) <= 1e-5
    assert bool((S[..., :-1] >= S[..., 1:]).all()), "descending"
    tall = U if shape[1] >= shape[2] else V  # the convention is on the taller side's left vectors
    at = tall.abs().argmax(dim=-2, keepdim=True)
    assert bool((torch.gather(tall, -2, at) > 0).all()), "largest entry of each vector positive"
    assert torch.equal(svdvals(A), S)


@needs_cuda
def test_big_svd_structured():
    """Rank 5 (the left vectors of the zero singular values completed to a basis), cond 1e6,
    the zero matrix, full_matrices, a non-contiguous input, bfloat16, and NaN (NaN outputs for
    that matrix only)."""
    m, n = 400, 250
    g = torch.randn(m, 5, dtype=torch.float64) @ torch.randn(5, n, dtype=torch.float64)
    q1, _ = torch.linalg.qr(torch.randn(m, n, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    cond = (q1 * torch.logspace(0, -6, n, dtype=torch.float64)) @ q2.mT
    for A in (g.float().cuda(), cond.float().cuda(), torch.zeros(m, n, device="cuda")):
        U, S, V = svd(A)
        assert max(svd_errs_cuda(A, U, S, V)) <= 1e-5
    A = torch.randn(m, n, device="cuda")
    U, S, V = svd(A, full_matrices=True)
    assert U.shape == (m, m) and max(svd_errs_cuda(A, U[:, :n], S, V)) <= 1e-5
    assert (U.double().mT @ U.double() - torch.eye(m, dtype=torch.float64, device="cuda")).abs().max().item() <= 1e-5
    wide = torch.zeros(m, 2 * n, device="cuda")
    wide[:, ::2] = A
    U2, S2, V2 = svd(wide[:, ::2])
    assert torch.equal(S2, S) and max(svd_errs_cuda(A, U2, S2, V2)) <= 1e-5
    Ub, Sb, Vb = svd(A.bfloat16())
    assert Sb.dtype == torch.bfloat16 and max(svd_errs_cuda(A.bfloat16().float(), Ub.float(), Sb.float(), Vb.float())) <= 1e-2
    B = torch.stack([A, A])
    B[1, 3, 7] = float("nan")
    Ub, Sb, Vb = svd(B)
    assert torch.isnan(Sb[1]).all() and torch.isnan(Ub[1]).all() and torch.isnan(Vb[1]).all()
    assert torch.equal(Sb[0], svd(A)[1])


@needs_cuda
def test_big_svd_gradients():
    X = torch.randn(200, 180, device="cuda", requires_grad=True)
    w = torch.randn(200, 180, device="cuda")

    def loss(U, S, V):
        return (S * torch.arange(180, device="cuda")).sum() + ((U @ V.mT) * w).sum()

    g_ours = torch.autograd.grad(loss(*svd(X)), X)[0].double()
    U32, S32, Vh32 = torch.linalg.svd(X, full_matrices=False)
    g32 = torch.autograd.grad(loss(U32, S32, Vh32.mT), X)[0].double()
    U64, S64, Vh64 = torch.linalg.svd(X.double(), full_matrices=False)
    g64 = torch.autograd.grad(loss(U64, S64, Vh64.mT), X)[0]
    assert (g_ours - g64).abs().max().item() <= 2 * (g32 - g64).abs().max().item() + 1e-5 * g64.abs().max().item()


@needs_cuda
def test_big_eigh_low_rank(monkeypatch):
    """A float32 matrix of rank 5: its T's hundreds of noise-level eigenvalues crowd closer than the
    kernels' cluster tolerance, in clusters too large for their Gram–Schmidt; the vectors of such
    clusters are made orthonormal by QR afterwards — no fallback to torch (no warning)."""
    import warnings

    import metalcore._backend as mb

    monkeypatch.setattr(mb, "_warned", set())
    n = 700
    rank5 = torch.cat([torch.randn(5, dtype=torch.float64) * 3, torch.zeros(n - 5, dtype=torch.float64)])
    A = sym((2,), n, torch.float64, "cpu", rank5).float().cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        L, V = eigh(A)
    assert max(big_errs_cuda(A, L, V)) <= 1e-5
    at = V.abs().argmax(dim=-2, keepdim=True)
    assert bool((torch.gather(V, -2, at) > 0).all())


@needs_cuda
def test_big_svd_past_kernel_limit_falls_back(monkeypatch):
    """Past the large-matrix kernels' size (they refuse with NotImplementedError, as beyond about
    8400 columns on an H200) svd takes the documented torch fallback, with its warning."""
    import metalcore._backend as mb

    def refuse(g, vectors):
        raise NotImplementedError("the large-matrix eigh takes up to 8448 rows on this device")

    monkeypatch.setattr(mspectral, "_eigh_f64_big", refuse)
    monkeypatch.setattr(mb, "_warned", set())
    A = torch.randn(300, 200, device="cuda")
    with pytest.warns(RuntimeWarning, match="falls back"):
        U, S, V = svd(A)
    # torch's own float32 result (its errors reach ~7e-5 here), with metalcore's conventions.
    Ut, St, Vht = torch.linalg.svd(A, full_matrices=False)
    assert max(svd_errs_cuda(A, U, S, V)) <= 2 * max(svd_errs_cuda(A, Ut, St, Vht.mT)) + 1e-6
