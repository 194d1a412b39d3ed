//! Batched small factorizations on CUDA: variant selection and launches (math in
//! `kernels/linalg.cu`). One team of threads per matrix, the matrix in shared memory: a matrix
//! that does not fit one block's shared memory is refused with `Error::Unsupported` (the Python
//! layer then hands it to torch.linalg, saying so).

use super::jit::{function, Defines, Kernel, Variants};
use super::rows::knob;
use super::{allow_dynamic_smem, borrowed_stream, cfg, ctype, device, driver_err, ContextGuard, DeviceState};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::linalg::{Batch, CholeskyPlan, CholeskySolvePlan, LuSolvePlan, QrPlan, SvdPlan, TrsmPlan};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, PushKernelArg};
use std::sync::OnceLock;

pub static KERNEL: Kernel = Kernel { name: "linalg", source: include_str!("../../kernels/linalg.cu") };

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Entry {
    Qr,
    Cholesky,
    Lu,
    Trsm,
    Jacobi,
    Eigh,
    CholeskyReg,
    LuReg,
    CholeskyRow,
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::Qr => "qr_kernel",
            Entry::Cholesky => "cholesky_kernel",
            Entry::Lu => "lu_kernel",
            Entry::Trsm => "trsm_kernel",
            Entry::Jacobi => "jacobi_kernel",
            Entry::Eigh => "eigh_kernel",
            Entry::CholeskyReg => "cholesky_reg_kernel",
            Entry::LuReg => "lu_reg_kernel",
            Entry::CholeskyRow => "cholesky_row_kernel",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    ordinal: usize,
    entry: Entry,
    dtype: DType,
    /// Warps per matrix.
    w: usize,
    /// Matrices per block (w == 1 only).
    mpb: usize,
    /// Register tile (`R_TILE`) of `cholesky_reg_kernel`, lanes per matrix (`ROW_NP`) of the
    /// row-per-lane kernels, else 0.
    tile: usize,
}

fn defines(k: &Key) -> Defines {
    let t = ctype(k.dtype).to_string();
    let mut d = vec![("T_X", t.clone()), ("ACC", t), ("WARPS", k.w.to_string()), ("MPB", k.mpb.to_string())];
    match k.entry {
        Entry::CholeskyReg => d.push(("R_TILE", k.tile.to_string())),
        Entry::LuReg | Entry::CholeskyRow => d.push(("ROW_NP", k.tile.to_string())),
        _ => {}
    }
    d
}

fn kernel(key: Key, dev: &DeviceState) -> Result<CudaFunction> {
    static C: Variants<Key> = Variants::new();
    C.get(key, || {
        let f = function(dev, &KERNEL, &defines(&key), key.entry.name())?;
        allow_dynamic_smem(&f, dev)?;
        Ok(f)
    })
}

/// Team shape for a matrix whose largest dimension is `dim`: one warp (several matrices per
/// block) up to 32, else `METALCORE_LINALG_WARPS` warps (default 4 up to 64, 8 beyond).
fn team(dim: usize) -> (usize, usize) {
    static WARPS: OnceLock<usize> = OnceLock::new();
    static MPB: OnceLock<usize> = OnceLock::new();
    if dim <= 32 {
        return (1, knob(&MPB, "METALCORE_LINALG_MPB", 4).min(32));
    }
    let default = if dim <= 64 { 4 } else { 8 };
    (knob(&WARPS, "METALCORE_LINALG_WARPS", default).clamp(2, 32), 1)
}

/// A kernel argument (pointers travel as `P`).
enum Arg {
    P(usize),
    L(i64),
    I(i32),
}

/// Launches `entry` over `batch` matrices needing `per(warps)` shared-memory elements each.
#[allow(clippy::too_many_arguments)]
fn launch(
    ordinal: usize,
    exec: Exec,
    entry: Entry,
    dtype: DType,
    dim: usize,
    batch: usize,
    per: impl Fn(usize) -> usize,
    args: &[Arg],
) -> Result<()> {
    launch_team(ordinal, exec, entry, dtype, team(dim), dim, batch, per, args)
}

