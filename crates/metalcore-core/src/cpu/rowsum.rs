//! The float32 row passes of RMSNorm, LayerNorm and softmax on AVX2 + FMA, written with intrinsics.
//!
//! The generic forms (`lane_sum` over a closure) compiled to partly scalar code inside the norm
//! rows (2-core EPYC, one thread, 2048×4096 float32: LayerNorm forward 0.70 ns and backward 1.75 ns
//! per element, against 0.13 for a copy). Here each pass keeps four 8-wide float32 partial sums
//! and folds them into a float64 total every [`BLOCK`] elements, as `lane_sum` does every 256: at
//! most 16 additions per lane before a fold, so long rows keep their accuracy.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Elements per block of float32 partial sums (16 steps of 32).
const BLOCK: usize = 512;

/// The sum of the 32 lanes of `v`, in float64.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fold(v: [__m256; 4]) -> f64 {
    let s = _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3]));
    let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let lo = _mm_cvtps_pd(h);
    let hi = _mm_cvtps_pd(_mm_movehl_ps(h, h));
    let d = _mm_add_pd(lo, hi);
    _mm_cvtsd_f64(_mm_add_sd(d, _mm_unpackhi_pd(d, d)))
}

/// `Σ (x − shift)²` when `SQUARE`, else `Σ (x − shift)`, in float64, over the `n` elements of the
/// row `x` (stored as `S` says); each x is also stored, in float32, at `copy_to`
/// unless that is null.
///
/// # Safety
/// The CPU has AVX2 and FMA; `x` holds `n` readable elements and `copy_to` (if not null) room for
/// `n` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn deviations<const SQUARE: bool, const S: u8>(
    x: *const u8,
    n: usize,
    shift: f32,
    copy_to: *mut f32,
) -> f64 {
    let s = _mm256_set1_ps(shift);
    let copy = !copy_to.is_null();
    let [total] = blocked_sums(
        n,
        |j, [a]| {
            let v = load8::<S>(x, j);
            if copy {
                _mm256_storeu_ps(copy_to.add(j), v);
            }
            let d = _mm256_sub_ps(v, s);
            *a = if SQUARE { _mm256_fmadd_ps(d, d, *a) } else { _mm256_add_ps(*a, d) };
        },
        |j| {
            let v = get::<S>(x, j);
            if copy {
                *copy_to.add(j) = v;
            }
            let d = (v - shift) as f64;
            [if SQUARE { d * d } else { d }]
        },
    );
    total
}

/// `N` sums `Σ one(j)[s]` over `j < n`: eight terms of each at a time added by `eight(j, acc)`
/// into one of four sets of `N` float32 accumulators, each sum folded into its float64 total every
/// [`BLOCK`] elements; the terms past the last full 32 of a block come from `one`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn blocked_sums<const N: usize>(
    n: usize,
    mut eight: impl FnMut(usize, &mut [__m256; N]),
    mut one: impl FnMut(usize) -> [f64; N],
) -> [f64; N] {
    let mut total = [0f64; N];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let mut acc = [[_mm256_setzero_ps(); N]; 4];
        let mut i = start;
        while i + 32 <= end {
            for (k, a) in acc.iter_mut().enumerate() {
                eight(i + 8 * k, a);
            }
            i += 32;
        }
        for (s, t) in total.iter_mut().enumerate() {
            *t += fold(std::array::from_fn(|k| acc[k][s]));
        }
        for j in i..end {
            for (t, v) in total.iter_mut().zip(one(j)) {
                *t += v;
            }
        }
        start = end;
    }
    total
}

/// `out = src` converted from bfloat16 or float16 (`S`), returning `Σ src` in float64 (the load
/// and LayerNorm's first reduction in one pass).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `src` holds `out.len()` readable elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn load_half_sum<const S: u8>(src: *const u16, out: &mut [f32]) -> f64 {
    deviations::<false, S>(src as *const u8, out.len(), 0.0, out.as_mut_ptr())
}

