"""Spectral decompositions: symmetric eigendecomposition (``eigh``, ``eigvalsh``), SVD (``svd``,
``svdvals``), the pseudo-inverse (``pinv``) and a randomized truncated SVD (``svd_lowrank``).

Algorithms: Jacobi rotations, batched — on CUDA one launch for the whole batch: up to 32 rows and
columns (float64: 16) 8, 16 or 32 lanes per matrix, each holding a column (of A and of V) in
registers, the pairs of a round (lane c with lane c XOR r) rotated in parallel with the partner's
column arriving by shuffles; larger matrices one block per matrix, in shared memory, the n/2
disjoint pairs of a round-robin round rotated in parallel; on the CPU (float64 SVD) one matrix
per parallel task, cyclic order. SVD: one-sided (Hestenes) Jacobi on the columns — except float32
(and 16-bit) SVD on the CPU, which runs in float64 through the CPU's eigensolver (below) on AᵀA,
then normalizes the columns of A·V (σ_i their norms), first orthogonalizing by Gram–Schmidt those
with σ_i < 1e-3 σ₁ (above that, float64's V leaves them orthogonal to ~1e-10). eigh on CUDA
up to 32 rows (float64: 16): the register kernel runs the one-sided iteration on
``B = A + ‖A‖_F I`` (positive semidefinite, A's eigenvectors as its right singular vectors;
λ = ‖B v‖ − ‖A‖_F, absolute error a few ulps of ‖A‖_F). From there to 128 rows, no sweeps: one
block per matrix reduces A to tridiagonal form T by Householder reflectors in shared memory,
finds T's eigenvalues by bisection on Sturm counts (float32 multisection refined by two float64
Rayleigh-quotient steps; float64 bisection for eigenvalues within 10·eps₃₂‖T‖ of a neighbour and
for float64 input), T's eigenvectors by one twisted factorization each (float64), orthogonalized
within clusters (eigenvalues closer than 1e-3‖T‖), then applies the reflectors. A matrix where
that cannot give orthogonal vectors (eigenvalues equal to float64 precision inside one unreduced
block of T: exactly repeated eigenvalues of a float64 matrix) is flagged and redone by two-sided
Jacobi in the same call; ``max_sweeps`` applies only to that redo. Past 128 rows: two-sided Jacobi
(each rotation zeroes one off-diagonal pair exactly). Sweeps stop after a sweep that rotates no pair (off-diagonal below ``sqrt(n)·eps``
relative), or fail after ``max_sweeps`` (reported: ``LinAlgError`` naming the batch element).
Rotations are applied in Rutishauser's form, so the accumulated vectors stay orthogonal to a few
ulps. eigh on the CPU: Householder reduction to tridiagonal form, the reflectors' product formed
explicitly, then the implicit QL iteration with Wilkinson's shift (about 4n³ flops against
Jacobi's 20n³ or more), eight matrices' QL sweeps run side by side in vector lanes; it
fails (reported the same way) after ``max_sweeps·n`` QL iterations on a matrix (random matrices
take about 2n). For float32 output past 32 rows (eigh of float32 data, the float32 SVD's Gram
matrices) the eigenvectors come instead from float64 twisted vectors of the tridiagonal matrix
and the reflectors (about 1.2–1.5× faster), with a fallback per matrix to the QL's own vectors
where those cannot be vouched for (eigenvalues equal to float64 precision in one unreduced
block).

Every kernel first divides the matrix by the power of two nearest its largest entry (exact) and
multiplies the values back, so subnormal or huge entries keep full accuracy.

Conventions: singular values descending, eigenvalues ascending (as torch). Signs are fixed, so
results are deterministic: the entry of largest magnitude of each left singular vector (of the
taller side's left vectors for wide inputs; of the right one where σ = 0) and of each eigenvector
is positive. ``svd`` returns ``(U, S, V)`` with ``A = U diag(S) Vᵀ`` — ``V``, not ``Vᴴ`` (the
original metalcore API, like ``torch.svd``). Left singular vectors of zero singular values are
completed to an orthonormal basis (Householder QR of ``U``), as is ``U`` for ``full_matrices``.

Large CUDA float32 matrices (eigh past 128 rows, SVD past 168 columns; ``BIG_EIGH_MIN_N``,
``BIG_SVD_MIN_N``): eigh by the large-matrix path — blocked Householder reduction to tridiagonal T
(panels of 32 columns, each one cooperative launch; trailing updates by cuBLAS GEMM), T's
eigenvalues by float32-then-float64 bisection, each eigenvector of T by one float64 twisted
factorization (Gram–Schmidt inside clusters closer than 1e-10·‖T‖), back-transformation by block
reflectors through cuBLAS — one matrix after another. Clusters too large for the kernels'
Gram–Schmidt (float32 matrices of low rank) are made orthonormal afterwards by QR; a matrix they
flag (eigenvalues equal to float64 precision inside one block of T) is computed by
``torch.linalg.eigh`` in float64, warned. SVD: the
Gram matrix ``AᵀA`` in float64 (torch's GEMM), its eigendecomposition by those kernels in float64,
``σ = √λ``, ``U = A V / σ`` in float64, the left vectors of ``σ < 1e-3 σ₁`` orthogonalized
against the others and among themselves (QR) — see `_svd_gram`.

Backends and limits: float32/float64 (16-bit inputs computed in float32). A CUDA matrix whose
Jacobi state does not fit one block's shared memory (square matrices up to about 168 in float32,
118 in float64 fit; eigh needs the Jacobi kernel for its redo, so float64 eigh past 118 too) and
that the large-matrix paths do not take (float64; more than about 8400 rows) — and every call on
a device with no backend — goes to
``torch.linalg.svd``/``eigh`` with a one-time warning, with metalcore's conventions applied to the
result. Gradients use torch's formulas (so they are equally undefined at repeated values).
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import _native
from ._backend import batch_desc, blas_handle, desc, empty, fast_apply, has_backend, stream_of, warn_fallback
from .linalg import _acc, _any_set, _check_matrix, _first_nonzero, _host_info, _on_backend, cholesky, qr

__all__ = ["eigh", "eigvalsh", "EighResult", "svd", "svdvals", "SVDResult", "pinv", "svd_lowrank", "DEFAULT_MAX_SWEEPS"]

#: Sweeps before a matrix counts as not converged (float32 converges in about 6-10).
DEFAULT_MAX_SWEEPS = 60

#: CUDA float32 SVDs of tall matrices with this many columns or more (up to 128, the eigh
#: kernel's limit) run the one-sided Jacobi on ``A V0`` instead of ``A``, ``V0`` the eigenvectors
#: of ``AᵀA`` (metalcore's eigh): its columns are then nearly orthogonal and the Jacobi converges in
#: a few sweeps, with Jacobi's accuracy either way; ``V = V0 Vw``. ``None`` turns it off. H200,
#: against the plain Jacobi: 100×64² 0.65 ms against 0.73, 100×80² 0.86 against 1.17, 64×128² 1.66
#: against 3.35 (`scripts/time_svd_preconditioned.py`).
PRECONDITION_MIN_N: Optional[int] = 64

#: CUDA float32 (and 16-bit) eigh of matrices with at least this many rows takes the large-matrix
#: path (blocked tridiagonal reduction, bisection and twisted factorizations in float64, cuBLAS
#: back-transformation; one matrix after another) — for batches of at most
#: ``BIG_EIGH_SMALL_BATCH`` matrices up to ``BIG_EIGH_JACOBI_MAX_N`` rows, and for any batch past
#: that (where the one-block Jacobi kernel no longer fits). ``None`` turns it off (such matrices
#: then go to torch.linalg, warned).
BIG_EIGH_MIN_N: Optional[int] = 129
BIG_EIGH_JACOBI_MAX_N = 168
BIG_EIGH_SMALL_BATCH = 4


#: CUDA float32 (and 16-bit) SVDs whose smaller side has at least this many columns (past what
#: the one-block Jacobi kernel holds) take the Gram path (`_svd_gram`); ``None`` turns it off
#: (such matrices then go to torch.linalg, warned).
BIG_SVD_MIN_N: Optional[int] = 169

#: Singular values below this fraction of the largest get their left vectors from Gram–Schmidt
#: and QR of ``A v`` rather than from ``A v / σ`` alone (see `_svd_gram`).
GRAM_SVD_RTOL = 1e-3


def _big_eigh(a: Tensor) -> bool:
    """Whether the eigh of the square batch `a` takes the large-matrix CUDA path."""
    n = a.shape[-1]
    if BIG_EIGH_MIN_N is None or not a.is_cuda or n < BIG_EIGH_MIN_N or _acc(a.dtype) != torch.float32:
        return False
    count = a.numel() // (n * n) if n else 0
    return count > 0 and (n > BIG_EIGH_JACOBI_MAX_N or count <= BIG_EIGH_SMALL_BATCH)


class SVDResult(NamedTuple):
    """``(U, S, V)`` with ``A = U diag(S) Vᵀ``."""

    U: Tensor
    S: Tensor
    V: Tensor


class EighResult(NamedTuple):
    """``(eigenvalues, eigenvectors)`` as ``torch.linalg.eigh`` returns them."""

    eigenvalues: Tensor
    eigenvectors: Tensor


def _signs(x: Tensor) -> Tensor:
    """+1/-1 per column of `x` (``*, r, c``): the sign of the column's first entry of largest magnitude."""
    if x.shape[-2] == 0:
        return torch.ones(x.shape[:-2] + x.shape[-1:], dtype=x.dtype, device=x.device)
    at = x.abs().argmax(dim=-2, keepdim=True)
    s = torch.gather(x, -2, at).squeeze(-2)
    return torch.where(s < 0, -1.0, 1.0).to(x.dtype)


