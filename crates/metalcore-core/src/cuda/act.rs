//! Activations and gated linear units on CUDA: variant selection and launches (math in `kernels/act.cu`).

use super::jit::{function, Defines, Kernel, Variants};
use super::rows::{flag, knob, Knob};
use super::{borrowed_stream, cfg, ctype, device, driver_err, vector_width, ContextGuard, DeviceState};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::act::{Act, Mode, Plan};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, PushKernelArg};

pub static KERNEL: Kernel = Kernel { name: "act", source: include_str!("../../kernels/act.cu") };

const BLOCK: usize = 256;

// Defaults from a sweep on an H200 (2026-11-26, 8192×14336 bf16 and fp32; scripts/tune_act.sh,
// bench/results/act-tuning-nvidia-h200.md): one vector per thread per iteration and a grid of up
// to 64 blocks per SM (about seven iterations per thread at this size) streamed best; a grid of one
// resident wave walking the rest was 10-25 % slower.

/// Vectors per thread per iteration, all loaded before any math (METALCORE_ACT_UNROLL).
fn unroll() -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_ACT_UNROLL", 1)
}

/// Most blocks per SM in the grid; threads walk the rest grid-stride (METALCORE_ACT_BLOCKS_PER_SM).
fn blocks_per_sm() -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_ACT_BLOCKS_PER_SM", 64)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    ordinal: usize,
    act: Act,
    mode: Mode,
    bias: bool,
    dtype: DType,
    vec: usize,
    unroll: usize,
}

fn defines(k: &Key) -> Defines {
    let mode = match k.mode {
        Mode::Fwd => 0,
        Mode::Bwd => 1,
        Mode::GluFwd => 2,
        Mode::GluBwd => 3,
    };
    let act = match k.act {
        Act::Silu => 0,
        Act::Gelu => 1,
        Act::GeluTanh => 2,
    };
    vec![
        ("T_X", ctype(k.dtype).to_string()),
        ("ACC", ctype(k.dtype.compute()).to_string()),
        ("VEC", k.vec.to_string()),
        ("UNROLL", k.unroll.to_string()),
        ("BLOCK", BLOCK.to_string()),
        ("MODE", mode.to_string()),
        ("ACT", act.to_string()),
        ("BIAS", flag(k.bias)),
        ("FAST", flag(k.dtype.size() == 2)),
    ]
}

/// The loaded kernel for `key`.
fn kernel(key: Key, dev: &DeviceState) -> Result<CudaFunction> {
    static C: Variants<Key> = Variants::new();
    C.get(key, || function(dev, &KERNEL, &defines(&key), "act_kernel"))
}

pub fn run(p: &Plan, ordinal: usize, exec: Exec) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let size = p.dtype.size();
    let mut ops: Vec<(usize, usize, usize)> =
        p.ins.iter().chain(&p.outs).map(|m| (m.ptr, m.row_stride, size)).collect();
    if let Some(b) = &p.bias {
        ops.push((b.ptr, 0, size));
    }
    let vec = vector_width(p.dtype, p.cols, &ops);
    let key = Key { ordinal, act: p.act, mode: p.mode, bias: p.bias.is_some(), dtype: p.dtype, vec, unroll: unroll() };
    let f = kernel(key, &dev)?;
    let vpr = (p.cols / vec) as i64;
    let total = p.rows as i64 * vpr;
    let want = (total as usize).div_ceil(BLOCK * key.unroll);
    let grid = want.clamp(1, dev.sm_count * blocks_per_sm());
    let stride = (grid * BLOCK) as i64;
    let (step_r, step_c) = (stride / vpr, stride % vpr);
    // Absent operands are passed as the first input (never dereferenced: MODE decides what is read).
    let m = |v: &[crate::ops::Mat], i: usize| v.get(i).or(v.first()).map(|m| (m.ptr as u64, m.row_stride as i64));
    let (in0, in1, in2) = (m(&p.ins, 0).unwrap(), m(&p.ins, 1).unwrap(), m(&p.ins, 2).unwrap());
    let (out0, out1) = (m(&p.outs, 0).unwrap(), m(&p.outs, 1).unwrap());
    let bias = p.bias.map_or(0u64, |b| b.ptr as u64);
    let rows = p.rows as i64;
    let stream = borrowed_stream(&dev, exec.stream);
    let mut b = stream.launch_builder(&f);
    for (ptr, rs) in [&in0, &in1, &in2, &out0, &out1] {
        b.arg(ptr).arg(rs);
    }
    b.arg(&bias).arg(&rows).arg(&vpr).arg(&step_r).arg(&step_c);
    // SAFETY: every pointer is a live tensor validated by the plan as a `rows × cols` view of the
    // plan's dtype (row strides in elements; the bias a contiguous vector of `cols`); `vec` divides
    // cols and every stride and matches every pointer's alignment; the argument list matches the
    // kernel's signature; the launch goes on the caller's stream.
    unsafe { b.launch(cfg(grid as u32, (BLOCK as u32, 1), 0)) }.map_err(driver_err("launching act"))?;
    Ok(())
}

/// The variants CI compiles: every dtype, activation and mode, with and without bias.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for act in [Act::Silu, Act::Gelu, Act::GeluTanh] {
            for (mode, bias) in
                [(Mode::Fwd, false), (Mode::Fwd, true), (Mode::Bwd, true), (Mode::GluFwd, false), (Mode::GluBwd, false)]
            {
                let vec = 16 / dtype.size();
                let key = Key { ordinal: 0, act, mode, bias, dtype, vec, unroll: 2 };
                out.push((&KERNEL, defines(&key)));
            }
        }
    }
    out
}
