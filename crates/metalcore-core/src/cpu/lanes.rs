//! Lane interleaving for the batched small-matrix kernels: [`W`] matrices side by side, element
//! `e` of matrix `q` at `lanes[e][q]`, so each scalar step of one matrix becomes one SIMD
//! operation over W matrices and the loops vectorize however small the matrix.
//!
//! Packing and unpacking move every element once; for float32 on AVX2 they go 8×8 blocks at a
//! time through an in-register transpose (the scalar form, one strided element per lane, cost
//! twice the factorization itself on 1000×16² Cholesky).

use super::Real;

/// Matrices processed together by default, one per lane: two AVX2 registers of float32 per lane
/// vector (with one, the loop and pivoting overhead of each step fell on too few matrices:
/// 1000×16² LU solve took twice as long). Every lane count `L` here is a multiple of 8 (the
/// float32 paths work in 8×8 blocks).
pub(crate) const W: usize = 16;

/// `dst[e][q] = *srcs[q].add(e)` for every `e < dst.len()`.
///
/// # Safety
/// Each `srcs[q]` points to `dst.len()` readable elements.
#[inline(always)]
pub(crate) unsafe fn pack<A: Real, const L: usize>(srcs: &[*const A; L], dst: &mut [[A; L]]) {
    pack_where(srcs, dst, &[]);
}

/// [`pack`] of only the blocks of 8 elements `e` in `8b .. 8b + 8` with `keep[b]` (every block
/// when `keep` is empty; the elements past the last whole block always): the others are left as
/// they are in `dst`.
///
/// # Safety
/// As [`pack`].
#[inline(always)]
pub(crate) unsafe fn pack_where<A: Real, const L: usize>(srcs: &[*const A; L], dst: &mut [[A; L]], keep: &[bool]) {
    const { assert!(L % 8 == 0) };
    #[cfg(target_arch = "x86_64")]
    if std::mem::size_of::<A>() == 4 && super::has_avx2_fma() {
        // SAFETY: A is f32 here (the only 4-byte Real), so the casts only rename the type.
        let srcs = &*(srcs as *const [*const A; L] as *const [*const f32; L]);
        return pack_f32(srcs, dst.as_mut_ptr() as *mut [f32; L], dst.len(), keep);
    }
    let full = dst.len() & !7;
    for (e, d) in dst.iter_mut().enumerate() {
        if e < full && !keep.is_empty() && !keep[e / 8] {
            continue;
        }
        for q in 0..L {
            d[q] = *srcs[q].add(e);
        }
    }
}

/// `*dsts[q].add(e) = src[e][q]` for every `e < src.len()`: the inverse of [`pack`].
///
/// # Safety
/// Each `dsts[q]` points to `src.len()` writable elements no one else accesses (lanes whose
/// results are discarded may share one scratch destination).
#[inline(always)]
pub(crate) unsafe fn unpack<A: Real, const L: usize>(src: &[[A; L]], dsts: &[*mut A; L]) {
    unpack_where(src, dsts, &[]);
}

/// [`unpack`], except that the blocks of 8 elements `e` in `8b .. 8b + 8` without `copy[b]` are
/// written as zeros whatever `src` holds there (every block is copied when `copy` is empty; the
/// elements past the last whole block always are).
///
/// # Safety
/// As [`unpack`].
#[inline(always)]
pub(crate) unsafe fn unpack_where<A: Real, const L: usize>(src: &[[A; L]], dsts: &[*mut A; L], copy: &[bool]) {
    const { assert!(L % 8 == 0) };
    #[cfg(target_arch = "x86_64")]
    if std::mem::size_of::<A>() == 4 && super::has_avx2_fma() {
        // SAFETY: as in `pack`.
        let dsts = &*(dsts as *const [*mut A; L] as *const [*mut f32; L]);
        return unpack_f32(src.as_ptr() as *const [f32; L], src.len(), dsts, copy);
    }
    let full = src.len() & !7;
    for (e, s) in src.iter().enumerate() {
        let zero = e < full && !copy.is_empty() && !copy[e / 8];
        for q in 0..L {
            *dsts[q].add(e) = if zero { A::ZERO } else { s[q] };
        }
    }
}