/// [`deviations`] of a float32 slice.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn deviations_f32<const SQUARE: bool>(x: &[f32], shift: f32) -> f64 {
    deviations::<SQUARE, STORE_F32>(x.as_ptr() as *const u8, x.len(), shift, std::ptr::null_mut())
}

/// How the rows of these passes are stored (their `S` parameter): float32, bfloat16 or float16,
/// converted to float32 as they are loaded.
pub(crate) const STORE_F32: u8 = 0;
pub(crate) const STORE_BF16: u8 = 1;
pub(crate) const STORE_F16: u8 = 2;

/// Eight elements from `j` on of a row stored as `S` says, in float32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8<const S: u8>(p: *const u8, j: usize) -> __m256 {
    match S {
        STORE_BF16 => {
            let h = _mm_loadu_si128(p.add(2 * j) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
        STORE_F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * j) as *const __m128i)),
        _ => _mm256_loadu_ps((p as *const f32).add(j)),
    }
}

/// Element `j` of such a row.
#[inline(always)]
unsafe fn get<const S: u8>(p: *const u8, j: usize) -> f32 {
    match S {
        STORE_BF16 => f32::from_bits((*(p as *const u16).add(j) as u32) << 16),
        STORE_F16 => half::f16::from_bits(*(p as *const u16).add(j)).to_f32(),
        _ => *(p as *const f32).add(j),
    }
}

/// The first backward pass of a norm row, fused: `xh = (x − mu)·r` and `g = dy·w` stored, `dw +=
/// dy·xh` (when `DW`) and `db += dy` (when `DB`) accumulated, and `(Σ g·xh, Σ g)` returned in
/// float64. `x` and `dy` are rows of `xh.len()` elements, stored as `S` says.
///
/// # Safety
/// The CPU has AVX2 and FMA; `x` and `dy` are readable rows as said; `w`, `g` and (when used) `dw`,
/// `db` are at least as long as `xh`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn norm_bwd_pass<const S: u8, const DW: bool, const DB: bool>(
    x: *const u8,
    dy: *const u8,
    w: &[f32],
    mu: f32,
    r: f32,
    xh: &mut [f32],
    g: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) -> (f64, f64) {
    let n = xh.len();
    let (pw, pxh, pg, pdw, pdb) = (w.as_ptr(), xh.as_mut_ptr(), g.as_mut_ptr(), dw.as_mut_ptr(), db.as_mut_ptr());
    let (m, rv) = (_mm256_set1_ps(mu), _mm256_set1_ps(r));
    let [sum_gx, sum_g] = blocked_sums(
        n,
        |j, [acc_gx, acc_g]| {
            let h = _mm256_mul_ps(_mm256_sub_ps(load8::<S>(x, j), m), rv);
            let d = load8::<S>(dy, j);
            let gv = _mm256_mul_ps(d, _mm256_loadu_ps(pw.add(j)));
            _mm256_storeu_ps(pxh.add(j), h);
            _mm256_storeu_ps(pg.add(j), gv);
            *acc_gx = _mm256_fmadd_ps(gv, h, *acc_gx);
            *acc_g = _mm256_add_ps(*acc_g, gv);
            if DW {
                _mm256_storeu_ps(pdw.add(j), _mm256_fmadd_ps(d, h, _mm256_loadu_ps(pdw.add(j))));
            }
            if DB {
                _mm256_storeu_ps(pdb.add(j), _mm256_add_ps(_mm256_loadu_ps(pdb.add(j)), d));
            }
        },
        |j| {
            let (h, d) = ((get::<S>(x, j) - mu) * r, get::<S>(dy, j));
            let gv = d * *pw.add(j);
            *pxh.add(j) = h;
            *pg.add(j) = gv;
            if DW {
                *pdw.add(j) = d.mul_add(h, *pdw.add(j));
            }
            if DB {
                *pdb.add(j) += d;
            }
            [(gv * h) as f64, gv as f64]
        },
    );
    (sum_gx, sum_g)
}

