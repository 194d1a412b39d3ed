//! RMSNorm and LayerNorm on the CPU (math in `ops::norm`). Rows run in parallel; a row stored in
//! the accumulation type is read (and its result written) in place, others are converted through a
//! scratch row, so every pass after the first read stays in L1.

#[cfg(target_arch = "x86_64")]
use super::rowsum;
use super::{
    dot, f32_avx2, fill_prefetching, for_each_row, lane_sum, load_row, min_rows, next_row, round_to, row_ptr,
    same_type, store_row, sum, write_out, Real,
};
use crate::dtype::DType;
use crate::ops::norm::{BwdPlan, FwdPlan, NormKind};
use crate::ops::Mat;

by_acc!(fwd(FwdPlan) => fwd_impl, acc);

by_acc!(bwd(BwdPlan) => bwd_impl, acc);

/// Loads a parameter vector once as `v + offset` in the accumulation type.
fn param_plus<A: Real>(w: Option<Mat>, cols: usize, offset: f64) -> Option<Vec<A>> {
    w.map(|w| {
        let mut v = vec![A::ZERO; cols];
        // SAFETY: `w` was validated as a contiguous vector of `cols` elements.
        unsafe { load_row(w.dtype, w.ptr as *const u8, &mut v) };
        let off = A::from_f64(offset);
        v.iter_mut().for_each(|x| *x += off);
        v
    })
}

/// What every forward row needs, prepared once per call.
struct FwdCtx<'a, A> {
    p: &'a FwdPlan,
    /// `w + offset` (ones without a weight) and the bias (zeros without one).
    w: Vec<A>,
    b: Vec<A>,
    layer: bool,
    eps: A,
    inv_n: A,
}

/// One forward row; `buf`, `tmp` are scratch rows. Inlined into the per-ISA copies below.
///
/// # Safety
/// `row < p.rows`; the plan's pointers are valid for its shapes and this row's outputs are written
/// by no one else.
#[inline(always)]
unsafe fn fwd_row<A: Real>(c: &FwdCtx<'_, A>, row: usize, buf: &mut [A], tmp: &mut [A]) {
    let p = c.p;
    let n = buf.len();
    // x is read where it is when stored as A (and no residual is added), and y written there
    // too: the row then streams through memory once each way, with no copies through scratch.
    let mut first_sum = None;
    let xs: &[A] = if p.residual.is_none() && same_type::<A>(p.x.dtype) {
        std::slice::from_raw_parts(row_ptr(&p.x, row) as *const A, n)
    } else if let Some(total) = load_half_summing(c, row, buf) {
        first_sum = Some(total);
        buf
    } else {
        load_row(p.x.dtype, row_ptr(&p.x, row), buf);
        if let (Some(res), Some(res_out)) = (p.residual, p.residual_out) {
            load_row(res.dtype, row_ptr(&res, row), tmp);
            buf.iter_mut().zip(tmp.iter()).for_each(|(a, b)| *a += *b);
            round_to(p.x.dtype, buf);
            store_row(buf, res_out.dtype, row_ptr(&res_out, row));
        }
        buf
    };
    let (mu, ss) = moments(c.layer, xs, c.inv_n, first_sum);
    let r = A::ONE / (ss * c.inv_n + c.eps).sqrt();
    if let Some(rstd) = p.rstd {
        r.store(p.acc, rstd as *mut u8, row);
    }
    if let Some(mean) = p.mean {
        mu.store(p.acc, mean as *mut u8, row);
    }
    // The row is built in L1 scratch while the next row's x is prefetched, then streamed out.
    let next = next_row(&p.x, row, p.rows);
    let (w, b): (&[A], &[A]) = (&c.w, &c.b);
    let yp = row_ptr(&p.y, row);
    #[cfg(target_arch = "x86_64")]
    if !p.cast_before_weight && p.y.dtype == DType::F32 && f32_avx2::<A>() {
        // Straight to y, streamed (A is f32 and the CPU has AVX2: `f32_avx2`).
        let f = |v: &[A]| std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len());
        let (mu, r) = (mu.to_f64() as f32, r.to_f64() as f32);
        return rowsum::norm_out_f32(f(xs), f(w), f(b), mu, r, yp as *mut f32, &[next]);
    }
    #[cfg(target_arch = "x86_64")]
    if !p.cast_before_weight && p.y.dtype == DType::F16 && f32_avx2::<A>() {
        // Straight to y through F16C, as above (the same rounding as `store_row`'s).
        let f = |v: &[A]| std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len());
        let (mu, r) = (mu.to_f64() as f32, r.to_f64() as f32);
        return rowsum::norm_out_f16(f(xs), f(w), f(b), mu, r, yp as *mut u16, &[next]);
    }
    if p.cast_before_weight {
        fill_prefetching(tmp, &[next], |i| (*xs.get_unchecked(i) - mu) * r);
        round_to(p.x.dtype, tmp);
        tmp.iter_mut().zip(w.iter().zip(b)).for_each(|(v, (w, b))| *v = *v * *w + *b);
    } else {
        fill_prefetching(tmp, &[next], |i| (*xs.get_unchecked(i) - mu) * r * *w.get_unchecked(i) + *b.get_unchecked(i));
    }
    if same_type::<A>(p.y.dtype) {
        write_out(yp as *mut A, tmp);
    } else {
        store_row(tmp, p.y.dtype, yp);
    }
}

