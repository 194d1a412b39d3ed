//! Cross-entropy on the CPU (math in `ops::xent`): rows in parallel, each loaded once into scratch
//! of the accumulation type.

use super::{for_each_row, load_row, row_ptr, store_row, sum, Real};
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
    load_row(p.x.dtype, row_ptr(&p.x, r), buf);
    let (eps, z) = (A::from_f64(p.smoothing), A::from_f64(p.z));
    let lse = if p.mode == Mode::Bwd {
        *acc_at::<A>(p.lse.0, p.lse.1, r)
    } else {
        let mut m = buf[0];
        let mut nan = false;
        for &a in buf.iter() {
            m = if a > m { a } else { m };
            nan |= a != a;
        }
        let lse = if nan {
            A::from_f64(f64::NAN)
        } else {
            // A row of -inf has lse = -inf (and a NaN loss, as in torch).
            let ms = if m.to_f64() == f64::NEG_INFINITY { A::ZERO } else { m };
            // Exponentials in a plain loop first (a closure with exp inside the summation is not
            // reliably inlined into the AVX2 copy), then the accurate blocked sum.
            for (e, &a) in ex.iter_mut().zip(buf.iter()) {
                *e = (a - ms).exp();
            }
            let s = sum(ex);
            ms + A::from_f64(s.to_f64().ln())
        };
        let loss = if ignored {
            A::ZERO
        } else if bad {
            A::from_f64(f64::NAN)
        } else {
            let sx = if p.smoothing > 0.0 { sum(buf) } else { A::ZERO };
            // (1−ε)(lse − x_t) + ε(lse − mean x): differences of nearby values first (exact 0 for V = 1).
            (A::ONE - eps) * (lse - buf[t as usize]) + eps * (lse - sx / A::from_usize(v)) + z * lse * lse
        };
        *acc_at::<A>(p.loss.0, p.loss.1, r) = loss;
        *acc_at::<A>(p.lse.0, p.lse.1, r) = lse;
        lse
    };
    if let Some(grad) = &p.grad {
        if ignored || bad {
            buf.iter_mut().for_each(|d| *d = A::ZERO);
        } else {
            let g = *acc_at::<A>(p.scale.0, p.scale.1, r);
            let pf = g * (A::ONE + A::from_f64(2.0) * z * lse);
            let off = g * eps / A::from_usize(v);
            for i in 0..v {
                buf[i] = pf * (buf[i] - lse).exp() - off;
            }
            buf[t as usize] = buf[t as usize] - g * (A::ONE - eps);
        }
        store_row(buf, grad.dtype, row_ptr(grad, r));
    }
}

isa_copies!(row_avx2 = row(p: &Plan, r: usize, buf: &mut [A], ex: &mut [A]));

fn run_as<A: Real>(p: &Plan) {
    // SAFETY: the plan validated both as 1-element vectors of the accumulation dtype.
    if p.skip != 0 && unsafe { *acc_at::<A>(p.skip, 0, 0) == *acc_at::<A>(p.scale.0, 0, 0) } {
        return;
    }
    let f = pick!(row_avx2, row, A, unsafe fn(&Plan, usize, &mut [A], &mut [A]));
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