/// Writes `out[i] = one(i)` for the `n` elements of an output row of `T`, eight at a time by
/// `put8(i, streamed)` (`streamed`: non-temporal stores, used where the row is aligned to eight
/// elements, so that an output written once is not read from memory first), prefetching line
/// `j` of each row in `ahead` (rows of `T`, null for none) while it writes line `j` of `out`.
/// Replaces building the row in scratch and copying it out: one pass over L1 fewer.
///
/// # Safety
/// The CPU has AVX2 and FMA; `out` has room for `n` elements; `put8(i, _)` and `one(i)` are
/// valid for `i + 8 ≤ n` and `i < n`. With `STREAM` false (a scratch row, read again next) the
/// stores are plain.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn stream_row_of<const STREAM: bool, T>(
    n: usize,
    out: *mut T,
    ahead: &[*const u8],
    put8: impl Fn(usize, bool),
    one: impl Fn(usize) -> T,
) {
    let size = std::mem::size_of::<T>();
    let aligned = STREAM && (out as usize) % (8 * size) == 0;
    let mut i = 0;
    while i + 16 <= n {
        for &a in ahead {
            if !a.is_null() {
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(i * size) as *const i8);
            }
        }
        put8(i, aligned);
        put8(i + 8, aligned);
        i += 16;
    }
    for j in i..n {
        *out.add(j) = one(j);
    }
    if STREAM {
        // Order the streamed stores before anything this thread does next (another thread may
        // read the row once the task ends).
        _mm_sfence();
    }
}

/// [`stream_row_of`] for a float32 row, `eight(i)` giving elements i..i+8.
///
/// # Safety
/// As for [`stream_row_of`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn stream_row<const STREAM: bool>(
    n: usize,
    out: *mut f32,
    ahead: &[*const u8],
    eight: impl Fn(usize) -> __m256,
    one: impl Fn(usize) -> f32,
) {
    let put8 = |k: usize, streamed: bool| {
        if streamed {
            _mm256_stream_ps(out.add(k), eight(k));
        } else {
            _mm256_storeu_ps(out.add(k), eight(k));
        }
    };
    stream_row_of::<STREAM, f32>(n, out, ahead, put8, one);
}

/// A norm's output row in float32: `y = (x − mu)·r·w + b`.
///
/// # Safety
/// As for [`stream_row`]; `x`, `w` and `b` hold `n` floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn norm_out_f32(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    mu: f32,
    r: f32,
    out: *mut f32,
    ahead: &[*const u8],
) {
    let (px, pw, pb) = (x.as_ptr(), w.as_ptr(), b.as_ptr());
    let (m, rv) = (_mm256_set1_ps(mu), _mm256_set1_ps(r));
    stream_row::<true>(
        x.len().min(w.len()).min(b.len()),
        out,
        ahead,
        |i| {
            let t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(px.add(i)), m), rv);
            _mm256_fmadd_ps(t, _mm256_loadu_ps(pw.add(i)), _mm256_loadu_ps(pb.add(i)))
        },
        |i| (x[i] - mu) * r * w[i] + b[i],
    );
}

/// A norm's output row in float16: `y = (x − mu)·r·w + b`, converted by F16C (round to nearest
/// even, as `f32_row_to_f16`) eight at a time straight into `out` ([`stream_row_of`]: streamed
/// where `out` is 16-byte aligned; `ahead` holds float16 rows).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `x`, `w` and `b` hold `n` floats and `out` room for `n`
/// float16 values, `n` the least of their lengths.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn norm_out_f16(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    mu: f32,
    r: f32,
    out: *mut u16,
    ahead: &[*const u8],
) {
    let (px, pw, pb) = (x.as_ptr(), w.as_ptr(), b.as_ptr());
    let (m, rv) = (_mm256_set1_ps(mu), _mm256_set1_ps(r));
    let put8 = |k: usize, streamed: bool| {
        let t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(px.add(k)), m), rv);
        let y = _mm256_fmadd_ps(t, _mm256_loadu_ps(pw.add(k)), _mm256_loadu_ps(pb.add(k)));
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(y);
        if streamed {
            _mm_stream_si128(out.add(k) as *mut __m128i, h);
        } else {
            _mm_storeu_si128(out.add(k) as *mut __m128i, h);
        }
    };
    let one = |j: usize| half::f16::from_f32((x[j] - mu) * r * w[j] + b[j]).to_bits();
    stream_row_of::<true, u16>(x.len().min(w.len()).min(b.len()), out, ahead, put8, one);
}

