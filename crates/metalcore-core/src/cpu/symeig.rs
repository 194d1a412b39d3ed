//! The CPU's symmetric eigensolver (`eigh`): Householder reduction to tridiagonal form, the
//! reflectors' product formed explicitly, then the implicit QL iteration with Wilkinson's shift,
//! whose plane rotations are applied to that product (Bowdler, Martin, Reinsch and Wilkinson's
//! tred2/tql2 scheme). About 4n³ flops per matrix against roughly 20n³ for a cyclic Jacobi run.
//! A group of eight matrices is reduced side by side, one per SIMD lane ([`reduce_lanes`]); their
//! QL iterations run side by side too, a sweep of each at a time, in two vectors of four
//! ([`ql_many`]); each one's rotations are logged and applied to its eigenvectors at the end
//! ([`EigScratch::apply_log`]).
//!
//! Where the output is float32 and n > 32, the eigenvectors come instead from T's eigenvectors by
//! float64 twisted vectors (`twisted::tri_vectors`) and the reflectors applied to them
//! ([`twisted_group`]): 1.2–1.5× faster for n = 48–128, with a per-matrix fallback to the above.
//!
//! The matrix is first scaled by a power of two (exact) so that its largest entry is about 1: the
//! rotations' `sqrt(f² + g²)` can then neither overflow nor underflow harmfully. The tridiagonal
//! recurrences run in f64 (they are O(n²)); the O(n³) work stays in the data's precision.

use super::linalg::{eps_of, reflector};
use super::twisted::{tri_vectors, Tri, TwScratch};
use super::{dot, Real};

/// `y ← y + a·x` over whole blocks of 8 (the slices' lengths are multiples of 8): one vector
/// operation per block, no remainder loops.
#[inline(always)]
fn axpy<A: Real>(y: &mut [A], a: A, x: &[A]) {
    for (y, x) in y.chunks_exact_mut(8).zip(x.chunks_exact(8)) {
        let (mut yy, xx): ([A; 8], [A; 8]) = (y.try_into().unwrap(), x.try_into().unwrap());
        for t in 0..8 {
            yy[t] = a.mul_add(xx[t], yy[t]);
        }
        y.copy_from_slice(&yy);
    }
}

/// `y` ← Σ_{j ∈ cols} coef(j) · (rows r0..r0+y.len() of column j of the column-major `m`),
/// y.len() a multiple of 8: by blocks of rows whose sums stay in registers across the columns
/// (an accumulator in memory would chain every column's update through a store and a load).
#[inline(always)]
pub(crate) fn gemv_cols<A: Real>(
    y: &mut [A],
    m: &[A],
    ld: usize,
    r0: usize,
    cols: std::ops::Range<usize>,
    coef: impl Fn(usize) -> A,
) {
    let rows = y.len();
    let mut b = 0;
    while b + 32 <= rows {
        gemv_rows::<A, 32>(&mut y[b..b + 32], m, ld, r0 + b, cols.clone(), &coef);
        b += 32;
    }
    while b < rows {
        gemv_rows::<A, 8>(&mut y[b..b + 8], m, ld, r0 + b, cols.clone(), &coef);
        b += 8;
    }
}

/// Four [`gemv_cols`] at once, sharing their loads of `m`: column q of `out` (at q·`ldo`, `len`
/// rows, a multiple of 8) ← Σ_{j ∈ cols} coef(j)[q] · (rows r0..r0+len of column j of `m`). Each loaded block of `m` feeds four multiply-adds instead of
/// one (one column at a time, the loads bound the product).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn gemv_cols4<A: Real>(
    out: &mut [A],
    ldo: usize,
    len: usize,
    m: &[A],
    ld: usize,
    r0: usize,
    cols: std::ops::Range<usize>,
    coef: impl Fn(usize) -> [A; 4],
) {
    for b in (0..len).step_by(8) {
        let mut acc = [[A::ZERO; 8]; 4];
        for j in cols.clone() {
            let c = coef(j);
            let x: [A; 8] = m[j * ld + r0 + b..][..8].try_into().unwrap();
            for q in 0..4 {
                for t in 0..8 {
                    acc[q][t] = c[q].mul_add(x[t], acc[q][t]);
                }
            }
        }
        for (q, a) in acc.iter().enumerate() {
            out[q * ldo + b..][..8].copy_from_slice(a);
        }
    }
}

/// One block of R rows of [`gemv_cols`].
#[inline(always)]
fn gemv_rows<A: Real, const R: usize>(
    y: &mut [A],
    m: &[A],
    ld: usize,
    row: usize,
    cols: std::ops::Range<usize>,
    coef: &impl Fn(usize) -> A,
) {
    let mut acc = [A::ZERO; R];
    for j in cols {
        let c = coef(j);
        let x: [A; R] = m[j * ld + row..][..R].try_into().unwrap();
        for t in 0..R {
            acc[t] = c.mul_add(x[t], acc[t]);
        }
    }
    y.copy_from_slice(&acc);
}

/// `x ← x − (v·wj + w·vj)` over whole blocks of 8, like [`axpy`].
#[inline(always)]
fn rank2<A: Real>(x: &mut [A], v: &[A], w: &[A], vj: A, wj: A) {
    for ((x, v), w) in x.chunks_exact_mut(8).zip(v.chunks_exact(8)).zip(w.chunks_exact(8)) {
        let (mut xx, vv, ww): ([A; 8], [A; 8], [A; 8]) =
            (x.try_into().unwrap(), v.try_into().unwrap(), w.try_into().unwrap());
        for t in 0..8 {
            xx[t] = (-vv[t]).mul_add(wj, (-ww[t]).mul_add(vj, xx[t]));
        }
        x.copy_from_slice(&xx);
    }
}

/// `m` (column-major, leading dimension `ld`, n columns) ← the identity.
#[inline(always)]
fn set_identity<A: Real>(m: &mut [A], n: usize, ld: usize) {
    m.fill(A::ZERO);
    for i in 0..n {
        m[i * ld + i] = A::ONE;
    }
}

/// Rows k0..k0+R of [`EigScratch::apply_log`] for one sweep: `seq` holds its rotations in the
/// order made, at column pairs hi, hi−1, …, lo (`n`: the leading dimension).
#[inline(always)]
fn rotate_rows<A: Real, const R: usize>(z: &mut [A], seq: &[(A, A)], n: usize, k0: usize, lo: usize, hi: usize) {
    let mut x: [A; R] = z[(hi + 1) * n + k0..][..R].try_into().unwrap();
    for (i, &(c, s)) in (lo..=hi).rev().zip(seq) {
        let y: [A; R] = z[i * n + k0..][..R].try_into().unwrap();
        let mut out = [A::ZERO; R];
        for t in 0..R {
            out[t] = s.mul_add(y[t], c * x[t]);
            x[t] = c.mul_add(y[t], -(s * x[t]));
        }
        z[(i + 1) * n + k0..][..R].copy_from_slice(&out);
    }
    z[lo * n + k0..][..R].copy_from_slice(&x);
}

