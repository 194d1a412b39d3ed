"""Batched linear algebra: Cholesky factorization and solves, LU (partial pivoting) solves.

Semantics of ``torch.linalg.cholesky`` / ``cholesky_ex`` and ``torch.cholesky_solve``: any batch
shape ``(*, n, n)``; only the lower triangle of ``A`` is read; float32 and float64 (float16 and
bfloat16 inputs are computed in float32 and returned in their dtype). A matrix that is not
positive definite (NaN included) is reported per batch element: ``cholesky_ex`` returns its
``info`` (0, or the order of the first leading minor that is not positive definite) and
``cholesky`` raises ``torch.linalg.LinAlgError`` naming the first failing batch index.

Backends: the CPU one is metalcore's (rayon over the batch, one cache-resident kernel per
matrix). CUDA has no metalcore kernel yet: on CUDA tensors — as on any other device — the
factorizations and solves themselves are torch.linalg's (``cholesky_ex``, ``cholesky_solve``,
``solve_ex``, ``solve_triangular``), with a one-time ``RuntimeWarning`` saying so; everything around
them is metalcore's and the same on every device: 16-bit inputs computed in float32, ``info``
(a NaN pivot counts as a failure, as LAPACK reports it), the error messages, and the gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from . import _native
from ._backend import check_float, desc, empty, fast_apply, warn_fallback

__all__ = ["cholesky", "cholesky_ex", "cholesky_solve", "CholeskyEx", "solve", "solve_ex", "SolveEx", "trsm", "trsm_batched", "syrk_batched", "frobenius_norm_batched", "trace_batched"]


class CholeskyEx(NamedTuple):
    """``(L, info)`` as ``torch.linalg.cholesky_ex`` returns them."""

    L: Tensor
    info: Tensor


def _native_device(t: Tensor) -> bool:
    """True when metalcore computes linear algebra on `t`'s device (the CPU, for now)."""
    return t.device.type == "cpu"


def _fallback(op: str, t: Tensor) -> None:
    why = None
    if t.device.type == "cuda":
        why = "metalcore has no CUDA kernel for this op yet"
    warn_fallback(op, t.device, why)


def _check_square(name: str, a: Tensor) -> int:
    if not isinstance(a, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(a).__name__}")
    check_float(name, a)
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name}: expected a batch of square matrices (*, n, n), got shape {tuple(a.shape)}")
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
        torch.broadcast_shapes(B.shape[:-2], A.shape[:-2])
    except RuntimeError as e:
        raise ValueError(f"B: batch shape {tuple(B.shape[:-2])} does not broadcast with {a_name}'s {tuple(A.shape[:-2])}") from e


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _factor(a: Tensor, upper: bool) -> Tuple[Tensor, Tensor]:
    """(factor in a's dtype, int32 info)."""
    n, batch = a.shape[-1], a.shape[:-2]
    if not _native_device(a):
        _fallback("cholesky", a)
        f, info = torch.linalg.cholesky_ex(a.to(_acc(a.dtype)), upper=upper)
        # cuSOLVER lets a NaN pivot through (info 0); LAPACK, and metalcore, report it.
        if n:
            finite = torch.isfinite(f.diagonal(dim1=-2, dim2=-1))
            first_bad = torch.where(finite.all(-1), 0, (~finite).int().argmax(-1) + 1)
            info = torch.where(info == 0, first_bad, info)
        info = info.to(torch.int32)
        return f.to(a.dtype), info
    nb = math.prod(batch)
    work = empty((nb, n, n), _acc(a.dtype), a.device)
    if work.numel():
        work.copy_(a.reshape(nb, n, n))
    info = empty((nb,), torch.int32, a.device)
    _native.cholesky_inplace(desc(work, "A"), desc(info, "info"), upper)
    return work.view(a.shape).to(a.dtype), info.view(batch)


def _first_failure(info: Tensor):
    """(batch index as a tuple, info value) of the first nonzero entry of `info`, or None."""
    if not bool(info.any()):
        return None
    flat = info.reshape(-1)
    i = int(torch.nonzero(flat)[0, 0])
    return tuple(int(v) for v in torch.unravel_index(torch.tensor(i), info.shape)), int(flat[i])


def _raise_first(info: Tensor, op: str) -> None:
    bad = _first_failure(info)
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
        out, info = _factor(a, upper)
        _raise_first(info, "cholesky")
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
        out, info = _factor(A, upper)
    if check_errors:
        _raise_first(info, "cholesky_ex")
    return CholeskyEx(out, info)


def cholesky(A: Tensor, upper: bool = False) -> Tensor:
    """Cholesky factor of each matrix of ``A`` (``*, n, n``), like ``torch.linalg.cholesky``;
    differentiable. Raises ``torch.linalg.LinAlgError`` naming the first batch element that is not
    positive definite."""
    _check_square("A", A)
    if torch.is_grad_enabled() and A.requires_grad:
        return _chol_apply(A, upper)
    out, info = _factor(A, upper)
    _raise_first(info, "cholesky")
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
    batch = b.shape[:-2] if same else torch.broadcast_shapes(b.shape[:-2], t.shape[:-2])
    nb = math.prod(batch)
    acc = _acc(b.dtype)
    xb = empty((nb, n, k), acc, b.device)
    if xb.numel():
        xb.copy_(b.reshape(nb, n, k) if same else b.expand(batch + (n, k)).reshape(nb, n, k))
    t = (t if same else t.expand(batch + (n, n))).reshape(nb, n, n).to(acc)
    flipped = not t.is_contiguous() and t.mT.is_contiguous()
    return xb, (t.mT if flipped else t.contiguous()), flipped, batch


