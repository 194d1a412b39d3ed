"""Batched linear algebra: Cholesky, LU (partial pivoting) and Householder QR factorizations, the
solves built on them (``cholesky_solve``, ``solve``, ``trsm``, ``qr_solve``, ``lstsq``).

Semantics of ``torch.linalg.cholesky`` / ``cholesky_ex`` and ``torch.cholesky_solve``: any batch
shape ``(*, n, n)``; only the lower triangle of ``A`` is read; float32 and float64 (float16 and
bfloat16 inputs are computed in float32 and returned in their dtype). A matrix that is not
positive definite (NaN included) is reported per batch element: ``cholesky_ex`` returns its
``info`` (0, or the order of the first leading minor that is not positive definite) and
``cholesky`` raises ``torch.linalg.LinAlgError`` naming the first failing batch index.

Backends: CPU (parallel over the batch, one cache-resident kernel per matrix) and CUDA (one launch
for the whole batch, each matrix factored by one warp or one block in shared memory). A CUDA
matrix too large for one block's shared memory (float32: n above about 230 for Cholesky/LU, QR
from about 160×160) is handed to torch.linalg's own kernel (``cholesky_ex``, ``solve_ex``, ``qr``),
with a one-time ``RuntimeWarning`` saying so; so is every call on a device with no metalcore
backend. Exceptions: the triangular solves (``trsm``, ``cholesky_solve``) of such matrices run on
cuBLAS TRSM through torch's own handle; LU (``solve``, ``solve_ex``, ``lu_batched``) has a blocked
path — metalcore's kernels for the panels, cuBLAS TRSM and GEMM for the trailing matrix — up to
``BLOCKED_LU_MAX_N`` (float32 4096, float64 2048; torch.linalg past that); so has QR (``qr``, and
``qr_solve``/``lstsq`` through it) — metalcore's kernels for the panels, cuBLAS GEMM and TRSM to
apply them — for matrices of up to ``BLOCKED_QR_MAX_M`` rows (float32 4096, float64 2048; not
for batches of more than ``BLOCKED_QR_BATCH`` matrices up to 256×256, which torch batches); and
Cholesky has a blocked path, off by default (``BLOCKED_CHOLESKY``). Everything around the factorization is metalcore's and the same
on every path: 16-bit inputs computed in float32, ``info`` (a NaN pivot counts as a failure, as
LAPACK reports it), the error messages, and the gradients.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Tuple, TypeVar

import torch
from torch import Tensor

from . import _native
from ._backend import Desc, batch_desc, blas_handle, check_float, desc, empty, fast_apply, has_backend, stream_of, warn_fallback

__all__ = [
    "cholesky", "cholesky_ex", "cholesky_solve", "CholeskyEx", "solve", "solve_ex", "SolveEx", "trsm", "trsm_batched",
    "lu_batched", "LUResult", "qr", "QRResult", "qr_solve", "lstsq", "LstsqResult", "householder_vector",
    "apply_householder", "syrk_batched", "frobenius_norm_batched", "trace_batched",
]

R_ = TypeVar("R_")


class CholeskyEx(NamedTuple):
    """``(L, info)`` as ``torch.linalg.cholesky_ex`` returns them."""

    L: Tensor
    info: Tensor


def _on_backend(op: str, t: Tensor, run: Callable[[], R_]) -> Optional[R_]:
    """`run()` on metalcore's backend for `t`'s device, or None — after a one-time warning — when
    there is none or it refuses the size (a CUDA matrix that does not fit one block's shared
    memory, for the ops with no blocked path yet): the caller then computes with torch.linalg."""
    if not has_backend(t.device):
        warn_fallback(op, t.device)
        return None
    try:
        return run()
    except NotImplementedError as e:
        warn_fallback(op, t.device, str(e))
        return None


def _bcast(s1: torch.Size, s2: torch.Size) -> torch.Size:
    """torch.broadcast_shapes, without its cost (tens of microseconds) when the shapes are equal."""
    return s1 if s1 == s2 else torch.broadcast_shapes(s1, s2)


def _check_square(name: str, a: Tensor) -> int:
    _check_matrix(a, name, square=True)
    return a.shape[-1]


def _check_rhs(B: Tensor, a_name: str, A: Tensor) -> None:
    """B is a floating tensor of A's dtype on A's device (shapes are checked by each op)."""
    if not isinstance(B, Tensor):
        raise TypeError(f"B: expected a torch.Tensor, got {type(B).__name__}")
    check_float("B", B)
    if B.dtype != A.dtype:
        raise TypeError(f"B: expected dtype {A.dtype} (the dtype of {a_name}), got {B.dtype}")
    if B.device != A.device:
        raise ValueError(f"B: expected a tensor on {A.device} (the device of {a_name}), got one on {B.device}")


def _check_matrix_rhs(B: Tensor, a_name: str, A: Tensor, n: int) -> None:
    """B is (*, n, k), batch-broadcastable with the (*, n, n) A."""
    _check_rhs(B, a_name, A)
    if B.dim() < 2 or B.shape[-2] != n:
        raise ValueError(f"B: expected shape (*, {n}, k) to match {a_name} of shape {tuple(A.shape)}, got {tuple(B.shape)}")
    try:
        _bcast(B.shape[:-2], A.shape[:-2])
    except RuntimeError as e:
        raise ValueError(f"B: batch shape {tuple(B.shape[:-2])} does not broadcast with {a_name}'s {tuple(A.shape[:-2])}") from e


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _in_place(t: Tensor, batch: torch.Size, acc: torch.dtype) -> bool:
    """The core can read `t` where it is: the compute dtype, the whole batch, contiguous."""
    return t.dtype == acc and t.shape[:-2] == batch and t.is_contiguous()


#: CUDA Cholesky of matrices too large for one block's shared memory (float32 from n = 241,
#: float64 from 170): False (the default) hands them to torch.linalg (cuSOLVER), with the one-time
#: warning; True runs metalcore's blocked path (right-looking in 128-column steps: metalcore's
#: kernels factor the diagonal block and solve the rows below it, the trailing update is
#: metalcore's kernel in float32 — looking ahead on a side stream — and cuBLAS SYRK in float64,
#: through torch's cuBLAS handle). The blocked path is correct and graph-capturable but, measured
#: on an H200, 0.75-0.79× the speed of torch's in float32 and 0.49× in float64 — hence off by
#: default (README, "Large matrices").
BLOCKED_CHOLESKY = False


#: `first` of an `info` whose entries the host does not know yet (see `_first_failure`).
_UNKNOWN = -2


def _factor(a: Tensor, upper: bool) -> Tuple[Tensor, Tensor, int]:
    """(factor in a's dtype, int32 info, `first`: what the core could tell of info on the host,
    see `_first_failure`)."""
    n, batch = a.shape[-1], a.shape[:-2]

    def run() -> Tuple[Tensor, Tensor, int]:
        work = empty(a.shape, _acc(a.dtype), a.device)
        # A contiguous input of the compute dtype is read in place (no copy).
        src = batch_desc(a, "A", n, n) if _in_place(a, batch, work.dtype) else None
        if src is None and work.numel():
            work.copy_(a)
        info = empty(batch, torch.int32, a.device)
        # A CUDA matrix too large for one block takes the blocked path only when asked for.
        blas = blas_handle(a) if n > 128 and BLOCKED_CHOLESKY else 0
        first = _native.cholesky_inplace(batch_desc(work, "A", n, n), desc(info, "info"), upper, stream_of(a), src, blas)
        return (work if work.dtype == a.dtype else work.to(a.dtype)), info, first

    done = _on_backend("cholesky", a, run)
    if done is not None:
        return done
    f, info = torch.linalg.cholesky_ex(a.to(_acc(a.dtype)), upper=upper)
    # cuSOLVER lets a NaN pivot through (info 0); LAPACK, and metalcore, report it.
    if n:
        finite = torch.isfinite(f.diagonal(dim1=-2, dim2=-1))
        first_bad = torch.where(finite.all(-1), 0, (~finite).int().argmax(-1) + 1)
        info = torch.where(info == 0, first_bad, info)
    return f.to(a.dtype), info.to(torch.int32), _UNKNOWN


def _host_info(info: Tensor) -> Tensor:
    """`info` flattened; a small CUDA one copied to the host (one small copy, no reduction kernel:
    the check costs one sync either way)."""
    flat = info if info.dim() == 1 else info.reshape(-1)
    return flat.cpu() if flat.is_cuda and flat.numel() <= 16384 else flat


def _any_set(flat: Tensor) -> bool:
    """Whether the flattened, nonnegative `flat` (an `info`) has a nonzero entry: one reduction
    (max is cheaper than any)."""
    return bool(flat.numel()) and bool(int(flat.max()))


def _first_nonzero(flat: Tensor, shape: torch.Size):
    """(batch index in `shape` as a tuple, value) of the first nonzero entry of the flattened,
    nonnegative `flat`, or None."""
    if not _any_set(flat):
        return None
    i = int(torch.nonzero(flat)[0, 0])
    return _batch_index(i, shape), int(flat[i])


def _batch_index(i: int, shape: torch.Size) -> tuple:
    """The flattened index `i` as a batch index in `shape`, a tuple of ints."""
    return tuple(int(v) for v in torch.unravel_index(torch.tensor(i), shape))


def _first_failure(info: Tensor, first: int = _UNKNOWN):
    """(batch index as a tuple, info value) of the first nonzero entry of `info`, or None.
    `first`, as the core's ops return it: -1 when it found every entry 0, the flattened index of
    the first nonzero one, or `_UNKNOWN` (info still on a device: read back here)."""
    if first == -1:
        return None
    if first >= 0:
        return _batch_index(first, info.shape), int(info.reshape(-1)[first])
    return _first_nonzero(_host_info(info), info.shape)


def _raise_first(info: Tensor, op: str, first: int = _UNKNOWN) -> None:
    bad = _first_failure(info, first)
    if bad is not None:
        idx, order = bad
        where = f" of batch element {idx}" if info.dim() else ""
        raise torch.linalg.LinAlgError(
            f"{op}: the factorization could not be completed because the input is not positive-definite "
            f"(the leading minor of order {order}{where} is not positive-definite)."
        )


class CholeskyFunction(torch.autograd.Function):
    """``CholeskyFunction.apply(A, upper)``: the factor of ``A`` (raises on failure), with the
    standard backward ``gA = sym(L⁻ᴴ Φ(Lᴴ gL) L⁻¹)`` (Φ: lower triangle, halved diagonal) — the
    formula and symmetric convention torch uses."""

    @staticmethod
    def forward(ctx, a: Tensor, upper: bool = False) -> Tensor:  # type: ignore[override]
        out, info, first = _factor(a, upper)
        _raise_first(info, "cholesky", first)
        ctx.save_for_backward(out)
        ctx.upper = upper
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (f,) = ctx.saved_tensors
        L, gL = (f.mH, g.mH) if ctx.upper else (f, g)
        P = (L.mH @ gL).tril()
        P = P - 0.5 * torch.diag_embed(P.diagonal(dim1=-2, dim2=-1))
        X = torch.linalg.solve_triangular(L, P, upper=False, left=False)  # P L⁻¹
        gA = torch.linalg.solve_triangular(L.mH, X, upper=True)  # L⁻ᴴ P L⁻¹
        return 0.5 * (gA + gA.mH), None


_chol_apply = fast_apply(CholeskyFunction)


def cholesky_ex(A: Tensor, upper: bool = False, check_errors: bool = False) -> CholeskyEx:
    """Cholesky factors of a batch of symmetric positive-definite matrices, with per-matrix status.

    Returns ``(L, info)``: ``L`` lower (``A = L Lᵀ``) or, with ``upper``, upper (``A = Uᵀ U``);
    ``info[b]`` is 0, or the order of the first leading minor of matrix ``b`` that is not positive
    definite (``L[b]`` is then only partly computed). ``check_errors=True`` raises
    ``torch.linalg.LinAlgError`` instead. Not differentiable (use :func:`cholesky`).
    """
    _check_square("A", A)
    with torch.no_grad():
        out, info, first = _factor(A, upper)
    if check_errors:
        _raise_first(info, "cholesky_ex", first)
    return CholeskyEx(out, info)


def cholesky(A: Tensor, upper: bool = False) -> Tensor:
    """Cholesky factor of each matrix of ``A`` (``*, n, n``), like ``torch.linalg.cholesky``;
    differentiable. Raises ``torch.linalg.LinAlgError`` naming the first batch element that is not
    positive definite."""
    _check_square("A", A)
    if torch.is_grad_enabled() and A.requires_grad:
        return _chol_apply(A, upper)
    out, info, first = _factor(A, upper)
    _raise_first(info, "cholesky", first)
    return out


class CholeskySolveFunction(torch.autograd.Function):
    """``CholeskySolveFunction.apply(B, L, upper)`` = ``A⁻¹ B`` for ``A = L Lᵀ`` (or ``Uᵀ U``)."""

    @staticmethod
    def forward(ctx, b: Tensor, l: Tensor, upper: bool = False) -> Tensor:  # type: ignore[override]
        x = _solve(b, l, upper)
        ctx.save_for_backward(l, x)
        ctx.upper, ctx.b_shape = upper, b.shape
        return x

    @staticmethod
    def backward(ctx, gx: Tensor):  # type: ignore[override]
        l, x = ctx.saved_tensors
        gb = _solve(gx, l, ctx.upper) if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
        gl = None
        if ctx.needs_input_grad[1]:
            s = gb @ x.mH
            s = s + s.mH
            # Only the triangle that the solve reads gets a gradient.
            gl = -(l @ s).triu() if ctx.upper else -(s @ l).tril()
            gl = gl.sum_to_size(l.shape)
        if gb is not None:
            gb = gb.sum_to_size(ctx.b_shape) if ctx.needs_input_grad[0] else None
        return gb, gl, None


def _tri_operands(b: Tensor, t: Tensor) -> Tuple[Tensor, Tensor, bool, torch.Size]:
    """For the triangular solves: (copy of b broadcast to (nb, n, k) in the compute dtype — the
    kernel's in/out buffer —, t as row-major (nb, n, n), whether t is that matrix transposed, and
    the broadcast batch shape). Column-major t (as torch.linalg returns factors) is read in place
    through its transpose, which holds the other triangle in row-major order."""
    n, k = t.shape[-1], b.shape[-1]
    same = b.shape[:-2] == t.shape[:-2]
    batch = _bcast(b.shape[:-2], t.shape[:-2])
    nb = math.prod(batch)
    acc = _acc(b.dtype)
    xb = empty((nb, n, k), acc, b.device)
    if xb.numel():
        xb.copy_(b.reshape(nb, n, k) if same else b.expand(batch + (n, k)).reshape(nb, n, k))
    t = (t if same else t.expand(batch + (n, n))).reshape(nb, n, n).to(acc)
    flipped = not t.is_contiguous() and t.mT.is_contiguous()
    return xb, (t.mT if flipped else t.contiguous()), flipped, batch


def _tri_native(op: str, b: Tensor, t: Tensor, t_name: str, launch: Callable[[Desc, Desc, bool, int], None]) -> Optional[Tensor]:
    """A triangular solve against `t` (named `t_name`) on metalcore's backend (None: see `_on_backend`):
    `launch(B, T, flipped, blas)` runs the kernel in place on B, `flipped` when T is `t` transposed
    in memory (see `_tri_operands`); `blas` is torch's cuBLAS handle for CUDA matrices that may be
    too large for one block (0 otherwise)."""

    def run() -> Tensor:
        xb, tt, flipped, batch = _tri_operands(b, t)
        launch(desc(xb, "B"), desc(tt, t_name), flipped, blas_handle(b) if t.shape[-1] > 128 else 0)
        return xb.view(batch + xb.shape[1:]).to(b.dtype)

    return _on_backend(op, t, run)


def _solve(b: Tensor, l: Tensor, upper: bool) -> Tensor:
    done = _tri_native("cholesky_solve", b, l, "L",
                       lambda xb, t, flipped, blas: _native.cholesky_solve_inplace(xb, t, upper != flipped, stream_of(b), blas))
    if done is not None:
        return done
    acc = _acc(b.dtype)
    t = l.to(acc)
    return torch.cholesky_solve(b.to(acc), t.triu() if upper else t.tril(), upper=upper).to(b.dtype)


_solve_apply = fast_apply(CholeskySolveFunction)


def cholesky_solve(B: Tensor, L: Tensor, upper: bool = False) -> Tensor:
    """Solves ``A X = B`` given the Cholesky factor ``L`` of ``A`` (``torch.cholesky_solve``
    semantics: ``B`` is ``(*, n, k)``, ``L`` is ``(*, n, n)``, batch dimensions broadcast; only
    the lower — or with ``upper``, upper — triangle of ``L`` is read). Differentiable in both."""
    _check_matrix_rhs(B, "L", L, _check_square("L", L))
    if torch.is_grad_enabled() and (B.requires_grad or L.requires_grad):
        return _solve_apply(B, L, upper)
    return _solve(B, L, upper)


class SolveEx(NamedTuple):
    """``(result, info)`` as ``torch.linalg.solve_ex`` returns them."""

    result: Tensor
    info: Tensor


def _solve_shapes(A: Tensor, B: Tensor):
    """`_rhs_shapes` for a batch of square A."""
    _check_square("A", A)
    return _rhs_shapes(A, B)


def _rhs_shapes(A: Tensor, B: Tensor):
    """torch.linalg.solve's (and lstsq's) rules for B against A (``*, m, n``): B is a batch of
    vectors ``(*, m)`` when it is 1-D or has A's shape minus the last dimension, else of matrices
    ``(*, m, k)``; batch dimensions broadcast. Returns (vector_case, batch shape)."""
    _check_rhs(B, "A", A)
    n = A.shape[-2]
    vector = B.dim() == 1 or (B.dim() == A.dim() - 1 and B.shape == A.shape[:-1])
    rows = B.shape[-1] if vector else (B.shape[-2] if B.dim() >= 2 else -1)
    if rows != n:
        want = f"(*, {n})" if vector else f"(*, {n}, k)"
        raise ValueError(f"B: expected shape {want} to match A of shape {tuple(A.shape)}, got {tuple(B.shape)}")
    bb = B.shape[:-1] if vector else B.shape[:-2]
    try:
        batch = _bcast(A.shape[:-2], bb)
    except RuntimeError as e:
        raise ValueError(f"B: batch shape {tuple(bb)} does not broadcast with A's {tuple(A.shape[:-2])}") from e
    return vector, batch


def _lu_solve(A: Tensor, B: Tensor, shapes=None) -> Tuple[Tensor, Tensor, int]:
    """(X, info, `first` as `_first_failure` takes it) (no autograd)."""
    vector, batch = shapes or _solve_shapes(A, B)
    Bm = B.unsqueeze(-1) if vector else B
    done = _on_backend("solve", A, lambda: _lu(A, Bm, batch, False, False))
    if done is None:
        acc = _acc(A.dtype)
        X, info = torch.linalg.solve_ex(A.to(acc), Bm.to(acc))
        first = _UNKNOWN
    else:
        _, X, _, info, first = done
    X = X if X.dtype == B.dtype else X.to(B.dtype)
    return (X.squeeze(-1) if vector else X), (info if info.dtype == torch.int32 else info.to(torch.int32)), first


#: Largest order of a CUDA LU (``solve``, ``solve_ex``, ``lu_batched``) that metalcore's blocked
#: path takes, by dtype; a larger matrix goes to torch.linalg (cuSOLVER), with the one-time warning.
#: Measured on an H200 against torch 2.11 (README, "Large matrices"): float32 1.25x faster at
#: 1024-2048, even at 4096, 0.68x at 8192; float64 1.08x at 1024-2048, 0.80x at 4096. The core
#: takes up to 8192.
BLOCKED_LU_MAX_N = {torch.float32: 4096, torch.float64: 2048}

#: Shared memory (bytes) below which a CUDA LU is sure to fit one block (the least of the
#: supported GPUs, 163 KB on sm_80, rounded down); past it `_lu` prepares the blocked path's
#: operands (on Hopper the single-block kernel still takes matrices up to 227 KB).
_LU_BLOCK_BYTES = 160 * 1024
_LU_WORK_INTS = 128  # the core's LU_WORK_INTS

#: Largest row count (m) of a CUDA matrix past one block's shared memory that the blocked QR path
#: takes, by dtype; a taller matrix goes to torch.linalg (cuSOLVER), with the one-time warning.
#: Measured on an H200 against torch 2.11 (README, "Large matrices"): float32 1.73x at 1024²,
#: 1.52x at 2048², 1.21x at 4096², 0.84x at 8192²; float64 1.23x at 1024² and 2048², 0.88-0.98x
#: at 4096² (its leaves are narrower past 2048 rows). The core takes up to 8192.
BLOCKED_QR_MAX_M = {torch.float32: 4096, torch.float64: 2048}

#: A batch of more than BLOCKED_QR_BATCH such CUDA matrices whose sides are all at most 256 goes
#: to torch.linalg as well (with the warning): the blocked path factors one matrix after another,
#: and torch's own batched path takes these faster. H200, torch 2.11: 100×200² float32 0.89x,
#: 1000×200² 0.51x, 1000×256² 0.53x, 100×170² float64 0.50x; bigger ones stay ahead at any batch
#: (100×256² 1.12x, 1000×300² 1.55x, 200×512² 1.80x, 1000×400×100 1.68x).
BLOCKED_QR_BATCH = 16


def _lu(A: Tensor, Bm: Tensor, batch: torch.Size, pivots: bool, factors: bool):
    """metalcore's LU with partial pivoting of A (broadcast to `batch`), applied to the right-hand
    sides Bm (``*, n, k``; k may be 0): (LU factors or None, X, pivots or None, info, `first` as
    `_first_failure` takes it), in the compute dtype. Inputs already contiguous in the compute dtype and batch are read in place."""
    n, k = A.shape[-1], Bm.shape[-1]
    acc = _acc(A.dtype)
    a = A if _in_place(A, batch, acc) else None
    if a is None:
        a = empty(batch + (n, n), acc, A.device)
        if a.numel():
            a.copy_(A)  # broadcasts over the batch
    b = Bm if _in_place(Bm, batch, acc) else None
    x = empty(batch + (n, k), acc, A.device)
    if b is None:
        b = x
        if x.numel():
            x.copy_(Bm)
    # A CUDA matrix past one block's shared memory takes the blocked path, which works on the
    # factor and pivot outputs and needs torch's cuBLAS handle and a small int32 scratch: scratch
    # ones also stand in for outputs the caller does not want.
    blocked = A.device.type == "cuda" and (n * (n + k + 2) + 32) * a.element_size() > _LU_BLOCK_BYTES
    if blocked and n > BLOCKED_LU_MAX_N[acc]:
        raise NotImplementedError(f"metalcore's blocked LU takes {acc} matrices up to n = {BLOCKED_LU_MAX_N[acc]} "
                                  f"(metalcore.linalg.BLOCKED_LU_MAX_N), got n = {n}")
    lu = empty(a.shape, acc, A.device) if factors or blocked else None
    piv = empty(batch + (n,), torch.int32, A.device) if pivots or blocked else None
    info = empty(batch, torch.int32, A.device)
    first = _native.lu_solve_into(batch_desc(a, "A", n, n), None if lu is None else batch_desc(lu, "LU", n, n),
                          batch_desc(b, "B", n, k), batch_desc(x, "X", n, k), desc(info, "info"),
                          None if piv is None else batch_desc(piv, "pivots", 1, n), stream_of(A),
                          blas_handle(A) if blocked else 0,
                          desc(empty((_LU_WORK_INTS,), torch.int32, A.device), "work") if blocked else None)
    return (lu if factors else None), x, (piv if pivots else None), info, first


def _raise_singular(info: Tensor, first: int = _UNKNOWN) -> None:
    bad = _first_failure(info, first)
    if bad is not None:
        idx, j = bad
        where = f" (batch element {idx})" if info.dim() else ""
        raise torch.linalg.LinAlgError(
            f"solve: the solver failed because the input matrix is singular{where}: U[{j - 1}, {j - 1}] is exactly zero."
        )


class SolveFunction(torch.autograd.Function):
    """``SolveFunction.apply(A, B)`` = ``A⁻¹ B`` (raises on a singular matrix); backward
    ``gB = A⁻ᵀ gX``, ``gA = −gB Xᵀ`` (summed over broadcast batch dimensions)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        x, info, first = _lu_solve(a, b)
        _raise_singular(info, first)
        ctx.save_for_backward(a, x)
        ctx.b_shape = b.shape
        return x

    @staticmethod
    def backward(ctx, gx: Tensor):  # type: ignore[override]
        a, x = ctx.saved_tensors
        gb, _, _ = _lu_solve(a.mT, gx.expand(x.shape) if gx.shape != x.shape else gx)
        vector = x.dim() == a.dim() - 1 or x.dim() == 1
        ga = None
        if ctx.needs_input_grad[0]:
            gbm, xm = (gb.unsqueeze(-1), x.unsqueeze(-1)) if vector else (gb, x)
            ga = (-(gbm @ xm.mT)).sum_to_size(a.shape)
        if ctx.needs_input_grad[1]:
            gb = gb.sum_to_size(ctx.b_shape)
        else:
            gb = None
        return ga, gb


