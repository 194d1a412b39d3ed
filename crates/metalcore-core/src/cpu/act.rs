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

/// The accumulation types, with the standard normal distribution.
pub(crate) trait Math: Real {
    /// `(Φ(x), φ(x))`: the CDF, ½·erfc(−x/√2), and the density, e^(−x²/2)/√(2π).
    fn cdf_pdf(self) -> (Self, Self);
}

/// The float32 erfc fit: `erfc(z) ≈ t·P(t)·e^(−z²)` for z ≥ 0 with `t = 1/(1 + ERFC_A·z)` and P
/// of degree 8 (coefficients from t⁰ up). P fits `erfcx(z)/t` on t ∈ [1/(1 + 10·ERFC_A), 1] with
/// relative error below 2e-8 (weighted least squares, iterated towards minimax, in float64 against
/// mpmath), so erfc stays relatively accurate in the tail, where the Abramowitz–Stegun fits of
/// the same form do not. `P(0) = ERFC_A/√π` and `P(1) = 1` hold to the fit's accuracy.
const ERFC_A: f32 = 0.38;
const ERFC_P: [f32; 9] = [
    0.214_410_93,
    0.213_919_79,
    0.203_903_67,
    0.138_659_93,
    0.230_005_57,
    -0.161_435_98,
    0.363_845,
    -0.262_274_7,
    0.058_965_833,
];

impl Math for f32 {
    /// The fit above. The factor e^(−z²) is the density's own, so the derivative of GELU costs
    /// one multiply more than its value (the Chebyshev fit of *Numerical Recipes* §6.2 that this
    /// replaced puts the polynomial inside the exponent: the density then took a second exp, and
    /// exact GELU's forward ran at 0.87 ns per element in L1 on one core of the 2-core EPYC, against
    /// SiLU's 0.44; with this fit it runs at 0.6).
    #[inline(always)]
    fn cdf_pdf(self) -> (f32, f32) {
        let z = self * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / ERFC_A.mul_add(z.abs(), 1.0);
        // Horner's rule written out (a loop over the array keeps the caller from vectorizing).
        let c = ERFC_P;
        let mut p = c[8].mul_add(t, c[7]);
        p = p.mul_add(t, c[6]);
        p = p.mul_add(t, c[5]);
        p = p.mul_add(t, c[4]);
        p = p.mul_add(t, c[3]);
        p = p.mul_add(t, c[2]);
        p = p.mul_add(t, c[1]);
        p = p.mul_add(t, c[0]);
        let e = exp_f32(-(z * z));
        // ½·erfc(|z|), the smaller tail; Φ(x) is it for x < 0 and its complement otherwise.
        let q = 0.5 * t * p * e;
        (if self < 0.0 { q } else { 1.0 - q }, e * INV_SQRT_2PI as f32)
    }
}

impl Math for f64 {
    #[inline(always)]
    fn cdf_pdf(self) -> (f64, f64) {
        (0.5 * libm::erfc(-self * std::f64::consts::FRAC_1_SQRT_2), (-0.5 * self * self).exp() * INV_SQRT_2PI)
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
        let (p, d) = x.cdf_pdf();
        (x * p, p + x * d)
    }
}

