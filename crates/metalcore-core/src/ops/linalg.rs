//! Batched dense linear algebra: validation and backend dispatch.
//!
//! Matrices arrive as contiguous `(batch, n, n)` (and right-hand sides `(batch, n, k)`) buffers in
//! float32 or float64 that the op overwrites with its result; the Python layer makes those copies
//! (in the compute dtype) and broadcasts batch dimensions. Failures are reported per matrix in an
//! int32 `info` tensor, as LAPACK and `torch.linalg.*_ex` do: 0 = success, `i > 0` = the leading
//! minor of order `i` is not positive definite.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::expect_dtype;
use crate::tensor::{common_device, Device, Exec, TensorRef};

/// A validated contiguous batch of `rows × cols` matrices.
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    pub ptr: usize,
    pub dtype: DType,
    pub batch: usize,
    pub rows: usize,
    pub cols: usize,
}

fn batch_of(arg: &'static str, t: &TensorRef) -> Result<Batch> {
    if t.dtype != DType::F32 && t.dtype != DType::F64 {
        return Err(Error::dtype(arg, format!("expected float32 or float64, got {}", t.dtype)));
    }
    if t.ndim() != 3 || !t.is_contiguous() {
        return Err(Error::value(
            arg,
            format!("expected a contiguous (batch, rows, cols) tensor, got shape {:?}", t.shape),
        ));
    }
    Ok(Batch { ptr: t.ptr, dtype: t.dtype, batch: t.shape[0], rows: t.shape[1], cols: t.shape[2] })
}

/// [`batch_of`] for a batch of square matrices.
fn square_of(arg: &'static str, t: &TensorRef) -> Result<Batch> {
    let m = batch_of(arg, t)?;
    if m.rows != m.cols {
        return Err(Error::value(arg, format!("expected square matrices, got {} x {}", m.rows, m.cols)));
    }
    Ok(m)
}

/// The right-hand sides `B` of a solve against the square batch `m` (named `m_arg`): a
/// `(batch, n, k)` batch of `m`'s dtype.
fn rhs_of(m_arg: &'static str, m: &Batch, t: &TensorRef) -> Result<Batch> {
    let b = batch_of("B", t)?;
    if b.batch != m.batch || b.rows != m.rows {
        return Err(Error::value(
            "B",
            format!(
                "expected (batch={}, {}, k) to match {m_arg}, got ({}, {}, {})",
                m.batch, m.rows, b.batch, b.rows, b.cols
            ),
        ));
    }
    if b.dtype != m.dtype {
        return Err(Error::dtype("B", format!("expected dtype {} (the dtype of {m_arg}), got {}", m.dtype, b.dtype)));
    }
    Ok(b)
}

/// `t` (named `arg`) is a contiguous int32 tensor of `elems` elements (with `at_least`, of `elems`
/// or more); returns its pointer.
fn int32_of(arg: &'static str, t: &TensorRef, elems: usize, at_least: bool) -> Result<usize> {
    expect_dtype(arg, t, DType::I32)?;
    let size_ok = if at_least { t.numel() >= elems } else { t.numel() == elems };
    if !size_ok || !t.is_contiguous() {
        let of = if at_least { "at least " } else { "" };
        return Err(Error::value(
            arg,
            format!("expected a contiguous int32 tensor of {of}{elems} elements, got shape {:?}", t.shape),
        ));
    }
    Ok(t.ptr)
}

fn info_of(t: &TensorRef, batch: usize) -> Result<usize> {
    int32_of("info", t, batch, false)
}

/// In-place Cholesky factorization of each matrix of `a` (`A = L Lᵀ`, or `A = Uᵀ U` with `upper`);
/// only the lower triangle of the input is read. The other triangle of the result is zeroed.
pub struct Cholesky<'a> {
    pub a: &'a TensorRef,
    /// The matrices to factor when they are not `a` itself (`a` is then only written): same
    /// shape, dtype and device as `a`.
    pub src: Option<&'a TensorRef>,
    pub info: &'a TensorRef,
    pub upper: bool,
}