_lu_apply = fast_apply(SolveFunction)


def solve_ex(A: Tensor, B: Tensor, fast: bool = False) -> SolveEx:
    """``torch.linalg.solve_ex``: solves ``A X = B`` by LU with partial pivoting and returns
    ``(result, info)``; ``info[b] = j > 0`` marks matrix ``b`` as singular (``U[j-1, j-1] == 0``),
    its result then being undefined. ``fast`` is accepted for the original API (there is no check
    to skip here). Not differentiable (use :func:`solve`)."""
    shapes = _solve_shapes(A, B)
    with torch.no_grad():
        return SolveEx(*_lu_solve(A, B, shapes)[:2])


def solve(A: Tensor, B: Tensor, fast: bool = False) -> Tensor:
    """Solves ``A X = B`` for square ``A`` (``*, n, n``) like ``torch.linalg.solve``: ``B`` is a
    batch of vectors ``(*, n)`` or of matrices ``(*, n, k)``, batch dimensions broadcast; float32 and
    float64 (16-bit inputs computed in float32). LU with partial pivoting, one matrix per task (on
    CUDA, a matrix past one block's shared memory takes the blocked LU up to ``BLOCKED_LU_MAX_N``,
    torch.linalg beyond; see the module's docstring).

    Raises ``torch.linalg.LinAlgError`` naming the first singular batch element, unless ``fast``:
    then singular matrices give undefined (Inf/NaN) results instead of an error. Differentiable."""
    shapes = _solve_shapes(A, B)
    if torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
        return _lu_apply(A, B)
    x, info, first = _lu_solve(A, B, shapes)
    if not fast:
        _raise_singular(info, first)
    return x


