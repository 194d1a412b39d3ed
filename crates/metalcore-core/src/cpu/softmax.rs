//! Softmax on the CPU (math in `ops::softmax`): rows in parallel, read and written in place when
//! stored in the accumulation type, else converted through a scratch row.

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
        let inv = A::ONE / sum(buf);
        buf.iter_mut().for_each(|v| *v = *v * inv);
        write_out(row_ptr(&p.y, row) as *mut A, buf);
        return;
    }
    load_row(p.x.dtype, row_ptr(&p.x, row), buf);
    let m = row_max(buf);
    buf.iter_mut().for_each(|v| *v = (*v - m).exp());
    let inv = A::ONE / sum(buf);
    buf.iter_mut().for_each(|v| *v = *v * inv);
    store_row(buf, p.y.dtype, row_ptr(&p.y, row));
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
