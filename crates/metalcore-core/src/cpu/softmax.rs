//! Softmax on the CPU (math in `ops::softmax`): rows in parallel, read and written in place when
//! stored in the accumulation type, else converted through a scratch row.

#[cfg(target_arch = "x86_64")]
use super::rowsum;
use super::{
    disjoint, dot, fill_prefetching, for_each_row, load_row, next_row, row_max, row_ptr, same_type, store_row, sum,
    write_out, Real,
};
use crate::ops::softmax::{BwdPlan, FwdPlan};

by_acc!(fwd(FwdPlan) => fwd_impl, acc);

by_acc!(bwd(BwdPlan) => bwd_impl, acc);

/// # Safety
/// `row < p.rows`; the plan's pointers are valid for its shapes; this row of `y` is written by no one else.
#[inline(always)]
unsafe fn fwd_row<A: Real>(p: &FwdPlan, row: usize, buf: &mut [A]) {
    let n = buf.len();
    if same_type::<A>(p.x.dtype) && same_type::<A>(p.y.dtype) && !overlap(&p.x, &p.y, row, n) {
        // Read x where it is, build the row in L1 scratch while the next row's x is prefetched,
        // and stream the result to y without reading y's lines first.
        let x = std::slice::from_raw_parts(row_ptr(&p.x, row) as *const A, n);
        let m = row_max(x);
        fill_prefetching(buf, &[next_row(&p.x, row, p.rows)], |i| (*x.get_unchecked(i) - m).exp());
        let inv = A::ONE / row_sum(buf);
        #[cfg(target_arch = "x86_64")]
        if super::f32_avx2::<A>() {
            // SAFETY (of the cast): A is f32 (`f32_avx2`).
            let b = std::slice::from_raw_parts(buf.as_ptr() as *const f32, n);
            return rowsum::scale_out_f32(b, inv.to_f64() as f32, row_ptr(&p.y, row) as *mut f32);
        }
        buf.iter_mut().for_each(|v| *v = *v * inv);
        write_out(row_ptr(&p.y, row) as *mut A, buf);
        return;
    }
    load_row(p.x.dtype, row_ptr(&p.x, row), buf);
    let m = row_max(buf);
    buf.iter_mut().for_each(|v| *v = (*v - m).exp());
    let inv = A::ONE / row_sum(buf);
    buf.iter_mut().for_each(|v| *v = *v * inv);
    store_row(buf, p.y.dtype, row_ptr(&p.y, row));
}

/// `Σ v` (by the blocked float32 lanes of `rowsum::deviations_f32` where `f32_avx2`, else [`sum`]).
#[inline(always)]
fn row_sum<A: Real>(v: &[A]) -> A {
    #[cfg(target_arch = "x86_64")]
    if super::f32_avx2::<A>() {
        // SAFETY: A is f32 and the CPU has AVX2 and FMA (`f32_avx2`).
        return A::from_f64(unsafe {
            rowsum::deviations_f32::<false>(std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len()), 0.0)
        });
    }
    sum(v)
}

/// True when row `row` of `a` and of `b` (`n` elements each) share memory.
#[inline(always)]
fn overlap(a: &crate::ops::Mat, b: &crate::ops::Mat, row: usize, n: usize) -> bool {
    !disjoint(row_ptr(a, row) as usize, row_ptr(b, row) as usize, n * a.dtype.size())
}

/// # Safety
/// As for [`fwd_row`], for `dx`.
#[inline(always)]
unsafe fn bwd_row<A: Real>(p: &BwdPlan, row: usize, yb: &mut [A], db: &mut [A]) {
    let n = yb.len();
    let same = same_type::<A>(p.y.dtype) && same_type::<A>(p.dy.dtype) && same_type::<A>(p.dx.dtype);
    #[cfg(target_arch = "x86_64")]
    if super::f32_avx2::<A>() && bwd_row_f32(p, row, n, same, yb) {
        return;
    }
    if same && !overlap(&p.y, &p.dx, row, n) && !overlap(&p.dy, &p.dx, row, n) {
        let y = std::slice::from_raw_parts(row_ptr(&p.y, row) as *const A, n);
        let d = std::slice::from_raw_parts(row_ptr(&p.dy, row) as *const A, n);
        let s = dot(y, d);
        let next = [next_row(&p.y, row, p.rows), next_row(&p.dy, row, p.rows)];
        fill_prefetching(yb, &next, |i| *y.get_unchecked(i) * (*d.get_unchecked(i) - s));
        write_out(row_ptr(&p.dx, row) as *mut A, yb);
        return;
    }
    load_row(p.y.dtype, row_ptr(&p.y, row), yb);
    load_row(p.dy.dtype, row_ptr(&p.dy, row), db);
    let s = dot(yb, db);
    yb.iter_mut().zip(db.iter()).for_each(|(y, d)| *y = *y * (*d - s));
    store_row(yb, p.dx.dtype, row_ptr(&p.dx, row));
}