def _trsm(a: Tensor, b: Tensor, lower: bool, transpose: bool, unit: bool) -> Tensor:
    # Aᵀ in memory: the other triangle, solved the other way round.
    done = _tri_native("trsm", b, a, "A",
                       lambda xb, t, flipped, blas: _native.trsm_inplace(t, xb, lower != flipped, transpose != flipped, unit,
                                                                          stream_of(b), blas))
    if done is not None:
        return done
    acc = _acc(b.dtype)
    M = a.to(acc)
    M = M.mT if transpose else M
    return torch.linalg.solve_triangular(M, b.to(acc), upper=(lower == transpose), unitriangular=unit).to(b.dtype)


class TrsmFunction(torch.autograd.Function):
    """``TrsmFunction.apply(A, B, lower, transpose, unit_diagonal)`` = ``op(A)⁻¹ B``; backward
    ``gB = op(A)⁻ᵀ gX`` and the gradient of A restricted to the triangle the solve reads."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, lower: bool, transpose: bool, unit: bool) -> Tensor:  # type: ignore[override]
        x = _trsm(a, b, lower, transpose, unit)
        ctx.save_for_backward(a, x)
        ctx.flags, ctx.b_shape = (lower, transpose, unit), b.shape
        return x

    @staticmethod
    def backward(ctx, gx: Tensor):  # type: ignore[override]
        a, x = ctx.saved_tensors
        lower, transpose, unit = ctx.flags
        gb = _trsm(a, gx, lower, not transpose, unit)
        ga = None
        if ctx.needs_input_grad[0]:
            g = -(x @ gb.mT) if transpose else -(gb @ x.mT)
            g = g.tril(-1 if unit else 0) if lower else g.triu(1 if unit else 0)
            ga = g.sum_to_size(a.shape)
        gb = gb.sum_to_size(ctx.b_shape) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None, None


_trsm_apply = fast_apply(TrsmFunction)


def trsm(A: Tensor, B: Tensor, lower: bool = True, transpose: bool = False, unit_diagonal: bool = False) -> Tensor:
    """Triangular solve ``op(A) X = B`` (BLAS TRSM, left side): ``op(A)`` is ``A`` or, with
    ``transpose``, ``Aᵀ``; only the ``lower`` (else upper) triangle of ``A`` is read and its
    diagonal is taken as ones with ``unit_diagonal``. ``A`` is ``(*, n, n)``, ``B`` ``(*, n, k)``,
    batch dimensions broadcast; float32/float64 (16-bit computed in float32). Equivalent to
    ``torch.linalg.solve_triangular(A.mT if transpose else A, B, upper=..., unitriangular=...)``.
    Differentiable. A zero on the diagonal gives Inf/NaN, as BLAS does (no check)."""
    _check_matrix_rhs(B, "A", A, _check_square("A", A))
    if torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
        return _trsm_apply(A, B, lower, transpose, unit_diagonal)
    return _trsm(A, B, lower, transpose, unit_diagonal)


#: The original API's batched name: :func:`trsm` already takes any batch shape.
trsm_batched = trsm


def _batched(kind: str, a: Tensor) -> Tensor:
    m, n = a.shape[-2], a.shape[-1]
    batch = a.shape[:-2]
    nb = math.prod(batch)
    acc = _acc(a.dtype)
    if a.device.type != "cpu":
        warn_fallback(f"{kind}_batched", a.device, "metalcore computes the batched helpers on the CPU only")
        x = a.to(acc)
        if kind == "syrk":
            y = x.mT @ x
        elif kind == "frobenius":
            y = torch.linalg.matrix_norm(x)
        else:
            y = x.diagonal(dim1=-2, dim2=-1).sum(-1)
        return y.to(a.dtype)
    x = a.reshape(nb, m, n).to(acc).contiguous()
    out = empty((nb, n, n) if kind == "syrk" else (nb,), acc, a.device)
    _native.batched_into(kind, desc(x, "A"), desc(out, "out"))
    return out.view(batch + ((n, n) if kind == "syrk" else ())).to(a.dtype)


class _BatchedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, kind: str) -> Tensor:  # type: ignore[override]
        y = _batched(kind, a)
        ctx.save_for_backward(a, y)
        ctx.kind = kind
        return y

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        a, y = ctx.saved_tensors
        if ctx.kind == "syrk":
            ga = a @ (g + g.mT)
        elif ctx.kind == "frobenius":
            # d‖A‖/dA = A/‖A‖; at the zero matrix, the subgradient 0 (as torch.linalg.norm gives).
            scale = torch.where(y == 0, torch.zeros_like(y), g / y)
            ga = a * scale[..., None, None]
        else:
            ga = torch.diag_embed(g[..., None].expand(g.shape + (a.shape[-1],)))
        return ga, None


_batched_apply = fast_apply(_BatchedFunction)


def _helper(kind: str, A: Tensor) -> Tensor:
    if not isinstance(A, Tensor):
        raise TypeError(f"A: expected a torch.Tensor, got {type(A).__name__}")
    check_float("A", A)
    if A.dim() < 2:
        raise ValueError(f"A: expected a batch of matrices (*, m, n), got shape {tuple(A.shape)}")
    if kind == "trace" and A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A: expected a batch of square matrices (*, n, n), got shape {tuple(A.shape)}")
    if torch.is_grad_enabled() and A.requires_grad:
        return _batched_apply(A, kind)
    return _batched(kind, A)


def syrk_batched(A: Tensor) -> Tensor:
    """``Aᵀ A`` for each matrix of ``A`` (``*, m, n`` → ``*, n, n``), exactly symmetric. Differentiable."""
    return _helper("syrk", A)


def frobenius_norm_batched(A: Tensor) -> Tensor:
    """Frobenius norm of each matrix of ``A`` (``*, m, n`` → ``*``), accumulated in float64 blocks.
    Differentiable (gradient 0 at the zero matrix)."""
    return _helper("frobenius", A)


def trace_batched(A: Tensor) -> Tensor:
    """Trace of each square matrix of ``A`` (``*, n, n`` → ``*``). Differentiable."""
    return _helper("trace", A)


class LUResult(NamedTuple):
    """``(LU, pivots, info)`` as ``torch.linalg.lu_factor_ex`` returns them."""

    LU: Tensor
    pivots: Tensor
    info: Tensor


def lu_batched(A: Tensor) -> LUResult:
    """LU factorization with partial pivoting of each matrix of ``A`` (``*, n, n``), like
    ``torch.linalg.lu_factor_ex``: ``LU`` packs the unit-lower ``L`` (below the diagonal) and ``U``;
    ``pivots`` (int32, 1-based) are the row interchanges in LAPACK's convention, so
    ``torch.lu_unpack(LU, pivots)`` rebuilds ``P, L, U``; ``info[b] = j > 0`` when ``U[j-1, j-1]``
    is exactly zero (singular; the factorization is still completed). Not differentiable."""
    n = _check_square("A", A)
    with torch.no_grad():
        done = _on_backend("lu_batched", A, lambda: _lu(A, A.new_empty(A.shape[:-1] + (0,)), A.shape[:-2], True, True))
        if done is None:
            lu, piv, info = torch.linalg.lu_factor_ex(A.to(_acc(A.dtype)))
        else:
            lu, _, piv, info, _ = done
    return LUResult(lu.to(A.dtype), piv.to(torch.int32), info.to(torch.int32))


class QRResult(NamedTuple):
    """``(Q, R)`` as ``torch.linalg.qr`` returns them."""

    Q: Tensor
    R: Tensor


_QR_MODES = ("reduced", "complete", "r")


def _qr(a: Tensor, mode: str) -> Tuple[Tensor, Tensor]:
    m, n = a.shape[-2], a.shape[-1]
    batch = a.shape[:-2]
    k = min(m, n)
    kq = 0 if mode == "r" else (m if mode == "complete" else k)
    kr = m if mode == "complete" else k
    acc = _acc(a.dtype)

    def run() -> Tuple[Tensor, Tensor]:
        x = a if a.dtype == acc and a.is_contiguous() else a.to(acc).contiguous()
        q = empty(batch + (m, kq), acc, a.device)
        r = empty(batch + (kr, n), acc, a.device)
        if r.numel() or q.numel():
            # A CUDA matrix past one block's shared memory takes the blocked path, which needs
            # torch's cuBLAS handle and a scratch of the compute dtype.
            smem = m * (n + 1) + (m * (kq + 1) if kq else 0) + 8 * max(n, kq) + k + 16
            blocked = a.device.type == "cuda" and smem * x.element_size() > _LU_BLOCK_BYTES
            if blocked and m > BLOCKED_QR_MAX_M[acc]:
                raise NotImplementedError(f"metalcore's blocked QR takes {acc} matrices of up to m = "
                                          f"{BLOCKED_QR_MAX_M[acc]} rows (metalcore.linalg.BLOCKED_QR_MAX_M), got m = {m}")
            if blocked and max(m, n) <= 256 and x.numel() // (m * n) > BLOCKED_QR_BATCH:
                raise NotImplementedError(f"metalcore's blocked QR factors one matrix after another: batches of more than "
                                          f"{BLOCKED_QR_BATCH} matrices up to 256×256 (metalcore.linalg.BLOCKED_QR_BATCH) "
                                          f"are faster in torch.linalg, got {x.numel() // (m * n)} of {m}×{n}")
            work = empty((_native.qr_work_len(m, n, kq),), acc, a.device) if blocked else None
            _native.qr_into(batch_desc(x, "A", m, n), batch_desc(q, "Q", m, kq) if q.numel() else None,
                            batch_desc(r, "R", kr, n), stream_of(a), blas_handle(a) if blocked else 0,
                            None if work is None else desc(work, "work"))
        return q, r

    done = _on_backend("qr", a, run)
    if done is None:
        done = tuple(torch.linalg.qr(a.to(acc), mode=mode))  # type: ignore[assignment]
    q, r = done
    same = a.dtype == acc
    Q = torch.empty(0, dtype=a.dtype, device=a.device) if mode == "r" else (q if same else q.to(a.dtype))
    return Q, (r if same else r.to(a.dtype))


def _r_inv_t(x: Tensor, r: Tensor) -> Tensor:
    """``x R⁻ᵀ`` for upper-triangular square ``R``."""
    return torch.linalg.solve_triangular(r.mH, x, upper=False, left=False)


def _qr_backward_tall(q: Tensor, r: Tensor, gq: Tensor, gr: Tensor) -> Tensor:
    """Gradient of ``A = QR`` (m ≥ n, reduced): ``Q (gR + tril(QᵀgQ − gQᵀQ + R gRᵀ − gR Rᵀ) R⁻ᵀ)
    + (gQ − Q QᵀgQ) R⁻ᵀ`` (the usual formula, as in TensorFlow's QrGrad and torch's backward)."""
    qdq = q.mH @ gq
    rdr = r @ gr.mH
    m = (qdq - qdq.mH + rdr - rdr.mH).tril()
    return q @ (gr + _r_inv_t(m, r)) + _r_inv_t(gq - q @ qdq, r)


class QRFunction(torch.autograd.Function):
    """``QRFunction.apply(A, mode)`` → ``(Q, R)``, differentiable for ``mode='reduced'`` (and
    ``'complete'`` when m ≤ n, where it is the same factorization), as torch's ``linalg.qr``."""

    @staticmethod
    def forward(ctx, a: Tensor, mode: str):  # type: ignore[override]
        q, r = _qr(a, mode)
        ctx.save_for_backward(q, r)
        return q, r

    @staticmethod
    def backward(ctx, gq: Optional[Tensor], gr: Optional[Tensor]):  # type: ignore[override]
        q, r = ctx.saved_tensors
        gq = torch.zeros_like(q) if gq is None else gq
        gr = torch.zeros_like(r) if gr is None else gr
        m, n = q.shape[-2], r.shape[-1]
        if m >= n:
            return _qr_backward_tall(q, r, gq, gr), None
        # Wide: A = [X | Y] with X = Q U square; Y = Q V enters through gQ.
        u, gu, gv = r[..., :m], gr[..., :m], gr[..., m:]
        y = q @ r[..., m:]
        gx = _qr_backward_tall(q, u, gq + y @ gv.mH, gu)
        return torch.cat([gx, q @ gv], dim=-1), None


