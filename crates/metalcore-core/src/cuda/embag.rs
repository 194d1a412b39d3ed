//! EmbeddingBag on CUDA: variant selection and launches (math in `kernels/embag.cu`).

use super::jit::{function, Defines, Kernel, Variants};
use super::rows::flag;
use super::{borrowed_stream, cfg, ctype, device, driver_err, vector_width, ContextGuard, DeviceState};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::embag::{Mode, Plan};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, PushKernelArg};

pub static KERNEL: Kernel = Kernel { name: "embag", source: include_str!("../../kernels/embag.cu") };

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    ordinal: usize,
    dtype: DType,
    vec: usize,
    block: usize,
    mode: Mode,
    psw: bool,
    bwd: bool,
}

fn defines(k: &Key) -> Defines {
    let mode = match k.mode {
        Mode::Sum => 0,
        Mode::Mean => 1,
        Mode::Max => 2,
    };
    vec![
        ("T_X", ctype(k.dtype).to_string()),
        ("ACC", ctype(k.dtype.compute()).to_string()),
        ("VEC", k.vec.to_string()),
        ("BLOCK", k.block.to_string()),
        ("MODE", mode.to_string()),
        ("PSW", flag(k.psw)),
        ("BWD", flag(k.bwd)),
    ]
}

/// The loaded kernel for `key`.
fn kernel(key: Key, dev: &DeviceState) -> Result<CudaFunction> {
    static C: Variants<Key> = Variants::new();
    C.get(key, || function(dev, &KERNEL, &defines(&key), "embag_kernel"))
}

pub fn run(p: &Plan, ordinal: usize, exec: Exec) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let size = p.table.dtype.size();
    let mut ops = vec![(p.table.ptr, p.table.row_stride, size), (p.bag_rows.ptr, p.bag_rows.row_stride, size)];
    if let Some(a) = p.argmax {
        ops.push((a, p.bag_rows.row_stride, 4));
    }
    let vec = vector_width(p.table.dtype, p.dim, &ops);
    let block = (p.dim / vec).next_power_of_two().clamp(32, 256);
    let key = Key { ordinal, dtype: p.table.dtype, vec, block, mode: p.mode, psw: p.psw.is_some(), bwd: p.backward };
    let f = kernel(key, &dev)?;
    let work = if p.backward { p.n } else { p.bags };
    let grid = work.min(dev.sm_count * (2048 / block) * 4);
    let (tp, ts) = (p.table.ptr as u64, p.table.row_stride as i64);
    let (bp, bs) = (p.bag_rows.ptr as u64, p.bag_rows.row_stride as i64);
    let (ip, op, sp) = (p.indices as u64, p.offsets as u64, p.sorted as u64);
    let psw = p.psw.unwrap_or(0) as u64;
    let am = p.argmax.unwrap_or(0) as u64;
    let a_rs = p.bag_rows.row_stride as i64;
    let (num, dim, bags, n, pad) = (p.num as i32, p.dim as i32, p.bags as i32, p.n as i32, p.padding_idx);
    let stream = borrowed_stream(&dev, exec.stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&tp).arg(&ts).arg(&bp).arg(&bs).arg(&ip).arg(&op).arg(&psw).arg(&sp).arg(&am).arg(&a_rs);
    b.arg(&num).arg(&dim).arg(&bags).arg(&n).arg(&pad);
    // SAFETY: every pointer is a live tensor validated by the plan (table and bag rows as row views
    // of `dim` columns, int32 indices/offsets/sorted/argmax of the validated lengths, per-sample
    // weights of n elements); offsets were checked by the caller to lie in [0, n] and increase;
    // index reads are clamped to the table; the launch goes on the caller's stream.
    unsafe { b.launch(cfg(grid as u32, (block as u32, 1), 0)) }.map_err(driver_err("launching embag"))?;
    Ok(())
}

/// The variants CI compiles: every dtype, mode and direction.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for (mode, psw) in [(Mode::Sum, true), (Mode::Mean, false), (Mode::Max, false)] {
            for bwd in [false, true] {
                let key = Key { ordinal: 0, dtype, vec: 16 / dtype.size(), block: 256, mode, psw, bwd };
                out.push((&KERNEL, defines(&key)));
            }
        }
    }
    out
}
