//! Bindings of the batched linear algebra.

use crate::bridge::{to_py, Desc};
use metalcore_core::ops::linalg::{
    batched, cholesky, cholesky_solve, info_on_host, lu_solve, qr, svd, trsm, Batched, BatchedKind, Cholesky,
    CholeskySolve, InfoOnHost, LuSolve, Qr, Svd, Trsm,
};
use metalcore_core::tensor::Exec;
use metalcore_core::tensor::TensorRef;
use pyo3::prelude::*;

/// What the ops that write `info` return: -2 when `info` is on a device that has not finished
/// (the caller reads it back), -1 when every entry is 0, else the index of the first nonzero one
/// (the CPU's `info` is final when the op returns: no torch op is needed to check it).
fn info_status(info: &TensorRef) -> i64 {
    // SAFETY: called right after the op that took `info` returned Ok (its plan validated it).
    match unsafe { info_on_host(info) } {
        InfoOnHost::Unknown => -2,
        InfoOnHost::Clean => -1,
        InfoOnHost::First(i) => i as i64,
    }
}

/// Batched Cholesky of a contiguous (batch, n, n) float32/float64 tensor, in place, or from `src`
/// (same shape and dtype) into `a`; per-matrix status into the int32 `info`. `blas`: torch's
/// cuBLAS handle for `stream` (`torch.cuda.current_blas_handle()`), which CUDA matrices too large
/// for one block need (0: such matrices are refused with NotImplementedError). Returns
/// `info`'s status as `info_status` gives it.
#[pyfunction]
#[pyo3(signature = (a, info, upper, stream, src=None, blas=0))]
fn cholesky_inplace(
    py: Python<'_>,
    a: Desc,
    info: Desc,
    upper: bool,
    stream: usize,
    src: Option<Desc>,
    blas: usize,
) -> PyResult<i64> {
    let (a, info) = (a.to_ref("A")?, info.to_ref("info")?);
    let src = src.map(|s| s.to_ref("src")).transpose()?;
    py.detach(|| cholesky(&Cholesky { a: &a, src: src.as_ref(), info: &info, upper }, Exec { stream, blas }))
        .map_err(to_py)?;
    Ok(info_status(&info))
}

/// In-place batched solve of A X = B from the Cholesky factor of A; `b` becomes X. `blas` as for
/// `cholesky_inplace`.
#[pyfunction]
#[pyo3(signature = (b, l, upper, stream, blas=0))]
fn cholesky_solve_inplace(py: Python<'_>, b: Desc, l: Desc, upper: bool, stream: usize, blas: usize) -> PyResult<()> {
    let (b, l) = (b.to_ref("B")?, l.to_ref("L")?);
    py.detach(|| cholesky_solve(&CholeskySolve { b: &b, l: &l, upper }, Exec { stream, blas })).map_err(to_py)
}

/// Batched LU solve: reads `a` and `b`, writes X into `x` (which may be `b`), the packed factors
/// into `lu` when given (which may be `a`), the per-matrix status into `info` and, when given, the
/// 1-based row interchanges into `pivots`. `blas`: torch's cuBLAS handle, which CUDA matrices too
/// large for one block need (their blocked path also needs `lu`, `pivots` and the int32 scratch
/// `work`); 0 refuses them. Returns `info`'s status as `info_status` gives it.
#[pyfunction]
#[pyo3(signature = (a, lu, b, x, info, pivots, stream, blas=0, work=None))]
#[allow(clippy::too_many_arguments)]
fn lu_solve_into(
    py: Python<'_>,
    a: Desc,
    lu: Option<Desc>,
    b: Desc,
    x: Desc,
    info: Desc,
    pivots: Option<Desc>,
    stream: usize,
    blas: usize,
    work: Option<Desc>,
) -> PyResult<i64> {
    let (a, b, x, info) = (a.to_ref("A")?, b.to_ref("B")?, x.to_ref("X")?, info.to_ref("info")?);
    let lu = lu.map(|t| t.to_ref("LU")).transpose()?;
    let pivots = pivots.map(|p| p.to_ref("pivots")).transpose()?;
    let work = work.map(|w| w.to_ref("work")).transpose()?;
    let args =
        LuSolve { a: &a, lu: lu.as_ref(), b: &b, x: &x, info: &info, pivots: pivots.as_ref(), work: work.as_ref() };
    py.detach(|| lu_solve(&args, Exec { stream, blas })).map_err(to_py)?;
    Ok(info_status(&info))
}

/// In-place batched triangular solve op(A) X = B; `b` becomes X. `blas` as for `cholesky_inplace`.
#[pyfunction]
#[pyo3(signature = (a, b, lower, trans, unit, stream, blas=0))]
#[allow(clippy::too_many_arguments)]
fn trsm_inplace(
    py: Python<'_>,
    a: Desc,
    b: Desc,
    lower: bool,
    trans: bool,
    unit: bool,
    stream: usize,
    blas: usize,
) -> PyResult<()> {
    let (t, b) = (a.to_ref("A")?, b.to_ref("B")?);
    py.detach(|| trsm(&Trsm { t: &t, b: &b, lower, trans, unit }, Exec { stream, blas })).map_err(to_py)
}

