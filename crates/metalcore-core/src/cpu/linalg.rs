//! Batched dense linear algebra on the CPU (semantics in `ops::linalg`): in parallel over the batch ([`super::pool`]), one
//! tight, cache-resident kernel per matrix (the sizes this targets, n ≤ a few hundred, fit in L1/L2).

use super::lanes::{self, W};
use super::pool::{self, Shared};
use super::symeig::{gemv_cols, gemv_cols4, sym_eig_best, EigScratch, LaneBuf};
use super::{dot, Real};
use crate::ops::linalg::{
    BatchedKind, BatchedPlan, CholeskyPlan, CholeskySolvePlan, LuSolvePlan, QrPlan, SvdPlan, TrsmPlan,
};

/// Zeroes the strict upper triangle (the factor is lower), or transposes into the upper one.
fn finish<A: Real>(a: &mut [A], n: usize, upper: bool) {
    for i in 0..n {
        for j in i + 1..n {
            if upper {
                a[i * n + j] = a[j * n + i];
                a[j * n + i] = A::ZERO;
            } else {
                a[i * n + j] = A::ZERO;
            }
        }
    }
}

/// `dst = src` (equal lengths), in parallel chunks.
fn par_copy<A: Real>(dst: &mut [A], src: &[A]) {
    const CHUNK: usize = 1 << 16;
    let len = dst.len().min(src.len());
    let (d, s) = (Shared::new(dst.as_ptr()), Shared::new(src.as_ptr()));
    // SAFETY: chunk c covers [c·CHUNK, min((c+1)·CHUNK, len)) of both slices; chunks are disjoint.
    pool::for_each_init(
        len.div_ceil(CHUNK),
        1,
        || (),
        |_, c| unsafe {
            let lo = c * CHUNK;
            std::ptr::copy_nonoverlapping(s.at(lo), d.at(lo), CHUNK.min(len - lo));
        },
    );
}

/// Cholesky of L interleaved n×n matrices (`m[i*n + j][lane]`, see [`lanes`]), in place on
/// their lower triangles, every operation across the L lanes. Left-looking by columns: column j
/// below the diagonal is `(a[i][j] − Σ_k<j L[i][k] L[j][k]) / L[j][j]`, four rows at a time so
/// four independent sums share each load of row j. A lane that fails records its minor in `info`
/// and turns NaN from there on (its factor is then undefined, as LAPACK leaves it).
#[inline(always)]
unsafe fn factor_lanes<A: Real, const L: usize>(m: &mut [[A; L]], n: usize, info: &mut [i32; L]) {
    debug_assert!(m.len() >= n * n);
    let p = m.as_mut_ptr();
    for j in 0..n {
        let rj = p.add(j * n);
        let mut s = *rj.add(j);
        for k in 0..j {
            let a = *rj.add(k);
            for l in 0..L {
                s[l] = (-a[l]).mul_add(a[l], s[l]);
            }
        }
        // Branch-free across the lanes (a per-lane branch here costs L scalar square roots):
        // a pivot that is not positive (NaN included) becomes NaN, and only then is `info` set.
        let (nan, mut inv, mut failed) = (A::from_f64(f64::NAN), [A::ZERO; L], false);
        for l in 0..L {
            s[l] = if s[l] > A::ZERO { s[l] } else { nan }.sqrt();
            inv[l] = A::ONE / s[l];
            failed |= s[l] != s[l];
        }
        if failed {
            for l in 0..L {
                if s[l] != s[l] && info[l] == 0 {
                    info[l] = j as i32 + 1;
                }
            }
        }
        *rj.add(j) = s;
        let mut i = j + 1;
        while i + 4 <= n {
            let r: [*mut [A; L]; 4] = std::array::from_fn(|t| p.add((i + t) * n));
            let mut acc: [[A; L]; 4] = std::array::from_fn(|t| *r[t].add(j));
            for k in 0..j {
                let b = *rj.add(k);
                for t in 0..4 {
                    let a = *r[t].add(k);
                    for l in 0..L {
                        acc[t][l] = (-a[l]).mul_add(b[l], acc[t][l]);
                    }
                }
            }
            for t in 0..4 {
                for l in 0..L {
                    acc[t][l] = acc[t][l] * inv[l];
                }
                *r[t].add(j) = acc[t];
            }
            i += 4;
        }
        for i in i..n {
            let ri = p.add(i * n);
            let mut acc = *ri.add(j);
            for k in 0..j {
                let (a, b) = (*ri.add(k), *rj.add(k));
                for l in 0..L {
                    acc[l] = (-a[l]).mul_add(b[l], acc[l]);
                }
            }
            for l in 0..L {
                acc[l] = acc[l] * inv[l];
            }
            *ri.add(j) = acc;
        }
    }
}

/// The lower triangle of the n×n lane matrices as the factor's output: the strict upper triangle
/// zeroed, or (`upper`) the transpose, lower triangle zeroed — except in the blocks of 8 elements
/// that [`lanes::unpack_where`] writes as zeros (`copy`, see [`factor_blocks`]).
#[inline(always)]
fn finish_lanes<A: Real, const L: usize>(m: &mut [[A; L]], n: usize, upper: bool, copy: &[bool]) {
    let full = (n * n) & !7;
    let live = |e: usize| e >= full || copy.is_empty() || copy[e / 8];
    for i in 0..n {
        for j in i + 1..n {
            let (u, l) = (i * n + j, j * n + i);
            if upper {
                if live(u) {
                    m[u] = m[l];
                }
                if live(l) {
                    m[l] = [A::ZERO; L];
                }
            } else if live(u) {
                m[u] = [A::ZERO; L];
            }
        }
    }
}

/// For the n×n matrices of the lane kernels, per block b of 8 elements (`8b .. 8b + 8` in row-major
/// order, the whole blocks only): whether it holds an element of the lower triangle (diagonal
/// included) and whether it holds one of the upper triangle — the blocks that the Cholesky packs
/// (it reads the lower triangle only) and unpacks (the others of its output are zeros).
fn factor_blocks(n: usize) -> (Vec<bool>, Vec<bool>) {
    let any = |b: usize, f: &dyn Fn(usize, usize) -> bool| (8 * b..8 * b + 8).any(|e| f(e / n, e % n));
    let blocks = n * n / 8;
    ((0..blocks).map(|b| any(b, &|i, j| j <= i)).collect(), (0..blocks).map(|b| any(b, &|i, j| j >= i)).collect())
}

isa_copies!(factor_lanes_avx2<const L> = factor_lanes(m: &mut [[A; L]], n: usize, info: &mut [i32; L]));

/// Cholesky of one row-major n×n matrix in place on its lower triangle, in the dot-product form:
/// every entry is one contiguous dot product of two row prefixes that are already final. Returns
/// LAPACK's `info` (the order of the first leading minor that is not positive definite, NaN
/// included; the factor is then partial).
#[inline(always)]
fn factor_matrix<A: Real>(a: &mut [A], n: usize) -> i32 {
    for i in 0..n {
        for j in 0..=i {
            let s = a[i * n + j] - dot(&a[i * n..i * n + j], &a[j * n..j * n + j]);
            if j < i {
                a[i * n + j] = s / a[j * n + j];
            } else if s > A::ZERO {
                a[i * n + i] = s.sqrt();
            } else {
                return i as i32 + 1;
            }
        }
    }
    0
}

isa_copies!(factor_matrix_avx2 = factor_matrix(a: &mut [A], n: usize) -> i32);

/// Above this order a matrix is factored on its own: eight interleaved matrices leave the cache
/// (and a small batch would be padded with identities). 2×512² float32 on the 2-core machine:
/// 26 ms interleaved, 7–10 ms one by one; 5×40² stays faster interleaved.
const CHOL_LANES_MAX_N: usize = 128;

fn cholesky_impl<A: Real>(p: &CholeskyPlan) {
    let n = p.a.rows;
    if p.a.batch == 0 {
        return;
    }
    let len = n * n;
    // SAFETY: the plan validated a contiguous (batch, n, n) buffer of A and a contiguous int32
    // vector of `batch` entries; each task reads and writes only its own group of matrices.
    let info = unsafe { std::slice::from_raw_parts_mut(p.info as *mut i32, p.a.batch) };
    if n == 0 {
        info.fill(0);
        return;
    }
    if n > CHOL_LANES_MAX_N {
        let all = unsafe { std::slice::from_raw_parts_mut(p.a.ptr as *mut A, p.a.batch * len) };
        if p.src != p.a.ptr {
            // SAFETY: the plan validated `src` as a contiguous buffer of A's size and dtype; it
            // may not overlap A (distinct torch tensors).
            let src = unsafe { std::slice::from_raw_parts(p.src as *const A, p.a.batch * len) };
            par_copy(all, src);
        }
        let f = pick!(factor_matrix_avx2, factor_matrix, A, unsafe fn(&mut [A], usize) -> i32);
        let (mats, infos) = (Shared::new(all.as_ptr()), Shared::new(info.as_ptr()));
        pool::for_each_init(
            p.a.batch,
            (4096 / len).max(1),
            || (),
            |_, i| {
                // SAFETY: task i owns matrix i (n×n) and info entry i.
                unsafe {
                    let m = mats.part(i, len);
                    *infos.at(i) = f(m, n);
                    finish(m, n, p.upper);
                }
            },
        );
        return;
    }
    // Up to 16×16, 16 matrices per group (fewer steps per matrix); beyond, 8 (16 lane matrices of
    // 32×32 float32 overflow L1: 1000×32² took 0.56 ms against 0.45).
    if n <= 16 {
        cholesky_lanes::<A, 16>(p);
    } else {
        cholesky_lanes::<A, 8>(p);
    }
}

/// [`cholesky_impl`] for n ≤ [`CHOL_LANES_MAX_N`] on groups of `L` matrices ([`factor_lanes`]),
/// straight from the source into the output.
fn cholesky_lanes<A: Real, const L: usize>(p: &CholeskyPlan) {
    let f = pick!(factor_lanes_avx2, factor_lanes, <A, L>, unsafe fn(&mut [[A; L]], usize, &mut [i32; L]));
    let n = p.a.rows;
    let len = n * n;
    let (batch, src, dst, info) = (p.a.batch, p.src as usize, p.a.ptr as usize, p.info as usize);
    let pad: Vec<A> = (0..len).map(identity(n)).collect();
    // Only the blocks holding part of the lower triangle are read, and the output's blocks of
    // zeros are written as such (not transposed).
    let (lower, upper) = factor_blocks(n);
    let copy = if p.upper { &upper } else { &lower };
    super::for_each_row(
        batch.div_ceil(L),
        len * L,
        || (vec![[A::ZERO; L]; len], vec![A::ZERO; len]),
        |(lanes, spill), g| {
            // SAFETY: the plan validated contiguous (batch, n, n) buffers at `src` and `dst` (the
            // same memory when in place) and `batch` info entries; group g reads and writes only
            // its own matrices. Missing lanes of the last group factor the identity (cleanly).
            unsafe {
                lanes::pack_where(&lanes::sources(src as *const A, g, batch, len, pad.as_ptr()), lanes, &lower);
                let mut status = [0i32; L];
                f(lanes, n, &mut status);
                finish_lanes(lanes, n, p.upper, copy);
                lanes::unpack_where(lanes, &lanes::sinks(dst as *mut A, g, batch, len, spill.as_mut_ptr()), copy);
                let first = g * L;
                std::ptr::copy_nonoverlapping(status.as_ptr(), (info as *mut i32).add(first), L.min(batch - first));
            }
        },
    );
}

by_acc!(cholesky(CholeskyPlan) => cholesky_impl, a.dtype);

/// `y -= a · x` over two equal-length slices.
#[inline(always)]
fn axpy<A: Real>(y: &mut [A], a: A, x: &[A]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y = *y - a * *x);
}

