//! CPU backend: plain Rust over borrowed host memory, parallel over rows with rayon.
//!
//! Every kernel loads a row into a scratch buffer of its accumulation type (`f32`, or `f64` for
//! float64 data), computes there, and stores the result in the output's dtype, so one kernel body
//! serves every combination of input, weight and output dtypes.

/// Declares `$fast`, a copy of the `#[inline(always)]` function `$base` compiled for AVX2 + FMA
/// (x86-64 only): its loops vectorize 8 floats wide instead of the baseline's 4 (SSE2).
macro_rules! isa_copies {
    ($fast:ident = $base:ident($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $fast<A: Real>($($arg: $ty),*) {
            $base::<A>($($arg),*)
        }
    };
}

/// The best copy of a row function for this CPU, as an `unsafe fn` pointer of type `$t`.
macro_rules! pick {
    ($fast:ident, $base:ident, $a:ty, $t:ty) => {{
        #[cfg(target_arch = "x86_64")]
        let f: $t = if $crate::cpu::has_avx2_fma() { $fast::<$a> } else { $base::<$a> };
        #[cfg(not(target_arch = "x86_64"))]
        let f: $t = $base::<$a>;
        f
    }};
}

pub mod norm;

/// True when the CPU runs AVX2 and FMA (checked once). `METALCORE_CPU_BASELINE=1` forces the
/// baseline copies (so tests cover both).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F.get_or_init(|| {
        std::env::var("METALCORE_CPU_BASELINE").map_or(true, |v| v != "1")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
    })
}

use crate::dtype::DType;
use half::{bf16, f16};

/// The accumulation type of a CPU kernel: `f32` or `f64`.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn from_usize(v: usize) -> Self;
    fn sqrt(self) -> Self;
    fn to_f64(self) -> f64;
    fn load(dtype: DType, src: *const u8, i: usize) -> Self;
    fn store(self, dtype: DType, dst: *mut u8, i: usize);
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_usize(v: usize) -> Self {
                v as $t
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn load(dtype: DType, src: *const u8, i: usize) -> Self {
                // SAFETY: callers pass a pointer to a live buffer of `dtype` elements with index `i`
                // in bounds (checked by the op's validation before any kernel runs).
                unsafe {
                    match dtype {
                        DType::F32 => *(src as *const f32).add(i) as $t,
                        DType::F64 => *(src as *const f64).add(i) as $t,
                        DType::F16 => (*(src as *const f16).add(i)).to_f32() as $t,
                        DType::BF16 => (*(src as *const bf16).add(i)).to_f32() as $t,
                    }
                }
            }
            #[inline(always)]
            fn store(self, dtype: DType, dst: *mut u8, i: usize) {
                // SAFETY: as for `load`; the destination is an output the caller owns exclusively.
                unsafe {
                    match dtype {
                        DType::F32 => *(dst as *mut f32).add(i) = self as f32,
                        DType::F64 => *(dst as *mut f64).add(i) = self as f64,
                        DType::F16 => *(dst as *mut f16).add(i) = f16::from_f64(self as f64),
                        DType::BF16 => *(dst as *mut bf16).add(i) = bf16::from_f64(self as f64),
                    }
                }
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

/// Loads `out.len()` elements of `dtype` from `src`, converting to the accumulation type.
///
/// # Safety
/// `src` must point to at least `out.len()` readable elements of `dtype`.
#[inline(always)]
pub(crate) unsafe fn load_row<A: Real>(dtype: DType, src: *const u8, out: &mut [A]) {
    // One match per row, so the inner loops are monomorphic and vectorize.
    macro_rules! go {
        ($t:ty, $conv:expr) => {{
            let s = std::slice::from_raw_parts(src as *const $t, out.len());
            for (o, v) in out.iter_mut().zip(s) {
                *o = A::from_f64($conv(*v));
            }
        }};
    }
    match dtype {
        DType::F32 => {
            let s = std::slice::from_raw_parts(src as *const f32, out.len());
            if std::mem::size_of::<A>() == 4 {
                // SAFETY: A is f32 here (the only 4-byte Real).
                let o = std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, out.len());
                o.copy_from_slice(s);
            } else {
                go!(f32, |v: f32| v as f64)
            }
        }
        DType::F64 => go!(f64, |v: f64| v),
        DType::F16 => go!(f16, |v: f16| v.to_f32() as f64),
        DType::BF16 => {
            let s = std::slice::from_raw_parts(src as *const u16, out.len());
            if std::mem::size_of::<A>() == 4 {
                // bfloat16 -> float32 is a shift; keep it branch-free so it vectorizes.
                let o = std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, out.len());
                for (o, v) in o.iter_mut().zip(s) {
                    *o = f32::from_bits((*v as u32) << 16);
                }
            } else {
                go!(u16, |v: u16| f32::from_bits((v as u32) << 16) as f64)
            }
        }
    }
}

