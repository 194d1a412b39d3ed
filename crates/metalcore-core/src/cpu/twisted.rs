//! Eigenvectors of a symmetric tridiagonal matrix from its eigenvalues, one twisted vector each
//! (the CPU eigh's eigenvector method where the output is float32; see `symeig::twisted_group`).
//!
//! For an eigenvalue λ of the unreduced block T[s..=t], the forward solution w of the rows of
//! (T − λI) z = 0 (w_s = 1, w_{i+1} = −((d_i − λ) w_i + e_{i−1} w_{i−1}) / e_i) and the backward
//! solution v (v_t = 1, v_{i−1} = −((d_i − λ) v_i + e_i v_{i+1}) / e_{i−1}) are the two halves of
//! the twisted vector: z_i = w_i / w_r above the twist r and v_i / v_r below it, so that
//! (T − λI) z = γ_r e_r, one step of inverse iteration from e_r. Since 1/|γ_i| = |(T − λI)⁻¹_ii|
//! is proportional to |w_i v_i|, r is where that is largest; each solution is then used only
//! where it grows towards r, its stable direction. (These are the twisted factorization's
//! vectors, z_i = −L_i z_{i+1} above r with L_i = e_i/D⁺_i, written as products: no divisions
//! but the 1/e_i that every λ shares. The pivot form's two divisions per row and eigenvalue took
//! about 4 cycles each on the 2-core EPYC and bounded it; these recurrences are a multiply-add
//! and a multiply per row.) The vector's error is about the eigenvalue's error over its gap, and
//! γ_r / ‖z‖² is the Rayleigh quotient's correction to λ. Everything runs in float64, sixteen
//! eigenvalues side by side (four AVX2 vectors, whose chains overlap).
//!
//! - T is split where |e_i| ≤ tol (where the QL iteration that gave the eigenvalues split it: the
//!   eigenvalues at the positions of a block are that block's), so exactly repeated eigenvalues of
//!   different blocks get orthogonal vectors for free.
//! - An eigenvalue whose correction exceeds 1e-13‖T‖ (1e-12‖T‖ for float32 output) is factored
//!   again at the corrected value (the QL deflates at float32's tolerance, so a few eigenvalues
//!   are only about that accurate).
//! - Vectors of eigenvalues closer than 1e-3‖T‖ to each other (a cluster) are orthogonalized by
//!   modified Gram–Schmidt; a vector that loses more than 99% of its norm there (eigenvalues equal
//!   to float64 precision within one block), that is not finite, or whose second correction is
//!   still above 1e-11‖T‖ (1e-10‖T‖) makes the whole matrix fail: the caller then uses the QL
//!   iteration with vectors.

use super::Real;

/// Eigenvalues handled side by side: four AVX2 vectors.
const TW: usize = 16;
type Tw = [f64; TW];

/// Working set of [`tri_vectors`] for order n.
pub(crate) struct TwScratch {
    /// Per row and lane: the forward and backward solutions, as stored (scaled), and the powers
    /// of two they were scaled down by (see [`CHECK`]).
    w: Vec<Tw>,
    v: Vec<Tw>,
    sw: Vec<[i64; TW]>,
    sv: Vec<[i64; TW]>,
    /// The vectors of the lanes, column-major (lane k's entry i at k·n + i).
    z: Vec<f64>,
    n: usize,
    /// Twist indices and γ_r of the lanes.
    tw: Tw,
    gr: Tw,
    /// 1/‖z‖ per lane.
    inv: Tw,
    /// 1/e_i.
    re: Vec<f64>,
    idx: Vec<usize>,
    /// Positions to factor again, at vals + shift.
    redo: Vec<usize>,
    shift: Vec<f64>,
}

impl TwScratch {
    pub(crate) fn new(n: usize) -> Self {
        let lanes = || vec![[0f64; TW]; n];
        TwScratch {
            w: lanes(),
            v: lanes(),
            sw: vec![[0; TW]; n],
            sv: vec![[0; TW]; n],
            z: vec![0.0; TW * n],
            n,
            tw: [0.0; TW],
            gr: [0.0; TW],
            inv: [0.0; TW],
            re: vec![0.0; n],
            idx: vec![0; n],
            redo: vec![0; n],
            shift: vec![0.0; n],
        }
    }
}

/// Scaling step of the solutions: 2⁶⁴ (exact).
const STEP: f64 = 18446744073709551616.0;

