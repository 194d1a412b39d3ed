//! Gather, scatter-add and sorted index-add: validation and dispatch.
//!
//! Every op of the family runs on three-dimensional views, the dimensions before and after the
//! indexed one collapsed by the caller: a `table` (O, N, I), `rows` (O, J, I) and an integer
//! `index` (O, J, I), each with any non-negative strides (0 to broadcast):
//!
//! - Gather: `rows[o, j, i] = table[o, index[o, j, i], i]`, a raw copy; NaN where the index lies
//!   outside `[0, N)`. `torch.gather` (table = input narrowed to the index's shape) and
//!   `torch.index_select` (index = a 1-D index broadcast over `o` and `i`).
//! - ScatterAdd: `table[o, index[o, j, i], i] += rows[o, j, i]`, the table being float32 (float64
//!   for float64 rows), the accumulation type; the order of the additions is unspecified (CUDA
//!   adds with atomics; the CPU sums each table element's terms in `j` order on one thread).
//! - SortedAdd: the index holds one key per `j` (strides `(0, s, 0)`), sorted ascending, and
//!   `perm[k]` is the `j` whose key is the `k`-th: for each run `[k0, k1)` of equal keys `n`,
//!   `table[o, n, i] += Σ_{k0 <= k < k1} rows[o, perm[k], i]`, summed in that order in float32
//!   (float64 for float64), rounded once into the table (of the rows' dtype). Each table row is
//!   written by one worker, so the result is deterministic. `torch.index_add`, and
//!   `torch.scatter_add` through flat views (keys = flat target offsets).
//!
//! Indices outside `[0, N)` give NaN (Gather) or are skipped (the adds), as are permutation entries
//! outside `[0, J)`: the kernels never read or write outside the tensors. The CPU kernels check
//! every index they read and report whether one was out of range; CUDA kernels cannot report
//! without a host sync, so the caller checks CUDA indices beforehand where it can.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{expect_dtype, expect_float, vector};
use crate::tensor::{common_device, Device, Exec, TensorRef};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Gather,
    ScatterAdd,
    SortedAdd,
}

impl Kind {
    pub fn from_code(code: u32) -> Result<Self> {
        match code {
            0 => Ok(Kind::Gather),
            1 => Ok(Kind::ScatterAdd),
            2 => Ok(Kind::SortedAdd),
            _ => {
                Err(Error::value("kind", format!("expected 0 (gather), 1 (scatter-add) or 2 (sorted add), got {code}")))
            }
        }
    }
}

pub struct IndexArgs<'a> {
    pub kind: Kind,
    /// (O, N, I): read by Gather, added into by ScatterAdd and SortedAdd.
    pub table: &'a TensorRef,
    /// (O, J, I): written by Gather, read by the adds.
    pub rows: &'a TensorRef,
    /// int32 or int64 (O, J, I).
    pub index: &'a TensorRef,
    /// SortedAdd: int64 (J,).
    pub perm: Option<&'a TensorRef>,
}

/// A validated 3-D operand: address, dtype and strides in elements (0 for dimensions of size 1).
#[derive(Clone, Copy, Debug)]
pub struct Strided {
    pub ptr: usize,
    pub dtype: DType,
    pub strides: [usize; 3],
}