def _flagged(flat: Tensor) -> List[int]:
    """The indices of the nonzero entries of the flattened, nonnegative `flat` (an `info` on the
    host), in order."""
    return torch.nonzero(flat).flatten().tolist() if _any_set(flat) else []


def _check_info(info: Tensor, op: str, method: str = "Jacobi") -> bool:
    """Raises ``LinAlgError`` naming the first batch element that did not converge (flag 1 of the
    kernels' ``info``); returns whether some SVD has a zero singular value whose U column was left
    zero (flag 2). One copy of a small ``info`` to the host."""
    flat = _host_info(info)
    if not _any_set(flat):  # the common case: one reduction, no flag set
        return False
    bad = _first_nonzero(flat & 1, info.shape)
    if bad is not None:
        idx, _ = bad
        where = f" (batch element {idx})" if info.dim() else ""
        raise torch.linalg.LinAlgError(f"{op}: the {method} iteration did not converge{where}; the input may contain Inf")
    return bool((flat & 2).any())


def _jacobi(a: Tensor, eigh_: bool, vectors: bool, max_sweeps: int) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Tensor]:
    """(S, U, V, info) of the tall (m >= n) batch `a` in the compute dtype; U is None for eigh or
    without vectors, V None without vectors (SVD only)."""
    m, n = a.shape[-2], a.shape[-1]
    batch = a.shape[:-2]
    acc = _acc(a.dtype)

    big = eigh_ and _big_eigh(a)

    def run():
        x = a if a.dtype == acc and a.is_contiguous() else a.to(acc).contiguous()
        s = empty(batch + (n,), acc, a.device)
        u = empty(batch + (m, n), acc, a.device) if vectors and not eigh_ else None
        # eigh without vectors: the CUDA one-block kernels still need V (their working set); the CPU
        # and the large-matrix path skip them.
        v = empty(batch + (n, n), acc, a.device) if vectors or (eigh_ and a.device.type != "cpu" and not big) else None
        info = empty(batch, torch.int32, a.device)
        if info.numel():
            work = empty((_native.eigh_work_len(n, acc == torch.float64),), acc, a.device) if big else None
            _native.jacobi_into(batch_desc(x, "A", m, n), batch_desc(s, "S", 1, n), None if u is None else batch_desc(u, "U", m, n),
                                None if v is None else batch_desc(v, "V", n, n), desc(info, "info"), eigh_, max_sweeps,
                                stream_of(a), blas_handle(a) if big else 0, None if work is None else desc(work, "work"))
            if big:
                if v is not None:
                    v = v * _signs(v).unsqueeze(-2)
                _redo_flagged(x, s, v, info)
        return s, u, v, info

    done = _on_backend("eigh" if eigh_ else "svd", a, run)
    if done is not None:
        return done
    x = a.to(acc)
    info = torch.zeros(batch, dtype=torch.int32, device=a.device)
    # Same semantics as the kernels: a matrix with a NaN or Inf (in the triangle read) gives NaN
    # outputs, not an error.
    bad = ~torch.isfinite(x.tril() if eigh_ else x).flatten(-2).all(-1)
    x = torch.where(bad[..., None, None], 0.0, x)
    nan = lambda t: torch.where(bad.view(bad.shape + (1,) * (t.dim() - bad.dim())), float("nan"), t)  # noqa: E731
    if eigh_:
        L, V = torch.linalg.eigh(x)
        return nan(L), None, nan(V * _signs(V).unsqueeze(-2)), info
    if not vectors:
        return nan(torch.linalg.svdvals(x)), None, None, info
    U, S, Vh = torch.linalg.svd(x, full_matrices=False)
    sg = torch.where(S > 0, _signs(U), _signs(Vh.mT)).unsqueeze(-2)
    return nan(S), nan(U * sg), nan(Vh.mT * sg), info