/// Rows between two rescalings of the solutions (within a block |e_i| > tol, so a row multiplies
/// them by at most about 3‖T‖/tol: 2²⁵ for float32 data's tolerance, 2⁵⁵ for float64's; four rows
/// stay far inside float64's range).
const CHECK: usize = 4;

/// The rescaling of the recurrences, lane by lane: the pair (w0, w1) times 2⁻⁶⁴ where
/// |w1| > 2⁶⁴, times 2⁶⁴ where both are below 2⁻⁶⁴; k counts the powers (±64).
#[inline(always)]
fn rescale(w0: &mut Tw, w1: &mut Tw, k: &mut [i64; TW]) {
    let (big, small) = (STEP, 1.0 / STEP);
    for q in 0..TW {
        let up = w1[q].abs() > big;
        let down = w1[q].abs() < small && w0[q].abs() < small;
        let f = if up {
            small
        } else if down {
            big
        } else {
            1.0
        };
        k[q] += if up {
            64
        } else if down {
            -64
        } else {
            0
        };
        w0[q] *= f;
        w1[q] *= f;
    }
}

/// 2^k for an integer k, 0 below 2⁻¹⁰²² (k clamped above at 1023).
#[inline(always)]
fn pow2(k: i64) -> f64 {
    if k < -1022 {
        0.0
    } else {
        f64::from_bits(((k.min(1023) + 1023) as u64) << 52)
    }
}

/// The twisted vectors of block s..=t (s < t) for the eigenvalues `lam` (one per lane) into
/// `sc.z` (lane k's rows s..=t, with z_r = 1; `sc.inv` the factors that normalize them); returns
/// per lane the Rayleigh correction γ_r/‖z‖², NaN where the vector is not finite. `fast`: the
/// caller runs with AVX2 and FMA (the same results).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn twisted_lanes(d: &[f64], e: &[f64], s: usize, t: usize, lam: &Tw, sc: &mut TwScratch, fast: bool) -> Tw {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` only where the caller runs with AVX2 and FMA.
        unsafe {
            let TwScratch { w, v, re, sw, sv, .. } = sc;
            solution_avx2::<false>(d, e, re, s, t, lam, w, sw);
            solution_avx2::<true>(d, e, re, s, t, lam, v, sv);
        }
        return assemble(d, e, s, t, lam, sc, true);
    }
    let TwScratch { w, v, re, sw, sv, .. } = sc;
    solution::<false>(d, e, re, s, t, lam, w, sw);
    solution::<true>(d, e, re, s, t, lam, v, sv);
    assemble(d, e, s, t, lam, sc, false)
}

/// Row `step` of a solution (from s down, or with `UP` from t up): its index i, d_i, the
/// coupling to the row before (e_{i−1}, or e_i going up; 0 for the first row) and −1/e to the
/// next row.
#[inline(always)]
fn row<const UP: bool>(d: &[f64], e: &[f64], re: &[f64], s: usize, t: usize, step: usize) -> (usize, f64, f64, f64) {
    if UP {
        let i = t - step;
        (i, d[i], if i < t { e[i] } else { 0.0 }, if i > s { -re[i - 1] } else { 0.0 })
    } else {
        let i = s + step;
        (i, d[i], if i > s { e[i - 1] } else { 0.0 }, if i < t { -re[i] } else { 0.0 })
    }
}

/// The forward solution w of (T − λI) z = 0 (or with `UP` the backward one, v) over rows s..=t
/// into `out` (stored values) and `ks` (their scale counts), 16 eigenvalues side by side.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn solution<const UP: bool>(
    d: &[f64],
    e: &[f64],
    re: &[f64],
    s: usize,
    t: usize,
    lam: &Tw,
    out: &mut [Tw],
    ks: &mut [[i64; TW]],
) {
    let (mut w0, mut w1, mut k) = ([0f64; TW], [1f64; TW], [0i64; TW]);
    for step in 0..=t - s {
        let (i, di, ep, ri) = row::<UP>(d, e, re, s, t, step);
        out[i] = w1;
        ks[i] = k;
        if step == t - s {
            break;
        }
        for q in 0..TW {
            let x = (di - lam[q]).mul_add(w1[q], ep * w0[q]) * ri;
            (w0[q], w1[q]) = (w1[q], x);
        }
        if step % CHECK == CHECK - 1 {
            rescale(&mut w0, &mut w1, &mut k);
        }
    }
}