/// One matrix's QL iteration: its deflation tolerance, the sweeps it has left, and whether it
/// ran out of them.
#[derive(Default)]
struct Ql {
    tol: f64,
    /// ‖T‖ (its largest row sum).
    norm: f64,
    iters_left: usize,
    failed: bool,
}

/// One matrix's working set for [`sym_eig_many`]: the caller puts the symmetric n×n matrix
/// (both triangles) in `a`, column-major with leading dimension [`EigScratch::ld`] (rows n..ld
/// zero); afterwards `vals` holds its eigenvalues (unsorted), the columns of `z` (same layout)
/// the eigenvectors, and [`EigScratch::converged`] says whether the iteration limit sufficed.
pub(crate) struct EigScratch<A> {
    pub(crate) a: Vec<A>,
    pub(crate) z: Vec<A>,
    pub(crate) vals: Vec<A>,
    /// n rounded up to 8: every column operation runs over whole 8-element blocks.
    pub(crate) ld: usize,
    v: Vec<A>,
    w: Vec<A>,
    tau: Vec<A>,
    /// Every rotation (c, s) of the QL iteration in the order made, and per sweep the column
    /// pairs lo..=hi it rotated (hi first): applied to `z` once the iteration is over, while `z`
    /// stays in L1 ([`Self::apply_log`]).
    log: Vec<(A, A)>,
    sweeps: Vec<(usize, usize)>,
    d: Vec<f64>,
    e: Vec<f64>,
    /// T's d and e as the reduction left them (the twisted eigenvectors' input).
    t0: Vec<f64>,
    /// The power of two the matrix was divided by.
    up: f64,
    ql: Ql,
}

impl<A: Real> EigScratch<A> {
    pub(crate) fn new(n: usize) -> Self {
        let ld = n.div_ceil(8) * 8;
        EigScratch {
            a: vec![A::ZERO; ld * n],
            z: vec![A::ZERO; ld * n],
            vals: vec![A::ZERO; n],
            ld,
            v: vec![A::ZERO; ld],
            w: vec![A::ZERO; ld],
            tau: vec![A::ZERO; n],
            log: Vec::new(),
            sweeps: Vec::new(),
            d: vec![0.0; n],
            e: vec![0.0; n],
            t0: vec![0.0; 2 * n],
            up: 1.0,
            ql: Ql::default(),
        }
    }

    pub(crate) fn converged(&self) -> bool {
        !self.ql.failed
    }

    /// Scales `a` by a power of two (exact) so that its largest entry is about 1: the rotations'
    /// sqrt(f² + g²) can then neither overflow nor underflow harmfully. (The zero matrix stays
    /// as it is.)
    #[inline(always)]
    fn scale(&mut self) {
        self.up = super::linalg::scale_to_unit(&mut self.a);
    }

    /// Reduces `a` to tridiagonal form T = Qᵀ A Q with Q = H₀ H₁ ⋯ H_{n−3}, H_k = I − τ_k v_k v_kᵀ
    /// acting on rows k+1.. . Leaves T's diagonal in `d`, its subdiagonal in `e` (e[n−1] = 0),
    /// each v_k below the subdiagonal of column k of `a` (its leading 1 implicit), τ_k in `tau`.
    ///
    /// Step k updates the trailing block A₂₂ (rows and columns k+1..n) as H A₂₂ H = A₂₂ − v wᵀ −
    /// w vᵀ with p = τ A₂₂ v and w = p − (τ pᵀv / 2) v, by columns (contiguous), both triangles
    /// kept. The column loops start at row r0 = k+1 rounded down to a multiple of 8 and run to
    /// `ld`: v and w are zero outside rows k+1..n, so the extra rows are left as they were, and no
    /// loop has a scalar remainder.
    #[inline(always)]
    fn tridiagonalize(&mut self, n: usize) {
        let ld = self.ld;
        let EigScratch { a, v, w, tau, d, e, .. } = self;
        v.fill(A::ZERO);
        for k in 0..n.saturating_sub(2) {
            let r0 = (k + 1) / 8 * 8;
            let col = &a[k * ld + k + 1..k * ld + n];
            let (t, beta, scale) = reflector(col[0], dot(&col[1..], &col[1..]));
            tau[k] = t;
            e[k] = beta.to_f64();
            d[k] = a[k * ld + k].to_f64();
            v[r0..=k].fill(A::ZERO);
            v[k + 1] = A::ONE;
            for i in k + 2..n {
                v[i] = a[k * ld + i] * scale;
            }
            a[k * ld + k + 2..k * ld + n].copy_from_slice(&v[k + 2..n]);
            if t == A::ZERO {
                continue;
            }
            let (v, w) = (&v[r0..ld], &mut w[r0..ld]);
            gemv_cols(w, a, ld, r0, k + 1..n, |j| t * v[j - r0]);
            // Rows above k+1 took in entries outside A₂₂.
            w[..k + 1 - r0].fill(A::ZERO);
            let half = A::from_f64(0.5) * t * dot(w, v);
            for (w, v) in w.iter_mut().zip(v.iter()) {
                *w = *w - half * *v;
            }
            for j in k + 1..n {
                rank2(&mut a[j * ld + r0..(j + 1) * ld], v, w, v[j - r0], w[j - r0]);
            }
        }
        if n >= 2 {
            d[n - 2] = a[(n - 2) * ld + n - 2].to_f64();
            e[n - 2] = a[(n - 2) * ld + n - 1].to_f64();
        }
        d[n - 1] = a[(n - 1) * ld + n - 1].to_f64();
        e[n - 1] = 0.0;
    }

    /// `z` ← Q from the reflectors left in `a`. Built as Qᵀ = H_{n−3} ⋯ H₀ (backwards, so each
    /// H_k meets only the trailing block B it changes, and by columns: B ← B − τ (B v) vᵀ needs
    /// no reductions; rows from r0 as in [`Self::tridiagonalize`]), then transposed in place.
    #[inline(always)]
    fn form_q(&mut self, n: usize) {
        let ld = self.ld;
        let EigScratch { a, z: m, v, w, tau, .. } = self;
        set_identity(m, n, ld);
        v.fill(A::ZERO);
        for k in (0..n.saturating_sub(2)).rev() {
            let t = tau[k];
            if t == A::ZERO {
                continue;
            }
            let r0 = (k + 1) / 8 * 8;
            v[r0..=k].fill(A::ZERO);
            v[k + 1] = A::ONE;
            v[k + 2..n].copy_from_slice(&a[k * ld + k + 2..k * ld + n]);
            let (v, bv) = (&v[r0..ld], &mut w[r0..ld]);
            // Columns k+1.. of Qᵀ so far are the identity's above row k+2: Bv's rows above
            // k+1 come out zero.
            gemv_cols(bv, m, ld, r0, k + 1..n, |j| v[j - r0]);
            for j in k + 1..n {
                axpy(&mut m[j * ld + r0..(j + 1) * ld], A::ZERO - t * v[j - r0], bv);
            }
        }
        for i in 0..n {
            for j in i + 1..n {
                m.swap(i * ld + j, j * ld + i);
            }
        }
    }