_qr_apply = fast_apply(QRFunction)


def qr(A: Tensor, mode: str = "reduced") -> QRResult:
    """Householder QR of each matrix of ``A`` (``*, m, n``; tall, square or wide), like
    ``torch.linalg.qr``: ``mode='reduced'`` gives ``Q`` (``*, m, k``) and ``R`` (``*, k, n``),
    ``k = min(m, n)``; ``'complete'`` gives ``Q`` (``*, m, m``) and ``R`` (``*, m, n``); ``'r'``
    gives only ``R`` (``Q`` is an empty tensor). ``R``'s diagonal may be negative (LAPACK's sign
    convention, the one torch returns). float32/float64; 16-bit inputs are computed in float32.
    Differentiable for ``'reduced'`` (and ``'complete'`` when m ≤ n). On CUDA, matrices past one
    block's shared memory take the blocked path up to ``BLOCKED_QR_MAX_M`` rows and torch.linalg's
    ``qr`` past that, or for batches of more than ``BLOCKED_QR_BATCH`` matrices up to 256×256
    (with a one-time warning; see the module docstring)."""
    _check_matrix(A)
    if mode not in _QR_MODES:
        raise ValueError(f"mode: expected one of {_QR_MODES}, got {mode!r}")
    if torch.is_grad_enabled() and A.requires_grad:
        if mode == "r":
            raise RuntimeError("qr: the derivative depends on Q, which is not computed with mode='r'; use mode='reduced'")
        if mode == "complete" and A.shape[-2] > A.shape[-1]:
            raise RuntimeError("qr: mode='complete' is not differentiable when m > n; use mode='reduced'")
        return QRResult(*_qr_apply(A, mode))
    return QRResult(*_qr(A, mode))


