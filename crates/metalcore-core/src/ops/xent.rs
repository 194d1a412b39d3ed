//! Cross-entropy over rows of logits, forward and backward: validation and dispatch.
//!
//! For a row `x` of `V` logits with target `t`, label smoothing `ε` and z-loss weight `z`
//! (computed in float32, float64 for float64 logits; per-row loss, lse and scale in that dtype):
//!   `lse = log Σ_j e^(x_j)`,
//!   `loss = (1 − ε)·(lse − x_t) + ε·(lse − Σ_j x_j / V) + z·lse²` (torch's smoothed cross-entropy plus the
//!   PaLM z-loss), and 0 for a row whose target is `ignore_index`;
//!   `∂loss/∂x_j = p_j·(1 + 2z·lse) − ε/V − (1 − ε)·[j = t]` with `p_j = e^(x_j − lse)`.
//! The gradient written is `g_row · ∂loss/∂x` with `g_row = scale[row]` (one value broadcast when
//! the scale has one element), 0 on ignored rows. A target outside `[0, V)` that is not
//! `ignore_index` gives a NaN loss and zero gradient (never an out-of-bounds read); the Python
//! layer reports it before launching.
//!
//! Modes: forward (loss and lse per row); forward with gradient (also the gradient, in one launch:
//! the row is read twice, the second time mostly from L2); backward (the gradient from a saved lse).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{expect_dtype, expect_float, rows_like, rows_of, Mat};
use crate::tensor::{common_device, Device, Exec, TensorRef};

pub struct CrossEntropy<'a> {
    /// `(rows, V)` logits.
    pub logits: &'a TensorRef,
    /// `(rows,)` int32 targets.
    pub target: &'a TensorRef,
    /// `(rows,)` per-row losses in the accumulation dtype (float32, float64 for float64 logits),
    /// written by the forward modes.
    pub loss: &'a TensorRef,
    /// `(rows,)` log-sum-exp per row, accumulation dtype (written by the forward, read by the backward).
    pub lse: &'a TensorRef,
    /// The gradient `(rows, V)` in the logits' dtype (may be the logits themselves).
    pub grad: Option<&'a TensorRef>,
    /// Gradient scale in the accumulation dtype: 1 element (broadcast) or one per row.
    pub scale: Option<&'a TensorRef>,
    /// Backward only, with a broadcast scale: a 1-element tensor (accumulation dtype); when it
    /// equals the scale, the gradient is already in `grad` (written by the fused forward with
    /// that scale) and nothing is done. Read on the device: no host synchronization.
    pub skip_if_scale: Option<&'a TensorRef>,
    pub backward: bool,
    pub ignore_index: i32,
    pub label_smoothing: f64,
    pub z_loss: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Fwd,
    FwdGrad,
    Bwd,
}

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub rows: usize,
    pub cols: usize,
    pub x: Mat,
    pub grad: Option<Mat>,
    pub target: (usize, i64),
    pub loss: (usize, i64),
    pub lse: (usize, i64),
    /// Pointer and stride (0: one value for every row).
    pub scale: (usize, i64),
    /// See [`CrossEntropy::skip_if_scale`] (0: absent).
    pub skip: usize,
    pub ignore_index: i32,
    pub smoothing: f64,
    pub z: f64,
}

impl Plan {
    pub fn acc(&self) -> DType {
        self.x.dtype.compute()
    }
}

/// A 1-D operand of `n` elements of `dtype`: (pointer, stride).
fn vec_of(arg: &'static str, t: &TensorRef, n: usize, dtype: DType) -> Result<(usize, i64)> {
    expect_dtype(arg, t, dtype)?;
    if t.ndim() != 1 || t.shape[0] != n {
        return Err(Error::value(arg, format!("expected shape ({n},), got {:?}", t.shape)));
    }
    Ok((t.ptr, t.strides[0] as i64))
}

impl CrossEntropy<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        let device = common_device(&[
            ("logits", Some(self.logits)),
            ("target", Some(self.target)),
            ("loss", Some(self.loss)),
            ("lse", Some(self.lse)),
            ("grad", self.grad),
            ("scale", self.scale),
            ("skip_if_scale", self.skip_if_scale),
        ])?;
        expect_float("logits", self.logits)?;
        if self.logits.ndim() != 2 {
            return Err(Error::value(
                "logits",
                format!("expected a 2-D (rows, classes) view, got shape {:?}", self.logits.shape),
            ));
        }
        let (r, x) = rows_of("logits", self.logits)?;
        if r.cols > i32::MAX as usize {
            return Err(Error::Unsupported(format!("logits: {} classes (at most {} supported)", r.cols, i32::MAX)));
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(Error::value(
                "label_smoothing",
                format!("expected a value in [0, 1], got {}", self.label_smoothing),
            ));
        }
        let target = vec_of("target", self.target, r.rows, DType::I32)?;
        let acc = self.logits.dtype.compute();
        let loss = vec_of("loss", self.loss, r.rows, acc)?;
        let lse = vec_of("lse", self.lse, r.rows, acc)?;
        let grad = match self.grad {
            Some(g) => {
                expect_dtype("grad", g, self.logits.dtype)?;
                Some(rows_like("grad", g, "logits", self.logits)?)
            }
            None => None,
        };
        let scale = match self.scale {
            Some(s) => {
                expect_dtype("scale", s, acc)?;
                let n = s.numel();
                if s.ndim() != 1 || (n != 1 && n != r.rows) {
                    return Err(Error::value(
                        "scale",
                        format!("expected shape (1,) or ({},), got {:?}", r.rows, s.shape),
                    ));
                }
                (s.ptr, if n == 1 { 0 } else { s.strides[0] as i64 })
            }
            None => (0, 0),
        };
        let mode = match (self.backward, grad.is_some()) {
            (true, true) => Mode::Bwd,
            (false, true) => Mode::FwdGrad,
            (false, false) => Mode::Fwd,
            (true, false) => return Err(Error::value("grad", "the backward needs a gradient output")),
        };
        if mode != Mode::Fwd && self.scale.is_none() {
            return Err(Error::value("scale", "a gradient needs a scale"));
        }
        let skip = match self.skip_if_scale {
            None => 0,
            Some(t) => {
                if mode != Mode::Bwd || scale.1 != 0 || self.scale.is_some_and(|s| s.numel() != 1) {
                    return Err(Error::value(
                        "skip_if_scale",
                        "only for a backward with a broadcast (1-element) scale",
                    ));
                }
                vec_of("skip_if_scale", t, 1, acc)?.0
            }
        };
        let plan = Plan {
            mode,
            rows: r.rows,
            cols: r.cols,
            x,
            grad,
            target,
            loss,
            lse,
            scale,
            skip,
            ignore_index: self.ignore_index,
            smoothing: self.label_smoothing,
            z: self.z_loss,
        };
        Ok((device, plan))
    }
}

pub fn cross_entropy(args: &CrossEntropy<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    if plan.rows == 0 {
        return Ok(());
    }
    if plan.cols == 0 {
        return Err(Error::value("logits", "expected at least one class"));
    }
    match device {
        Device::Cpu => crate::cpu::xent::run(&plan),
        Device::Cuda(ordinal) => crate::cuda::xent::run(&plan, ordinal, exec),
    }
}
