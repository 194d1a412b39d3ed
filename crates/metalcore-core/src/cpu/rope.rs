//! RoPE on the CPU (math in `ops::rope`): tasks of (batch, head, run of tokens) in parallel.

use super::{for_each_row, same_type, store_row, view_or_load, Real};
use crate::dtype::DType;
use crate::ops::rope::Plan;

/// Per-task scratch: cos row, sin row, input head, output head (accumulation type).
type Scratch<A> = (Vec<A>, Vec<A>, Vec<A>, Vec<A>);

/// # Safety
/// `ptr` is a live tensor of `dtype` and `off` an element offset inside it.
#[inline(always)]
unsafe fn at(ptr: usize, off: i64, dtype: DType) -> *mut u8 {
    (ptr as *mut u8).offset(off as isize * dtype.size() as isize)
}

/// Tokens per task: about 64 KiB of one head's rows.
fn chunk(p: &Plan) -> usize {
    (16384 / p.dim.max(1)).clamp(1, p.seq.max(1))
}

/// # Safety
/// `index < batch · heads(q + k) · ceil(seq / chunk)`; the plan's pointers and strides are valid
/// for its shapes; the output rows of this task are written by no one else.
#[inline(always)]
unsafe fn task<A: Real>(p: &Plan, index: usize, sc: &mut Scratch<A>) {
    // Head-major: one task walks consecutive tokens of one head (a contiguous stream in either
    // layout); a token-major walk would touch every head's page for each token.
    let ch = chunk(p);
    let chunks = p.seq.div_ceil(ch);
    let heads = p.q.heads + p.k.map_or(0, |k| k.heads);
    let (b, rest) = (index / (heads * chunks), index % (heads * chunks));
    let (hh, c) = (rest / chunks, rest % chunks);
    let (side, head) = if hh < p.q.heads { (&p.q, hh) } else { (p.k.as_ref().unwrap_unchecked(), hh - p.q.heads) };
    let (b, head) = (b as i64, head as i64);
    let (c0, c1) = (c * ch, ((c + 1) * ch).min(p.seq));
    let (cs, ss, x, y) = sc;
    let rot = p.rot;
    let h = rot / 2;
    let size = p.dtype.size();
    for t in c0 as i64..c1 as i64 {
        let row = match p.pos {
            None => b * p.cs[0] + t * p.cs[1],
            Some((ptr, ps)) => {
                let id = *(ptr as *const i32).offset((b * ps[0] + t * ps[1]) as isize);
                (id.clamp(0, p.table_rows as i32 - 1) as i64) * p.cs[1]
            }
        };
        let c = view_or_load(p.cos_dtype, at(p.cos, row, p.cos_dtype), cs);
        let s = view_or_load(p.cos_dtype, at(p.sin, row, p.cos_dtype), ss);
        let xo = b * side.xs[0] + head * side.xs[1] + t * side.xs[2];
        let oo = b * side.os[0] + head * side.os[1] + t * side.os[2];
        let (xp, op) = (at(side.x, xo, p.dtype), at(side.out, oo, p.dtype));
        let x = view_or_load(p.dtype, xp, x);
        // Write straight into the output when it holds A (in place too: x was read first, below
        // each output element depends on x values of its own pair only, read before the write).
        let direct = same_type::<A>(p.dtype) && !std::ptr::eq(xp, op);
        let y: &mut [A] = if direct { std::slice::from_raw_parts_mut(op as *mut A, rot) } else { &mut y[..] };
        match (p.interleaved, p.backward) {
            (false, false) => {
                for j in 0..h {
                    y[j] = x[j] * c[j] - x[j + h] * s[j];
                    y[j + h] = x[j + h] * c[j + h] + x[j] * s[j + h];
                }
            }
            (false, true) => {
                for j in 0..h {
                    y[j] = x[j] * c[j] + x[j + h] * s[j + h];
                    y[j + h] = x[j + h] * c[j + h] - x[j] * s[j];
                }
            }
            (true, false) => {
                for i in 0..h {
                    let (e, o) = (2 * i, 2 * i + 1);
                    y[e] = x[e] * c[e] - x[o] * s[e];
                    y[o] = x[o] * c[o] + x[e] * s[o];
                }
            }
            (true, true) => {
                for i in 0..h {
                    let (e, o) = (2 * i, 2 * i + 1);
                    y[e] = x[e] * c[e] + x[o] * s[o];
                    y[o] = x[o] * c[o] - x[e] * s[e];
                }
            }
        }
        if !direct {
            store_row(y, p.dtype, op);
        }
        if p.copy_pass {
            // SAFETY: input and output heads are distinct tensors of `dim` elements each.
            std::ptr::copy_nonoverlapping(xp.add(rot * size), op.add(rot * size), (p.dim - rot) * size);
        }
    }
}

isa_copies!(task_avx2, task_avx512 = task(p: &Plan, index: usize, sc: &mut Scratch<A>));

fn run_as<A: Real>(p: &Plan) {
    let f = pick!(task_avx2, task_avx512, task, <A>, unsafe fn(&Plan, usize, &mut Scratch<A>));
    let heads: usize = p.sides().map(|s| s.heads).sum();
    let ch = chunk(p);
    let rot = p.rot;
    for_each_row(
        p.batch * heads * p.seq.div_ceil(ch),
        ch * p.dim,
        || (vec![A::ZERO; rot], vec![A::ZERO; rot], vec![A::ZERO; rot], vec![A::ZERO; rot]),
        // SAFETY: tasks cover disjoint (batch, head, token range) rows inside the validated views.
        |sc, t| unsafe { f(p, t, sc) },
    );
}

by_acc!(
    /// Rotates every head of q (and k) of every token.
    run(Plan) => run_as, dtype
);