def _check_matrix(A: Tensor, name: str = "A", square: bool = False) -> None:
    """`A` is a floating tensor of (square, with `square`) matrices ``(*, m, n)``."""
    if not isinstance(A, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(A).__name__}")
    check_float(name, A)
    if A.dim() < 2 or (square and A.shape[-1] != A.shape[-2]):
        want = "square matrices (*, n, n)" if square else "matrices (*, m, n)"
        raise ValueError(f"{name}: expected a batch of {want}, got shape {tuple(A.shape)}")


def _qr_least_squares(A: Tensor, Bm: Tensor) -> Tensor:
    """The least-squares (m ≥ n) or minimum-norm (m < n) solution of A X = B by QR, from
    differentiable pieces (QR, triangular solves, products)."""
    m, n = A.shape[-2], A.shape[-1]
    if m >= n:
        q, r = qr(A)
        return trsm(r, q.mH @ Bm, lower=False)
    # A = (Q R)ᴴ = Rᴴ Qᴴ: X = Q R⁻ᴴ B is the solution of least norm.
    q, r = qr(A.mH)
    return q @ trsm(r, Bm, lower=False, transpose=True)


def qr_solve(A: Tensor, B: Tensor) -> Tensor:
    """Solves ``A X = B`` through the QR factorization of ``A`` (``*, m, n``): the least-squares
    solution for ``m ≥ n`` (full column rank), the least-norm one for ``m < n`` (full row rank).
    ``B`` is ``(*, m)`` or ``(*, m, k)``; batch dimensions broadcast. Differentiable."""
    _check_matrix(A)
    vector, _ = _rhs_shapes(A, B)
    X = _qr_least_squares(A, B.unsqueeze(-1) if vector else B)
    return X.squeeze(-1) if vector else X


