//! Row normalizations — RMSNorm and LayerNorm — optionally fused with a residual add: validation
//! and backend dispatch. Both share one plan, one CPU implementation and one CUDA kernel family.
//!
//! RMSNorm forward, per row `x` of length `n` (with `s = x + residual` first when fused):
//!   `r = 1 / sqrt(mean(x²) + eps)`, `x̂ = x · r`, and
//!   - Llama casting (`cast_before_weight`): `y = (w + offset) · round_to_dtype(x)(x̂)`;
//!   - Gemma casting: `y = x̂ · (w + offset)`, rounded only once, to `y`'s dtype.
//!   `r` is saved per row (`rstd`) for the backward pass.
//! Backward, with `g = dy · (w + offset)` (or `dy` without weight):
//!   `dx = r · (g − x̂ · mean(g · x̂)) [+ d_residual_out]`, `dw = Σ_rows dy · x̂` (x̂ rounded as in forward).
//! LayerNorm (`NormKind::Layer`, always rounded once at the end, as torch does):
//!   `μ = mean(x)`, `r = 1 / sqrt(mean((x − μ)²) + eps)`, `x̂ = (x − μ) · r`, `y = x̂ · (w + offset) + b`;
//!   `μ` and `r` are saved per row. Backward, with `g = dy · (w + offset)`:
//!   `dx = r · (g − mean(g) − x̂ · mean(g · x̂)) [+ d_residual_out]`, `dw = Σ_rows dy · x̂`, `db = Σ_rows dy`.
//! Accumulation is in float32 (float64 for float64 inputs).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{expect_dtype, expect_float, rows_like, rows_of, vector, Mat};
use crate::tensor::{common_device, Device, Exec, TensorRef};

/// Which normalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    Rms,
    Layer,
}

/// Arguments of the forward pass. Outputs are allocated by the caller.
pub struct NormFwd<'a> {
    pub kind: NormKind,
    pub x: &'a TensorRef,
    /// When present, the op normalizes `x + residual` and writes that sum to `residual_out`.
    pub residual: Option<&'a TensorRef>,
    pub weight: Option<&'a TensorRef>,
    /// LayerNorm only; same dtype as the weight.
    pub bias: Option<&'a TensorRef>,
    pub y: &'a TensorRef,
    pub residual_out: Option<&'a TensorRef>,
    /// LayerNorm: per-row mean, in the accumulation dtype; written only when present (with `rstd`).
    pub mean: Option<&'a TensorRef>,
    /// Per-row `1/rms` (LayerNorm: `1/std`), in the accumulation dtype; written only when present.
    pub rstd: Option<&'a TensorRef>,
    pub eps: f64,
    pub offset: f64,
    pub cast_before_weight: bool,
}

/// Arguments of the backward pass.
pub struct NormBwd<'a> {
    pub kind: NormKind,
    pub dy: &'a TensorRef,
    /// The tensor that was normalized (for the fused op, `residual_out`).
    pub x: &'a TensorRef,
    pub weight: Option<&'a TensorRef>,
    /// LayerNorm: the forward's per-row mean (required).
    pub mean: Option<&'a TensorRef>,
    pub rstd: &'a TensorRef,
    /// Gradient flowing into `residual_out` of the fused op, added to `dx`.
    pub d_residual_out: Option<&'a TensorRef>,
    pub dx: &'a TensorRef,
    pub dw: Option<&'a TensorRef>,
    /// LayerNorm: gradient of the bias (same dtype and shape as the weight's gradient would have).
    pub db: Option<&'a TensorRef>,
    /// Scratch in the accumulation dtype, at least [`bwd_workspace_len`] elements (CUDA only).
    pub workspace: Option<&'a TensorRef>,
    pub offset: f64,
    pub cast_before_weight: bool,
}

/// A validated forward call.
#[derive(Clone, Copy, Debug)]
pub struct FwdPlan {
    pub kind: NormKind,
    pub rows: usize,
    pub cols: usize,
    pub x: Mat,
    pub residual: Option<Mat>,
    pub weight: Option<Mat>,
    pub bias: Option<Mat>,
    pub y: Mat,
    pub residual_out: Option<Mat>,
    pub mean: Option<usize>,
    pub rstd: Option<usize>,
    pub acc: DType,
    pub eps: f64,
    pub offset: f64,
    pub cast_before_weight: bool,
}