isa_copies!(fwd_row_avx2 = fwd_row(c: &FwdCtx<'_, A>, row: usize, buf: &mut [A], tmp: &mut [A]));

/// A LayerNorm row of bfloat16 or float16 x (no residual) converted into `buf` by the pass that
/// also takes its sum, which it returns; `None` (nothing done) for any other row or CPU.
///
/// # Safety
/// As for [`fwd_row`].
#[inline(always)]
unsafe fn load_half_summing<A: Real>(c: &FwdCtx<'_, A>, row: usize, buf: &mut [A]) -> Option<f64> {
    let p = c.p;
    if !(c.layer && p.residual.is_none() && matches!(p.x.dtype, DType::BF16 | DType::F16) && f32_avx2::<A>()) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (of the cast): A is f32 (`f32_avx2`).
        let out = std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut f32, buf.len());
        let src = row_ptr(&p.x, row) as *const u16;
        return Some(if p.x.dtype == DType::BF16 {
            rowsum::load_half_sum::<{ rowsum::STORE_BF16 }>(src, out)
        } else {
            rowsum::load_half_sum::<{ rowsum::STORE_F16 }>(src, out)
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// A row's mean (LayerNorm; 0 for RMSNorm) and its sum of squared deviations from it;
/// `first_sum` is `Σ x` when a fused load already took it.
#[inline(always)]
fn moments<A: Real>(layer: bool, xs: &[A], inv_n: A, first_sum: Option<f64>) -> (A, A) {
    #[cfg(target_arch = "x86_64")]
    if f32_avx2::<A>() {
        // SAFETY: A is f32 and the CPU has AVX2 and FMA (`f32_avx2`).
        unsafe {
            let x = std::slice::from_raw_parts(xs.as_ptr() as *const f32, xs.len());
            let mu = if layer {
                (first_sum.unwrap_or_else(|| rowsum::deviations_f32::<false>(x, 0.0)) * inv_n.to_f64()) as f32
            } else {
                0.0
            };
            return (A::from_f64(mu as f64), A::from_f64(rowsum::deviations_f32::<true>(x, mu)));
        }
    }
    let _ = first_sum;
    if layer {
        let mu = sum(xs) * inv_n;
        (
            mu,
            lane_sum(xs.len(), |i| {
                // SAFETY: i < xs.len().
                let d = unsafe { *xs.get_unchecked(i) } - mu;
                d * d
            }),
        )
    } else {
        (A::ZERO, dot(xs, xs))
    }
}

fn fwd_impl<A: Real>(p: &FwdPlan) {
    let n = p.cols;
    let c = FwdCtx {
        p,
        w: param_plus::<A>(p.weight, n, p.offset).unwrap_or_else(|| vec![A::ONE; n]),
        b: param_plus::<A>(p.bias, n, 0.0).unwrap_or_else(|| vec![A::ZERO; n]),
        layer: p.kind == NormKind::Layer,
        eps: A::from_f64(p.eps),
        inv_n: A::ONE / A::from_usize(n),
    };
    let row_fn = pick!(fwd_row_avx2, fwd_row, A, unsafe fn(&FwdCtx<'_, A>, usize, &mut [A], &mut [A]));
    for_each_row(
        p.rows,
        n,
        || (vec![A::ZERO; n], vec![A::ZERO; n]),
        // SAFETY: every row pointer is inside its validated `rows × cols` view; rows are disjoint,
        // so each output row is written by exactly one task.
        |(buf, tmp), row| unsafe { row_fn(&c, row, buf, tmp) },
    );
}

/// What every backward row needs, prepared once per call.
struct BwdCtx<'a, A> {
    p: &'a BwdPlan,
    /// `w + offset`, ones without a weight.
    w: Vec<A>,
    layer: bool,
    inv_n: A,
}

/// Scratch rows of one backward task, and its dw / db partial sums.
struct BwdScratch<A> {
    xh: Vec<A>,
    g: Vec<A>,
    dy: Vec<A>,
    tmp: Vec<A>,
    dw: Vec<A>,
    db: Vec<A>,
}

/// One backward row, accumulating into the task's partials.
///
/// # Safety
/// As for [`fwd_row`]; `rstd` (and `mean`) hold `rows` elements of the accumulation dtype.
#[inline(always)]
unsafe fn bwd_row<A: Real>(c: &BwdCtx<'_, A>, row: usize, s: &mut BwdScratch<A>) {
    let p = c.p;
    let n = s.xh.len();
    let r = A::load(p.acc, p.rstd as *const u8, row);
    let mu = p.mean.map_or(A::ZERO, |m| A::load(p.acc, m as *const u8, row));
    #[cfg(target_arch = "x86_64")]
    if !p.cast_before_weight && f32_avx2::<A>() {
        return bwd_row_f32(c, row, s, mu, r);
    }
    // Inputs stored as A are read where they are (as in `fwd_row`).
    if same_type::<A>(p.x.dtype) {
        let x = std::slice::from_raw_parts(row_ptr(&p.x, row) as *const A, n);
        s.xh.iter_mut().zip(x).for_each(|(v, x)| *v = (*x - mu) * r); // x̂
    } else {
        load_row(p.x.dtype, row_ptr(&p.x, row), &mut s.xh);
        s.xh.iter_mut().for_each(|v| *v = (*v - mu) * r); // x̂
    }
    let dy: &[A] = if same_type::<A>(p.dy.dtype) {
        std::slice::from_raw_parts(row_ptr(&p.dy, row) as *const A, n)
    } else {
        load_row(p.dy.dtype, row_ptr(&p.dy, row), &mut s.dy);
        &s.dy
    };
    s.g.iter_mut().zip(dy.iter().zip(&c.w)).for_each(|(g, (d, w))| *g = *d * *w);
    let mean_gx = dot(&s.g, &s.xh) * c.inv_n;
    let mean_g = if c.layer { sum(&s.g) * c.inv_n } else { A::ZERO };
    if !s.db.is_empty() {
        s.db.iter_mut().zip(dy.iter()).for_each(|(acc, d)| *acc += *d);
    }
    if !s.dw.is_empty() {
        if p.cast_before_weight {
            s.tmp.copy_from_slice(&s.xh);
            round_to(p.x.dtype, &mut s.tmp);
            s.dw.iter_mut().zip(dy.iter().zip(s.tmp.iter())).for_each(|(acc, (d, t))| *acc += *d * *t);
        } else {
            s.dw.iter_mut().zip(dy.iter().zip(s.xh.iter())).for_each(|(acc, (d, t))| *acc += *d * *t);
        }
    }
    finish_dx(c, row, s, r, mean_g, mean_gx);
}

/// [`bwd_row`] for float32 accumulation on AVX2 + FMA: x̂, g and the row's sums in one fused pass
/// ([`rowsum::norm_bwd_pass`]), then dx as in the generic form.
///
/// # Safety
/// As for [`bwd_row`]; A is f32, the CPU has AVX2 and FMA, and the weight is applied in float32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bwd_row_f32<A: Real>(c: &BwdCtx<'_, A>, row: usize, s: &mut BwdScratch<A>, mu: A, r: A) {
    let p = c.p;
    let f = |v: &[A]| std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len());
    let f_mut = |v: &mut [A]| std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut f32, v.len());
    // x and dy where they are when stored as float32, or as a pair of bfloat16 or of float16 rows
    // (converted inside the pass); any other pair of dtypes is converted into scratch first (x
    // into `tmp`, which the pass does not write).
    let half = (p.x.dtype == p.dy.dtype && matches!(p.x.dtype, DType::BF16 | DType::F16)).then_some(p.x.dtype);
    let src = |m: &Mat, scratch: &mut Vec<A>| {
        if half.is_some() || same_type::<A>(m.dtype) {
            row_ptr(m, row) as *const u8
        } else {
            load_row(m.dtype, row_ptr(m, row), scratch);
            scratch.as_ptr() as *const u8
        }
    };
    let (x, dy) = (src(&p.x, &mut s.tmp), src(&p.dy, &mut s.dy));
    let (w, xh, g, dw, db) = (f(&c.w), f_mut(&mut s.xh), f_mut(&mut s.g), f_mut(&mut s.dw), f_mut(&mut s.db));
    let (mu, r32) = (mu.to_f64() as f32, r.to_f64() as f32);
    macro_rules! pass {
        ($bf:expr) => {
            match (dw.is_empty(), db.is_empty()) {
                (false, false) => rowsum::norm_bwd_pass::<$bf, true, true>(x, dy, w, mu, r32, xh, g, dw, db),
                (false, true) => rowsum::norm_bwd_pass::<$bf, true, false>(x, dy, w, mu, r32, xh, g, dw, db),
                (true, false) => rowsum::norm_bwd_pass::<$bf, false, true>(x, dy, w, mu, r32, xh, g, dw, db),
                (true, true) => rowsum::norm_bwd_pass::<$bf, false, false>(x, dy, w, mu, r32, xh, g, dw, db),
            }
        };
    }
    let (sum_gx, sum_g) = match half {
        Some(DType::BF16) => pass!({ rowsum::STORE_BF16 }),
        Some(_) => pass!({ rowsum::STORE_F16 }),
        None => pass!({ rowsum::STORE_F32 }),
    };
    let mean_g = if c.layer { A::from_f64(sum_g) * c.inv_n } else { A::ZERO };
    finish_dx(c, row, s, r, mean_g, A::from_f64(sum_gx) * c.inv_n);
}

/// The rest of a backward row once `s.xh` and `s.g` hold x̂ and dy·w: dx = r·(g − mean(g) −
/// x̂·mean(g·x̂)) (+ the residual branch's gradient), built in `s.dy` and stored.
///
/// # Safety
/// As for [`bwd_row`].
#[inline(always)]
unsafe fn finish_dx<A: Real>(c: &BwdCtx<'_, A>, row: usize, s: &mut BwdScratch<A>, r: A, mean_g: A, mean_gx: A) {
    let p = c.p;
    let n = s.xh.len();
    let dres: Option<&[A]> = p.d_residual_out.map(|dres| {
        if same_type::<A>(dres.dtype) {
            std::slice::from_raw_parts(row_ptr(&dres, row) as *const A, n)
        } else {
            load_row(dres.dtype, row_ptr(&dres, row), &mut s.tmp);
            &s.tmp[..]
        }
    });
    // dx is built in scratch while the next row's x and dy are prefetched, then streamed out.
    let next = [next_row(&p.x, row, p.rows), next_row(&p.dy, row, p.rows)];
    let dxp = row_ptr(&p.dx, row);
    #[cfg(target_arch = "x86_64")]
    if dres.is_none() && p.dx.dtype == DType::F32 && f32_avx2::<A>() {
        // Straight to dx, streamed (A is f32 and the CPU has AVX2: `f32_avx2`).
        let f = |v: &[A]| std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len());
        let k = |v: A| v.to_f64() as f32;
        return rowsum::norm_dx_f32(f(&s.g), f(&s.xh), k(r), k(mean_g), k(mean_gx), dxp as *mut f32, &next);
    }
    // Slices bound before the closure: read through `s` there, the vectors' buffer pointers were
    // reloaded at every element (the store to dx might alias them) and the loop ran scalar.
    let (g, xh, dx): (&[A], &[A], &mut [A]) = (&s.g, &s.xh, &mut s.dy);
    fill_prefetching(dx, &next, |i| r * (*g.get_unchecked(i) - mean_g - *xh.get_unchecked(i) * mean_gx));
    if let Some(d) = dres {
        dx.iter_mut().zip(d).for_each(|(o, d)| *o += *d);
    }
    if same_type::<A>(p.dx.dtype) {
        write_out(dxp as *mut A, dx);
    } else {
        store_row(dx, p.dx.dtype, dxp);
    }
}

isa_copies!(bwd_row_avx2 = bwd_row(c: &BwdCtx<'_, A>, row: usize, s: &mut BwdScratch<A>));

fn bwd_impl<A: Real>(p: &BwdPlan) {
    let n = p.cols;
    let c = BwdCtx {
        p,
        w: param_plus::<A>(p.weight, n, p.offset).unwrap_or_else(|| vec![A::ONE; n]),
        layer: p.kind == NormKind::Layer,
        inv_n: A::ONE / A::from_usize(n.max(1)),
    };
    let row_fn = pick!(bwd_row_avx2, bwd_row, A, unsafe fn(&BwdCtx<'_, A>, usize, &mut BwdScratch<A>));
    // Split rows into a few chunks per thread; each chunk sums its own dw / db partials, which
    // are then added in chunk order (the same result whichever thread ran which chunk).
    let chunks = (super::pool::threads() * 4).min(p.rows.div_ceil(min_rows(n))).max(1);
    let per = p.rows.div_ceil(chunks).max(1);
    let done = std::sync::Mutex::new(Vec::with_capacity(chunks));
    super::pool::for_each_init(
        chunks,
        1,
        || (),
        |_, k| {
            let zeros = |on: bool| if on { vec![A::ZERO; n] } else { Vec::new() };
            let mut s = BwdScratch {
                xh: zeros(true),
                g: zeros(true),
                dy: zeros(true),
                tmp: zeros(true),
                dw: zeros(p.dw.is_some()),
                db: zeros(p.db.is_some()),
            };
            for row in (k * per)..((k + 1) * per).min(p.rows) {
                // SAFETY: as in `fwd_impl`; each task writes only its own rows of dx.
                unsafe { row_fn(&c, row, &mut s) };
            }
            done.lock().unwrap_or_else(|e| e.into_inner()).push((k, s.dw, s.db));
        },
    );
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|t| t.0);
    let partials: Vec<(Vec<A>, Vec<A>)> = done.into_iter().map(|(_, dw, db)| (dw, db)).collect();
    let reduce = |out: Option<Mat>, pick: fn(&(Vec<A>, Vec<A>)) -> &Vec<A>| {
        if let Some(out) = out {
            let mut total = vec![A::ZERO; n];
            for part in &partials {
                total.iter_mut().zip(pick(part)).for_each(|(t, v)| *t += *v);
            }
            // SAFETY: `out` was validated as a contiguous vector of `cols` elements.
            unsafe { store_row(&total, out.dtype, out.ptr as *mut u8) };
        }
    };
    reduce(p.dw, |t| &t.0);
    reduce(p.db, |t| &t.1);
}