def _solve(b: Tensor, l: Tensor, upper: bool) -> Tensor:
    if not _native_device(l):
        _fallback("cholesky_solve", l)
        acc = _acc(b.dtype)
        t = l.to(acc)
        return torch.cholesky_solve(b.to(acc), t.triu() if upper else t.tril(), upper=upper).to(b.dtype)
    xb, l, flipped, batch = _tri_operands(b, l)
    _native.cholesky_solve_inplace(desc(xb, "B"), desc(l, "L"), upper != flipped)
    return xb.view(batch + xb.shape[1:]).to(b.dtype)


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
    """torch.linalg.solve's rules: B is a batch of vectors when it is 1-D or has A's shape minus
    the last dimension; batch dimensions broadcast. Returns (vector_case, batch shape)."""
    n = _check_square("A", A)
    _check_rhs(B, "A", A)
    vector = B.dim() == 1 or (B.dim() == A.dim() - 1 and B.shape == A.shape[:-1])
    rows = B.shape[-1] if vector else (B.shape[-2] if B.dim() >= 2 else -1)
    if rows != n:
        want = f"(*, {n})" if vector else f"(*, {n}, k)"
        raise ValueError(f"B: expected shape {want} to match A of shape {tuple(A.shape)}, got {tuple(B.shape)}")
    bb = B.shape[:-1] if vector else B.shape[:-2]
    try:
        batch = torch.broadcast_shapes(A.shape[:-2], bb)
    except RuntimeError as e:
        raise ValueError(f"B: batch shape {tuple(bb)} does not broadcast with A's {tuple(A.shape[:-2])}") from e
    return vector, batch


def _lu_solve(A: Tensor, B: Tensor) -> Tuple[Tensor, Tensor]:
    """(X, info) (no autograd)."""
    vector, batch = _solve_shapes(A, B)
    if not _native_device(A):
        _fallback("solve", A)
        acc = _acc(A.dtype)
        X, info = torch.linalg.solve_ex(A.to(acc), B.to(acc))
        return X.to(B.dtype), info.to(torch.int32)
    n = A.shape[-1]
    Bm = B.unsqueeze(-1) if vector else B
    k = Bm.shape[-1]
    nb = math.prod(batch)
    acc = _acc(A.dtype)
    a = empty((nb, n, n), acc, A.device)
    x = empty((nb, n, k), acc, A.device)
    if a.numel():
        a.copy_(A.expand(batch + (n, n)).reshape(nb, n, n))
    if x.numel():
        x.copy_(Bm.expand(batch + (n, k)).reshape(nb, n, k))
    info = empty((nb,), torch.int32, A.device)
    _native.lu_solve_inplace(desc(a, "A"), desc(x, "B"), desc(info, "info"))
    X = x.view(batch + (n, k)).to(B.dtype)
    return (X.squeeze(-1) if vector else X), info.view(batch)


def _raise_singular(info: Tensor) -> None:
    bad = _first_failure(info)
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
        x, info = _lu_solve(a, b)
        _raise_singular(info)
        ctx.save_for_backward(a, x)
        ctx.b_shape = b.shape
        return x

    @staticmethod
    def backward(ctx, gx: Tensor):  # type: ignore[override]
        a, x = ctx.saved_tensors
        gb, _ = _lu_solve(a.mT, gx.expand(x.shape) if gx.shape != x.shape else gx)
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
    _solve_shapes(A, B)
    with torch.no_grad():
        return SolveEx(*_lu_solve(A, B))


def solve(A: Tensor, B: Tensor, fast: bool = False) -> Tensor:
    """Solves ``A X = B`` for square ``A`` (``*, n, n``) like ``torch.linalg.solve``: ``B`` is a
    batch of vectors ``(*, n)`` or of matrices ``(*, n, k)``, batch dimensions broadcast; float32 and
    float64 (16-bit inputs computed in float32). LU with partial pivoting, one matrix per task.

    Raises ``torch.linalg.LinAlgError`` naming the first singular batch element, unless ``fast``:
    then singular matrices give undefined (Inf/NaN) results instead of an error. Differentiable."""
    _solve_shapes(A, B)
    if torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
        return _lu_apply(A, B)
    x, info = _lu_solve(A, B)
    if not fast:
        _raise_singular(info)
    return x


def _trsm(a: Tensor, b: Tensor, lower: bool, transpose: bool, unit: bool) -> Tensor:
    if not _native_device(a):
        _fallback("trsm", a)
        acc = _acc(b.dtype)
        M = a.to(acc)
        M = M.mT if transpose else M
        return torch.linalg.solve_triangular(M, b.to(acc), upper=(lower == transpose), unitriangular=unit).to(b.dtype)
    xb, t, flipped, batch = _tri_operands(b, a)
    # Aᵀ in memory: the other triangle, solved the other way round.
    _native.trsm_inplace(desc(t, "A"), desc(xb, "B"), lower != flipped, transpose != flipped, unit)
    return xb.view(batch + xb.shape[1:]).to(b.dtype)


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
    if not _native_device(a):
        _fallback(f"{kind}_batched", a)
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
