//! Gather, scatter-add and sorted index-add on CUDA: variant selection and launches (math in
//! `kernels/index.cu`).

use super::jit::{function, Defines, Kernel, Variants};
use super::{borrowed_stream, cfg, ctype, device, driver_err, vector_width, ContextGuard, DeviceState};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::index::{Kind, Plan, Strided};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, DeviceRepr, PushKernelArg};

pub static KERNEL: Kernel = Kernel { name: "index", source: include_str!("../../kernels/index.cu") };

const BLOCK: usize = 256;

/// The kernel's `Strided` argument, laid out as the C struct.
#[repr(C)]
#[derive(Clone, Copy)]
struct KStrided {
    ptr: u64,
    s: [i64; 3],
}

// SAFETY: plain old data with the layout of the kernel's `struct Strided` (a pointer, then three
// 64-bit integers; no padding).
unsafe impl DeviceRepr for KStrided {}

impl KStrided {
    fn of(s: &Strided) -> Self {
        KStrided { ptr: s.ptr as u64, s: s.strides.map(|v| v as i64) }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    ordinal: usize,
    kind: Kind,
    dtype: DType,
    index: DType,
    vec: usize,
    lanes: usize,
    wide: bool,
}

fn defines(k: &Key) -> Defines {
    let (mode, table) = match k.kind {
        Kind::Gather => (0, k.dtype),
        Kind::ScatterAdd => (1, k.dtype.compute()),
        Kind::SortedAdd => (2, k.dtype),
    };
    vec![
        ("T_X", ctype(k.dtype).to_string()),
        ("T_T", ctype(table).to_string()),
        ("ACC", ctype(k.dtype.compute()).to_string()),
        ("IDX", if k.index == DType::I32 { "int" } else { "i64" }.to_string()),
        ("POS", if k.wide { "unsigned long long" } else { "unsigned" }.to_string()),
        ("VEC", k.vec.to_string()),
        ("MODE", mode.to_string()),
        ("LANES", k.lanes.to_string()),
        ("BLOCK", BLOCK.to_string()),
    ]
}

/// The loaded kernel for `key`.
fn kernel(key: Key, dev: &DeviceState) -> Result<CudaFunction> {
    static C: Variants<Key> = Variants::new();
    C.get(key, || function(dev, &KERNEL, &defines(&key), "index_kernel"))
}

/// Elements moved per thread: more than one only along unit-stride rows that share one index
/// (and, where the table is read or written as vectors, rows of the table that are aligned too).
fn vec_of(p: &Plan) -> usize {
    let (t, r) = (&p.table, &p.rows);
    let shared = p.kind == Kind::SortedAdd || p.index.strides[2] == 0;
    if p.inner == 1 || !shared || t.strides[2] != 1 || r.strides[2] != 1 {
        return 1;
    }
    let size = r.dtype.size();
    let mut ops = vec![(r.ptr, r.strides[0], size), (r.ptr, r.strides[1], size)];
    if p.kind != Kind::ScatterAdd {
        ops.extend([(t.ptr, t.strides[0], size), (t.ptr, t.strides[1], size)]);
    }
    vector_width(r.dtype, p.inner, &ops)
}

pub fn run(p: &Plan, ordinal: usize, exec: Exec) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let vec = vec_of(p);
    let iv = p.inner / vec;
    // Sorted add: a group of lanes per key, as many as there are (o, column vector) items.
    let lanes = if p.kind == Kind::SortedAdd { (p.outer * iv).next_power_of_two().min(BLOCK) } else { 1 };
    let blocks =
        if p.kind == Kind::SortedAdd { p.j.div_ceil(BLOCK / lanes) } else { (p.outer * p.j * iv).div_ceil(BLOCK) };
    let grid = blocks.min(dev.sm_count * (2048 / BLOCK) * 4);
    // 32-bit positions unless a position (plus one grid stride) could pass 2^32.
    let wide = p.outer * p.j * iv + grid * BLOCK >= u32::MAX as usize;
    let key = Key { ordinal, kind: p.kind, dtype: p.rows.dtype, index: p.index.dtype, vec, lanes, wide };
    let f = kernel(key, &dev)?;
    let (t, r, x) = (KStrided::of(&p.table), KStrided::of(&p.rows), KStrided::of(&p.index));
    let perm = p.perm as u64;
    let (outer, j, iv, n) = (p.outer as u64, p.j as u64, iv as u64, p.n as i64);
    let stream = borrowed_stream(&dev, exec.stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&t).arg(&r).arg(&x).arg(&perm).arg(&outer).arg(&j).arg(&iv).arg(&n);
    // SAFETY: every pointer is a live tensor validated by the plan (3-D views with the extents and
    // strides given, the written one without overlapping elements; an int64 perm of J entries for
    // the sorted add); the kernel dereferences table rows only for indices in [0, N) and rows only
    // for positions in [0, J); vector accesses only where `vec_of` checked unit strides,
    // divisibility and alignment; the launch goes on the caller's stream.
    unsafe { b.launch(cfg(grid as u32, (BLOCK as u32, 1), 0)) }.map_err(driver_err("launching index"))?;
    Ok(())
}

/// The variants CI compiles: every dtype and mode, vector and scalar, both index types, both
/// position widths.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let v = 16 / dtype.size();
        for (kind, vec, lanes) in [
            (Kind::Gather, 1, 1),
            (Kind::Gather, v, 1),
            (Kind::ScatterAdd, 1, 1),
            (Kind::ScatterAdd, v, 1),
            (Kind::SortedAdd, 1, 1),
            (Kind::SortedAdd, v, BLOCK),
        ] {
            let index = if vec == 1 { DType::I64 } else { DType::I32 };
            let key = Key { ordinal: 0, kind, dtype, index, vec, lanes, wide: dtype == DType::F32 && vec == 1 };
            out.push((&KERNEL, defines(&key)));
        }
    }
    out
}
