//! Bindings of the batched linear algebra.

use crate::bridge::{to_py, Desc};
use metalcore_core::ops::linalg::{
    batched, cholesky, cholesky_solve, lu_solve, trsm, Batched, BatchedKind, Cholesky, CholeskySolve, LuSolve, Trsm,
};
use pyo3::prelude::*;

/// In-place batched Cholesky of a contiguous (batch, n, n) float32/float64 tensor; per-matrix
/// status into the int32 `info`.
#[pyfunction]
#[pyo3(signature = (a, info, upper))]
fn cholesky_inplace(py: Python<'_>, a: Desc, info: Desc, upper: bool) -> PyResult<()> {
    let (a, info) = (a.to_ref("A")?, info.to_ref("info")?);
    py.detach(|| cholesky(&Cholesky { a: &a, info: &info, upper })).map_err(to_py)
}

/// In-place batched solve of A X = B from the Cholesky factor of A; `b` becomes X.
#[pyfunction]
#[pyo3(signature = (b, l, upper))]
fn cholesky_solve_inplace(py: Python<'_>, b: Desc, l: Desc, upper: bool) -> PyResult<()> {
    let (b, l) = (b.to_ref("B")?, l.to_ref("L")?);
    py.detach(|| cholesky_solve(&CholeskySolve { b: &b, l: &l, upper })).map_err(to_py)
}

/// In-place batched LU solve with partial pivoting: `a` becomes its LU factors, `b` the solution,
/// `info` the per-matrix status.
#[pyfunction]
#[pyo3(signature = (a, b, info))]
fn lu_solve_inplace(py: Python<'_>, a: Desc, b: Desc, info: Desc) -> PyResult<()> {
    let (a, b, info) = (a.to_ref("A")?, b.to_ref("B")?, info.to_ref("info")?);
    py.detach(|| lu_solve(&LuSolve { a: &a, b: &b, info: &info })).map_err(to_py)
}

/// In-place batched triangular solve op(A) X = B; `b` becomes X.
#[pyfunction]
#[pyo3(signature = (a, b, lower, trans, unit))]
fn trsm_inplace(py: Python<'_>, a: Desc, b: Desc, lower: bool, trans: bool, unit: bool) -> PyResult<()> {
    let (t, b) = (a.to_ref("A")?, b.to_ref("B")?);
    py.detach(|| trsm(&Trsm { t: &t, b: &b, lower, trans, unit })).map_err(to_py)
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(batched_into, m)?)?;
    m.add_function(wrap_pyfunction!(trsm_inplace, m)?)?;
    m.add_function(wrap_pyfunction!(lu_solve_inplace, m)?)?;
    m.add_function(wrap_pyfunction!(cholesky_inplace, m)?)?;
    m.add_function(wrap_pyfunction!(cholesky_solve_inplace, m)?)?;
    Ok(())
}