/// A validated Cholesky call.
#[derive(Clone, Copy, Debug)]
pub struct CholeskyPlan {
    pub a: Batch,
    /// Where the input matrices are read (`a.ptr` in place).
    pub src: usize,
    pub info: usize,
    pub upper: bool,
}

impl Cholesky<'_> {
    pub fn plan(&self) -> Result<(Device, CholeskyPlan)> {
        let device = common_device(&[("A", Some(self.a)), ("info", Some(self.info))])?;
        let a = square_of("A", self.a)?;
        let info = info_of(self.info, a.batch)?;
        let src = match self.src {
            None => a.ptr,
            Some(t) => {
                common_device(&[("A", Some(self.a)), ("src", Some(t))])?;
                same_batch("src", "A", &a, t)?
            }
        };
        Ok((device, CholeskyPlan { a, src, info, upper: self.upper }))
    }
}

/// Runs the factorization on the tensors' device.
pub fn cholesky(args: &Cholesky<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    match device {
        Device::Cpu => crate::cpu::linalg::cholesky(&plan),
        Device::Cuda(ordinal) => crate::cuda::linalg::cholesky(&plan, ordinal, exec),
    }
}

/// In-place solve of `A X = B` for each batch element, given the Cholesky factor of `A`
/// (`l` lower, or upper with `upper`); `b` is overwritten by `X`.
pub struct CholeskySolve<'a> {
    pub b: &'a TensorRef,
    pub l: &'a TensorRef,
    pub upper: bool,
}

/// A validated triangular-solve pair.
#[derive(Clone, Copy, Debug)]
pub struct CholeskySolvePlan {
    pub b: Batch,
    pub l: Batch,
    pub upper: bool,
}

impl CholeskySolve<'_> {
    pub fn plan(&self) -> Result<(Device, CholeskySolvePlan)> {
        let device = common_device(&[("B", Some(self.b)), ("L", Some(self.l))])?;
        let l = square_of("L", self.l)?;
        let b = rhs_of("L", &l, self.b)?;
        Ok((device, CholeskySolvePlan { b, l, upper: self.upper }))
    }
}

/// Runs the solve on the tensors' device.
pub fn cholesky_solve(args: &CholeskySolve<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    match device {
        Device::Cpu => crate::cpu::linalg::cholesky_solve(&plan),
        Device::Cuda(ordinal) => crate::cuda::linalg::cholesky_solve(&plan, ordinal, exec),
    }
}

/// Solve of `A X = B` for each batch element by LU with partial pivoting (Gaussian elimination
/// with row interchanges): `x` receives `X` (it may be `b` itself), `lu` (when given; it may be `a`
/// itself) the packed LU factors, and `info[i]` is 0, or `j > 0` when `U[j-1][j-1]` is exactly
/// zero (singular: `X` is then undefined). `a` and `b` are only read unless they are the outputs.
pub struct LuSolve<'a> {
    pub a: &'a TensorRef,
    pub lu: Option<&'a TensorRef>,
    pub b: &'a TensorRef,
    pub x: &'a TensorRef,
    pub info: &'a TensorRef,
    /// Optional `(batch, n)` int32 output: the 1-based row interchanges, as LAPACK's getrf
    /// (and `torch.linalg.lu_factor`) report them.
    pub pivots: Option<&'a TensorRef>,
    /// Optional int32 scratch of at least [`LU_WORK_INTS`] elements on A's device, which the
    /// blocked CUDA path of matrices too large for one block needs (with `lu` and `pivots`).
    pub work: Option<&'a TensorRef>,
}

/// Elements of [`LuSolve::work`] the blocked CUDA path uses.
pub const LU_WORK_INTS: usize = 128;

