//! EmbeddingBag on the CPU (math in `ops::embag`): bags in parallel (forward), runs of equal
//! indices in parallel (backward).

use super::{for_each_row, prefetch_lines_l2, row_ptr, store_row, view_or_load, Real};
use crate::ops::embag::{Mode, Plan};

/// # Safety
/// `ptr` is a live int32 tensor with at least `i + 1` elements.
#[inline(always)]
unsafe fn int_at(ptr: usize, i: usize) -> i32 {
    *(ptr as *const i32).add(i)
}

/// Whether every index lies in `[0, num)` and the offsets rise from 0 to at most `n`.
///
/// # Safety
/// The plan's `indices` hold `n` int32 values and `offsets` `bags + 1`.
pub(crate) unsafe fn in_range(p: &Plan) -> bool {
    let off = std::slice::from_raw_parts(p.offsets as *const i32, p.bags + 1);
    let idx = std::slice::from_raw_parts(p.indices as *const i32, p.n);
    // Branch-free folds, so that the scans vectorize.
    let rising = off.windows(2).fold(true, |ok, w| ok & (w[0] <= w[1]));
    let (lo, hi) = idx.iter().fold((0i32, 0i32), |(lo, hi), &i| (lo.min(i), hi.max(i)));
    rising && off[0] == 0 && off[p.bags] as i64 <= p.n as i64 && lo >= 0 && (p.n == 0 || (hi as i64) < p.num as i64)
}

