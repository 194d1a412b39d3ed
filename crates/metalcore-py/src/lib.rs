//! `metalcore._native`: the thin PyO3 layer over metalcore-core. It turns tensor descriptors
//! (plain tuples built by the Python package) into `TensorRef`s, releases the GIL around the work,
//! and maps core errors to Python exception classes. No torch dependency on the Rust side.

mod act;
mod adamw;
mod bridge;
mod embag;
mod index;
mod linalg;
mod norm;
mod rope;
mod softmax;
mod xent;

use pyo3::prelude::*;

/// True when the CUDA driver library can be loaded.
#[pyfunction]
fn cuda_driver_present() -> bool {
    metalcore_core::cuda::driver_present()
}

/// True when NVRTC can be loaded.
#[pyfunction]
fn nvrtc_present() -> bool {
    metalcore_core::cuda::nvrtc_present()
}

/// NVRTC's (major, minor) version.
#[pyfunction]
fn nvrtc_version() -> PyResult<(i32, i32)> {
    metalcore_core::cuda::jit::nvrtc_version().map_err(bridge::to_py)
}

/// Compiles every CUDA kernel variant for `arch` (e.g. "sm_90a") with NVRTC; needs no GPU.
#[pyfunction]
fn compile_all_kernels(py: Python<'_>, arch: String) -> PyResult<Vec<String>> {
    py.detach(|| metalcore_core::cuda::jit::compile_all(&arch)).map_err(bridge::to_py)
}

/// Chooses where the CPU kernels' parallel loops run: `"openmp"` on the OpenMP team of the
/// libgomp already loaded in the process (PyTorch's), `"rayon"` on rayon's pool. Returns the pool
/// now in use, `"host"` or `"rayon"`; asking for `"openmp"` where no libgomp is loaded keeps rayon.
#[pyfunction]
fn cpu_pool(kind: &str) -> PyResult<&'static str> {
    use metalcore_core::cpu::pool;
    match kind {
        "rayon" => {
            // SAFETY: uninstalling needs nothing.
            unsafe { pool::set_fork_join(None) };
        }
        "openmp" => {
            #[cfg(unix)]
            {
                // SAFETY: looking up two symbols of the running process; GOMP_parallel and
                // omp_get_max_threads have exactly the types of ForkJoinFn and TeamSizeFn (the
                // libgomp ABI), and a library loaded by the process stays loaded.
                unsafe {
                    let this = libloading::os::unix::Library::this();
                    let run = this.get::<pool::ForkJoinFn>(b"GOMP_parallel\0");
                    let team = this.get::<pool::TeamSizeFn>(b"omp_get_max_threads\0");
                    if let (Ok(run), Ok(team)) = (run, team) {
                        pool::set_fork_join(Some((*run, *team)));
                    }
                }
            }
        }
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "kind: expected 'openmp' or 'rayon', got {other:?}"
            )))
        }
    }
    Ok(pool::current())
}

/// The widest copy of the CPU kernels in use: "avx512", "avx2" or "baseline" (METALCORE_CPU_ISA=avx2
/// and METALCORE_CPU_BASELINE=1 lower it; read once per process).
#[pyfunction]
fn cpu_isa() -> &'static str {
    metalcore_core::cpu::isa()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_driver_present, m)?)?;
    m.add_function(wrap_pyfunction!(nvrtc_present, m)?)?;
    m.add_function(wrap_pyfunction!(nvrtc_version, m)?)?;
    m.add_function(wrap_pyfunction!(compile_all_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_pool, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_isa, m)?)?;
    act::register(m)?;
    adamw::register(m)?;
    embag::register(m)?;
    index::register(m)?;
    norm::register(m)?;
    rope::register(m)?;
    softmax::register(m)?;
    xent::register(m)?;
    linalg::register(m)?;
    Ok(())
}