/// Stores `vals` into `dst` as `dtype` (round to nearest even).
///
/// # Safety
/// `dst` must point to at least `vals.len()` writable elements of `dtype`.
#[inline(always)]
pub(crate) unsafe fn store_row<A: Real>(vals: &[A], dtype: DType, dst: *mut u8) {
    if dtype == DType::F32 && std::mem::size_of::<A>() == 4 {
        let v = std::slice::from_raw_parts(vals.as_ptr() as *const f32, vals.len());
        std::slice::from_raw_parts_mut(dst as *mut f32, vals.len()).copy_from_slice(v);
        return;
    }
    if dtype == DType::BF16 && std::mem::size_of::<A>() == 4 {
        let v = std::slice::from_raw_parts(vals.as_ptr() as *const f32, vals.len());
        let d = std::slice::from_raw_parts_mut(dst as *mut u16, vals.len());
        for (d, v) in d.iter_mut().zip(v) {
            *d = f32_to_bf16_bits(*v);
        }
        return;
    }
    for (i, v) in vals.iter().enumerate() {
        v.store(dtype, dst, i);
    }
}

/// `Σ a[i]·b[i]`, accurate and vectorizable: 8 independent lanes over blocks of 64 elements, block
/// sums accumulated in float64 (error ~ 64·ε instead of n·ε for a running sum).
#[inline(always)]
pub(crate) fn dot<A: Real>(a: &[A], b: &[A]) -> A {
    let n = a.len().min(b.len());
    // SAFETY: i < n <= both lengths.
    lane_sum(n, |i| unsafe { *a.get_unchecked(i) * *b.get_unchecked(i) })
}

/// Σ a, accumulated like [`dot`].
#[inline(always)]
pub(crate) fn sum<A: Real>(a: &[A]) -> A {
    // SAFETY: i < a.len().
    lane_sum(a.len(), |i| unsafe { *a.get_unchecked(i) })
}

/// Σ f(i) for i in 0..n: 8 independent lanes within blocks of 64 terms (vectorizes), block sums
/// added in f64 (keeps long sums accurate in f32).
#[inline(always)]
pub(crate) fn lane_sum<A: Real>(n: usize, f: impl Fn(usize) -> A) -> A {
    let mut total = 0f64;
    let mut start = 0;
    while start < n {
        let end = (start + 64).min(n);
        let mut lanes = [A::ZERO; 8];
        let full = start + (end - start) / 8 * 8;
        let mut i = start;
        while i < full {
            for (l, lane) in lanes.iter_mut().enumerate() {
                *lane += f(i + l);
            }
            i += 8;
        }
        for j in full..end {
            lanes[0] += f(j);
        }
        let s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        total += s.to_f64();
        start = end;
    }
    A::from_f64(total)
}

/// Rounds every value to the nearest value representable in `dtype` (no-op for float32/64 with `f32`).
#[inline(always)]
pub(crate) fn round_to<A: Real>(dtype: DType, vals: &mut [A]) {
    match dtype {
        DType::F32 if std::mem::size_of::<A>() == 4 => {}
        DType::F64 => {}
        DType::BF16 if std::mem::size_of::<A>() == 4 => {
            // SAFETY: A is f32 here.
            let v = unsafe { std::slice::from_raw_parts_mut(vals.as_mut_ptr() as *mut f32, vals.len()) };
            for x in v {
                *x = f32::from_bits((f32_to_bf16_bits(*x) as u32) << 16);
            }
        }
        _ => {
            let mut tmp = [0u8; 8];
            for v in vals.iter_mut() {
                v.store(dtype, tmp.as_mut_ptr(), 0);
                *v = A::load(dtype, tmp.as_ptr(), 0);
            }
        }
    }
}

/// float32 -> bfloat16 bits, round to nearest even, NaN kept quiet.
#[inline(always)]
fn f32_to_bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((b >> 16) & 1);
    ((b + rounding) >> 16) as u16
}

/// A raw pointer that may cross rayon's threads. Each parallel task touches disjoint rows.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut u8);
// SAFETY: the ops only hand disjoint row ranges of a SendPtr to different threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    #[inline(always)]
    pub(crate) fn at(self, elem: usize, dtype: DType) -> *mut u8 {
        // SAFETY: offsets stay inside the tensor; validation checked the extents.
        unsafe { self.0.add(elem * dtype.size()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        for &v in &[1.0f32, 1.00390625, 1.0078125, -3.1415927, 65504.0, 1e-30, f32::INFINITY] {
            assert_eq!(f32_to_bf16_bits(v), bf16::from_f32(v).to_bits(), "value {v}");
        }
        assert!(bf16::from_bits(f32_to_bf16_bits(f32::NAN)).is_nan());
    }
}
