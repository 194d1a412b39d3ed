//! Softmax over the last dimension of a row view (the Python layer moves any other `dim` last):
//! validation and backend dispatch.
//!
//! Forward: `y = exp(x − max(x)) / Σ exp(x − max(x))`; backward: `dx = y · (dy − Σ dy·y)`.
//! Accumulation is in float32 (float64 for float64 inputs); outputs take the input's dtype.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{expect_dtype, expect_float, rows_like, rows_of, Mat};
use crate::tensor::{common_device, Device, Exec, TensorRef};

/// Arguments of the forward pass (the output is allocated by the caller).
pub struct SoftmaxFwd<'a> {
    pub x: &'a TensorRef,
    pub y: &'a TensorRef,
}

/// Arguments of the backward pass.
pub struct SoftmaxBwd<'a> {
    /// The forward's output.
    pub y: &'a TensorRef,
    pub dy: &'a TensorRef,
    pub dx: &'a TensorRef,
}

/// A validated forward call.
#[derive(Clone, Copy, Debug)]
pub struct FwdPlan {
    pub rows: usize,
    pub cols: usize,
    pub x: Mat,
    pub y: Mat,
    pub acc: DType,
}

/// A validated backward call.
#[derive(Clone, Copy, Debug)]
pub struct BwdPlan {
    pub rows: usize,
    pub cols: usize,
    pub y: Mat,
    pub dy: Mat,
    pub dx: Mat,
    pub acc: DType,
}

/// The kernels index columns with 32-bit integers.
fn check_cols(cols: usize) -> Result<()> {
    if cols > i32::MAX as usize {
        return Err(Error::Unsupported(format!("x: rows of {cols} elements (at most {} supported)", i32::MAX)));
    }
    Ok(())
}

impl SoftmaxFwd<'_> {
    pub fn plan(&self) -> Result<(Device, FwdPlan)> {
        let device = common_device(&[("x", Some(self.x)), ("out", Some(self.y))])?;
        expect_float("x", self.x)?;
        let (r, x) = rows_of("x", self.x)?;
        check_cols(r.cols)?;
        expect_dtype("out", self.y, self.x.dtype)?;
        let y = rows_like("out", self.y, "x", self.x)?;
        Ok((device, FwdPlan { rows: r.rows, cols: r.cols, x, y, acc: self.x.dtype.compute() }))
    }
}

impl SoftmaxBwd<'_> {
    pub fn plan(&self) -> Result<(Device, BwdPlan)> {
        let device = common_device(&[("y", Some(self.y)), ("grad_out", Some(self.dy)), ("grad_x", Some(self.dx))])?;
        expect_float("y", self.y)?;
        let (r, y) = rows_of("y", self.y)?;
        check_cols(r.cols)?;
        expect_dtype("grad_out", self.dy, self.y.dtype)?;
        expect_dtype("grad_x", self.dx, self.y.dtype)?;
        let dy = rows_like("grad_out", self.dy, "y", self.y)?;
        let dx = rows_like("grad_x", self.dx, "y", self.y)?;
        Ok((device, BwdPlan { rows: r.rows, cols: r.cols, y, dy, dx, acc: self.y.dtype.compute() }))
    }
}

/// Runs the forward pass on the tensors' device.
pub fn softmax_fwd(args: &SoftmaxFwd<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    if plan.rows == 0 || plan.cols == 0 {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::softmax::fwd(&plan),
        Device::Cuda(ordinal) => crate::cuda::softmax::fwd(&plan, ordinal, exec),
    }
}

/// Runs the backward pass on the tensors' device.
pub fn softmax_bwd(args: &SoftmaxBwd<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    if plan.rows == 0 || plan.cols == 0 {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::softmax::bwd(&plan),
        Device::Cuda(ordinal) => crate::cuda::softmax::bwd(&plan, ordinal, exec),
    }
}