impl Strided {
    /// Element offset of `(a, b, c)`.
    #[inline(always)]
    pub fn at(&self, a: usize, b: usize, c: usize) -> usize {
        a * self.strides[0] + b * self.strides[1] + c * self.strides[2]
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub kind: Kind,
    pub outer: usize,
    pub n: usize,
    pub j: usize,
    pub inner: usize,
    pub table: Strided,
    pub rows: Strided,
    pub index: Strided,
    /// SortedAdd: the int64 permutation (0 otherwise).
    pub perm: usize,
}

fn view3(arg: &'static str, t: &TensorRef) -> Result<Strided> {
    if t.ndim() != 3 {
        return Err(Error::value(arg, format!("expected a 3-D (outer, n, inner) view, got shape {:?}", t.shape)));
    }
    if t.strides.iter().any(|&s| s < 0) {
        return Err(Error::Unsupported(format!("{arg}: negative strides are not supported (got {:?})", t.strides)));
    }
    let strides = [0, 1, 2].map(|d| if t.shape[d] == 1 { 0 } else { t.strides[d] as usize });
    Ok(Strided { ptr: t.ptr, dtype: t.dtype, strides })
}

/// The written operand: unit stride along `inner`, and no two elements at one address (each
/// outer dimension, taken by increasing stride, steps past everything the smaller ones span).
fn check_written(arg: &'static str, s: &Strided, shape: &[usize]) -> Result<()> {
    let bad =
        |why: &str| Err(Error::value(arg, format!("{why} (it is written; shape {shape:?}, strides {:?})", s.strides)));
    if shape[2] > 1 && s.strides[2] != 1 {
        return bad("expected unit stride in the last dimension");
    }
    let mut dims = [(s.strides[0], shape[0]), (s.strides[1], shape[1])];
    dims.sort_unstable();
    let mut span = shape[2];
    for (stride, size) in dims.into_iter().filter(|d| d.1 > 1) {
        if stride < span {
            return bad("expected elements that do not overlap");
        }
        span += stride * (size - 1);
    }
    Ok(())
}

impl IndexArgs<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        let device = common_device(&[
            ("table", Some(self.table)),
            ("rows", Some(self.rows)),
            ("index", Some(self.index)),
            ("perm", self.perm),
        ])?;
        let (table, rows, index) =
            (view3("table", self.table)?, view3("rows", self.rows)?, view3("index", self.index)?);
        expect_float("rows", self.rows)?;
        if !matches!(index.dtype, DType::I32 | DType::I64) {
            return Err(Error::dtype("index", format!("expected int32 or int64, got {}", index.dtype)));
        }
        let (o, j, i) = (self.rows.shape[0], self.rows.shape[1], self.rows.shape[2]);
        if self.index.shape != self.rows.shape {
            return Err(Error::value(
                "index",
                format!("expected the shape of rows {:?}, got {:?}", self.rows.shape, self.index.shape),
            ));
        }
        if self.table.shape[0] != o || self.table.shape[2] != i {
            return Err(Error::value(
                "table",
                format!("expected shape ({o}, n, {i}) (the outer and inner sizes of rows), got {:?}", self.table.shape),
            ));
        }
        // The table holds the rows' dtype, except for ScatterAdd, which adds into the accumulation type.
        let table_dtype = if self.kind == Kind::ScatterAdd { rows.dtype.compute() } else { rows.dtype };
        expect_dtype("table", self.table, table_dtype)?;
        if self.kind == Kind::Gather {
            check_written("rows", &rows, &self.rows.shape)?;
        } else {
            check_written("table", &table, &self.table.shape)?;
        }
        let perm = match (self.kind, self.perm) {
            (Kind::SortedAdd, Some(p)) => {
                if index.strides[0] != 0 || index.strides[2] != 0 {
                    return Err(Error::value(
                        "index",
                        format!("expected one key per j (strides (0, s, 0)), got strides {:?}", self.index.strides),
                    ));
                }
                expect_dtype("perm", p, DType::I64)?;
                vector("perm", p, j)?.ptr
            }
            (Kind::SortedAdd, None) => return Err(Error::value("perm", "the sorted add needs the permutation")),
            (_, Some(_)) => return Err(Error::value("perm", "only the sorted add takes a permutation")),
            (_, None) => 0,
        };
        let n = self.table.shape[1];
        Ok((device, Plan { kind: self.kind, outer: o, n, j, inner: i, table, rows, index, perm }))
    }
}

/// Runs one op of the family (see the module documentation). Returns true when the CPU kernel met
/// an index outside `[0, N)` (always false on CUDA, which does not look).
pub fn index_op(args: &IndexArgs<'_>, exec: Exec) -> Result<bool> {
    let (device, plan) = args.plan()?;
    if plan.outer * plan.j * plan.inner == 0 {
        return Ok(false);
    }
    match device {
        Device::Cpu => crate::cpu::index::run(&plan),
        Device::Cuda(ordinal) => crate::cuda::index::run(&plan, ordinal, exec).map(|()| false),
    }
}