/// A validated backward call.
#[derive(Clone, Copy, Debug)]
pub struct BwdPlan {
    pub kind: NormKind,
    pub rows: usize,
    pub cols: usize,
    pub dy: Mat,
    pub x: Mat,
    pub weight: Option<Mat>,
    pub mean: Option<usize>,
    pub rstd: usize,
    pub d_residual_out: Option<Mat>,
    pub dx: Mat,
    pub dw: Option<Mat>,
    pub db: Option<Mat>,
    pub workspace: Option<(usize, usize)>,
    pub acc: DType,
    pub offset: f64,
    pub cast_before_weight: bool,
}

/// A per-row statistic (`mean`, `rstd`): contiguous, `rows` elements of the accumulation dtype.
fn check_stat(arg: &'static str, t: &TensorRef, rows: usize, acc: DType) -> Result<usize> {
    expect_dtype(arg, t, acc)?;
    if t.numel() != rows || !t.is_contiguous() {
        return Err(Error::value(
            arg,
            format!("expected a contiguous tensor of {rows} elements, got shape {:?}", t.shape),
        ));
    }
    Ok(t.ptr)
}

/// Checks the LayerNorm-only arguments against `kind`, and the flags that only RMSNorm has.
fn check_kind(kind: NormKind, cast_before_weight: bool, layer_only: &[(&'static str, bool)]) -> Result<()> {
    match kind {
        NormKind::Rms => {
            if let Some((arg, _)) = layer_only.iter().find(|(_, given)| *given) {
                return Err(Error::value(arg, "only LayerNorm takes this argument"));
            }
        }
        NormKind::Layer => {
            if cast_before_weight {
                return Err(Error::value("cast_before_weight", "LayerNorm rounds once, at the end: expected false"));
            }
        }
    }
    Ok(())
}

impl NormFwd<'_> {
    pub fn plan(&self) -> Result<(Device, FwdPlan)> {
        let device = common_device(&[
            ("x", Some(self.x)),
            ("residual", self.residual),
            ("weight", self.weight),
            ("bias", self.bias),
            ("out", Some(self.y)),
            ("residual_out", self.residual_out),
            ("mean", self.mean),
            ("rstd", self.rstd),
        ])?;
        check_kind(
            self.kind,
            self.cast_before_weight,
            &[("bias", self.bias.is_some()), ("mean", self.mean.is_some())],
        )?;
        for (arg, t) in [
            ("x", Some(self.x)),
            ("residual", self.residual),
            ("weight", self.weight),
            ("bias", self.bias),
            ("out", Some(self.y)),
        ] {
            if let Some(t) = t {
                expect_float(arg, t)?;
            }
        }
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
        let bias = self.bias.map(|b| vector("bias", b, r.cols)).transpose()?;
        if let (Some(w), Some(b)) = (weight, bias) {
            if w.dtype != b.dtype {
                return Err(Error::dtype(
                    "bias",
                    format!("expected dtype {} (the dtype of weight), got {}", w.dtype, b.dtype),
                ));
            }
        }
        let y = rows_like("out", self.y, "x", self.x)?;
        let acc = self.x.dtype.compute();
        let mean = self.mean.map(|t| check_stat("mean", t, r.rows, acc)).transpose()?;
        let rstd = self.rstd.map(|t| check_stat("rstd", t, r.rows, acc)).transpose()?;
        if self.kind == NormKind::Layer && mean.is_some() != rstd.is_some() {
            return Err(Error::value("mean", "LayerNorm saves mean and rstd together: give both or neither"));
        }
        Ok((
            device,
            FwdPlan {
                kind: self.kind,
                rows: r.rows,
                cols: r.cols,
                x,
                residual,
                weight,
                bias,
                y,
                residual_out,
                mean,
                rstd,
                acc,
                eps: self.eps,
                offset: self.offset,
                cast_before_weight: self.cast_before_weight,
            },
        ))
    }
}

impl NormBwd<'_> {
    pub fn plan(&self) -> Result<(Device, BwdPlan)> {
        let device = common_device(&[
            ("grad_out", Some(self.dy)),
            ("x", Some(self.x)),
            ("weight", self.weight),
            ("mean", self.mean),
            ("rstd", Some(self.rstd)),
            ("grad_residual_out", self.d_residual_out),
            ("grad_x", Some(self.dx)),
            ("grad_weight", self.dw),
            ("grad_bias", self.db),
            ("workspace", self.workspace),
        ])?;
        check_kind(
            self.kind,
            self.cast_before_weight,
            &[("mean", self.mean.is_some()), ("grad_bias", self.db.is_some())],
        )?;
        for (arg, t) in [
            ("grad_out", Some(self.dy)),
            ("x", Some(self.x)),
            ("weight", self.weight),
            ("grad_residual_out", self.d_residual_out),
            ("grad_x", Some(self.dx)),
        ] {
            if let Some(t) = t {
                expect_float(arg, t)?;
            }
        }
        let (r, x) = rows_of("x", self.x)?;
        let dy = rows_like("grad_out", self.dy, "x", self.x)?;
        let dx = rows_like("grad_x", self.dx, "x", self.x)?;
        let d_residual_out = self.d_residual_out.map(|t| rows_like("grad_residual_out", t, "x", self.x)).transpose()?;
        let weight = self.weight.map(|w| vector("weight", w, r.cols)).transpose()?;
        let dw = match (self.weight, self.dw) {
            (_, None) => None,
            (Some(w), Some(t)) => {
                expect_dtype("grad_weight", t, w.dtype)?;
                Some(vector("grad_weight", t, r.cols)?)
            }
            (None, Some(_)) => return Err(Error::value("grad_weight", "given without weight")),
        };
        let db = self.db.map(|t| vector("grad_bias", t, r.cols)).transpose()?;
        if let (Some(db), Some(p)) = (db, weight.or(dw)) {
            if db.dtype != p.dtype {
                return Err(Error::dtype(
                    "grad_bias",
                    format!("expected dtype {} (the dtype of weight), got {}", p.dtype, db.dtype),
                ));
            }
        }
        let acc = self.x.dtype.compute();
        let rstd = check_stat("rstd", self.rstd, r.rows, acc)?;
        let mean = match (self.kind, self.mean) {
            (NormKind::Layer, None) => return Err(Error::value("mean", "LayerNorm's backward needs the saved mean")),
            (_, m) => m.map(|t| check_stat("mean", t, r.rows, acc)).transpose()?,
        };
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
                kind: self.kind,
                rows: r.rows,
                cols: r.cols,
                dy,
                x,
                weight,
                mean,
                rstd,
                d_residual_out,
                dx,
                dw,
                db,
                workspace,
                acc,
                offset: self.offset,
                cast_before_weight: self.cast_before_weight,
            },
        ))
    }
}