/// Solves `op(T) x = b` in place for one right-hand side, `T` a row-major n×n triangular matrix
/// (`lower` or upper; `op` = transpose when `trans`; diagonal taken as ones when `unit`). Every step
/// reads a contiguous row of `T`: dot products where the row runs along the unknowns already
/// solved, axpy updates where it runs along the ones still to come.
#[inline(always)]
fn tri_solve_vec<A: Real>(t: &[A], x: &mut [A], n: usize, lower: bool, trans: bool, unit: bool) {
    let div = |v: A, d: A| if unit { v } else { v / d };
    match (lower, trans) {
        (true, false) => {
            for i in 0..n {
                let row = &t[i * n..(i + 1) * n];
                x[i] = div(x[i] - dot(&row[..i], &x[..i]), row[i]);
            }
        }
        (false, false) => {
            for i in (0..n).rev() {
                let row = &t[i * n..(i + 1) * n];
                x[i] = div(x[i] - dot(&row[i + 1..], &x[i + 1..]), row[i]);
            }
        }
        (true, true) => {
            // Lᵀ x = b: row i of L scatters into the earlier unknowns.
            for i in (0..n).rev() {
                let row = &t[i * n..(i + 1) * n];
                x[i] = div(x[i], row[i]);
                let xi = x[i];
                axpy(&mut x[..i], xi, &row[..i]);
            }
        }
        (false, true) => {
            // Uᵀ x = b: row j of U scatters into the later unknowns.
            for j in 0..n {
                let row = &t[j * n..(j + 1) * n];
                x[j] = div(x[j], row[j]);
                let xj = x[j];
                axpy(&mut x[j + 1..], xj, &row[j + 1..]);
            }
        }
    }
}

/// Solves A x = b for one right-hand side from the Cholesky factor `f` of A (lower L with
/// A = L Lᵀ, or upper U with A = Uᵀ U): two triangular solves.
#[inline(always)]
fn solve_vec<A: Real>(f: &[A], x: &mut [A], n: usize, upper: bool) {
    if upper {
        tri_solve_vec(f, x, n, false, true, false);
        tri_solve_vec(f, x, n, false, false, false);
    } else {
        tri_solve_vec(f, x, n, true, false, false);
        tri_solve_vec(f, x, n, true, true, false);
    }
}

/// Applies `solve(x)` to each of the k columns of the row-major n×k `b` (copied to a contiguous
/// scratch column when k > 1).
#[inline(always)]
unsafe fn by_columns<A: Real>(b: &mut [A], n: usize, k: usize, col: &mut [A], solve: impl Fn(&mut [A])) {
    if k == 1 {
        solve(b);
        return;
    }
    for c in 0..k {
        for r in 0..n {
            col[r] = *b.get_unchecked(r * k + c);
        }
        solve(col);
        for r in 0..n {
            *b.get_unchecked_mut(r * k + c) = col[r];
        }
    }
}

/// One batch element of a Cholesky solve.
#[inline(always)]
unsafe fn solve_matrix<A: Real>(f: &[A], b: &mut [A], n: usize, k: usize, upper: bool, col: &mut [A]) {
    by_columns(b, n, k, col, |x| solve_vec(f, x, n, upper));
}

/// One batch element of a triangular solve; `flags` = (lower, trans, unit).
#[inline(always)]
unsafe fn trsm_matrix<A: Real>(t: &[A], b: &mut [A], n: usize, k: usize, flags: (bool, bool, bool), col: &mut [A]) {
    by_columns(b, n, k, col, |x| tri_solve_vec(t, x, n, flags.0, flags.1, flags.2));
}

isa_copies!(trsm_matrix_avx2 = trsm_matrix(t: &[A], b: &mut [A], n: usize, k: usize, flags: (bool, bool, bool), col: &mut [A]));

isa_copies!(solve_matrix_avx2 = solve_matrix(f: &[A], b: &mut [A], n: usize, k: usize, upper: bool, col: &mut [A]));

/// Padding for unused lanes: the n×n identity (it factors and solves cleanly).
#[inline(always)]
fn identity<A: Real>(n: usize) -> impl Fn(usize) -> A {
    move |e| if e % (n + 1) == 0 { A::ONE } else { A::ZERO }
}

/// One substitution step across the lanes: `b[xi] ← (b[xi] − Σ coef·b[xj]) / d` over `terms`
/// (coefficient, row of b) pairs.
#[inline(always)]
unsafe fn subst_lanes<A: Real>(b: &mut [[A; W]], xi: usize, terms: impl Iterator<Item = ([A; W], usize)>, d: [A; W]) {
    let mut acc = *b.get_unchecked(xi);
    for (t, xj) in terms {
        let y = *b.get_unchecked(xj);
        for l in 0..W {
            acc[l] = (-t[l]).mul_add(y[l], acc[l]);
        }
    }
    for l in 0..W {
        acc[l] = acc[l] / d[l];
    }
    *b.get_unchecked_mut(xi) = acc;
}

/// Cholesky solve of W interleaved systems (`g[i*n + j][lane]` the factor, `b[i*k + c][lane]`
/// the right-hand sides, solved in place): with G the lower factor (L, or Uᵀ when `upper`),
/// G y = b by rows, then Gᵀ x = y, every step across the lanes.
#[inline(always)]
unsafe fn chol_solve_lanes<A: Real>(g: &[[A; W]], b: &mut [[A; W]], n: usize, k: usize, upper: bool) {
    debug_assert!(g.len() >= n * n && b.len() >= n * k);
    let at = |i: usize, j: usize| *g.get_unchecked(if upper { j * n + i } else { i * n + j });
    for c in 0..k {
        let x = |i: usize| i * k + c;
        for i in 0..n {
            subst_lanes(b, x(i), (0..i).map(|j| (at(i, j), x(j))), at(i, i));
        }
        for i in (0..n).rev() {
            subst_lanes(b, x(i), (i + 1..n).map(|j| (at(j, i), x(j))), at(i, i));
        }
    }
}

isa_copies!(chol_solve_lanes_avx2 = chol_solve_lanes(g: &[[A; W]], b: &mut [[A; W]], n: usize, k: usize, upper: bool));

/// Largest n the lane-interleaved Cholesky solve takes (the crossover measured with the LU solve's
/// lanes before they were rebuilt; not remeasured past it).
const CHOL_SOLVE_LANES_MAX_N: usize = 64;

fn cholesky_solve_impl<A: Real>(p: &CholeskySolvePlan) {
    let (n, k) = (p.l.rows, p.b.cols);
    if p.b.batch == 0 || n == 0 || k == 0 {
        return;
    }
    let (llen, blen) = (n * n, n * k);
    if n <= CHOL_SOLVE_LANES_MAX_N && p.b.batch >= W && p.l.batch == p.b.batch {
        let f =
            pick!(chol_solve_lanes_avx2, chol_solve_lanes, A, unsafe fn(&[[A; W]], &mut [[A; W]], usize, usize, bool));
        // SAFETY: validated contiguous (batch, n, n) factors and (batch, n, k) right-hand sides,
        // solved in place.
        unsafe {
            solve_in_lanes::<A, W>(p.b.batch, n, k, (p.l.ptr, p.b.ptr, p.b.ptr), None, |lv, bv, _| {
                f(lv, bv, n, k, p.upper)
            })
        };
        return;
    }
    // SAFETY: validated contiguous buffers; `l` is only read, each task writes its own `b` matrix.
    let ls = unsafe { std::slice::from_raw_parts(p.l.ptr as *const A, p.l.batch * llen) };
    let bs = unsafe { std::slice::from_raw_parts_mut(p.b.ptr as *mut A, p.b.batch * blen) };
    let f = pick!(solve_matrix_avx2, solve_matrix, A, unsafe fn(&[A], &mut [A], usize, usize, bool, &mut [A]));
    let (bm, lm) = (Shared::new(bs.as_ptr()), Shared::new(ls.as_ptr()));
    let count = (bs.len() / blen).min(ls.len() / llen);
    pool::for_each_init(
        count,
        (8192 / (llen + blen)).max(1),
        || vec![A::ZERO; n],
        // SAFETY: task i writes only right-hand side i (n×k) and reads factor i (n×n); `col` is n.
        |col, i| unsafe { f(lm.part(i, llen), bm.part(i, blen), n, k, p.upper, col) },
    );
}

by_acc!(cholesky_solve(CholeskySolvePlan) => cholesky_solve_impl, b.dtype);

/// Gaussian elimination with partial pivoting on one row-major n×n `a` and n×k `b`, then back
/// substitution: `b` becomes A⁻¹B, `a` its packed LU factors, `piv` (when not empty) the 1-based
/// row interchanges. Returns LAPACK's `info` (first exactly-zero pivot, 1-based).
#[inline(always)]
fn lu_solve_one<A: Real>(a: &mut [A], b: &mut [A], n: usize, k: usize, piv: &mut [i32]) -> i32 {
    let mut info = 0;
    for j in 0..n {
        // Pivot: the largest |a[i][j]| for i >= j (a NaN is taken at once, so it propagates).
        let mut p = j;
        let mut best = a[j * n + j].abs();
        for i in j + 1..n {
            let v = a[i * n + j].abs();
            if v > best || v != v {
                p = i;
                best = v;
                if v != v {
                    break;
                }
            }
        }
        if let Some(slot) = piv.get_mut(j) {
            *slot = p as i32 + 1;
        }
        if p != j {
            for c in 0..n {
                a.swap(j * n + c, p * n + c);
            }
            for c in 0..k {
                b.swap(j * k + c, p * k + c);
            }
        }
        let d = a[j * n + j];
        if d == A::ZERO {
            if info == 0 {
                info = j as i32 + 1;
            }
            continue;
        }
        let (top, rest) = a.split_at_mut((j + 1) * n);
        let (btop, brest) = b.split_at_mut((j + 1) * k);
        let (prow, brow) = (&top[j * n + j + 1..j * n + n], &btop[j * k..j * k + k]);
        for i in 0..n - j - 1 {
            let row = &mut rest[i * n..(i + 1) * n];
            let l = row[j] / d;
            row[j] = l;
            axpy(&mut row[j + 1..], l, prow);
            axpy(&mut brest[i * k..(i + 1) * k], l, brow);
        }
    }
    // Back substitution with U (row i of U is contiguous to the right of the diagonal).
    for i in (0..n).rev() {
        let (head, tail) = b.split_at_mut((i + 1) * k);
        let bi = &mut head[i * k..];
        for j in i + 1..n {
            let u = a[i * n + j];
            axpy(bi, u, &tail[(j - i - 1) * k..(j - i) * k]);
        }
        let d = a[i * n + i];
        bi.iter_mut().for_each(|x| *x = *x / d);
    }
    info
}

/// The scalar path for one system (large n, or batches smaller than the lane count).
///
/// # Safety
/// `a` is n×n, `b` n×k.
#[inline(always)]
unsafe fn lu_solve_matrix<A: Real>(a: &mut [A], b: &mut [A], n: usize, k: usize, info: &mut i32, piv: &mut [i32]) {
    *info = lu_solve_one(a, b, n, k, piv);
}

isa_copies!(lu_solve_matrix_avx2 = lu_solve_matrix(a: &mut [A], b: &mut [A], n: usize, k: usize, info: &mut i32, piv: &mut [i32]));