def _redo_flagged(x: Tensor, s: Tensor, v: Optional[Tensor], info: Tensor) -> None:
    """Finishes the large-matrix eigh's matrices flagged in `info`, and clears their flags. Flag 4
    (a cluster of close eigenvalues too large for the kernels' Gram–Schmidt, as float32 matrices
    of low rank give): the clusters of the final vectors are made orthonormal by metalcore's QR
    (`_orthonormalize_clusters`). Flag 2 (eigenvalues equal to float64 precision inside one
    unreduced block of T, where the vectors cannot be made orthogonal), or a cluster whose QR finds
    two vectors nearly parallel: the matrix is recomputed by torch.linalg.eigh in float64, with a
    one-time warning."""
    flat = _host_info(info)
    flagged = _flagged(flat)
    if not flagged:
        return
    n = x.shape[-1]
    xs, ss, fs = x.reshape(-1, n, n), s.view(-1, n), info.view(-1)
    vs = None if v is None else v.view(-1, n, n)
    for i in flagged:
        flag = int(flat[i])
        fs[i] = 0
        if not flag & 2 and (vs is None or _orthonormalize_clusters(vs[i], ss[i])):
            continue
        warn_fallback("eigh", x.device, "eigh: a matrix with eigenvalues equal to float64 precision (large-matrix path)")
        # In float64: torch's float32 eigh of such sizes errs up to ~1e-4 (H200, torch 2.11).
        L, V = torch.linalg.eigh(xs[i].double())
        ss[i] = L
        if vs is not None:
            vs[i] = V * _signs(V).unsqueeze(-2)