class LstsqResult(NamedTuple):
    """``(solution, residuals, rank, singular_values)`` as ``torch.linalg.lstsq`` returns them."""

    solution: Tensor
    residuals: Tensor
    rank: Tensor
    singular_values: Tensor


def lstsq(A: Tensor, B: Tensor, rcond: Optional[float] = None, *, driver: Optional[str] = None) -> LstsqResult:
    """Least-squares solution of ``A X = B`` by Householder QR, like ``torch.linalg.lstsq`` with
    its QR driver (``'gels'``): ``A`` (``*, m, n``) has full rank; ``B`` is ``(*, m, k)`` (or
    ``(*, m)``); batch dimensions broadcast. For ``m < n`` the solution is the one of least norm.
    ``residuals`` holds the squared residual norm of each column when ``m > n`` (else it is empty);
    ``rank`` and ``singular_values`` are empty, as with ``'gels'``. ``rcond`` is accepted for
    signature compatibility and unused (QR does not estimate rank). Differentiable."""
    _check_matrix(A)
    if driver not in (None, "gels"):
        raise ValueError(f"driver: metalcore's lstsq is QR-based ('gels'); got {driver!r}")
    vector, _ = _rhs_shapes(A, B)
    Bm = B.unsqueeze(-1) if vector else B
    X = _qr_least_squares(A, Bm)
    m, n = A.shape[-2], A.shape[-1]
    if m > n:
        res = (A @ X - Bm).abs().pow(2).sum(-2)
        res = res.squeeze(-1) if vector else res
    else:
        res = torch.empty(0, dtype=A.dtype, device=A.device)
    none = torch.empty(0, dtype=torch.int64, device=A.device)
    return LstsqResult(X.squeeze(-1) if vector else X, res, none, torch.empty(0, dtype=A.dtype, device=A.device))