    /// The QL iteration's tolerance and limit, once `d` and `e` hold the tridiagonal matrix.
    #[inline(always)]
    fn prepare_ql(&mut self, n: usize, max_iters: usize) {
        let (d, e) = (&self.d, &self.e);
        let norm = (0..n).fold(0.0f64, |m, i| {
            let below = if i > 0 { e[i - 1].abs() } else { 0.0 };
            m.max(d[i].abs() + e[i].abs() + below)
        });
        // An off-diagonal below ε‖T‖ counts as zero: it moves no eigenvalue by more than that.
        self.ql = Ql { iters_left: max_iters, tol: eps_of::<A>() * norm, norm, ..Ql::default() };
    }

    /// Applies the logged sweeps to `z`, in order: a sweep's rotation at column pair i makes
    /// column i ← c z_i − s z_{i+1}, column i+1 ← s z_i + c z_{i+1}. By blocks of rows, the running
    /// column of each block kept in registers: one load and one store per rotation and row, and
    /// four AVX2 registers of rows at once (32 float32, 16 float64) so that four vector chains
    /// are in flight (more rows spilled the float64 block to the stack).
    #[inline(always)]
    fn apply_log(&mut self) {
        let (z, ld) = (&mut self.z[..], self.ld);
        let wide = std::mem::size_of::<A>() == 4;
        let mut at = 0;
        for &(lo, hi) in &self.sweeps {
            let seq = &self.log[at..at + hi + 1 - lo];
            at += seq.len();
            let mut k0 = 0;
            while wide && k0 + 32 <= ld {
                rotate_rows::<A, 32>(z, seq, ld, k0, lo, hi);
                k0 += 32;
            }
            while !wide && k0 + 16 <= ld {
                rotate_rows::<A, 16>(z, seq, ld, k0, lo, hi);
                k0 += 16;
            }
            while k0 < ld {
                rotate_rows::<A, 8>(z, seq, ld, k0, lo, hi);
                k0 += 8;
            }
        }
        self.log.clear();
        self.sweeps.clear();
    }
}

/// Matrices reduced side by side by [`reduce_lanes`], one per lane.
pub(crate) const RL: usize = 8;

/// The lane-interleaved working set of [`reduce_lanes`] for order n (element e of matrix t at
/// `[e][t]`).
pub(crate) struct LaneBuf<A> {
    a: Vec<[A; RL]>,
    m: Vec<[A; RL]>,
    v: Vec<[A; RL]>,
    /// Four reflectors' v, n each (forming Q).
    vb: Vec<[A; RL]>,
    p: Vec<[A; RL]>,
    tau: Vec<[A; RL]>,
    d: Vec<[A; RL]>,
    e: Vec<[A; RL]>,
    zero: Vec<A>,
    spill: Vec<A>,
    tw: TwScratch,
}

impl<A: Real> LaneBuf<A> {
    pub(crate) fn new(n: usize) -> Self {
        let lanes = |len| vec![[A::ZERO; RL]; len];
        LaneBuf {
            a: lanes(n * n),
            m: lanes(n * n),
            v: lanes(n),
            vb: lanes(4 * n),
            p: lanes(n),
            tau: lanes(n),
            d: lanes(n),
            e: lanes(n),
            zero: vec![A::ZERO; n],
            spill: vec![A::ZERO; n],
            tw: TwScratch::new(n),
        }
    }
}

/// `x ← x − (vi ⊙ wj + wi ⊙ vj)` on one lane vector. Float64 lane vectors are two AVX2
/// registers: written out here, because the compiler vectorized the surrounding row loop instead
/// (four rows per register, each lane gathered).
#[inline(always)]
fn rank2_lanes<A: Real>(x: &mut [A; RL], vi: &[A; RL], wi: &[A; RL], vj: &[A; RL], wj: &[A; RL]) {
    #[cfg(target_arch = "x86_64")]
    if std::mem::size_of::<A>() == 8 && super::has_avx2_fma() {
        use std::arch::x86_64::*;
        // SAFETY: A is f64 here (the only 8-byte Real): each array is 8 contiguous f64; the CPU
        // has AVX2 and FMA.
        unsafe {
            let f = |r: &[A; RL]| r.as_ptr() as *const f64;
            let xp = x.as_mut_ptr() as *mut f64;
            for h in [0, 4] {
                let ld = |r: &[A; RL]| _mm256_loadu_pd(f(r).add(h));
                let y = _mm256_fnmadd_pd(ld(wi), ld(vj), _mm256_loadu_pd(xp.add(h)));
                _mm256_storeu_pd(xp.add(h), _mm256_fnmadd_pd(ld(vi), ld(wj), y));
            }
        }
        return;
    }
    for t in 0..RL {
        x[t] = (-vi[t]).mul_add(wj[t], (-wi[t]).mul_add(vj[t], x[t]));
    }
}

/// `a ⊙ b + c` over a lane vector, one rounding per lane.
#[inline(always)]
fn lane_fma<A: Real>(a: [A; RL], b: [A; RL], c: [A; RL]) -> [A; RL] {
    let mut r = [A::ZERO; RL];
    for t in 0..RL {
        r[t] = a[t].mul_add(b[t], c[t]);
    }
    r
}

/// `−a` over a lane vector.
#[inline(always)]
fn lane_neg<A: Real>(a: [A; RL]) -> [A; RL] {
    std::array::from_fn(|t| -a[t])
}

/// Σ_j x_j ⊙ y_j over lane vectors (lane t: matrix t), in four interleaved partial sums: one
/// sum alone would chain every multiply-add on the previous one's latency.
#[inline(always)]
fn lane_dot<A: Real>(x: &[[A; RL]], y: &[[A; RL]]) -> [A; RL] {
    let mut acc = [[A::ZERO; RL]; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for q in 0..4 {
            for t in 0..RL {
                acc[q][t] = xs[q][t].mul_add(ys[q][t], acc[q][t]);
            }
        }
    }
    for (x, y) in xr.iter().zip(yr) {
        for t in 0..RL {
            acc[0][t] = x[t].mul_add(y[t], acc[0][t]);
        }
    }
    std::array::from_fn(|t| (acc[0][t] + acc[1][t]) + (acc[2][t] + acc[3][t]))
}

