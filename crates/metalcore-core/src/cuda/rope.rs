//! RoPE on CUDA: variant selection and launches (math in `kernels/rope.cu`).

use super::jit::{function, Defines, Kernel, Variants};
use super::rows::flag;
use super::{borrowed_stream, cfg, ctype, device, driver_err, ContextGuard, DeviceState};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::rope::{Plan, Side};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, DeviceRepr, PushKernelArg};

pub static KERNEL: Kernel = Kernel { name: "rope", source: include_str!("../../kernels/rope.cu") };

/// The kernel's `Side` argument, laid out as the C struct.
#[repr(C)]
#[derive(Clone, Copy)]
struct KSide {
    x: u64,
    out: u64,
    heads: i64,
    xs: [i64; 3],
    os: [i64; 3],
}

// SAFETY: plain old data with the layout of the kernel's `struct Side` (two pointers, then seven
// 64-bit integers; no padding).
unsafe impl DeviceRepr for KSide {}

impl KSide {
    fn of(s: &Side) -> Self {
        KSide { x: s.x as u64, out: s.out as u64, heads: s.heads as i64, xs: s.xs, os: s.os }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    ordinal: usize,
    dtype: DType,
    cos_dtype: DType,
    vec: usize,
    lv: usize,
    lvc: usize,
    pv: usize,
    r: usize,
    units: usize,
    hpi: usize,
    interleaved: bool,
    backward: bool,
    has_pos: bool,
}

fn defines(k: &Key) -> Defines {
    vec![
        ("T_X", ctype(k.dtype).to_string()),
        ("T_C", ctype(k.cos_dtype).to_string()),
        ("ACC", ctype(k.dtype.compute()).to_string()),
        ("VEC", k.vec.to_string()),
        ("LV", k.lv.to_string()),
        ("LVC", k.lvc.to_string()),
        ("PV", k.pv.to_string()),
        ("R", k.r.to_string()),
        ("UNITS", k.units.to_string()),
        ("HPI", k.hpi.to_string()),
        ("INTERLEAVED", flag(k.interleaved)),
        ("BWD", flag(k.backward)),
        ("HAS_POS", flag(k.has_pos)),
    ]
}

/// The loaded kernel for `key`.
fn kernel(key: Key, dev: &DeviceState) -> Result<CudaFunction> {
    static C: Variants<Key> = Variants::new();
    C.get(key, || function(dev, &KERNEL, &defines(&key), "rope_kernel"))
}

/// Largest power of two `w ≤ max` with every pointer aligned to `w` elements of `size` bytes and
/// every stride/offset a multiple of `w`.
fn width(max: usize, size: usize, ptrs: &[usize], mults: &[i64]) -> usize {
    let mut w = max.max(1);
    while w > 1 && !(ptrs.iter().all(|p| p % (w * size) == 0) && mults.iter().all(|m| m % w as i64 == 0)) {
        w /= 2;
    }
    w
}

fn key_of(p: &Plan, ordinal: usize) -> Result<Key> {
    let size = p.dtype.size();
    let max = 16 / size;
    let half = p.rot / 2;
    let span = if p.interleaved { p.rot } else { half };
    let mut vec = max;
    while vec > 1 && span % vec != 0 {
        vec /= 2;
    }
    if p.interleaved {
        vec = vec.max(2);
    }
    let mut ptrs = vec![];
    let mut strides = vec![];
    for s in p.sides() {
        ptrs.extend([s.x, s.out]);
        strides.extend(s.xs.iter().chain(&s.os).copied());
    }
    let lv = width(vec, size, &ptrs, &[&strides[..], &[span as i64]].concat());
    let csz = p.cos_dtype.size();
    let lvc = width(vec.min(16 / csz), csz, &[p.cos, p.sin], &[p.cs[0], p.cs[1], span as i64]);
    let r = if p.rot == 0 { 0 } else { span / vec };
    let (pv, pu) = if p.copy_pass {
        let pass = (p.dim - p.rot) as i64;
        let pv = width(max, size, &ptrs, &[&strides[..], &[pass, p.rot as i64]].concat());
        (pv, (p.dim - p.rot) / pv)
    } else {
        (1, 0)
    };
    let units = r + pu;
    if units > 1024 {
        return Err(Error::Unsupported(format!(
            "rope: head_dim {} needs {units} threads per head (at most 1024 supported)",
            p.dim
        )));
    }
    let heads: usize = p.sides().map(|s| s.heads).sum();
    let hpi = (256 / units.max(1)).clamp(1, heads.max(1));
    let key = Key {
        ordinal,
        dtype: p.dtype,
        cos_dtype: p.cos_dtype,
        vec,
        lv,
        lvc,
        pv,
        r,
        units,
        hpi,
        interleaved: p.interleaved,
        backward: p.backward,
        has_pos: p.pos.is_some(),
    };
    Ok(key)
}

pub fn run(p: &Plan, ordinal: usize, exec: Exec) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let key = key_of(p, ordinal)?;
    if key.units == 0 {
        return Ok(());
    }
    let f = kernel(key, &dev)?;
    let tokens = p.batch * p.seq;
    let block = key.units * key.hpi;
    let grid = tokens.min(dev.sm_count * (2048 / block).max(1) * 4);
    let q = KSide::of(&p.q);
    let k = p.k.as_ref().map(KSide::of).unwrap_or(KSide { heads: 0, ..q });
    let (pos, ps) = p.pos.map_or((0u64, [0i64; 2]), |(ptr, s)| (ptr as u64, s));
    let (cos, sin) = (p.cos as u64, p.sin as u64);
    let table_rows = p.table_rows as i32;
    let (batch, seq, rot) = (p.batch as i64, p.seq as i64, p.rot as i32);
    let stream = borrowed_stream(&dev, exec.stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&q).arg(&k).arg(&cos).arg(&sin).arg(&p.cs[0]).arg(&p.cs[1]);
    b.arg(&pos).arg(&ps[0]).arg(&ps[1]).arg(&table_rows).arg(&batch).arg(&seq).arg(&rot);
    // SAFETY: every pointer is a live tensor validated by the plan for its (batch, heads, seq,
    // head_dim) view and strides; the widths (VEC, LV, LVC, PV) divide every offset and stride and
    // match each pointer's alignment (key_of); position ids are clamped to the table in the kernel;
    // the argument list matches the kernel's signature; the launch goes on the caller's stream.
    unsafe { b.launch(cfg(grid as u32, (block as u32, 1), 0)) }.map_err(driver_err("launching rope"))?;
    Ok(())
}

/// The variants CI compiles: every dtype, both layouts, both directions, table and per-token cos,
/// partial rotary (pass-through units) and narrow loads.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for (interleaved, backward, has_pos) in
            [(false, false, false), (false, true, true), (true, false, true), (true, true, false)]
        {
            let vec = 16 / dtype.size();
            let key = Key {
                ordinal: 0,
                dtype,
                cos_dtype: if has_pos { DType::F32 } else { dtype },
                vec,
                lv: if backward { 1 } else { vec },
                lvc: 1,
                pv: 2,
                r: 64 / vec,
                units: 64 / vec + 3,
                hpi: 4,
                interleaved,
                backward,
                has_pos,
            };
            out.push((&KERNEL, defines(&key)));
        }
    }
    out
}