def _orthonormalize_clusters(V: Tensor, L: Tensor) -> bool:
    """V's columns (eigenvectors of the ascending eigenvalues L) made orthonormal inside each run
    of eigenvalues closer than the kernels' cluster tolerance (taken at its bound:
    c·√n·max|λ| ≥ c·‖T‖, c = ``_native.eigh_cluster_tol()``, the kernels' own value) by
    Householder QR, which keeps the span; signs by the module's convention. False (V partly
    changed) where a run's vectors are nearly dependent (|R_ii| < 1e-3: eigenvalues equal to
    float64 precision)."""
    n = L.numel()
    if n < 2:
        return True
    lam = L.double().cpu()
    tol = _native.eigh_cluster_tol() * math.sqrt(n) * float(lam.abs().max())
    close = (lam[1:] - lam[:-1] <= tol).tolist()
    a = 0
    while a < n - 1:
        if not close[a]:
            a += 1
            continue
        b = a
        while b < n - 1 and close[b]:
            b += 1
        Q, R = qr(V[:, a:b + 1])
        d = R.diagonal()
        if bool((d.abs() < 1e-3).any()):
            return False
        V[:, a:b + 1] = Q * _signs(Q).unsqueeze(-2)
        a = b + 1
    return True


def _eigh_f64_big(g: Tensor, vectors: bool) -> Tuple[Tensor, Optional[Tensor], Tensor]:
    """(eigenvalues ascending, eigenvectors or None, info) of the contiguous float64 symmetric CUDA
    batch `g` by the large-matrix kernels, whose cluster tolerance suits float32 results (vectors
    orthogonal to about 1e-10, not to float64 precision: `_svd_gram` only)."""
    n, batch = g.shape[-1], g.shape[:-2]
    s = empty(batch + (n,), torch.float64, g.device)
    v = empty(batch + (n, n), torch.float64, g.device) if vectors else None
    info = empty(batch, torch.int32, g.device)
    work = empty((_native.eigh_work_len(n, True),), torch.float64, g.device)
    _native.jacobi_into(batch_desc(g, "A", n, n), batch_desc(s, "S", 1, n), None,
                        None if v is None else batch_desc(v, "V", n, n), desc(info, "info"), True, DEFAULT_MAX_SWEEPS,
                        stream_of(g), blas_handle(g), desc(work, "work"))
    return s, v, info