/// Reduces the (scaled) matrices of `jobs` (at most [`RL`]) to tridiagonal form T = Qᵀ A Q side
/// by side, one per lane, so that every step is vector arithmetic over eight matrices however
/// short its loops: leaves T in each job's `d`, `e` (e[n−1] = 0) and, with `vectors`, Q in its `z`.
///
/// Householder: step k maps column k below the subdiagonal onto e₁ with H_k = I − τ v vᵀ and
/// updates the trailing block as A₂₂ ← H A₂₂ H = A₂₂ − v wᵀ − w vᵀ, p = τ A₂₂ v,
/// w = p − (τ pᵀv / 2) v, on the lower triangle only (the product A₂₂ v reads each stored entry
/// once for both of its places). Q = H₀ ⋯ H_{n−3} is built as Qᵀ, backwards, row-major, so that
/// its rows unpack into the columns of `z`.
#[inline(always)]
fn reduce_lanes<A: Real>(jobs: &mut [EigScratch<A>], n: usize, lb: &mut LaneBuf<A>, vectors: bool) {
    const L: usize = RL;
    let cnt = jobs.len().min(L);
    let LaneBuf { a, m, v, vb, p, tau, d, e, zero, spill, .. } = lb;
    // Slices, not the Vecs: their pointers stay in registers (a store through one Vec's buffer
    // could alias another Vec's header, which made every access reload it, unvectorized).
    let (a, m, v, vb, p, tau, d, e) =
        (&mut a[..], &mut m[..], &mut v[..], &mut vb[..], &mut p[..], &mut tau[..], &mut d[..], &mut e[..]);
    pack_cols(jobs, |j| &j.a, n, zero, a);
    for k in 0..n.saturating_sub(2) {
        let ck = k * n;
        let mut ss = [A::ZERO; L];
        for x in &a[ck + k + 2..ck + n] {
            let x = *x;
            for t in 0..L {
                ss[t] = x[t].mul_add(x[t], ss[t]);
            }
        }
        let alpha = a[ck + k + 1];
        let refl: [(A, A, A); L] = std::array::from_fn(|t| reflector(alpha[t], ss[t]));
        tau[k] = std::array::from_fn(|t| refl[t].0);
        e[k] = std::array::from_fn(|t| refl[t].1);
        d[k] = a[ck + k];
        let scale: [A; L] = std::array::from_fn(|t| refl[t].2);
        v[k + 1] = [A::ONE; L];
        for i in k + 2..n {
            let x = a[ck + i];
            let vi: [A; L] = std::array::from_fn(|t| x[t] * scale[t]);
            v[i] = vi;
            a[ck + i] = vi;
        }
        // p = τ A₂₂ v from the lower triangle: entry (i, j), i > j, adds to p_i and to p_j.
        let tk = tau[k];
        for x in &mut p[k + 1..n] {
            *x = [A::ZERO; L];
        }
        // Four columns at a time (the last block may be narrower): p_i takes their four terms in
        // one visit, and their sums with v are four independent chains.
        let mut j = k + 1;
        while j < n {
            let w = (n - j).min(4);
            let mut sums = [[A::ZERO; L]; 4];
            // Rows j..j+w: the block's own triangle (diagonal entries counted once).
            for c in 0..w {
                let (cj, vj) = ((j + c) * n, v[j + c]);
                sums[c] = lane_fma(a[cj + j + c], vj, sums[c]);
                for i in j + c + 1..j + w {
                    p[i] = lane_fma(a[cj + i], vj, p[i]);
                    sums[c] = lane_fma(a[cj + i], v[i], sums[c]);
                }
            }
            // The rows below the block (a narrower block is the last one: none).
            if w == 4 {
                let [mut s0, mut s1, mut s2, mut s3] = sums;
                let (v0, v1, v2, v3) = (v[j], v[j + 1], v[j + 2], v[j + 3]);
                let cols = (&a[j * n..], &a[(j + 1) * n..], &a[(j + 2) * n..], &a[(j + 3) * n..]);
                for i in j + 4..n {
                    let (x0, x1, x2, x3, vi) = (cols.0[i], cols.1[i], cols.2[i], cols.3[i], v[i]);
                    p[i] = lane_fma(x3, v3, lane_fma(x2, v2, lane_fma(x1, v1, lane_fma(x0, v0, p[i]))));
                    s0 = lane_fma(x0, vi, s0);
                    s1 = lane_fma(x1, vi, s1);
                    s2 = lane_fma(x2, vi, s2);
                    s3 = lane_fma(x3, vi, s3);
                }
                sums = [s0, s1, s2, s3];
            }
            for (c, sc) in sums.into_iter().enumerate().take(w) {
                p[j + c] = std::array::from_fn(|t| p[j + c][t] + sc[t]);
            }
            j += w;
        }
        let mut pv = [A::ZERO; L];
        for i in k + 1..n {
            let (mut pi, vi) = (p[i], v[i]);
            for t in 0..L {
                pi[t] = tk[t] * pi[t];
                pv[t] = pi[t].mul_add(vi[t], pv[t]);
            }
            p[i] = pi;
        }
        let half: [A; L] = std::array::from_fn(|t| A::from_f64(0.5) * tk[t] * pv[t]);
        for i in k + 1..n {
            let (mut pi, vi) = (p[i], v[i]);
            for t in 0..L {
                pi[t] = (-half[t]).mul_add(vi[t], pi[t]);
            }
            p[i] = pi;
        }
        // A₂₂ −= v wᵀ + w vᵀ (w in p), lower triangle; two columns at a time (sharing the loads
        // of v_i and w_i).
        let mut j = k + 1;
        while j < n {
            let (vj, wj) = (v[j], p[j]);
            rank2_lanes(&mut a[j * n + j], &v[j], &p[j], &vj, &wj);
            if j + 1 == n {
                break;
            }
            let (vj1, wj1) = (v[j + 1], p[j + 1]);
            let (c0, c1) = a[j * n..].split_at_mut(n);
            for i in j + 1..n {
                let (vi, wi) = (v[i], p[i]);
                rank2_lanes(&mut c0[i], &vi, &wi, &vj, &wj);
                rank2_lanes(&mut c1[i], &vi, &wi, &vj1, &wj1);
            }
            j += 2;
        }
    }
    if n >= 2 {
        d[n - 2] = a[(n - 2) * n + n - 2];
        e[n - 2] = a[(n - 2) * n + n - 1];
    }
    d[n - 1] = a[(n - 1) * n + n - 1];
    e[n - 1] = [A::ZERO; L];
    if vectors {
        for (x, at) in m.iter_mut().zip(0..) {
            *x = if at / n == at % n { [A::ONE; L] } else { [A::ZERO; L] };
        }
        reflect_rows(m, a, tau, vb, n, false);
        unpack_z(jobs, m, n, spill);
    }
    for (t, job) in jobs.iter_mut().enumerate().take(cnt) {
        for k in 0..n {
            job.d[k] = d[k][t].to_f64();
            job.e[k] = e[k][t].to_f64();
        }
    }
}

/// Columns 0..n of a buffer of each job (`col`: its `a` or its `z`, leading dimension `ld`) into the
/// rows of the lane matrix `m` (row j, lane t: job t's column j; lanes past the group read `zero`,
/// n elements).
#[inline(always)]
fn pack_cols<A: Real>(
    jobs: &[EigScratch<A>],
    col: impl Fn(&EigScratch<A>) -> &[A],
    n: usize,
    zero: &[A],
    m: &mut [[A; RL]],
) {
    let (cnt, ld) = (jobs.len().min(RL), jobs[0].ld);
    for j in 0..n {
        let srcs: [*const A; RL] =
            std::array::from_fn(|t| if t < cnt { col(&jobs[t])[j * ld..].as_ptr() } else { zero.as_ptr() });
        // SAFETY: each source has n readable elements (column j of a job's buffer, or `zero`).
        unsafe { super::lanes::pack::<A, RL>(&srcs, &mut m[j * n..(j + 1) * n]) };
    }
}

