//! The one error type of the core. Each variant maps to one Python exception class in the binding.

/// Result alias used throughout the core.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value or shape is wrong (maps to `ValueError`). `arg` names the offending argument.
    #[error("{arg}: {msg}")]
    Value { arg: &'static str, msg: String },
    /// A dtype is wrong or unsupported (maps to `TypeError`).
    #[error("{arg}: {msg}")]
    Dtype { arg: &'static str, msg: String },
    /// Tensors live on different or unsupported devices (maps to `ValueError`).
    #[error("{arg}: {msg}")]
    Device { arg: &'static str, msg: String },
    /// The operation is not implemented for this backend or layout (maps to `NotImplementedError`).
    #[error("{0}")]
    Unsupported(String),
    /// A backend cannot be used on this machine, e.g. no CUDA driver (maps to `RuntimeError`).
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    /// A CUDA driver call failed (maps to `RuntimeError`).
    #[error("CUDA driver error in {context}: {msg}")]
    Cuda { context: String, msg: String },
    /// NVRTC failed to compile a kernel; `log` is NVRTC's log, verbatim (maps to `RuntimeError`).
    #[error("NVRTC failed to compile kernel `{kernel}` with options {options:?}:\n{log}")]
    Compile { kernel: String, options: Vec<String>, log: String },
}

impl Error {
    pub(crate) fn value(arg: &'static str, msg: impl Into<String>) -> Self {
        Error::Value { arg, msg: msg.into() }
    }
    pub(crate) fn dtype(arg: &'static str, msg: impl Into<String>) -> Self {
        Error::Dtype { arg, msg: msg.into() }
    }
    pub(crate) fn device(arg: &'static str, msg: impl Into<String>) -> Self {
        Error::Device { arg, msg: msg.into() }
    }
}