def _svd_gram(x: Tensor, vectors: bool) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(S, U, V) in float32 of the tall (m >= n) CUDA batch `x` (float32 values) through its Gram
    matrix in float64: G = xᵀx (cuBLAS through torch), G = V Λ Vᵀ by the large-matrix eigh kernels
    in float64, σ = √λ (descending), U = x V / σ in float64. Float64 keeps what the Gram matrix
    squares: σ_i to about eps₆₄·σ₁²/σ_i, so to 1e-5 of ‖x‖ for every σ, and the columns of
    ``x V / σ`` orthogonal to about 1e-10 for σ_i ≥ GRAM_SVD_RTOL·σ₁. The columns below that are
    orthogonalized against those twice (classical Gram–Schmidt), then among themselves by
    metalcore's QR (keeping their directions' signs); for σ = 0 this completes the basis. A
    matrix whose Gram eigenvalues the kernels flag (a cluster they cannot orthogonalize) is
    computed by torch.linalg.svd in float64, warned."""
    m, n = x.shape[-2], x.shape[-1]
    x64 = x.double()
    bad = ~torch.isfinite(x64).flatten(-2).all(-1)
    anybad = bool(bad.any())
    if anybad:
        x64 = torch.where(bad[..., None, None], 0.0, x64)
    lam, V, info = _eigh_f64_big((x64.mT @ x64).contiguous(), vectors)
    flagged = _flagged(_host_info(info))
    lam = lam.flip(-1)
    V = None if V is None else V.flip(-1)
    S = lam.clamp_min(0).sqrt()
    U = None
    if vectors:
        AV = x64 @ V
        good = S > GRAM_SVD_RTOL * S[..., :1]
        U = AV / torch.where(good, S, 1.0).unsqueeze(-2)
        Uf, AVf, goodf = U.view(-1, m, n), AV.view(-1, m, n), good.view(-1, n)
        for b in torch.nonzero(~goodf.all(-1)).flatten().tolist():
            keep = goodf[b]
            G, B = Uf[b][:, keep], AVf[b][:, ~keep]
            B = B / B.norm(dim=0).clamp_min(1e-300)
            for _ in range(2):
                B = B - G @ (G.mT @ B)
            Q, R = qr(B.float())
            d = R.diagonal()
            Uf[b][:, ~keep] = (Q * torch.where(d < 0, -1.0, 1.0)).double()
        sg = _signs(U).unsqueeze(-2)
        U, V = U * sg, V * sg
    if flagged:
        warn_fallback("svd", x.device, "svd: Gram eigenvalues the large-matrix kernels could not separate")
        xs, Ss = x64.reshape(-1, m, n), S.view(-1, n)
        for b in flagged:
            Ut, St, Vht = torch.linalg.svd(xs[b], full_matrices=False)
            Ss[b] = St
            if vectors:
                sg = _signs(Ut)
                U.view(-1, m, n)[b] = Ut * sg
                V.view(-1, n, n)[b] = Vht.mT * sg
    if anybad:
        nan = lambda t: torch.where(bad.view(bad.shape + (1,) * (t.dim() - bad.dim())), float("nan"), t)  # noqa: E731
        S = nan(S)
        U, V = (None, None) if not vectors else (nan(U), nan(V))
    return S.float(), (None if U is None else U.float()), (None if V is None else V.float())


def _jacobi_preconditioned(x: Tensor, max_sweeps: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """`_jacobi(x, False, True, max_sweeps)` for a tall CUDA batch, by the Jacobi on ``W = x V0``
    (see `PRECONDITION_MIN_N`). The Gram matrix is formed by torch's batched GEMM in float32; the
    result's accuracy does not rest on it (the Jacobi on W is exact to rounding whatever V0 is)."""
    # Each matrix scaled by a power of two (exact) to entries below 1 in magnitude, so that its
    # Gram matrix neither overflows (entries near 1e35) nor underflows (subnormals); S scaled back.
    xf = x.float()
    e = torch.frexp(xf.abs().amax(dim=(-2, -1), keepdim=True)).exponent
    xf = torch.ldexp(xf, -e)
    _, _, V0, info0 = _jacobi(xf.mT @ xf, True, True, max_sweeps)
    S, U, Vw, info = _jacobi(xf @ V0, False, True, max_sweeps)
    S = torch.ldexp(S, e.squeeze(-1))
    V = V0 @ Vw
    # A zero singular value's pair takes its sign from V's column (the module's convention),
    # which the product V0 Vw need not keep.
    flip = torch.where(S > 0, torch.ones_like(S), _signs(V)).unsqueeze(-2)
    return S, U * flip, V * flip, info | (info0 & 1)


def _complete(U: Tensor, S: Tensor, cols: int) -> Tensor:
    """U (``*, m, k``, orthonormal columns except zero columns where S == 0) completed to
    orthonormal ``cols`` columns: Householder QR keeps a zero column's reflector the identity, so
    Q's column there continues the basis; the others keep U's columns (R's diagonal is ±1 there)."""
    m, k = U.shape[-2], U.shape[-1]
    pad = torch.cat([U, U.new_zeros(U.shape[:-1] + (cols - k,))], dim=-1) if cols > k else U
    Q, R = qr(pad)
    d = R.diagonal(dim1=-2, dim2=-1)
    keep = torch.cat([S > 0, S.new_zeros(S.shape[:-1] + (cols - k,), dtype=torch.bool)], dim=-1) if cols > k else S > 0
    sign = torch.where(keep, torch.where(d < 0, -1.0, 1.0).to(Q.dtype), _signs(Q))
    return Q * sign.unsqueeze(-2)