/// A validated LU solve: reads `a` and `b`, writes `x`, and `lu` (a pointer to a buffer like `a`)
/// when given.
#[derive(Clone, Copy, Debug)]
pub struct LuSolvePlan {
    pub a: Batch,
    pub lu: Option<usize>,
    pub b: Batch,
    pub x: usize,
    pub info: usize,
    pub pivots: Option<usize>,
    pub work: Option<usize>,
}

/// `t` (named `arg`) is a contiguous batch of `like`'s shape and dtype; returns its pointer.
fn same_batch(arg: &'static str, like_arg: &str, like: &Batch, t: &TensorRef) -> Result<usize> {
    let o = batch_of(arg, t)?;
    if (o.batch, o.rows, o.cols, o.dtype) != (like.batch, like.rows, like.cols, like.dtype) {
        return Err(Error::value(
            arg,
            format!(
                "expected ({}, {}, {}) {} like {like_arg}, got ({}, {}, {}) {}",
                like.batch, like.rows, like.cols, like.dtype, o.batch, o.rows, o.cols, o.dtype
            ),
        ));
    }
    Ok(o.ptr)
}

impl LuSolve<'_> {
    pub fn plan(&self) -> Result<(Device, LuSolvePlan)> {
        let device = common_device(&[
            ("A", Some(self.a)),
            ("B", Some(self.b)),
            ("X", Some(self.x)),
            ("LU", self.lu),
            ("info", Some(self.info)),
        ])?;
        let a = square_of("A", self.a)?;
        let b = rhs_of("A", &a, self.b)?;
        let x = same_batch("X", "B", &b, self.x)?;
        let lu = self.lu.map(|t| same_batch("LU", "A", &a, t)).transpose()?;
        let info = info_of(self.info, a.batch)?;
        let pivots = match self.pivots {
            None => None,
            Some(p) => {
                common_device(&[("A", Some(self.a)), ("pivots", Some(p))])?;
                Some(int32_of("pivots", p, a.batch * a.rows, false)?)
            }
        };
        let work = match self.work {
            None => None,
            Some(w) => {
                common_device(&[("A", Some(self.a)), ("work", Some(w))])?;
                Some(int32_of("work", w, LU_WORK_INTS, true)?)
            }
        };
        Ok((device, LuSolvePlan { a, lu, b, x, info, pivots, work }))
    }
}

/// Runs the solve on the tensors' device.
pub fn lu_solve(args: &LuSolve<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    match device {
        Device::Cpu => crate::cpu::linalg::lu_solve(&plan),
        Device::Cuda(ordinal) => crate::cuda::linalg::lu_solve(&plan, ordinal, exec),
    }
}

/// What the host can tell of an `info` that [`cholesky`] or [`lu_solve`] has just written
/// without waiting for the device: on the CPU (the op has returned, so `info` is final) the
/// index of its first nonzero entry, or none; elsewhere nothing (the caller reads `info` back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoOnHost {
    /// Not on the CPU: unknown until the device is synchronized.
    Unknown,
    /// Every entry is 0.
    Clean,
    /// The (flattened) index of the first nonzero entry.
    First(usize),
}

/// [`InfoOnHost`] of `info` (int32, contiguous).
///
/// # Safety
/// `info` describes live memory that no one writes meanwhile, as it does right after an op of
/// this module that took it has returned `Ok` (its plan validated it).
pub unsafe fn info_on_host(info: &TensorRef) -> InfoOnHost {
    if info.device != Device::Cpu || info.dtype != DType::I32 || !info.is_contiguous() {
        return InfoOnHost::Unknown;
    }
    let n = info.numel();
    if n == 0 {
        return InfoOnHost::Clean;
    }
    // SAFETY: per the contract, n int32 entries at ptr.
    let all = unsafe { std::slice::from_raw_parts(info.ptr as *const i32, n) };
    all.iter().position(|&v| v != 0).map_or(InfoOnHost::Clean, InfoOnHost::First)
}

