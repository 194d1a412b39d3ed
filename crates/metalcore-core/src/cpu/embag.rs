//! EmbeddingBag on the CPU (math in `ops::embag`): bags in parallel (forward), runs of equal
//! indices in parallel (backward).

use super::{for_each_row, prefetch, row_ptr, store_row, view_or_load, Real};
use crate::ops::embag::{Mode, Plan};

/// # Safety
/// `ptr` is a live int32 tensor with at least `i + 1` elements.
#[inline(always)]
unsafe fn int_at(ptr: usize, i: usize) -> i32 {
    *(ptr as *const i32).add(i)
}

/// Hints the cache lines of `[ptr, ptr + bytes)` into the caches.
#[inline(always)]
fn prefetch_bytes(ptr: *const u8, bytes: usize) {
    (0..bytes).step_by(64).for_each(|off| prefetch(ptr.wrapping_add(off)));
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
        // Rows are scattered over the table: fetch the one sixteen entries ahead, in this bag or
        // the next ones, while this one is summed (the hardware prefetcher only follows each row
        // once it is being read). Distances 4 (within the bag), 8 and 16 measured alike, within
        // the 2-core CPU's noise.
        if q + 16 < p.n {
            let ahead = int_at(p.indices, q + 16).clamp(0, p.num as i32 - 1) as usize;
            prefetch_bytes(row_ptr(&p.table, ahead), row_bytes);
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
            _ => {
                let w = match p.psw {
                    Some(ptr) => A::load(p.table.dtype, ptr as *const u8, q),
                    None => A::ONE,
                };
                for (a, x) in acc.iter_mut().zip(r) {
                    *a += w * *x;
                }
            }
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

isa_copies!(fwd_bag_avx2 = fwd_bag(p: &Plan, b: usize, acc: &mut [A], row: &mut [A]));
isa_copies!(bwd_run_avx2 = bwd_run(p: &Plan, start: usize, end: usize, acc: &mut [A], g: &mut [A]));

fn run_as<A: Real>(p: &Plan) {
    let dim = p.dim;
    let fwd_bag = pick!(fwd_bag_avx2, fwd_bag, A, unsafe fn(&Plan, usize, &mut [A], &mut [A]));
    let bwd_run = pick!(bwd_run_avx2, bwd_run, A, unsafe fn(&Plan, usize, usize, &mut [A], &mut [A]));
    if !p.backward {
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
