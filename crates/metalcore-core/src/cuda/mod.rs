//! CUDA backend: kernels compiled at run time by NVRTC (see [`jit`]) and launched on the caller's
//! stream, inside the device's primary context (the one PyTorch uses). The driver and NVRTC are
//! loaded dynamically, so nothing CUDA is needed to build. The core never allocates device memory
//! and never synchronizes the host, so ops are safe under CUDA graph capture.

pub mod act;
pub mod adamw;
pub(crate) mod blas;
pub mod embag;
pub mod index;
pub mod jit;
pub mod linalg;
pub mod norm;
pub mod rope;
pub(crate) mod rows;
pub mod softmax;
pub mod xent;

use crate::error::{Error, Result};
use cudarc::driver::{sys, CudaContext, CudaStream, DriverError};
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) fn driver_err(context: &str) -> impl FnOnce(DriverError) -> Error + '_ {
    move |e| Error::Cuda { context: context.to_string(), msg: e.to_string() }
}

/// True when the CUDA driver library can be loaded (it says nothing about devices). The answer is
/// kept once it is yes: asking means a dlopen, too slow for every op call.
pub fn driver_present() -> bool {
    static YES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // SAFETY: only tries to dlopen the library.
    present(&YES, || unsafe { cudarc::driver::sys::is_culib_present() })
}

/// True when NVRTC can be loaded (kept once it is yes, as for the driver).
pub fn nvrtc_present() -> bool {
    static YES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // SAFETY: only tries to dlopen the library.
    present(&YES, || unsafe { cudarc::nvrtc::sys::is_culib_present() })
}

/// A "no" is asked again next time, since the library may be loaded later (metalcore preloads
/// NVRTC from NVIDIA's wheel when the loader cannot find it).
fn present(yes: &std::sync::atomic::AtomicBool, probe: impl FnOnce() -> bool) -> bool {
    use std::sync::atomic::Ordering;
    if yes.load(Ordering::Relaxed) {
        return true;
    }
    let found = probe();
    if found {
        yes.store(true, Ordering::Relaxed);
    }
    found
}

/// Per-device state: the retained primary context and facts read once from the device.
pub(crate) struct DeviceState {
    pub ctx: Arc<CudaContext>,
    pub sm_count: usize,
    pub arch: String,
    /// Dynamic shared memory a block may opt in to (bytes).
    pub smem_optin: usize,
    /// The device's side stream, created on first use ([`DeviceState::side`]).
    side: Mutex<Option<Side>>,
}

/// A second stream on one device, of the highest priority, with two events to order it against
/// the caller's stream: what a look-ahead needs (an op's serial pieces running beside its bulk on
/// the caller's stream, and joined back to it before the op returns). Created once per device,
/// never destroyed (as the retained context is not); raw handles, valid in that context.
pub(crate) struct Side {
    pub stream: usize,
    pub events: [usize; 2],
}

impl DeviceState {
    /// The side stream, locked: the caller enqueues its whole use of it (records and waits
    /// included) under the lock, so two host threads never interleave their events. Call with the
    /// device's context current.
    pub(crate) fn side(&self) -> Result<std::sync::MutexGuard<'_, Option<Side>>> {
        use cudarc::driver::result::{event, stream};
        let mut g = self.side.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let (_, greatest) = stream::get_priority_range().map_err(driver_err("reading stream priorities"))?;
            let s = stream::create_with_priority(stream::StreamKind::NonBlocking, greatest)
                .map_err(driver_err("creating the side stream"))?;
            let ev =
                || event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(driver_err("creating an event"));
            *g = Some(Side { stream: s as usize, events: [ev()? as usize, ev()? as usize] });
        }
        Ok(g)
    }
}

/// Records `event` on `stream`: it completes when what `stream` has enqueued so far has.
///
/// # Safety
/// The stream and the event are live in the current context.
pub(crate) unsafe fn record(event: usize, stream: usize) -> Result<()> {
    // SAFETY: per this function's contract.
    unsafe { cudarc::driver::result::event::record(event as sys::CUevent, stream as sys::CUstream) }
        .map_err(driver_err("recording an event"))
}

/// Makes `waiter` wait, before its later work, for `event`'s latest record.
///
/// # Safety
/// As for [`record`].
pub(crate) unsafe fn wait(waiter: usize, event: usize) -> Result<()> {
    use sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT;
    // SAFETY: per this function's contract.
    unsafe {
        cudarc::driver::result::stream::wait_event(
            waiter as sys::CUstream,
            event as sys::CUevent,
            CU_EVENT_WAIT_DEFAULT,
        )
    }
    .map_err(driver_err("waiting for an event"))
}