def _svd(a: Tensor, full: bool, vectors: bool, max_sweeps: int):
    m, n = a.shape[-2], a.shape[-1]
    wide = m < n
    x = a.mT if wide else a
    k = x.shape[-1]
    big = (x.is_cuda and BIG_SVD_MIN_N is not None and k >= BIG_SVD_MIN_N and _acc(a.dtype) == torch.float32
           and x.numel() and has_backend(x.device))
    if big:
        try:
            S, U, V = _svd_gram(x, vectors)
            zero = False
        except NotImplementedError:  # past the kernels' size (about 8400 columns): the paths below
            big = False
    if not big:
        if (vectors and x.is_cuda and PRECONDITION_MIN_N is not None and PRECONDITION_MIN_N <= k <= 128
                and _acc(a.dtype) == torch.float32 and x.numel() and has_backend(x.device)):
            S, U, V, info = _jacobi_preconditioned(x, max_sweeps)
        else:
            S, U, V, info = _jacobi(x, False, vectors, max_sweeps)
        zero = _check_info(info, "svd", "QL" if a.device.type == "cpu" and S.dtype != torch.float64 else "Jacobi")
    if S.dtype != a.dtype:
        S = S.to(a.dtype)
    if not vectors:
        return S, None, None
    big = max(m, n)
    if full and big > min(m, n):
        U = _complete(U, S, big)
    elif x.shape[-1] and zero:
        U = _complete(U, S, x.shape[-1])
    if wide:
        U, V = V, U
    if U.dtype != a.dtype:
        U, V = U.to(a.dtype), V.to(a.dtype)
    return S, U, V


def _skew(x: Tensor) -> Tensor:
    return x - x.mT


class SVDFunction(torch.autograd.Function):
    """``SVDFunction.apply(A, max_sweeps)`` → ``(U, S, V)`` (reduced), with torch's SVD backward:
    ``gA = U [skew(UᵀgU)/E S + S skew(VᵀgV)/E + diag(gS)] Vᵀ + (I − UUᵀ) gU S⁻¹ Vᵀ + U S⁻¹ gVᵀ (I − VVᵀ)``,
    ``E_jk = S_k² − S_j²`` (1 on the diagonal)."""

    @staticmethod
    def forward(ctx, a: Tensor, max_sweeps: int):  # type: ignore[override]
        S, U, V = _svd(a, False, True, max_sweeps)
        ctx.save_for_backward(U, S, V)
        return U, S, V

    @staticmethod
    def backward(ctx, gU: Optional[Tensor], gS: Optional[Tensor], gV: Optional[Tensor]):  # type: ignore[override]
        U, S, V = ctx.saved_tensors
        m, n = U.shape[-2], V.shape[-2]
        Sd = S.unsqueeze(-2)  # broadcast along rows: X * Sd scales columns
        if gU is None and gV is None:
            gA = (U * (gS if gS is not None else torch.zeros_like(S)).unsqueeze(-2)) @ V.mT
            return gA, None
        S2 = S * S
        E = S2.unsqueeze(-2) - S2.unsqueeze(-1)
        E.diagonal(dim1=-2, dim2=-1).fill_(1)
        inner = torch.zeros_like(E)
        if gU is not None:
            inner = inner + (_skew(U.mT @ gU) / E) * Sd
        if gV is not None:
            inner = inner + S.unsqueeze(-1) * (_skew(V.mT @ gV) / E)
        if gS is not None:
            inner = inner + torch.diag_embed(gS)
        gA = U @ inner @ V.mT
        k = S.shape[-1]
        if gU is not None and m > k:
            gA = gA + ((gU - U @ (U.mT @ gU)) / Sd) @ V.mT
        if gV is not None and n > k:
            gA = gA + U @ ((gV - V @ (V.mT @ gV)) / Sd).mT
        return gA, None


_svd_apply = fast_apply(SVDFunction)


def svd(A: Tensor, full_matrices: bool = False, compute_uv: bool = True, strategy: str = "auto",
        max_sweeps: int = DEFAULT_MAX_SWEEPS) -> SVDResult:
    """Singular value decomposition of each matrix of ``A`` (``*, m, n``): ``(U, S, V)`` with
    ``A = U diag(S) Vᵀ``, ``S`` descending (``*, k``, ``k = min(m, n)``), ``U`` (``*, m, k``, or
    ``*, m, m`` with ``full_matrices``), ``V`` (``*, n, k``, or ``*, n, n``). Signs: see the module
    docstring. ``compute_uv=False`` returns empty ``U`` and ``V``. ``strategy`` is accepted for the
    original API (``'auto'``/``'jacobi'``: one-sided Jacobi is the only algorithm here).
    Differentiable (reduced form, with vectors). Raises ``LinAlgError`` if a matrix does not
    converge within ``max_sweeps`` sweeps."""
    _check_matrix(A)
    if strategy not in ("auto", "jacobi"):
        raise ValueError(f"strategy: expected 'auto' or 'jacobi', got {strategy!r}")
    if compute_uv and torch.is_grad_enabled() and A.requires_grad:
        if full_matrices and A.shape[-1] != A.shape[-2]:
            raise RuntimeError("svd: full_matrices=True is not differentiable for non-square input; use full_matrices=False")
        return SVDResult(*_svd_apply(A, max_sweeps))
    if not compute_uv:
        if torch.is_grad_enabled() and A.requires_grad:
            return SVDResult(A.new_empty(0), svdvals(A, max_sweeps), A.new_empty(0))
        S, _, _ = _svd(A, False, False, max_sweeps)
        return SVDResult(A.new_empty(0), S, A.new_empty(0))
    S, U, V = _svd(A, full_matrices, True, max_sweeps)
    return SVDResult(U, S, V)