/// [`launch`] with the team shape `(warps, matrices per block)` given.
#[allow(clippy::too_many_arguments)]
fn launch_team(
    ordinal: usize,
    exec: Exec,
    entry: Entry,
    dtype: DType,
    shape: (usize, usize),
    dim: usize,
    batch: usize,
    per: impl Fn(usize) -> usize,
    args: &[Arg],
) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let (mut w, mut mpb) = shape;
    let (f, smem) = loop {
        let bytes = |mpb: usize| per(w) * dtype.size() * mpb;
        while mpb > 1 && bytes(mpb) > dev.smem_optin {
            mpb /= 2;
        }
        let smem = bytes(mpb);
        if smem > dev.smem_optin {
            return Err(Error::Unsupported(format!(
                "{}: a {dim}-sized {dtype} matrix needs {smem} bytes of shared memory, more than the {} a block may use",
                entry.name().trim_end_matches("_kernel"),
                dev.smem_optin
            )));
        }
        let tile = if entry == Entry::CholeskyReg { dim.div_ceil(16) } else { 0 };
        let f = kernel(Key { ordinal, entry, dtype, w, mpb, tile }, &dev)?;
        // A variant whose registers do not fit a block of this size: fewer warps per matrix (the
        // kernels take any team size).
        use cudarc::driver::sys::CUfunction_attribute_enum as A;
        let max_threads = f
            .get_attribute(A::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
            .map_err(driver_err("reading a kernel's thread limit"))? as usize;
        if 32 * w * mpb <= max_threads {
            break (f, smem);
        }
        if w > 1 {
            w = (max_threads / 32).clamp(1, w - 1);
        } else {
            mpb = (max_threads / 32).clamp(1, mpb - 1);
        }
    };
    // SAFETY (of the launch): the shared memory requested is exactly what the kernel carves for
    // `mpb` teams; see `launch_args`.
    unsafe { launch_args(&dev, exec, &f, batch.div_ceil(mpb), 32 * w * mpb, smem, args) }
}

/// Launches `f` with `args` on the caller's stream.
///
/// # Safety
/// `args` are the plan's validated contiguous buffers and sizes in the order of the kernel's
/// signature, each team reading and writing only its own matrix (index < batch); `smem` is what
/// the kernel needs for a block of `threads`.
unsafe fn launch_args(
    dev: &DeviceState,
    exec: Exec,
    f: &CudaFunction,
    grid: usize,
    threads: usize,
    smem: usize,
    args: &[Arg],
) -> Result<()> {
    let stream = borrowed_stream(dev, exec.stream);
    let mut b = stream.launch_builder(f);
    let ptrs: Vec<u64> = args.iter().map(|a| if let Arg::P(p) = a { *p as u64 } else { 0 }).collect();
    for (a, p) in args.iter().zip(&ptrs) {
        match a {
            Arg::P(_) => b.arg(p),
            Arg::L(v) => b.arg(v),
            Arg::I(v) => b.arg(v),
        };
    }
    // SAFETY: per this function's contract.
    unsafe { b.launch(cfg(grid as u32, (threads as u32, 1), smem as u32)) }
        .map_err(driver_err("launching a batched factorization"))?;
    Ok(())
}

pub fn qr(p: &QrPlan, ordinal: usize, exec: Exec) -> Result<()> {
    let (m, n, kq, kr) = (p.a.rows as i32, p.a.cols as i32, p.kq as i32, p.kr as i32);
    if p.a.batch == 0 || (p.a.rows == 0 && p.a.cols == 0) {
        return Ok(());
    }
    let k = p.a.rows.min(p.a.cols);
    let (mu, nu, kqu) = (p.a.rows, p.a.cols, p.kq);
    let per = |w: usize| mu * (nu + 1) + if kqu > 0 { mu * (kqu + 1) } else { 0 } + w * nu.max(kqu) + k + 2 * w;
    let args = [
        Arg::P(p.a.ptr),
        Arg::P(p.q),
        Arg::P(p.r),
        Arg::L(p.a.batch as i64),
        Arg::I(m),
        Arg::I(n),
        Arg::I(kq),
        Arg::I(kr),
    ];
    launch(ordinal, exec, Entry::Qr, p.a.dtype, mu.max(nu), p.a.batch, per, &args)
}

