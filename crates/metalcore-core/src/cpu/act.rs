//! Activations and gated linear units on the CPU (math in `ops::act`): the operands are cut into
//! segments of at most [`SEG`] elements of one row, processed in parallel by loops that vectorize;
//! operands stored in the accumulation type are used in place, others are converted through
//! L1-resident scratch.

use super::{disjoint, exp_f32, f32_to_bf16_bits, for_each_row, load_row, row_ptr, same_type, store_row, Real};
use crate::dtype::DType;
use crate::ops::act::{Act, Mode, Plan};
use crate::ops::Mat;

/// Elements per segment (the f32 scratch rows, 4 KiB each, stay in L1).
const SEG: usize = 1024;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const KAPPA: f64 = 0.044_715;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// The accumulation types, with the standard normal CDF.
pub(crate) trait Math: Real {
    /// Φ(x) = ½·erfc(−x/√2).
    fn norm_cdf(self) -> Self;
}

impl Math for f32 {
    /// erfc by the Chebyshev fit of Press et al., *Numerical Recipes* §6.2 (fractional error
    /// below 1.2e-7 for every argument, so Φ stays relatively accurate in the lower tail: within
    /// 1e-5 down to x = −9), with [`exp_f32`] so that loops over it vectorize.
    #[inline(always)]
    fn norm_cdf(self) -> f32 {
        let z = -self * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * z.abs());
        // The degree-8 polynomial in pairs of terms, by powers of t² (a shorter dependency chain
        // than Horner's rule: the evaluation is a chain, and this loop waits on its latency),
        // written out (a loop over a coefficient array keeps the caller from vectorizing). This
        // grouping, unlike Estrin's, rounds to Horner's value at t = 1, so Φ(0) is ½ exactly.
        let t2 = t * t;
        let a0 = 1.000_023_68 + 0.374_091_96 * t;
        let a1 = 0.096_784_18 - 0.186_288_06 * t;
        let a2 = 0.278_868_07 - 1.135_203_98 * t;
        let a3 = 1.488_515_87 - 0.822_152_23 * t + 0.170_872_77 * t2;
        let p = (a0 + a1 * t2) + (a2 + a3 * t2) * (t2 * t2);
        let y = t * exp_f32(-z * z - 1.265_512_23 + t * p);
        0.5 * if z >= 0.0 { y } else { 2.0 - y }
    }
}

impl Math for f64 {
    #[inline(always)]
    fn norm_cdf(self) -> f64 {
        0.5 * libm::erfc(-self * std::f64::consts::FRAC_1_SQRT_2)
    }
}

/// One activation: its value and derivative.
trait Kind {
    fn val_der<A: Math>(x: A) -> (A, A);
}

struct Silu;
struct Gelu;
struct GeluTanh;

/// `(σ(v), 1 − σ(v))`, the second as `e·σ(v)` with `e = e^(−v)` (no cancellation near σ = 1);
/// where `e` overflows (σ = 0, `e·σ` NaN) it is 1. A NaN `v` gives a NaN σ.
#[inline(always)]
fn sigmoid<A: Math>(v: A) -> (A, A) {
    let e = (A::ZERO - v).exp();
    let s = A::ONE / (A::ONE + e);
    let c = e * s;
    (s, if c == c { c } else { A::ONE })
}

impl Kind for Silu {
    #[inline(always)]
    fn val_der<A: Math>(x: A) -> (A, A) {
        let (s, c) = sigmoid(x);
        (x * s, s * (A::ONE + x * c))
    }
}

impl Kind for Gelu {
    #[inline(always)]
    fn val_der<A: Math>(x: A) -> (A, A) {
        let p = x.norm_cdf();
        let half = A::from_f64(0.5);
        (x * p, p + x * (A::ZERO - half * x * x).exp() * A::from_f64(INV_SQRT_2PI))
    }
}

impl Kind for GeluTanh {
    #[inline(always)]
    fn val_der<A: Math>(x: A) -> (A, A) {
        let k = A::from_f64(2.0 * SQRT_2_OVER_PI);
        let x2 = x * x;
        let (s, c) = sigmoid(k * (x + A::from_f64(KAPPA) * x2 * x));
        (x * s, s + x * s * c * k * (A::ONE + A::from_f64(3.0 * KAPPA) * x2))
    }
}