/// Each lane's partial pivot in a column of lane vectors (`col.add(i * stride)` is row i): the
/// index, as an `A`, of the first largest |x| among rows `j..n`. A NaN wins over every number;
/// among several NaNs, the float32 AVX2 copy may take another one than the first (it compares
/// the magnitudes' bit patterns as integers), which leaves the lane NaN either way.
///
/// # Safety
/// `col.add(i * stride)` is readable for every i in `j..n`, `j < n`.
#[inline(always)]
pub(crate) unsafe fn pivots<A: Real, const L: usize>(col: *const [A; L], stride: usize, j: usize, n: usize) -> [A; L] {
    const { assert!(L % 8 == 0) };
    #[cfg(target_arch = "x86_64")]
    if std::mem::size_of::<A>() == 4 && super::has_avx2_fma() {
        let mut out = [A::ZERO; L];
        // SAFETY: A is f32 here; see `pack`.
        pivots_f32::<L>(col as *const f32, stride * L, j, n, &mut *(&mut out as *mut [A; L] as *mut [f32; L]));
        return out;
    }
    let mut best = *col.add(j * stride);
    let mut piv = [A::from_usize(j); L];
    for l in 0..L {
        best[l] = best[l].abs();
    }
    for i in j + 1..n {
        let v = *col.add(i * stride);
        let fi = A::from_usize(i);
        for l in 0..L {
            let x = v[l].abs();
            let take = (x > best[l]) | ((x != x) & (best[l] == best[l]));
            best[l] = if take { x } else { best[l] };
            piv[l] = if take { fi } else { piv[l] };
        }
    }
    piv
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pivots_f32<const L: usize>(col: *const f32, stride: usize, j: usize, n: usize, out: &mut [f32; L]) {
    use std::arch::x86_64::*;
    // |x| as a nonnegative int32 orders like |x|, with NaN above +Inf.
    let magnitude = _mm256_set1_epi32(0x7fff_ffff);
    for h in (0..L).step_by(8) {
        let load =
            |i: usize| _mm256_and_si256(_mm256_loadu_si256(col.add(i * stride + h) as *const __m256i), magnitude);
        let mut best = load(j);
        let mut piv = _mm256_set1_ps(j as f32);
        for i in j + 1..n {
            let v = load(i);
            let take = _mm256_castsi256_ps(_mm256_cmpgt_epi32(v, best));
            best = _mm256_max_epi32(best, v);
            piv = _mm256_blendv_ps(piv, _mm256_set1_ps(i as f32), take);
        }
        _mm256_storeu_ps(out.as_mut_ptr().add(h), piv);
    }
}

/// True when every lane of `sel` equals `at`.
#[inline(always)]
pub(crate) fn all_eq<A: Real, const L: usize>(sel: &[A; L], at: A) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::mem::size_of::<A>() == 4 && super::has_avx2_fma() {
        // SAFETY: A is f32 here (see `pack`) and AVX2 is present.
        return unsafe { !any_ne_f32(&*(sel as *const [A; L] as *const [f32; L]), at.to_f64() as f32) };
    }
    sel.iter().all(|&x| x == at)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn any_ne_f32<const L: usize>(sel: &[f32; L], at: f32) -> bool {
    use std::arch::x86_64::*;
    let mut m = _mm256_setzero_ps();
    for h in (0..L).step_by(8) {
        m = _mm256_or_ps(m, _mm256_cmp_ps::<_CMP_NEQ_UQ>(_mm256_loadu_ps(sel.as_ptr().add(h)), _mm256_set1_ps(at)));
    }
    _mm256_movemask_ps(m) != 0
}

/// The eight rows `r` of an 8×8 float32 block, transposed (three rounds of shuffles).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    // Round 1: interleave neighbouring rows element by element.
    let a0 = _mm256_unpacklo_ps(r[0], r[1]);
    let a1 = _mm256_unpackhi_ps(r[0], r[1]);
    let a2 = _mm256_unpacklo_ps(r[2], r[3]);
    let a3 = _mm256_unpackhi_ps(r[2], r[3]);
    let a4 = _mm256_unpacklo_ps(r[4], r[5]);
    let a5 = _mm256_unpackhi_ps(r[4], r[5]);
    let a6 = _mm256_unpacklo_ps(r[6], r[7]);
    let a7 = _mm256_unpackhi_ps(r[6], r[7]);
    // Round 2: pairs of pairs (0b01_00_01_00 takes the low pairs of both, 0b11_10_11_10 the high).
    let b0 = _mm256_shuffle_ps::<0b0100_0100>(a0, a2);
    let b1 = _mm256_shuffle_ps::<0b1110_1110>(a0, a2);
    let b2 = _mm256_shuffle_ps::<0b0100_0100>(a1, a3);
    let b3 = _mm256_shuffle_ps::<0b1110_1110>(a1, a3);
    let b4 = _mm256_shuffle_ps::<0b0100_0100>(a4, a6);
    let b5 = _mm256_shuffle_ps::<0b1110_1110>(a4, a6);
    let b6 = _mm256_shuffle_ps::<0b0100_0100>(a5, a7);
    let b7 = _mm256_shuffle_ps::<0b1110_1110>(a5, a7);
    // Round 3: the 128-bit halves (0x20: both low halves, 0x31: both high halves).
    [
        _mm256_permute2f128_ps::<0x20>(b0, b4),
        _mm256_permute2f128_ps::<0x20>(b1, b5),
        _mm256_permute2f128_ps::<0x20>(b2, b6),
        _mm256_permute2f128_ps::<0x20>(b3, b7),
        _mm256_permute2f128_ps::<0x31>(b0, b4),
        _mm256_permute2f128_ps::<0x31>(b1, b5),
        _mm256_permute2f128_ps::<0x31>(b2, b6),
        _mm256_permute2f128_ps::<0x31>(b3, b7),
    ]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_f32<const L: usize>(srcs: &[*const f32; L], dst: *mut [f32; L], len: usize, keep: &[bool]) {
    use std::arch::x86_64::*;
    let full = len & !7;
    for h in (0..L).step_by(8) {
        let mut e = 0;
        while e < full {
            if !keep.is_empty() && !keep[e / 8] {
                e += 8;
                continue;
            }
            let rows = std::array::from_fn(|q| _mm256_loadu_ps(srcs[h + q].add(e)));
            for (i, v) in transpose8(rows).into_iter().enumerate() {
                _mm256_storeu_ps((dst.add(e + i) as *mut f32).add(h), v);
            }
            e += 8;
        }
    }
    for e in full..len {
        for q in 0..L {
            (*dst.add(e))[q] = *srcs[q].add(e);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_f32<const L: usize>(src: *const [f32; L], len: usize, dsts: &[*mut f32; L], copy: &[bool]) {
    use std::arch::x86_64::*;
    let full = len & !7;
    for h in (0..L).step_by(8) {
        let mut e = 0;
        while e < full {
            if !copy.is_empty() && !copy[e / 8] {
                for q in 0..8 {
                    _mm256_storeu_ps(dsts[h + q].add(e), _mm256_setzero_ps());
                }
                e += 8;
                continue;
            }
            let rows = std::array::from_fn(|i| _mm256_loadu_ps((src.add(e + i) as *const f32).add(h)));
            for (q, v) in transpose8(rows).into_iter().enumerate() {
                _mm256_storeu_ps(dsts[h + q].add(e), v);
            }
            e += 8;
        }
    }
    for e in full..len {
        for q in 0..L {
            *dsts[q].add(e) = (*src.add(e))[q];
        }
    }
}

/// Lane sources for group `g` of a contiguous batch of `batch` matrices of `len` elements at
/// `base`: matrix `g·L + q`, or `pad` for the lanes past the batch's end.
#[inline(always)]
pub(crate) fn sources<A, const L: usize>(
    base: *const A,
    g: usize,
    batch: usize,
    len: usize,
    pad: *const A,
) -> [*const A; L] {
    // wrapping_add: the pointer is only dereferenced (by `pack`) for lanes inside the batch.
    std::array::from_fn(|q| if g * L + q < batch { base.wrapping_add((g * L + q) * len) } else { pad })
}

/// Lane destinations for group `g` (as [`sources`]): the lanes past the batch's end write to
/// `spill` (scratch of `len` elements), each in turn.
#[inline(always)]
pub(crate) fn sinks<A, const L: usize>(base: *mut A, g: usize, batch: usize, len: usize, spill: *mut A) -> [*mut A; L] {
    std::array::from_fn(|q| if g * L + q < batch { base.wrapping_add((g * L + q) * len) } else { spill })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<A: Real + PartialEq + std::fmt::Debug>(len: usize) {
        let mats: Vec<Vec<A>> = (0..W).map(|q| (0..len).map(|e| A::from_usize(q * 1000 + e)).collect()).collect();
        let srcs: [*const A; W] = std::array::from_fn(|q| mats[q].as_ptr());
        let mut lanes = vec![[A::ZERO; W]; len];
        unsafe { pack::<A, W>(&srcs, &mut lanes) };
        for (e, l) in lanes.iter().enumerate() {
            for q in 0..W {
                assert_eq!(l[q], A::from_usize(q * 1000 + e), "len {len} e {e} q {q}");
            }
        }
        let mut outs: Vec<Vec<A>> = vec![vec![A::ZERO; len]; W];
        let dsts: [*mut A; W] = std::array::from_fn(|q| outs[q].as_mut_ptr());
        unsafe { unpack::<A, W>(&lanes, &dsts) };
        assert_eq!(outs, mats);
    }

    /// The masked forms: skipped blocks keep `dst`'s old values (pack) or become zeros (unpack);
    /// the elements past the last whole block are always moved.
    fn masked<A: Real + PartialEq + std::fmt::Debug>(len: usize) {
        let mats: Vec<Vec<A>> = (0..W).map(|q| (0..len).map(|e| A::from_usize(q * 1000 + e + 1)).collect()).collect();
        let mask: Vec<bool> = (0..len / 8).map(|b| b % 3 != 1).collect();
        let moved = |e: usize| e >= len / 8 * 8 || mask[e / 8];
        let srcs: [*const A; W] = std::array::from_fn(|q| mats[q].as_ptr());
        let old = A::from_usize(7);
        let mut lanes = vec![[old; W]; len];
        unsafe { pack_where::<A, W>(&srcs, &mut lanes, &mask) };
        for (e, l) in lanes.iter().enumerate() {
            for q in 0..W {
                assert_eq!(l[q], if moved(e) { mats[q][e] } else { old }, "pack len {len} e {e} q {q}");
            }
        }
        let mut outs: Vec<Vec<A>> = vec![vec![old; len]; W];
        let dsts: [*mut A; W] = std::array::from_fn(|q| outs[q].as_mut_ptr());
        unsafe { unpack_where::<A, W>(&lanes, &dsts, &mask) };
        for q in 0..W {
            for e in 0..len {
                assert_eq!(outs[q][e], if moved(e) { mats[q][e] } else { A::ZERO }, "unpack len {len} e {e} q {q}");
            }
        }
    }

    #[test]
    fn masked_pack_and_unpack_skip_or_zero_blocks() {
        for len in [0, 5, 8, 24, 49, 256, 1023] {
            masked::<f32>(len);
            masked::<f64>(len);
        }
    }

    #[test]
    fn pack_and_unpack_are_inverse_transposes() {
        for len in [0, 1, 7, 8, 9, 16, 49, 256, 1023] {
            round_trip::<f32>(len);
            round_trip::<f64>(len);
        }
    }

    /// The first row of largest |x| at or below row j, by a plain scalar search (NaN: the first
    /// NaN row).
    fn first_largest(col: &[f32], j: usize) -> usize {
        if let Some(i) = (j..col.len()).find(|&i| col[i].is_nan()) {
            return i;
        }
        (j..col.len()).fold(j, |b, i| if col[i].abs() > col[b].abs() { i } else { b })
    }

    #[test]
    fn pivots_pick_the_first_largest_magnitude_in_every_lane() {
        let n = 13;
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) % 7) as f32 - 3.0 // small integers: many ties, both signs
        };
        let mut m = vec![[0f32; W]; n];
        for row in m.iter_mut() {
            for x in row.iter_mut() {
                *x = next();
            }
        }
        m[5][3] = f32::NAN; // lane 3: a NaN wins from step 5 down to it
        m[9][3] = f32::NAN;
        m[2][7] = f32::INFINITY;
        m[4][7] = f32::NEG_INFINITY; // lane 7: the first infinite row wins
        for j in 0..n {
            // SAFETY: n rows of lane vectors, stride 1.
            let piv = unsafe { pivots::<f32, W>(m.as_ptr(), 1, j, n) };
            for l in 0..W {
                let col: Vec<f32> = m.iter().map(|r| r[l]).collect();
                let want = first_largest(&col, j);
                // The AVX2 copy may take a later NaN than the first (documented): any NaN row.
                let got = piv[l] as usize;
                assert!(got == want || (col[want].is_nan() && col[got].is_nan()), "j {j} lane {l}: {got} vs {want}");
            }
            assert_eq!(all_eq(&piv, j as f32), (0..W).all(|l| piv[l] as usize == j));
        }
        // The portable copy (f64 here) agrees, first NaN included.
        let m64: Vec<[f64; W]> = m.iter().map(|r| std::array::from_fn(|l| r[l] as f64)).collect();
        for j in 0..n {
            // SAFETY: as above.
            let piv = unsafe { pivots::<f64, W>(m64.as_ptr(), 1, j, n) };
            for l in 0..W {
                let col: Vec<f32> = m.iter().map(|r| r[l]).collect();
                assert_eq!(piv[l] as usize, first_largest(&col, j), "f64 j {j} lane {l}");
            }
        }
    }
}