pub fn cholesky(p: &CholeskyPlan, ordinal: usize, exec: Exec) -> Result<()> {
    if p.a.batch == 0 {
        return Ok(());
    }
    let n = p.a.rows;
    let args = [
        Arg::P(p.src),
        Arg::P(p.a.ptr),
        Arg::P(p.info),
        Arg::L(p.a.batch as i64),
        Arg::I(n as i32),
        Arg::I(p.upper as i32),
    ];
    // 32 < n <= 128: the matrix in registers of a 16×16 thread grid (float64 up to 64, past which
    // its tile would spill).
    if n > 0 && n <= 32 {
        return launch_rows(ordinal, exec, Entry::CholeskyRow, p.a.dtype, n, p.a.batch, &args);
    }
    let reg_max = if p.a.dtype == DType::F64 { 64 } else { 128 };
    if n > 32 && n <= reg_max {
        return launch_team(ordinal, exec, Entry::CholeskyReg, p.a.dtype, (8, 1), n, p.a.batch, |_| 0, &args);
    }
    let per = |_w: usize| n * (n + 1);
    launch(ordinal, exec, Entry::Cholesky, p.a.dtype, n, p.a.batch, per, &args)
}

pub fn lu_solve(p: &LuSolvePlan, ordinal: usize, exec: Exec) -> Result<()> {
    if p.a.batch == 0 {
        return Ok(());
    }
    let (n, k) = (p.a.rows, p.b.cols);
    let per = |w: usize| n * (n + 1) + n * (k + 1) + 4 * w;
    let args = [
        Arg::P(p.a.ptr),
        Arg::P(p.lu.unwrap_or(0)),
        Arg::P(p.b.ptr),
        Arg::P(p.x),
        Arg::P(p.pivots.unwrap_or(0)),
        Arg::P(p.info),
        Arg::L(p.a.batch as i64),
        Arg::I(n as i32),
        Arg::I(k as i32),
    ];
    if n <= 32 && n > 0 {
        return launch_rows(ordinal, exec, Entry::LuReg, p.a.dtype, n, p.a.batch, &args);
    }
    launch(ordinal, exec, Entry::Lu, p.a.dtype, n, p.a.batch, per, &args)
}

/// Launches a row-per-lane kernel (`n` <= 32: 8, 16 or 32 lanes per matrix, 128-thread blocks,
/// no shared memory) whose signature is that of `entry`'s shared-memory counterpart.
fn launch_rows(
    ordinal: usize,
    exec: Exec,
    entry: Entry,
    dtype: DType,
    n: usize,
    batch: usize,
    args: &[Arg],
) -> Result<()> {
    let np = n.next_power_of_two().max(8);
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let f = kernel(Key { ordinal, entry, dtype, w: 1, mpb: 1, tile: np }, &dev)?;
    // SAFETY: `args` follow the counterpart's signature, which the row kernels share; they use no
    // shared memory and each lane group touches only its own matrix.
    unsafe { launch_args(&dev, exec, &f, (batch * np).div_ceil(128), 128, 0, args) }
}

/// Flag bits of `trsm_kernel`: lower, transpose, unit diagonal.
fn flags(lower: bool, trans: bool, unit: bool) -> i32 {
    lower as i32 | (trans as i32) << 1 | (unit as i32) << 2
}