/// In-place batched triangular solve `op(T) X = B` (`op(T)` = T, or Tᵀ with `trans`); only the
/// `lower` (or upper) triangle of T is read, its diagonal taken as ones with `unit`. `b` becomes X.
pub struct Trsm<'a> {
    pub t: &'a TensorRef,
    pub b: &'a TensorRef,
    pub lower: bool,
    pub trans: bool,
    pub unit: bool,
}

/// A validated triangular solve.
#[derive(Clone, Copy, Debug)]
pub struct TrsmPlan {
    pub t: Batch,
    pub b: Batch,
    pub lower: bool,
    pub trans: bool,
    pub unit: bool,
}

impl Trsm<'_> {
    pub fn plan(&self) -> Result<(Device, TrsmPlan)> {
        let device = common_device(&[("A", Some(self.t)), ("B", Some(self.b))])?;
        let t = square_of("A", self.t)?;
        let b = rhs_of("A", &t, self.b)?;
        Ok((device, TrsmPlan { t, b, lower: self.lower, trans: self.trans, unit: self.unit }))
    }
}

/// Runs the triangular solve on the tensors' device.
pub fn trsm(args: &Trsm<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    match device {
        Device::Cpu => crate::cpu::linalg::trsm(&plan),
        Device::Cuda(ordinal) => crate::cuda::linalg::trsm(&plan, ordinal, exec),
    }
}

/// Householder QR of each `(m, n)` matrix of `a` (read only): `r` gets the `(kr, n)` upper
/// trapezoidal factor (`kr` = min(m, n), or m for the complete form, whose extra rows are zero) and
/// `q`, when given, the `(m, kq)` orthonormal factor (`kq` = min(m, n), or m for the complete
/// form), so that `A = Q R`. LAPACK's reflector convention (`R` may have negative diagonal entries,
/// as `torch.linalg.qr` returns them).
pub struct Qr<'a> {
    pub a: &'a TensorRef,
    pub q: Option<&'a TensorRef>,
    pub r: &'a TensorRef,
    /// Optional scratch of A's dtype, contiguous, of at least [`qr_work_len`] elements on A's
    /// device, which the blocked CUDA path of matrices too large for one block needs.
    pub work: Option<&'a TensorRef>,
}

/// Columns per panel of the blocked CUDA QR.
pub const QR_PANEL: usize = 128;
/// Widest leaf of the blocked CUDA QR (the row stride of its Z buffer).
pub const QR_LEAF_MAX: usize = 16;

/// Elements of [`Qr::work`] the blocked CUDA QR of an `m × n` matrix (Q with `kq` columns) uses:
/// the factored copy of A (m×n), the reflectors (m×k), every panel's triangular factor
/// (QR_PANEL² each), the product Vᵀ·X (QR_PANEL × max(n, kq)), Z (m × QR_LEAF_MAX) and the k
/// scalar factors; each region starts on a 32-element boundary.
pub fn qr_work_len(m: usize, n: usize, kq: usize) -> usize {
    qr_work_layout(m, n, kq).last().copied().unwrap_or(0)
}

/// Offsets (in elements) of the regions of [`qr_work_len`]'s layout, in the order listed there,
/// then the total.
pub fn qr_work_layout(m: usize, n: usize, kq: usize) -> [usize; 7] {
    let k = m.min(n);
    let sizes = [m * n, m * k, k.div_ceil(QR_PANEL) * QR_PANEL * QR_PANEL, QR_PANEL * n.max(kq), m * QR_LEAF_MAX, k];
    let mut out = [0; 7];
    for (i, s) in sizes.iter().enumerate() {
        out[i + 1] = out[i] + s.div_ceil(32) * 32;
    }
    out
}

/// The address of a scratch `w` for A (`a`): on A's device, of A's dtype, contiguous, at least
/// `need` elements.
fn scratch_of(a: &TensorRef, w: &TensorRef, dtype: DType, need: usize) -> Result<usize> {
    common_device(&[("A", Some(a)), ("work", Some(w))])?;
    expect_dtype("work", w, dtype)?;
    if w.numel() < need || !w.is_contiguous() {
        return Err(Error::value(
            "work",
            format!("expected a contiguous {dtype} tensor of at least {need} elements, got shape {:?}", w.shape),
        ));
    }
    Ok(w.ptr)
}