/// Partial pivoting of step `j` across the lanes of [`lu_solve_lanes`]: each lane's pivot is the
/// first largest |a[i][j]|, i ≥ j ([`lanes::pivots`]: a NaN wins); the rows some lane pivots on are swapped with
/// row j in the lanes that chose them, over columns `c0..n` of A and all of B. Returns 1/pivot
/// and records a zero pivot in `info`.
#[inline(always)]
unsafe fn pivot_lanes<A: Real, const L: usize>(
    ap: *mut [A; L],
    bp: *mut [A; L],
    (n, k, j, c0): (usize, usize, usize, usize),
    info: &mut [i32; L],
) -> [A; L] {
    let piv = lanes::pivots(ap.add(j), n, j, n);
    // No lane pivots off the diagonal in most steps. Otherwise each lane that does swaps its two
    // rows element by element: masked whole-vector swaps of every row some lane chose cost
    // (n − j)² per step on a general matrix (1000×32² solve: 0.83 against 0.67 ms).
    if !lanes::all_eq(&piv, A::from_usize(j)) {
        for l in 0..L {
            let p = piv[l].to_f64() as usize;
            if p != j {
                let swap = |x: *mut [A; L], y: *mut [A; L]| std::ptr::swap(&mut (*x)[l], &mut (*y)[l]);
                (c0..n).for_each(|c| swap(ap.add(j * n + c), ap.add(p * n + c)));
                (0..k).for_each(|c| swap(bp.add(j * k + c), bp.add(p * k + c)));
            }
        }
    }
    let d = *ap.add(j * n + j);
    let mut inv = [A::ZERO; L];
    let mut zero = false;
    for l in 0..L {
        inv[l] = A::ONE / d[l];
        zero |= d[l] == A::ZERO;
    }
    if zero {
        for l in 0..L {
            if d[l] == A::ZERO && info[l] == 0 {
                info[l] = j as i32 + 1;
            }
        }
    }
    inv
}

/// `x[c] -= Σ_t f[t] · y_t[c]` for the lane vectors at `x` and `ys[t]`, c in `c0..c1`.
#[inline(always)]
unsafe fn update_lanes<A: Real, const R: usize, const L: usize>(
    x: *mut [A; L],
    ys: [*const [A; L]; R],
    f: [[A; L]; R],
    c0: usize,
    c1: usize,
) {
    for c in c0..c1 {
        let mut v = *x.add(c);
        for t in 0..R {
            let y = *ys[t].add(c);
            for l in 0..L {
                v[l] = (-f[t][l]).mul_add(y[l], v[l]);
            }
        }
        *x.add(c) = v;
    }
}

/// [`update_lanes`] with two steps on two rows at once: `xs[r][c] -= fs[r][0] · ys[0][c] + fs[r][1] ·
/// ys[1][c]` (in that order, as [`update_lanes`] rounds), each load of `ys` feeding both rows.
#[inline(always)]
unsafe fn update2_lanes<A: Real, const L: usize>(
    xs: [*mut [A; L]; 2],
    ys: [*const [A; L]; 2],
    fs: [[[A; L]; 2]; 2],
    c0: usize,
    c1: usize,
) {
    for c in c0..c1 {
        let (y0, y1) = (*ys[0].add(c), *ys[1].add(c));
        let (mut v, mut w) = (*xs[0].add(c), *xs[1].add(c));
        for l in 0..L {
            v[l] = (-fs[0][0][l]).mul_add(y0[l], v[l]);
            w[l] = (-fs[1][0][l]).mul_add(y0[l], w[l]);
            v[l] = (-fs[0][1][l]).mul_add(y1[l], v[l]);
            w[l] = (-fs[1][1][l]).mul_add(y1[l], w[l]);
        }
        *xs[0].add(c) = v;
        *xs[1].add(c) = w;
    }
}

/// LU solve of W interleaved systems (`a[i*n + j][lane]`, `b[i*k + c][lane]`, see [`lanes`]),
/// every step across the lanes ([`pivot_lanes`]). Elimination goes two columns at a time: the
/// second pivot column gets the first step's update alone, is pivoted, and the rows below then
/// take both steps in one pass (two FMAs for each load and store of the trailing matrix). Only
/// the solution is kept: the multipliers are applied to B on the way. Writes each lane's LAPACK
/// `info` (first exactly-zero pivot, 1-based).
#[inline(always)]
unsafe fn lu_solve_lanes<A: Real, const L: usize>(
    a: &mut [[A; L]],
    b: &mut [[A; L]],
    n: usize,
    k: usize,
    info: &mut [i32; L],
) {
    debug_assert!(a.len() >= n * n && b.len() >= n * k);
    let ap = a.as_mut_ptr();
    let bp = b.as_mut_ptr();
    let mul = |x: [A; L], y: [A; L]| -> [A; L] { std::array::from_fn(|l| x[l] * y[l]) };
    let mut j = 0;
    while j + 2 <= n {
        let (r0, r1) = (ap.add(j * n), ap.add((j + 1) * n));
        let inv0 = pivot_lanes(ap, bp, (n, k, j, j), info);
        // Step j's multipliers, kept in column j (they move with their rows in the second
        // pivoting), and its update of column j + 1 alone.
        for i in j + 1..n {
            let ri = ap.add(i * n);
            let f = mul(*ri.add(j), inv0);
            *ri.add(j) = f;
            update_lanes(ri, [r0], [f], j + 1, j + 2);
        }
        let inv1 = pivot_lanes(ap, bp, (n, k, j + 1, j), info);
        // Row j + 1 takes step j's update of the rest of its row, then the rows below take both.
        let (b0, b1) = (bp.add(j * k), bp.add((j + 1) * k));
        let f = *r1.add(j);
        update_lanes(r1, [r0], [f], j + 2, n);
        update_lanes(b1, [b0], [f], 0, k);
        // Rows two at a time, so that each load of rows j and j + 1 feeds both. From the
        // multiple of 4 at or below j + 2, in blocks of 4: the few columns left of j + 2 this
        // also updates hold multipliers already read (this path keeps no factors).
        let mut i = j + 2;
        while i + 2 <= n {
            let (ri, rh) = (ap.add(i * n), ap.add((i + 1) * n));
            let f = [*ri.add(j), mul(*ri.add(j + 1), inv1)];
            let g = [*rh.add(j), mul(*rh.add(j + 1), inv1)];
            let mut c = (j + 2) & !3;
            while c + 4 <= n {
                update2_lanes([ri, rh], [r0, r1], [f, g], c, c + 4);
                c += 4;
            }
            update2_lanes([ri, rh], [r0, r1], [f, g], c.max(j + 2), n);
            update_lanes(bp.add(i * k), [b0, b1], f, 0, k);
            update_lanes(bp.add((i + 1) * k), [b0, b1], g, 0, k);
            i += 2;
        }
        if i < n {
            let ri = ap.add(i * n);
            let f = [*ri.add(j), mul(*ri.add(j + 1), inv1)];
            let mut c = (j + 2) & !3;
            while c + 4 <= n {
                update_lanes(ri, [r0, r1], f, c, c + 4);
                c += 4;
            }
            update_lanes(ri, [r0, r1], f, c.max(j + 2), n);
            update_lanes(bp.add(i * k), [b0, b1], f, 0, k);
        }
        j += 2;
    }
    if j < n {
        // The last column of an odd order: its pivot (and zero check) only.
        pivot_lanes(ap, bp, (n, k, j, j), info);
    }
    // Back substitution with U, row by row: each solution entry summed in registers (two
    // partial sums, so the chain of dependent FMAs is half as long).
    for i in (0..n).rev() {
        let (ri, d) = (ap.add(i * n), *ap.add(i * n + i));
        for c in 0..k {
            let mut acc = [*bp.add(i * k + c), [A::ZERO; L]];
            let mut j = i + 1;
            while j + 2 <= n {
                for t in 0..2 {
                    let (u, y) = (*ri.add(j + t), *bp.add((j + t) * k + c));
                    for l in 0..L {
                        acc[t][l] = (-u[l]).mul_add(y[l], acc[t][l]);
                    }
                }
                j += 2;
            }
            if j < n {
                let (u, y) = (*ri.add(j), *bp.add(j * k + c));
                for l in 0..L {
                    acc[0][l] = (-u[l]).mul_add(y[l], acc[0][l]);
                }
            }
            let x = &mut *bp.add(i * k + c);
            for l in 0..L {
                x[l] = (acc[0][l] + acc[1][l]) / d[l];
            }
        }
    }
}

isa_copies!(lu_solve_lanes_avx2<const L> = lu_solve_lanes(a: &mut [[A; L]], b: &mut [[A; L]], n: usize, k: usize, info: &mut [i32; L]));

/// Largest n the lane-interleaved LU takes (reference CPU: 100×128² float32 solves in 2.4 ms
/// interleaved against 7.0 ms one system per task; float64 100×96² 3.9 against 4.9 ms, 100×128²
/// 8.7 against 10.6, 20×128² about even, 2.4–2.5 ms).
const LANES_MAX_N: usize = 128;

/// Largest n the lane-interleaved LU runs with [`W`] systems per group (past it, 8).
const LU_LANES16_MAX_N: usize = 16;

fn lu_solve_impl<A: Real>(p: &LuSolvePlan) {
    let (n, k) = (p.a.rows, p.b.cols);
    if p.a.batch == 0 {
        return;
    }
    let (alen, blen) = (n * n, n * k);
    // SAFETY: validated contiguous buffers, each task touching only its own group of matrices.
    let info = unsafe { std::slice::from_raw_parts_mut(p.info as *mut i32, p.a.batch) };
    if n == 0 {
        info.fill(0);
        return;
    }
    // Lanes pay a scalar pivot search and row swap per lane: past small n (or with lanes left
    // empty) one system per task is faster. The lanes do not keep the factors (they only read A):
    // a call that wants them (with pivots) takes the per-matrix path.
    let per_matrix = n > LANES_MAX_N || p.a.batch < W || p.pivots.is_some();
    if !per_matrix && p.lu.is_none() {
        // Past 16 rows, 8 systems per group: 16 lane matrices of 32×32 float32 (64 KiB) overflow
        // L1.
        if n <= LU_LANES16_MAX_N {
            lu_solve_lanes_impl::<A, W>(p);
        } else {
            lu_solve_lanes_impl::<A, 8>(p);
        }
        return;
    }
    // One system per task, in place: on the factor output (A copied there) or a scratch copy of A
    // when the factors are not wanted, and on X (B copied there).
    // SAFETY: the plan validated contiguous buffers of these sizes; outputs are distinct tensors
    // from the inputs unless they are the same memory (in place).
    let ain = unsafe { std::slice::from_raw_parts(p.a.ptr as *const A, p.a.batch * alen) };
    let mut scratch: Vec<A> = Vec::new();
    let work = match p.lu {
        Some(ptr) => {
            if ptr != p.a.ptr {
                let out = unsafe { std::slice::from_raw_parts_mut(ptr as *mut A, p.a.batch * alen) };
                par_copy(out, ain);
            }
            ptr as *mut A
        }
        None => {
            scratch.extend_from_slice(ain);
            scratch.as_mut_ptr()
        }
    };
    let asl = unsafe { std::slice::from_raw_parts_mut(work, p.a.batch * alen) };
    if blen > 0 && p.x != p.b.ptr {
        let bin = unsafe { std::slice::from_raw_parts(p.b.ptr as *const A, p.b.batch * blen) };
        let out = unsafe { std::slice::from_raw_parts_mut(p.x as *mut A, p.b.batch * blen) };
        par_copy(out, bin);
    }
    // With no right-hand side there is nothing to read in `b`: a scratch of one element per
    // matrix stands for it (so the chunking below stays uniform).
    let mut none: Vec<A> = Vec::new();
    let (bsl, bstep): (&mut [A], usize) = if blen == 0 {
        none.resize(p.a.batch, A::ZERO);
        (&mut none[..], 1)
    } else {
        (unsafe { std::slice::from_raw_parts_mut(p.x as *mut A, p.b.batch * blen) }, blen)
    };
    {
        let f = pick!(
            lu_solve_matrix_avx2,
            lu_solve_matrix,
            A,
            unsafe fn(&mut [A], &mut [A], usize, usize, &mut i32, &mut [i32])
        );
        let mut nopiv: Vec<i32> = Vec::new();
        let (psl, pstep): (&mut [i32], usize) = match p.pivots {
            // SAFETY: validated contiguous int32 (batch, n) output.
            Some(ptr) => (unsafe { std::slice::from_raw_parts_mut(ptr as *mut i32, p.a.batch * n) }, n),
            None => {
                nopiv.resize(p.a.batch, 0);
                (&mut nopiv[..], 1)
            }
        };
        let plen = if p.pivots.is_some() { n } else { 0 };
        let count = (asl.len() / alen).min(bsl.len() / bstep).min(psl.len() / pstep).min(info.len());
        let (am, bm, pm, im) = (
            Shared::new(asl.as_ptr()),
            Shared::new(bsl.as_ptr()),
            Shared::new(psl.as_ptr()),
            Shared::new(info.as_ptr()),
        );
        pool::for_each_init(
            count,
            (8192 / (alen + blen)).max(1),
            || (),
            |_, i| {
                // SAFETY: task i owns its n×n matrix, its n×k right-hand side (or scratch slot), its n
                // pivots (or a scratch slot, passed as an empty slice) and its info entry.
                unsafe {
                    let b = bm.part(i, bstep);
                    let pv = pm.part(i, pstep);
                    f(am.part(i, alen), &mut b[..blen], n, k, &mut *im.at(i), &mut pv[..plen])
                }
            },
        );
    }
}

