//! Batched small factorizations on CUDA: variant selection and launches (math in
//! `kernels/linalg.cu`). One team of threads per matrix, the matrix in shared memory. Past what
//! one block's shared memory holds, the triangular solves run on cuBLAS TRSM through torch's
//! handle (see [`super::blas`]) and Cholesky, when the caller passes that handle, is blocked (our
//! diagonal-block, panel and trailing-update kernels, or cuBLAS for the update); otherwise such a matrix is refused with
//! `Error::Unsupported` (the Python layer then hands it to torch.linalg, saying so).

use super::blas::{Blas, Fill, Op, Real, Side};
use super::jit::{function, Defines, Kernel, Variants};
use super::rows::{knob, Knob};
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
    TriFinish,
    CholDiag,
    CholPanel,
    CholSyrk,
    CholSyrkCol,
    JacobiLane,
    EighTri,
    LuLeaf,
    LuUpdate,
    QrLeaf,
    QrApply,
    QrUdiag,
    QrCopy,
    EbScan,
    EbCopy,
    EbPanel,
    EbTsetup,
    EbTbis,
    EbTrank,
    EbTvec,
    EbTmgs,
    EbTconv,
    EbFinish,
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
            Entry::TriFinish => "tri_finish_kernel",
            Entry::CholDiag => "chol_diag_kernel",
            Entry::CholPanel => "chol_panel_kernel",
            Entry::CholSyrk => "chol_syrk_kernel",
            Entry::CholSyrkCol => "chol_syrk_col_kernel",
            Entry::JacobiLane => "jacobi_lane_kernel",
            Entry::EighTri => "eigh_tri_kernel",
            Entry::LuLeaf => "lu_leaf_kernel",
            Entry::LuUpdate => "lu_update_kernel",
            Entry::QrLeaf => "qr_leaf_kernel",
            Entry::QrApply => "qr_apply_kernel",
            Entry::QrUdiag => "qr_udiag_kernel",
            Entry::QrCopy => "qr_copy_kernel",
            Entry::EbScan => "eb_scan_kernel",
            Entry::EbCopy => "eb_copy_kernel",
            Entry::EbPanel => "eb_panel_kernel",
            Entry::EbTsetup => "eb_tsetup_kernel",
            Entry::EbTbis => "eb_tbis_kernel",
            Entry::EbTrank => "eb_trank_kernel",
            Entry::EbTvec => "eb_tvec_kernel",
            Entry::EbTmgs => "eb_tmgs_kernel",
            Entry::EbTconv => "eb_tconv_kernel",
            Entry::EbFinish => "eb_finish_kernel",
        }
    }
}

impl Entry {
    /// The large-matrix eigensolver's kernels (`EIGH_BIG`).
    fn big(self) -> bool {
        matches!(
            self,
            Entry::EbScan
                | Entry::EbCopy
                | Entry::EbPanel
                | Entry::EbTsetup
                | Entry::EbTbis
                | Entry::EbTrank
                | Entry::EbTvec
                | Entry::EbTmgs
                | Entry::EbTconv
                | Entry::EbFinish
        )
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
    /// row-per-lane kernels and `LANE_NP` of `jacobi_lane_kernel`, the block size (`DIAG_NB`) of
    /// the blocked Cholesky's kernels, else 0.
    tile: usize,
    /// Rows capacity (`LANE_MR`) of `jacobi_lane_kernel`; rows per block (`PANEL_R`) of
    /// `chol_panel_kernel`; the tile (`REST_TM`, `COL_TM`) of `chol_syrk_kernel` and
    /// `chol_syrk_col_kernel`; 1 for the profiling variant of
    /// `eigh_tri_kernel` (see `tri_profile`); rows per thread (`LU_LR`) of `lu_leaf_kernel`; else 0.
    /// (`tile` is the leaf width `LU_LW` of `lu_leaf_kernel` and `lu_update_kernel`, `w` the
    /// leaf's warps.)
    rows: usize,
}

/// METALCORE_CHOL_TRACE=1 (a development aid): the blocked Cholesky's diagonal and panel kernels
/// print their phases' clock ticks (`CHOL_TRACE` in linalg.cu).
fn chol_trace() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("METALCORE_CHOL_TRACE").is_ok_and(|v| v.trim() == "1"))
}