/// A validated QR call (`kq` = 0 without Q).
#[derive(Clone, Copy, Debug)]
pub struct QrPlan {
    pub a: Batch,
    pub q: usize,
    pub kq: usize,
    pub r: usize,
    pub kr: usize,
    /// The blocked path's scratch, of at least [`qr_work_len`] elements.
    pub work: Option<usize>,
}

impl Qr<'_> {
    pub fn plan(&self) -> Result<(Device, QrPlan)> {
        let device = common_device(&[("A", Some(self.a)), ("Q", self.q), ("R", Some(self.r))])?;
        let a = batch_of("A", self.a)?;
        let (m, n) = (a.rows, a.cols);
        let k = m.min(n);
        let factor = |arg: &'static str, t: &TensorRef, rows: Option<usize>, cols: Option<usize>| -> Result<Batch> {
            let f = batch_of(arg, t)?;
            let ok = f.dtype == a.dtype
                && f.batch == a.batch
                && rows.map_or(f.rows == k || f.rows == m, |r| f.rows == r)
                && cols.map_or(f.cols == k || f.cols == m, |c| f.cols == c);
            if !ok {
                return Err(Error::value(
                    arg,
                    format!(
                        "expected a {} tensor of shape ({}, {}, {}) for A of shape ({}, {m}, {n}), got {} {:?}",
                        a.dtype,
                        a.batch,
                        rows.map_or(format!("{k} or {m}"), |r| r.to_string()),
                        cols.map_or(format!("{k} or {m}"), |c| c.to_string()),
                        a.batch,
                        f.dtype,
                        t.shape
                    ),
                ));
            }
            Ok(f)
        };
        let r = factor("R", self.r, None, Some(n))?;
        let (q, kq) = match self.q {
            Some(t) => {
                let q = factor("Q", t, Some(m), None)?;
                (q.ptr, q.cols)
            }
            None => (0, 0),
        };
        let work = self.work.map(|w| scratch_of(self.a, w, a.dtype, qr_work_len(m, n, kq))).transpose()?;
        Ok((device, QrPlan { a, q, kq, r: r.ptr, kr: r.rows, work }))
    }
}

/// Runs the factorization on the tensors' device.
pub fn qr(args: &Qr<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    if plan.a.batch == 0 {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::linalg::qr(&plan),
        Device::Cuda(ordinal) => crate::cuda::linalg::qr(&plan, ordinal, exec),
    }
}

/// One-sided Jacobi SVD of each `(m, n)` matrix of `a` (m >= n, read only): `s` (`(batch, n)`)
/// gets the singular values in descending order, `u` (`(batch, m, n)`) and `v` (`(batch, n, n)`)
/// the singular vectors (A = U diag(s) Vᵀ), each column signed so that its entry of largest
/// magnitude is positive (U's, or V's where σ = 0); a U column whose σ is 0 comes out zero. With
/// `eigh` (square symmetric `a`; `v` required on CUDA, optional on the CPU) `s` gets the eigenvalues
/// in ascending order and `v` the eigenvectors (same sign rule): Jacobi on CUDA, on the CPU Householder tridiagonalization
/// and the implicit QL iteration (`cpu::symeig`). `info[b]` holds flags: 1 when matrix b did not
/// converge within `max_sweeps` sweeps (CPU eigh: within max_sweeps·n QL iterations), 2 (SVD
/// only) when some σ of it is zero (its U column left zero, for the caller to complete); 0
/// otherwise.
pub struct Svd<'a> {
    pub a: &'a TensorRef,
    pub s: &'a TensorRef,
    pub u: Option<&'a TensorRef>,
    pub v: Option<&'a TensorRef>,
    pub info: &'a TensorRef,
    pub eigh: bool,
    pub max_sweeps: usize,
    /// Optional scratch of A's dtype, contiguous, of at least [`eigh_work_len`] elements on A's
    /// device: with it (and cuBLAS), a CUDA eigh takes the large-matrix path (eigh only).
    pub work: Option<&'a TensorRef>,
}