/// # Safety
/// `seg < p.rows * spr` with `spr = ceil(p.cols / SEG)`; the plan's operands are valid views;
/// this segment of the outputs is written by no one else; every scratch row holds `SEG` values.
#[inline(always)]
unsafe fn segment<A: Math, K: Kind>(p: &Plan, seg: usize, spr: usize, scratch: &mut Scratch<A>) {
    let (row, c0) = (seg / spr, (seg % spr) * SEG);
    let len = SEG.min(p.cols - c0);
    let dt = p.dtype;
    let at = |m: &Mat| row_ptr(m, row).add(c0 * dt.size());
    // Operands stored as A itself are read and written where they are, in one pass (a pass
    // through scratch stalled on memory and on compute in turn: 2 threads ran SiLU barely faster
    // than one); other dtypes are converted through the scratch rows.
    let same = same_type::<A>(dt);
    if dt == DType::BF16 && std::mem::size_of::<A>() == 4 && p.bias.is_none() {
        // bfloat16 converted in the same loop (a shift in, a rounding out): no scratch passes.
        let io = |m: &Mat| at(m) as usize;
        let ins: [usize; 3] = std::array::from_fn(|i| p.ins.get(i).map_or(0, io));
        let outs: [usize; 2] = std::array::from_fn(|i| p.outs.get(i).map_or(0, io));
        let bytes = 2 * len;
        let apart = |a: usize, b: usize| a == 0 || b == 0 || disjoint(a, b, bytes);
        if outs.iter().all(|&o| ins.iter().all(|&i| apart(o, i))) && apart(outs[0], outs[1]) {
            return loops::<f32, K, Bf16>(p.mode, ins.map(|a| a as *const u16), outs.map(|a| a as *mut u16), len);
        }
    }
    let [s0, s1, s2, s3, s4] = scratch;
    let src = |m: *const u8, s: &'_ mut Vec<A>| -> *const A {
        if same {
            m as *const A
        } else {
            load_row(dt, m, &mut s[..len]);
            s.as_ptr()
        }
    };
    let mut ins: [*const A; 3] = [std::ptr::null(); 3];
    ins[0] = src(at(&p.ins[0]), s0);
    if let Some(bias) = &p.bias {
        let b = std::slice::from_raw_parts(src((bias.ptr as *const u8).add(c0 * dt.size()), s2), len);
        let x = std::slice::from_raw_parts(ins[0], len);
        for ((d, x), b) in s1[..len].iter_mut().zip(x).zip(b) {
            *d = *x + *b;
        }
        ins[0] = s1.as_ptr();
    }
    match p.mode {
        Mode::Fwd => {}
        Mode::Bwd => ins[1] = src(at(&p.ins[1]), s2),
        Mode::GluFwd => ins[1] = src(at(&p.ins[1]), s1),
        Mode::GluBwd => (ins[1], ins[2]) = (src(at(&p.ins[1]), s1), src(at(&p.ins[2]), s2)),
    }
    // An output of A's type is written in place unless it overlaps an input (never the case
    // from the Python layer, which allocates every output, but the core does not forbid it).
    let bytes = len * std::mem::size_of::<A>();
    let clear = |o: *mut A| ins.iter().all(|&i| i.is_null() || disjoint(o as usize, i as usize, bytes));
    let direct = |m: &Mat| same && clear(at(m) as *mut A);
    let (d0, d1) = (direct(&p.outs[0]), p.outs.len() > 1 && direct(&p.outs[1]));
    let out = |m: &Mat, d: bool, s: &'_ mut Vec<A>| -> *mut A {
        if d {
            at(m) as *mut A
        } else {
            s.as_mut_ptr()
        }
    };
    let o0 = out(&p.outs[0], d0, s3);
    let o1 = if p.outs.len() > 1 { out(&p.outs[1], d1, s4) } else { std::ptr::null_mut() };
    loops::<A, K, Same>(p.mode, ins, [o0, o1], len);
    if p.mode == Mode::GluBwd && !d1 {
        store_row(&s4[..len], dt, at(&p.outs[1]));
    }
    if !d0 {
        store_row(&s3[..len], dt, at(&p.outs[0]));
    }
}

/// How the element loops read and write a stored element, in the accumulation type `A`.
trait Codec<A>: Copy {
    type T: Copy;
    fn get(v: Self::T) -> A;
    fn put(v: A) -> Self::T;
}

/// Elements stored as `A` itself.
#[derive(Clone, Copy)]
struct Same;

impl<A: Real> Codec<A> for Same {
    type T = A;
    #[inline(always)]
    fn get(v: A) -> A {
        v
    }
    #[inline(always)]
    fn put(v: A) -> A {
        v
    }
}

/// bfloat16 elements computed in float32 (round to nearest even on the way out).
#[derive(Clone, Copy)]
struct Bf16;

impl Codec<f32> for Bf16 {
    type T = u16;
    #[inline(always)]
    fn get(v: u16) -> f32 {
        f32::from_bits((v as u32) << 16)
    }
    #[inline(always)]
    fn put(v: f32) -> u16 {
        f32_to_bf16_bits(v)
    }
}