fn defines(k: &Key) -> Defines {
    let t = ctype(k.dtype).to_string();
    let mut d = vec![("T_X", t.clone()), ("ACC", t), ("WARPS", k.w.to_string()), ("MPB", k.mpb.to_string())];
    match k.entry {
        Entry::CholeskyReg => d.push(("R_TILE", k.tile.to_string())),
        Entry::LuReg | Entry::CholeskyRow => d.push(("ROW_NP", k.tile.to_string())),
        Entry::CholDiag => d.push(("DIAG_NB", k.tile.to_string())),
        Entry::CholSyrkCol => {
            d.push(("DIAG_NB", k.tile.to_string()));
            d.push(("COL_TM", k.rows.to_string()));
        }
        Entry::CholSyrk => {
            d.push(("DIAG_NB", k.tile.to_string()));
            d.push(("REST_TM", k.rows.to_string()));
        }
        Entry::CholPanel => {
            d.push(("DIAG_NB", k.tile.to_string()));
            d.push(("PANEL_R", k.rows.to_string()));
        }
        _ => {}
    }
    if matches!(k.entry, Entry::CholDiag | Entry::CholPanel) && chol_trace() {
        d.push(("CHOL_TRACE", "1".to_string()));
    }
    match k.entry {
        Entry::Jacobi => d.push(("PAIR_LANES", k.tile.to_string())),
        Entry::EighTri => {
            d.push(("TRI_EIGH", "1".to_string()));
            d.push(("TRI_NPL", k.tile.to_string()));
            if k.rows == 1 {
                d.push(("TRI_PROFILE", "1".to_string()));
            }
        }
        Entry::JacobiLane => {
            d.push(("LANE_NP", k.tile.to_string()));
            d.push(("LANE_MR", k.rows.to_string()));
        }
        Entry::LuLeaf | Entry::QrLeaf | Entry::QrApply => {
            d.push(("LU_LW", k.tile.to_string()));
            d.push(("LU_LR", k.rows.to_string()));
            d.push(("LU_LT", (32 * k.w).to_string()));
        }
        Entry::LuUpdate | Entry::QrUdiag | Entry::QrCopy => d.push(("LU_LW", k.tile.to_string())),
        e if e.big() => {
            d.push(("EIGH_BIG", "1".to_string()));
            d.push(("EB_NB", crate::ops::linalg::EIGH_PANEL.to_string()));
            if k.rows == 1 {
                d.push(("EB_PROFILE", "1".to_string()));
            }
        }
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

/// Team shape for `entry` on a matrix whose largest dimension is `dim`, in a batch of `batch` on a
/// device of `sms` SMs: one warp (several matrices per block) up to 32, else
/// `METALCORE_LINALG_WARPS` warps (default 4 up to 64; beyond, 8 — except the LU solve of more
/// matrices than SMs, 4: H200, three runs against two, 1000×96² 0.52–0.67 ms against 0.80–0.82 with
/// 8, 1000×128² 1.05–1.13 against 1.21–1.33, 300×128² k=16 0.51–0.57 against 0.59–0.64, 200×96²
/// 0.26–0.29 against 0.30–0.36; QR measured mixed, within the runs' noise).
fn team(entry: Entry, dim: usize, batch: usize, sms: usize) -> (usize, usize) {
    static WARPS: Knob = Knob::new();
    static MPB: Knob = Knob::new();
    if dim <= 32 {
        return (1, knob(&MPB, "METALCORE_LINALG_MPB", 4).min(32));
    }
    let default = if dim <= 64 || (entry == Entry::Lu && batch > sms) { 4 } else { 8 };
    (knob(&WARPS, "METALCORE_LINALG_WARPS", default).clamp(2, 32), 1)
}

/// A kernel argument (pointers travel as `P`).
#[derive(Clone, Copy)]
enum Arg {
    P(usize),
    L(i64),
    I(i32),
    D(f64),
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
    let sms = device(ordinal)?.sm_count;
    launch_team(ordinal, exec, entry, dtype, team(entry, dim, batch, sms), dim, batch, per, args, 0)
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
    tile: usize,
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
        let tile = if entry == Entry::CholeskyReg { dim.div_ceil(16) } else { tile };
        let rows = (entry == Entry::EighTri && tri_profile()) as usize;
        let f = kernel(Key { ordinal, entry, dtype, w, mpb, tile, rows }, &dev)?;
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
    // SAFETY: per this function's contract.
    unsafe { launch_grid(dev, exec, f, (grid, 1), threads, smem, args, false) }
}

/// [`launch_args`] on a two-dimensional grid, optionally as a cooperative launch (every block
/// resident at once, or the launch fails: what a grid barrier needs).
///
/// # Safety
/// As for [`launch_args`].
#[allow(clippy::too_many_arguments)]
unsafe fn launch_grid(
    dev: &DeviceState,
    exec: Exec,
    f: &CudaFunction,
    (gx, gy): (usize, usize),
    threads: usize,
    smem: usize,
    args: &[Arg],
    cooperative: bool,
) -> Result<()> {
    let stream = borrowed_stream(dev, exec.stream);
    let mut b = stream.launch_builder(f);
    let ptrs: Vec<u64> = args.iter().map(|a| if let Arg::P(p) = a { *p as u64 } else { 0 }).collect();
    for (a, p) in args.iter().zip(&ptrs) {
        match a {
            Arg::P(_) => b.arg(p),
            Arg::L(v) => b.arg(v),
            Arg::I(v) => b.arg(v),
            Arg::D(v) => b.arg(v),
        };
    }
    let mut c = cfg(gx as u32, (threads as u32, 1), smem as u32);
    c.grid_dim.1 = gy as u32;
    // SAFETY: per this function's contract.
    if cooperative {
        unsafe { b.launch_cooperative(c) }.map_err(driver_err("launching a cooperative kernel"))?;
    } else {
        unsafe { b.launch(c) }.map_err(driver_err("launching a batched factorization"))?;
    }
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
    let dev = device(ordinal)?;
    let warps = team(Entry::Qr, mu.max(nu), p.a.batch, dev.sm_count).0;
    if per(warps) * p.a.dtype.size() > dev.smem_optin && p.work.is_some() && exec.blas != 0 {
        return match p.a.dtype {
            DType::F32 => qr_blocked::<f32>(p, &dev, ordinal, exec),
            _ => qr_blocked::<f64>(p, &dev, ordinal, exec),
        };
    }
    launch(ordinal, exec, Entry::Qr, p.a.dtype, mu.max(nu), p.a.batch, per, &args)
}

/// Largest row count the blocked QR takes (`qr_leaf_kernel` holds a leaf's rows in the registers
/// of one block, as `lu_leaf_kernel` does; past 1024 rows the same shapes, [`qr_leaf_shape`]).
pub const QR_BLOCKED_MAX_M: usize = LU_BLOCKED_MAX_N;

/// Row-major `C (m×n) ← alpha op(A) op(B) + beta C` through column-major cuBLAS (which sees each
/// row-major matrix transposed: it computes Cᵀ = op(B)ᵀ op(A)ᵀ).
///
/// # Safety
/// As for [`Blas::gemm`], with the row-major shapes.
#[allow(clippy::too_many_arguments)]
unsafe fn rm_gemm<T: Real>(
    blas: &Blas,
    (opa, opb): (Op, Op),
    (m, n, k): (usize, usize, usize),
    alpha: T,
    a: (usize, usize),
    b: (usize, usize),
    beta: T,
    c: (usize, usize),
) -> Result<()> {
    // SAFETY: per this function's contract.
    unsafe { blas.gemm::<T>(opb, opa, (n, m, k), alpha, b, a, beta, c) }
}

/// X (mr × cols, row-major) ← (I − V T' Vᵀ) X for a panel's reflectors V (mr × nbp) and T = U⁻¹
/// (U row-major nbp × nbp at `u`, row stride QR_PANEL): T' = Tᵀ with `trans` (applying Qᵀ, to the
/// trailing matrix), else T (building Q). W = Vᵀ X (in `w`, row stride cols); W ← U⁻ᵀ W or U⁻¹ W,
/// a right-side solve of Wᵀ by what column-major cuBLAS sees at `u`, the lower-triangular Uᵀ (op
/// T for U⁻ᵀ, N for U⁻¹); X −= V W.
///
/// # Safety
/// V, U and X are device matrices of those shapes and row strides; `w` holds nbp × cols.
unsafe fn apply_panel<T: Real>(
    blas: &Blas,
    trans: bool,
    (mr, cols, nbp): (usize, usize, usize),
    v: (usize, usize),
    u: usize,
    x: (usize, usize),
    w: usize,
) -> Result<()> {
    // SAFETY: per this function's contract.
    unsafe {
        apply_block_reflector::<T>(blas, trans, false, (mr, cols, nbp), v, (u, crate::ops::linalg::QR_PANEL), x, w)
    }
}

/// [`apply_panel`] with U's row stride given and, with `vt`, V given transposed (row-major
/// nbp × mr at `v`, as the large eigh keeps its reflectors).
///
/// # Safety
/// As for [`apply_panel`].
#[allow(clippy::too_many_arguments)]
unsafe fn apply_block_reflector<T: Real>(
    blas: &Blas,
    trans: bool,
    vt: bool,
    (mr, cols, nbp): (usize, usize, usize),
    v: (usize, usize),
    u: (usize, usize),
    x: (usize, usize),
    w: usize,
) -> Result<()> {
    let op = if trans { Op::T } else { Op::N };
    let (first, second) = if vt { (Op::N, Op::T) } else { (Op::T, Op::N) };
    // SAFETY: per this function's contract.
    unsafe {
        rm_gemm::<T>(blas, (first, Op::N), (nbp, cols, mr), T::ONE, v, x, T::ZERO, (w, cols))?;
        blas.trsm::<T>(Side::Right, Fill::Lower, op, false, (cols, nbp), T::ONE, u, (w, cols))?;
        rm_gemm::<T>(blas, (second, Op::N), (mr, cols, nbp), T::MINUS_ONE, v, (w, cols), T::ONE, x)
    }
}

/// Blocked Householder QR of matrices too large for one block, one matrix after another (m up to
/// [`QR_BLOCKED_MAX_M`]), in the `work` scratch ([`crate::ops::linalg::qr_work_layout`]): A is
/// copied to F and factored right-looking in panels of QR_PANEL columns. Each panel is factored
/// a leaf at a time ([`qr_leaf_shape`]'s widths) by `qr_leaf_kernel`, which also writes the
/// leaf's reflectors explicitly (V) and Z = V T_lᵀ (T_l the leaf's triangular factor); the rest
/// of the panel then loses Z (Vᵀ A) (`qr_apply_kernel`, or two cuBLAS GEMMs past 2048 rows). The
/// panel's own block reflector I − V T Vᵀ is kept as U = T⁻¹ = diag(1/tau) + striu(VᵀV) (the "UT
/// transform": a GEMM and `qr_udiag_kernel`), so that T is applied by a triangular solve: the
/// trailing matrix A ← (I − V Tᵀ Vᵀ) A by GEMM (W = Vᵀ A), TRSM (W ← U⁻ᵀ W) and GEMM (A −= V W).
/// (Forming T itself, larft's way, took longer than the rest of a 4096² panel step.) R is F's
/// upper trapezoid; Q starts as the identity's first kq columns and takes the panels' I − V T Vᵀ
/// from the last panel to the first (GEMM, TRSM with U, GEMM), as LAPACK's orgqr.
fn qr_blocked<T: Real>(p: &QrPlan, dev: &DeviceState, ordinal: usize, exec: Exec) -> Result<()> {
    use crate::ops::linalg::{qr_work_layout, QR_LEAF_MAX, QR_PANEL as NB};
    let Some(work) = p.work else {
        return Err(Error::Unsupported("the blocked QR needs the work scratch".into()));
    };
    let (m, n, kq, kr, dtype, es) = (p.a.rows, p.a.cols, p.kq, p.kr, p.a.dtype, p.a.dtype.size());
    if m > QR_BLOCKED_MAX_M {
        return Err(Error::Unsupported(format!("the blocked QR takes up to {QR_BLOCKED_MAX_M} rows, got {m}")));
    }
    let k = m.min(n);
    let off = qr_work_layout(m, n, kq);
    let at = |region: usize| work + off[region] * es;
    let (f, v, uall, w1, z, tau) = (at(0), at(1), at(2), at(3), at(4), at(5));
    let fa = |i: usize, j: usize| f + (i * n + j) * es;
    let va = |i: usize, j: usize| v + (i * k + j) * es;
    let _ctx = ContextGuard::enter(dev)?;
    let raw = exec.stream as cudarc::driver::sys::CUstream;
    let widest = lu_leaf_shape(1, dtype).2;
    debug_assert!(widest <= QR_LEAF_MAX);
    let small = |entry| kernel(Key { ordinal, entry, dtype, w: 1, mpb: 1, tile: widest, rows: 0 }, dev);
    let (udiag, copy) = (small(Entry::QrUdiag)?, small(Entry::QrCopy)?);
    let copy_grid = |elems: usize| elems.div_ceil(256).clamp(1, 8 * dev.sm_count);
    // Each leaf reaches the rest of its panel through `qr_apply_kernel` while at most 2048
    // (float64: 1024) rows remain, else through cuBLAS: a GEMM for Vᵀ A (split over the rows, so
    // many SMs share the sum), then one for A −= Z (Vᵀ A). The kernel's blocks each run down every
    // row, so its time grows with them: H200, float32 (kernel / cuBLAS everywhere) 1024² 2.70 /
    // 3.88 ms, 2048² 7.26 / 8.56, 4096² 28.3 / 24.9, 8192² 226 / 115. METALCORE_QR_APPLY=1 takes
    // the kernel everywhere, 2 cuBLAS everywhere.
    static APPLY: Knob = Knob::new();
    let apply_rows = match knob(&APPLY, "METALCORE_QR_APPLY", 0) {
        1 => usize::MAX,
        2 => 0,
        _ if dtype == DType::F32 => 2048,
        _ => 1024,
    };
    let blas = Blas::bind(exec.blas, exec.stream)?;
    for b in 0..p.a.batch {
        let src = p.a.ptr + b * m * n * es;
        // SAFETY: the plan validated A (m×n) and the scratch (at least qr_work_len elements).
        unsafe { cudarc::driver::result::memcpy_dtod_async(f as u64, src as u64, m * n * es, raw) }
            .map_err(driver_err("copying the input"))?;
        for k0 in (0..k).step_by(NB) {
            let ke = (k0 + NB).min(k);
            let (nbp, mr) = (ke - k0, m - k0);
            let up = uall + (k0 / NB) * NB * NB * es;
            let (threads, rows, lw) = qr_leaf_shape(mr, dtype);
            let key = Key { ordinal, entry: Entry::QrLeaf, dtype, w: threads / 32, mpb: 1, tile: lw, rows };
            let (leaf, apply) = (kernel(key, dev)?, kernel(Key { entry: Entry::QrApply, ..key }, dev)?);
            for c0 in (k0..ke).step_by(lw) {
                let w = lw.min(ke - c0);
                // The leaf's and the apply kernel's arguments start alike.
                let head = [Arg::P(f), Arg::L(m as i64), Arg::L(n as i64), Arg::L(c0 as i64), Arg::I(w as i32)];
                let args =
                    [&head[..], &[Arg::L(k0 as i64), Arg::P(v), Arg::L(k as i64), Arg::P(tau), Arg::P(z)]].concat();
                // SAFETY: one block factors the leaf at c0 (its m - c0 rows fit `threads` × `rows`,
                // and as many padded rows of shared memory, at most 196 KB) and writes its columns
                // of F and V (rows k0 .. m), tau[c0 .. c0 + w) and Z (m - c0 rows of lw): all
                // inside the scratch's regions.
                let pad = if threads == 1024 { 1 } else { 16 / es };
                unsafe { launch_args(dev, exec, &leaf, 1, threads, threads * rows * (lw + pad) * es, &args)? };
                let pw = ke - c0 - w;
                if pw > 0 && m - c0 <= apply_rows {
                    let cb = if dtype == DType::F32 { 64 } else { 32 } / lw;
                    let args = [&head[..], &[Arg::L(ke as i64), Arg::P(v), Arg::L(k as i64), Arg::P(z)]].concat();
                    // SAFETY: each block owns `cb` of the pw columns right of the leaf in its
                    // panel (rows c0 .. m of F) and reads V's and Z's rows of the leaf.
                    unsafe { launch_args(dev, exec, &apply, pw.div_ceil(cb), 256, 0, &args)? };
                } else if pw > 0 {
                    // SAFETY: W1 (w × pw) fits its region (QR_PANEL × n); the blocks lie inside F, V, Z.
                    unsafe {
                        rm_gemm::<T>(
                            &blas,
                            (Op::T, Op::N),
                            (w, pw, m - c0),
                            T::ONE,
                            (va(c0, c0), k),
                            (fa(c0, c0 + w), n),
                            T::ZERO,
                            (w1, pw),
                        )?;
                        rm_gemm::<T>(
                            &blas,
                            (Op::N, Op::N),
                            (m - c0, pw, w),
                            T::MINUS_ONE,
                            (z, lw),
                            (w1, pw),
                            T::ONE,
                            (fa(c0, c0 + w), n),
                        )?;
                    }
                }
            }
            let nt = n - ke;
            if nt == 0 && kq == 0 {
                continue;
            }
            // U = striu(VᵀV) + diag(1/tau) (its lower triangle is never read).
            // SAFETY: U is nbp × nbp (row stride NB) in the panel's slot; V's panel block lies inside V.
            unsafe {
                rm_gemm::<T>(
                    &blas,
                    (Op::T, Op::N),
                    (nbp, nbp, mr),
                    T::ONE,
                    (va(k0, k0), k),
                    (va(k0, k0), k),
                    T::ZERO,
                    (up, NB),
                )?
            };
            let args = [Arg::P(up), Arg::I(NB as i32), Arg::P(tau + k0 * es), Arg::I(nbp as i32)];
            // SAFETY: one block writes U's nbp diagonal entries from tau[k0 .. k0 + nbp).
            unsafe { launch_args(dev, exec, &udiag, 1, 128, 0, &args)? };
            if nt > 0 {
                // SAFETY: W1 holds nbp × nt; the blocks lie inside F, V and U.
                unsafe { apply_panel::<T>(&blas, true, (mr, nt, nbp), (va(k0, k0), k), up, (fa(k0, ke), n), w1)? };
            }
        }
        let r = p.r + b * kr * n * es;
        let args = [Arg::P(f), Arg::L(n as i64), Arg::P(r), Arg::L(kr as i64), Arg::L(n as i64), Arg::I(0)];
        // SAFETY: R is kr × n (kr <= m rows of F read).
        unsafe { launch_args(dev, exec, &copy, copy_grid(kr * n), 256, 0, &args)? };
        if kq == 0 {
            continue;
        }
        let q = p.q + b * m * kq * es;
        let args = [Arg::P(f), Arg::L(n as i64), Arg::P(q), Arg::L(m as i64), Arg::L(kq as i64), Arg::I(1)];
        // SAFETY: Q is m × kq.
        unsafe { launch_args(dev, exec, &copy, copy_grid(m * kq), 256, 0, &args)? };
        let qa = |i: usize, j: usize| q + (i * kq + j) * es;
        for k0 in (0..k).step_by(NB).rev() {
            let (nbp, mr, qc) = ((k0 + NB).min(k) - k0, m - k0, kq - k0);
            let up = uall + (k0 / NB) * NB * NB * es;
            // SAFETY: W1 holds nbp × qc (QR_PANEL × max(n, kq)); the blocks lie inside Q, V and U.
            unsafe { apply_panel::<T>(&blas, false, (mr, qc, nbp), (va(k0, k0), k), up, (qa(k0, k0), kq), w1)? };
        }
    }
    Ok(())
}

/// Symmetric eigendecomposition of matrices too large for one block, one matrix after another,
/// in the `work` scratch ([`crate::ops::linalg::eigh_work_layout`]); the steps are described in
/// `kernels/linalg.cu` (EIGH_BIG). Eigenvalues into `p.s`, eigenvectors into `p.v`, `info` 2
/// where T's eigenvectors could not be made orthogonal (the caller redoes that matrix).
fn eigh_large<T: Real>(p: &SvdPlan, dev: &DeviceState, ordinal: usize, exec: Exec) -> Result<()> {
    use crate::ops::linalg::{eigh_work_layout, EIGH_GRID_MAX, EIGH_PANEL as NB};
    let Some(work) = p.work else {
        return Err(Error::Unsupported("the large-matrix eigh needs the work scratch".into()));
    };
    let (n, dtype, es) = (p.a.rows, p.a.dtype, p.a.dtype.size());
    let off = eigh_work_layout(n, dtype);
    let at = |region: usize| work + off[region];
    let (f, vw, avec, part, part2, taus, uall, dbl, zs, rank, ctl) =
        (at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8), at(9), at(10));
    let (dd, ee, lam, zsc, tn) = (dbl, dbl + n * 8, dbl + 2 * n * 8, dbl + 3 * n * 8, dbl + 4 * n * 8);
    let _ctx = ContextGuard::enter(dev)?;
    let raw = exec.stream as cudarc::driver::sys::CUstream;
    // METALCORE_EIGH_PROFILE=1: the panel kernel's variant that adds up its phases' times (see
    // EB_PROFILE in kernels/linalg.cu; scripts/time_eigh_large.py --phases).
    static PROFILE: Knob = Knob::new();
    let rows = (knob(&PROFILE, "METALCORE_EIGH_PROFILE", 0) == 1) as usize;
    let k = |entry| kernel(Key { ordinal, entry, dtype, w: 1, mpb: 1, tile: 0, rows }, dev);
    let (scan, copy, panel, tsetup, tbis) =
        (k(Entry::EbScan)?, k(Entry::EbCopy)?, k(Entry::EbPanel)?, k(Entry::EbTsetup)?, k(Entry::EbTbis)?);
    let (trank, tvec, tmgs, tconv, finish) =
        (k(Entry::EbTrank)?, k(Entry::EbTvec)?, k(Entry::EbTmgs)?, k(Entry::EbTconv)?, k(Entry::EbFinish)?);
    let blas = Blas::bind(exec.blas, exec.stream)?;
    let nl = n as i64;
    let tiles = n.div_ceil(32);
    let grid_max = dev.sm_count.min(EIGH_GRID_MAX);
    // Rows per block of the panel kernel's grid (METALCORE_EIGH_BLOCK_ROWS, at most 64). Smaller
    // blocks shorten each one's share of a column's product, which the grid barrier after it
    // waits for: H200, 1024² 10.9-11.1 ms with 32 rows, 9.96-10.14 with 12 (8: 10.11, 64: 12.4;
    // 2048² 24.9 -> 22.8-23.1; bench/results/eigh-svd-large-nvidia-h200.md).
    static BLOCK_ROWS: Knob = Knob::new();
    let block_rows = knob(&BLOCK_ROWS, "METALCORE_EIGH_BLOCK_ROWS", 12).min(64);
    // Eigenvalues closer than this (relative to ‖T‖) count as a cluster (Gram–Schmidt): past
    // it the twisted factorizations' vectors are orthogonal to about eps₆₄‖T‖/gap. H200,
    // scripts/time_eigh_large.py --ctol: float32 matrices with each eigenvalue repeated 100 or
    // 680 times (300², 2048²), whose T has gaps near 1e-9‖T‖ inside each group, are flagged (a
    // cluster past EB_CLUSTER_MAX) at 1e-8 and give orthogonality 9.6e-7 / 1.4e-6 at 1e-9 to
    // 1e-13 (torch's float32: about 3e-6 at 2048²); random and cond-1e6 matrices are unchanged.
    // METALCORE_EIGH_CTOL_EXP=k sets 1e-k ([`eigh_cluster_tol`]).
    let ctol = eigh_cluster_tol()?;
    for b in 0..p.a.batch {
        let (a, l, info) = (p.a.ptr + b * n * n * es, p.s + b * n * es, p.info + b * 4);
        // V is null for eigenvalues only.
        let v = if p.v == 0 { 0 } else { p.v + b * n * n * es };
        let z = if dtype == DType::F64 { v } else { zs };
        // SAFETY (of every launch below): the scratch holds eigh_work_len elements laid out by
        // eigh_work_layout; A, L, V are this matrix's (validated by the plan); each kernel
        // touches only the regions passed, within n.
        unsafe {
            cudarc::driver::result::memset_d8_async(ctl as u64, 0, 32, raw)
                .map_err(driver_err("clearing the control words"))?;
            launch_grid(dev, exec, &scan, (4, n.min(2048)), 256, 0, &[Arg::P(a), Arg::L(nl), Arg::P(ctl)], false)?;
            launch_grid(
                dev,
                exec,
                &copy,
                (tiles, tiles),
                256,
                0,
                &[Arg::P(a), Arg::P(f), Arg::L(nl), Arg::P(ctl)],
                false,
            )?;
            for k0 in (0..n).step_by(NB) {
                let ke = (k0 + NB).min(n);
                // Blocks: about block_rows rows each, at most 64 (the kernel's EB_RB), one per SM at most
                // (each must stay resident for the grid barriers). Where the grid can hold every
                // block's rows of F in shared memory (the trailing matrix does not change during
                // the panel), it does, and the products read them there ("cached").
                let rows = n - k0;
                let pad4 = |x: usize| x.div_ceil(4) * 4;
                let base = es * (pad4(n) + 64 + 4 * NB + 512 + pad4(1 + 2 * NB) + 16);
                let ldc = pad4(n - (k0 & !3));
                let fit = dev.smem_optin.saturating_sub(base) / (ldc * es);
                let mut g = rows.div_ceil(block_rows).min(grid_max).max(rows.div_ceil(64));
                let cached = n % 4 == 0 && fit >= 1 && rows.div_ceil(fit.min(64)) <= grid_max;
                if cached {
                    g = g.max(rows.div_ceil(fit.min(64)));
                }
                if g > grid_max {
                    return Err(Error::Unsupported(format!(
                        "the large-matrix eigh takes up to {} rows on this device, got {n}",
                        64 * grid_max
                    )));
                }
                let smem = base + if cached { rows.div_ceil(g) * ldc * es } else { 0 };
                cudarc::driver::result::memset_d8_async(ctl as u64, 0, 4, raw)
                    .map_err(driver_err("clearing the barrier"))?;
                let args = [
                    Arg::P(f),
                    Arg::L(nl),
                    Arg::I(k0 as i32),
                    Arg::I(ke as i32),
                    Arg::P(vw),
                    Arg::P(dd),
                    Arg::P(ee),
                    Arg::P(taus),
                    Arg::P(avec),
                    Arg::P(part),
                    Arg::P(part2),
                    Arg::P(ctl),
                    Arg::I(cached as i32),
                ];
                launch_grid(dev, exec, &panel, (g, 1), 512, smem, &args, true)?;
                let m = n - ke;
                if m > 0 {
                    // F22 −= [V; W]ᵀ [W; V] (row-major: VW's rows 0 .. 2NB and NB .. 3NB, columns
                    // ke..): one GEMM with k = 2·NB.
                    let (x, y, c) = (vw + ke * es, vw + (NB * n + ke) * es, f + (ke * n + ke) * es);
                    rm_gemm::<T>(&blas, (Op::T, Op::N), (m, m, 2 * NB), T::MINUS_ONE, (x, n), (y, n), T::ONE, (c, n))?;
                }
            }
            // T's float32 copy for the bisection's first steps lives where the vectors' scales
            // go later.
            let sargs = [Arg::P(dd), Arg::P(ee), Arg::L(nl), Arg::P(tn), Arg::P(zsc)];
            launch_grid(dev, exec, &tsetup, (1, 1), 1024, 0, &sargs, false)?;
            // Lanes per eigenvalue of the bisection: 32 (five bits a step) where the float64
            // units have room for that many threads, else 8 (H200: 1024² 0.93 -> 0.74 ms with 32;
            // 4096² 3.7 ms with 8, 4.0 with 16).
            let lanes = if n <= 2048 { 32 } else { 8 };
            let targs = [Arg::P(dd), Arg::P(ee), Arg::L(nl), Arg::P(tn), Arg::P(zsc), Arg::P(lam), Arg::I(lanes)];
            launch_grid(dev, exec, &tbis, ((n * lanes as usize).div_ceil(256), 1), 256, 0, &targs, false)?;
            let rargs = [Arg::P(lam), Arg::L(nl), Arg::P(rank), Arg::P(l), Arg::P(ctl)];
            launch_grid(dev, exec, &trank, (n.div_ceil(256), 1), 256, 0, &rargs, false)?;
            if v != 0 {
                eigh_large_vectors::<T>(
                    &blas,
                    dev,
                    exec,
                    ordinal,
                    EighVectors { f, vw, uall, taus, dd, ee, lam, zsc, tn, rank, z, v, ctl, n, ctol, dtype },
                    (&tvec, &tmgs, &tconv),
                )?;
            }
            launch_grid(
                dev,
                exec,
                &finish,
                ((n * n).div_ceil(256).min(8 * dev.sm_count), 1),
                256,
                0,
                &[Arg::P(l), Arg::P(v), Arg::L(nl), Arg::P(ctl), Arg::P(info)],
                false,
            )?;
        }
    }
    Ok(())
}

/// The large eigh's addresses for the eigenvector steps.
struct EighVectors {
    f: usize,
    vw: usize,
    uall: usize,
    taus: usize,
    dd: usize,
    ee: usize,
    lam: usize,
    zsc: usize,
    tn: usize,
    rank: usize,
    z: usize,
    v: usize,
    ctl: usize,
    n: usize,
    ctol: f64,
    /// The matrix's dtype (T's).
    dtype: DType,
}

/// The large-matrix eigh's cluster tolerance relative to ‖T‖: eigenvalues of T closer than it
/// times ‖T‖ are made orthogonal together (Gram–Schmidt, or the caller's QR past the kernels'
/// cluster size). 1e-10, or 1e-k with METALCORE_EIGH_CTOL_EXP=k (read once). (A `Result` for
/// the backend-less build's stand-in.)
pub fn eigh_cluster_tol() -> Result<f64> {
    static CTOL: Knob = Knob::new();
    Ok(10f64.powi(-(knob(&CTOL, "METALCORE_EIGH_CTOL_EXP", 10) as i32)))
}

/// T's eigenvectors (twisted factorizations, Gram–Schmidt in clusters) into V, then V = Q Z.
///
/// # Safety
/// The addresses are [`eigh_large`]'s, for one matrix of `a.n` rows, after its reduction and
/// eigenvalues.
#[allow(clippy::too_many_arguments)]
unsafe fn eigh_large_vectors<T: Real>(
    blas: &Blas,
    dev: &DeviceState,
    exec: Exec,
    ordinal: usize,
    a: EighVectors,
    (tvec, tmgs, tconv): (&CudaFunction, &CudaFunction, &CudaFunction),
) -> Result<()> {
    use crate::ops::linalg::EIGH_BACK as BT;
    let EighVectors { f, vw, uall, taus, dd, ee, lam, zsc, tn, rank, z, v, ctl, n, ctol, dtype } = a;
    let nl = n as i64;
    let es = dtype.size();
    // SAFETY: per this function's contract.
    unsafe {
        let vargs = [
            Arg::P(dd),
            Arg::P(ee),
            Arg::L(nl),
            Arg::P(tn),
            Arg::P(lam),
            Arg::P(rank),
            Arg::P(z),
            Arg::P(zsc),
            Arg::P(ctl),
        ];
        launch_grid(dev, exec, tvec, (n.div_ceil(128), 1), 128, 0, &vargs, false)?;
        let margs = [
            Arg::P(ee),
            Arg::L(nl),
            Arg::P(tn),
            Arg::P(lam),
            Arg::P(rank),
            Arg::P(z),
            Arg::P(zsc),
            Arg::D(ctol),
            Arg::P(ctl),
        ];
        launch_grid(dev, exec, tmgs, ((n * 32).div_ceil(256), 1), 256, 0, &margs, false)?;
        let cargs = [Arg::P(z), Arg::P(v), Arg::L(nl), Arg::P(zsc)];
        launch_grid(dev, exec, tconv, ((n * n).div_ceil(256).min(8 * dev.sm_count), 1), 256, 0, &cargs, false)?;
        // V = Q Z: block reflectors of BT consecutive reflectors (0 .. n-2; their rows of F
        // are zero before each v), last to first.
        let udiag = kernel(
            Key { ordinal, entry: Entry::QrUdiag, dtype, w: 1, mpb: 1, tile: lu_leaf_shape(1, dtype).2, rows: 0 },
            dev,
        )?;
        for k0 in (0..n.saturating_sub(1)).step_by(BT).rev() {
            let nbp = (k0 + BT).min(n - 1) - k0;
            let mr = n - k0 - 1;
            let vt = (f + (k0 * n + k0 + 1) * es, n);
            let up = uall + (k0 / BT) * BT * BT * es;
            rm_gemm::<T>(blas, (Op::N, Op::T), (nbp, nbp, mr), T::ONE, vt, vt, T::ZERO, (up, BT))?;
            let args = [Arg::P(up), Arg::I(BT as i32), Arg::P(taus + k0 * es), Arg::I(nbp as i32)];
            launch_args(dev, exec, &udiag, 1, 128, 0, &args)?;
            let x = (v + (k0 + 1) * n * es, n);
            apply_block_reflector::<T>(blas, false, true, (mr, n, nbp), vt, (up, BT), x, vw)?;
        }
    }
    Ok(())
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
        return launch_team(ordinal, exec, Entry::CholeskyReg, p.a.dtype, (8, 1), n, p.a.batch, |_| 0, &args, 0);
    }
    let per = |_w: usize| n * (n + 1);
    let dev = device(ordinal)?;
    if per(0) * p.a.dtype.size() > dev.smem_optin && exec.blas != 0 {
        return match p.a.dtype {
            DType::F32 => cholesky_blocked::<f32>(p, &dev, ordinal, exec),
            _ => cholesky_blocked::<f64>(p, &dev, ordinal, exec),
        };
    }
    launch(ordinal, exec, Entry::Cholesky, p.a.dtype, n, p.a.batch, per, &args)
}