/// [`twisted_lanes`]' twist, vectors and γ_r from the solutions in `sc`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn assemble(d: &[f64], e: &[f64], s: usize, t: usize, lam: &Tw, sc: &mut TwScratch, fast: bool) -> Tw {
    // The twist: the row of the largest |w_i v_i| by binary exponents (with the scale counts).
    #[cfg(target_arch = "x86_64")]
    let done = fast && {
        // SAFETY: `fast` only where the caller runs with AVX2 and FMA.
        unsafe { twist_avx2(s, t, sc) };
        true
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        let TwScratch { w, v, sw, sv, tw, .. } = sc;
        let mut best = [i64::MIN; TW];
        for i in s..=t {
            let (wi, vi, si, ti) = (w[i], v[i], sw[i], sv[i]);
            for k in 0..TW {
                let ex = expo(wi[k]) + expo(vi[k]) + si[k] + ti[k];
                let better = ex > best[k];
                best[k] = if better { ex } else { best[k] };
                tw[k] = if better { i as f64 } else { tw[k] };
            }
        }
    }
    // z_i = w_i / w_r above the twist, v_i / v_r below (z_r = 1); γ_r = (T − λI) z at row r.
    let mut pick = Pick { iw: [0.0; TW], iv: [0.0; TW], kw: [0; TW], kv: [0; TW] };
    for k in 0..TW {
        let r = sc.tw[k] as usize;
        pick.iw[k] = 1.0 / sc.w[r][k];
        pick.iv[k] = 1.0 / sc.v[r][k];
        pick.kw[k] = sc.sw[r][k];
        pick.kv[k] = sc.sv[r][k];
    }
    #[cfg(target_arch = "x86_64")]
    let done = fast && {
        // SAFETY: as above.
        unsafe { vector_avx2(s, t, sc, &pick) };
        true
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        let TwScratch { w, v, z, sw, sv, tw, n, .. } = sc;
        for i in s..=t {
            let (wi, vi, si, ti, fi) = (w[i], v[i], sw[i], sv[i], i as f64);
            for k in 0..TW {
                let lt = fi < tw[k];
                let val = if lt { wi[k] * pick.iw[k] } else { vi[k] * pick.iv[k] };
                let dk = if lt { si[k] - pick.kw[k] } else { ti[k] - pick.kv[k] };
                z[k * *n + i] = if fi == tw[k] { 1.0 } else { val * pow2(dk) };
            }
        }
    }
    for k in 0..TW {
        let (r, zk) = (sc.tw[k] as usize, &sc.z[k * sc.n..]);
        let mut g = d[r] - lam[k];
        if r > s {
            g += e[r - 1] * zk[r - 1];
        }
        if r < t {
            g += e[r] * zk[r + 1];
        }
        sc.gr[k] = g;
    }
    finish(s, t, sc)
}

/// Per lane, 1/w_r, 1/v_r and their scale counts at the twist r.
struct Pick {
    iw: Tw,
    iv: Tw,
    kw: [i64; TW],
    kv: [i64; TW],
}

/// x's biased binary exponent.
#[inline(always)]
fn expo(x: f64) -> i64 {
    ((x.to_bits() >> 52) & 0x7ff) as i64
}

/// [`assemble`]'s twist search in AVX2 vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn twist_avx2(s: usize, t: usize, sc: &mut TwScratch) {
    use std::arch::x86_64::*;
    const V: usize = TW / 4;
    let TwScratch { w, v, sw, sv, tw, .. } = sc;
    let ldi = |x: *const i64, h: usize| _mm256_loadu_si256(x.add(4 * h) as *const __m256i);
    let ldb = |x: &Tw, h: usize| _mm256_castpd_si256(_mm256_loadu_pd(x.as_ptr().add(4 * h)));
    let mask = _mm256_set1_epi64x(0x7ff);
    let ex = |x: __m256i| _mm256_and_si256(_mm256_srli_epi64::<52>(x), mask);
    let mut best = [_mm256_set1_epi64x(i64::MIN); V];
    let mut at = [_mm256_setzero_pd(); V];
    for i in s..=t {
        let fi = _mm256_set1_pd(i as f64);
        for h in 0..V {
            let e = _mm256_add_epi64(
                _mm256_add_epi64(ex(ldb(&w[i], h)), ex(ldb(&v[i], h))),
                _mm256_add_epi64(ldi(sw[i].as_ptr(), h), ldi(sv[i].as_ptr(), h)),
            );
            let better = _mm256_cmpgt_epi64(e, best[h]);
            best[h] = _mm256_blendv_epi8(best[h], e, better);
            at[h] = _mm256_blendv_pd(at[h], fi, _mm256_castsi256_pd(better));
        }
    }
    for h in 0..V {
        _mm256_storeu_pd(tw.as_mut_ptr().add(4 * h), at[h]);
    }
}

