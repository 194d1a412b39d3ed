//! metalcore-core: the pure-Rust core of metalcore (no PyO3).
//!
//! Layers: [`tensor`] descriptors of borrowed memory → [`ops`] (validation, then dispatch by device)
//! → backends: [`cpu`] (rayon, or the host's OpenMP team: [`cpu::pool`]) and [`cuda`] (kernels compiled at run time by NVRTC, launched on the
//! caller's stream). The core never allocates device memory and never synchronizes the host.
//!
//! Adding an op touches: `kernels/<op>.cu`, `src/cpu/<op>.rs`, `src/cuda/<op>.rs` (+ its CI
//! variants in `cuda::jit::ci_variants`), `src/ops/<op>.rs`, the binding, the Python wrapper, one
//! test file and one benchmark entry. CONTRIBUTING.md has the checklist.

pub mod cpu;
pub mod dtype;
pub mod error;
pub mod ops;
pub mod tensor;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub mod cuda;

pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::{Device, Exec, TensorRef};
