//! Shared by the row-wise kernels (norms, softmax): the thread layout of a row and the common
//! `-D` constants. A group of `tpr` threads owns one row; each thread keeps `chunks` vectors of
//! `vec` elements in registers, or streams the row (`chunks == 0`) when it is too long.

use super::ctype;
use super::jit::Defines;
use crate::dtype::DType;
use std::sync::OnceLock;

/// Thread layout of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Geometry {
    pub vec: usize,
    /// Threads per row (a multiple of 32).
    pub tpr: usize,
    pub block: usize,
    /// VEC-chunks per thread kept in registers; 0 streams the row twice.
    pub chunks: usize,
}

/// The cached environment value of a [`knob`].
pub(crate) type Knob = OnceLock<Option<usize>>;

/// A tuning knob: the positive integer in the environment variable `var` (read once, for sweeps
/// on the GPU machine), else `default`. Only the variable is cached, so a default that depends on
/// the call's shape applies to each call (caching it let the first call's shape decide for all).
pub(crate) fn knob(cell: &'static Knob, var: &str, default: usize) -> usize {
    cell.get_or_init(|| std::env::var(var).ok().and_then(|v| v.parse().ok()).filter(|v| *v >= 1)).unwrap_or(default)
}

/// The layout for rows of `cols` elements moved `vec` at a time, aiming at `target_elems` per thread.
pub(crate) fn geometry(cols: usize, vec: usize, target_elems: usize) -> Geometry {
    let nvec = cols / vec;
    let per_thread = (target_elems / vec).max(1);
    let tpr = nvec.div_ceil(per_thread).next_power_of_two().clamp(32, 1024);
    let chunks = nvec.div_ceil(tpr).max(1);
    if chunks * vec > 64 {
        // Too long for registers: stream the row with the widest block.
        return Geometry { vec, tpr: 1024, block: 1024, chunks: 0 };
    }
    Geometry { vec, tpr, block: tpr.max(128), chunks }
}

pub(crate) fn base_defines(g: &Geometry, acc: DType) -> Defines {
    vec![
        ("ACC", ctype(acc).to_string()),
        ("VEC", g.vec.to_string()),
        ("TPR", g.tpr.to_string()),
        ("BLOCK", g.block.to_string()),
        ("CHUNKS", g.chunks.to_string()),
    ]
}

pub(crate) fn flag(b: bool) -> String {
    (b as u8).to_string()
}

/// A pointer argument: the operand's address, or null when absent.
pub(crate) fn ptr_of<T: Copy>(m: Option<T>, f: impl Fn(T) -> usize) -> u64 {
    m.map(f).unwrap_or(0) as u64
}