impl Kind for GeluTanh {
    #[inline(always)]
    fn val_der<A: Math>(x: A) -> (A, A) {
        let k = A::from_f64(2.0 * SQRT_2_OVER_PI);
        let x2 = x * x;
        let (s, c) = sigmoid(k * (x + A::from_f64(KAPPA) * x2 * x));
        // The derivative's second term vanishes past |x| = 20 (c or s is 0 there), but x² overflows
        // float32 before x does, which made it ∞·0 = NaN for |x| > 1.8e19: it takes x clamped to
        // ±20, and (x − x), 0 for finite x, keeps float64's NaN at ±∞ (NaN passes the clamp).
        let (lo, hi) = (A::from_f64(-20.0), A::from_f64(20.0));
        let t = if x < lo {
            lo
        } else if x > hi {
            hi
        } else {
            x
        };
        let der = s + t * s * c * k * (A::ONE + A::from_f64(3.0 * KAPPA) * t * t) + (x - x);
        (x * s, der)
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
    if matches!(dt, DType::BF16 | DType::F16) && std::mem::size_of::<A>() == 4 && p.bias.is_none() {
        // bfloat16 converted in the same loop (a shift in, a rounding out), float16 converted on
        // the way in (`F16`): no scratch passes for the inputs.
        let io = |m: &Mat| at(m) as usize;
        let ins: [usize; 3] = std::array::from_fn(|i| p.ins.get(i).map_or(0, io));
        let outs: [usize; 2] = std::array::from_fn(|i| p.outs.get(i).map_or(0, io));
        let bytes = 2 * len;
        let apart = |a: usize, b: usize| a == 0 || b == 0 || disjoint(a, b, bytes);
        if outs.iter().all(|&o| ins.iter().all(|&i| apart(o, i))) && apart(outs[0], outs[1]) {
            let ins = ins.map(|a| a as *const u16);
            if dt == DType::F16 {
                return through_scratch::<A, K, F16>(p.mode, dt, ins, outs, len, scratch);
            }
            #[cfg(target_arch = "x86_64")]
            if super::has_avx512_bf16() {
                return through_scratch::<A, K, Bf16>(p.mode, dt, ins, outs, len, scratch);
            }
            return loops::<f32, K, Bf16, Bf16>(p.mode, ins, outs.map(|a| a as *mut u16), len);
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
    loops::<A, K, Same, Same>(p.mode, ins, [o0, o1], len);
    if p.mode == Mode::GluBwd && !d1 {
        store_row(&s4[..len], dt, at(&p.outs[1]));
    }
    if !d0 {
        store_row(&s3[..len], dt, at(&p.outs[0]));
    }
}

/// The element loops on 16-bit inputs read as `I` says, with their float32 results through the
/// scratch rows (L1), converted by `store_row` (in hardware: F16C for float16, 32 at a time by
/// AVX512-BF16 for bfloat16) into the outputs of `dt`.
///
/// # Safety
/// As for [`loops`], the outputs `outs` holding `len` elements of `dt`; A is f32 and every
/// scratch row holds at least `len` values.
#[inline(always)]
unsafe fn through_scratch<A: Math, K: Kind, I: Codec<f32, T = u16>>(
    mode: Mode,
    dt: DType,
    ins: [*const u16; 3],
    outs: [usize; 2],
    len: usize,
    scratch: &mut Scratch<A>,
) {
    let [_, _, _, s3, s4] = scratch;
    let f = |s: &mut Vec<A>| s.as_mut_ptr() as *mut f32;
    loops::<f32, K, I, Same>(mode, ins, [f(s3), f(s4)], len);
    store_row(&s3[..len], dt, outs[0] as *mut u8);
    if mode == Mode::GluBwd {
        store_row(&s4[..len], dt, outs[1] as *mut u8);
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

/// float16 elements computed in float32 ([`f16_bits_to_f32`] in; out by the half crate, one at a
/// time: the loops here write their float16 results through scratch and `store_row` instead).
#[derive(Clone, Copy)]
struct F16;

impl Codec<f32> for F16 {
    type T = u16;
    #[inline(always)]
    fn get(v: u16) -> f32 {
        f16_bits_to_f32(v)
    }
    #[inline(always)]
    fn put(v: f32) -> u16 {
        half::f16::from_f32(v).to_bits()
    }
}

/// float16 bits → float32, exactly, by integer and float operations that vectorize (no F16C
/// needed): the magnitude's bits moved into a float32's place and scaled by 2^112 (the biases'
/// difference; exact for normals and subnormals alike), the all-ones exponent of infinities and
/// NaNs set directly, then the sign.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let mag = (h & 0x7fff) << 13;
    let v = f32::from_bits(mag) * f32::from_bits(0x7780_0000);
    let v = if mag >= 0x0f80_0000 { f32::from_bits(mag | 0x7f80_0000) } else { v };
    f32::from_bits(v.to_bits() | ((h & 0x8000) << 16))
}

/// The element loops of every mode over `len` elements: inputs (x, then up or the output
/// gradient, then the output gradient of a GLU), stored as `I` describes, and outputs (one, or two
/// for `GluBwd`), stored as `O` describes.
///
/// # Safety
/// The pointers the mode uses address `len` elements; outputs overlap no input and each other.
#[inline(always)]
unsafe fn loops<A: Math, K: Kind, I: Codec<A>, O: Codec<A>>(
    mode: Mode,
    ins: [*const I::T; 3],
    outs: [*mut O::T; 2],
    len: usize,
) {
    let view = |i: usize| std::slice::from_raw_parts(ins[i], len);
    let o0 = std::slice::from_raw_parts_mut(outs[0], len);
    // Zipped slices: the loops vectorize with no aliasing checks.
    match mode {
        Mode::Fwd => {
            for (o, x) in o0.iter_mut().zip(view(0)) {
                *o = O::put(K::val_der(I::get(*x)).0);
            }
        }
        Mode::Bwd => {
            for ((o, x), g) in o0.iter_mut().zip(view(0)).zip(view(1)) {
                *o = O::put(I::get(*g) * K::val_der(I::get(*x)).1);
            }
        }
        Mode::GluFwd => {
            for ((o, x), u) in o0.iter_mut().zip(view(0)).zip(view(1)) {
                *o = O::put(K::val_der(I::get(*x)).0 * I::get(*u));
            }
        }
        Mode::GluBwd => {
            let o1 = std::slice::from_raw_parts_mut(outs[1], len);
            for ((((o, o1), x), u), g) in o0.iter_mut().zip(o1.iter_mut()).zip(view(0)).zip(view(1)).zip(view(2)) {
                let (f, d) = K::val_der(I::get(*x));
                let (g, u) = (I::get(*g), I::get(*u));
                *o = O::put(g * u * d);
                *o1 = O::put(g * f);
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
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn segment_avx2<A: Math, K: Kind>(p: &Plan, seg: usize, spr: usize, scratch: &mut Scratch<A>) {
    segment::<A, K>(p, seg, spr, scratch)
}

/// [`segment`] compiled for AVX-512 ([`super::has_avx512`]).
///
/// # Safety
/// As for [`segment`], on a CPU with AVX-512 F/VL/BW/DQ, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq")]
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
    fn f16_bits_convert_exactly() {
        for h in 0..=u16::MAX {
            let (got, want) = (f16_bits_to_f32(h), half::f16::from_bits(h).to_f32());
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#x}: {got} vs {want}");
        }
    }

    #[test]
    fn f32_cdf_and_pdf_are_relatively_accurate_in_both_tails() {
        let (mut worst_cdf, mut worst_pdf) = (0f64, 0f64);
        // Below the range, the rounding of z² (relative error ~ z²·2⁻²⁴ in e^(−z²)) dominates;
        // there Φ < 1e-19, far below any activation's output scale.
        let mut x = -9.0f32;
        while x < 9.0 {
            let (want_cdf, want_pdf) = (x as f64).cdf_pdf();
            let (cdf, pdf) = x.cdf_pdf();
            worst_cdf = worst_cdf.max((cdf as f64 - want_cdf).abs() / want_cdf);
            worst_pdf = worst_pdf.max((pdf as f64 - want_pdf).abs() / want_pdf);
            x += 0.0013;
        }
        assert!(worst_cdf < 1e-5, "worst relative error of the CDF {worst_cdf}");
        assert!(worst_pdf < 1e-5, "worst relative error of the density {worst_pdf}");
        // Near 0, where t ≈ 1 and the fit's alternating terms cancel most.
        for x in [-1e-3f32, -1e-6, 1e-6, 1e-3, 0.3] {
            let (want, _) = (x as f64).cdf_pdf();
            assert!(((x.cdf_pdf().0 as f64 - want) / want).abs() < 3e-7, "Φ({x})");
        }
        assert!((0f32.cdf_pdf().0 - 0.5).abs() <= f32::EPSILON / 4.0);
        assert_eq!((f32::NEG_INFINITY.cdf_pdf(), f32::INFINITY.cdf_pdf()), ((0.0, 0.0), (1.0, 0.0)));
        assert!(f32::NAN.cdf_pdf().0.is_nan() && f32::NAN.cdf_pdf().1.is_nan());
    }
}