/// Batched Householder QR of the contiguous (batch, m, n) `a` into `r` and, when given, `q`.
/// `blas`: torch's cuBLAS handle, which CUDA matrices too large for one block need, with the
/// `work` scratch of `qr_work_len(m, n, kq)` elements of A's dtype; 0 refuses them.
#[pyfunction]
#[pyo3(signature = (a, q, r, stream, blas=0, work=None))]
fn qr_into(
    py: Python<'_>,
    a: Desc,
    q: Option<Desc>,
    r: Desc,
    stream: usize,
    blas: usize,
    work: Option<Desc>,
) -> PyResult<()> {
    let (a, r) = (a.to_ref("A")?, r.to_ref("R")?);
    let q = q.map(|q| q.to_ref("Q")).transpose()?;
    let work = work.map(|w| w.to_ref("work")).transpose()?;
    let args = Qr { a: &a, q: q.as_ref(), r: &r, work: work.as_ref() };
    py.detach(|| qr(&args, Exec { stream, blas })).map_err(to_py)
}

/// Elements of the scratch the blocked CUDA QR of an m×n matrix (Q with kq columns) needs.
#[pyfunction]
fn qr_work_len(m: usize, n: usize, kq: usize) -> usize {
    metalcore_core::ops::linalg::qr_work_len(m, n, kq)
}

/// Per-matrix helper (`kind`: "syrk", "frobenius" or "trace") of a contiguous batch into `out`.
#[pyfunction]
#[pyo3(signature = (kind, a, out))]
fn batched_into(py: Python<'_>, kind: &str, a: Desc, out: Desc) -> PyResult<()> {
    let kind = match kind {
        "syrk" => BatchedKind::Syrk,
        "frobenius" => BatchedKind::Frobenius,
        "trace" => BatchedKind::Trace,
        _ => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "kind: expected syrk, frobenius or trace, got {kind:?}"
            )))
        }
    };
    let (a, out) = (a.to_ref("A")?, out.to_ref("out")?);
    py.detach(|| batched(&Batched { kind, a: &a, out: &out })).map_err(to_py)
}

/// Batched one-sided Jacobi SVD (or, with `eigh`, symmetric eigendecomposition) of the contiguous
/// (batch, m, n) `a` (m >= n) into `s`, optional `u`/`v`, and the per-matrix convergence `info`.
#[pyfunction]
/// With `eigh`, torch's cuBLAS handle `blas` and a `work` scratch of `eigh_work_len(n, float64)`
/// elements of A's dtype, a CUDA eigh takes the large-matrix path (one matrix after another).
#[pyo3(signature = (a, s, u, v, info, eigh, max_sweeps, stream, blas=0, work=None))]
#[allow(clippy::too_many_arguments)]
fn jacobi_into(
    py: Python<'_>,
    a: Desc,
    s: Desc,
    u: Option<Desc>,
    v: Option<Desc>,
    info: Desc,
    eigh: bool,
    max_sweeps: usize,
    stream: usize,
    blas: usize,
    work: Option<Desc>,
) -> PyResult<()> {
    let (a, s, info) = (a.to_ref("A")?, s.to_ref("S")?, info.to_ref("info")?);
    let u = u.map(|t| t.to_ref("U")).transpose()?;
    let v = v.map(|t| t.to_ref("V")).transpose()?;
    let work = work.map(|w| w.to_ref("work")).transpose()?;
    let args = Svd { a: &a, s: &s, u: u.as_ref(), v: v.as_ref(), info: &info, eigh, max_sweeps, work: work.as_ref() };
    py.detach(|| svd(&args, Exec { stream, blas })).map_err(to_py)
}

/// Elements of the scratch the large-matrix CUDA eigh of an n×n matrix needs (float32 or,
/// with `float64`, float64 elements).
#[pyfunction]
fn eigh_work_len(n: usize, float64: bool) -> usize {
    metalcore_core::ops::linalg::eigh_work_len(n, eigh_dtype(float64))
}

/// The dtype the large-matrix eigh bindings' `float64` flag names (float32 otherwise).
fn eigh_dtype(float64: bool) -> metalcore_core::dtype::DType {
    use metalcore_core::dtype::DType;
    if float64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Byte offsets of the regions of the large-matrix CUDA eigh's scratch, then its total
/// (`metalcore_core::ops::linalg::eigh_work_layout`; float32 or, with `float64`, float64).
#[pyfunction]
fn eigh_work_layout(n: usize, float64: bool) -> Vec<usize> {
    metalcore_core::ops::linalg::eigh_work_layout(n, eigh_dtype(float64)).to_vec()
}

/// The large-matrix CUDA eigh's cluster tolerance relative to ‖T‖ (the kernels' own value:
/// METALCORE_EIGH_CTOL_EXP is read in one place).
#[pyfunction]
fn eigh_cluster_tol() -> PyResult<f64> {
    metalcore_core::cuda::linalg::eigh_cluster_tol().map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(jacobi_into, m)?)?;
    m.add_function(wrap_pyfunction!(batched_into, m)?)?;
    m.add_function(wrap_pyfunction!(trsm_inplace, m)?)?;
    m.add_function(wrap_pyfunction!(qr_into, m)?)?;
    m.add_function(wrap_pyfunction!(qr_work_len, m)?)?;
    m.add_function(wrap_pyfunction!(eigh_work_len, m)?)?;
    m.add_function(wrap_pyfunction!(eigh_work_layout, m)?)?;
    m.add_function(wrap_pyfunction!(eigh_cluster_tol, m)?)?;
    m.add_function(wrap_pyfunction!(lu_solve_into, m)?)?;
    m.add_function(wrap_pyfunction!(cholesky_inplace, m)?)?;
    m.add_function(wrap_pyfunction!(cholesky_solve_inplace, m)?)?;
    Ok(())
}