fn trsm_launch(ordinal: usize, exec: Exec, t: usize, b: &Batch, passes: [Option<i32>; 2]) -> Result<()> {
    let (n, k) = (b.rows, b.cols);
    if b.batch == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    let per = |_w: usize| n * (n + 1) + n * (k + 1);
    let (f1, two, f2) = (passes[0].unwrap_or(0), passes[1].is_some() as i32, passes[1].unwrap_or(0));
    let args = [
        Arg::P(t),
        Arg::P(b.ptr),
        Arg::L(b.batch as i64),
        Arg::I(n as i32),
        Arg::I(k as i32),
        Arg::I(f1),
        Arg::I(two),
        Arg::I(f2),
    ];
    launch(ordinal, exec, Entry::Trsm, b.dtype, n, b.batch, per, &args)
}

pub fn trsm(p: &TrsmPlan, ordinal: usize, exec: Exec) -> Result<()> {
    trsm_launch(ordinal, exec, p.t.ptr, &p.b, [Some(flags(p.lower, p.trans, p.unit)), None])
}

/// `A X = B` from the factor: L then Lᵀ (or Uᵀ then U).
pub fn cholesky_solve(p: &CholeskySolvePlan, ordinal: usize, exec: Exec) -> Result<()> {
    let lower = !p.upper;
    trsm_launch(ordinal, exec, p.l.ptr, &p.b, [Some(flags(lower, p.upper, false)), Some(flags(lower, lower, false))])
}

/// Warps per matrix for the Jacobi rotations: one per pair of columns, at most
/// `METALCORE_JACOBI_WARPS` (default 32, a full 1024-thread block).
fn jacobi_warps(n: usize) -> usize {
    static WARPS: OnceLock<usize> = OnceLock::new();
    n.div_ceil(2).clamp(1, knob(&WARPS, "METALCORE_JACOBI_WARPS", 32).clamp(1, 32))
}

pub fn svd(p: &SvdPlan, ordinal: usize, exec: Exec) -> Result<()> {
    let (m, n) = (p.a.rows, p.a.cols);
    if n == 0 {
        return Ok(());
    }
    let w = jacobi_warps(n);
    if p.eigh {
        // A warp per pair of the round (one warp per matrix measured slower on H200 even for
        // 1000 32×32 matrices: 1.16 ms against 0.96).
        let shape = (w, 1);
        let np = n + (n & 1);
        let per = move |_: usize| 2 * np * (np + 1) + 4 * np;
        let args = [
            Arg::P(p.a.ptr),
            Arg::P(p.s),
            Arg::P(p.v),
            Arg::P(p.info),
            Arg::L(p.a.batch as i64),
            Arg::I(n as i32),
            Arg::I(p.max_sweeps as i32),
        ];
        return launch_team(ordinal, exec, Entry::Eigh, p.a.dtype, shape, n, p.a.batch, per, &args);
    }
    let want_v = p.v != 0;
    let per = move |_: usize| n * (m + 1) + if want_v { n * (n + 1) } else { 0 } + 3 * n;
    let args = [
        Arg::P(p.a.ptr),
        Arg::P(p.s),
        Arg::P(p.u),
        Arg::P(p.v),
        Arg::P(p.info),
        Arg::L(p.a.batch as i64),
        Arg::I(m as i32),
        Arg::I(n as i32),
        Arg::I(p.max_sweeps as i32),
    ];
    launch_team(ordinal, exec, Entry::Jacobi, p.a.dtype, (w, 1), m.max(n), p.a.batch, per, &args)
}

/// The variants CI compiles: every entry point, both dtypes, warp teams and block teams.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F64] {
        for (w, mpb) in [(1, 4), (4, 1), (16, 1)] {
            out.push((&KERNEL, defines(&Key { ordinal: 0, entry: Entry::Qr, dtype, w, mpb, tile: 0 })));
        }
        for tile in [3, 8] {
            out.push((&KERNEL, defines(&Key { ordinal: 0, entry: Entry::CholeskyReg, dtype, w: 8, mpb: 1, tile })));
        }
        for tile in [8, 16, 32] {
            for entry in [Entry::LuReg, Entry::CholeskyRow] {
                out.push((&KERNEL, defines(&Key { ordinal: 0, entry, dtype, w: 1, mpb: 1, tile })));
            }
        }
    }
    out
}
