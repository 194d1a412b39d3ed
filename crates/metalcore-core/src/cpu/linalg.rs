//! Batched dense linear algebra on the CPU (semantics in `ops::linalg`): rayon over the batch, one
//! tight, cache-resident kernel per matrix (the sizes this targets, n ≤ a few hundred, fit in L1/L2).

use super::Real;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::linalg::{Batch, CholeskyPlan, CholeskySolvePlan};
use rayon::prelude::*;

/// The matrices of a batch as mutable slices of `A` (one per batch element).
///
/// # Safety
/// `b` describes a live, contiguous buffer of `A` elements that nothing else accesses meanwhile.
unsafe fn matrices<'a, A: Send + 'a>(b: &Batch) -> impl IndexedParallelIterator<Item = &'a mut [A]> {
    let len = b.rows * b.cols;
    std::slice::from_raw_parts_mut(b.ptr as *mut A, b.batch * len).par_chunks_mut(len.max(1))
}

/// Zeroes the strict upper triangle (the factor is lower), or transposes into the upper one.
fn finish<A: Real>(a: &mut [A], n: usize, upper: bool) {
    for i in 0..n {
        for j in i + 1..n {
            if upper {
                a[i * n + j] = a[j * n + i];
                a[j * n + i] = A::ZERO;
            } else {
                a[i * n + j] = A::ZERO;
            }
        }
    }
}

/// Matrices factored together, one per SIMD lane (8 float32 fill an AVX2 register).
const W: usize = 8;

/// Cholesky of W interleaved n×n matrices (`m[i*n + j][lane]`), in place on their lower
/// triangles: the same arithmetic as [`factor`], but every operation runs across the W lanes, so
/// the loops vectorize even for tiny n. A lane that fails records its minor in `info` and turns
/// NaN from there on (its factor is then undefined, as LAPACK leaves it).
#[inline(always)]
unsafe fn factor_lanes<A: Real>(m: &mut [[A; W]], n: usize, info: &mut [i32; W]) {
    for i in 0..n {
        for j in 0..=i {
            let mut s = m[i * n + j];
            // SAFETY: k < j <= i < n, so both indices are inside the n*n lane vectors.
            let (ri, rj) = (m.as_ptr().add(i * n), m.as_ptr().add(j * n));
            for k in 0..j {
                let (a, b) = (&*ri.add(k), &*rj.add(k));
                for l in 0..W {
                    s[l] = s[l] - a[l] * b[l];
                }
            }
            if j == i {
                for l in 0..W {
                    if !(s[l] > A::ZERO) {
                        if info[l] == 0 {
                            info[l] = i as i32 + 1;
                        }
                        s[l] = A::from_f64(f64::NAN);
                    }
                    s[l] = s[l].sqrt();
                }
            } else {
                let d = m[j * n + j];
                for l in 0..W {
                    s[l] = s[l] / d[l];
                }
            }
            m[i * n + j] = s;
        }
    }
}

isa_copies!(factor_lanes_avx2 = factor_lanes(m: &mut [[A; W]], n: usize, info: &mut [i32; W]));

fn cholesky_impl<A: Real>(p: &CholeskyPlan) {
    let n = p.a.rows;
    if p.a.batch == 0 {
        return;
    }
    let len = n * n;
    // SAFETY: the plan validated a contiguous (batch, n, n) buffer of A and a contiguous int32
    // vector of `batch` entries; each task reads and writes only its own group of matrices.
    let info = unsafe { std::slice::from_raw_parts_mut(p.info as *mut i32, p.a.batch) };
    if n == 0 {
        info.fill(0);
        return;
    }
    let all = unsafe { std::slice::from_raw_parts_mut(p.a.ptr as *mut A, p.a.batch * len) };
    let f = pick!(factor_lanes_avx2, factor_lanes, A, unsafe fn(&mut [[A; W]], usize, &mut [i32; W]));
    all.par_chunks_mut(W * len).zip(info.par_chunks_mut(W)).with_min_len((4096 / (len * W)).max(1)).for_each_init(
        || vec![[A::ZERO; W]; len],
        |lanes, (mats, inf)| {
            let count = inf.len();
            // Interleave; missing lanes of the last group get the identity (which factors cleanly).
            for e in 0..len {
                for l in 0..W {
                    lanes[e][l] = if l < count {
                        mats[l * len + e]
                    } else if e % (n + 1) == 0 {
                        A::ONE
                    } else {
                        A::ZERO
                    };
                }
            }
            let mut status = [0i32; W];
            // SAFETY: `lanes` holds n*n lane vectors.
            unsafe { f(lanes, n, &mut status) };
            for l in 0..count {
                let m = &mut mats[l * len..(l + 1) * len];
                for e in 0..len {
                    m[e] = lanes[e][l];
                }
                finish(m, n, p.upper);
                inf[l] = status[l];
            }
        },
    );
}

pub fn cholesky(p: &CholeskyPlan) -> Result<()> {
    match p.a.dtype {
        DType::F64 => cholesky_impl::<f64>(p),
        _ => cholesky_impl::<f32>(p),
    }
    Ok(())
}

/// Solves L Lᵀ X = B in place on the row-major n×k `b`; `l(i, j)` reads the lower factor.
#[inline(always)]
fn solve_one<A: Real>(b: &mut [A], n: usize, k: usize, l: impl Fn(usize, usize) -> A) {
    // Forward: L Y = B, row by row (axpy over the k columns).
    for i in 0..n {
        let (done, rest) = b.split_at_mut(i * k);
        let bi = &mut rest[..k];
        for j in 0..i {
            let f = l(i, j);
            bi.iter_mut().zip(&done[j * k..j * k + k]).for_each(|(x, y)| *x = *x - f * *y);
        }
        let d = l(i, i);
        bi.iter_mut().for_each(|x| *x = *x / d);
    }
    // Backward: Lᵀ X = Y.
    for i in (0..n).rev() {
        let (head, tail) = b.split_at_mut((i + 1) * k);
        let bi = &mut head[i * k..];
        for j in i + 1..n {
            let f = l(j, i);
            let bj = &tail[(j - i - 1) * k..(j - i) * k];
            bi.iter_mut().zip(bj).for_each(|(x, y)| *x = *x - f * *y);
        }
        let d = l(i, i);
        bi.iter_mut().for_each(|x| *x = *x / d);
    }
}

fn cholesky_solve_impl<A: Real>(p: &CholeskySolvePlan) {
    let (n, k) = (p.l.rows, p.b.cols);
    if p.b.batch == 0 || n == 0 || k == 0 {
        return;
    }
    let len = n * n;
    // SAFETY: validated contiguous buffers; `l` is only read, each task writes its own `b` matrix.
    let ls = unsafe { std::slice::from_raw_parts(p.l.ptr as *const A, p.l.batch * len) };
    unsafe { matrices::<A>(&p.b) }.enumerate().with_min_len(64).for_each(|(bi, b)| {
        let m = &ls[bi * len..(bi + 1) * len];
        if p.upper {
            solve_one(b, n, k, |i, j| m[j * n + i]);
        } else {
            solve_one(b, n, k, |i, j| m[i * n + j]);
        }
    });
}

pub fn cholesky_solve(p: &CholeskySolvePlan) -> Result<()> {
    match p.b.dtype {
        DType::F64 => cholesky_solve_impl::<f64>(p),
        _ => cholesky_solve_impl::<f32>(p),
    }
    Ok(())
}