/// A norm's input gradient row in float32: `dx = r·(g − mean_g − xh·mean_gx)`.
///
/// # Safety
/// As for [`stream_row`]; `g` and `xh` hold `n` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn norm_dx_f32(
    g: &[f32],
    xh: &[f32],
    r: f32,
    mean_g: f32,
    mean_gx: f32,
    out: *mut f32,
    ahead: &[*const u8],
) {
    let (pg, pxh) = (g.as_ptr(), xh.as_ptr());
    let (mg, rv, k) = (_mm256_set1_ps(mean_g), _mm256_set1_ps(r), _mm256_set1_ps(mean_gx));
    stream_row::<true>(
        g.len().min(xh.len()),
        out,
        ahead,
        |i| {
            let d = _mm256_fnmadd_ps(_mm256_loadu_ps(pxh.add(i)), k, _mm256_sub_ps(_mm256_loadu_ps(pg.add(i)), mg));
            _mm256_mul_ps(rv, d)
        },
        |i| r * (g[i] - mean_g - xh[i] * mean_gx),
    );
}

/// `Σ a·b` over rows of `n` elements (stored as `S` says), in float64.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` and `b` hold `n` readable elements each.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot<const S: u8>(a: *const u8, b: *const u8, n: usize) -> f64 {
    let [total] = blocked_sums(
        n,
        |j, [s]| *s = _mm256_fmadd_ps(load8::<S>(a, j), load8::<S>(b, j), *s),
        |j| [(get::<S>(a, j) * get::<S>(b, j)) as f64],
    );
    total
}

/// `out = v·k`, streamed to a float32 output row (softmax's normalization).
///
/// # Safety
/// As for [`stream_row`]; `out` has room for `v.len()` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn scale_out_f32(v: &[f32], k: f32, out: *mut f32) {
    let (pv, kv) = (v.as_ptr(), _mm256_set1_ps(k));
    stream_row::<true>(v.len(), out, &[], |i| _mm256_mul_ps(_mm256_loadu_ps(pv.add(i)), kv), |i| v[i] * k);
}