/// [`lu_solve_impl`] on groups of W systems ([`lu_solve_lanes`]), straight from A and B into X
/// (A is only read).
fn lu_solve_lanes_impl<A: Real, const L: usize>(p: &LuSolvePlan) {
    let f = pick!(
        lu_solve_lanes_avx2,
        lu_solve_lanes,
        <A, L>,
        unsafe fn(&mut [[A; L]], &mut [[A; L]], usize, usize, &mut [i32; L])
    );
    let (n, k) = (p.a.rows, p.b.cols);
    // SAFETY: the plan validated contiguous (batch, n, n) A, (batch, n, k) B and X (B and X the
    // same memory when in place) and `batch` info entries.
    unsafe {
        solve_in_lanes::<A, L>(p.a.batch, n, k, (p.a.ptr, p.b.ptr, p.x), Some(p.info), |av, bv, status| {
            f(av, bv, n, k, status)
        })
    };
}

/// Solves `batch` systems in groups of W ([`lanes`]): each group's n×n matrices (from `a`; the
/// identity for lanes past the batch) and n×k right-hand sides (from `b`; zeros) are packed,
/// `solve(matrices, rhs, status)` runs across the lanes, the solutions are unpacked into `x` and,
/// with `info`, each lane's status is stored there.
///
/// # Safety
/// `a`, `b` and `x` address contiguous batches of those shapes (`x` may be `b`), `info` `batch`
/// int32 entries; `solve` touches only the lane buffers it is given.
unsafe fn solve_in_lanes<A: Real, const L: usize>(
    batch: usize,
    n: usize,
    k: usize,
    (a, b, x): (usize, usize, usize),
    info: Option<usize>,
    solve: impl Fn(&mut [[A; L]], &mut [[A; L]], &mut [i32; L]) + Sync,
) {
    let (alen, blen) = (n * n, n * k);
    let (pad, zeros): (Vec<A>, Vec<A>) = ((0..alen).map(identity(n)).collect(), vec![A::ZERO; blen]);
    super::for_each_row(
        batch.div_ceil(L),
        (alen + blen) * L,
        || (vec![[A::ZERO; L]; alen], vec![[A::ZERO; L]; blen], vec![A::ZERO; blen]),
        |(av, bv, spill), g| {
            // SAFETY: group g reads and writes only its own systems (see the function's contract).
            unsafe {
                lanes::pack(&lanes::sources(a as *const A, g, batch, alen, pad.as_ptr()), av);
                lanes::pack(&lanes::sources(b as *const A, g, batch, blen, zeros.as_ptr()), bv);
                let mut status = [0i32; L];
                solve(av, bv, &mut status);
                lanes::unpack(bv, &lanes::sinks(x as *mut A, g, batch, blen, spill.as_mut_ptr()));
                if let Some(info) = info {
                    let first = g * L;
                    std::ptr::copy_nonoverlapping(status.as_ptr(), (info as *mut i32).add(first), L.min(batch - first));
                }
            }
        },
    );
}

by_acc!(lu_solve(LuSolvePlan) => lu_solve_impl, a.dtype);

fn trsm_impl<A: Real>(p: &TrsmPlan) {
    let (n, k) = (p.t.rows, p.b.cols);
    if p.b.batch == 0 || n == 0 || k == 0 {
        return;
    }
    let (tlen, blen) = (n * n, n * k);
    // SAFETY: validated contiguous buffers; `t` is only read, each task writes its own `b` matrix.
    let ts = unsafe { std::slice::from_raw_parts(p.t.ptr as *const A, p.t.batch * tlen) };
    let bs = unsafe { std::slice::from_raw_parts_mut(p.b.ptr as *mut A, p.b.batch * blen) };
    let f =
        pick!(trsm_matrix_avx2, trsm_matrix, A, unsafe fn(&[A], &mut [A], usize, usize, (bool, bool, bool), &mut [A]));
    let flags = (p.lower, p.trans, p.unit);
    let (bm, tm) = (Shared::new(bs.as_ptr()), Shared::new(ts.as_ptr()));
    let count = (bs.len() / blen).min(ts.len() / tlen);
    pool::for_each_init(
        count,
        (8192 / (tlen + blen)).max(1),
        || vec![A::ZERO; n],
        // SAFETY: task i writes only right-hand side i (n×k) and reads matrix i (n×n); `col` is n.
        |col, i| unsafe { f(tm.part(i, tlen), bm.part(i, blen), n, k, flags, col) },
    );
}

by_acc!(trsm(TrsmPlan) => trsm_impl, b.dtype);

/// AᵀA of one row-major m×n matrix into the row-major n×n `c`, as a sum of row outer products
/// (each update is a contiguous axpy); exactly symmetric (the upper triangle is mirrored).
#[inline(always)]
unsafe fn syrk_matrix<A: Real>(a: &[A], c: &mut [A], m: usize, n: usize) {
    c.iter_mut().for_each(|v| *v = A::ZERO);
    for r in 0..m {
        let row = &a[r * n..(r + 1) * n];
        for i in 0..n {
            let f = row[i];
            let ci = &mut c[i * n..(i + 1) * n];
            ci[i..].iter_mut().zip(&row[i..]).for_each(|(x, y)| *x += f * *y);
        }
    }
    for i in 0..n {
        for j in 0..i {
            c[i * n + j] = c[j * n + i];
        }
    }
}

isa_copies!(syrk_matrix_avx2 = syrk_matrix(a: &[A], c: &mut [A], m: usize, n: usize));

fn batched_impl<A: Real>(p: &BatchedPlan) {
    let (b, m, n) = (p.a.batch, p.a.rows, p.a.cols);
    let len = m * n;
    if b == 0 {
        return;
    }
    // SAFETY: validated contiguous buffers: `a` (read) holds b matrices, `out` the sizes checked by
    // the plan; each task writes its own part of `out`.
    let a: &[A] = if len == 0 { &[] } else { unsafe { std::slice::from_raw_parts(p.a.ptr as *const A, b * len) } };
    match p.kind {
        BatchedKind::Syrk => {
            if n == 0 {
                return;
            }
            let out = unsafe { std::slice::from_raw_parts_mut(p.out as *mut A, b * n * n) };
            let f = pick!(syrk_matrix_avx2, syrk_matrix, A, unsafe fn(&[A], &mut [A], usize, usize));
            let om = Shared::new(out.as_ptr());
            pool::for_each_init(
                b,
                (8192 / (len + n * n)).max(1),
                || (),
                |_, i| {
                    // SAFETY: matrix i of `a` is m×n; task i writes only the n×n output i.
                    unsafe { f(if len == 0 { &[] } else { &a[i * len..(i + 1) * len] }, om.part(i, n * n), m, n) }
                },
            );
        }
        BatchedKind::Frobenius | BatchedKind::Trace => {
            let out = unsafe { std::slice::from_raw_parts_mut(p.out as *mut A, b) };
            let trace = p.kind == BatchedKind::Trace;
            let om = Shared::new(out.as_ptr());
            pool::for_each_init(
                b,
                (8192 / len.max(1)).max(1),
                || (),
                |_, i| {
                    let mat = if len == 0 { &[][..] } else { &a[i * len..(i + 1) * len] };
                    // SAFETY: task i writes only output i.
                    let o = unsafe { &mut *om.at(i) };
                    *o = if trace {
                        A::from_f64((0..n).map(|d| mat[d * n + d].to_f64()).sum::<f64>())
                    } else {
                        dot(mat, mat).sqrt()
                    };
                },
            );
        }
    }
}

by_acc!(batched(BatchedPlan) => batched_impl, a.dtype);

/// `(tau, beta, scale)` of the Householder reflector that maps `(alpha, x)` (`ss` = ‖x‖²) onto
/// `(beta, 0)`: LAPACK's dlarfg, `beta = -sign(alpha) ‖(alpha, x)‖` (sign(0) = +1), `v = x·scale`
/// below its implicit leading 1. NaN in the column gives a NaN reflector, so it reaches Q and R.
#[inline(always)]
pub(crate) fn reflector<A: Real>(alpha: A, ss: A) -> (A, A, A) {
    if ss > A::ZERO {
        let r = (alpha * alpha + ss).sqrt();
        let beta = if alpha >= A::ZERO { A::ZERO - r } else { r };
        ((beta - alpha) / beta, beta, A::ONE / (alpha - beta))
    } else if ss != ss || alpha != alpha {
        let nan = A::from_f64(f64::NAN);
        (nan, nan, A::ZERO)
    } else {
        (A::ZERO, alpha, A::ZERO)
    }
}

/// `x[k.., j0..] = (I - tau v vᵀ) x[k.., j0..]` on a row-major matrix of `cols` columns (`rows`
/// rows), `v_k = 1` and `v[i]` below; `w` is scratch of `cols - j0` elements. Row operations only
/// (contiguous, vectorizable): `w = vᵀ X`, then `X -= v (tau w)ᵀ`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn reflect_rows<A: Real>(x: &mut [A], cols: usize, rows: usize, j0: usize, v: &[A], k: usize, tau: A, w: &mut [A]) {
    if tau == A::ZERO || j0 >= cols {
        return;
    }
    let w = &mut w[..cols - j0];
    w.copy_from_slice(&x[k * cols + j0..(k + 1) * cols]);
    for i in k + 1..rows {
        axpy(w, A::ZERO - v[i], &x[i * cols + j0..(i + 1) * cols]);
    }
    w.iter_mut().for_each(|e| *e = *e * tau);
    axpy(&mut x[k * cols + j0..(k + 1) * cols], A::ONE, w);
    for i in k + 1..rows {
        axpy(&mut x[i * cols + j0..(i + 1) * cols], v[i], w);
    }
}