/// [`bwd_row`] by the AVX2 row passes, for float32 accumulation: float32 y, dy and dx (dx
/// streamed), or bfloat16 ones (converted inside the passes, dx built in `yb` and rounded by
/// [`store_row`]). Returns false, having done nothing, for other dtypes or overlapping rows.
///
/// # Safety
/// As for [`bwd_row`]; A is f32 and the CPU has AVX2 and FMA (`f32_avx2`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bwd_row_f32<A: Real>(p: &BwdPlan, row: usize, n: usize, same: bool, yb: &mut [A]) -> bool {
    use crate::dtype::DType;
    use rowsum::{STORE_BF16, STORE_F16, STORE_F32};
    // One 16-bit dtype throughout: converted inside the passes.
    let half =
        [p.dy.dtype, p.dx.dtype].iter().all(|&d| d == p.y.dtype) && matches!(p.y.dtype, DType::BF16 | DType::F16);
    let half = half.then_some(p.y.dtype);
    if !(same || half.is_some()) || overlap(&p.y, &p.dx, row, n) || overlap(&p.dy, &p.dx, row, n) {
        return false;
    }
    let (y, dy) = (row_ptr(&p.y, row) as *const u8, row_ptr(&p.dy, row) as *const u8);
    let next = [next_row(&p.y, row, p.rows), next_row(&p.dy, row, p.rows)];
    let out = yb.as_mut_ptr() as *mut f32;
    match half {
        Some(DType::BF16) => {
            let s = rowsum::dot::<STORE_BF16>(y, dy, n) as f32;
            rowsum::softmax_dx::<STORE_BF16, false>(y, dy, n, s, out, &next);
        }
        Some(_) => {
            let s = rowsum::dot::<STORE_F16>(y, dy, n) as f32;
            rowsum::softmax_dx::<STORE_F16, false>(y, dy, n, s, out, &next);
        }
        None => {
            let s = rowsum::dot::<STORE_F32>(y, dy, n) as f32;
            rowsum::softmax_dx::<STORE_F32, true>(y, dy, n, s, row_ptr(&p.dx, row) as *mut f32, &next);
            return true;
        }
    }
    store_row(yb, p.dx.dtype, row_ptr(&p.dx, row));
    true
}

isa_copies!(fwd_row_avx2, fwd_row_avx512 = fwd_row(p: &FwdPlan, row: usize, buf: &mut [A]));
isa_copies!(bwd_row_avx2, bwd_row_avx512 = bwd_row(p: &BwdPlan, row: usize, yb: &mut [A], db: &mut [A]));

fn fwd_impl<A: Real>(p: &FwdPlan) {
    let n = p.cols;
    let f = pick!(fwd_row_avx2, fwd_row_avx512, fwd_row, <A>, unsafe fn(&FwdPlan, usize, &mut [A]));
    for_each_row(
        p.rows,
        n,
        || vec![A::ZERO; n],
        // SAFETY: rows are disjoint and inside the validated views.
        |buf, row| unsafe { f(p, row, buf) },
    );
}

fn bwd_impl<A: Real>(p: &BwdPlan) {
    let n = p.cols;
    let f = pick!(bwd_row_avx2, bwd_row_avx512, bwd_row, <A>, unsafe fn(&BwdPlan, usize, &mut [A], &mut [A]));
    for_each_row(
        p.rows,
        n,
        || (vec![A::ZERO; n], vec![A::ZERO; n]),
        // SAFETY: rows are disjoint and inside the validated views.
        |(yb, db), row| unsafe { f(p, row, yb, db) },
    );
}