/// Columns per panel of the large-matrix CUDA eigh's tridiagonal reduction.
pub const EIGH_PANEL: usize = 32;
/// Most blocks of the reduction's cooperative launches (more than any device's SMs here).
pub const EIGH_GRID_MAX: usize = 256;
/// Reflectors per block reflector of the large-matrix eigh's back-transformation.
pub const EIGH_BACK: usize = 128;

/// Elements (of `dtype`) of [`Svd::work`] the large-matrix CUDA eigh of an `n × n` matrix uses.
pub fn eigh_work_len(n: usize, dtype: DType) -> usize {
    eigh_work_layout(n, dtype)[EIGH_REGIONS].div_ceil(dtype.size())
}

/// Regions of [`eigh_work_len`]'s layout.
pub const EIGH_REGIONS: usize = 11;

/// Byte offsets of the large-matrix eigh's scratch regions, then the total: F (the matrix being
/// reduced, n²), VW (a panel's V, W and V again, 3·EIGH_PANEL × n; later the back-transformation's
/// EIGH_BACK × n product), a (n), the partial sums (EIGH_GRID_MAX × (1 + 2·EIGH_PANEL)) and
/// (EIGH_GRID_MAX), tau (n), the block reflectors' U (EIGH_BACK² each) — all of `dtype` — then
/// d, e, the eigenvalues, the vectors' scales (first T's float32 copy) and four scalars
/// (float64), Z (n² float64, float32
/// input only; float64 input uses the output), the ranks (n int32) and 8 control words; each
/// region starts on 256 bytes.
pub fn eigh_work_layout(n: usize, dtype: DType) -> [usize; EIGH_REGIONS + 1] {
    let es = dtype.size();
    let nb = EIGH_PANEL;
    let z = if dtype == DType::F64 { 0 } else { n * n * 8 };
    let sizes = [
        n * n * es,
        (3 * nb).max(EIGH_BACK) * n * es,
        n * es,
        EIGH_GRID_MAX * (1 + 2 * nb) * es,
        EIGH_GRID_MAX * es,
        n * es,
        n.div_ceil(EIGH_BACK) * EIGH_BACK * EIGH_BACK * es,
        (4 * n + 4) * 8,
        z,
        n * 4,
        32,
    ];
    let mut out = [0; EIGH_REGIONS + 1];
    for (i, s) in sizes.iter().enumerate() {
        out[i + 1] = out[i] + s.div_ceil(256) * 256;
    }
    out
}

/// A validated Jacobi call (`u`/`v` 0 when absent).
#[derive(Clone, Copy, Debug)]
pub struct SvdPlan {
    pub a: Batch,
    pub s: usize,
    pub u: usize,
    pub v: usize,
    pub info: usize,
    pub eigh: bool,
    pub max_sweeps: usize,
    /// The large-matrix eigh's scratch, of at least [`eigh_work_len`] elements.
    pub work: Option<usize>,
}

