//! Op entry points: validation of the borrowed tensors, then dispatch to a backend by device.
//! One file per op family.

pub mod act;
pub mod adamw;
pub mod embag;
pub mod index;
pub mod linalg;
pub mod norm;
pub mod rope;
pub mod softmax;
pub mod xent;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Rows, TensorRef};

/// A validated matrix operand: pointer, dtype and row stride (in elements) of a `rows × cols` view.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub ptr: usize,
    pub dtype: DType,
    pub row_stride: usize,
}

/// Views `t` as rows with exactly the shape of `like` (same full shape, not only the same row count).
pub(crate) fn rows_like(arg: &'static str, t: &TensorRef, like_arg: &'static str, like: &TensorRef) -> Result<Mat> {
    if t.shape != like.shape {
        return Err(Error::value(
            arg,
            format!("expected shape {:?} (the shape of {like_arg}), got {:?}", like.shape, t.shape),
        ));
    }
    let r = t.as_rows(arg)?;
    Ok(Mat { ptr: t.ptr, dtype: t.dtype, row_stride: r.row_stride })
}

/// Views `t` as rows and returns the view with the operand.
pub(crate) fn rows_of(arg: &'static str, t: &TensorRef) -> Result<(Rows, Mat)> {
    let r = t.as_rows(arg)?;
    Ok((r, Mat { ptr: t.ptr, dtype: t.dtype, row_stride: r.row_stride }))
}

/// A contiguous 1-D operand of length `n`.
pub(crate) fn vector(arg: &'static str, t: &TensorRef, n: usize) -> Result<Mat> {
    if t.ndim() != 1 || t.shape[0] != n {
        return Err(Error::value(arg, format!("expected a 1-D tensor of shape ({n},), got shape {:?}", t.shape)));
    }
    if n > 1 && t.strides[0] != 1 {
        return Err(Error::Unsupported(format!("{arg}: expected a contiguous tensor, got stride {}", t.strides[0])));
    }
    Ok(Mat { ptr: t.ptr, dtype: t.dtype, row_stride: n })
}

/// Requires a floating dtype.
pub(crate) fn expect_float(arg: &'static str, t: &TensorRef) -> Result<()> {
    if !t.dtype.is_float() {
        return Err(Error::dtype(arg, format!("expected a floating dtype, got {}", t.dtype)));
    }
    Ok(())
}

/// Requires `t.dtype == want`.
pub(crate) fn expect_dtype(arg: &'static str, t: &TensorRef, want: DType) -> Result<()> {
    if t.dtype != want {
        return Err(Error::dtype(arg, format!("expected dtype {want}, got {}", t.dtype)));
    }
    Ok(())
}