/// The rows of the lane matrix `m` into columns 0..n of each job's `z` (the inverse of
/// [`pack_cols`]; lanes past the group write `spill`, n elements).
#[inline(always)]
fn unpack_z<A: Real>(jobs: &mut [EigScratch<A>], m: &[[A; RL]], n: usize, spill: &mut [A]) {
    let (cnt, ld) = (jobs.len().min(RL), jobs[0].ld);
    for j in 0..n {
        let dsts: [*mut A; RL] =
            std::array::from_fn(|t| if t < cnt { jobs[t].z[j * ld..].as_mut_ptr() } else { spill.as_mut_ptr() });
        // SAFETY: each destination has n writable elements (column j of a job's `z`, or the
        // spill, shared by the lanes past the group's end).
        unsafe { super::lanes::unpack::<A, RL>(&m[j * n..(j + 1) * n], &dsts) };
    }
}

/// M ← M H_{n−3} ⋯ H₀ for the reflectors H_k = I − τ_k v_k v_kᵀ that [`reduce_lanes`] left in `a`
/// (v_k below the subdiagonal of column k, its leading 1 implicit) and `tau`, on the n × n
/// row-major lane matrix `m`. From M = I (rows below k+1 still the identity's: `all_rows` false)
/// this forms Qᵀ; from M = Yᵀ (`all_rows`) it gives (Q Y)ᵀ, the back-transformation of T's
/// eigenvectors Y.
#[inline(always)]
fn reflect_rows<A: Real>(
    m: &mut [[A; RL]],
    a: &[[A; RL]],
    tau: &[[A; RL]],
    vb: &mut [[A; RL]],
    n: usize,
    all_rows: bool,
) {
    const L: usize = RL;
    // M ← M H_k for k downwards; H_k changes columns k+1.. only, and from M = I the rows below
    // k+1 are still the identity's, so (M v)_i and the update concern rows k+1.. only. Four
    // reflectors at a time, row by row: the row's products with the four v's in one pass,
    // the four coefficients from them (the second reflector sees the row the first one
    // left: its product is d₁ − α₀ (v₀·v₁), and so on), then one update pass (a pass per
    // reflector loaded and stored every row four times as often).
    let mut left = n.saturating_sub(2);
    while left > 0 {
        let b = left.min(4);
        // Reflectors left−1, left−2, … (applied in that order) in vb[c], c < b; zero below
        // their rows, and all four zero for c ≥ b.
        let lo = left - b + 1;
        let mut taus = [[A::ZERO; L]; 4];
        for c in 0..4 {
            let vc = &mut vb[c * n..(c + 1) * n];
            for x in vc[lo..n].iter_mut() {
                *x = [A::ZERO; L];
            }
            if c < b {
                let k = left - 1 - c;
                taus[c] = tau[k];
                vc[k + 1] = [A::ONE; L];
                vc[k + 2..n].copy_from_slice(&a[k * n + k + 2..(k + 1) * n]);
            }
        }
        // g[c][c2] = v_c · v_c2 (c < c2).
        let mut g = [[[A::ZERO; L]; 4]; 4];
        for c in 0..b {
            for c2 in c + 1..b {
                g[c][c2] = lane_dot(&vb[c * n + lo..(c + 1) * n], &vb[c2 * n + lo..(c2 + 1) * n]);
            }
        }
        let (v0, rest) = vb.split_at(n);
        let (v1, rest) = rest.split_at(n);
        let (v2, v3) = rest.split_at(n);
        for i in if all_rows { 0 } else { lo }..n {
            let row = &mut m[i * n + lo..(i + 1) * n];
            let (w0, w1, w2, w3) = (&v0[lo..n], &v1[lo..n], &v2[lo..n], &v3[lo..n]);
            let (mut d0, mut d1, mut d2, mut d3) = ([A::ZERO; L], [A::ZERO; L], [A::ZERO; L], [A::ZERO; L]);
            for ((((x, y0), y1), y2), y3) in row.iter().zip(w0).zip(w1).zip(w2).zip(w3) {
                d0 = lane_fma(*x, *y0, d0);
                d1 = lane_fma(*x, *y1, d1);
                d2 = lane_fma(*x, *y2, d2);
                d3 = lane_fma(*x, *y3, d3);
            }
            let dd = [d0, d1, d2, d3];
            let mut al = [[A::ZERO; L]; 4];
            for c in 0..b {
                let mut y = dd[c];
                for c0 in 0..c {
                    y = lane_fma(lane_neg(al[c0]), g[c0][c], y);
                }
                al[c] = std::array::from_fn(|t| taus[c][t] * y[t]);
            }
            let (a0, a1, a2, a3) = (lane_neg(al[0]), lane_neg(al[1]), lane_neg(al[2]), lane_neg(al[3]));
            for ((((x, y0), y1), y2), y3) in row.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *x = lane_fma(a3, *y3, lane_fma(a2, *y2, lane_fma(a1, *y1, lane_fma(a0, *y0, *x))));
            }
        }
        left -= b;
    }
}

isa_copies!(reflect_rows_avx2 = reflect_rows(m: &mut [[A; RL]], a: &[[A; RL]], tau: &[[A; RL]], vb: &mut [[A; RL]], n: usize, all_rows: bool));

/// How many matrices' QL iterations [`ql_many`] runs side by side: one f64 lane each of two
/// AVX2 vectors, whose instruction streams interleave (a rotation is a latency-bound sequence of
/// a sqrt, a divide and multiply-adds: one vector alone leaves the units idle most of the time).
pub(crate) const QL_WAYS: usize = 8;

type Lanes = [f64; QL_WAYS];

/// The tridiagonal matrices of a [`ql_many`] group, lane-interleaved (row i, lane t: matrix t's
/// d[i] or e[i]), and one sweep's rotations (row i: the rotation at pair (i, i+1)).
struct QlLanes {
    d: Vec<Lanes>,
    e: Vec<Lanes>,
    c: Vec<Lanes>,
    s: Vec<Lanes>,
    /// Scratch of [`sweep_lanes_avx2`].
    on: Vec<Lanes>,
}