def svdvals(A: Tensor, max_sweeps: int = DEFAULT_MAX_SWEEPS) -> Tensor:
    """Singular values of each matrix of ``A`` (``*, m, n``), descending. Differentiable (the
    backward needs the vectors: with gradients enabled they are computed too)."""
    _check_matrix(A)
    if torch.is_grad_enabled() and A.requires_grad:
        return _svd_apply(A, max_sweeps)[1]
    return _svd(A, False, False, max_sweeps)[0]


class EighFunction(torch.autograd.Function):
    """``EighFunction.apply(A, max_sweeps)`` → ``(L, V)`` with torch's backward:
    ``gA = V (diag(gL) + ½ skew(VᵀgV) / E) Vᵀ``, ``E_ij = L_j − L_i`` (1 on the diagonal)."""

    @staticmethod
    def forward(ctx, a: Tensor, max_sweeps: int):  # type: ignore[override]
        L, V = _eigh(a, max_sweeps)
        ctx.save_for_backward(L, V)
        return L, V

    @staticmethod
    def backward(ctx, gL: Optional[Tensor], gV: Optional[Tensor]):  # type: ignore[override]
        L, V = ctx.saved_tensors
        if gV is not None:
            E = L.unsqueeze(-2) - L.unsqueeze(-1)
            E.diagonal(dim1=-2, dim2=-1).fill_(1)
            inner = 0.5 * _skew(V.mT @ gV) / E
            inner.diagonal(dim1=-2, dim2=-1).copy_(gL if gL is not None else torch.zeros_like(L))
        else:
            inner = torch.diag_embed(gL)
        return V @ inner @ V.mT, None


_eigh_apply = fast_apply(EighFunction)