/// Householder QR of one row-major m×n matrix (`a`, overwritten by R on and above the diagonal and
/// the reflectors below); `q` (m×kq row-major, kq = 0 for none) gets Q; `r` (kr×n) gets R.
///
/// # Safety
/// The slices have the stated sizes; `tau` holds min(m, n), `v` m and `w` max(n, kq) elements.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn qr_matrix<A: Real>(
    a: &mut [A],
    m: usize,
    n: usize,
    q: &mut [A],
    kq: usize,
    r: &mut [A],
    kr: usize,
    tau: &mut [A],
    v: &mut [A],
    w: &mut [A],
) {
    let kmax = m.min(n);
    for k in 0..kmax {
        let mut ss = A::ZERO;
        for i in k + 1..m {
            let x = a[i * n + k];
            ss += x * x;
        }
        let (t, beta, scale) = reflector(a[k * n + k], ss);
        if ss > A::ZERO {
            for i in k + 1..m {
                a[i * n + k] = a[i * n + k] * scale;
            }
        }
        tau[k] = t;
        for i in k + 1..m {
            v[i] = a[i * n + k];
        }
        reflect_rows(a, n, m, k + 1, v, k, t, w);
        a[k * n + k] = beta;
    }
    for i in 0..kr {
        for j in 0..n {
            r[i * n + j] = if j >= i { a[i * n + j] } else { A::ZERO };
        }
    }
    if kq == 0 {
        return;
    }
    for i in 0..m {
        for j in 0..kq {
            q[i * kq + j] = if i == j { A::ONE } else { A::ZERO };
        }
    }
    for k in (0..kmax).rev() {
        for i in k + 1..m {
            v[i] = a[i * n + k];
        }
        reflect_rows(q, kq, m, k, v, k, tau[k], w);
    }
}

isa_copies!(qr_matrix_avx2 = qr_matrix(a: &mut [A], m: usize, n: usize, q: &mut [A], kq: usize, r: &mut [A], kr: usize, tau: &mut [A], v: &mut [A], w: &mut [A]));

/// `x[k.., j0..j1] = (I - tau v vᵀ) x[k.., j0..j1]` on W interleaved row-major matrices of `cols`
/// columns (`rows` rows), per lane: [`reflect_rows`] across the lanes (a lane with tau = 0 is left
/// as it is, up to adding zeros).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn reflect_lanes<A: Real, const L: usize>(
    x: &mut [[A; L]],
    cols: usize,
    rows: usize,
    j0: usize,
    v: &[[A; L]],
    k: usize,
    tau: [A; L],
    w: &mut [[A; L]],
    j1: usize,
) {
    if j0 >= j1 {
        return;
    }
    let w = &mut w[..j1 - j0];
    w.copy_from_slice(&x[k * cols + j0..k * cols + j1]);
    for i in k + 1..rows {
        let vi = v[i];
        for (wj, xj) in w.iter_mut().zip(&x[i * cols + j0..i * cols + j1]) {
            for l in 0..L {
                wj[l] = vi[l].mul_add(xj[l], wj[l]);
            }
        }
    }
    for wj in w.iter_mut() {
        for l in 0..L {
            wj[l] = wj[l] * tau[l];
        }
    }
    for (xj, wj) in x[k * cols + j0..k * cols + j1].iter_mut().zip(w.iter()) {
        for l in 0..L {
            xj[l] = xj[l] - wj[l];
        }
    }
    for i in k + 1..rows {
        let vi = v[i];
        for (xj, wj) in x[i * cols + j0..i * cols + j1].iter_mut().zip(w.iter()) {
            for l in 0..L {
                xj[l] = (-vi[l]).mul_add(wj[l], xj[l]);
            }
        }
    }
}

/// One Householder reflector of the lane QR: H = I − τ u uᵀ, u = e_k + Σ_{i>k} v[i] e_i.
#[derive(Clone, Copy)]
struct Refl<'a, A, const L: usize> {
    v: &'a [[A; L]],
    k: usize,
    tau: [A; L],
}

impl<A: Real, const L: usize> Refl<'_, A, L> {
    /// u[i] (0 above row k, 1 at k).
    #[inline(always)]
    fn u(&self, i: usize) -> [A; L] {
        if i > self.k {
            self.v[i]
        } else {
            [if i == self.k { A::ONE } else { A::ZERO }; L]
        }
    }
}

/// `x ← H_b H_a x` (H_a first) on rows min(k_a, k_b).. and columns `j0..cols` of the row-major
/// lane matrix `x` (`rows` × `cols`): with y = uᵀX, w_a = τ_a y_a and w_b = τ_b (y_b − (u_bᵀu_a) w_a),
/// X −= u_a w_aᵀ + u_b w_bᵀ. Both reflectors share each pass over X (two FMAs per load, and per
/// store), C columns at a time with their sums in registers.
#[inline(always)]
fn reflect2_lanes<A: Real, const L: usize>(
    x: &mut [[A; L]],
    dims: (usize, usize, usize),
    a: Refl<'_, A, L>,
    b: Refl<'_, A, L>,
) {
    // Eight registers of column sums per block: two columns of 16-lane vectors, four of 8.
    if L >= 16 {
        reflect2_cols::<A, L, 2>(x, dims, a, b)
    } else {
        reflect2_cols::<A, L, 4>(x, dims, a, b)
    }
}

/// [`reflect2_lanes`] with C columns per block.
#[inline(always)]
fn reflect2_cols<A: Real, const L: usize, const C: usize>(
    x: &mut [[A; L]],
    (cols, rows, j0): (usize, usize, usize),
    a: Refl<'_, A, L>,
    b: Refl<'_, A, L>,
) {
    let (k0, k1) = (a.k.min(b.k), a.k.max(b.k));
    let mut cab = [A::ZERO; L];
    for i in k0..rows {
        let (ua, ub) = (a.u(i), b.u(i));
        for l in 0..L {
            cab[l] = ua[l].mul_add(ub[l], cab[l]);
        }
    }
    let mut j = j0;
    while j < cols {
        if j + C > cols {
            // The last columns, one at a time.
            reflect2_block::<A, L, 1>(x, cols, rows, j, (k0, k1), a, b, cab);
            j += 1;
        } else {
            reflect2_block::<A, L, C>(x, cols, rows, j, (k0, k1), a, b, cab);
            j += C;
        }
    }
}

/// Columns j..j+C of [`reflect2_lanes`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn reflect2_block<A: Real, const L: usize, const C: usize>(
    x: &mut [[A; L]],
    cols: usize,
    rows: usize,
    j: usize,
    (k0, k1): (usize, usize),
    a: Refl<'_, A, L>,
    b: Refl<'_, A, L>,
    cab: [A; L],
) {
    let (mut ya, mut yb) = ([[A::ZERO; L]; C], [[A::ZERO; L]; C]);
    for i in k0..rows {
        let (ua, ub) = if i > k1 { (a.v[i], b.v[i]) } else { (a.u(i), b.u(i)) };
        let xi = &x[i * cols + j..i * cols + j + C];
        for c in 0..C {
            for l in 0..L {
                ya[c][l] = ua[l].mul_add(xi[c][l], ya[c][l]);
                yb[c][l] = ub[l].mul_add(xi[c][l], yb[c][l]);
            }
        }
    }
    for c in 0..C {
        for l in 0..L {
            ya[c][l] = ya[c][l] * a.tau[l];
            yb[c][l] = (yb[c][l] - cab[l] * ya[c][l]) * b.tau[l];
        }
    }
    for i in k0..rows {
        let (ua, ub) = if i > k1 { (a.v[i], b.v[i]) } else { (a.u(i), b.u(i)) };
        let xi = &mut x[i * cols + j..i * cols + j + C];
        for c in 0..C {
            for l in 0..L {
                xi[c][l] = (-ua[l]).mul_add(ya[c][l], xi[c][l]);
                xi[c][l] = (-ub[l]).mul_add(yb[c][l], xi[c][l]);
            }
        }
    }
}

/// Column k's reflector in the lane QR: v (rows k+1..m) into `v` and column k below the
/// diagonal, β on the diagonal; returns τ.
#[inline(always)]
fn make_reflector<A: Real, const L: usize>(a: &mut [[A; L]], m: usize, n: usize, k: usize, v: &mut [[A; L]]) -> [A; L] {
    let mut ss = [A::ZERO; L];
    for i in k + 1..m {
        let x = a[i * n + k];
        for l in 0..L {
            ss[l] = x[l].mul_add(x[l], ss[l]);
        }
    }
    let (mut t, mut beta, mut scale) = ([A::ZERO; L], [A::ZERO; L], [A::ZERO; L]);
    for l in 0..L {
        (t[l], beta[l], scale[l]) = reflector(a[k * n + k][l], ss[l]);
    }
    for i in k + 1..m {
        for l in 0..L {
            // A lane with ss = 0 gets scale 0: its tau is 0 too, so v is never used.
            v[i][l] = a[i * n + k][l] * scale[l];
        }
        a[i * n + k] = v[i];
    }
    a[k * n + k] = beta;
    t
}

/// [`qr_matrix`] on W interleaved matrices (`a[i*n + j][lane]`), every operation across the
/// lanes, so the loops vectorize even for tiny matrices. `q` (m×kq, kq = 0 for none) and `r`
/// (kr×n) are interleaved too. Reflectors go two at a time ([`reflect2_lanes`]): column k+1 takes
/// H_k alone, makes its reflector, and the columns right of it take both in one pass; Q is
/// formed the same way, backwards.
///
/// # Safety
/// The slices have the stated sizes; `v` holds 2m and `w` max(n, kq) lane vectors.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn qr_lanes<A: Real, const L: usize>(
    a: &mut [[A; L]],
    m: usize,
    n: usize,
    q: &mut [[A; L]],
    kq: usize,
    r: &mut [[A; L]],
    kr: usize,
    tau: &mut [[A; L]],
    v: &mut [[A; L]],
    w: &mut [[A; L]],
) {
    let kmax = m.min(n);
    let (va, vb) = v.split_at_mut(m);
    let mut k = 0;
    while k < kmax {
        tau[k] = make_reflector(a, m, n, k, va);
        if k + 1 < kmax {
            // H_k on column k+1 alone, then its reflector, then both on the rest.
            reflect_lanes::<A, L>(a, n, m, k + 1, va, k, tau[k], w, k + 2);
            tau[k + 1] = make_reflector(a, m, n, k + 1, vb);
            let (ha, hb) = (Refl { v: &*va, k, tau: tau[k] }, Refl { v: &*vb, k: k + 1, tau: tau[k + 1] });
            reflect2_lanes(a, (n, m, k + 2), ha, hb);
            k += 2;
        } else {
            reflect_lanes::<A, L>(a, n, m, k + 1, va, k, tau[k], w, n);
            k += 1;
        }
    }
    for i in 0..kr {
        for j in 0..n {
            r[i * n + j] = if j >= i { a[i * n + j] } else { [A::ZERO; L] };
        }
    }
    if kq == 0 {
        return;
    }
    for i in 0..m {
        for j in 0..kq {
            q[i * kq + j] = [if i == j { A::ONE } else { A::ZERO }; L];
        }
    }
    // Q = H_0 ⋯ H_{kmax−1} I, applied from the last: pairs (H_{k−1} H_k), H_k first. Column
    // k − 1 of Q is still e_{k−1} then, which H_k leaves exactly as it is.
    let mut k = kmax;
    while k > 0 {
        if k >= 2 {
            let (ka, kb) = (k - 1, k - 2);
            for i in ka + 1..m {
                va[i] = a[i * n + ka];
            }
            for i in kb + 1..m {
                vb[i] = a[i * n + kb];
            }
            let (ha, hb) = (Refl { v: &*va, k: ka, tau: tau[ka] }, Refl { v: &*vb, k: kb, tau: tau[kb] });
            reflect2_lanes(q, (kq, m, kb), ha, hb);
            k -= 2;
        } else {
            for i in 1..m {
                va[i] = a[i * n];
            }
            reflect_lanes::<A, L>(q, kq, m, 0, va, 0, tau[0], w, kq);
            k -= 1;
        }
    }
}

/// The lane QR's arguments: A, m, n, Q, kq, R, kr, tau, v, w (see [`qr_lanes`]).
type QrLanesFn<A, const L: usize> = unsafe fn(
    &mut [[A; L]],
    usize,
    usize,
    &mut [[A; L]],
    usize,
    &mut [[A; L]],
    usize,
    &mut [[A; L]],
    &mut [[A; L]],
    &mut [[A; L]],
);

