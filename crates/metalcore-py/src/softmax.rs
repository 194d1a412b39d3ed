//! Bindings of softmax.

use crate::bridge::{to_py, Desc};
use metalcore_core::ops::softmax::{softmax_bwd, softmax_fwd, SoftmaxBwd, SoftmaxFwd};
use metalcore_core::Exec;
use pyo3::prelude::*;

/// Softmax over the last dimension of a row view, into a caller-allocated output.
#[pyfunction]
#[pyo3(signature = (x, out, stream))]
fn softmax_fwd_into(py: Python<'_>, x: Desc, out: Desc, stream: usize) -> PyResult<()> {
    let (x, y) = (x.to_ref("x")?, out.to_ref("out")?);
    py.detach(|| softmax_fwd(&SoftmaxFwd { x: &x, y: &y }, Exec::on(stream))).map_err(to_py)
}

/// Softmax backward from the forward's output `y`.
#[pyfunction]
#[pyo3(signature = (y, grad_out, grad_x, stream))]
fn softmax_bwd_into(py: Python<'_>, y: Desc, grad_out: Desc, grad_x: Desc, stream: usize) -> PyResult<()> {
    let (y, dy, dx) = (y.to_ref("y")?, grad_out.to_ref("grad_out")?, grad_x.to_ref("grad_x")?);
    py.detach(|| softmax_bwd(&SoftmaxBwd { y: &y, dy: &dy, dx: &dx }, Exec::on(stream))).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(softmax_fwd_into, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_bwd_into, m)?)?;
    Ok(())
}