/// [`assemble`]'s vector in AVX2 vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn vector_avx2(s: usize, t: usize, sc: &mut TwScratch, p: &Pick) {
    use std::arch::x86_64::*;
    const V: usize = TW / 4;
    let TwScratch { w, v, z, sw, sv, tw, n, .. } = sc;
    let n = *n;
    let ld = |x: *const f64, h: usize| _mm256_loadu_pd(x.add(4 * h));
    let ldi = |x: *const i64, h: usize| _mm256_loadu_si256(x.add(4 * h) as *const __m256i);
    let one = _mm256_set1_pd(1.0);
    let (lo, hi, bias) = (_mm256_set1_epi64x(-1023), _mm256_set1_epi64x(1023), _mm256_set1_epi64x(1023));
    // Rows four at a time: each lane group's 4 × 4 block transposed into the lanes' columns.
    let mut blk = [[_mm256_setzero_pd(); 4]; V];
    for i in s..=t {
        let fi = _mm256_set1_pd(i as f64);
        let q = (i - s) % 4;
        for h in 0..V {
            let twv = ld(tw.as_ptr(), h);
            let lt = _mm256_cmp_pd::<_CMP_LT_OQ>(fi, twv);
            let eq = _mm256_cmp_pd::<_CMP_EQ_OQ>(fi, twv);
            let above = _mm256_mul_pd(ld(w[i].as_ptr(), h), ld(p.iw.as_ptr(), h));
            let below = _mm256_mul_pd(ld(v[i].as_ptr(), h), ld(p.iv.as_ptr(), h));
            let val = _mm256_blendv_pd(below, above, lt);
            let da = _mm256_sub_epi64(ldi(sw[i].as_ptr(), h), ldi(p.kw.as_ptr(), h));
            let db = _mm256_sub_epi64(ldi(sv[i].as_ptr(), h), ldi(p.kv.as_ptr(), h));
            let dk = _mm256_blendv_epi8(db, da, _mm256_castpd_si256(lt));
            // pow2(dk): 0 below −1022, clamped at 1023.
            let dk = _mm256_blendv_epi8(dk, hi, _mm256_cmpgt_epi64(dk, hi));
            let f = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_add_epi64(dk, bias)));
            let f = _mm256_and_pd(f, _mm256_castsi256_pd(_mm256_cmpgt_epi64(dk, lo)));
            blk[h][q] = _mm256_blendv_pd(_mm256_mul_pd(val, f), one, eq);
        }
        if q == 3 {
            let i0 = i - 3;
            for (h, b) in blk.iter().enumerate() {
                // Rows i0..i0+4 of lanes 4h..4h+4 → columns.
                let (t0, t1) = (_mm256_unpacklo_pd(b[0], b[1]), _mm256_unpackhi_pd(b[0], b[1]));
                let (t2, t3) = (_mm256_unpacklo_pd(b[2], b[3]), _mm256_unpackhi_pd(b[2], b[3]));
                let cols = [
                    _mm256_permute2f128_pd::<0x20>(t0, t2),
                    _mm256_permute2f128_pd::<0x20>(t1, t3),
                    _mm256_permute2f128_pd::<0x31>(t0, t2),
                    _mm256_permute2f128_pd::<0x31>(t1, t3),
                ];
                for (c, col) in cols.into_iter().enumerate() {
                    _mm256_storeu_pd(z.as_mut_ptr().add((4 * h + c) * n + i0), col);
                }
            }
        } else if i == t {
            // The last rows (fewer than four).
            for h in 0..V {
                for r in 0..=q {
                    let mut row = [0f64; 4];
                    _mm256_storeu_pd(row.as_mut_ptr(), blk[h][r]);
                    for c in 0..4 {
                        z[(4 * h + c) * n + i - q + r] = row[c];
                    }
                }
            }
        }
    }
}

