//! AdamW on the CPU (math in `ops::adamw`): chunks of every parameter in parallel. Moments (and the
//! master copy) are read and written in place as the accumulation type; 16-bit parameters and
//! gradients are converted through L1-resident scratch.

use super::{for_each_row, load_row, store_row, Real};
use crate::dtype::DType;
use crate::ops::adamw::{Item, Plan, CHUNK};

/// Elements per inner block (scratch of this size stays in L1).
const BLOCK: usize = 1024;

/// A 32-bit hash of (seed, tensor, element) for stochastic rounding (the SplitMix64 finalizer).
#[inline(always)]
pub(crate) fn sr_bits(seed: u64, item: usize, i: usize) -> u32 {
    let mut z = seed ^ ((item as u64) << 40) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

/// float32 → bfloat16 bits, rounding up with probability equal to the discarded fraction.
#[inline(always)]
pub(crate) fn bf16_stochastic(v: f32, r: u32) -> u16 {
    if v.is_nan() {
        return ((v.to_bits() >> 16) | 0x40) as u16;
    }
    let b = v.to_bits();
    // Adding 16 random bits below the kept ones carries into them with the right probability;
    // ±inf and values that round up to inf behave as in round-to-nearest (the exponent saturates).
    (b.wrapping_add(r & 0xFFFF) >> 16) as u16
}

fn state_slice<'a, A>(ptr: usize, off: usize, n: usize) -> &'a mut [A] {
    // SAFETY: the plan validated `ptr` as a contiguous tensor of A with at least off + n elements;
    // chunks are disjoint, so no two tasks hold the same range.
    unsafe { std::slice::from_raw_parts_mut((ptr as *mut A).add(off), n) }
}

/// # Safety
/// `off + n <= item.numel`; the plan's pointers are valid; this range is updated by no one else.
#[inline(always)]
unsafe fn block<A: Real>(p: &Plan, idx: usize, item: &Item, off: usize, n: usize, sc: &mut (Vec<A>, Vec<A>)) {
    let h = &p.hyper;
    let size = p.dtype.size();
    let param = (item.param as *mut u8).add(off * size);
    // Parameters and gradients stored as A itself (float32/float64) are used in place; 16-bit
    // ones go through the scratch rows.
    let direct = p.dtype == p.state;
    let (pb, gb): (&mut [A], &[A]) = if direct {
        (state_slice::<A>(item.param, off, n), state_slice::<A>(item.grad, off, n))
    } else {
        load_row(p.dtype, (item.grad as *const u8).add(off * size), &mut sc.1[..n]);
        if p.master {
            sc.0[..n].copy_from_slice(state_slice::<A>(item.master, off, n));
        } else {
            load_row(p.dtype, param, &mut sc.0[..n]);
        }
        (&mut sc.0[..n], &sc.1[..n])
    };
    let m = state_slice::<A>(item.m, off, n);
    let v = state_slice::<A>(item.v, off, n);
    let decay = A::from_f64(1.0 - h.lr * h.weight_decay);
    let (b1, b2) = (A::from_f64(h.beta1), A::from_f64(h.beta2));
    let (w1, w2) = (A::ONE - b1, A::ONE - b2);
    let step_size = A::from_f64(h.lr / (1.0 - h.beta1.powf(h.step)));
    let bc2_sqrt = A::from_f64((1.0 - h.beta2.powf(h.step)).sqrt());
    let eps = A::from_f64(h.eps);
    let sign = if h.maximize { A::ZERO - A::ONE } else { A::ONE };
    let vmax = if p.amsgrad { Some(state_slice::<A>(item.vmax, off, n)) } else { None };
    match vmax {
        None => {
            for i in 0..n {
                let g = sign * gb[i];
                m[i] = m[i] + w1 * (g - m[i]);
                v[i] = v[i] * b2 + w2 * g * g;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                pb[i] = pb[i] * decay - step_size * (m[i] / denom);
            }
        }
        Some(vm) => {
            for i in 0..n {
                let g = sign * gb[i];
                m[i] = m[i] + w1 * (g - m[i]);
                v[i] = v[i] * b2 + w2 * g * g;
                vm[i] = if v[i] > vm[i] || v[i] != v[i] { v[i] } else { vm[i] };
                let denom = vm[i].sqrt() / bc2_sqrt + eps;
                pb[i] = pb[i] * decay - step_size * (m[i] / denom);
            }
        }
    }
    if p.master {
        state_slice::<A>(item.master, off, n).copy_from_slice(pb);
    }
    match h.seed {
        _ if direct => {}
        Some(seed) if p.dtype == DType::BF16 && !p.master => {
            let out = std::slice::from_raw_parts_mut(param as *mut u16, n);
            for i in 0..n {
                out[i] = bf16_stochastic(pb[i].to_f64() as f32, sr_bits(seed, idx, off + i));
            }
        }
        _ => store_row(pb, p.dtype, param),
    }
}

/// [`block`] compiled for AVX2 + FMA (8-wide square roots and divisions).
///
/// # Safety
/// As for [`block`], on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_avx2<A: Real>(p: &Plan, idx: usize, item: &Item, off: usize, n: usize, sc: &mut (Vec<A>, Vec<A>)) {
    block::<A>(p, idx, item, off, n, sc)
}

type BlockFn<A> = unsafe fn(&Plan, usize, &Item, usize, usize, &mut (Vec<A>, Vec<A>));

fn run_as<A: Real>(p: &Plan) {
    let f = pick!(block_avx2, block, A, BlockFn<A>);
    // Chunk c of the whole step belongs to the item whose range of chunks holds it.
    let mut first = Vec::with_capacity(p.items.len() + 1);
    let mut total = 0usize;
    for it in &p.items {
        first.push(total);
        total += it.numel.div_ceil(CHUNK);
    }
    for_each_row(
        total,
        CHUNK,
        || (vec![A::ZERO; BLOCK], vec![A::ZERO; BLOCK]),
        |sc, c| {
            let idx = first.partition_point(|&f| f <= c) - 1;
            let item = &p.items[idx];
            let start = (c - first[idx]) * CHUNK;
            let end = (start + CHUNK).min(item.numel);
            let mut off = start;
            while off < end {
                let n = BLOCK.min(end - off);
                // SAFETY: [off, off + n) lies inside this item and this chunk, which no other task touches.
                unsafe { f(p, idx, item, off, n, sc) };
                off += n;
            }
        },
    );
}

by_acc!(
    /// One AdamW step over every parameter of the plan.
    run(Plan) => run_as, state
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_rounding_is_unbiased_and_exact_on_representable_values() {
        // bfloat16 spacing at 1 is 2^-7: x lies 3/4 of the way from 1 to 1 + 2^-7.
        let x = 1.0f32 + 0.75 / 128.0;
        let n = 100_000;
        let mean: f64 =
            (0..n).map(|i| half::bf16::from_bits(bf16_stochastic(x, sr_bits(7, 0, i))).to_f64()).sum::<f64>()
                / n as f64;
        assert!((mean - x as f64).abs() < 2e-5, "mean {mean} vs {x}");
        assert_eq!(bf16_stochastic(1.5, 0xFFFF_FFFF), half::bf16::from_f32(1.5).to_bits());
        assert!(half::bf16::from_bits(bf16_stochastic(f32::NAN, 3)).is_nan());
    }
}