/// One implicit QL sweep of every lane t with `m[t] > l[t]`, on its block l[t]..=m[t], started
/// from the bulge `g0[t]` (the shifted d[m] − shift): rotations at pairs (i, i+1), i = m[t]−1
/// down to l[t], their cosines and sines left in rows i of `q.c` and `q.s`. Returns per lane the
/// lowest i+1 its rotations reached (l[t], or where the bulge vanished and the block split; a
/// lane that ran no sweep: its l).
///
/// One rotation's arithmetic, with s = c = 1 and p = 0 before the first:
/// f = s e[i], b = c e[i], r = √(f² + g²), e[i+1] = r; then (unless r = 0) s, c = f/r, g/r
/// (through 1/r), h = d[i+1] − p, t = (d[i] − h) s + 2 c b, p = s t, d[i+1] = h + p, g = c t − b.
/// At the end d[l] −= p, e[l] = g, e[m] = 0. On a split (r = 0) d[i+1] −= p and e[m] = 0.
fn sweep_lanes(q: &mut QlLanes, l: &[usize; QL_WAYS], m: &[usize; QL_WAYS], g0: &Lanes) -> [usize; QL_WAYS] {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { sweep_lanes_avx2(q, l, m, g0) };
    }
    let mut lo = *l;
    for t in 0..QL_WAYS {
        let (mut s, mut c, mut p, mut g) = (1.0, 1.0, 0.0, g0[t]);
        let mut split = false;
        for i in (l[t]..m[t]).rev() {
            let f = s * q.e[i][t];
            let b = c * q.e[i][t];
            let r = (f * f + g * g).sqrt();
            q.e[i + 1][t] = r;
            if r == 0.0 {
                q.d[i + 1][t] -= p;
                q.e[m[t]][t] = 0.0;
                (lo[t], split) = (i + 1, true);
                break;
            }
            let inv = 1.0 / r;
            (s, c) = (f * inv, g * inv);
            let h = q.d[i + 1][t] - p;
            let u = (q.d[i][t] - h) * s + 2.0 * c * b;
            p = s * u;
            q.d[i + 1][t] = h + p;
            g = c * u - b;
            (q.c[i][t], q.s[i][t]) = (c, s);
        }
        if !split && m[t] > l[t] {
            q.d[l[t]][t] -= p;
            q.e[l[t]][t] = g;
            q.e[m[t]][t] = 0.0;
        }
    }
    lo
}

/// [`sweep_lanes`] in AVX2 vectors of four lanes, all eight lanes a step at a time from the
/// highest m down to the lowest l (a lane outside its block, or past a split, keeps its values):
/// the chains stay in registers and each step's entries are whole vectors, so a step costs about
/// its arithmetic's latency (about 90 cycles on the 2-core EPYC, against about 215 when each
/// step gathered its lanes' entries from the eight matrices and scattered its outputs back). The same arithmetic, operation for operation (no contraction into multiply-adds), so
/// both give the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sweep_lanes_avx2(
    q: &mut QlLanes,
    l: &[usize; QL_WAYS],
    m: &[usize; QL_WAYS],
    g0: &Lanes,
) -> [usize; QL_WAYS] {
    use std::arch::x86_64::*;
    let runs = |t: usize| m[t] > l[t];
    let top = (0..QL_WAYS).filter(|&t| runs(t)).map(|t| m[t]).max().unwrap_or(0);
    let bottom = (0..QL_WAYS).filter(|&t| runs(t)).map(|t| l[t]).min().unwrap_or(0);
    let mut lo = *l;
    if top <= bottom {
        return lo;
    }
    // Row i: the lanes that rotate at step i (all bits set), in memory rather than in
    // registers: the sixteen AVX2 registers hold the chains and the step's temporaries, and a
    // spilled chain value adds a store and a load to the step's latency.
    let all = f64::from_bits(u64::MAX);
    for i in bottom..top {
        q.on[i] = std::array::from_fn(|t| if l[t] <= i && i < m[t] { all } else { 0.0 });
    }
    let ld = |x: &Lanes, h: usize| _mm256_loadu_pd(x.as_ptr().add(4 * h));
    let (one, zero) = (_mm256_set1_pd(1.0), _mm256_setzero_pd());
    let (mut s, mut c, mut p) = ([one; 2], [one; 2], [zero; 2]);
    let mut g = [ld(g0, 0), ld(g0, 1)];
    let mut split_lanes = 0u32;
    for i in (bottom..top).rev() {
        let mut split = 0;
        for h in 0..2 {
            let (ev, dv, on) = (ld(&q.e[i], h), ld(&q.d[i], h), ld(&q.on[i], h));
            // Row i+1 as it was before this step (the step above wrote row i+2).
            let (e1, d1) = (ld(&q.e[i + 1], h), ld(&q.d[i + 1], h));
            let f = _mm256_mul_pd(s[h], ev);
            let b = _mm256_mul_pd(c[h], ev);
            let r = _mm256_sqrt_pd(_mm256_add_pd(_mm256_mul_pd(f, f), _mm256_mul_pd(g[h], g[h])));
            let inv = _mm256_div_pd(one, r);
            let s2 = _mm256_mul_pd(f, inv);
            let c2 = _mm256_mul_pd(g[h], inv);
            let hh = _mm256_sub_pd(d1, p[h]);
            let two_cb = _mm256_mul_pd(_mm256_add_pd(c2, c2), b);
            let u = _mm256_add_pd(_mm256_mul_pd(_mm256_sub_pd(dv, hh), s2), two_cb);
            let pn = _mm256_mul_pd(s2, u);
            let gn = _mm256_sub_pd(_mm256_mul_pd(c2, u), b);
            // A lane whose bulge vanished (r = 0) splits at i+1, where d keeps h = d[i+1] − p.
            let gone = _mm256_and_pd(on, _mm256_cmp_pd::<_CMP_EQ_OQ>(r, zero));
            let dn = _mm256_blendv_pd(_mm256_add_pd(hh, pn), hh, gone);
            let st = |x: &mut Lanes, v| _mm256_storeu_pd(x.as_mut_ptr().add(4 * h), v);
            st(&mut q.e[i + 1], _mm256_blendv_pd(e1, r, on));
            st(&mut q.d[i + 1], _mm256_blendv_pd(d1, dn, on));
            st(&mut q.c[i], c2);
            st(&mut q.s[i], s2);
            split |= (_mm256_movemask_pd(gone) as u32) << (4 * h);
            (s[h], c[h]) = (_mm256_blendv_pd(s[h], s2, on), _mm256_blendv_pd(c[h], c2, on));
            (p[h], g[h]) = (_mm256_blendv_pd(p[h], pn, on), _mm256_blendv_pd(g[h], gn, on));
        }
        if split != 0 {
            // Rare: these lanes stop rotating.
            for t in (0..QL_WAYS).filter(|t| split >> t & 1 != 0) {
                q.e[m[t]][t] = 0.0;
                lo[t] = i + 1;
                for row in &mut q.on[bottom..i] {
                    row[t] = 0.0;
                }
            }
            split_lanes |= split;
        }
    }
    let (mut ps, mut gs) = ([0f64; QL_WAYS], [0f64; QL_WAYS]);
    for h in 0..2 {
        _mm256_storeu_pd(ps.as_mut_ptr().add(4 * h), p[h]);
        _mm256_storeu_pd(gs.as_mut_ptr().add(4 * h), g[h]);
    }
    for t in (0..QL_WAYS).filter(|&t| runs(t) && split_lanes >> t & 1 == 0) {
        q.d[l[t]][t] -= ps[t];
        q.e[l[t]][t] = gs[t];
        q.e[m[t]][t] = 0.0;
    }
    lo
}

