//! Bindings of the row normalizations (RMSNorm, LayerNorm).

use crate::bridge::{opt, to_py, Desc};
use metalcore_core::ops::norm::{
    bwd_workspace_len, run_bwd, run_fwd, BwdPlan, BwdPtrs, FwdPlan, FwdPtrs, NormBwd, NormFwd, NormKind,
};
use metalcore_core::{Device, Exec, TensorRef};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn parse_kind(kind: &str) -> PyResult<NormKind> {
    match kind {
        "rms" => Ok(NormKind::Rms),
        "layer" => Ok(NormKind::Layer),
        _ => Err(PyValueError::new_err(format!("kind: expected 'rms' or 'layer', got {kind:?}"))),
    }
}

/// A forward call validated once (`norm_fwd_plan`), launched on new tensors of the same shapes,
/// strides, dtypes and device by their data pointers alone.
#[pyclass(frozen)]
struct NormFwdPlan {
    device: Device,
    plan: FwdPlan,
}

#[pymethods]
impl NormFwdPlan {
    /// Launches on these data pointers (0 for an absent tensor), in `norm_fwd_plan`'s order. The
    /// caller vouches that they belong to tensors like the ones the plan was made from.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        py: Python<'_>,
        x: usize,
        residual: usize,
        weight: usize,
        bias: usize,
        out: usize,
        residual_out: usize,
        mean: usize,
        rstd: usize,
        stream: usize,
    ) -> PyResult<()> {
        let ptrs = FwdPtrs { x, residual, weight, bias, y: out, residual_out, mean, rstd };
        let plan = self.plan.rebind(&ptrs).map_err(to_py)?;
        py.detach(|| run_fwd(self.device, &plan, Exec::on(stream))).map_err(to_py)
    }
}

/// Validates a forward pass (optionally fused with a residual add) into caller-allocated outputs,
/// as a reusable plan (`NormFwdPlan.launch` runs it).
#[pyfunction]
#[pyo3(signature = (kind, x, residual, weight, bias, out, residual_out, mean, rstd, eps, offset, cast_before_weight))]
#[allow(clippy::too_many_arguments)]
fn norm_fwd_plan(
    kind: &str,
    x: Desc,
    residual: Option<Desc>,
    weight: Option<Desc>,
    bias: Option<Desc>,
    out: Desc,
    residual_out: Option<Desc>,
    mean: Option<Desc>,
    rstd: Option<Desc>,
    eps: f64,
    offset: f64,
    cast_before_weight: bool,
) -> PyResult<NormFwdPlan> {
    let kind = parse_kind(kind)?;
    let (x, y) = (x.to_ref("x")?, out.to_ref("out")?);
    let (residual, weight, bias) = (opt("residual", &residual)?, opt("weight", &weight)?, opt("bias", &bias)?);
    let residual_out = opt("residual_out", &residual_out)?;
    let (mean, rstd) = (opt("mean", &mean)?, opt("rstd", &rstd)?);
    let args = NormFwd {
        kind,
        x: &x,
        residual: residual.as_ref(),
        weight: weight.as_ref(),
        bias: bias.as_ref(),
        y: &y,
        residual_out: residual_out.as_ref(),
        mean: mean.as_ref(),
        rstd: rstd.as_ref(),
        eps,
        offset,
        cast_before_weight,
    };
    let (device, plan) = args.plan().map_err(to_py)?;
    Ok(NormFwdPlan { device, plan })
}

/// The backward's tensors, converted once.
struct BwdRefs {
    kind: NormKind,
    dy: TensorRef,
    x: TensorRef,
    weight: Option<TensorRef>,
    mean: Option<TensorRef>,
    rstd: TensorRef,
    dres: Option<TensorRef>,
    dx: TensorRef,
    dw: Option<TensorRef>,
    db: Option<TensorRef>,
}

