//! Cross-entropy on the CPU (math in `ops::xent`): rows in parallel; logits stored in the
//! accumulation type are read in place, others converted once into scratch.

use super::{disjoint, for_each_row, load_row, row_max, row_ptr, same_type, store_row, sum, Real};
use crate::ops::xent::{Mode, Plan};

/// # Safety
/// `ptr` holds elements of `A` (the plan's accumulation type) and `i·stride` is inside it.
#[inline(always)]
unsafe fn acc_at<A: Real>(ptr: usize, stride: i64, i: usize) -> *mut A {
    (ptr as *mut A).offset(i as isize * stride as isize)
}

/// # Safety
/// `r < p.rows`; the plan's operands are valid; row `r` of every output is written by no one else.
#[inline(always)]
unsafe fn row<A: Real>(p: &Plan, r: usize, buf: &mut [A], ex: &mut [A]) {
    let v = p.cols;
    let t = *(p.target.0 as *const i32).offset(r as isize * p.target.1 as isize);
    let ignored = t == p.ignore_index;
    let bad = !ignored && (t < 0 || t as usize >= v);
    let xp = row_ptr(&p.x, r);
    // Logits stored as A are read where they are (no copy); others are converted into `buf`.
    let direct = same_type::<A>(p.x.dtype);
    if !direct {
        load_row(p.x.dtype, xp, buf);
    }
    let (eps, z) = (A::from_f64(p.smoothing), A::from_f64(p.z));
    // lse, and 1/Σ exp(x − max) when `ex` holds this row's exp(x − max) (the forward): the
    // gradient's softmax is then ex / Σ, with no second exponential.
    let (lse, inv_sum) = {
        let src: &[A] = if direct { std::slice::from_raw_parts(xp as *const A, v) } else { buf };
        if p.mode == Mode::Bwd {
            (*acc_at::<A>(p.lse.0, p.lse.1, r), None)
        } else {
            // A row of -inf has lse = -inf (and a NaN loss, as in torch); a NaN anywhere (or +inf,
            // through inf − inf) makes its exponential, the sum and lse NaN.
            let m = row_max(src);
            let ms = if m.to_f64() == f64::NEG_INFINITY { A::ZERO } else { m };
            // Exponentials in a plain loop first (a closure with exp inside the summation is not
            // reliably inlined into the AVX2 copy), then the accurate blocked sum.
            for (e, &a) in ex.iter_mut().zip(src.iter()) {
                *e = (a - ms).exp();
            }
            let total = sum(ex);
            let lse = ms + A::from_f64(total.to_f64().ln());
            let loss = if ignored {
                A::ZERO
            } else if bad {
                A::from_f64(f64::NAN)
            } else {
                let sx = if p.smoothing > 0.0 { sum(src) } else { A::ZERO };
                // (1−ε)(lse − x_t) + ε(lse − mean x): differences of nearby values first (exact 0 for V = 1).
                (A::ONE - eps) * (lse - src[t as usize]) + eps * (lse - sx / A::from_usize(v)) + z * lse * lse
            };
            *acc_at::<A>(p.loss.0, p.loss.1, r) = loss;
            *acc_at::<A>(p.lse.0, p.lse.1, r) = lse;
            (lse, Some(A::ONE / total))
        }
    };
    if let Some(grad) = &p.grad {
        let gp = row_ptr(grad, r);
        let g = *acc_at::<A>(p.scale.0, p.scale.1, r);
        let pf = g * (A::ONE + A::from_f64(2.0) * z * lse);
        let off = g * eps / A::from_usize(v);
        // The target's gradient, its softmax term computed as the loops below compute every
        // element's (and before `buf` is overwritten), its whole weight ε/V + (1 − ε) taken at
        // once: a row whose softmax is exactly the target's one-hot (V = 1) gets an exact zero.
        let target = (!(ignored || bad)).then(|| {
            let tu = t as usize;
            let pt = match inv_sum {
                Some(inv) => pf * inv * ex[tu],
                None if direct => pf * (*(xp as *const A).add(tu) - lse).exp(),
                None => pf * (buf[tu] - lse).exp(),
            };
            (tu, pt - g * A::from_f64(p.smoothing / v as f64 + (1.0 - p.smoothing)))
        });
        // The gradient goes straight into its row when it is stored as A and shares no memory
        // with the logits row; otherwise through `buf`.
        let straight =
            direct && same_type::<A>(grad.dtype) && disjoint(gp as usize, xp as usize, v * std::mem::size_of::<A>());
        let out: &mut [A] = if straight { std::slice::from_raw_parts_mut(gp as *mut A, v) } else { &mut *buf };
        match target {
            None => out.iter_mut().for_each(|d| *d = A::ZERO),
            Some((tu, gt)) => {
                if let Some(inv) = inv_sum {
                    let q = pf * inv;
                    for (o, &e) in out.iter_mut().zip(ex.iter()) {
                        *o = q * e - off;
                    }
                } else if direct {
                    let src = std::slice::from_raw_parts(xp as *const A, v);
                    for (o, &a) in out.iter_mut().zip(src) {
                        *o = pf * (a - lse).exp() - off;
                    }
                } else {
                    for o in out.iter_mut() {
                        *o = pf * (*o - lse).exp() - off;
                    }
                }
                out[tu] = gt;
            }
        }
        if !straight {
            store_row(buf, grad.dtype, gp);
        }
    }
}

isa_copies!(row_avx2, row_avx512 = row(p: &Plan, r: usize, buf: &mut [A], ex: &mut [A]));

fn run_as<A: Real>(p: &Plan) {
    // SAFETY: the plan validated both as 1-element vectors of the accumulation dtype.
    if p.skip != 0 && unsafe { *acc_at::<A>(p.skip, 0, 0) == *acc_at::<A>(p.scale.0, 0, 0) } {
        return;
    }
    let f = pick!(row_avx2, row_avx512, row, <A>, unsafe fn(&Plan, usize, &mut [A], &mut [A]));
    let v = p.cols;
    for_each_row(
        p.rows,
        v,
        || (vec![A::ZERO; v], vec![A::ZERO; v]),
        // SAFETY: rows are disjoint and inside the validated views.
        |(buf, ex), r| unsafe { f(p, r, buf, ex) },
    );
}

by_acc!(
    /// Loss, lse and/or gradient of every row.
    run(Plan) => run_as, x.dtype
);
