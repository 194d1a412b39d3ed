//! Tensor descriptors in, exceptions out.

use metalcore_core::{DType, Device, Error, TensorRef};
use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

/// A tensor as the Python side describes it:
/// `(data_ptr, dtype name, shape, strides in elements, device type, device index)`.
#[derive(FromPyObject)]
pub struct Desc(usize, String, Vec<usize>, Vec<isize>, String, i64);

impl Desc {
    pub fn to_ref(&self, arg: &'static str) -> PyResult<TensorRef> {
        let Desc(ptr, dtype, shape, strides, dev, index) = self;
        if shape.len() != strides.len() {
            return Err(PyValueError::new_err(format!("{arg}: shape and strides differ in length")));
        }
        Ok(TensorRef {
            ptr: *ptr,
            dtype: DType::parse(arg, dtype).map_err(to_py)?,
            shape: shape.clone(),
            strides: strides.clone(),
            device: Device::parse(arg, dev, *index).map_err(to_py)?,
        })
    }
}

/// Converts an optional descriptor.
pub fn opt(arg: &'static str, d: &Option<Desc>) -> PyResult<Option<TensorRef>> {
    d.as_ref().map(|d| d.to_ref(arg)).transpose()
}

/// Maps each core error variant to its Python exception class.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Value { .. } | Error::Device { .. } => PyValueError::new_err(msg),
        Error::Dtype { .. } => PyTypeError::new_err(msg),
        Error::Unsupported(_) => PyNotImplementedError::new_err(msg),
        Error::BackendUnavailable(_) | Error::Cuda { .. } | Error::Compile { .. } => PyRuntimeError::new_err(msg),
    }
}
