//! Cross-entropy on CUDA: variant selection and launches (math in `kernels/xent.cu`).

use super::jit::{function, Defines, Kernel, Variants};
use super::rows::{flag, knob, Knob};
use super::{
    allow_dynamic_smem, borrowed_stream, cfg, ctype, device, driver_err, vector_width, ContextGuard, DeviceState,
};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::xent::{Mode, Plan};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, PushKernelArg};
use std::sync::OnceLock;

pub static KERNEL: Kernel = Kernel { name: "xent", source: include_str!("../../kernels/xent.cu") };

/// Threads per row (METALCORE_XENT_BLOCK). Default from a sweep on an H200 (2026-11-26,
/// 8192×128256 bf16, bench/results/xent-tuning-nvidia-h200.md): 256 threads, 4 vectors in flight.
fn block() -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_XENT_BLOCK", 256).next_power_of_two().clamp(32, 1024)
}

/// The fused forward + gradient re-reads each row right after its first pass; the re-read can hit
/// L2 only while the rows in flight fit there, so it runs wide blocks, few per SM
/// (METALCORE_XENT_FUSED_BLOCK threads, METALCORE_XENT_FUSED_BPS blocks per SM). On the H200
/// sweep 1024 × 2 was best (1.48 ms for 8192×128256 bf16; 1.54 ms in two later runs), the re-read
/// partly missing L2. Rows that fit on chip take `xent_onchip_kernel` instead (1.28–1.32 ms in
/// five runs on 2026-11-26).
fn fused_geometry() -> (usize, usize) {
    static B: Knob = Knob::new();
    static N: Knob = Knob::new();
    let block = knob(&B, "METALCORE_XENT_FUSED_BLOCK", 1024).next_power_of_two().clamp(32, 1024);
    (block, knob(&N, "METALCORE_XENT_FUSED_BPS", 2))
}

/// 16-byte vectors per thread that the on-chip fused kernel keeps in registers, the rest of the
/// row going to shared memory (METALCORE_XENT_ONCHIP, default 8; 0 turns that kernel off).
fn onchip_regs() -> usize {
    static C: OnceLock<usize> = OnceLock::new();
    *C.get_or_init(|| std::env::var("METALCORE_XENT_ONCHIP").ok().and_then(|v| v.parse().ok()).unwrap_or(8).min(32))
}

/// Threads of the on-chip fused kernel (one block per SM).
const ONCHIP_BLOCK: usize = 1024;

/// Vectors each thread loads before computing (METALCORE_XENT_UNROLL).
fn unroll() -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_XENT_UNROLL", 4)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    ordinal: usize,
    dtype: DType,
    vec: usize,
    unroll: usize,
    block: usize,
    mode: Mode,
    smooth: bool,
    /// Register vectors of `xent_onchip_kernel` (0: `xent_kernel`).
    onchip: usize,
}

fn defines(k: &Key) -> Defines {
    let mode = match k.mode {
        Mode::Fwd => 0,
        Mode::FwdGrad => 1,
        Mode::Bwd => 2,
    };
    let mut d = vec![
        ("T_X", ctype(k.dtype).to_string()),
        ("ACC", ctype(k.dtype.compute()).to_string()),
        ("VEC", k.vec.to_string()),
        ("UNROLL", k.unroll.to_string()),
        ("BLOCK", k.block.to_string()),
        ("MODE", mode.to_string()),
        ("SMOOTH", flag(k.smooth)),
        ("FAST", flag(k.dtype.size() == 2)),
    ];
    if k.onchip > 0 {
        d.push(("ONCHIP_R", k.onchip.to_string()));
    }
    d
}

/// The loaded kernel for `key`.
fn kernel(key: Key, dev: &DeviceState) -> Result<CudaFunction> {
    static C: Variants<Key> = Variants::new();
    C.get(key, || {
        if key.onchip == 0 {
            return function(dev, &KERNEL, &defines(&key), "xent_kernel");
        }
        let f = function(dev, &KERNEL, &defines(&key), "xent_onchip_kernel")?;
        allow_dynamic_smem(&f, dev)?;
        Ok(f)
    })
}