/// The pointer of an optional operand that a plan has (`Some`) or lacks (`None`): `ptr` must be
/// non-zero exactly when the operand is present.
fn rebind_opt<T: Copy>(
    arg: &'static str,
    had: Option<T>,
    ptr: usize,
    set: impl FnOnce(T, usize) -> T,
) -> Result<Option<T>> {
    match (had, ptr) {
        (None, 0) => Ok(None),
        (Some(m), p) if p != 0 => Ok(Some(set(m, p))),
        (None, _) => Err(Error::value(arg, "given, but the plan was made without it")),
        (Some(_), _) => Err(Error::value(arg, "missing, but the plan was made with it")),
    }
}

fn with_ptr(m: Mat, ptr: usize) -> Mat {
    Mat { ptr, ..m }
}

/// Pointers of a forward call, in [`NormFwd`]'s order (0 for an absent tensor).
#[derive(Clone, Copy, Debug)]
pub struct FwdPtrs {
    pub x: usize,
    pub residual: usize,
    pub weight: usize,
    pub bias: usize,
    pub y: usize,
    pub residual_out: usize,
    pub mean: usize,
    pub rstd: usize,
}

impl FwdPlan {
    /// The same call on other tensors of identical shapes, strides, dtypes and device (the caller
    /// vouches for that; `ptrs` must give exactly the operands the plan has). Lets a caller validate
    /// a call signature once and then launch with new pointers only.
    pub fn rebind(&self, p: &FwdPtrs) -> Result<FwdPlan> {
        if p.x == 0 || p.y == 0 {
            return Err(Error::value("x", "null data pointer"));
        }
        Ok(FwdPlan {
            x: with_ptr(self.x, p.x),
            residual: rebind_opt("residual", self.residual, p.residual, with_ptr)?,
            weight: rebind_opt("weight", self.weight, p.weight, with_ptr)?,
            bias: rebind_opt("bias", self.bias, p.bias, with_ptr)?,
            y: with_ptr(self.y, p.y),
            residual_out: rebind_opt("residual_out", self.residual_out, p.residual_out, with_ptr)?,
            mean: rebind_opt("mean", self.mean, p.mean, |_, q| q)?,
            rstd: rebind_opt("rstd", self.rstd, p.rstd, |_, q| q)?,
            ..*self
        })
    }
}