/// The QL iterations of `jobs` (at most [`QL_WAYS`]), side by side, in Bowdler et al.'s tql2
/// order: each matrix's sweeps on its block l..=m (m: the first row from l whose off-diagonal
/// counts as zero) until e[l] does, then l+1. Each call of [`sweep_lanes`] makes one sweep of
/// every matrix not yet done, each on its own block with its own shift, so every matrix takes
/// the same sweeps as alone. With `vectors`, each lane's rotations go to its log, for
/// [`EigScratch::apply_log`].
#[inline(always)]
fn ql_many<A: Real>(jobs: &mut [EigScratch<A>], n: usize, vectors: bool) {
    const L: usize = QL_WAYS;
    let k = jobs.len().min(L);
    let rows = || vec![[0f64; L]; n];
    let mut q = QlLanes { d: rows(), e: rows(), c: rows(), s: rows(), on: rows() };
    for (t, job) in jobs.iter().enumerate().take(k) {
        for i in 0..n {
            (q.d[i][t], q.e[i][t]) = (job.d[i], job.e[i]);
        }
    }
    // Lane t's next sweep is on its block l[t]..=m[t] (m[t] = l[t]: none; l[t] = n: done).
    let mut l = [n; L];
    l[..k].fill(0);
    loop {
        let mut m = l;
        let mut g0 = [0f64; L];
        for (t, job) in jobs.iter_mut().enumerate().take(k) {
            let (d, e, ql) = (&q.d, &q.e, &mut job.ql);
            while l[t] < n {
                let lt = l[t];
                let mut mt = lt;
                while mt + 1 < n && e[mt][t].abs() > ql.tol {
                    mt += 1;
                }
                if mt == lt {
                    l[t] += 1;
                    continue;
                }
                if ql.iters_left == 0 {
                    ql.failed = true;
                    l[t] = n;
                    break;
                }
                ql.iters_left -= 1;
                m[t] = mt;
                // The shift, the eigenvalue of the leading 2×2 block nearer d[l], enters as
                // g = d[m] − shift.
                let x = (d[lt + 1][t] - d[lt][t]) / (2.0 * e[lt][t]);
                let r = (x * x + 1.0).sqrt();
                g0[t] = d[mt][t] - d[lt][t] + e[lt][t] / (x + r.copysign(x));
                break;
            }
            if l[t] == n {
                m[t] = n;
            }
        }
        if (0..L).all(|t| m[t] <= l[t]) {
            break;
        }
        let lo = sweep_lanes(&mut q, &l, &m, &g0);
        for (t, job) in jobs.iter_mut().enumerate().take(k) {
            if vectors && lo[t] < m[t] {
                let rows = lo[t]..m[t];
                job.log.reserve(rows.len());
                let (at, spare) = (job.log.len(), job.log.spare_capacity_mut());
                for (slot, (c, s)) in spare.iter_mut().zip(q.c[rows.clone()].iter().zip(&q.s[rows.clone()]).rev()) {
                    slot.write((A::from_f64(c[t]), A::from_f64(s[t])));
                }
                // SAFETY: the rows.len() slots past the length were just written.
                unsafe { job.log.set_len(at + rows.len()) };
                job.sweeps.push((lo[t], m[t] - 1));
            }
        }
    }
    for (t, job) in jobs.iter_mut().enumerate().take(k) {
        for i in 0..n {
            (job.d[i], job.e[i]) = (q.d[i][t], q.e[i][t]);
        }
    }
}

/// The eigenvectors of a group of up to [`RL`] matrices that [`reduce_lanes`] reduced without Q
/// (their reflectors still in `lb`): the QL iteration for the eigenvalues only, each T's
/// eigenvectors Y by twisted vectors ([`tri_vectors`]; where it cannot vouch for them, by the QL
/// iteration with vectors from the identity), then Z = Q Y by the reflectors, eight matrices side
/// by side ([`reflect_rows`]). About 2n³ flops for Z against the 4n³/3 of forming Q plus about
/// 6n³ for the QL's rotations applied to it.
#[inline(always)]
fn twisted_group<A: Real>(chunk: &mut [EigScratch<A>], n: usize, lb: &mut LaneBuf<A>, max_iters: usize) {
    for j in chunk.iter_mut() {
        j.prepare_ql(n, max_iters);
        j.t0[..n].copy_from_slice(&j.d);
        j.t0[n..].copy_from_slice(&j.e);
    }
    for group in chunk.chunks_mut(QL_WAYS) {
        ql_many(group, n, false);
    }
    for j in chunk.iter_mut() {
        let (d0, e0) = j.t0.split_at(n);
        let ld = j.ld;
        let tri = Tri { d: d0, e: e0, vals: &j.d, n, tol: j.ql.tol, norm: j.ql.norm };
        let ok = !j.ql.failed && tri_vectors(&tri, &mut lb.tw, &mut j.z, ld);
        if !ok {
            let (d, e) = (&mut j.d, &mut j.e);
            d.copy_from_slice(&j.t0[..n]);
            e.copy_from_slice(&j.t0[n..]);
            j.prepare_ql(n, max_iters);
            ql_many(std::slice::from_mut(j), n, true);
            set_identity(&mut j.z, n, ld);
            j.apply_log();
        }
    }
    let LaneBuf { a, m, vb, tau, zero, spill, .. } = lb;
    pack_cols(chunk, |j| &j.z, n, zero, m);
    // Through a pointer, not inlined here: inlined into this long function, the same loops ran
    // about 1.5× slower (26 against 17 µs per 64² float32 matrix).
    let f = pick!(
        reflect_rows_avx2,
        reflect_rows,
        A,
        unsafe fn(&mut [[A; RL]], &[[A; RL]], &[[A; RL]], &mut [[A; RL]], usize, bool)
    );
    // SAFETY: the AVX2 copy is picked only on a CPU that has AVX2 and FMA.
    unsafe { f(m, a, tau, vb, n, true) };
    unpack_z(chunk, m, n, spill);
}

/// Eigenvalues and (with `vectors`) eigenvectors of every matrix in `jobs` (order n, finite
/// entries; see [`EigScratch`]), a group of up to eight at a time: reduced side by side
/// ([`reduce_lanes`], or one at a time when fewer), their QL iterations run side by side
/// ([`ql_many`]), then each one's rotations are applied to its vectors. Without vectors Q is not
/// formed and the rotations are dropped (the eigenvalues come out bit for bit the same). With
/// `twisted` (a group reduced side by side, n > 32), the vectors come from [`twisted_group`]
/// instead: float64 twisted vectors, accurate to about 1e-12, enough for float32 outputs but not
/// for float64 ones; the eigenvalues are the same bits. (At n ≤ 32 the twisted path was no
/// faster: 16 eigenvalues per pass, and a pass for the few corrected ones.) `lb` is scratch
/// (`LaneBuf::new(n)`).
///
/// # Safety
/// None beyond the scratch sizes (made by `EigScratch::new(n)`); `unsafe` only so that an AVX2
/// copy can be declared.
#[inline(always)]
pub(crate) unsafe fn sym_eig_many<A: Real>(
    jobs: &mut [EigScratch<A>],
    lb: &mut LaneBuf<A>,
    n: usize,
    max_iters: usize,
    vectors: bool,
    twisted: bool,
) {
    if n == 0 {
        return;
    }
    for chunk in jobs.chunks_mut(RL) {
        for j in chunk.iter_mut() {
            j.scale();
        }
        // Side by side only with (nearly) every lane used: a lane reduction costs about 0.87 of
        // a one-matrix reduction per lane (2-core machine, n = 64-256, 48 matrices: 3.63 against
        // 4.19 ms, 23.5 against 26.8, 163 against 187), whether or not the lane has a matrix.
        let tw = vectors && twisted && n > 32 && chunk.len() + 1 >= RL;
        if chunk.len() + 1 >= RL {
            reduce_lanes(chunk, n, lb, vectors && !tw);
            if tw {
                twisted_group(chunk, n, lb, max_iters);
            }
        } else {
            for j in chunk.iter_mut() {
                j.tridiagonalize(n);
                if vectors {
                    j.form_q(n);
                }
            }
        }
        if !tw {
            for j in chunk.iter_mut() {
                j.prepare_ql(n, max_iters);
            }
            for group in chunk.chunks_mut(QL_WAYS) {
                ql_many(group, n, vectors);
            }
        }
        for j in chunk.iter_mut() {
            if vectors {
                j.apply_log();
            }
            let up = j.up;
            for (v, d) in j.vals.iter_mut().zip(&j.d) {
                *v = A::from_f64(d * up);
            }
        }
    }
}

