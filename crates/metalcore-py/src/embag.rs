//! Bindings of EmbeddingBag.

use crate::bridge::{opt, to_py, Desc};
use metalcore_core::ops::embag::{embag_bwd, embag_fwd, EmbagBwd, EmbagFwd, Mode};
use metalcore_core::Exec;
use pyo3::prelude::*;

/// Forward: `out[b]` (and `argmax` in max mode) for mode code 0 sum, 1 mean, 2 max. Returns True,
/// computing nothing, when CPU indices or offsets are out of range (see `embag_fwd`).
#[pyfunction]
#[pyo3(signature = (mode, weight, indices, offsets, per_sample_weights, padding_idx, out, argmax, stream))]
#[allow(clippy::too_many_arguments)]
fn embag_fwd_into(
    py: Python<'_>,
    mode: u32,
    weight: Desc,
    indices: Desc,
    offsets: Desc,
    per_sample_weights: Option<Desc>,
    padding_idx: i32,
    out: Desc,
    argmax: Option<Desc>,
    stream: usize,
) -> PyResult<bool> {
    let mode = Mode::from_code(mode).map_err(to_py)?;
    let (w, i, o) = (weight.to_ref("weight")?, indices.to_ref("indices")?, offsets.to_ref("offsets")?);
    let (s, y, a) = (opt("per_sample_weights", &per_sample_weights)?, out.to_ref("out")?, opt("argmax", &argmax)?);
    let args = EmbagFwd {
        mode,
        weight: &w,
        indices: &i,
        offsets: &o,
        per_sample_weights: s.as_ref(),
        padding_idx,
        out: &y,
        argmax: a.as_ref(),
    };
    py.detach(|| embag_fwd(&args, Exec::on(stream))).map_err(to_py)
}

/// Backward into a zero-filled `grad_weight`, summing each index's run of `sorted` positions.
#[pyfunction]
#[pyo3(signature = (mode, grad_out, indices, offsets, per_sample_weights, padding_idx, sorted, argmax, grad_weight, stream))]
#[allow(clippy::too_many_arguments)]
fn embag_bwd_into(
    py: Python<'_>,
    mode: u32,
    grad_out: Desc,
    indices: Desc,
    offsets: Desc,
    per_sample_weights: Option<Desc>,
    padding_idx: i32,
    sorted: Desc,
    argmax: Option<Desc>,
    grad_weight: Desc,
    stream: usize,
) -> PyResult<()> {
    let mode = Mode::from_code(mode).map_err(to_py)?;
    let (g, i, o) = (grad_out.to_ref("grad_out")?, indices.to_ref("indices")?, offsets.to_ref("offsets")?);
    let (s, so, a) =
        (opt("per_sample_weights", &per_sample_weights)?, sorted.to_ref("sorted")?, opt("argmax", &argmax)?);
    let gw = grad_weight.to_ref("grad_weight")?;
    let args = EmbagBwd {
        mode,
        grad_out: &g,
        indices: &i,
        offsets: &o,
        per_sample_weights: s.as_ref(),
        padding_idx,
        sorted: &so,
        argmax: a.as_ref(),
        grad_weight: &gw,
    };
    py.detach(|| embag_bwd(&args, Exec::on(stream))).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(embag_fwd_into, m)?)?;
    m.add_function(wrap_pyfunction!(embag_bwd_into, m)?)?;
    Ok(())
}
