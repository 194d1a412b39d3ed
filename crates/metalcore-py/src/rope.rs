//! Binding of RoPE.

use crate::bridge::{opt, to_py, Desc};
use metalcore_core::ops::rope::{rope, Rope, RopeTensor};
use metalcore_core::Exec;
use pyo3::prelude::*;

/// Rotates `q` (and `k`) into `q_out` (`k_out`); the outputs may be the inputs (in place).
/// All four are (batch, heads, seq, head_dim) views; cos/sin one row per token (batch, seq, rot)
/// or, with `position_ids` (batch, seq) int32, a (positions, rot) table.
#[pyfunction]
#[pyo3(signature = (q, q_out, k, k_out, cos, sin, position_ids, interleaved, backward, stream))]
#[allow(clippy::too_many_arguments)]
fn rope_into(
    py: Python<'_>,
    q: Desc,
    q_out: Desc,
    k: Option<Desc>,
    k_out: Option<Desc>,
    cos: Desc,
    sin: Desc,
    position_ids: Option<Desc>,
    interleaved: bool,
    backward: bool,
    stream: usize,
) -> PyResult<()> {
    let (q, qo) = (q.to_ref("q")?, q_out.to_ref("q_out")?);
    let (k, ko) = (opt("k", &k)?, opt("k_out", &k_out)?);
    let (cos, sin, pos) = (cos.to_ref("cos")?, sin.to_ref("sin")?, opt("position_ids", &position_ids)?);
    let k_pair = match (&k, &ko) {
        (Some(k), Some(ko)) => Some(RopeTensor { x: k, out: ko }),
        (None, None) => None,
        _ => return Err(pyo3::exceptions::PyValueError::new_err("k_out: give k and k_out together")),
    };
    let args = Rope {
        q: RopeTensor { x: &q, out: &qo },
        k: k_pair,
        cos: &cos,
        sin: &sin,
        position_ids: pos.as_ref(),
        interleaved,
        backward,
    };
    py.detach(|| rope(&args, Exec::on(stream))).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(rope_into, m)?)?;
    Ok(())
}