/// The look-ahead's block column width (its NB) and `chol_syrk_kernel`'s default tile ([`rest_tile`]).
const SYRK_TILE: usize = 128;

/// The tile of `chol_syrk_col_kernel` (its `COL_TM`): METALCORE_CHOL_COL_TILE (64 or 32), default 64
/// (32, over four times the blocks, measured no faster).
fn col_tile() -> usize {
    static M: Knob = Knob::new();
    if knob(&M, "METALCORE_CHOL_COL_TILE", 64) == 32 {
        32
    } else {
        64
    }
}

/// The tile of `chol_syrk_kernel` (its `REST_TM`): METALCORE_CHOL_REST_TILE (64 or 128), default 64
/// (the same speed at 1024²–4096², faster at 8192², and shorter blocks, which the look-ahead's
/// kernels wait less for).
fn rest_tile() -> usize {
    static M: Knob = Knob::new();
    if knob(&M, "METALCORE_CHOL_REST_TILE", 64) == 128 {
        128
    } else {
        64
    }
}

/// Rows per block of `chol_panel_kernel` (its `PANEL_R`): METALCORE_CHOL_PANEL_R (32, 64 or
/// 128; float64 at most 64, for shared memory), default 32 with the look-ahead (where the panel
/// lies on the critical path: more, shorter blocks) and 64 without.
fn panel_rows(dtype: DType, ahead: bool) -> usize {
    static PR: Knob = Knob::new();
    let max = if dtype == DType::F32 { 128 } else { 64 };
    match knob(&PR, "METALCORE_CHOL_PANEL_R", 0) {
        32 => 32,
        64 => 64,
        128 => max,
        _ if ahead => 32,
        _ => 64,
    }
}

