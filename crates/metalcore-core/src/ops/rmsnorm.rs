//! RMSNorm, optionally fused with a residual add: validation and backend dispatch.
//!
//! Forward, per row `x` of length `n` (with `s = x + residual` first when fused):
//!   `r = 1 / sqrt(mean(x²) + eps)`, `x̂ = x · r`, and
//!   - Llama casting (`cast_before_weight`): `y = (w + offset) · round_to_dtype(x)(x̂)`;
//!   - Gemma casting: `y = x̂ · (w + offset)`, rounded only once, to `y`'s dtype.
//!   `r` is saved per row (`rstd`) for the backward pass.
//! Backward, with `g = dy · (w + offset)` (or `dy` without weight):
//!   `dx = r · (g − x̂ · mean(g · x̂)) [+ d_residual_out]`, `dw = Σ_rows dy · x̂` (x̂ rounded as in forward).
//! Accumulation is in float32 (float64 for float64 inputs).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{expect_dtype, rows_like, rows_of, vector, Mat};
use crate::tensor::{common_device, Device, Exec, TensorRef};

/// Arguments of the forward pass. Outputs are allocated by the caller.
pub struct RmsNormFwd<'a> {
    pub x: &'a TensorRef,
    /// When present, the op normalizes `x + residual` and writes that sum to `residual_out`.
    pub residual: Option<&'a TensorRef>,
    pub weight: Option<&'a TensorRef>,
    pub y: &'a TensorRef,
    pub residual_out: Option<&'a TensorRef>,
    /// Per-row `1/rms`, in the accumulation dtype; written only when present.
    pub rstd: Option<&'a TensorRef>,
    pub eps: f64,
    pub offset: f64,
    pub cast_before_weight: bool,
}

/// Arguments of the backward pass.
pub struct RmsNormBwd<'a> {
    pub dy: &'a TensorRef,
    /// The tensor that was normalized (for the fused op, `residual_out`).
    pub x: &'a TensorRef,
    pub weight: Option<&'a TensorRef>,
    pub rstd: &'a TensorRef,
    /// Gradient flowing into `residual_out` of the fused op, added to `dx`.
    pub d_residual_out: Option<&'a TensorRef>,
    pub dx: &'a TensorRef,
    pub dw: Option<&'a TensorRef>,
    /// Scratch in the accumulation dtype, at least [`bwd_workspace_len`] elements (CUDA only).
    pub workspace: Option<&'a TensorRef>,
    pub offset: f64,
    pub cast_before_weight: bool,
}

/// A validated forward call.
#[derive(Clone, Copy, Debug)]
pub struct FwdPlan {
    pub rows: usize,
    pub cols: usize,
    pub x: Mat,
    pub residual: Option<Mat>,
    pub weight: Option<Mat>,
    pub y: Mat,
    pub residual_out: Option<Mat>,
    pub rstd: Option<usize>,
    pub acc: DType,
    pub eps: f64,
    pub offset: f64,
    pub cast_before_weight: bool,
}

/// A validated backward call.
#[derive(Clone, Copy, Debug)]
pub struct BwdPlan {
    pub rows: usize,
    pub cols: usize,
    pub dy: Mat,
    pub x: Mat,
    pub weight: Option<Mat>,
    pub rstd: usize,
    pub d_residual_out: Option<Mat>,
    pub dx: Mat,
    pub dw: Option<Mat>,
    pub workspace: Option<(usize, usize)>,
    pub acc: DType,
    pub offset: f64,
    pub cast_before_weight: bool,
}

fn check_rstd(t: &TensorRef, rows: usize, acc: DType) -> Result<usize> {
    expect_dtype("rstd", t, acc)?;
    if t.numel() != rows || !t.is_contiguous() {
        return Err(Error::value(
            "rstd",
            format!("expected a contiguous tensor of {rows} elements, got shape {:?}", t.shape),
        ));
    }
    Ok(t.ptr)
}