pub fn run(p: &Plan, ordinal: usize, exec: Exec) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let size = p.x.dtype.size();
    let mut ops = vec![(p.x.ptr, p.x.row_stride, size)];
    if let Some(g) = &p.grad {
        ops.push((g.ptr, g.row_stride, size));
    }
    let vec = vector_width(p.x.dtype, p.cols, &ops);
    let smooth = p.smoothing > 0.0;
    // The fused pass keeps the row on chip when it fits (16-byte vectors; the static shared memory
    // of the reductions is far below the 2 KiB kept free).
    let r = onchip_regs();
    let slots = (p.cols / vec).div_ceil(ONCHIP_BLOCK).saturating_sub(r) * ONCHIP_BLOCK * 16;
    let onchip = p.mode == Mode::FwdGrad && r > 0 && vec * size == 16 && slots + 2048 <= dev.smem_optin;
    let (f, block, grid, smem) = if onchip {
        let key =
            Key { ordinal, dtype: p.x.dtype, vec, unroll: 1, block: ONCHIP_BLOCK, mode: p.mode, smooth, onchip: r };
        (kernel(key, &dev)?, ONCHIP_BLOCK, p.rows.min(dev.sm_count), slots)
    } else {
        let (block, per_sm) = if p.mode == Mode::FwdGrad { fused_geometry() } else { (block(), 2048 / block()) };
        let key = Key { ordinal, dtype: p.x.dtype, vec, unroll: unroll(), block, mode: p.mode, smooth, onchip: 0 };
        (kernel(key, &dev)?, block, p.rows.min(dev.sm_count * per_sm.max(1)), 0)
    };
    let (xp, xs) = (p.x.ptr as u64, p.x.row_stride as i64);
    let (gp, gs) = p.grad.map_or((0u64, 0i64), |g| (g.ptr as u64, g.row_stride as i64));
    let (tp, ts) = (p.target.0 as u64, p.target.1);
    let (lp, ls) = (p.loss.0 as u64, p.loss.1);
    let (ep, es) = (p.lse.0 as u64, p.lse.1);
    let (sp, ss) = (p.scale.0 as u64, p.scale.1);
    let skip = p.skip as u64;
    let (rows, cols, ignore) = (p.rows as i64, p.cols as i32, p.ignore_index);
    let stream = borrowed_stream(&dev, exec.stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&xp)
        .arg(&xs)
        .arg(&gp)
        .arg(&gs)
        .arg(&tp)
        .arg(&ts)
        .arg(&lp)
        .arg(&ls)
        .arg(&ep)
        .arg(&es)
        .arg(&sp)
        .arg(&ss)
        .arg(&skip);
    b.arg(&rows).arg(&cols).arg(&ignore);
    let (eps32, z32) = (p.smoothing as f32, p.z as f32);
    if p.x.dtype == DType::F64 {
        b.arg(&p.smoothing).arg(&p.z);
    } else {
        b.arg(&eps32).arg(&z32);
    }
    // SAFETY: every pointer is a live tensor validated by the plan (logits and gradient as
    // `rows × cols` row views of one dtype, the per-row vectors in the accumulation dtype, the
    // scale with one value or one per row); targets outside [0, cols) are never dereferenced; the
    // argument list matches the kernel's signature (ACC-typed eps and z); the launch goes on the
    // caller's stream.
    // The on-chip kernel's shared memory holds the vectors past the first `r` of each thread.
    unsafe { b.launch(cfg(grid as u32, (block as u32, 1), smem as u32)) }.map_err(driver_err("launching xent"))?;
    Ok(())
}

/// The variants CI compiles: every dtype and mode, with and without smoothing, wide and scalar loads.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for (mode, smooth, vec) in
            [(Mode::Fwd, false, 16 / dtype.size()), (Mode::FwdGrad, true, 16 / dtype.size()), (Mode::Bwd, true, 1)]
        {
            let key = Key { ordinal: 0, dtype, vec, unroll: 4, block: 1024, mode, smooth, onchip: 0 };
            out.push((&KERNEL, defines(&key)));
        }
        let (vec, mode) = (16 / dtype.size(), Mode::FwdGrad);
        let key = Key { ordinal: 0, dtype, vec, unroll: 1, block: ONCHIP_BLOCK, mode, smooth: true, onchip: 8 };
        out.push((&KERNEL, defines(&key)));
    }
    out
}