impl BwdRefs {
    fn args<'a>(&'a self, workspace: Option<&'a TensorRef>, offset: f64, cast: bool) -> NormBwd<'a> {
        NormBwd {
            kind: self.kind,
            dy: &self.dy,
            x: &self.x,
            weight: self.weight.as_ref(),
            mean: self.mean.as_ref(),
            rstd: &self.rstd,
            d_residual_out: self.dres.as_ref(),
            dx: &self.dx,
            dw: self.dw.as_ref(),
            db: self.db.as_ref(),
            workspace,
            offset,
            cast_before_weight: cast,
        }
    }
}

/// `(kind, grad_out, x, weight, mean, rstd, grad_residual_out, grad_x, grad_weight, grad_bias)`.
type BwdDescs = (String, Desc, Desc, Option<Desc>, Option<Desc>, Desc, Option<Desc>, Desc, Option<Desc>, Option<Desc>);

fn bwd_refs(d: BwdDescs) -> PyResult<BwdRefs> {
    let (kind, dy, x, weight, mean, rstd, dres, dx, dw, db) = d;
    Ok(BwdRefs {
        kind: parse_kind(&kind)?,
        dy: dy.to_ref("grad_out")?,
        x: x.to_ref("x")?,
        weight: opt("weight", &weight)?,
        mean: opt("mean", &mean)?,
        rstd: rstd.to_ref("rstd")?,
        dres: opt("grad_residual_out", &dres)?,
        dx: dx.to_ref("grad_x")?,
        dw: opt("grad_weight", &dw)?,
        db: opt("grad_bias", &db)?,
    })
}

/// A backward call validated once (`norm_bwd_plan`), launched by data pointers alone.
#[pyclass(frozen)]
struct NormBwdPlan {
    device: Device,
    plan: BwdPlan,
    /// Workspace elements (of the accumulation dtype) that `launch` needs (0: none).
    #[pyo3(get)]
    workspace_len: usize,
}

#[pymethods]
impl NormBwdPlan {
    /// Launches on these data pointers (0 for an absent tensor), in the order of `norm_bwd_plan`'s
    /// tensors, with the workspace as (pointer, elements). The caller vouches that they belong to
    /// tensors like the ones the plan was made from.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        py: Python<'_>,
        grad_out: usize,
        x: usize,
        weight: usize,
        mean: usize,
        rstd: usize,
        grad_residual_out: usize,
        grad_x: usize,
        grad_weight: usize,
        grad_bias: usize,
        workspace: (usize, usize),
        stream: usize,
    ) -> PyResult<()> {
        let ptrs = BwdPtrs {
            dy: grad_out,
            x,
            weight,
            mean,
            rstd,
            d_residual_out: grad_residual_out,
            dx: grad_x,
            dw: grad_weight,
            db: grad_bias,
            workspace,
        };
        let plan = self.plan.rebind(&ptrs).map_err(to_py)?;
        py.detach(|| run_bwd(self.device, &plan, Exec::on(stream))).map_err(to_py)
    }
}

/// Validates a backward pass into caller-allocated gradients, given as the tuple `(kind, grad_out,
/// x, weight, mean, rstd, grad_residual_out, grad_x, grad_weight, grad_bias)`, as a reusable plan
/// (`NormBwdPlan.launch` runs it with a workspace of `workspace_len` elements).
#[pyfunction]
#[pyo3(signature = (tensors, offset, cast_before_weight))]
fn norm_bwd_plan(py: Python<'_>, tensors: BwdDescs, offset: f64, cast_before_weight: bool) -> PyResult<NormBwdPlan> {
    let r = bwd_refs(tensors)?;
    let (device, plan) = r.args(None, offset, cast_before_weight).plan().map_err(to_py)?;
    let workspace_len = py.detach(|| bwd_workspace_len(device, &plan)).map_err(to_py)?;
    Ok(NormBwdPlan { device, plan, workspace_len })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(norm_fwd_plan, m)?)?;
    m.add_function(wrap_pyfunction!(norm_bwd_plan, m)?)?;
    m.add_class::<NormFwdPlan>()?;
    m.add_class::<NormBwdPlan>()?;
    Ok(())
}