isa_copies!(qr_lanes_avx2<const L> = qr_lanes(a: &mut [[A; L]], m: usize, n: usize, q: &mut [[A; L]], kq: usize, r: &mut [[A; L]], kr: usize, tau: &mut [[A; L]], v: &mut [[A; L]], w: &mut [[A; L]]));

/// Largest m·n the lane-interleaved QR takes (measured on the 2-core EPYC: lanes win up to 128²,
/// 100×128² 20 ms against 25 ms one matrix per task, though 8 of them with Q overflow L2).
const QR_LANES_MAX: usize = 128 * 128;

/// [`qr_impl`] on groups of `L` matrices ([`qr_lanes`]), straight from A into Q and R.
fn qr_lanes_impl<A: Real, const L: usize>(p: &QrPlan) {
    let (m, n, kq, kr) = (p.a.rows, p.a.cols, p.kq, p.kr);
    let (src, qp, rp) = (p.a.ptr, p.q, p.r);
    let f = pick!(qr_lanes_avx2, qr_lanes, <A, L>, QrLanesFn<A, L>);
    let batch = p.a.batch;
    let z = [A::ZERO; L];
    // Missing lanes of the last group: the identity-like [I; 0] (it factors cleanly).
    let pad: Vec<A> = (0..m * n).map(|e| if e / n == e % n { A::ONE } else { A::ZERO }).collect();
    super::for_each_row(
        batch.div_ceil(L),
        (2 * m * n + m * kq) * L,
        || {
            let scratch = (vec![z; m.min(n)], vec![z; 2 * m], vec![z; n.max(kq)]);
            (vec![z; m * n], vec![z; m * kq], vec![z; kr * n], scratch, vec![A::ZERO; (kr * n).max(m * kq)])
        },
        |(a, q, r, (tau, v, w), spill), g| {
            // SAFETY: the plan validated contiguous (batch, m, n) A, (batch, m, kq) Q and
            // (batch, kr, n) R of this dtype; group g reads its matrices of A and writes only
            // its matrices of Q and R.
            unsafe {
                lanes::pack(&lanes::sources(src as *const A, g, batch, m * n, pad.as_ptr()), a);
                f(a, m, n, q, kq, r, kr, tau, v, w);
                lanes::unpack(r, &lanes::sinks(rp as *mut A, g, batch, kr * n, spill.as_mut_ptr()));
                if kq > 0 {
                    lanes::unpack(q, &lanes::sinks(qp as *mut A, g, batch, m * kq, spill.as_mut_ptr()));
                }
            }
        },
    );
}

fn qr_impl<A: Real>(p: &QrPlan) {
    let (m, n, kq, kr) = (p.a.rows, p.a.cols, p.kq, p.kr);
    let (src, qp, rp) = (p.a.ptr, p.q, p.r);
    if m * n <= QR_LANES_MAX && p.a.batch >= W {
        // 16 matrices per group up to 16×16, 8 beyond (measured 7-18% faster for 32² to 128×64).
        if m * n <= 256 {
            qr_lanes_impl::<A, 16>(p);
        } else {
            qr_lanes_impl::<A, 8>(p);
        }
        return;
    }
    let f = pick!(
        qr_matrix_avx2,
        qr_matrix,
        A,
        unsafe fn(&mut [A], usize, usize, &mut [A], usize, &mut [A], usize, &mut [A], &mut [A], &mut [A])
    );
    pool::for_each_init(
        p.a.batch,
        (4096 / (m * n).max(1)).max(1),
        || (vec![A::ZERO; m * n], vec![A::ZERO; m.min(n)], vec![A::ZERO; m], vec![A::ZERO; n.max(kq)]),
        |(a, tau, v, w), b| {
            // SAFETY: the plan validated contiguous (batch, m, n) A, (batch, m, kq) Q and
            // (batch, kr, n) R of this dtype; task b reads matrix b of A and writes only matrix b
            // of Q and R.
            unsafe {
                a.copy_from_slice(std::slice::from_raw_parts((src as *const A).add(b * m * n), m * n));
                let q = std::slice::from_raw_parts_mut((qp as *mut A).add(b * m * kq), m * kq);
                let r = std::slice::from_raw_parts_mut((rp as *mut A).add(b * kr * n), kr * n);
                f(a, m, n, q, kq, r, kr, tau, v, w);
            }
        },
    );
}

by_acc!(qr(QrPlan) => qr_impl, a.dtype);

/// Rotates columns `x`, `y` by (c, s): x ← c x − s y, y ← s x + c y, in Rutishauser's form
/// x ← x − s (y + τ x), y ← y + s (x − τ y) with τ = s/(1 + c): the rounding error scales with
/// the (small, near convergence) angle instead of with the columns, so thousands of rotations
/// keep V orthogonal to a few ulps.
#[inline(always)]
fn rotate<A: Real>(x: &mut [A], y: &mut [A], tau: A, s: A) {
    for (x, y) in x.iter_mut().zip(y.iter_mut()) {
        let (a, b) = (*x, *y);
        *x = a - s * (b + tau * a);
        *y = b + s * (a - tau * b);
    }
}

/// The machine epsilon of `A` (float32 or float64).
#[inline(always)]
pub(crate) fn eps_of<A: Real>() -> f64 {
    if std::mem::size_of::<A>() == 4 {
        f32::EPSILON as f64
    } else {
        f64::EPSILON
    }
}

/// `(t, s, τ)` of the Jacobi rotation for `(α, β, γ)` (γ ≠ 0; semantics in `kernels/linalg.cu`):
/// zeta = (β − α)/(2γ), t = sign(zeta)/(|zeta| + sqrt(1 + zeta²)), c = 1/sqrt(1 + t²), s = c t,
/// τ = s/(1 + c).
#[inline(always)]
fn jacobi_angle<A: Real>(al: A, be: A, ga: A) -> (A, A, A) {
    let eps = eps_of::<A>();
    let one = A::ONE;
    let zeta = (be - al) / (A::from_f64(2.0) * ga);
    let az = zeta.abs();
    let t = if az > A::from_f64(1.0 / eps) { A::from_f64(0.5) / az } else { one / (az + (one + zeta * zeta).sqrt()) };
    let t = if zeta < A::ZERO { A::ZERO - t } else { t };
    let c = one / (one + t * t).sqrt();
    let s = c * t;
    (t, s, s / (one + c))
}

/// Two distinct columns of a column-major matrix with `ld` rows, mutably.
#[inline(always)]
fn two_cols<A>(a: &mut [A], ld: usize, p: usize, q: usize) -> (&mut [A], &mut [A]) {
    debug_assert!(p < q);
    let (lo, hi) = a.split_at_mut(q * ld);
    (&mut lo[p * ld..(p + 1) * ld], &mut hi[..ld])
}

/// One-sided Jacobi on the column-major m×n `a` (semantics in `kernels/linalg.cu`, here with the
/// cyclic-by-rows order): rotates column pairs until no pair is rotated in a sweep; `v`
/// (column-major n×n, or empty) accumulates the rotations. Returns whether it converged.
///
/// # Safety
/// `a` holds m*n and `v` n*n (or 0) elements.
#[inline(always)]
unsafe fn jacobi_matrix<A: Real>(a: &mut [A], m: usize, n: usize, v: &mut [A], max_sweeps: usize) -> bool {
    let eps = eps_of::<A>();
    let tol = A::from_f64((m as f64).sqrt() * eps);
    for _ in 0..max_sweeps {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (x, y) = two_cols(a, m, p, q);
                let (mut al, mut be, mut ga) = (A::ZERO, A::ZERO, A::ZERO);
                for (x, y) in x.iter().zip(y.iter()) {
                    al += *x * *x;
                    be += *y * *y;
                    ga += *x * *y;
                }
                if !(ga.abs() > tol * al.sqrt() * be.sqrt()) {
                    continue;
                }
                rotated = true;
                let (_, s, tau) = jacobi_angle(al, be, ga);
                rotate(x, y, tau, s);
                if !v.is_empty() {
                    let (vp, vq) = two_cols(v, n, p, q);
                    rotate(vp, vq, tau, s);
                }
            }
        }
        if !rotated {
            return true;
        }
    }
    n <= 1
}

isa_copies!(jacobi_matrix_avx2 = jacobi_matrix(a: &mut [A], m: usize, n: usize, v: &mut [A], max_sweeps: usize) -> bool);

/// `x` goes before `y`: descending (NaN first) or ascending (NaN last).
#[inline(always)]
fn before<A: Real>(x: A, y: A, desc: bool) -> bool {
    let (nx, ny) = (x != x, y != y);
    if nx != ny {
        return if desc { nx } else { ny };
    }
    if desc {
        x > y
    } else {
        x < y
    }
}

/// The index of the first entry of largest magnitude (NaN counts as largest): the largest
/// magnitude first, in 8 lanes (vectorizes), then the first entry that has it. Inlined, so that
/// it is compiled into its callers' AVX2 copies.
#[inline(always)]
fn argmax_abs<A: Real>(x: &[A]) -> usize {
    let mut big = [A::ZERO; 8];
    let mut nan = false;
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let c: [A; 8] = c.try_into().unwrap();
        for t in 0..8 {
            let m = c[t].abs();
            nan |= m != m;
            big[t] = if m > big[t] { m } else { big[t] };
        }
    }
    let mut top = A::ZERO;
    for m in big.into_iter().chain(tail.iter().map(|v| v.abs())) {
        nan |= m != m;
        top = if m > top { m } else { top };
    }
    if nan {
        return x.iter().position(|v| *v != *v).unwrap_or(0);
    }
    x.iter().position(|v| v.abs() == top).unwrap_or(0)
}

/// Loads matrix `b` of the plan's A into `a`, column-major with leading dimension `ld` ≥ m (eigh:
/// its lower triangle, mirrored; rows m..ld left as they are). Returns whether it holds a NaN or
/// Inf (in the part read).
///
/// # Safety
/// `p.a` is a validated contiguous (batch, m, n) tensor of this dtype and `b` < batch.
#[inline(always)]
unsafe fn load_matrix<A: Real>(p: &SvdPlan, b: usize, a: &mut [A], ld: usize) -> bool {
    let (m, n) = (p.a.rows, p.a.cols);
    let am = std::slice::from_raw_parts((p.a.ptr as *const A).add(b * m * n), m * n);
    let mut bad = false;
    if p.eigh {
        // Row j of the lower triangle is column j's upper part (A symmetric), contiguous; then
        // mirrored within `a`.
        for j in 0..n {
            let row = &am[j * n..j * n + j + 1];
            bad |= non_finite(row);
            a[j * ld..j * ld + j + 1].copy_from_slice(row);
        }
        for j in 0..n {
            for i in j + 1..n {
                a[j * ld + i] = a[i * ld + j];
            }
        }
    } else {
        bad = non_finite(am);
        for i in 0..m {
            for j in 0..n {
                a[j * ld + i] = am[i * n + j];
            }
        }
    }
    bad
}

/// The power of two nearest `amax` (a matrix's largest |entry|), clamped so that it and its
/// reciprocal are finite normal numbers of `A` (the type the matrix is scaled in); 1 for zero or
/// non-finite `amax`. Scaling by it is exact and brings the entries near 1, so that sums of
/// squares neither overflow nor underflow (a matrix of subnormals, or of huge entries, keeps its
/// accuracy).
pub(crate) fn pow2_near<A: Real>(amax: f64) -> f64 {
    if !(amax > 0.0 && amax.is_finite()) {
        return 1.0;
    }
    let lim = if std::mem::size_of::<A>() == 4 { 126 } else { 1022 };
    (2f64).powi((amax.log2().round() as i32).clamp(-lim, lim))
}