impl RmsNormFwd<'_> {
    pub fn plan(&self) -> Result<(Device, FwdPlan)> {
        let device = common_device(&[
            ("x", Some(self.x)),
            ("residual", self.residual),
            ("weight", self.weight),
            ("out", Some(self.y)),
            ("residual_out", self.residual_out),
            ("rstd", self.rstd),
        ])?;
        let (r, x) = rows_of("x", self.x)?;
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(Error::value("eps", format!("expected a finite, non-negative number, got {}", self.eps)));
        }
        if !self.offset.is_finite() {
            return Err(Error::value("offset", format!("expected a finite number, got {}", self.offset)));
        }
        let residual = match self.residual {
            Some(t) => {
                expect_dtype("residual", t, self.x.dtype)?;
                Some(rows_like("residual", t, "x", self.x)?)
            }
            None => None,
        };
        let residual_out = match (self.residual, self.residual_out) {
            (Some(_), Some(t)) => {
                expect_dtype("residual_out", t, self.x.dtype)?;
                Some(rows_like("residual_out", t, "x", self.x)?)
            }
            (None, None) => None,
            (Some(_), None) => return Err(Error::value("residual_out", "required when residual is given")),
            (None, Some(_)) => return Err(Error::value("residual_out", "given without residual")),
        };
        let weight = self.weight.map(|w| vector("weight", w, r.cols)).transpose()?;
        let y = rows_like("out", self.y, "x", self.x)?;
        let acc = self.x.dtype.compute();
        let rstd = self.rstd.map(|t| check_rstd(t, r.rows, acc)).transpose()?;
        Ok((
            device,
            FwdPlan {
                rows: r.rows,
                cols: r.cols,
                x,
                residual,
                weight,
                y,
                residual_out,
                rstd,
                acc,
                eps: self.eps,
                offset: self.offset,
                cast_before_weight: self.cast_before_weight,
            },
        ))
    }
}

impl RmsNormBwd<'_> {
    pub fn plan(&self) -> Result<(Device, BwdPlan)> {
        let device = common_device(&[
            ("grad_out", Some(self.dy)),
            ("x", Some(self.x)),
            ("weight", self.weight),
            ("rstd", Some(self.rstd)),
            ("grad_residual_out", self.d_residual_out),
            ("grad_x", Some(self.dx)),
            ("grad_weight", self.dw),
            ("workspace", self.workspace),
        ])?;
        let (r, x) = rows_of("x", self.x)?;
        let dy = rows_like("grad_out", self.dy, "x", self.x)?;
        let dx = rows_like("grad_x", self.dx, "x", self.x)?;
        let d_residual_out = self.d_residual_out.map(|t| rows_like("grad_residual_out", t, "x", self.x)).transpose()?;
        let weight = self.weight.map(|w| vector("weight", w, r.cols)).transpose()?;
        let dw = match (self.weight, self.dw) {
            (_, None) => None,
            (Some(_), Some(t)) => Some(vector("grad_weight", t, r.cols)?),
            (None, Some(_)) => return Err(Error::value("grad_weight", "given without weight")),
        };
        let acc = self.x.dtype.compute();
        let rstd = check_rstd(self.rstd, r.rows, acc)?;
        let workspace = match self.workspace {
            Some(t) => {
                expect_dtype("workspace", t, acc)?;
                if !t.is_contiguous() {
                    return Err(Error::value("workspace", "expected a contiguous tensor"));
                }
                Some((t.ptr, t.numel()))
            }
            None => None,
        };
        Ok((
            device,
            BwdPlan {
                rows: r.rows,
                cols: r.cols,
                dy,
                x,
                weight,
                rstd,
                d_residual_out,
                dx,
                dw,
                workspace,
                acc,
                offset: self.offset,
                cast_before_weight: self.cast_before_weight,
            },
        ))
    }
}

/// Runs the forward pass on the tensors' device.
pub fn rms_norm_fwd(args: &RmsNormFwd<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    if plan.rows == 0 {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::rmsnorm::fwd(&plan),
        Device::Cuda(ordinal) => crate::cuda::rmsnorm::fwd(&plan, ordinal, exec),
    }
}

/// Runs the backward pass on the tensors' device.
pub fn rms_norm_bwd(args: &RmsNormBwd<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    match device {
        Device::Cpu => crate::cpu::rmsnorm::bwd(&plan),
        Device::Cuda(ordinal) => crate::cuda::rmsnorm::bwd(&plan, ordinal, exec),
    }
}

/// Number of workspace elements (of the accumulation dtype) that [`rms_norm_bwd`] needs for these
/// arguments (their `workspace` is ignored).
pub fn rms_norm_bwd_workspace_len(args: &RmsNormBwd<'_>) -> Result<usize> {
    let (device, plan) = args.plan()?;
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(ordinal) => crate::cuda::rmsnorm::bwd_workspace_len(&plan, ordinal),
    }
}