isa_copies!(sym_eig_many_avx2 = sym_eig_many(jobs: &mut [EigScratch<A>], lb: &mut LaneBuf<A>, n: usize, max_iters: usize, vectors: bool, twisted: bool));

/// [`sym_eig_many`], in its AVX2 + FMA copy where the CPU has one.
pub(crate) fn sym_eig_best<A: Real>(
    jobs: &mut [EigScratch<A>],
    lb: &mut LaneBuf<A>,
    n: usize,
    max_iters: usize,
    vectors: bool,
    twisted: bool,
) {
    let f = pick!(
        sym_eig_many_avx2,
        sym_eig_many,
        A,
        unsafe fn(&mut [EigScratch<A>], &mut LaneBuf<A>, usize, usize, bool, bool)
    );
    // SAFETY: the AVX2 copy is picked only on a CPU that has AVX2 and FMA.
    unsafe { f(jobs, lb, n, max_iters, vectors, twisted) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    fn random_sym(n: usize, seed: &mut u64) -> Vec<f64> {
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                let x = lcg(seed);
                a[i * n + j] = x;
                a[j * n + i] = x;
            }
        }
        a
    }

    fn put(j: &mut EigScratch<f64>, a: &[f64], n: usize) {
        j.a.fill(0.0);
        for c in 0..n {
            j.a[c * j.ld..c * j.ld + n].copy_from_slice(&a[c * n..(c + 1) * n]);
        }
    }

    /// max |A z_j − λ_j z_j| / ‖A‖ and max |ZᵀZ − I|.
    fn errors(orig: &[f64], n: usize, s: &EigScratch<f64>) -> (f64, f64) {
        let (vals, ld) = (&s.vals, s.ld);
        let z: Vec<f64> = (0..n * n).map(|e| s.z[e / n * ld + e % n]).collect();
        let norm = orig.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
        let (mut resid, mut orth) = (0f64, 0f64);
        for j in 0..n {
            for i in 0..n {
                let az: f64 = (0..n).map(|k| orig[k * n + i] * z[j * n + k]).sum();
                resid = resid.max((az - vals[j] * z[j * n + i]).abs() / norm);
                let g: f64 = (0..n).map(|k| z[i * n + k] * z[j * n + k]).sum();
                orth = orth.max((g - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        (resid, orth)
    }

    #[test]
    fn random_matrices_decompose_alone_and_interleaved() {
        let mut seed = 1;
        for (n, twisted) in [1, 2, 3, 7, 8, 9, 16, 17, 33, 64, 70].into_iter().flat_map(|n| [(n, false), (n, true)]) {
            // One matrix alone, then three at once (one of them zero) through the interleaved QL,
            // then eight (side by side: twisted vectors where asked).
            for group in [1, 3, 8] {
                let mut jobs: Vec<EigScratch<f64>> = (0..group).map(|_| EigScratch::new(n)).collect();
                let origs: Vec<Vec<f64>> =
                    (0..group).map(|g| if g == 1 { vec![0.0; n * n] } else { random_sym(n, &mut seed) }).collect();
                for (j, o) in jobs.iter_mut().zip(&origs) {
                    put(j, o, n);
                }
                sym_eig_best(&mut jobs, &mut LaneBuf::new(n), n, 30 * n, true, twisted);
                // (The twisted path runs for a full group past 32 rows.)
                let tol = if twisted && group == 8 && n > 32 { 1e-12 } else { 1e-13 };
                for (j, o) in jobs.iter().zip(&origs) {
                    assert!(j.converged());
                    let (resid, orth) = errors(o, n, j);
                    assert!(resid < tol && orth < tol, "n={n} {twisted}: residual {resid:e}, orthogonality {orth:e}");
                }
            }
        }
    }

    #[test]
    fn twisted_group_falls_back_per_matrix() {
        // Eight matrices side by side with twisted vectors: Wilkinson's W65+ (its largest pairs
        // agree to float64 precision in one unreduced block, so its twisted vectors fail and it
        // takes the QL with vectors), the identity and six random ones.
        let n = 65;
        let mut seed = 11;
        let mut w = vec![0f64; n * n];
        for i in 0..n {
            w[i * n + i] = (32.0 - i as f64).abs();
            if i + 1 < n {
                w[i * n + i + 1] = 1.0;
                w[(i + 1) * n + i] = 1.0;
            }
        }
        let eye: Vec<f64> = (0..n * n).map(|e| if e / n == e % n { 1.0 } else { 0.0 }).collect();
        let mut origs = vec![w, eye];
        origs.extend((0..6).map(|_| random_sym(n, &mut seed)));
        let mut jobs: Vec<EigScratch<f64>> = (0..8).map(|_| EigScratch::new(n)).collect();
        for (j, o) in jobs.iter_mut().zip(&origs) {
            put(j, o, n);
        }
        sym_eig_best(&mut jobs, &mut LaneBuf::new(n), n, 30 * n, true, true);
        for (k, (j, o)) in jobs.iter().zip(&origs).enumerate() {
            assert!(j.converged());
            let (resid, orth) = errors(o, n, j);
            assert!(resid < 1e-12 && orth < 1e-12, "matrix {k}: residual {resid:e}, orthogonality {orth:e}");
        }
    }

    #[test]
    fn iteration_cap_is_reported() {
        let n = 24;
        let mut seed = 9;
        let mut jobs = vec![EigScratch::<f64>::new(n), EigScratch::new(n)];
        let (a0, a1) = (random_sym(n, &mut seed), random_sym(n, &mut seed));
        put(&mut jobs[0], &a0, n);
        put(&mut jobs[1], &a1, n);
        sym_eig_best(&mut jobs[..1], &mut LaneBuf::new(n), n, n / 2, true, false);
        assert!(!jobs[0].converged());
        sym_eig_best(&mut jobs[1..], &mut LaneBuf::new(n), n, 30 * n, true, false);
        assert!(jobs[1].converged());
    }
}