impl Svd<'_> {
    pub fn plan(&self) -> Result<(Device, SvdPlan)> {
        let device = common_device(&[
            ("A", Some(self.a)),
            ("S", Some(self.s)),
            ("U", self.u),
            ("V", self.v),
            ("info", Some(self.info)),
        ])?;
        let a = batch_of("A", self.a)?;
        let (m, n) = (a.rows, a.cols);
        if m < n || (self.eigh && m != n) {
            let want = if self.eigh { "square" } else { "tall (m >= n)" };
            return Err(Error::value("A", format!("expected {want} matrices, got {m} x {n}")));
        }
        let out = |arg: &'static str, t: &TensorRef, numel: usize, shape: &str| -> Result<usize> {
            expect_dtype(arg, t, a.dtype)?;
            if t.numel() != numel || !t.is_contiguous() {
                return Err(Error::value(
                    arg,
                    format!("expected a contiguous {shape} tensor ({numel} elements), got shape {:?}", t.shape),
                ));
            }
            Ok(t.ptr)
        };
        let s = out("S", self.s, a.batch * n, &format!("({}, {n})", a.batch))?;
        let u = match self.u {
            Some(t) => out("U", t, a.batch * m * n, &format!("({}, {m}, {n})", a.batch))?,
            None => 0,
        };
        let v = match self.v {
            Some(t) => out("V", t, a.batch * n * n, &format!("({}, {n}, {n})", a.batch))?,
            // The CUDA eigh kernels write the vectors (their working set); only the CPU solver
            // and the large-matrix CUDA path (given its scratch) can leave them out.
            None if self.eigh && device != Device::Cpu && self.work.is_none() => {
                return Err(Error::value("V", "the eigenvectors' output is required with eigh on CUDA"))
            }
            None => 0,
        };
        let info = info_of(self.info, a.batch)?;
        if self.max_sweeps == 0 {
            return Err(Error::value("max_sweeps", "expected at least 1"));
        }
        if self.work.is_some() && (!self.eigh || device == Device::Cpu) {
            return Err(Error::value("work", "the scratch is for the large-matrix CUDA eigh only"));
        }
        let work = self.work.map(|w| scratch_of(self.a, w, a.dtype, eigh_work_len(n, a.dtype))).transpose()?;
        Ok((device, SvdPlan { a, s, u, v, info, eigh: self.eigh, max_sweeps: self.max_sweeps, work }))
    }
}

/// Runs the decomposition on the tensors' device.
pub fn svd(args: &Svd<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    if plan.a.batch == 0 {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::linalg::svd(&plan),
        Device::Cuda(ordinal) => crate::cuda::linalg::svd(&plan, ordinal, exec),
    }
}

/// Per-matrix reductions of a batch (`(batch, m, n)` contiguous, float32/float64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchedKind {
    /// `out[b] = A[b]ᵀ A[b]` (`(batch, n, n)`).
    Syrk,
    /// `out[b] = ‖A[b]‖_F` (`(batch,)`).
    Frobenius,
    /// `out[b] = Σ_i A[b][i][i]` (`(batch,)`, square matrices).
    Trace,
}

/// A batched helper call: `out` (same dtype as `a`) is written, `a` only read.
pub struct Batched<'a> {
    pub kind: BatchedKind,
    pub a: &'a TensorRef,
    pub out: &'a TensorRef,
}

/// A validated batched helper call.
#[derive(Clone, Copy, Debug)]
pub struct BatchedPlan {
    pub kind: BatchedKind,
    pub a: Batch,
    pub out: usize,
}

impl Batched<'_> {
    pub fn plan(&self) -> Result<(Device, BatchedPlan)> {
        let device = common_device(&[("A", Some(self.a)), ("out", Some(self.out))])?;
        let a = if self.kind == BatchedKind::Trace { square_of("A", self.a)? } else { batch_of("A", self.a)? };
        expect_dtype("out", self.out, a.dtype)?;
        let want = match self.kind {
            BatchedKind::Syrk => a.batch * a.cols * a.cols,
            BatchedKind::Frobenius | BatchedKind::Trace => a.batch,
        };
        if self.out.numel() != want || !self.out.is_contiguous() {
            return Err(Error::value(
                "out",
                format!("expected a contiguous tensor of {want} elements, got shape {:?}", self.out.shape),
            ));
        }
        Ok((device, BatchedPlan { kind: self.kind, a, out: self.out.ptr }))
    }
}

/// Runs the helper on the tensors' device.
pub fn batched(args: &Batched<'_>) -> Result<()> {
    let (device, plan) = args.plan()?;
    match device {
        Device::Cpu => crate::cpu::linalg::batched(&plan),
        Device::Cuda(_) => Err(Error::Unsupported("batched linear-algebra helpers: no CUDA kernel yet".into())),
    }
}