/// Blocked Cholesky of matrices too large for one block, one matrix after another, in place on
/// the lower triangle; right-looking in steps of NB = 128 columns (METALCORE_CHOL_NB = 64: 64):
/// `chol_diag_kernel` factors the step's diagonal block L11, `chol_panel_kernel` solves the rows
/// below it, L21 = A21 L11⁻ᵀ ([`panel_rows`] rows per block), and the trailing matrix loses
/// L21 L21ᵀ — by `chol_syrk_kernel` (float32 only, its default, METALCORE_CHOL_UPDATE=0), a cuBLAS
/// GEMM over the whole square (1) or cuBLAS SYRK (2, float64's default). `tri_finish_kernel` then
/// zeroes (or, for `upper`, fills by transposition) the other triangle. After a failing step the
/// later kernels do nothing, so `info` keeps the first failure, as in the batched kernels; the
/// factor is then partial.
///
/// With `chol_syrk_kernel` and NB = 128 the steps look ahead (unless METALCORE_CHOL_LOOKAHEAD=0):
/// the device's high-priority side stream updates the next block column, factors its diagonal
/// block and solves its panel while the caller's stream updates the rest of the trailing matrix,
/// so that the serial pieces of step k+1 run beside the bulk of step k ([`lookahead_steps`]).
fn cholesky_blocked<T: Real>(p: &CholeskyPlan, dev: &DeviceState, ordinal: usize, exec: Exec) -> Result<()> {
    let _ctx = ContextGuard::enter(dev)?;
    let blas = Blas::bind(exec.blas, exec.stream)?;
    let (n, dtype, es) = (p.a.rows, p.a.dtype, p.a.dtype.size());
    static NB: Knob = Knob::new();
    static UPDATE: Knob = Knob::new();
    static AHEAD: OnceLock<bool> = OnceLock::new();
    let nb = if knob(&NB, "METALCORE_CHOL_NB", 128) == 64 { 64 } else { 128 };
    let update = match knob(&UPDATE, "METALCORE_CHOL_UPDATE", if dtype == DType::F32 { 0 } else { 2 }) {
        0 if dtype == DType::F32 => 0, // chol_syrk_kernel: float32 only (the only one measured)
        1 => 1,
        _ => 2,
    };
    let ahead = update == 0
        && nb == SYRK_TILE
        && *AHEAD.get_or_init(|| std::env::var("METALCORE_CHOL_LOOKAHEAD").map_or(true, |v| v.trim() != "0"));
    let pr = panel_rows(dtype, ahead);
    let key = |entry, rows| Key { ordinal, entry, dtype, w: 1, mpb: 1, tile: nb, rows };
    let ks = StepKernels {
        diag: kernel(key(Entry::CholDiag, 0), dev)?,
        panel: kernel(key(Entry::CholPanel, pr), dev)?,
        syrk: kernel(key(Entry::CholSyrk, rest_tile()), dev)?,
        rest_tile: rest_tile(),
        syrk_col: kernel(key(Entry::CholSyrkCol, col_tile()), dev)?,
        col_tile: col_tile(),
        nb,
        pr,
    };
    let finish = kernel(Key { ordinal, entry: Entry::TriFinish, dtype, w: 1, mpb: 1, tile: 0, rows: 0 }, dev)?;
    let stream = borrowed_stream(dev, exec.stream);
    let raw = exec.stream as cudarc::driver::sys::CUstream;
    // SAFETY: `info` holds `batch` int32 entries (validated by the plan).
    unsafe { cudarc::driver::result::memset_d8_async(p.info as u64, 0, 4 * p.a.batch, raw) }
        .map_err(driver_err("clearing info"))?;
    let side = if ahead { Some(dev.side()?) } else { None };
    let tiles = n.div_ceil(32) as u32;
    for b in 0..p.a.batch {
        let a = p.a.ptr + b * n * n * es;
        let src = p.src + b * n * n * es;
        let info = p.info + 4 * b;
        if src != a {
            // SAFETY: both are n×n matrices of the plan's validated, distinct batches.
            unsafe { cudarc::driver::result::memcpy_dtod_async(a as u64, src as u64, n * n * es, raw) }
                .map_err(driver_err("copying the input"))?;
        }
        let m = Matrix { a, n, es, info };
        if let Some(Some(side)) = side.as_deref() {
            // SAFETY: one n×n matrix with its info entry; the side stream and events are live.
            unsafe { lookahead_steps(&ks, m, dev, exec, side)? };
        } else {
            // SAFETY: as above.
            unsafe { plain_steps::<T>(&ks, m, dev, exec, &blas, update)? };
        }
        let mut lb = stream.launch_builder(&finish);
        let (ptr, ni, up) = (a as u64, n as i32, p.upper as i32);
        lb.arg(&ptr).arg(&ni).arg(&up);
        let cfg =
            cudarc::driver::LaunchConfig { grid_dim: (tiles, tiles, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: one n×n matrix; each block touches only its tile and that tile's mirror.
        unsafe { lb.launch(cfg) }.map_err(driver_err("launching tri_finish_kernel"))?;
    }
    Ok(())
}

/// The kernels of the blocked Cholesky's steps, with their block size and panel rows per block.
struct StepKernels {
    diag: CudaFunction,
    panel: CudaFunction,
    syrk: CudaFunction,
    syrk_col: CudaFunction,
    /// `chol_syrk_col_kernel`'s tile ([`col_tile`]) and `chol_syrk_kernel`'s ([`rest_tile`]).
    col_tile: usize,
    rest_tile: usize,
    nb: usize,
    pr: usize,
}

/// One n×n row-major matrix of the blocked Cholesky: its address, element size and `info` entry.
#[derive(Clone, Copy)]
struct Matrix {
    a: usize,
    n: usize,
    es: usize,
    info: usize,
}

impl Matrix {
    fn at(&self, i: usize, j: usize) -> usize {
        self.a + (i * self.n + j) * self.es
    }
}

impl StepKernels {
    /// Factors the diagonal block at (k, k) and solves the rows below it, on `exec`'s stream.
    ///
    /// # Safety
    /// `m` is a live matrix on this device and the block lies inside it.
    unsafe fn diag_panel(&self, m: Matrix, k: usize, dev: &DeviceState, exec: Exec) -> Result<()> {
        let (n, nb, es) = (m.n, self.nb, m.es);
        let s = nb.min(n - k);
        let args = [Arg::P(m.at(k, k)), Arg::L(n as i64), Arg::I(s as i32), Arg::P(m.info), Arg::I(k as i32)];
        // SAFETY: one block factors the s×s diagonal block at (k, k), rows n apart, in place,
        // with the shared memory its NB needs.
        unsafe { launch_args(dev, exec, &self.diag, 1, 256, nb * (nb + 1) * es, &args)? };
        let r = n - k - s;
        if r > 0 {
            let args = [Arg::P(m.at(k, k)), Arg::L(n as i64), Arg::I(r as i32), Arg::P(m.info)];
            let (pr, smem) = (self.pr, (nb + self.pr) * (nb + 1) * es);
            // SAFETY: s == nb here; each block solves its `pr` of the r rows below the diagonal
            // block in place, reading the block, with the shared memory of both.
            unsafe { launch_args(dev, exec, &self.panel, r.div_ceil(pr), 256, smem, &args)? };
        }
        Ok(())
    }

    /// On `exec`'s stream: C -= P Pᵀ for the r×NB panel P at (i, k) and C the r×r block at (i, j):
    /// its lower triangle (`chol_syrk_kernel`, [`rest_tile`]² tiles), or with `col` its first NB columns
    /// (`chol_syrk_col_kernel`, [`col_tile`]² tiles).
    ///
    /// # Safety
    /// As for [`StepKernels::diag_panel`], for these blocks.
    #[allow(clippy::too_many_arguments)]
    unsafe fn syrk(
        &self,
        m: Matrix,
        (i, k, j): (usize, usize, usize),
        r: usize,
        col: bool,
        dev: &DeviceState,
        exec: Exec,
    ) -> Result<()> {
        let args = [Arg::P(m.at(i, k)), Arg::P(m.at(i, j)), Arg::L(m.n as i64), Arg::I(r as i32)];
        let ct = self.col_tile;
        let (f, grid, threads) = if col {
            (&self.syrk_col, (self.nb / ct) * r.div_ceil(ct), if ct == 32 { 64 } else { 256 })
        } else {
            let t = r.div_ceil(self.rest_tile);
            (&self.syrk, t * (t + 1) / 2, 256)
        };
        // SAFETY: one block per tile of C (lower triangle, or first NB columns), which with P lies
        // inside this matrix (rows n apart).
        unsafe { launch_args(dev, exec, f, grid, threads, 0, &args) }
    }
}

/// The right-looking steps on the caller's stream alone.
///
/// # Safety
/// `m` is a live matrix on this device; `blas` is bound to `exec`'s stream.
unsafe fn plain_steps<T: Real>(
    ks: &StepKernels,
    m: Matrix,
    dev: &DeviceState,
    exec: Exec,
    blas: &Blas,
    update: usize,
) -> Result<()> {
    let (n, nb) = (m.n, ks.nb);
    for k in (0..n).step_by(nb) {
        // SAFETY: per this function's contract.
        unsafe { ks.diag_panel(m, k, dev, exec)? };
        let s = nb.min(n - k);
        let r = n - k - s;
        if r == 0 {
            break;
        }
        if update == 0 {
            // SAFETY: the r×r trailing matrix and the r×s panel left of it lie inside this matrix.
            unsafe { ks.syrk(m, (k + s, k, k + s), r, false, dev, exec)? };
            continue;
        }
        // Column-major, the row-major panel L21 (r×s) is L21ᵀ (s×r): C -= Zᵀ Z with Z = L21ᵀ,
        // on C's upper triangle — A22's lower one.
        let z = (m.at(k + s, k), n);
        // SAFETY: the blocks lie inside this n×n matrix, leading dimension n.
        unsafe {
            if update == 1 {
                blas.gemm::<T>(Op::T, Op::N, (r, r, s), T::MINUS_ONE, z, z, T::ONE, (m.at(k + s, k + s), n))?;
            } else {
                blas.syrk::<T>(Fill::Upper, Op::T, r, s, T::MINUS_ONE, z.0, n, T::ONE, m.at(k + s, k + s), n)?;
            }
        }
    }
    Ok(())
}

/// The right-looking steps with a look-ahead (NB = SYRK_TILE). With C1, C2 the first two block
/// columns of step k's trailing matrix, the side stream `h` updates C1 and factors step k+1's
/// diagonal block and panel (which lie in C1) while the caller's stream `c` updates C2 and then
/// everything right of it. Orders: `c` waits for step k's panel (event 0); `h`'s update of C1
/// waits for step k−1's update of its C2 (event 1: that is this C1), which `c` runs right after
/// step k−2's bulk update, so the serial pieces lag the bulk by a whole step; `c` waits for `h`
/// before returning. Writes on the two streams at once touch disjoint block columns.
///
/// # Safety
/// `m` is a live matrix on this device; the side stream's handles are live in its context.
unsafe fn lookahead_steps(
    ks: &StepKernels,
    m: Matrix,
    dev: &DeviceState,
    exec: Exec,
    side: &super::Side,
) -> Result<()> {
    use super::{record, wait};
    const T: usize = SYRK_TILE;
    let (n, nb, c, h) = (m.n, ks.nb, exec.stream, side.stream);
    let [panel_done, c2_done] = side.events;
    let hx = Exec { stream: h, ..exec };
    // SAFETY: per this function's contract (every launch below lies inside the matrix).
    let steps = || unsafe {
        record(c2_done, c)?; // h starts after what c has (the input's copy, info's clearing)
        wait(h, c2_done)?;
        ks.diag_panel(m, 0, dev, hx)?;
        for k in (0..n).step_by(nb) {
            let s = nb.min(n - k);
            let r = n - k - s;
            if r == 0 {
                break;
            }
            let t = k + s; // the trailing matrix's first row and column
            record(panel_done, h)?;
            wait(c, panel_done)?;
            if r > T {
                ks.syrk(m, (t + T, k, t + T), r - T, true, dev, exec)?; // C2
            }
            wait(h, c2_done)?; // step k−1's update of its C2, our C1 (and what c ran before it)
            record(c2_done, c)?;
            if r > 2 * T {
                ks.syrk(m, (t + 2 * T, k, t + 2 * T), r - 2 * T, false, dev, exec)?;
            }
            ks.syrk(m, (t, k, t), r, true, dev, hx)?; // C1
            ks.diag_panel(m, t, dev, hx)?;
        }
        Ok(())
    };
    let done = steps();
    // Joined even after a failed enqueue, so that nothing on `h` outlives the call unordered.
    // SAFETY: the stream and event handles are live.
    let joined = unsafe { record(panel_done, h).and_then(|()| wait(c, panel_done)) };
    done.and(joined)
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
    let dev = device(ordinal)?;
    if per(0) * p.a.dtype.size() > dev.smem_optin && exec.blas != 0 {
        return match p.a.dtype {
            DType::F32 => lu_blocked::<f32>(p, &dev, ordinal, exec),
            _ => lu_blocked::<f64>(p, &dev, ordinal, exec),
        };
    }
    launch(ordinal, exec, Entry::Lu, p.a.dtype, n, p.a.batch, per, &args)
}

/// Largest order the blocked LU takes (`lu_leaf_kernel` holds a leaf's rows in the registers of
/// one block: 1024 threads, 8 rows each, at most).
pub const LU_BLOCKED_MAX_N: usize = 8192;

/// `lu_leaf_kernel`'s shape for a leaf of `m` rows: (threads, rows per thread, leaf width). 512
/// threads (128 registers each) up to 4096 rows, with at most 64 float32 or 32 float64 values of
/// the leaf per thread; 1024 threads (64 registers) past that, with half as many.
fn lu_leaf_shape(m: usize, dtype: DType) -> (usize, usize, usize) {
    let threads = if m <= 4096 { 512 } else { 1024 };
    let rows = m.div_ceil(threads).next_power_of_two().max(1);
    let cap = if dtype == DType::F32 { 64 } else { 32 } * 512 / threads;
    let widest = if dtype == DType::F32 { 16 } else { 8 };
    (threads, rows, (cap / rows).min(widest))
}

/// `qr_leaf_kernel`'s shape for a leaf of `m` rows: [`lu_leaf_shape`]'s, except float32 up to
/// 1024 rows: fewer threads (128 up to 512 rows, 256 up to 1024) with up to 4 rows each, so that
/// fewer warps take part in each column's block-wide sum (H200: 512² 1.93 → 1.79 ms, 768² 2.99 →
/// 2.81). The same for float64 measured slower (512² 1.89 → 2.90 ms), so float64 keeps the LU's.
fn qr_leaf_shape(m: usize, dtype: DType) -> (usize, usize, usize) {
    if m > 1024 || dtype != DType::F32 {
        return lu_leaf_shape(m, dtype);
    }
    let threads = if m <= 512 { 128 } else { 256 };
    let rows = m.div_ceil(threads).next_power_of_two().max(1);
    (threads, rows, (64 / rows).min(16))
}

/// Blocked LU with partial pivoting (and the solve) of matrices too large for one block, one
/// matrix after another, in place on the factor output (the input copied there first): right-
/// looking in panels of NB = 128 columns (64 measured no faster). Each panel is factored a leaf at
/// a time ([`lu_leaf_shape`]): `lu_leaf_kernel` factors the leaf's columns over the rows at and
/// below its diagonal, moves the rows it interchanged in the rest of the panel and makes the leaf's
/// rows of U there; `lu_update_kernel` moves them in every column outside the panel and in X and
/// updates the rest of the panel below the leaf. After the panel, cuBLAS TRSM makes its rows of U
/// right of it (U12 = L11⁻¹ A12) and cuBLAS GEMM updates the trailing matrix (A22 −= L21 U12).
/// X, permuted along the way, is then solved with L and U by cuBLAS TRSM. Needs the factor and
/// pivot outputs and the `work` scratch (the Python layer passes scratch ones when the caller
/// wants neither).
fn lu_blocked<T: Real>(p: &LuSolvePlan, dev: &DeviceState, ordinal: usize, exec: Exec) -> Result<()> {
    let (Some(lu), Some(piv), Some(work)) = (p.lu, p.pivots, p.work) else {
        return Err(Error::Unsupported("the blocked LU needs the factor, pivot and work outputs".into()));
    };
    let (n, k, dtype, es) = (p.a.rows, p.b.cols, p.a.dtype, p.a.dtype.size());
    if n > LU_BLOCKED_MAX_N {
        return Err(Error::Unsupported(format!("the blocked LU takes n up to {LU_BLOCKED_MAX_N}, got {n}")));
    }
    const NB: usize = 128;
    let _ctx = ContextGuard::enter(dev)?;
    let raw = exec.stream as cudarc::driver::sys::CUstream;
    let widest = lu_leaf_shape(1, dtype).2;
    let update = kernel(Key { ordinal, entry: Entry::LuUpdate, dtype, w: 1, mpb: 1, tile: widest, rows: 0 }, dev)?;
    // SAFETY: `info` holds `batch` int32 entries (validated by the plan).
    unsafe { cudarc::driver::result::memset_d8_async(p.info as u64, 0, 4 * p.a.batch, raw) }
        .map_err(driver_err("clearing info"))?;
    {
        let blas = Blas::bind(exec.blas, exec.stream)?;
        for b in 0..p.a.batch {
            let (a, src) = (lu + b * n * n * es, p.a.ptr + b * n * n * es);
            let (x, bsrc) = (p.x + b * n * k * es, p.b.ptr + b * n * k * es);
            let (ip, info) = (piv + 4 * b * n, p.info + 4 * b);
            // SAFETY: the plan validated these batches: A and LU n×n, B and X n×k, distinct
            // unless the same memory.
            unsafe {
                if src != a {
                    cudarc::driver::result::memcpy_dtod_async(a as u64, src as u64, n * n * es, raw)
                        .map_err(driver_err("copying the input"))?;
                }
                if k > 0 && bsrc != x {
                    cudarc::driver::result::memcpy_dtod_async(x as u64, bsrc as u64, n * k * es, raw)
                        .map_err(driver_err("copying the right-hand sides"))?;
                }
            }
            let at = |i: usize, j: usize| a + (i * n + j) * es;
            for k0 in (0..n).step_by(NB) {
                let ce = (k0 + NB).min(n);
                let (threads, rows, lw) = lu_leaf_shape(n - k0, dtype);
                let key = Key { ordinal, entry: Entry::LuLeaf, dtype, w: threads / 32, mpb: 1, tile: lw, rows };
                let leaf = kernel(key, dev)?;
                for c0 in (k0..ce).step_by(lw) {
                    let w = lw.min(n - c0);
                    let args = [
                        Arg::P(a),
                        Arg::L(n as i64),
                        Arg::L(c0 as i64),
                        Arg::L(ce as i64),
                        Arg::P(ip),
                        Arg::P(info),
                        Arg::P(work),
                    ];
                    // SAFETY: one block factors the leaf at c0 of this n×n matrix in place (its
                    // n - c0 rows fit `threads` × `rows`, and as many rows, padded as
                    // `lu_leaf_kernel` pads them, of shared memory: at most 196 KB), moves rows in
                    // the panel's columns up to ce (at most 128 of them), and writes
                    // ip[c0 .. c0 + w), info and `work`.
                    let pad = if threads == 1024 { 1 } else { 16 / es };
                    unsafe { launch_args(dev, exec, &leaf, 1, threads, threads * rows * (lw + pad) * es, &args)? };
                    let pw = ce - c0 - w;
                    let tiles = pw.div_ceil(32) * (n - c0 - w).div_ceil(64);
                    let others = c0 + (n - ce) + k;
                    let args = [
                        Arg::P(a),
                        Arg::L(n as i64),
                        Arg::P(if k > 0 { x } else { 0 }),
                        Arg::I(k as i32),
                        Arg::P(work),
                        Arg::L(c0 as i64),
                        Arg::I(w as i32),
                        Arg::L(ce as i64),
                        Arg::I(tiles as i32),
                    ];
                    // SAFETY: the first `tiles` blocks own disjoint 64×32 tiles of the panel below
                    // and right of the leaf; the others one column each of the rest of A or of X.
                    unsafe { launch_args(dev, exec, &update, tiles + others.div_ceil(256), 256, 0, &args)? };
                }
                if ce < n {
                    let (r, s) = (n - ce, ce - k0);
                    // Column-major, the row-major blocks are transposed: U12ᵀ L11ᵀ = A12ᵀ (L11ᵀ
                    // upper, unit) and A22ᵀ −= U12ᵀ L21ᵀ.
                    // SAFETY: every block lies inside this n×n matrix, leading dimension n.
                    unsafe {
                        blas.trsm::<T>(
                            Side::Right,
                            Fill::Upper,
                            Op::N,
                            true,
                            (r, s),
                            T::ONE,
                            (at(k0, k0), n),
                            (at(k0, ce), n),
                        )?;
                        blas.gemm::<T>(
                            Op::N,
                            Op::N,
                            (r, r, s),
                            T::MINUS_ONE,
                            (at(k0, ce), n),
                            (at(ce, k0), n),
                            T::ONE,
                            (at(ce, ce), n),
                        )?;
                    }
                }
            }
        }
    }
    if k == 0 {
        return Ok(());
    }
    let passes = [flags(true, false, true), flags(false, false, false)];
    for b in 0..p.a.batch {
        let x = Batch { ptr: p.x + b * n * k * es, dtype, batch: 1, rows: n, cols: k };
        trsm_blas::<T>(dev, exec, lu + b * n * n * es, &x, &passes)?;
    }
    Ok(())
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
    let f = kernel(Key { ordinal, entry, dtype, w: 1, mpb: 1, tile: np, rows: 0 }, &dev)?;
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
    let dev = device(ordinal)?;
    if per(0) * b.dtype.size() > dev.smem_optin {
        let passes: Vec<i32> = passes.iter().flatten().copied().collect();
        return match b.dtype {
            DType::F32 => trsm_blas::<f32>(&dev, exec, t, b, &passes),
            _ => trsm_blas::<f64>(&dev, exec, t, b, &passes),
        };
    }
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

/// [`trsm_launch`] for operands too large for one block: cuBLAS TRSM, one matrix after another.
/// Row-major, op(T) X = B is (column-major) X' op(T)ᵀ = B' with X' = Xᵀ, B' = Bᵀ (k×n) and T
/// seen as Tᵀ: a right-side solve against the other triangle, transposed as op is. A single
/// right-hand side is its own transpose (an n×1 column), solved left-side — cuBLAS's right-side
/// TRSM with one row is several times slower.
fn trsm_blas<T: Real>(dev: &DeviceState, exec: Exec, t: usize, b: &Batch, passes: &[i32]) -> Result<()> {
    let _ctx = ContextGuard::enter(dev)?;
    let blas = Blas::bind(exec.blas, exec.stream)?;
    let (n, k, es) = (b.rows, b.cols, b.dtype.size());
    for i in 0..b.batch {
        let (tp, bp) = (t + i * n * n * es, b.ptr + i * n * k * es);
        for &f in passes {
            let (lower, trans, unit) = (f & 1 != 0, f & 2 != 0, f & 4 != 0);
            let fill = if lower { Fill::Upper } else { Fill::Lower };
            let op = if trans { Op::T } else { Op::N };
            // SAFETY: T is n×n and B n×k, row-major, inside the plan's validated batches.
            unsafe {
                if k == 1 {
                    let op = if trans { Op::N } else { Op::T };
                    blas.trsm::<T>(Side::Left, fill, op, unit, (n, 1), T::ONE, (tp, n), (bp, n))?;
                } else {
                    blas.trsm::<T>(Side::Right, fill, op, unit, (k, n), T::ONE, (tp, n), (bp, k))?;
                }
            }
        }
    }
    Ok(())
}

pub fn trsm(p: &TrsmPlan, ordinal: usize, exec: Exec) -> Result<()> {
    trsm_launch(ordinal, exec, p.t.ptr, &p.b, [Some(flags(p.lower, p.trans, p.unit)), None])
}

/// `A X = B` from the factor: L then Lᵀ (or Uᵀ then U).
pub fn cholesky_solve(p: &CholeskySolvePlan, ordinal: usize, exec: Exec) -> Result<()> {
    let lower = !p.upper;
    trsm_launch(ordinal, exec, p.l.ptr, &p.b, [Some(flags(lower, p.upper, false)), Some(flags(lower, lower, false))])
}

/// Warps per matrix of the shared-memory Jacobi kernels: one per pair of a round, up to 32 (a
/// full 1024-thread block), or up to 16 for `eigh` over more matrices than two per SM
/// (`crowded`); METALCORE_JACOBI_WARPS sets the cap instead. Measured on an H200
/// (`scripts/sweep_jacobi.py`): 500 eigh of 100² take 8.29 ms with 16 warps against 9.43 with 32,
/// 500 of 80² 4.44 against 5.84; with 100 matrices (fewer than the SMs) 32 warps win at every n
/// from 64 to 128 (100² 2.41 against 3.16) and for the SVDs (64 of 128²: 3.51 against 4.33).
fn jacobi_warps(n: usize, crowded: bool) -> usize {
    static WARPS: Knob = Knob::new();
    let cap = knob(&WARPS, "METALCORE_JACOBI_WARPS", 0);
    let cap = if cap > 0 {
        cap.min(32)
    } else if crowded {
        16
    } else {
        32
    };
    n.div_ceil(2).clamp(1, cap)
}

/// Threads per row (and per eigenvalue, per column) of `eigh_tri_kernel` with `warps` warps: the
/// largest power of two up to 32 with g·n <= 32·warps.
fn tri_group(n: usize, warps: usize) -> usize {
    let mut g = 1;
    while g < 32 && 2 * g * n <= 32 * warps {
        g *= 2;
    }
    g
}

/// METALCORE_TRI_PROFILE=1: `eigh_tri_kernel` writes its cycles per phase over each matrix's first
/// eigenvector entries (scripts/time_eigh_tri.py reads them); its results are then wrong.
fn tri_profile() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("METALCORE_TRI_PROFILE").is_ok_and(|v| v == "1"))
}

/// Shared memory of `eigh_tri_kernel` in bytes (the layout described above `tri_x_bytes` in
/// kernels/linalg.cu, which carves it the same way).
fn tri_smem_bytes(n: usize, warps: usize, size: usize) -> usize {
    let r = 32 / tri_group(n, warps);
    let lda = n + (r + 32 - n % 32) % 32;
    let x = (8 * n * (n | 1)).max(size * n * lda).next_multiple_of(8);
    let packed = (n * (n - 1) / 2).next_multiple_of(2);
    x + size * packed + 8 * (4 * n + 2 * warps) + 4 * (4 * n + 2) + size * 3 * n + 4 * n
}

/// Rows of a column each lane of `eigh_tri_kernel`'s back-transformation holds in registers
/// (`TRI_NPL`): n / its lanes per column (tri_group, or more to keep to 32 rows), rounded up to a
/// multiple of 8.
fn tri_npl(n: usize, warps: usize) -> usize {
    let mut g = tri_group(n, warps);
    while g < 32 && g * 32 < n {
        g *= 2;
    }
    n.div_ceil(g).next_multiple_of(8)
}

/// Warps of `eigh_tri_kernel` for `batch` matrices of order n, or None where Jacobi serves alone:
/// up to 32 (the lane kernel's range), past 128 or past the shared memory a block may use, or
/// with METALCORE_EIGH_TRI=0. METALCORE_TRI_WARPS sets the warps; by default 16 while every
/// matrix has an SM of its own, else 8 (two blocks of 100² float32 share an SM). H200, same-run
/// alternations (`scripts/time_eigh_tri.py`): 100×128² 0.61 ms with 16 against 0.73–0.83 with 8,
/// 100×96² 0.42 against 0.49–0.52, 100×64² even (0.28–0.34 both); 500×100² 1.25–1.39 with 8
/// against 1.65–1.76 with 16.
fn tri_warps(n: usize, batch: usize, dtype: DType, ordinal: usize) -> Result<Option<usize>> {
    static OFF: OnceLock<bool> = OnceLock::new();
    static WARPS: Knob = Knob::new();
    if *OFF.get_or_init(|| std::env::var("METALCORE_EIGH_TRI").is_ok_and(|v| v == "0")) || !(2..=128).contains(&n) {
        return Ok(None);
    }
    let dev = device(ordinal)?;
    let w = knob(&WARPS, "METALCORE_TRI_WARPS", if batch > dev.sm_count { 8 } else { 16 }).clamp(2, 32);
    if tri_smem_bytes(n, w, dtype.size()) > dev.smem_optin {
        return Ok(None);
    }
    Ok(Some(w))
}

pub fn svd(p: &SvdPlan, ordinal: usize, exec: Exec) -> Result<()> {
    let (m, n) = (p.a.rows, p.a.cols);
    if n == 0 {
        return Ok(());
    }
    // Up to 32 rows and columns (float64: 16), the register kernel (METALCORE_JACOBI_LANE_MAX
    // lowers that bound, for comparisons). A two-warp, 64-lane variant (partners in the other
    // warp through shared memory) was correct but took 1.92 ms on 100 SVDs of 64² against the
    // shared-memory kernel's 0.68 (H200): 100 blocks of 64 threads leave the GPU latency-bound.
    static LANE_MAX: Knob = Knob::new();
    let lane_max = knob(&LANE_MAX, "METALCORE_JACOBI_LANE_MAX", 32).min(if p.a.dtype == DType::F64 { 16 } else { 32 });
    if m <= lane_max && n <= lane_max {
        return jacobi_lane(p, ordinal, exec);
    }
    if p.eigh && p.work.is_some() && exec.blas != 0 {
        let dev = device(ordinal)?;
        return match p.a.dtype {
            DType::F32 => eigh_large::<f32>(p, &dev, ordinal, exec),
            _ => eigh_large::<f64>(p, &dev, ordinal, exec),
        };
    }
    if p.eigh && p.v == 0 {
        return Err(Error::value("V", "the eigenvectors' output is required unless the large-matrix path runs"));
    }
    let crowded = p.eigh && p.a.batch > 2 * device(ordinal)?.sm_count;
    let w = jacobi_warps(n, crowded);
    if p.eigh {
        // The tridiagonal kernel where its shared memory fits; Jacobi then only redoes the
        // matrices it flags (info 2: see `eigh_tri_kernel`).
        let tri = tri_warps(n, p.a.batch, p.a.dtype, ordinal)?;
        if let Some(tw) = tri {
            let size = p.a.dtype.size();
            let per = move |w: usize| tri_smem_bytes(n, w, size).div_ceil(size);
            let args =
                [Arg::P(p.a.ptr), Arg::P(p.s), Arg::P(p.v), Arg::P(p.info), Arg::L(p.a.batch as i64), Arg::I(n as i32)];
            launch_team(ordinal, exec, Entry::EighTri, p.a.dtype, (tw, 1), n, p.a.batch, per, &args, tri_npl(n, tw))?;
        }
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
            Arg::I(tri.is_some() as i32),
        ];
        return launch_team(ordinal, exec, Entry::Eigh, p.a.dtype, shape, n, p.a.batch, per, &args, 0);
    }
    let want_v = p.v != 0;
    let per = move |_: usize| n * (m + 1) + if want_v { n * (n + 1) } else { 0 } + 3 * n;
    // Two pairs per warp (16 lanes each, PAIR_LANES) when a round has more pairs than warps but
    // fewer than twice as many (with a warp per pair it takes two steps, some warps idle in the
    // second), and the column stride m + 1 is not 1 mod 32 banks (the two halves' columns then
    // tend to share banks). H100, 100 SVDs, three alternations against the previous kernel:
    // 100² 2.87-3.05 -> 2.07-2.10 ms; 96² (whole warps) 1.80 -> 1.74-1.77, 64 of 128² (whole
    // warps) 3.27-3.49 -> 3.16-3.18. The split measured slower where this rule excludes it (96²:
    // 1.92-2.04; 128²: 3.87).
    let pairs = n.div_ceil(2);
    let split = pairs > w && pairs < 2 * w && (m + 1) % 32 != 1;
    let lanes = if split { 16 } else { 32 };
    launch_team(ordinal, exec, Entry::Jacobi, p.a.dtype, (w, 1), m.max(n), p.a.batch, per, &jacobi_args(p, p.u), lanes)
}