/// Pointers of a backward call, in [`NormBwd`]'s order (0 for an absent tensor); the workspace
/// as (pointer, elements).
#[derive(Clone, Copy, Debug)]
pub struct BwdPtrs {
    pub dy: usize,
    pub x: usize,
    pub weight: usize,
    pub mean: usize,
    pub rstd: usize,
    pub d_residual_out: usize,
    pub dx: usize,
    pub dw: usize,
    pub db: usize,
    pub workspace: (usize, usize),
}

impl BwdPlan {
    /// As [`FwdPlan::rebind`]. The workspace may be absent only when the plan had none.
    pub fn rebind(&self, p: &BwdPtrs) -> Result<BwdPlan> {
        if p.dy == 0 || p.x == 0 || p.dx == 0 || p.rstd == 0 {
            return Err(Error::value("x", "null data pointer"));
        }
        Ok(BwdPlan {
            dy: with_ptr(self.dy, p.dy),
            x: with_ptr(self.x, p.x),
            weight: rebind_opt("weight", self.weight, p.weight, with_ptr)?,
            mean: rebind_opt("mean", self.mean, p.mean, |_, q| q)?,
            rstd: p.rstd,
            d_residual_out: rebind_opt("grad_residual_out", self.d_residual_out, p.d_residual_out, with_ptr)?,
            dx: with_ptr(self.dx, p.dx),
            dw: rebind_opt("grad_weight", self.dw, p.dw, with_ptr)?,
            db: rebind_opt("grad_bias", self.db, p.db, with_ptr)?,
            workspace: if p.workspace.0 == 0 { None } else { Some(p.workspace) },
            ..*self
        })
    }
}

/// Runs the forward pass on the tensors' device.
pub fn norm_fwd(args: &NormFwd<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    run_fwd(device, &plan, exec)
}

/// Runs a validated forward plan.
pub fn run_fwd(device: Device, plan: &FwdPlan, exec: Exec) -> Result<()> {
    if plan.rows == 0 {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::norm::fwd(plan),
        Device::Cuda(ordinal) => crate::cuda::norm::fwd(plan, ordinal, exec),
    }
}

/// Runs the backward pass on the tensors' device.
pub fn norm_bwd(args: &NormBwd<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    run_bwd(device, &plan, exec)
}

/// Runs a validated backward plan.
pub fn run_bwd(device: Device, plan: &BwdPlan, exec: Exec) -> Result<()> {
    match device {
        Device::Cpu => crate::cpu::norm::bwd(plan),
        Device::Cuda(ordinal) => crate::cuda::norm::bwd(plan, ordinal, exec),
    }
}

/// Number of workspace elements (of the accumulation dtype) that a validated backward plan needs
/// (its own `workspace` is ignored).
pub fn bwd_workspace_len(device: Device, plan: &BwdPlan) -> Result<usize> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(ordinal) => crate::cuda::norm::bwd_workspace_len(plan, ordinal),
    }
}
