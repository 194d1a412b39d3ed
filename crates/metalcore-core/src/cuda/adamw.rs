//! AdamW on CUDA: tables of up to MAXT tensors per launch, passed as kernel parameters (math in
//! `kernels/adamw.cu`).

use super::jit::{function, Defines, Kernel, Variants};
use super::rows::flag;
use super::{borrowed_stream, cfg, ctype, device, driver_err, ContextGuard, DeviceState};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::adamw::{Plan, CHUNK};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, DeviceRepr, PushKernelArg};

pub static KERNEL: Kernel = Kernel { name: "adamw", source: include_str!("../../kernels/adamw.cu") };

/// Tensors per launch: the table (8 · 8 bytes per tensor) must fit the 4 KiB of kernel parameters.
const MAXT: usize = 48;
const BLOCK: usize = 512;
/// Elements per access (16 bytes of float32 moments); CHUNK is a multiple of it.
const VEC: usize = 4;

/// The kernel's `struct Table`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Table {
    param: [i64; MAXT],
    grad: [i64; MAXT],
    m: [i64; MAXT],
    v: [i64; MAXT],
    vmax: [i64; MAXT],
    master: [i64; MAXT],
    numel: [i64; MAXT],
    first: [i64; MAXT + 1],
    count: i32,
}

// SAFETY: plain old data with the layout of the kernel's `struct Table` (i64 arrays, then an int;
// the struct's tail padding is not read).
unsafe impl DeviceRepr for Table {}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    ordinal: usize,
    dtype: DType,
    amsgrad: bool,
    master: bool,
    sr: bool,
}

fn defines(k: &Key) -> Defines {
    vec![
        ("T_P", ctype(k.dtype).to_string()),
        ("T_S", ctype(k.dtype.compute()).to_string()),
        ("ACC", ctype(k.dtype.compute()).to_string()),
        ("BLOCK", BLOCK.to_string()),
        ("CHUNK", CHUNK.to_string()),
        ("MAXT", MAXT.to_string()),
        ("VEC", VEC.to_string()),
        ("AMSGRAD", flag(k.amsgrad)),
        ("MASTER", flag(k.master)),
        ("SR", flag(k.sr)),
    ]
}

/// The loaded kernel for `key`.
fn kernel(key: Key, dev: &DeviceState) -> Result<CudaFunction> {
    static C: Variants<Key> = Variants::new();
    C.get(key, || function(dev, &KERNEL, &defines(&key), "adamw_kernel"))
}

fn launch_as<A: DeviceRepr + Copy>(
    p: &Plan,
    f: &CudaFunction,
    dev: &DeviceState,
    exec: Exec,
    cast: impl Fn(f64) -> A,
) -> Result<()> {
    let h = &p.hyper;
    let decay = cast(1.0 - h.lr * h.weight_decay);
    let (w1, b2, w2) = (cast(1.0 - h.beta1), cast(h.beta2), cast(1.0 - h.beta2));
    let step_size = cast(h.lr / (1.0 - h.beta1.powf(h.step)));
    let bc2_sqrt = cast((1.0 - h.beta2.powf(h.step)).sqrt());
    let (eps, sign) = (cast(h.eps), cast(if h.maximize { -1.0 } else { 1.0 }));
    let seed = h.seed.unwrap_or(0);
    let stream = borrowed_stream(dev, exec.stream);
    for (n, group) in p.items.chunks(MAXT).enumerate() {
        let mut t = Table {
            param: [0; MAXT],
            grad: [0; MAXT],
            m: [0; MAXT],
            v: [0; MAXT],
            vmax: [0; MAXT],
            master: [0; MAXT],
            numel: [0; MAXT],
            first: [0; MAXT + 1],
            count: group.len() as i32,
        };
        let mut total = 0i64;
        for (k, it) in group.iter().enumerate() {
            t.param[k] = it.param as i64;
            t.grad[k] = it.grad as i64;
            t.m[k] = it.m as i64;
            t.v[k] = it.v as i64;
            t.vmax[k] = it.vmax as i64;
            t.master[k] = it.master as i64;
            t.numel[k] = it.numel as i64;
            t.first[k] = total;
            total += it.numel.div_ceil(CHUNK) as i64;
        }
        t.first[group.len()] = total;
        if total == 0 {
            continue;
        }
        let grid = (total as usize).min(dev.sm_count * 16);
        let item_base = (n * MAXT) as i32;
        let mut b = stream.launch_builder(f);
        b.arg(&t).arg(&decay).arg(&w1).arg(&b2).arg(&w2).arg(&step_size).arg(&bc2_sqrt).arg(&eps).arg(&sign);
        b.arg(&seed).arg(&item_base);
        // SAFETY: every address in the table is a contiguous tensor validated by the plan (param and
        // grad of the plan's dtype, states of its accumulation dtype, `numel` elements each; absent
        // states are 0 and read only when the matching flag is compiled in); the argument list
        // matches the kernel's signature; the launch goes on the caller's stream.
        unsafe { b.launch(cfg(grid as u32, (BLOCK as u32, 1), 0)) }.map_err(driver_err("launching adamw"))?;
    }
    Ok(())
}

pub fn run(p: &Plan, ordinal: usize, exec: Exec) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let sr = p.hyper.seed.is_some() && p.dtype == DType::BF16 && !p.master;
    let key = Key { ordinal, dtype: p.dtype, amsgrad: p.amsgrad, master: p.master, sr };
    let f = kernel(key, &dev)?;
    if p.state == DType::F64 {
        launch_as::<f64>(p, &f, &dev, exec, |v| v)
    } else {
        launch_as::<f32>(p, &f, &dev, exec, |v| v as f32)
    }
}

/// The variants CI compiles: every dtype, with and without amsgrad, master copy and stochastic rounding.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for (amsgrad, master) in [(false, false), (true, true)] {
            let key = Key { ordinal: 0, dtype, amsgrad, master, sr: false };
            out.push((&KERNEL, defines(&key)));
        }
    }
    out.push((&KERNEL, defines(&Key { ordinal: 0, dtype: DType::BF16, amsgrad: true, master: false, sr: true })));
    out
}