/// The bag holding position `p`: the last `b` with `offsets[b] <= p`.
///
/// # Safety
/// `offsets` holds `bags + 1` int32 values.
unsafe fn bag_of(p: &Plan, pos: usize) -> usize {
    let (mut lo, mut hi) = (0usize, p.bags - 1);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if int_at(p.offsets, mid) as usize <= pos {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// The entries `[s, e)` of bag `b`, clamped into `[0, n]` and non-decreasing: malformed offsets
/// (reported by the Python layer, except where it does not check: graph capture, torch.compile)
/// read no index outside the tensor.
unsafe fn bag_range(p: &Plan, b: usize) -> (usize, usize) {
    let s = (int_at(p.offsets, b).max(0) as usize).min(p.n);
    (s, (int_at(p.offsets, b + 1).max(0) as usize).clamp(s, p.n))
}

/// Non-padding entries of bag `b`.
unsafe fn count(p: &Plan, b: usize) -> usize {
    let (s, e) = bag_range(p, b);
    (s..e).filter(|&q| int_at(p.indices, q) != p.padding_idx).count()
}

/// # Safety
/// `b < bags`; the plan's operands are valid; row `b` of the outputs is written by no one else.
#[inline(always)]
unsafe fn fwd_bag<A: Real>(p: &Plan, b: usize, acc: &mut [A], row: &mut [A]) {
    let (s, e) = bag_range(p, b);
    acc.iter_mut().for_each(|a| *a = A::ZERO);
    let mut arg = vec![-1i32; if p.mode == Mode::Max { p.dim } else { 0 }];
    let mut cnt = 0usize;
    let row_bytes = p.dim * p.table.dtype.size();
    for q in s..e {
        // Rows are scattered over the table: fetch the one eight entries ahead, in this bag or
        // the next ones, while this one is summed (the hardware prefetcher only follows each row
        // once it is being read). Into L2, not L1: with rows of 1 KB or more a few rows ahead,
        // L1's miss buffers fill and the prefetches themselves stall (32768×256 float32, 4096
        // bags of 32: 3.7–3.9 ms against 5.5–6.1 into L1, distance 16); distances 4 to 16
        // measured alike.
        if q + 8 < p.n {
            let ahead = int_at(p.indices, q + 8).clamp(0, p.num as i32 - 1) as usize;
            prefetch_lines_l2(row_ptr(&p.table, ahead), row_bytes);
        }
        let i = int_at(p.indices, q);
        if i == p.padding_idx {
            continue;
        }
        let i = i.clamp(0, p.num as i32 - 1) as usize;
        let r = view_or_load(p.table.dtype, row_ptr(&p.table, i), row);
        cnt += 1;
        match p.mode {
            Mode::Max => {
                for ((a, x), m) in acc.iter_mut().zip(r).zip(arg.iter_mut()) {
                    if *m < 0 || *x > *a {
                        *a = *x;
                        *m = q as i32;
                    }
                }
            }
            _ => match p.psw {
                Some(ptr) => {
                    let w = A::load(p.table.dtype, ptr as *const u8, q);
                    acc.iter_mut().zip(r).for_each(|(a, x)| *a += w * *x);
                }
                None => acc.iter_mut().zip(r).for_each(|(a, x)| *a += *x),
            },
        }
    }
    if p.mode == Mode::Mean && cnt > 0 {
        let inv = A::ONE / A::from_usize(cnt);
        acc.iter_mut().for_each(|a| *a = *a * inv);
    }
    store_row(acc, p.bag_rows.dtype, row_ptr(&p.bag_rows, b));
    if let Some(am) = p.argmax {
        let dst = (am as *mut i32).add(b * p.bag_rows.row_stride);
        std::ptr::copy_nonoverlapping(arg.as_ptr(), dst, p.dim);
    }
}

/// # Safety
/// `[start, end)` is one run of equal indices in sorted order; its row of grad_weight is written
/// by no one else.
#[inline(always)]
unsafe fn bwd_run<A: Real>(p: &Plan, start: usize, end: usize, acc: &mut [A], g: &mut [A]) {
    let i = int_at(p.indices, int_at(p.sorted, start) as usize);
    if i == p.padding_idx || i < 0 || i as usize >= p.num {
        return;
    }
    acc.iter_mut().for_each(|a| *a = A::ZERO);
    for k in start..end {
        let q = int_at(p.sorted, k) as usize;
        let b = bag_of(p, q);
        let g = view_or_load(p.bag_rows.dtype, row_ptr(&p.bag_rows, b), g);
        match p.mode {
            Mode::Max => {
                let am = (p.argmax.unwrap_or(0) as *const i32).add(b * p.bag_rows.row_stride);
                for d in 0..p.dim {
                    if *am.add(d) == q as i32 {
                        acc[d] += g[d];
                    }
                }
            }
            _ => {
                let mut w = match p.psw {
                    Some(ptr) => A::load(p.table.dtype, ptr as *const u8, q),
                    None => A::ONE,
                };
                if p.mode == Mode::Mean {
                    w = w / A::from_usize(count(p, b).max(1));
                }
                for (a, x) in acc.iter_mut().zip(g) {
                    *a += w * *x;
                }
            }
        }
    }
    store_row(acc, p.table.dtype, row_ptr(&p.table, i as usize));
}

/// `acc = Σ rows` (each `dim` elements of `E` at the addresses in `rows`, converted by `conv`),
/// 64 columns at a time with the accumulators in registers.
///
/// # Safety
/// Every address in `rows` holds `dim` elements of `E`; `acc.len() == dim`.
#[inline(always)]
unsafe fn sum_rows<A: Real, E: Copy>(rows: &[usize], acc: &mut [A], conv: impl Fn(E) -> A) {
    const CH: usize = 64;
    let dim = acc.len();
    let mut c = 0;
    while c + CH <= dim {
        let mut a = [A::ZERO; CH];
        for &r in rows {
            let x = std::slice::from_raw_parts((r as *const E).add(c), CH);
            a.iter_mut().zip(x).for_each(|(a, x)| *a += conv(*x));
        }
        acc[c..c + CH].copy_from_slice(&a);
        c += CH;
    }
    acc[c..].iter_mut().for_each(|a| *a = A::ZERO);
    for &r in rows {
        let x = std::slice::from_raw_parts((r as *const E).add(c), dim - c);
        acc[c..].iter_mut().zip(x).for_each(|(a, x)| *a += conv(*x));
    }
}

/// [`fwd_bag`] for an unweighted sum or mean over a table of `A` or bfloat16 (the common cases),
/// with the accumulators in registers ([`sum_rows`]; through memory, a 1 KB accumulator row took
/// a load and a store per element and row: 32768×256 float32, 4096 bags of 32, 5.3 ms against
/// 2.7, torch 2.6). The next bag's rows are fetched into L2 meanwhile (most likely this thread's
/// next task). `rows`: task scratch for the bag's row addresses.
///
/// # Safety
/// As for [`fwd_bag`], with `p.table` of `A`'s dtype or bfloat16.
#[inline(always)]
unsafe fn fwd_bag_sum<A: Real>(p: &Plan, b: usize, acc: &mut [A], rows: &mut Vec<usize>) {
    let row_bytes = p.dim * p.table.dtype.size();
    let clamp = |i: i32| i.clamp(0, p.num as i32 - 1) as usize;
    if b + 1 < p.bags {
        let (s2, e2) = bag_range(p, b + 1);
        for q in s2..e2 {
            prefetch_lines_l2(row_ptr(&p.table, clamp(int_at(p.indices, q))), row_bytes);
        }
    }
    let (s, e) = bag_range(p, b);
    rows.clear();
    rows.extend(
        (s..e)
            .map(|q| int_at(p.indices, q))
            .filter(|&i| i != p.padding_idx)
            .map(|i| row_ptr(&p.table, clamp(i)) as usize),
    );
    if super::same_type::<A>(p.table.dtype) {
        sum_rows::<A, A>(rows, acc, |x| x);
    } else {
        sum_rows::<A, u16>(rows, acc, |x| A::from_f64(f32::from_bits((x as u32) << 16) as f64));
    }
    if p.mode == Mode::Mean && !rows.is_empty() {
        let inv = A::ONE / A::from_usize(rows.len());
        acc.iter_mut().for_each(|a| *a = *a * inv);
    }
    store_row(acc, p.bag_rows.dtype, row_ptr(&p.bag_rows, b));
}

isa_copies!(fwd_bag_avx2 = fwd_bag(p: &Plan, b: usize, acc: &mut [A], row: &mut [A]));
isa_copies!(fwd_bag_sum_avx2, fwd_bag_sum_avx512 = fwd_bag_sum(p: &Plan, b: usize, acc: &mut [A], rows: &mut Vec<usize>));
isa_copies!(bwd_run_avx2 = bwd_run(p: &Plan, start: usize, end: usize, acc: &mut [A], g: &mut [A]));

fn run_as<A: Real>(p: &Plan) {
    let dim = p.dim;
    let fwd_bag = pick!(fwd_bag_avx2, fwd_bag, A, unsafe fn(&Plan, usize, &mut [A], &mut [A]));
    let bwd_run = pick!(bwd_run_avx2, bwd_run, A, unsafe fn(&Plan, usize, usize, &mut [A], &mut [A]));
    if !p.backward {
        let table_ok = super::same_type::<A>(p.table.dtype) || p.table.dtype == crate::dtype::DType::BF16;
        if p.mode != Mode::Max && p.psw.is_none() && table_ok {
            let sum = pick!(fwd_bag_sum_avx2, fwd_bag_sum_avx512, fwd_bag_sum, <A>, unsafe fn(&Plan, usize, &mut [A], &mut Vec<usize>));
            for_each_row(
                p.bags,
                dim * 8,
                || (vec![A::ZERO; dim], Vec::new()),
                // SAFETY: bags are disjoint output rows; the table holds A or bfloat16.
                |(acc, rows), b| unsafe { sum(p, b, acc, rows) },
            );
            return;
        }
        for_each_row(
            p.bags,
            dim * 8,
            || (vec![A::ZERO; dim], vec![A::ZERO; dim]),
            // SAFETY: bags are disjoint output rows.
            |(acc, row), b| unsafe { fwd_bag(p, b, acc, row) },
        );
        return;
    }
    // Runs of equal indices in sorted order, found sequentially (O(n)), then summed in parallel.
    // SAFETY: `sorted` holds n positions of `indices` (validated shapes).
    let starts: Vec<usize> = unsafe {
        let key = |k: usize| int_at(p.indices, int_at(p.sorted, k) as usize);
        (0..p.n).filter(|&k| k == 0 || key(k) != key(k - 1)).collect()
    };
    for_each_row(
        starts.len(),
        dim * 8,
        || (vec![A::ZERO; dim], vec![A::ZERO; dim]),
        |(acc, g), r| {
            let end = starts.get(r + 1).copied().unwrap_or(p.n);
            // SAFETY: each run owns the grad_weight row of its index (distinct across runs).
            unsafe { bwd_run(p, starts[r], end, acc, g) }
        },
    );
}

by_acc!(
    /// EmbeddingBag forward or backward.
    run(Plan) => run_as, table.dtype
);