def _eigh(a: Tensor, max_sweeps: int, vectors: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
    """(L, V) in a's dtype; V None without ``vectors`` (eigvalsh)."""
    L, _, V, info = _jacobi(a, True, vectors, max_sweeps)
    _check_info(info, "eigh" if vectors else "eigvalsh", "QL" if a.device.type == "cpu" else "Jacobi")
    V = V if vectors else None
    if L.dtype == a.dtype:
        return L, V
    return L.to(a.dtype), (None if V is None else V.to(a.dtype))


def _lower_triangle_input(A: Tensor, UPLO: str) -> Tensor:
    """The square batch ``A`` as read by eigh/eigvalsh: itself, or its transpose for ``UPLO='U'``."""
    _check_matrix(A, square=True)
    if UPLO not in ("L", "U"):
        raise ValueError(f"UPLO: expected 'L' or 'U', got {UPLO!r}")
    return A.mT if UPLO == "U" else A


def eigh(A: Tensor, UPLO: str = "L", max_sweeps: int = DEFAULT_MAX_SWEEPS) -> EighResult:
    """Eigenvalues (ascending) and eigenvectors of each symmetric matrix of ``A`` (``*, n, n``),
    like ``torch.linalg.eigh``: only the lower triangle is read (``UPLO='U'``: the upper one).
    Eigenvector signs: see the module docstring. Differentiable (torch's formula). ``max_sweeps``
    bounds the iterative methods (Jacobi sweeps; on the CPU, ``max_sweeps·n`` QL iterations); the
    CUDA tridiagonal kernel (33 to 128 rows) has no iteration to bound."""
    a = _lower_triangle_input(A, UPLO)
    if torch.is_grad_enabled() and A.requires_grad:
        return EighResult(*_eigh_apply(a, max_sweeps))
    return EighResult(*_eigh(a, max_sweeps))


def eigvalsh(A: Tensor, UPLO: str = "L", max_sweeps: int = DEFAULT_MAX_SWEEPS) -> Tensor:
    """Eigenvalues (ascending) of each symmetric matrix of ``A``, like ``torch.linalg.eigvalsh``;
    the same values as :func:`eigh`'s, bit for bit (except for a matrix the large-matrix CUDA path
    flags, whose eigh torch recomputes: the flag comes from its eigenvectors). On the CPU and on the
    large-matrix CUDA path the eigenvectors are not formed, except with gradients enabled (the
    backward needs them)."""
    a = _lower_triangle_input(A, UPLO)
    if torch.is_grad_enabled() and A.requires_grad:
        return _eigh_apply(a, max_sweeps)[0]
    return _eigh(a, max_sweeps, vectors=False)[0]


def pinv(A: Tensor, rcond: Optional[float] = None, hermitian: bool = False, *, atol: Optional[float] = None,
         rtol: Optional[float] = None) -> Tensor:
    """Moore–Penrose pseudo-inverse of each matrix of ``A`` (``*, m, n`` → ``*, n, m``), like
    ``torch.linalg.pinv``: singular values (``hermitian``: |eigenvalues|) at or below
    ``max(atol, rtol·σ_max)`` are treated as zero; ``rcond`` is the older name of ``rtol``; with
    neither tolerance given ``rtol = eps·max(m, n)``. Through :func:`svd` (or :func:`eigh`).
    Differentiable."""
    _check_matrix(A, square=hermitian)
    if rcond is not None:
        if rtol is not None:
            raise ValueError("rcond: give rcond or rtol, not both")
        rtol = rcond
    m, n = A.shape[-2], A.shape[-1]
    if rtol is None:
        rtol = torch.finfo(_acc(A.dtype)).eps * max(m, n) if atol is None else 0.0
    atol_ = 0.0 if atol is None else atol

    def inverted(vals: Tensor) -> Tensor:
        """1/v where |v| > max(atol, rtol·max|v|), else 0."""
        mag = vals.abs()
        cut = torch.clamp(rtol * mag.amax(-1, keepdim=True), min=atol_) if vals.shape[-1] else mag
        keep = mag > cut
        return torch.where(keep, 1.0 / torch.where(keep, vals, torch.ones_like(vals)), torch.zeros_like(vals))

    if hermitian:
        L, V = eigh(A)
        return (V * inverted(L).unsqueeze(-2)) @ V.mT
    U, S, V = svd(A)
    return (V * inverted(S).unsqueeze(-2)) @ U.mT


def _orth(Y: Tensor) -> Tensor:
    """Orthonormal basis of the columns of the tall ``Y`` (``*, m, q``): Cholesky QR twice, the
    q×q Gram matrix in float64 with a tiny shift (robust to a rank-deficient ``Y``)."""
    for _ in range(2):
        G = Y.mT.double() @ Y.double()
        G = G + torch.diag_embed(G.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True).expand(G.shape[:-1]) * 1e-14 + 1e-300)
        R = cholesky(G, upper=True).to(Y.dtype)
        Y = torch.linalg.solve_triangular(R, Y, upper=True, left=False)
    return Y


def svd_lowrank(A: Tensor, q: int = 6, niter: int = 2, M: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None) -> SVDResult:
    """Randomized truncated SVD of ``A`` (``*, m, n``; e.g. an LLM weight matrix), like
    ``torch.svd_lowrank``: ``(U, S, V)`` of rank ``q`` approximating ``A − M`` (Halko, Martinsson
    and Tropp, 2011: a Gaussian sketch, ``niter`` power iterations with re-orthonormalization).
    The GEMMs and the tall-skinny triangular solves are torch's; the small q×q Cholesky and SVD are
    metalcore's. Pass ``generator`` for a reproducible sketch. Differentiable through its parts."""
    _check_matrix(A)
    m, n = A.shape[-2], A.shape[-1]
    if not (isinstance(q, int) and 1 <= q <= min(m, n)):
        raise ValueError(f"q: expected an int in [1, min(m, n) = {min(m, n)}], got {q!r}")
    if niter < 0:
        raise ValueError(f"niter: expected >= 0, got {niter}")
    x = A if M is None else A - M
    dt = _acc(A.dtype)
    x = x.to(dt)
    omega = torch.randn(x.shape[:-2] + (n, q), dtype=dt, device=A.device, generator=generator)
    Q = _orth(x @ omega)
    for _ in range(niter):
        Q = _orth(x @ _orth(x.mT @ Q))
    B = Q.mT @ x  # (q, n)
    # B = Rᵀ Q2ᵀ with Bᵀ = Q2 R; the q×q core's SVD: Rᵀ = Ur S Vrᵀ.
    Q2 = _orth(B.mT)
    Rt = B @ Q2  # = Rᵀ (q×q)
    Ur, S, Vr = svd(Rt)
    return SVDResult((Q @ Ur).to(A.dtype), S.to(A.dtype), (Q2 @ Vr).to(A.dtype))