fn devices() -> &'static Mutex<Vec<Option<Arc<DeviceState>>>> {
    static DEVICES: OnceLock<Mutex<Vec<Option<Arc<DeviceState>>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(Vec::new()))
}

/// The state of device `ordinal`, created on first use.
pub(crate) fn device(ordinal: usize) -> Result<Arc<DeviceState>> {
    if !driver_present() {
        return Err(Error::BackendUnavailable("the CUDA driver library (libcuda.so) could not be loaded".into()));
    }
    let mut devs = devices().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(Some(d)) = devs.get(ordinal) {
        return Ok(d.clone());
    }
    let ctx = CudaContext::new(ordinal).map_err(driver_err("retaining the primary context"))?;
    let (major, minor) = ctx.compute_capability().map_err(driver_err("reading the compute capability"))?;
    let sm_count = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(driver_err("reading the multiprocessor count"))? as usize;
    let smem_optin = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(driver_err("reading the shared memory limit"))? as usize;
    let state =
        Arc::new(DeviceState { ctx, sm_count, arch: arch_name(major, minor), smem_optin, side: Mutex::new(None) });
    if devs.len() <= ordinal {
        devs.resize(ordinal + 1, None);
    }
    devs[ordinal] = Some(state.clone());
    Ok(state)
}

/// NVRTC's architecture name for a compute capability: the arch-specific `sm_90a` on Hopper
/// (wgmma, setmaxnreg), plain `sm_XY` elsewhere.
pub fn arch_name(major: i32, minor: i32) -> String {
    if major == 9 && minor == 0 {
        "sm_90a".to_string()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// Wraps the caller's raw stream handle (PyTorch's current stream) without taking ownership.
pub(crate) fn borrowed_stream(dev: &DeviceState, raw: usize) -> Arc<CudaStream> {
    // SAFETY: the handle comes from PyTorch's current stream on this device, which stays alive for
    // the duration of the op; the wrapper never destroys it; ordering with PyTorch's work is given by
    // launching on that very stream.
    unsafe { dev.ctx.wrap_borrowed_stream(raw as sys::CUstream) }
}

/// Lets `f` use, as dynamic shared memory, all of the block's opt-in shared memory that its
/// static shared memory leaves.
pub(crate) fn allow_dynamic_smem(f: &cudarc::driver::CudaFunction, dev: &DeviceState) -> Result<()> {
    use cudarc::driver::sys::CUfunction_attribute_enum as A;
    let fixed =
        f.get_attribute(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES).map_err(driver_err("reading static shared memory"))?;
    f.set_attribute(A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dev.smem_optin as i32 - fixed)
        .map_err(driver_err("allowing dynamic shared memory"))
}

/// Grid/block of one launch.
pub(crate) fn cfg(grid: u32, block: (u32, u32), smem: u32) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: (grid.max(1), 1, 1),
        block_dim: (block.0, block.1, 1),
        shared_mem_bytes: smem,
    }
}

/// The CUDA C++ type name that kernels use for a storage dtype.
pub(crate) fn ctype(d: crate::dtype::DType) -> &'static str {
    use crate::dtype::DType::*;
    match d {
        F16 => "f16",
        BF16 => "bf16",
        F32 => "float",
        F64 => "double",
        I32 => "int",
        I64 => "long long",
    }
}

/// Largest vector width (in elements) that every operand allows: it must divide `cols` and every
/// row stride, and each pointer must be aligned to `width * elem_size` bytes. At most 16 bytes of
/// `base` dtype per access.
pub(crate) fn vector_width(base: crate::dtype::DType, cols: usize, operands: &[(usize, usize, usize)]) -> usize {
    let mut v = 16 / base.size();
    while v > 1 {
        let ok = cols % v == 0 && operands.iter().all(|&(ptr, stride, size)| ptr % (v * size) == 0 && stride % v == 0);
        if ok {
            break;
        }
        v /= 2;
    }
    v
}

/// Makes the device's primary context current for the duration of an op and restores whatever
/// context the thread had before (PyTorch reads the current device from it).
pub(crate) struct ContextGuard {
    previous: Option<sys::CUcontext>,
}

impl ContextGuard {
    pub(crate) fn enter(dev: &DeviceState) -> Result<Self> {
        use cudarc::driver::result::ctx;
        let current = ctx::get_current().map_err(driver_err("reading the current context"))?;
        if current == Some(dev.ctx.cu_ctx()) {
            return Ok(Self { previous: None });
        }
        dev.ctx.bind_to_thread().map_err(driver_err("binding the primary context"))?;
        Ok(Self { previous: current })
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.previous {
            // SAFETY: `prev` was the thread's current context when the guard was made and is owned
            // by whoever made it current (PyTorch); restoring it is what that owner expects.
            let _ = unsafe { cudarc::driver::result::ctx::set_current(prev) };
        }
    }
}