/// [`solution`] in AVX2 vectors, the same operations in the same order (so the same bits), the
/// chains kept in registers: a step is one multiply-add and one multiply on the chain; the
/// rescaling (every [`CHECK`] rows) adds a compare and a multiply.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn solution_avx2<const UP: bool>(
    d: &[f64],
    e: &[f64],
    re: &[f64],
    s: usize,
    t: usize,
    lam: &Tw,
    out: &mut [Tw],
    ks: &mut [[i64; TW]],
) {
    use std::arch::x86_64::*;
    const V: usize = TW / 4;
    let ld = |x: &Tw, h: usize| _mm256_loadu_pd(x.as_ptr().add(4 * h));
    let (sign, one) = (_mm256_set1_pd(-0.0), _mm256_set1_pd(1.0));
    let (big, small, k64) = (_mm256_set1_pd(STEP), _mm256_set1_pd(1.0 / STEP), _mm256_set1_epi64x(64));
    let mut k = [0i64; TW];
    let (mut w0, mut w1) = ([_mm256_setzero_pd(); V], [one; V]);
    for step in 0..=t - s {
        let (i, di, ep, ri) = row::<UP>(d, e, re, s, t, step);
        for h in 0..V {
            _mm256_storeu_pd(out[i].as_mut_ptr().add(4 * h), w1[h]);
        }
        ks[i] = k;
        if step == t - s {
            break;
        }
        let (di, ep, ri) = (_mm256_set1_pd(di), _mm256_set1_pd(ep), _mm256_set1_pd(ri));
        for h in 0..V {
            let x = _mm256_mul_pd(_mm256_fmadd_pd(_mm256_sub_pd(di, ld(lam, h)), w1[h], _mm256_mul_pd(ep, w0[h])), ri);
            (w0[h], w1[h]) = (w1[h], x);
        }
        if step % CHECK == CHECK - 1 {
            // [`rescale`].
            for h in 0..V {
                let up = _mm256_cmp_pd::<_CMP_GT_OQ>(_mm256_andnot_pd(sign, w1[h]), big);
                let down = _mm256_and_pd(
                    _mm256_cmp_pd::<_CMP_LT_OQ>(_mm256_andnot_pd(sign, w1[h]), small),
                    _mm256_cmp_pd::<_CMP_LT_OQ>(_mm256_andnot_pd(sign, w0[h]), small),
                );
                let f = _mm256_blendv_pd(_mm256_blendv_pd(one, big, down), small, up);
                let dk = _mm256_sub_epi64(
                    _mm256_and_si256(_mm256_castpd_si256(up), k64),
                    _mm256_and_si256(_mm256_castpd_si256(down), k64),
                );
                let kp = k.as_mut_ptr().add(4 * h) as *mut __m256i;
                _mm256_storeu_si256(kp, _mm256_add_epi64(_mm256_loadu_si256(kp), dk));
                w0[h] = _mm256_mul_pd(w0[h], f);
                w1[h] = _mm256_mul_pd(w1[h], f);
            }
        }
    }
}

/// The normalizing factors 1/‖z‖ of `sc.z[s..=t]` (lane by lane) into `sc.inv`, and the Rayleigh
/// corrections γ_r/‖z‖² (γ_r in `sc.gr`; NaN where the vector is not finite).
#[inline(always)]
fn finish(s: usize, t: usize, sc: &mut TwScratch) -> Tw {
    let (z, gr, n) = (&sc.z[..], &sc.gr, sc.n);
    let mut nrm = [0f64; TW];
    for (k, x) in nrm.iter_mut().enumerate() {
        let col = &z[k * n + s..k * n + t + 1];
        // Four partial sums (the vectorizer will not reassociate one).
        let mut acc = [0f64; 4];
        let chunks = col.chunks_exact(4);
        let rest = chunks.remainder();
        for c in chunks {
            for q in 0..4 {
                acc[q] = c[q].mul_add(c[q], acc[q]);
            }
        }
        for y in rest {
            acc[0] = y.mul_add(*y, acc[0]);
        }
        *x = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
    let mut inv = [0f64; TW];
    let mut rq = [0f64; TW];
    for k in 0..TW {
        inv[k] = 1.0 / nrm[k].sqrt();
        rq[k] = if nrm[k] < 1e300 { gr[k] / nrm[k] } else { f64::NAN };
    }
    sc.inv = inv;
    rq
}

/// A symmetric tridiagonal matrix T and its eigenvalues, the input of [`tri_vectors`]: diagonal
/// `d`, off-diagonal `e` (e[n−1] unused), order n, ‖T‖ (max row sum) in `norm`. T splits into
/// blocks where |e_i| ≤ `tol`, and `vals` must hold each block's eigenvalues at the block's
/// positions (as the QL iteration leaves them).
pub(crate) struct Tri<'a> {
    pub(crate) d: &'a [f64],
    pub(crate) e: &'a [f64],
    pub(crate) vals: &'a [f64],
    pub(crate) n: usize,
    pub(crate) tol: f64,
    pub(crate) norm: f64,
}

