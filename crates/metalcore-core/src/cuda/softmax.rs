//! Softmax on CUDA: variant selection and launches (math in `kernels/softmax.cu`).

use super::jit::{function, Defines, Kernel};
use super::rows::{base_defines, geometry, knob, Geometry};
use super::{borrowed_stream, cfg, ctype, device, driver_err, vector_width, ContextGuard};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::softmax::{BwdPlan, FwdPlan};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub static KERNEL: Kernel = Kernel { name: "softmax", source: include_str!("../../kernels/softmax.cu") };

/// Elements per thread the register path aims for (METALCORE_SOFTMAX_ELEMS).
fn target_elems() -> usize {
    static C: OnceLock<usize> = OnceLock::new();
    knob(&C, "METALCORE_SOFTMAX_ELEMS", 32)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    ordinal: usize,
    backward: bool,
    dtype: DType,
    geometry: Geometry,
}

fn defines(dtype: DType, g: &Geometry) -> Defines {
    let mut d = base_defines(g, dtype.compute());
    d.extend([("T_X", ctype(dtype).to_string()), ("T_Y", ctype(dtype).to_string())]);
    d
}

/// The loaded kernel for `key` (cached per variant, so a call builds no `-D` list).
fn kernel(key: Key, dev: &super::DeviceState) -> Result<CudaFunction> {
    static C: OnceLock<Mutex<HashMap<Key, CudaFunction>>> = OnceLock::new();
    let cache = C.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(f) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(f.clone());
    }
    let name = if key.backward { "softmax_bwd" } else { "softmax_fwd" };
    let f = function(dev, &KERNEL, &defines(key.dtype, &key.geometry), name)?;
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, f.clone());
    Ok(f)
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
    let g = geometry(cols, vector_width(dtype, cols, &with_size), target_elems());
    let f = kernel(Key { ordinal, backward, dtype, geometry: g }, &dev)?;
    let grid = rows.div_ceil(g.block / g.tpr).min(dev.sm_count * 64) as u32;
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
    unsafe { b.launch(cfg(grid, (g.block as u32, 1), 0)) }.map_err(driver_err("launching softmax"))?;
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
            out.push((&KERNEL, defines(dt, &Geometry { vec, tpr, block: tpr.max(128), chunks })));
        }
    }
    out
}
