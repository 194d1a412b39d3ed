//! Tensor descriptors: memory that the caller (PyTorch) owns, borrowed for the duration of one op.
//! The core never allocates or frees device memory.

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Where a tensor's memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    /// Parses PyTorch's device type and index.
    pub fn parse(arg: &'static str, kind: &str, index: i64) -> Result<Self> {
        match kind {
            "cpu" => Ok(Device::Cpu),
            "cuda" if index >= 0 => Ok(Device::Cuda(index as usize)),
            "cuda" => Err(Error::device(arg, "a CUDA tensor must carry a device index")),
            other => Err(Error::device(
                arg,
                format!("metalcore has no backend for device type '{other}' (supported: cpu, cuda)"),
            )),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A borrowed strided tensor: data pointer, dtype, shape and strides in elements, device.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub ptr: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
    pub device: Device,
}

/// A tensor seen as a matrix of `rows` rows of `cols` unit-stride elements, each row `row_stride` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl TensorRef {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Views the tensor as rows over its last dimension. Needs unit stride in the last dimension and
    /// leading dimensions that collapse to a single non-negative stride (any `reshape(-1, n)` view).
    pub fn as_rows(&self, arg: &'static str) -> Result<Rows> {
        if self.shape.is_empty() {
            return Err(Error::value(arg, "expected at least one dimension, got a 0-d tensor"));
        }
        let nd = self.ndim();
        let cols = self.shape[nd - 1];
        let rows: usize = self.shape[..nd - 1].iter().product();
        if cols > 1 && self.strides[nd - 1] != 1 {
            return Err(Error::Unsupported(format!(
                "{arg}: the last dimension must have stride 1 (got strides {:?})",
                self.strides
            )));
        }
        // Collapse the leading dimensions: every dim of size > 1 must nest in the next.
        let mut row_stride: Option<isize> = None;
        let mut expect: Option<isize> = None;
        for d in (0..nd - 1).rev() {
            let (n, s) = (self.shape[d], self.strides[d]);
            if n == 1 {
                continue;
            }
            match expect {
                None => row_stride = Some(s),
                Some(e) if e == s => {}
                Some(_) => {
                    return Err(Error::Unsupported(format!(
                        "{arg}: leading dimensions with shape {:?} and strides {:?} do not collapse to rows",
                        self.shape, self.strides
                    )))
                }
            }
            expect = Some(s * n as isize);
        }
        let row_stride = row_stride.unwrap_or(cols as isize);
        if row_stride < 0 || (rows > 1 && (row_stride as usize) < cols) {
            return Err(Error::Unsupported(format!(
                "{arg}: rows overlap or run backwards (strides {:?})",
                self.strides
            )));
        }
        Ok(Rows { rows, cols, row_stride: row_stride as usize })
    }

    /// Checks that this tensor is contiguous in row-major order.
    pub fn is_contiguous(&self) -> bool {
        if self.numel() == 0 {
            return true; // no element to lay out
        }
        let mut expect = 1isize;
        for d in (0..self.ndim()).rev() {
            if self.shape[d] != 1 && self.strides[d] != expect {
                return false;
            }
            expect *= self.shape[d] as isize;
        }
        true
    }
}

/// Execution context of one call: for CUDA, the caller's stream (PyTorch's current stream).
#[derive(Clone, Copy, Debug, Default)]
pub struct Exec {
    /// Raw `CUstream` handle; 0 is the legacy default stream. Ignored by the CPU backend.
    pub stream: usize,
    /// PyTorch's `cublasHandle_t` for this stream (`torch.cuda.current_blas_handle()`), for the
    /// ops whose large-matrix paths are built on cuBLAS; 0 when not given. Ignored by the CPU.
    pub blas: usize,
}

impl Exec {
    /// A call on `stream` with no cuBLAS handle.
    pub fn on(stream: usize) -> Exec {
        Exec { stream, blas: 0 }
    }
}

/// Checks that all present tensors live on the device of the first one, and returns it.
pub fn common_device(tensors: &[(&'static str, Option<&TensorRef>)]) -> Result<Device> {
    let mut it = tensors.iter().filter_map(|(n, t)| t.map(|t| (*n, t)));
    let (first_name, first) = it.next().ok_or_else(|| Error::value("inputs", "no tensors given"))?;
    for (name, t) in it {
        if t.device != first.device {
            return Err(Error::device(
                name,
                format!("expected a tensor on {} (the device of {first_name}), got one on {}", first.device, t.device),
            ));
        }
    }
    Ok(first.device)
}