/// The largest |entry| of `x`, in f64 (NaN entries are passed over).
pub(crate) fn abs_max<X: Real>(x: &[X]) -> f64 {
    x.iter().fold(0.0f64, |m, v| m.max(v.abs().to_f64()))
}

/// Divides `x` in place by `pow2_near::<A>` of its largest |entry| (exact) and returns that power
/// of two, by which the values computed from the scaled matrix are multiplied back.
pub(crate) fn scale_to_unit<A: Real>(x: &mut [A]) -> f64 {
    let up = pow2_near::<A>(abs_max(x));
    if up != 1.0 {
        let down = A::from_f64(1.0 / up);
        for v in x.iter_mut() {
            *v = *v * down;
        }
    }
    up
}

/// Whether `x` holds a NaN or ±Inf: x − x is NaN exactly for those, summed in 8 lanes over
/// whole blocks of 8 (vectorizes; indexing the lanes by t % 8 compiled to a scalar loop through
/// the stack), the tail apart.
#[inline(always)]
fn non_finite<A: Real>(x: &[A]) -> bool {
    let mut acc = [A::ZERO; 8];
    let blocks = x.chunks_exact(8);
    let tail = blocks.remainder();
    for b in blocks {
        let b: [A; 8] = b.try_into().unwrap();
        for t in 0..8 {
            acc[t] += b[t] - b[t];
        }
    }
    for (a, x) in acc.iter_mut().zip(tail) {
        *a += *x - *x;
    }
    acc.iter().any(|s| *s != A::ZERO)
}

/// Writes matrix `b`'s results: `vals` (σ or λ, unsorted) sorted (σ descending, λ ascending, NaN
/// first/last) with the columns of `v` (n columns, column-major with leading dimension `vld`, or
/// empty) and, for the SVD, of `a`
/// (the rotated m×n column-major A, U = its columns over σ) in the same order, each vector's sign
/// fixed; `info` gets 1 unless `ok`, plus 2 when some σ is zero. A `bad` matrix gets NaN everywhere.
/// `vals` and `a` may be of the matrix scaled by 1/`up` (see [`pow2_near`]): the values written
/// are multiplied back by `up`. `order` (n) and `scale` (2n) are scratch.
///
/// # Safety
/// The plan's outputs are validated contiguous tensors of this dtype and `b` < batch.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn emit<A: Real>(
    p: &SvdPlan,
    b: usize,
    a: &[A],
    v: &mut [A],
    vld: usize,
    vals: &mut [A],
    order: &mut [usize],
    scale: &mut [A],
    ok: bool,
    bad: bool,
    up: f64,
) {
    let (m, n) = (p.a.rows, p.a.cols);
    let nan = A::from_f64(f64::NAN);
    if bad {
        v.fill(nan);
        vals.fill(nan);
    }
    let zero = !p.eigh && vals.iter().any(|s| *s <= A::ZERO);
    *(p.info as *mut i32).add(b) = if ok || bad { 0 } else { 1 } | if zero { 2 } else { 0 };
    for (j, o) in order.iter_mut().enumerate() {
        *o = j;
    }
    let desc = !p.eigh;
    order.sort_by(|&x, &y| {
        if before(vals[x], vals[y], desc) {
            std::cmp::Ordering::Less
        } else if before(vals[y], vals[x], desc) {
            std::cmp::Ordering::Greater
        } else {
            x.cmp(&y)
        }
    });
    // Per output column rk: its σ/λ, and the factor its vector is scaled by (the sign, over σ
    // for U); then the outputs row by row, so that their writes are contiguous.
    let s_out = (p.s as *mut A).add(b * n);
    let (uf, vf) = scale.split_at_mut(n);
    for (rk, &j) in order.iter().enumerate() {
        let sj = vals[j];
        *s_out.add(rk) = A::from_f64(sj.to_f64() * up); // exact for up = 1
        let has_u = !p.eigh && !(sj <= A::ZERO); // NaN included: its column comes out NaN
        let col = if p.eigh { &a[..0] } else { &a[j * m..(j + 1) * m] };
        let vcol = if v.is_empty() { &v[..0] } else { &v[j * vld..j * vld + n] };
        let signed_by = if has_u { col } else { vcol };
        let sign =
            if !signed_by.is_empty() && signed_by[argmax_abs(signed_by)] < A::ZERO { A::ZERO - A::ONE } else { A::ONE };
        uf[rk] = if has_u { sign / sj } else { A::ZERO };
        vf[rk] = sign;
    }
    if p.u != 0 {
        let u_out = std::slice::from_raw_parts_mut((p.u as *mut A).add(b * m * n), m * n);
        scatter_columns(u_out, m, n, a, m, order, uf);
    }
    if !v.is_empty() {
        let v_out = std::slice::from_raw_parts_mut((p.v as *mut A).add(b * n * n), n * n);
        scatter_columns(v_out, n, n, v, vld, order, vf);
    }
}

/// `out` (row-major, `rows` × `cols`) ← column rk = f[rk] · (rows 0..rows of column order[rk] of
/// the column-major `src`, leading dimension `ld`), zero where f[rk] is zero (whatever the
/// source holds). By 8×8 tiles: each tile's eight source columns are read contiguously and its
/// rows written contiguously (element by element, the strided reads and the permutation cost
/// about 2.5 ns an element).
#[inline(always)]
fn scatter_columns<A: Real>(out: &mut [A], rows: usize, cols: usize, src: &[A], ld: usize, order: &[usize], f: &[A]) {
    let at = |i: usize, rk: usize| {
        let fk = f[rk];
        if fk == A::ZERO {
            A::ZERO
        } else {
            fk * src[order[rk] * ld + i]
        }
    };
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    for i0 in (0..r8).step_by(8) {
        for k0 in (0..c8).step_by(8) {
            let mut t = [[A::ZERO; 8]; 8];
            for (c, tc) in t.iter_mut().enumerate() {
                let fk = f[k0 + c];
                let s: [A; 8] = src[order[k0 + c] * ld + i0..][..8].try_into().unwrap();
                let keep = fk != A::ZERO;
                for i in 0..8 {
                    tc[i] = if keep { fk * s[i] } else { A::ZERO };
                }
            }
            for i in 0..8 {
                let row: [A; 8] = std::array::from_fn(|c| t[c][i]);
                out[(i0 + i) * cols + k0..][..8].copy_from_slice(&row);
            }
        }
        for i in i0..i0 + 8 {
            for rk in c8..cols {
                out[i * cols + rk] = at(i, rk);
            }
        }
    }
    for i in r8..rows {
        for rk in 0..cols {
            out[i * cols + rk] = at(i, rk);
        }
    }
}

/// How many matrices one eigh task reduces and then iterates on together (their QL sweeps run
/// side by side).
const EIGH_GROUP: usize = super::symeig::RL;

/// Scratch of one [`svd_gram_impl`] task: per matrix of its group, A in f64 (row-major with rows
/// padded to `nl` = n rounded up to 8, and column-major with columns padded to `ml`), and the
/// products built from it.
struct GramScratch<A> {
    jobs: Vec<EigScratch<f64>>,
    rows: Vec<Vec<f64>>,
    cols: Vec<Vec<f64>>,
    b: Vec<f64>,
    r: Vec<f64>,
    h: Vec<f64>,
    t: Vec<f64>,
    idx: Vec<usize>,
    ua: Vec<A>,
    vv: Vec<A>,
    vals: Vec<A>,
    order: Vec<usize>,
    scale: Vec<A>,
    bad: [bool; EIGH_GROUP],
    /// Per matrix: the power of two its entries were divided by (see [`pow2_near`]).
    up: [f64; EIGH_GROUP],
    lanes: LaneBuf<f64>,
}

/// G = AᵀA into `g` (column-major, leading dimension `nl`, both triangles) from the row-major
/// m×nl `rows` (pad columns zero): column j = Σ_r A[r, j] · row r, from the block of 8 rows that
/// holds the diagonal down (the rows above are the mirror of entries already computed).
#[inline(always)]
unsafe fn gram<A: Real>(rows: &[A], m: usize, n: usize, nl: usize, g: &mut [A]) {
    // Four columns at a time (j, j+1, j+2, j+3 share their block of 8 rows, r0).
    let mut j = 0;
    while j + 4 <= n {
        let r0 = j / 8 * 8;
        gemv_cols4(&mut g[j * nl + r0..], nl, nl - r0, rows, nl, r0, 0..m, |r| {
            let x = &rows[r * nl + j..];
            [x[0], x[1], x[2], x[3]]
        });
        j += 4;
    }
    for j in j..n {
        let r0 = j / 8 * 8;
        gemv_cols(&mut g[j * nl + r0..(j + 1) * nl], rows, nl, r0, 0..m, |r| rows[r * nl + j]);
    }
    for j in 0..n {
        for i in 0..j / 8 * 8 {
            g[j * nl + i] = g[i * nl + j];
        }
    }
}

/// `h[j]` ← (column j of the column-major `m`, leading dimension `ld`) · `x`, for j < h.len();
/// x.len() a multiple of 8. Four columns at a time, sharing the loads of x, in eight-row blocks
/// whose sums stay in registers: throughput-bound where one dot product after another would
/// wait on each one's summation.
#[inline(always)]
fn dots_cols<A: Real>(h: &mut [A], m: &[A], ld: usize, x: &[A]) {
    let rows = x.len();
    let mut j = 0;
    while j < h.len() {
        let w = (h.len() - j).min(4);
        let mut acc = [[A::ZERO; 8]; 4];
        for r in (0..rows).step_by(8) {
            let xr: [A; 8] = x[r..r + 8].try_into().unwrap();
            for (q, acc) in acc.iter_mut().enumerate() {
                // A column past the end repeats column j (its sum is not used).
                let c = j + if q < w { q } else { 0 };
                let y: [A; 8] = m[c * ld + r..][..8].try_into().unwrap();
                for t in 0..8 {
                    acc[t] = y[t].mul_add(xr[t], acc[t]);
                }
            }
        }
        for q in 0..w {
            let a = &acc[q];
            h[j + q] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        }
        j += w;
    }
}

/// B = A V (column-major, leading dimension `ml`) from the column-major `cols` (A, same layout) and
/// V's columns in `z` (leading dimension `ld`) taken in the order `idx` (by descending
/// eigenvalue of AᵀA); then B's columns normalized in place, `r[i]` getting column i's norm (0:
/// the column is left zero).
///
/// Where V diagonalizes G = AᵀA to a backward error of ε‖G‖ (float64, ε ≈ 1e-16), columns i and
/// j of B are orthogonal to within about ε σ₁² / (σ_i σ_j). Columns with σ ≥ 1e-3 σ₁ are
/// therefore orthogonal to ~1e-10 as they are. A column below that is orthogonalized against
/// every column before it by classical Gram–Schmidt: all its projections at once (its dot
/// products with those columns, then one combination of them subtracted), once more if it lost
/// more than half its norm to them ("twice is enough"). `h` and `t`: scratch of n and ml.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn times_v_orth<A: Real>(
    cols: &[A],
    z: &[A],
    ld: usize,
    idx: &[usize],
    n: usize,
    ml: usize,
    b: &mut [A],
    r: &mut [A],
    h: &mut [A],
    t: &mut [A],
) {
    let mut i = 0;
    while i + 4 <= n {
        let v: [&[A]; 4] = std::array::from_fn(|q| &z[idx[i + q] * ld..]);
        gemv_cols4(&mut b[i * ml..], ml, ml, cols, ml, 0, 0..n, |c| [v[0][c], v[1][c], v[2][c], v[3][c]]);
        i += 4;
    }
    for (i, &src) in idx.iter().enumerate().skip(i) {
        let v = &z[src * ld..];
        gemv_cols(&mut b[i * ml..(i + 1) * ml], cols, ml, 0, 0..n, |c| v[c]);
    }
    let mut first = A::ZERO;
    for i in 0..n {
        let (done, rest) = b.split_at_mut(i * ml);
        let col = &mut rest[..ml];
        let mut before = dot(col, col);
        if i == 0 {
            first = before;
        }
        // σ_i < 1e-3 σ₁ (before and first are squares).
        let passes = if before < A::from_f64(1e-6) * first { 2 } else { 0 };
        for pass in 0..passes {
            dots_cols(&mut h[..i], done, ml, col);
            gemv_cols(t, done, ml, 0, 0..i, |j| h[j]);
            for (x, y) in col.iter_mut().zip(t.iter()) {
                *x = *x - *y;
            }
            let after = dot(col, col);
            if pass == 1 || after > A::from_f64(0.25) * before {
                before = after;
                break;
            }
            before = after;
        }
        let norm = before.sqrt();
        r[i] = norm;
        let inv = if norm > A::ZERO { A::ONE / norm } else { A::ZERO };
        for x in col.iter_mut() {
            *x = *x * inv;
        }
    }
}

