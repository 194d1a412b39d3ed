//! RMSNorm on the CPU (math in `ops::rmsnorm`). Rows run in parallel; each row is loaded once into
//! a scratch buffer of the accumulation type, so every pass after the load stays in L1.

use super::{dot, load_row, round_to, store_row, Real, SendPtr};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::rmsnorm::{BwdPlan, FwdPlan};
use crate::ops::Mat;
use rayon::prelude::*;

/// Rows per rayon task: enough work (~64 KiB) to amortize scheduling.
fn min_rows(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

fn row_ptr(m: &Mat, row: usize) -> *mut u8 {
    SendPtr(m.ptr as *mut u8).at(row * m.row_stride, m.dtype)
}

pub fn fwd(p: &FwdPlan) -> Result<()> {
    match p.acc {
        DType::F64 => fwd_impl::<f64>(p),
        _ => fwd_impl::<f32>(p),
    }
    Ok(())
}

pub fn bwd(p: &BwdPlan) -> Result<()> {
    match p.acc {
        DType::F64 => bwd_impl::<f64>(p),
        _ => bwd_impl::<f32>(p),
    }
    Ok(())
}

/// Loads the weight once as `w + offset` in the accumulation type.
fn weight_plus_offset<A: Real>(w: Option<Mat>, cols: usize, offset: f64) -> Option<Vec<A>> {
    w.map(|w| {
        let mut v = vec![A::ZERO; cols];
        // SAFETY: `w` was validated as a contiguous vector of `cols` elements.
        unsafe { load_row(w.dtype, w.ptr as *const u8, &mut v) };
        let off = A::from_f64(offset);
        v.iter_mut().for_each(|x| *x += off);
        v
    })
}

fn fwd_impl<A: Real>(p: &FwdPlan) {
    let n = p.cols;
    let w = weight_plus_offset::<A>(p.weight, n, p.offset);
    let eps = A::from_f64(p.eps);
    let inv_n = A::ONE / A::from_usize(n);
    (0..p.rows).into_par_iter().with_min_len(min_rows(n)).for_each_init(
        || (vec![A::ZERO; n], vec![A::ZERO; n]),
        |(buf, tmp), row| {
            // SAFETY: every row pointer is inside its validated `rows × cols` view; rows are disjoint,
            // so each output row is written by exactly one task.
            unsafe {
                load_row(p.x.dtype, row_ptr(&p.x, row), buf);
                if let (Some(res), Some(res_out)) = (p.residual, p.residual_out) {
                    load_row(res.dtype, row_ptr(&res, row), tmp);
                    buf.iter_mut().zip(tmp.iter()).for_each(|(a, b)| *a += *b);
                    round_to(p.x.dtype, buf);
                    store_row(buf, res_out.dtype, row_ptr(&res_out, row));
                }
                let ss = dot(buf, buf);
                let r = A::ONE / (ss * inv_n + eps).sqrt();
                if let Some(rstd) = p.rstd {
                    r.store(p.acc, rstd as *mut u8, row);
                }
                buf.iter_mut().for_each(|v| *v = *v * r);
                if let Some(w) = &w {
                    if p.cast_before_weight {
                        round_to(p.x.dtype, buf);
                    }
                    buf.iter_mut().zip(w).for_each(|(v, w)| *v = *v * *w);
                }
                store_row(buf, p.y.dtype, row_ptr(&p.y, row));
            }
        },
    );
}

fn bwd_impl<A: Real>(p: &BwdPlan) {
    let n = p.cols;
    let w = weight_plus_offset::<A>(p.weight, n, p.offset);
    let inv_n = A::ONE / A::from_usize(n.max(1));
    let want_dw = p.dw.is_some();
    let x_dtype = p.x.dtype;
    // Split rows into a few chunks per thread; each chunk sums its own dw partial.
    let chunks = (rayon::current_num_threads() * 4).min(p.rows.div_ceil(min_rows(n))).max(1);
    let per = p.rows.div_ceil(chunks).max(1);
    let partials: Vec<Vec<A>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut dw = if want_dw { vec![A::ZERO; n] } else { Vec::new() };
            let (mut xb, mut g, mut dyb, mut tmp) =
                (vec![A::ZERO; n], vec![A::ZERO; n], vec![A::ZERO; n], vec![A::ZERO; n]);
            for row in (c * per)..((c + 1) * per).min(p.rows) {
                // SAFETY: as in `fwd_impl`; `rstd` holds `rows` elements of the accumulation dtype.
                unsafe {
                    load_row(x_dtype, row_ptr(&p.x, row), &mut xb);
                    load_row(p.dy.dtype, row_ptr(&p.dy, row), &mut dyb);
                    let r = A::load(p.acc, p.rstd as *const u8, row);
                    xb.iter_mut().for_each(|v| *v = *v * r); // x̂
                    match &w {
                        Some(w) => g.iter_mut().zip(dyb.iter().zip(w)).for_each(|(g, (d, w))| *g = *d * *w),
                        None => g.copy_from_slice(&dyb),
                    }
                    let mean = dot(&g, &xb) * inv_n;
                    if want_dw {
                        tmp.copy_from_slice(&xb);
                        if p.cast_before_weight {
                            round_to(x_dtype, &mut tmp);
                        }
                        dw.iter_mut().zip(dyb.iter().zip(tmp.iter())).for_each(|(acc, (d, t))| *acc += *d * *t);
                    }
                    g.iter_mut().zip(xb.iter()).for_each(|(g, xh)| *g = r * (*g - *xh * mean));
                    if let Some(dres) = p.d_residual_out {
                        load_row(dres.dtype, row_ptr(&dres, row), &mut tmp);
                        g.iter_mut().zip(tmp.iter()).for_each(|(g, d)| *g += *d);
                    }
                    store_row(&g, p.dx.dtype, row_ptr(&p.dx, row));
                }
            }
            dw
        })
        .collect();
    if let Some(dw) = p.dw {
        let mut total = vec![A::ZERO; n];
        for part in &partials {
            total.iter_mut().zip(part).for_each(|(t, v)| *t += *v);
        }
        // SAFETY: `dw` was validated as a contiguous vector of `cols` elements.
        unsafe { store_row(&total, dw.dtype, dw.ptr as *mut u8) };
    }
}