def householder_vector(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The Householder reflector of each vector ``x`` (``*, m``), LAPACK's ``larfg``: returns
    ``(v, tau, beta)`` with ``v[..., 0] = 1`` so that ``(I − tau v vᵀ) x = beta e₁``, ``beta =
    −sign(x₀) ‖x‖`` (sign(0) = +1) and ``tau = 0`` (the identity) when ``x[1:]`` is zero — the
    reflectors :func:`qr` uses. Computed with torch operations on any device; differentiable."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    check_float("x", x)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x: expected a batch of non-empty vectors (*, m), got shape {tuple(x.shape)}")
    alpha, rest = x[..., 0], x[..., 1:]
    ss = (rest * rest).sum(-1)
    norm = torch.sqrt(alpha * alpha + ss)
    beta_r = torch.where(alpha >= 0, -norm, norm)
    live = ss > 0
    safe_beta = torch.where(live, beta_r, torch.ones_like(beta_r))
    tau = torch.where(live, (beta_r - alpha) / safe_beta, torch.zeros_like(alpha))
    scale = torch.where(live, 1.0 / torch.where(live, alpha - beta_r, torch.ones_like(alpha)), torch.zeros_like(alpha))
    v = torch.cat([torch.ones_like(alpha)[..., None], rest * scale[..., None]], dim=-1)
    beta = torch.where(live, beta_r, alpha)
    return v, tau, beta


def apply_householder(A: Tensor, v: Tensor, tau: Tensor) -> Tensor:
    """``(I − tau v vᵀ) A`` for each matrix ``A`` (``*, m, n``), reflector ``v`` (``*, m``) and
    scalar ``tau`` (``*``), without forming the m×m reflector: ``A − tau v (vᵀ A)``. Torch
    operations on any device; differentiable."""
    for name, t in (("A", A), ("v", v), ("tau", tau)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        check_float(name, t)
    if A.dim() < 2 or v.dim() < 1 or v.shape[-1] != A.shape[-2]:
        raise ValueError(f"v: expected shape (*, {A.shape[-2] if A.dim() >= 2 else 'm'}) to match A of shape {tuple(A.shape)}, got {tuple(v.shape)}")
    w = (v[..., None, :] @ A)  # (*, 1, n)
    return A - tau[..., None, None] * v[..., :, None] * w