/// Softmax's input gradient `out = y·(dy − s)` for rows `y`, `dy` of `n` elements (bfloat16 when
/// `S` says), into a float32 row: streamed when `STREAM` (the output itself), plain
/// when not (a scratch row).
///
/// # Safety
/// As for [`stream_row`]; `y` and `dy` hold `n` readable elements, `out` room for `n` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn softmax_dx<const S: u8, const STREAM: bool>(
    y: *const u8,
    dy: *const u8,
    n: usize,
    s: f32,
    out: *mut f32,
    ahead: &[*const u8],
) {
    let sv = _mm256_set1_ps(s);
    stream_row::<STREAM>(
        n,
        out,
        ahead,
        |i| _mm256_mul_ps(load8::<S>(y, i), _mm256_sub_ps(load8::<S>(dy, i), sv)),
        |i| get::<S>(y, i) * (get::<S>(dy, i) - s),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 1.5
            })
            .collect()
    }

    type Pass = ((f64, f64), Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

    /// [`norm_bwd_pass`] on rows `x`, `dy` (stored as `S` says) with dw starting at 0.25 and db
    /// at −0.5: the sums, then xh, g, dw and db.
    fn pass<const S: u8, T>(x: &[T], dy: &[T], w: &[f32], mu: f32, r: f32) -> Pass {
        let n = x.len();
        let (mut xh, mut g) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        let (mut dw, mut db) = (vec![0.25f32; n], vec![-0.5f32; n]);
        // SAFETY: the callers checked for AVX2 and FMA; every row holds n elements of its type.
        let sums = unsafe {
            norm_bwd_pass::<S, true, true>(
                x.as_ptr() as *const u8,
                dy.as_ptr() as *const u8,
                w,
                mu,
                r,
                &mut xh,
                &mut g,
                &mut dw,
                &mut db,
            )
        };
        (sums, xh, g, dw, db)
    }

    #[test]
    fn reductions_match_float64_at_every_length() {
        if !crate::cpu::has_avx2_fma() {
            return;
        }
        for n in (0..80).chain([511, 512, 513, 1000, 4096, 4097]) {
            let (x, dy, w) = (data(n, 1), data(n, 2), data(n, 3));
            let mu = 0.37f32;
            let want1: f64 = x.iter().map(|&v| v as f64 - mu as f64).sum();
            let want2: f64 = x.iter().map(|&v| (v as f64 - mu as f64).powi(2)).sum();
            let scale: f64 = x.iter().map(|&v| (v as f64 - mu as f64).abs() + 1.0).sum();
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let (got1, got2) = unsafe { (deviations_f32::<false>(&x, mu), deviations_f32::<true>(&x, mu)) };
            assert!((got1 - want1).abs() <= 1e-6 * scale, "n {n}: {got1} vs {want1}");
            assert!((got2 - want2).abs() <= 1e-6 * want2.max(1.0), "n {n}: {got2} vs {want2}");
            let r = 1.3f32;
            let ((sgx, sg), xh, g, dw, db) = pass::<STORE_F32, f32>(&x, &dy, &w, mu, r);
            let (mut wgx, mut wg) = (0f64, 0f64);
            for j in 0..n {
                let h = (x[j] as f64 - mu as f64) * r as f64;
                let gv = dy[j] as f64 * w[j] as f64;
                assert!((xh[j] as f64 - h).abs() <= 1e-6 * (1.0 + h.abs()), "xh[{j}] n {n}");
                assert!((g[j] as f64 - gv).abs() <= 1e-6 * (1.0 + gv.abs()), "g[{j}] n {n}");
                assert!((dw[j] as f64 - (0.25 + dy[j] as f64 * h)).abs() <= 1e-5, "dw[{j}] n {n}");
                assert_eq!(db[j], -0.5 + dy[j], "db[{j}] n {n}");
                wgx += gv * h;
                wg += gv;
            }
            assert!((sgx - wgx).abs() <= 1e-5 * (n as f64 + 1.0), "n {n}: {sgx} vs {wgx}");
            assert!((sg - wg).abs() <= 1e-5 * (n as f64 + 1.0), "n {n}: {sg} vs {wg}");
            // The bfloat16 rows: the same pass on the rounded values, bit for bit, and the
            // converting load with its sum.
            let bits = |v: &[f32]| v.iter().map(|&f| crate::cpu::f32_to_bf16_bits(f)).collect::<Vec<u16>>();
            let wide = |b: &[u16]| b.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect::<Vec<f32>>();
            let (xb, dyb) = (bits(&x), bits(&dy));
            let (xr, dyr) = (wide(&xb), wide(&dyb));
            let mut out = vec![f32::NAN; n];
            // SAFETY: as above; `xb` holds n elements.
            let total = unsafe { load_half_sum::<STORE_BF16>(xb.as_ptr(), &mut out) };
            assert_eq!(out, xr, "n {n}");
            let want: f64 = xr.iter().map(|&v| v as f64).sum();
            assert!((total - want).abs() <= 1e-6 * scale, "n {n}: {total} vs {want}");
            assert_eq!(
                pass::<STORE_BF16, u16>(&xb, &dyb, &w, mu, r),
                pass::<STORE_F32, f32>(&xr, &dyr, &w, mu, r),
                "n {n}"
            );
            // The float16 rows alike.
            let bits = |v: &[f32]| v.iter().map(|&f| half::f16::from_f32(f).to_bits()).collect::<Vec<u16>>();
            let wide = |b: &[u16]| b.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect::<Vec<f32>>();
            let (xh16, dyh16) = (bits(&x), bits(&dy));
            let (xr, dyr) = (wide(&xh16), wide(&dyh16));
            assert_eq!(
                pass::<STORE_F16, u16>(&xh16, &dyh16, &w, mu, r),
                pass::<STORE_F32, f32>(&xr, &dyr, &w, mu, r),
                "n {n}"
            );
        }
    }

    #[test]
    fn softmax_passes_match_the_scalar_formulas() {
        if !crate::cpu::has_avx2_fma() {
            return;
        }
        for n in (0..70).chain([512, 513, 4096, 4097]) {
            let (y, dy) = (data(n, 7), data(n, 8));
            let want: f64 = y.iter().zip(&dy).map(|(&a, &b)| a as f64 * b as f64).sum();
            // SAFETY: AVX2 and FMA checked above; both rows hold n floats.
            let got = unsafe { dot::<STORE_F32>(y.as_ptr() as *const u8, dy.as_ptr() as *const u8, n) };
            assert!((got - want).abs() <= 1e-5 * (n as f64 + 1.0), "n {n}: {got} vs {want}");
            let mut out = vec![f32::NAN; n + 1];
            for off in [0, 1] {
                let o = unsafe { out.as_mut_ptr().add(off) };
                // SAFETY: as above; `out` has room for n + 1 floats.
                unsafe {
                    softmax_dx::<STORE_F32, true>(y.as_ptr() as *const u8, dy.as_ptr() as *const u8, n, 0.3, o, &[])
                };
                for i in 0..n {
                    assert_eq!(unsafe { *o.add(i) }, y[i] * (dy[i] - 0.3), "dx[{i}] n {n} off {off}");
                }
                // SAFETY: as above.
                unsafe { scale_out_f32(&y, 1.5, o) };
                for i in 0..n {
                    assert_eq!(unsafe { *o.add(i) }, y[i] * 1.5, "y[{i}] n {n} off {off}");
                }
            }
        }
    }

    #[test]
    fn streamed_rows_match_the_scalar_formulas_aligned_or_not() {
        if !crate::cpu::has_avx2_fma() {
            return;
        }
        for n in (0..70).chain([4096, 4097]) {
            let (x, w, b) = (data(n, 4), data(n, 5), data(n, 6));
            // 32-byte aligned at offset 0 of a Vec<__m256>'s memory; offset 1 float is not.
            // SAFETY: AVX2 checked above.
            let mut store = vec![unsafe { _mm256_setzero_ps() }; n / 8 + 2];
            for off in [0, 1] {
                let out = unsafe { (store.as_mut_ptr() as *mut f32).add(off) };
                let (mu, r, k) = (0.25f32, 1.7f32, 0.6f32);
                // SAFETY: AVX2 and FMA checked above; `store` has room for n + 1 floats.
                unsafe { norm_out_f32(&x, &w, &b, mu, r, out, &[x.as_ptr() as *const u8, std::ptr::null()]) };
                for i in 0..n {
                    let want = (x[i] - mu) * r * w[i] + b[i];
                    let got = unsafe { *out.add(i) };
                    assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "y[{i}] n {n} off {off}");
                }
                // SAFETY: as above.
                unsafe { norm_dx_f32(&x, &w, r, mu, k, out, &[]) };
                for i in 0..n {
                    let want = r * (x[i] - mu - w[i] * k);
                    let got = unsafe { *out.add(i) };
                    assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "dx[{i}] n {n} off {off}");
                }
            }
        }
    }
}