/// The leading arguments of `jacobi_kernel` and `jacobi_lane_kernel`: A, S, U (`u`), V, info,
/// batch, m, n, max_sweeps.
fn jacobi_args(p: &SvdPlan, u: usize) -> Vec<Arg> {
    vec![
        Arg::P(p.a.ptr),
        Arg::P(p.s),
        Arg::P(u),
        Arg::P(p.v),
        Arg::P(p.info),
        Arg::L(p.a.batch as i64),
        Arg::I(p.a.rows as i32),
        Arg::I(p.a.cols as i32),
        Arg::I(p.max_sweeps as i32),
    ]
}

/// `jacobi_lane_kernel`: 8, 16 or 32 lanes per matrix (a column each), rows in registers.
fn jacobi_lane(p: &SvdPlan, ordinal: usize, exec: Exec) -> Result<()> {
    let (m, n) = (p.a.rows, p.a.cols);
    let np = n.next_power_of_two().clamp(8, 32);
    let mr = m.next_power_of_two().clamp(np, 32);
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let f =
        kernel(Key { ordinal, entry: Entry::JacobiLane, dtype: p.a.dtype, w: 1, mpb: 1, tile: np, rows: mr }, &dev)?;
    let mut args = jacobi_args(p, if p.eigh { 0 } else { p.u });
    args.push(Arg::I(p.eigh as i32));
    // SAFETY: the arguments follow the kernel's signature; it uses no shared memory and each lane
    // group touches only its own matrix.
    unsafe { launch_args(&dev, exec, &f, (p.a.batch * np).div_ceil(128), 128, 0, &args) }
}