/// T's eigenvectors for its eigenvalues ([`Tri`]) into the columns of `out` (column i, at i·ld,
/// for vals[i]; rows n..ld untouched), in A's precision (entries below 1e-18 flushed to zero:
/// subnormal float32 entries would slow the back-transformation's arithmetic). Returns false
/// where the method cannot vouch for the vectors (see the module's notes).
pub(crate) fn tri_vectors<A: Real>(tri: &Tri, sc: &mut TwScratch, out: &mut [A], ld: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { tri_vectors_avx2(tri, sc, out, ld) };
    }
    tri_vectors_in(tri, sc, out, ld, false)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tri_vectors_avx2<A: Real>(tri: &Tri, sc: &mut TwScratch, out: &mut [A], ld: usize) -> bool {
    tri_vectors_in(tri, sc, out, ld, true)
}

#[inline(always)]
fn tri_vectors_in<A: Real>(tri: &Tri, sc: &mut TwScratch, out: &mut [A], ld: usize, fast: bool) -> bool {
    let Tri { d, e, vals, n, tol, norm } = *tri;
    for c in 0..n {
        out[c * ld..c * ld + n].fill(A::ZERO);
    }
    for i in 0..n.saturating_sub(1) {
        sc.re[i] = 1.0 / e[i];
    }
    // The corrections that call for a second factorization, and past which it fails: tighter for
    // float64 data (the float32 SVD's Gram matrices, whose V must be accurate to about 1e-10)
    // than for float32 (a vector's error is about the correction over the gap, at least 1e-3‖T‖
    // outside a cluster).
    let (refine, worst) = if std::mem::size_of::<A>() == 8 { (1e-13, 1e-11) } else { (1e-12, 1e-10) };
    let (refine, worst) = (refine * norm, worst * norm);
    let ctol = 1e-3 * norm;
    let mut s = 0;
    while s < n {
        let mut t = s;
        while t + 1 < n && e[t].abs() > tol {
            t += 1;
        }
        if s == t {
            out[s * ld + s] = A::ONE;
            s += 1;
            continue;
        }
        // The block's eigenvalues in ascending order (their positions in idx).
        let idx = &mut sc.idx[s..=t];
        for (k, x) in idx.iter_mut().enumerate() {
            *x = s + k;
        }
        idx.sort_unstable_by(|&a, &b| vals[a].total_cmp(&vals[b]));
        let m = t + 1 - s;
        // Every eigenvalue of the block, TW at a time; then those whose Rayleigh correction is
        // large again, at the corrected values, TW at a time.
        let mut redo = 0;
        for pass in 0..2 {
            let count = if pass == 0 { m } else { redo };
            let mut g = 0;
            while g < count {
                let cnt = (count - g).min(TW);
                let list = if pass == 0 { &sc.idx[s..=t] } else { &sc.redo[..redo] };
                let pos: [usize; TW] = std::array::from_fn(|k| list[g + k.min(cnt - 1)]);
                let lam: Tw = std::array::from_fn(|k| vals[pos[k]] + if pass == 0 { 0.0 } else { sc.shift[pos[k]] });
                let rq = twisted_lanes(d, e, s, t, &lam, sc, fast);
                for (k, &p) in pos.iter().enumerate().take(cnt) {
                    if !(rq[k].abs() <= if pass == 0 { refine } else { worst }) {
                        if pass == 1 || !rq[k].is_finite() {
                            return false;
                        }
                        sc.shift[p] = rq[k];
                        sc.redo[redo] = p;
                        redo += 1;
                        continue;
                    }
                    let (col, inv) = (&mut out[p * ld + s..p * ld + t + 1], sc.inv[k]);
                    for (o, z) in col.iter_mut().zip(&sc.z[k * n + s..k * n + t + 1]) {
                        let x = z * inv;
                        *o = A::from_f64(if x.abs() < 1e-18 { 0.0 } else { x });
                    }
                }
                g += cnt;
            }
        }
        // Clusters: runs of ascending eigenvalues less than ctol apart.
        let mut c0 = 0;
        while c0 < m {
            let mut c1 = c0;
            while c1 + 1 < m && vals[sc.idx[s + c1 + 1]] - vals[sc.idx[s + c1]] <= ctol {
                c1 += 1;
            }
            for j in c0 + 1..=c1 {
                let pj = sc.idx[s + j];
                for q in c0..j {
                    let pq = sc.idx[s + q];
                    let (a, b) = if pq < pj {
                        let (lo, hi) = out.split_at_mut(pj * ld);
                        (&lo[pq * ld + s..pq * ld + t + 1], &mut hi[s..t + 1])
                    } else {
                        let (lo, hi) = out.split_at_mut(pq * ld);
                        (&hi[s..t + 1], &mut lo[pj * ld + s..pj * ld + t + 1])
                    };
                    let h = a.iter().zip(b.iter()).fold(A::ZERO, |acc, (x, y)| x.mul_add(*y, acc));
                    for (y, x) in b.iter_mut().zip(a) {
                        *y = (A::ZERO - h).mul_add(*x, *y);
                    }
                }
                let col = &mut out[pj * ld + s..pj * ld + t + 1];
                let nn = col.iter().fold(A::ZERO, |acc, x| x.mul_add(*x, acc)).to_f64();
                if !(nn >= 1e-4) {
                    return false;
                }
                let inv = A::from_f64(1.0 / nn.sqrt());
                for x in col.iter_mut() {
                    *x = *x * inv;
                }
            }
            c0 = c1 + 1;
        }
        s = t + 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// max |T z_j − λ_j z_j| / ‖T‖ and max |ZᵀZ − I| of y (n × n, column-major).
    fn errors(d: &[f64], e: &[f64], vals: &[f64], y: &[f64]) -> (f64, f64) {
        let n = d.len();
        // (Floored: the reference eigenvalues of a zero block are only near zero.)
        let norm =
            (0..n).map(|i| d[i].abs() + e[i].abs() + if i > 0 { e[i - 1].abs() } else { 0.0 }).fold(1e-6, f64::max);
        let (mut res, mut orth) = (0f64, 0f64);
        for j in 0..n {
            let z = &y[j * n..(j + 1) * n];
            for i in 0..n {
                let mut tz = d[i] * z[i];
                if i > 0 {
                    tz += e[i - 1] * z[i - 1];
                }
                if i + 1 < n {
                    tz += e[i] * z[i + 1];
                }
                res = res.max((tz - vals[j] * z[i]).abs() / norm);
            }
            for k in 0..n {
                let g: f64 = z.iter().zip(&y[k * n..(k + 1) * n]).map(|(a, b)| a * b).sum();
                orth = orth.max((g - if j == k { 1.0 } else { 0.0 }).abs());
            }
        }
        (res, orth)
    }

    /// Eigenvalues of T by bisection on Sturm counts (an independent reference, to float64
    /// precision).
    fn eigvals(d: &[f64], e: &[f64]) -> Vec<f64> {
        let n = d.len();
        let r = (0..n).map(|i| d[i].abs() + e[i].abs() + if i > 0 { e[i - 1].abs() } else { 0.0 }).fold(0.0, f64::max);
        (0..n)
            .map(|k| {
                let (mut lo, mut hi) = (-r - 1.0, r + 1.0);
                for _ in 0..200 {
                    let x = 0.5 * (lo + hi);
                    let mut q = 1.0;
                    let mut c = 0;
                    for i in 0..n {
                        q = d[i] - x - if i > 0 { e[i - 1] * e[i - 1] / q } else { 0.0 };
                        if q == 0.0 {
                            q = -1e-300;
                        }
                        c += (q < 0.0) as usize;
                    }
                    if c > k {
                        hi = x;
                    } else {
                        lo = x;
                    }
                }
                0.5 * (lo + hi)
            })
            .collect()
    }

    #[test]
    fn random_split_and_clustered_tridiagonals() {
        let mut seed = 3u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        for n in [1, 2, 3, 7, 9, 16, 33, 64] {
            for case in 0..4 {
                let mut d: Vec<f64> = (0..n).map(|_| rnd()).collect();
                let mut e: Vec<f64> = (0..n).map(|_| rnd()).collect();
                e[n - 1] = 0.0;
                match case {
                    // Split in the middle (zero off-diagonal), blocks with equal spectra.
                    1 if n >= 4 => {
                        let h = n / 2;
                        e[h - 1] = 0.0;
                        for i in 0..h.min(n - h) {
                            d[h + i] = d[i];
                            if i + 1 < h.min(n - h) {
                                e[h + i] = e[i];
                            }
                        }
                    }
                    // 2×2 blocks glued by small couplings: eigenvalue pairs ~1e-5 apart (clusters)
                    // in one block.
                    2 => {
                        for i in 0..n {
                            d[i] = (i / 2) as f64;
                            e[i] = if i % 2 == 0 { 0.5 } else { 1e-5 };
                        }
                        e[n - 1] = 0.0;
                    }
                    3 => {
                        for i in 0..n {
                            d[i] = 1.0;
                            e[i] = 1e-30;
                        }
                        e[n - 1] = 0.0;
                    }
                    _ => {}
                }
                let norm = (0..n)
                    .map(|i| d[i].abs() + e[i].abs() + if i > 0 { e[i - 1].abs() } else { 0.0 })
                    .fold(0.0, f64::max);
                let tol = f32::EPSILON as f64 * norm;
                // Each block's eigenvalues at its positions.
                let mut vals = vec![0.0; n];
                let mut s = 0;
                while s < n {
                    let mut t = s;
                    while t + 1 < n && e[t].abs() > tol {
                        t += 1;
                    }
                    let mut eb = e[s..=t].to_vec();
                    eb[t - s] = 0.0;
                    let mut v = eigvals(&d[s..=t], &eb);
                    v.reverse(); // any order within the block
                    vals[s..=t].copy_from_slice(&v);
                    s = t + 1;
                }
                let (mut sc, mut y) = (TwScratch::new(n), vec![0f64; n * n]);
                let tri = Tri { d: &d, e: &e, vals: &vals, n, tol, norm };
                assert!(tri_vectors(&tri, &mut sc, &mut y, n), "n={n} case {case}");
                let mut es = e.clone();
                for x in es.iter_mut() {
                    if x.abs() <= tol {
                        *x = 0.0;
                    }
                }
                let (res, orth) = errors(&d, &es, &vals, &y);
                assert!(res < 1e-13 && orth < 1e-12, "n={n} case {case}: residual {res:e}, orthogonality {orth:e}");
            }
        }
    }

    #[test]
    fn portable_and_avx2_agree() {
        if !crate::cpu::has_avx2_fma() {
            return;
        }
        let n = 50;
        let d: Vec<f64> = (0..n).map(|i| ((i * 37) % 11) as f64 * 0.3 - 1.0).collect();
        let mut e: Vec<f64> = (0..n).map(|i| 0.2 + ((i * 13) % 7) as f64 * 0.1).collect();
        e[n - 1] = 0.0;
        e[20] = 1e-9; // a split
        let norm =
            (0..n).map(|i| d[i].abs() + e[i].abs() + if i > 0 { e[i - 1].abs() } else { 0.0 }).fold(0.0, f64::max);
        let tol = 1e-7 * norm;
        let mut vals = vec![0.0; n];
        for (s, t) in [(0, 20), (21, n - 1)] {
            let mut eb = e[s..=t].to_vec();
            eb[t - s] = 0.0;
            vals[s..=t].copy_from_slice(&eigvals(&d[s..=t], &eb));
        }
        let (mut a, mut b) = (vec![0f64; n * n], vec![0f64; n * n]);
        let tri = Tri { d: &d, e: &e, vals: &vals, n, tol, norm };
        assert!(tri_vectors_in(&tri, &mut TwScratch::new(n), &mut a, n, false));
        // SAFETY: the CPU has AVX2 and FMA.
        assert!(unsafe { tri_vectors_avx2(&tri, &mut TwScratch::new(n), &mut b, n) });
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn equal_eigenvalues_in_one_block_fail() {
        // Wilkinson's W65+ (d_i = |i − 32|, e_i = 1): its largest pairs agree to float64
        // precision within one block.
        let n = 65;
        let d: Vec<f64> = (0..n).map(|i| (32.0 - i as f64).abs()).collect();
        let mut e = vec![1.0; n];
        e[n - 1] = 0.0;
        let vals = eigvals(&d, &e);
        let mut y = vec![0f64; n * n];
        let tri = Tri { d: &d, e: &e, vals: &vals, n, tol: 1e-7 * 34.0, norm: 34.0 };
        assert!(!tri_vectors(&tri, &mut TwScratch::new(n), &mut y, n));
    }
}