/// The element loops of every mode over `len` elements: inputs (x, then up or the output
/// gradient, then the output gradient of a GLU) and outputs (one, or two for `GluBwd`).
///
/// # Safety
/// The pointers the mode uses address `len` elements; outputs overlap no input and each other.
#[inline(always)]
unsafe fn loops<A: Math, K: Kind, C: Codec<A>>(mode: Mode, ins: [*const C::T; 3], outs: [*mut C::T; 2], len: usize) {
    let view = |i: usize| std::slice::from_raw_parts(ins[i], len);
    let o0 = std::slice::from_raw_parts_mut(outs[0], len);
    // Zipped slices: the loops vectorize with no aliasing checks.
    match mode {
        Mode::Fwd => {
            for (o, x) in o0.iter_mut().zip(view(0)) {
                *o = C::put(K::val_der(C::get(*x)).0);
            }
        }
        Mode::Bwd => {
            for ((o, x), g) in o0.iter_mut().zip(view(0)).zip(view(1)) {
                *o = C::put(C::get(*g) * K::val_der(C::get(*x)).1);
            }
        }
        Mode::GluFwd => {
            for ((o, x), u) in o0.iter_mut().zip(view(0)).zip(view(1)) {
                *o = C::put(K::val_der(C::get(*x)).0 * C::get(*u));
            }
        }
        Mode::GluBwd => {
            let o1 = std::slice::from_raw_parts_mut(outs[1], len);
            for ((((o, o1), x), u), g) in o0.iter_mut().zip(o1.iter_mut()).zip(view(0)).zip(view(1)).zip(view(2)) {
                let (f, d) = K::val_der(C::get(*x));
                let (g, u) = (C::get(*g), C::get(*u));
                *o = C::put(g * u * d);
                *o1 = C::put(g * f);
            }
        }
    }
}

/// Scratch rows of one task: up to three converted inputs (or the biased input) and two outputs.
type Scratch<A> = [Vec<A>; 5];

/// [`segment`] compiled for AVX2 + FMA.
///
/// # Safety
/// As for [`segment`], on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn segment_avx2<A: Math, K: Kind>(p: &Plan, seg: usize, spr: usize, scratch: &mut Scratch<A>) {
    segment::<A, K>(p, seg, spr, scratch)
}

/// [`segment`] compiled for AVX-512 ([`super::has_avx512`]).
///
/// # Safety
/// As for [`segment`], on a CPU with AVX-512 F/VL/BW/DQ, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq")]
unsafe fn segment_avx512<A: Math, K: Kind>(p: &Plan, seg: usize, spr: usize, scratch: &mut Scratch<A>) {
    segment::<A, K>(p, seg, spr, scratch)
}

type SegFn<A> = unsafe fn(&Plan, usize, usize, &mut Scratch<A>);

fn run_as<A: Math, K: Kind>(p: &Plan) {
    let f = pick!(segment_avx2, segment_avx512, segment, <A, K>, SegFn<A>);
    let spr = p.cols.div_ceil(SEG);
    let cols = p.cols.min(SEG);
    for_each_row(
        p.rows * spr,
        cols,
        || std::array::from_fn(|_| vec![A::ZERO; cols]),
        // SAFETY: segments are disjoint and inside the validated views.
        |scratch, seg| unsafe { f(p, seg, spr, scratch) },
    );
}

fn run_acc<A: Math>(p: &Plan) {
    match p.act {
        Act::Silu => run_as::<A, Silu>(p),
        Act::Gelu => run_as::<A, Gelu>(p),
        Act::GeluTanh => run_as::<A, GeluTanh>(p),
    }
}

pub fn run(p: &Plan) -> crate::error::Result<()> {
    match p.acc() {
        DType::F64 => run_acc::<f64>(p),
        _ => run_acc::<f32>(p),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_norm_cdf_is_relatively_accurate_in_both_tails() {
        let mut worst = 0f64;
        // Below the range, the rounding of z² (relative error ~ z²·2⁻²⁴ in e^(−z²)) dominates;
        // there Φ < 1e-19, far below any activation's output scale.
        let mut x = -9.0f32;
        while x < 6.0 {
            let want = (x as f64).norm_cdf();
            worst = worst.max((x.norm_cdf() as f64 - want).abs() / want);
            x += 0.0173;
        }
        assert!(worst < 1e-5, "worst relative error {worst}");
        assert_eq!(0f32.norm_cdf(), 0.5);
        assert!(f32::NAN.norm_cdf().is_nan());
    }
}