/// The variants CI compiles: every entry point, both dtypes, warp teams and block teams.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F64] {
        for (w, mpb) in [(1, 4), (4, 1), (16, 1)] {
            out.push((&KERNEL, defines(&Key { ordinal: 0, entry: Entry::Qr, dtype, w, mpb, tile: 0, rows: 0 })));
        }
        for tile in [3, 8] {
            out.push((
                &KERNEL,
                defines(&Key { ordinal: 0, entry: Entry::CholeskyReg, dtype, w: 8, mpb: 1, tile, rows: 0 }),
            ));
        }
        out.push((
            &KERNEL,
            defines(&Key { ordinal: 0, entry: Entry::TriFinish, dtype, w: 1, mpb: 1, tile: 0, rows: 0 }),
        ));
        for tile in [64, 128] {
            out.push((
                &KERNEL,
                defines(&Key { ordinal: 0, entry: Entry::CholDiag, dtype, w: 1, mpb: 1, tile, rows: 0 }),
            ));
            if dtype == DType::F32 && tile == SYRK_TILE {
                // The other tiles of the float32 trailing updates (only float32 takes metalcore's
                // update, and the look-ahead only NB = 128); the defaults compile with the rest.
                for (entry, rows) in [(Entry::CholSyrk, 128), (Entry::CholSyrkCol, 32)] {
                    out.push((&KERNEL, defines(&Key { ordinal: 0, entry, dtype, w: 1, mpb: 1, tile, rows })));
                }
            }
            let panel_rows: &[usize] = if dtype == DType::F32 { &[32, 64, 128] } else { &[32, 64] };
            for &rows in panel_rows {
                out.push((
                    &KERNEL,
                    defines(&Key { ordinal: 0, entry: Entry::CholPanel, dtype, w: 1, mpb: 1, tile, rows }),
                ));
            }
        }
        for w in [8, 16] {
            out.push((
                &KERNEL,
                defines(&Key { ordinal: 0, entry: Entry::EighTri, dtype, w, mpb: 1, tile: 32, rows: 0 }),
            ));
        }
        out.push((
            &KERNEL,
            defines(&Key { ordinal: 0, entry: Entry::EighTri, dtype, w: 8, mpb: 1, tile: 16, rows: 1 }),
        ));
        // The large-matrix eigensolver's kernels share one set of defines.
        for rows in [0, 1] {
            out.push((
                &KERNEL,
                defines(&Key { ordinal: 0, entry: Entry::EbPanel, dtype, w: 1, mpb: 1, tile: 0, rows }),
            ));
        }
        for lanes in [16, 32] {
            out.push((
                &KERNEL,
                defines(&Key { ordinal: 0, entry: Entry::Jacobi, dtype, w: 32, mpb: 1, tile: lanes, rows: 0 }),
            ));
        }
        // The lane kernel's reachable shapes: float32 up to 32 rows, float64 up to 16 (see `svd`).
        let lanes: &[(usize, usize)] =
            if dtype == DType::F64 { &[(8, 8), (8, 16), (16, 16)] } else { &[(8, 8), (8, 32), (16, 16), (32, 32)] };
        for &(tile, rows) in lanes {
            out.push((
                &KERNEL,
                defines(&Key { ordinal: 0, entry: Entry::JacobiLane, dtype, w: 1, mpb: 1, tile, rows }),
            ));
        }
        // The blocked LU's leaf shapes (see `lu_leaf_shape`) and its update kernel.
        for m in [512, 1024, 2048, 4096, 8192] {
            let (threads, rows, tile) = lu_leaf_shape(m, dtype);
            let key = Key { ordinal: 0, entry: Entry::LuLeaf, dtype, w: threads / 32, mpb: 1, tile, rows };
            out.push((&KERNEL, defines(&key)));
        }
        // The blocked QR's own leaf shapes (it shares the LU leaf's source and its other shapes).
        for m in [100, 300, 512, 700, 1024].into_iter().filter(|_| dtype == DType::F32) {
            let (threads, rows, tile) = qr_leaf_shape(m, dtype);
            let key = Key { ordinal: 0, entry: Entry::QrLeaf, dtype, w: threads / 32, mpb: 1, tile, rows };
            out.push((&KERNEL, defines(&key)));
        }
        let tile = lu_leaf_shape(1, dtype).2;
        out.push((&KERNEL, defines(&Key { ordinal: 0, entry: Entry::LuUpdate, dtype, w: 1, mpb: 1, tile, rows: 0 })));
        for tile in [8, 16, 32] {
            for entry in [Entry::LuReg, Entry::CholeskyRow] {
                out.push((&KERNEL, defines(&Key { ordinal: 0, entry, dtype, w: 1, mpb: 1, tile, rows: 0 })));
            }
        }
    }
    out
}
