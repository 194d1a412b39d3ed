//! Binding of cross-entropy.

use crate::bridge::{opt, to_py, Desc};
use metalcore_core::ops::xent::{cross_entropy, CrossEntropy};
use metalcore_core::Exec;
use pyo3::prelude::*;

/// Per-row loss and lse (forward), and/or the gradient `scale · ∂loss/∂logits` (into `grad`,
/// which may be the logits themselves); `backward` computes the gradient alone from `lse`.
#[pyfunction]
#[pyo3(signature = (logits, target, loss, lse, grad, scale, skip_if_scale, backward, ignore_index, label_smoothing, z_loss, stream))]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_into(
    py: Python<'_>,
    logits: Desc,
    target: Desc,
    loss: Desc,
    lse: Desc,
    grad: Option<Desc>,
    scale: Option<Desc>,
    skip_if_scale: Option<Desc>,
    backward: bool,
    ignore_index: i32,
    label_smoothing: f64,
    z_loss: f64,
    stream: usize,
) -> PyResult<()> {
    let (x, t) = (logits.to_ref("logits")?, target.to_ref("target")?);
    let (l, e) = (loss.to_ref("loss")?, lse.to_ref("lse")?);
    let (g, s) = (opt("grad", &grad)?, opt("scale", &scale)?);
    let skip = opt("skip_if_scale", &skip_if_scale)?;
    let args = CrossEntropy {
        logits: &x,
        target: &t,
        loss: &l,
        lse: &e,
        grad: g.as_ref(),
        scale: s.as_ref(),
        skip_if_scale: skip.as_ref(),
        backward,
        ignore_index,
        label_smoothing,
        z_loss,
    };
    py.detach(|| cross_entropy(&args, Exec::on(stream))).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cross_entropy_into, m)?)?;
    Ok(())
}
