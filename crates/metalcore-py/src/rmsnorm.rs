//! Bindings of the RMSNorm family.

use crate::bridge::{opt, to_py, Desc};
use metalcore_core::ops::rmsnorm::{rms_norm_bwd, rms_norm_bwd_workspace_len, rms_norm_fwd, RmsNormBwd, RmsNormFwd};
use metalcore_core::Exec;
use pyo3::prelude::*;

/// RMSNorm forward (optionally fused with a residual add) into caller-allocated outputs.
#[pyfunction]
#[pyo3(signature = (x, residual, weight, out, residual_out, rstd, eps, offset, cast_before_weight, stream))]
#[allow(clippy::too_many_arguments)]
fn rms_norm_fwd_into(
    py: Python<'_>,
    x: Desc,
    residual: Option<Desc>,
    weight: Option<Desc>,
    out: Desc,
    residual_out: Option<Desc>,
    rstd: Option<Desc>,
    eps: f64,
    offset: f64,
    cast_before_weight: bool,
    stream: usize,
) -> PyResult<()> {
    let (x, y) = (x.to_ref("x")?, out.to_ref("out")?);
    let (residual, weight) = (opt("residual", &residual)?, opt("weight", &weight)?);
    let (residual_out, rstd) = (opt("residual_out", &residual_out)?, opt("rstd", &rstd)?);
    let args = RmsNormFwd {
        x: &x,
        residual: residual.as_ref(),
        weight: weight.as_ref(),
        y: &y,
        residual_out: residual_out.as_ref(),
        rstd: rstd.as_ref(),
        eps,
        offset,
        cast_before_weight,
    };
    py.detach(|| rms_norm_fwd(&args, Exec { stream })).map_err(to_py)
}

struct BwdDescs {
    dy: metalcore_core::TensorRef,
    x: metalcore_core::TensorRef,
    weight: Option<metalcore_core::TensorRef>,
    rstd: metalcore_core::TensorRef,
    dres: Option<metalcore_core::TensorRef>,
    dx: metalcore_core::TensorRef,
    dw: Option<metalcore_core::TensorRef>,
}

impl BwdDescs {
    #[allow(clippy::too_many_arguments)]
    fn new(
        grad_out: Desc,
        x: Desc,
        weight: Option<Desc>,
        rstd: Desc,
        grad_residual_out: Option<Desc>,
        grad_x: Desc,
        grad_weight: Option<Desc>,
    ) -> PyResult<Self> {
        Ok(Self {
            dy: grad_out.to_ref("grad_out")?,
            x: x.to_ref("x")?,
            weight: opt("weight", &weight)?,
            rstd: rstd.to_ref("rstd")?,
            dres: opt("grad_residual_out", &grad_residual_out)?,
            dx: grad_x.to_ref("grad_x")?,
            dw: opt("grad_weight", &grad_weight)?,
        })
    }
    fn args<'a>(&'a self, workspace: Option<&'a metalcore_core::TensorRef>, offset: f64, cast: bool) -> RmsNormBwd<'a> {
        RmsNormBwd {
            dy: &self.dy,
            x: &self.x,
            weight: self.weight.as_ref(),
            rstd: &self.rstd,
            d_residual_out: self.dres.as_ref(),
            dx: &self.dx,
            dw: self.dw.as_ref(),
            workspace,
            offset,
            cast_before_weight: cast,
        }
    }
}

/// Workspace elements (of the accumulation dtype) that `rms_norm_bwd_into` needs for these arguments.
#[pyfunction]
#[pyo3(signature = (grad_out, x, weight, rstd, grad_residual_out, grad_x, grad_weight, offset, cast_before_weight))]
#[allow(clippy::too_many_arguments)]
fn rms_norm_bwd_workspace(
    py: Python<'_>,
    grad_out: Desc,
    x: Desc,
    weight: Option<Desc>,
    rstd: Desc,
    grad_residual_out: Option<Desc>,
    grad_x: Desc,
    grad_weight: Option<Desc>,
    offset: f64,
    cast_before_weight: bool,
) -> PyResult<usize> {
    let d = BwdDescs::new(grad_out, x, weight, rstd, grad_residual_out, grad_x, grad_weight)?;
    let args = d.args(None, offset, cast_before_weight);
    py.detach(|| rms_norm_bwd_workspace_len(&args)).map_err(to_py)
}

/// RMSNorm backward into caller-allocated gradients.
#[pyfunction]
#[pyo3(signature = (grad_out, x, weight, rstd, grad_residual_out, grad_x, grad_weight, workspace, offset, cast_before_weight, stream))]
#[allow(clippy::too_many_arguments)]
fn rms_norm_bwd_into(
    py: Python<'_>,
    grad_out: Desc,
    x: Desc,
    weight: Option<Desc>,
    rstd: Desc,
    grad_residual_out: Option<Desc>,
    grad_x: Desc,
    grad_weight: Option<Desc>,
    workspace: Option<Desc>,
    offset: f64,
    cast_before_weight: bool,
    stream: usize,
) -> PyResult<()> {
    let d = BwdDescs::new(grad_out, x, weight, rstd, grad_residual_out, grad_x, grad_weight)?;
    let ws = opt("workspace", &workspace)?;
    let args = d.args(ws.as_ref(), offset, cast_before_weight);
    py.detach(|| rms_norm_bwd(&args, Exec { stream })).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(rms_norm_fwd_into, m)?)?;
    m.add_function(wrap_pyfunction!(rms_norm_bwd_workspace, m)?)?;
    m.add_function(wrap_pyfunction!(rms_norm_bwd_into, m)?)?;
    Ok(())
}
