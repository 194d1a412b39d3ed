"""Shared implementation of the row normalizations (RMSNorm, LayerNorm) on the native core: output
allocation, row views and the calls into ``_native.norm_*``. No autograd here; ``rmsnorm`` and
``layernorm`` wrap it in ``autograd.Function``s (eager) and ``torch.library`` custom ops (compiled)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _native
from ._backend import check_float, check_same_device, desc, empty, empty_like, opt_desc, stream_getter, stream_of


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows(t: Tensor, n: int) -> Tensor:
    """`t` as a (rows, n) matrix the core accepts: unit column stride, non-overlapping rows
    (a view where possible, else a contiguous copy)."""
    if t.is_contiguous():
        return t if t.dim() == 2 else t.view(-1, n)
    t2 = t.reshape(-1, n)
    if (n > 1 and t2.stride(1) != 1) or (t2.shape[0] > 1 and t2.stride(0) < n):
        t2 = t2.contiguous()
    return t2


def check_inputs(x: Tensor, residual: Optional[Tensor], n: int, **params: Optional[Tensor]) -> None:
    """Validates x (at least 1-D, float), the residual (x's shape and dtype) and each 1-D
    parameter of length `n` (weight, bias), all on x's device."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x: expected at least one dimension, got a 0-d tensor")
    check_float("x", x)
    check_float("residual", residual)
    for name, p in params.items():
        check_float(name, p)
    check_same_device("x", x, residual=residual, **params)
    for name, p in params.items():
        if p is not None and (p.dim() != 1 or p.shape[0] != n):
            raise ValueError(f"{name}: expected shape ({n},) to match the normalized size of x, got {tuple(p.shape)}")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual: expected shape {tuple(x.shape)} (the shape of x), got {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise TypeError(f"residual: expected dtype {x.dtype} (the dtype of x), got {residual.dtype}")


# Validated launch plans by call signature: a signature of contiguous tensors (shapes, dtypes,
# devices and flags) that passed the core's validation once is launched again by data pointers
# alone, which saves the descriptors, their parsing and the checks (tens of microseconds of host
# time per call on a path that is otherwise host-bound on the GPU).
_FWD_PLANS: dict = {}
_BWD_PLANS: dict = {}
_PLANS_MAX = 512


def _sig(t: Optional[Tensor]):
    return None if t is None else (t.shape, t.dtype, t.device)


def _contiguous(*ts: Optional[Tensor]) -> bool:
    for t in ts:
        if t is not None and not t.is_contiguous():
            return False
    return True


def _remember(cache: dict, key, value) -> None:
    if len(cache) >= _PLANS_MAX:
        cache.clear()  # many distinct signatures: start over rather than grow without bound
    cache[key] = value


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _fwd_plan(kind, x, residual, weight, bias, y, residual_out, mean, rstd, eps, offset, cast_before_weight):
    """The core's validated forward plan for these (row-matrix) tensors."""
    return _native.norm_fwd_plan(
        kind,
        desc(x, "x"),
        opt_desc(residual, "residual"),
        opt_desc(weight, "weight"),
        opt_desc(bias, "bias"),
        desc(y, "out"),
        opt_desc(residual_out, "residual_out"),
        opt_desc(mean, "mean"),
        opt_desc(rstd, "rstd"),
        float(eps),
        float(offset),
        cast_before_weight,
    )


def _bwd_plan(kind, dy, x, weight, mean, rstd, d_res_out, dx, dw, db, offset, cast_before_weight):
    """The core's validated backward plan for these (row-matrix) tensors."""
    tensors = (
        kind,
        desc(dy, "grad_out"),
        desc(x, "x"),
        opt_desc(weight, "weight"),
        opt_desc(mean, "mean"),
        desc(rstd, "rstd"),
        opt_desc(d_res_out, "grad_residual_out"),
        desc(dx, "grad_x"),
        opt_desc(dw, "grad_weight"),
        opt_desc(db, "grad_bias"),
    )
    return _native.norm_bwd_plan(tensors, float(offset), cast_before_weight)


def fwd_impl(
    kind: str,
    x: Tensor,
    n: int,
    residual: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    offset: float,
    cast_before_weight: bool,
    out_dtype: torch.dtype,
    want_stats: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Normalizes `x` over rows of `n` trailing elements (arguments already checked by
    `check_inputs`). Returns (y, residual_out or None, mean or None (LayerNorm only), rstd or None)."""
    key = plan = None
    if _contiguous(x, residual, weight, bias):
        key = (kind, n, x.shape, x.dtype, x.device, _sig(residual), _sig(weight), _sig(bias), eps, offset,
               cast_before_weight, out_dtype, want_stats)
        plan = _FWD_PLANS.get(key)
    nrows = x.numel() // n if n else 0
    y = empty_like(x, out_dtype)
    res_out = empty_like(x) if residual is not None else None
    acc = acc_dtype(x.dtype)
    rstd = empty((nrows,), acc, x.device) if want_stats else None
    mean = empty((nrows,), acc, x.device) if (want_stats and kind == "layer") else None
    if n == 0 or nrows == 0:
        for s in (mean, rstd):
            if s is not None:
                s.fill_(float("nan"))  # statistics of an empty row, as torch computes them
        return y, res_out, mean, rstd
    # Keep every view/copy in a local: the core only borrows their memory during the call.
    x2, r2, w, b = x, residual, weight, bias
    if plan is None:
        w = weight.contiguous() if weight is not None else None
        b = bias.contiguous() if bias is not None else None
        x2 = rows(x, n)
        r2 = rows(residual, n) if residual is not None else None
        plan = _fwd_plan(kind, x2, r2, w, b, y.view(-1, n), res_out.view(-1, n) if res_out is not None else None, mean, rstd,
                         eps, offset, cast_before_weight)
        if key is not None:
            _remember(_FWD_PLANS, key, plan)
    plan.launch(x2.data_ptr(), _ptr(r2), _ptr(w), _ptr(b), y.data_ptr(), _ptr(res_out), _ptr(mean), _ptr(rstd),
                stream_of(x))
    return y, res_out, mean, rstd


def bwd_impl(
    kind: str,
    dy: Tensor,
    x: Tensor,
    n: int,
    weight: Optional[Tensor],
    mean: Optional[Tensor],
    rstd: Tensor,
    d_res_out: Optional[Tensor],
    offset: float,
    cast_before_weight: bool,
    need_dw: bool,
    need_db: bool,
    param_dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Returns (dx, dw or None, db or None); `x` is the tensor that was normalized. dw needs a
    weight; db (LayerNorm) takes the weight's dtype, or `param_dtype` without a weight."""
    dx = empty_like(x)
    pdt = weight.dtype if weight is not None else (param_dtype or x.dtype)
    dw = empty((n,), pdt, x.device) if (need_dw and weight is not None) else None
    db = empty((n,), pdt, x.device) if need_db else None
    if n == 0 or x.numel() == 0:
        if d_res_out is not None:
            dx.copy_(d_res_out)
        else:
            dx.zero_()
        for g in (dw, db):
            if g is not None:
                g.zero_()
        return dx, dw, db
    key = plan = None
    if _contiguous(dy, x, weight, mean, rstd, d_res_out):
        key = (kind, n, x.shape, x.dtype, x.device, _sig(dy), _sig(weight), _sig(mean), _sig(rstd), _sig(d_res_out),
               dw is not None, db is not None, pdt, offset, cast_before_weight)
        plan = _BWD_PLANS.get(key)
    # Keep every view/copy in a local: the core only borrows their memory during the call.
    dy2, x2, w, dr2 = dy, x, weight, d_res_out
    if plan is None:
        w = weight.contiguous() if weight is not None else None
        dy2, x2 = rows(dy, n), rows(x, n)
        dr2 = rows(d_res_out, n) if d_res_out is not None else None
        plan = _bwd_plan(kind, dy2, x2, w, mean, rstd, dr2, dx.view(-1, n), dw, db, offset, cast_before_weight)
        if key is not None:
            _remember(_BWD_PLANS, key, plan)
    ws_len = plan.workspace_len
    ws = empty((ws_len,), acc_dtype(x.dtype), x.device) if ws_len else None
    plan.launch(dy2.data_ptr(), x2.data_ptr(), _ptr(w), _ptr(mean), rstd.data_ptr(), _ptr(dr2), dx.data_ptr(),
                _ptr(dw), _ptr(db), (_ptr(ws), ws_len), stream_of(x))
    return dx, dw, db


class EagerCall:
    """Launch state of one eager call signature whose tensors are all contiguous and non-empty:
    the forward's plan, and the backward's (made by its first call with a contiguous gradient, one
    per presence of the residual-output gradient). The eager ``autograd.Function``s keep these by
    a key holding everything their argument checks look at (types, shapes, dtypes, devices, flags),
    so a repeated call skips the checks, the plan keys and the row views: its host time is the
    allocations and the launch (the eager GPU path is otherwise host-bound on large tensors)."""

    __slots__ = ("kind", "n", "nrows", "acc", "out_dtype", "want", "need_dw", "need_db", "pdt", "eps", "offset",
                 "cast", "stream", "fplan", "bplans")

    def __init__(self, kind: str, x: Tensor, n: int, weight: Optional[Tensor], eps: float, offset: float, cast: bool,
                 out_dtype: torch.dtype, want: bool, need_dw: bool, need_db: bool, pdt: torch.dtype) -> None:
        self.kind, self.n, self.nrows, self.acc, self.out_dtype = kind, n, x.numel() // n, acc_dtype(x.dtype), out_dtype
        self.want, self.need_dw, self.need_db, self.pdt = want, need_dw and weight is not None, need_db, pdt
        self.eps, self.offset, self.cast = eps, offset, cast
        self.stream = stream_getter(x.device)
        self.fplan = None
        self.bplans = [None, None]

    @staticmethod
    def eligible(x: Tensor, *others: Optional[Tensor]) -> bool:
        """Every tensor contiguous, and x non-empty with a non-empty last dimension."""
        return x.is_contiguous() and x.numel() > 0 and _contiguous(*others)

    def forward(self, x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor]):
        """(y, residual_out or None, mean or None, rstd or None), as `fwd_impl`."""
        y = empty_like(x, self.out_dtype)
        res_out = empty_like(x) if residual is not None else None
        rstd = mean = None
        if self.want:
            rstd = empty((self.nrows,), self.acc, x.device)
            if self.kind == "layer":
                mean = empty((self.nrows,), self.acc, x.device)
        plan = self.fplan
        if plan is None:
            n = self.n
            plan = self.fplan = _fwd_plan(self.kind, x.view(-1, n), None if residual is None else residual.view(-1, n),
                                          weight, bias, y.view(-1, n), None if res_out is None else res_out.view(-1, n),
                                          mean, rstd, self.eps, self.offset, self.cast)
        plan.launch(x.data_ptr(), _ptr(residual), _ptr(weight), _ptr(bias), y.data_ptr(), _ptr(res_out), _ptr(mean),
                    _ptr(rstd), self.stream())
        return y, res_out, mean, rstd

    def backward(self, dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Optional[Tensor], rstd: Tensor,
                 d_res_out: Optional[Tensor]):
        """(dx, dw or None, db or None), as `bwd_impl`; None when a gradient is not contiguous
        (the caller then takes `bwd_impl`)."""
        if not dy.is_contiguous() or (d_res_out is not None and not d_res_out.is_contiguous()):
            return None
        dx = empty_like(x)
        dw = empty((self.n,), self.pdt, x.device) if self.need_dw else None
        db = empty((self.n,), self.pdt, x.device) if self.need_db else None
        i = d_res_out is not None
        plan = self.bplans[i]
        if plan is None:
            n = self.n
            plan = self.bplans[i] = _bwd_plan(self.kind, dy.view(-1, n), x.view(-1, n), weight, mean, rstd,
                                              None if d_res_out is None else d_res_out.view(-1, n), dx.view(-1, n), dw, db,
                                              self.offset, self.cast)
        ws_len = plan.workspace_len
        ws = empty((ws_len,), self.acc, x.device) if ws_len else None
        plan.launch(dy.data_ptr(), x.data_ptr(), _ptr(weight), _ptr(mean), rstd.data_ptr(), _ptr(d_res_out),
                    dx.data_ptr(), _ptr(dw), _ptr(db), (_ptr(ws), ws_len), self.stream())
        return dx, dw, db


#: EagerCall by call key (see the Functions in rmsnorm / layernorm).
EAGER: dict = {}


def eager_forward(key, make, x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor]):
    """Runs the forward of the EagerCall remembered under `key`, or of `make()` (which checks the
    arguments and builds one), remembered once its plan has passed the core's checks. Returns
    (the call, (y, residual_out or None, mean or None, rstd or None))."""
    e = EAGER.get(key)
    if e is not None:
        return e, e.forward(x, residual, weight, bias)
    e = make()
    out = e.forward(x, residual, weight, bias)
    _remember(EAGER, key, e)
    return e, out
