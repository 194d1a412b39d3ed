//! Softmax on CUDA: variant selection and launches (math in `kernels/softmax.cu`).

use super::jit::{function, Defines, Kernel, Variants};
use super::rows::{base_defines, flag, geometry, knob, Geometry, Knob};
use super::{borrowed_stream, cfg, ctype, device, driver_err, vector_width, ContextGuard};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::softmax::{BwdPlan, FwdPlan};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, PushKernelArg};

pub static KERNEL: Kernel = Kernel { name: "softmax", source: include_str!("../../kernels/softmax.cu") };

/// Most dynamic shared memory the forward's shared-memory path asks for (the rest of the SM's
/// 228 KiB stays for the reduction scratch and the L1).
const SMEM_RESERVE: usize = 200 * 1024;

/// Rows of at least this many elements take the forward's shared-memory path even when they would
/// fit the register path (METALCORE_SOFTMAX_SMEM_COLS). Default from an H200 run (2026-11-26):
/// for float32 rows of 32768 the shared-memory path took 0.327 ms against 0.401 ms in registers;
/// for bfloat16 rows of 16384 it was slower (0.318 against 0.202), so 16-bit rows use it only
/// when they are too long for registers.
fn smem_cols(dtype: DType) -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_SOFTMAX_SMEM_COLS", if dtype.size() >= 4 { 16384 } else { usize::MAX })
}

/// Elements per thread the register path aims for (METALCORE_SOFTMAX_ELEMS).
fn target_elems() -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_SOFTMAX_ELEMS", 32)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    ordinal: usize,
    backward: bool,
    dtype: DType,
    geometry: Geometry,
    smem: bool,
}

fn defines(dtype: DType, g: &Geometry, smem: bool) -> Defines {
    let mut d = base_defines(g, dtype.compute());
    d.extend([("T_X", ctype(dtype).to_string()), ("T_Y", ctype(dtype).to_string()), ("SMEM", flag(smem))]);
    d.push(("FAST", flag(dtype.size() == 2)));
    d
}

/// The loaded kernel for `key` (cached per variant, so a call builds no `-D` list).
fn kernel(key: Key, dev: &super::DeviceState) -> Result<CudaFunction> {
    static C: Variants<Key> = Variants::new();
    C.get(key, || {
        let name = if key.backward { "softmax_bwd" } else { "softmax_fwd" };
        let f = function(dev, &KERNEL, &defines(key.dtype, &key.geometry, key.smem), name)?;
        if key.smem {
            use cudarc::driver::sys::CUfunction_attribute_enum as A;
            f.set_attribute(
                A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                SMEM_RESERVE.min(dev.smem_optin) as i32,
            )
            .map_err(driver_err("allowing dynamic shared memory"))?;
        }
        Ok(f)
    })
}

fn launch(
    ordinal: usize,
    exec: Exec,
    backward: bool,
    dtype: DType,
    rows: usize,
    cols: usize,
    ops: &[(usize, usize)],
) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let with_size: Vec<(usize, usize, usize)> = ops.iter().map(|&(p, s)| (p, s, dtype.size())).collect();
    let mut g = geometry(cols, vector_width(dtype, cols, &with_size), target_elems());
    // Rows too long for registers (or at least METALCORE_SOFTMAX_SMEM_COLS long): the forward
    // keeps the row in shared memory when it fits.
    let bytes = (cols * dtype.size()).next_multiple_of(16);
    let wants = g.chunks == 0 || cols >= smem_cols(dtype);
    let smem = !backward && wants && bytes <= SMEM_RESERVE.min(dev.smem_optin);
    if smem {
        g = Geometry { tpr: 1024, block: 1024, chunks: 0, ..g };
    }
    let f = kernel(Key { ordinal, backward, dtype, geometry: g, smem }, &dev)?;
    let (grid, smem_bytes) = if smem {
        let per_sm = (dev.smem_optin / bytes).clamp(1, 2048 / g.block);
        (rows.min(dev.sm_count * per_sm) as u32, bytes as u32)
    } else {
        (rows.div_ceil(g.block / g.tpr).min(dev.sm_count * 64) as u32, 0)
    };
    let stream = borrowed_stream(&dev, exec.stream);
    let args: Vec<(u64, i64)> = ops.iter().map(|&(p, s)| (p as u64, s as i64)).collect();
    let (rows, cols) = (rows as i64, cols as i32);
    let mut b = stream.launch_builder(&f);
    for (p, s) in &args {
        b.arg(p).arg(s);
    }
    b.arg(&rows).arg(&cols);
    // SAFETY: every pointer is a live tensor validated for `rows × cols` (row strides in elements)
    // by the op's plan; the argument list matches the kernel's signature (pointer, row stride per
    // operand, then rows and cols); the launch goes on the caller's stream.
    unsafe { b.launch(cfg(grid, (g.block as u32, 1), smem_bytes)) }.map_err(driver_err("launching softmax"))?;
    Ok(())
}

pub fn fwd(p: &FwdPlan, ordinal: usize, exec: Exec) -> Result<()> {
    let ops = [(p.x.ptr, p.x.row_stride), (p.y.ptr, p.y.row_stride)];
    launch(ordinal, exec, false, p.x.dtype, p.rows, p.cols, &ops)
}

pub fn bwd(p: &BwdPlan, ordinal: usize, exec: Exec) -> Result<()> {
    let ops = [(p.y.ptr, p.y.row_stride), (p.dy.ptr, p.dy.row_stride), (p.dx.ptr, p.dx.row_stride)];
    launch(ordinal, exec, true, p.y.dtype, p.rows, p.cols, &ops)
}

/// The variants CI compiles: every dtype, register and streaming paths.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    for dt in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for &(vec, chunks, tpr) in &[(16 / dt.size(), 4usize, 256usize), (1, 0, 1024), (2, 1, 32)] {
            out.push((&KERNEL, defines(dt, &Geometry { vec, tpr, block: tpr.max(128), chunks }, false)));
        }
        let g = Geometry { vec: 16 / dt.size(), tpr: 1024, block: 1024, chunks: 0 };
        out.push((&KERNEL, defines(dt, &g, true)));
    }
    out
}