/// The SVD of float32 data on the CPU, through the symmetric eigensolver, in float64 throughout:
/// G = AᵀA = V Λ Vᵀ ([`sym_eig_best`], V's columns by descending λ), then B = A V, σ_i = ‖b_i‖
/// and u_i = b_i / σ_i, the columns with σ_i < 1e-3 σ₁ first orthogonalized against those before
/// them ([`times_v_orth`]). Squaring A costs accuracy only below float64's √ε ≈ 1.5e-8 of ‖A‖,
/// far below float32's resolution. A = B Vᵀ holds whatever V's accuracy; the orthogonalization
/// keeps U orthonormal where close small σ leave V's columns mixed (B = Q R, and R's
/// off-diagonal, the part dropped, is of the order of those σ's differences). About 3× fewer
/// flops than Jacobi sweeps, in vectorized column loops.
fn svd_gram_impl<A: Real>(p: &SvdPlan) {
    let (m, n) = (p.a.rows, p.a.cols);
    let (nl, ml) = (n.div_ceil(8) * 8, m.div_ceil(8) * 8);
    let group = pick!(svd_gram_group_avx2, svd_gram_group, A, unsafe fn(&SvdPlan, &mut GramScratch<A>, usize));
    pool::for_each_init(
        p.a.batch.div_ceil(EIGH_GROUP),
        1,
        || GramScratch::<A> {
            jobs: (0..EIGH_GROUP).map(|_| EigScratch::new(n)).collect(),
            rows: (0..EIGH_GROUP).map(|_| vec![0.0; m * nl]).collect(),
            cols: (0..EIGH_GROUP).map(|_| vec![0.0; n * ml]).collect(),
            b: vec![0.0; n * ml],
            r: vec![0.0; n],
            h: vec![0.0; n],
            t: vec![0.0; ml],
            idx: vec![0; n],
            ua: vec![A::ZERO; m * n],
            vv: vec![A::ZERO; n * n],
            vals: vec![A::ZERO; n],
            order: vec![0; n],
            scale: vec![A::ZERO; 2 * n],
            bad: [false; EIGH_GROUP],
            up: [1.0; EIGH_GROUP],
            lanes: LaneBuf::new(n),
        },
        // SAFETY: the plan validated contiguous (batch, m, n) A, (batch, n) S, (batch, m, n) U and
        // (batch, n, n) V (each optional but S) and (batch,) int32 info of this dtype; task t
        // reads and writes only matrices t·EIGH_GROUP.. of its group. The scratch has the sizes
        // svd_gram_group takes.
        |g, t| unsafe { group(p, g, t) },
    );
}

/// Task t of [`svd_gram_impl`]: matrices t·EIGH_GROUP.. (up to EIGH_GROUP of them), loaded into
/// float64, their Gram matrices decomposed together, then each one's U, S and V written.
///
/// # Safety
/// As for [`svd_gram_impl`]'s tasks (a validated plan, `t` within the batch's groups, scratch
/// made for this plan's m and n).
#[inline(always)]
unsafe fn svd_gram_group<A: Real>(p: &SvdPlan, g: &mut GramScratch<A>, t: usize) {
    let (m, n) = (p.a.rows, p.a.cols);
    let (nl, ml) = (n.div_ceil(8) * 8, m.div_ceil(8) * 8);
    let iters = p.max_sweeps.saturating_mul(n);
    let first = t * EIGH_GROUP;
    let count = EIGH_GROUP.min(p.a.batch - first);
    for k in 0..count {
        let am = std::slice::from_raw_parts((p.a.ptr as *const A).add((first + k) * m * n), m * n);
        let (rows, cols, job) = (&mut g.rows[k], &mut g.cols[k], &mut g.jobs[k]);
        g.bad[k] = non_finite(am);
        g.up[k] = pow2_near::<f64>(abs_max(am));
        // A bad matrix is decomposed as zero (its outputs become NaN; the eigensolver takes
        // finite entries only).
        let down = 1.0 / g.up[k];
        for r in 0..m {
            for c in 0..n {
                rows[r * nl + c] = if g.bad[k] { 0.0 } else { am[r * n + c].to_f64() * down };
            }
        }
        for c in 0..n {
            for r in 0..m {
                cols[c * ml + r] = rows[r * nl + c];
            }
        }
        gram::<f64>(rows, m, n, nl, &mut job.a);
    }
    sym_eig_best(&mut g.jobs[..count], &mut g.lanes, n, iters, true, twisted_vectors());
    for k in 0..count {
        let job = &g.jobs[k];
        for (i, o) in g.idx.iter_mut().enumerate() {
            *o = i;
        }
        g.idx.sort_by(|&x, &y| {
            job.vals[y].partial_cmp(&job.vals[x]).unwrap_or(std::cmp::Ordering::Equal).then(x.cmp(&y))
        });
        times_v_orth::<f64>(&g.cols[k], &job.z, job.ld, &g.idx, n, ml, &mut g.b, &mut g.r, &mut g.h, &mut g.t);
        for i in 0..n {
            let ri = g.r[i];
            g.vals[i] = A::from_f64(ri);
            for r in 0..m {
                g.ua[i * m + r] = A::from_f64(ri * g.b[i * ml + r]);
            }
            let v = &job.z[g.idx[i] * job.ld..];
            for r in 0..n {
                g.vv[i * n + r] = A::from_f64(v[r]);
            }
        }
        let vv = &mut g.vv[..if p.v != 0 { n * n } else { 0 }];
        emit(p, first + k, &g.ua, vv, n, &mut g.vals, &mut g.order, &mut g.scale, job.converged(), g.bad[k], g.up[k]);
    }
}

isa_copies!(svd_gram_group_avx2 = svd_gram_group(p: &SvdPlan, g: &mut GramScratch<A>, t: usize));

/// Whether the eigensolver may take T's eigenvectors from twisted factorizations (see
/// `symeig::sym_eig_many`) where the output is float32 (eigh of float32 data, and the float32
/// SVD's Gram matrices): yes unless METALCORE_EIGH_TWISTED=0 (read once; for comparisons).
fn twisted_vectors() -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F.get_or_init(|| std::env::var("METALCORE_EIGH_TWISTED").map_or(true, |v| v != "0"))
}

/// Scratch of one eigh task ([`eigh_group`]).
struct EighScratch<A> {
    jobs: Vec<EigScratch<A>>,
    order: Vec<usize>,
    scale: Vec<A>,
    bad: [bool; EIGH_GROUP],
    lanes: LaneBuf<A>,
}

/// Task t of the CPU eigh: matrices t·EIGH_GROUP.. (up to EIGH_GROUP of them) decomposed
/// together by the tridiagonal QL (at most max_sweeps·n iterations each), then written.
///
/// # Safety
/// As for the eigh tasks of [`svd_impl`] (a validated plan, `t` within the batch's groups,
/// scratch made for this plan's n).
#[inline(always)]
unsafe fn eigh_group<A: Real>(p: &SvdPlan, g: &mut EighScratch<A>, t: usize) {
    let n = p.a.cols;
    let iters = p.max_sweeps.saturating_mul(n);
    let first = t * EIGH_GROUP;
    let count = EIGH_GROUP.min(p.a.batch - first);
    let EighScratch { jobs, order, scale, bad, lanes } = g;
    for (k, job) in jobs[..count].iter_mut().enumerate() {
        bad[k] = load_matrix(p, first + k, &mut job.a, job.ld);
        if bad[k] {
            job.a.fill(A::ZERO);
        }
    }
    let vectors = p.v != 0;
    // Twisted vectors are accurate to about 1e-12: for float32 outputs only.
    let twisted = twisted_vectors() && std::mem::size_of::<A>() == 4;
    sym_eig_best(&mut jobs[..count], lanes, n, iters, vectors, twisted);
    for (k, job) in jobs[..count].iter_mut().enumerate() {
        let ok = job.converged();
        let z: &mut [A] = if vectors { &mut job.z } else { &mut [] };
        emit(p, first + k, &[], z, job.ld, &mut job.vals, order, scale, ok, bad[k], 1.0);
    }
}

isa_copies!(eigh_group_avx2 = eigh_group(p: &SvdPlan, g: &mut EighScratch<A>, t: usize));

fn svd_impl<A: Real>(p: &SvdPlan) {
    let (m, n) = (p.a.rows, p.a.cols);
    if p.eigh {
        let group = pick!(eigh_group_avx2, eigh_group, A, unsafe fn(&SvdPlan, &mut EighScratch<A>, usize));
        pool::for_each_init(
            p.a.batch.div_ceil(EIGH_GROUP),
            1,
            || EighScratch::<A> {
                jobs: (0..EIGH_GROUP).map(|_| EigScratch::new(n)).collect(),
                order: vec![0; n],
                scale: vec![A::ZERO; 2 * n],
                bad: [false; EIGH_GROUP],
                lanes: LaneBuf::new(n),
            },
            // SAFETY: the plan validated contiguous (batch, n, n) A, (batch, n) S, (batch, n, n) V
            // and (batch,) int32 info of this dtype; task t reads and writes only the matrices of
            // its group. The scratch has the sizes eigh_group takes.
            |g, t| unsafe { group(p, g, t) },
        );
        return;
    }
    if std::mem::size_of::<A>() == 4 {
        return svd_gram_impl::<A>(p);
    }
    let want_v = p.v != 0;
    let f = pick!(jacobi_matrix_avx2, jacobi_matrix, A, unsafe fn(&mut [A], usize, usize, &mut [A], usize) -> bool);
    pool::for_each_init(
        p.a.batch,
        (2048 / (m * n * n).max(1)).max(1),
        || {
            (
                vec![A::ZERO; m * n],
                vec![A::ZERO; if want_v { n * n } else { 0 }],
                vec![A::ZERO; n],
                vec![0usize; n],
                vec![A::ZERO; 2 * n],
            )
        },
        |(a, v, vals, order, scale), b| {
            // SAFETY: the plan validated contiguous (batch, m, n) A, (batch, n) S, (batch, m, n) U,
            // (batch, n, n) V (each optional but S) and (batch,) int32 info of this dtype; task b
            // reads matrix b and writes only matrix b of each output.
            unsafe {
                let bad = load_matrix(p, b, a, m);
                let up = if bad { 1.0 } else { scale_to_unit(a) };
                for (e, x) in v.iter_mut().enumerate() {
                    *x = if e / n == e % n { A::ONE } else { A::ZERO };
                }
                let ok = bad || f(a, m, n, v, p.max_sweeps);
                if !bad {
                    for j in 0..n {
                        let col = &a[j * m..(j + 1) * m];
                        vals[j] = dot(col, col).sqrt();
                    }
                }
                emit(p, b, a, v, n, vals, order, scale, ok, bad, up);
            }
        },
    );
}

by_acc!(svd(SvdPlan) => svd_impl, a.dtype);
