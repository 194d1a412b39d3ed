//! EmbeddingBag, forward and backward to the weight: validation and dispatch.
//!
//! Bags are given by int32 `offsets` of length `bags + 1` (bag `b` holds `indices[offsets[b] ..
//! offsets[b + 1]]`). Per bag and column, with the rows `w[i]` of the bag's indices (entries equal
//! to `padding_idx` skipped) and optional per-sample weights `s`:
//!   sum: `Σ s·w[i]`; mean: that sum over the number of non-padding entries; max: the largest
//!   `w[i]` (and the position that holds it, for the backward). An empty bag gives zeros.
//! Accumulation in float32 (float64 for float64 weights), in bag order.
//!
//! Backward (dense, deterministic): `grad_w[i] = Σ over the positions p holding i of
//! scale_p · grad_out[bag(p)]`, summed in the order of `sorted` (the positions sorted by index,
//! stably, by the caller), each index's run by one worker; max mode adds `grad_out[b, d]` only
//! where the forward's argmax position is `p`. `grad_w` must be zero on entry.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{expect_dtype, expect_float, rows_like, rows_of, Mat};
use crate::tensor::{common_device, Device, Exec, TensorRef};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Sum,
    Mean,
    Max,
}

impl Mode {
    pub fn from_code(code: u32) -> Result<Self> {
        match code {
            0 => Ok(Mode::Sum),
            1 => Ok(Mode::Mean),
            2 => Ok(Mode::Max),
            _ => Err(Error::value("mode", format!("expected 0 (sum), 1 (mean) or 2 (max), got {code}"))),
        }
    }
}

pub struct EmbagFwd<'a> {
    pub mode: Mode,
    pub weight: &'a TensorRef,
    pub indices: &'a TensorRef,
    pub offsets: &'a TensorRef,
    pub per_sample_weights: Option<&'a TensorRef>,
    pub padding_idx: i32,
    pub out: &'a TensorRef,
    /// Max mode: int32 (bags, dim), the position in `indices` of each maximum (-1 for none).
    pub argmax: Option<&'a TensorRef>,
}

pub struct EmbagBwd<'a> {
    pub mode: Mode,
    pub grad_out: &'a TensorRef,
    pub indices: &'a TensorRef,
    pub offsets: &'a TensorRef,
    pub per_sample_weights: Option<&'a TensorRef>,
    pub padding_idx: i32,
    /// int32 positions of `indices` sorted by index value (stable).
    pub sorted: &'a TensorRef,
    pub argmax: Option<&'a TensorRef>,
    /// Zero-filled (num_embeddings, dim).
    pub grad_weight: &'a TensorRef,
}

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub backward: bool,
    pub num: usize,
    pub dim: usize,
    pub bags: usize,
    pub n: usize,
    /// Forward: the weight; backward: grad_weight.
    pub table: Mat,
    /// Forward: out; backward: grad_out (rows of `dim`).
    pub bag_rows: Mat,
    pub indices: usize,
    pub offsets: usize,
    pub psw: Option<usize>,
    pub padding_idx: i32,
    pub sorted: usize,
    pub argmax: Option<usize>,
}

/// The validated operands shared by both directions (see [`common`]).
type Parts = (Mat, Mat, usize, usize, usize, Option<usize>, Option<usize>, usize, usize, usize);

impl Plan {
    pub fn acc(&self) -> DType {
        self.table.dtype.compute()
    }

    /// A forward plan, or with `sorted` a backward one.
    fn assemble(mode: Mode, parts: Parts, padding_idx: i32, sorted: Option<usize>) -> Plan {
        let (table, bag_rows, num, dim, bags, psw, argmax, n, indices, offsets) = parts;
        Plan {
            mode,
            backward: sorted.is_some(),
            num,
            dim,
            bags,
            n,
            table,
            bag_rows,
            indices,
            offsets,
            psw,
            padding_idx,
            sorted: sorted.unwrap_or(0),
            argmax,
        }
    }
}

fn int_vec(arg: &'static str, t: &TensorRef, n: usize) -> Result<usize> {
    expect_dtype(arg, t, DType::I32)?;
    if t.ndim() != 1 || t.shape[0] != n || (n > 1 && t.strides[0] != 1) {
        return Err(Error::value(
            arg,
            format!("expected a contiguous int32 tensor of shape ({n},), got {:?}", t.shape),
        ));
    }
    Ok(t.ptr)
}

fn common(
    mode: Mode,
    table_arg: &'static str,
    table: &TensorRef,
    rows_arg: &'static str,
    rows: &TensorRef,
    indices: &TensorRef,
    offsets: &TensorRef,
    psw: Option<&TensorRef>,
    argmax: Option<&TensorRef>,
) -> Result<Parts> {
    expect_float(table_arg, table)?;
    if table.ndim() != 2 {
        return Err(Error::value(
            table_arg,
            format!("expected a 2-D (num_embeddings, dim) tensor, got {:?}", table.shape),
        ));
    }
    let (r, t) = rows_of(table_arg, table)?;
    let (num, dim) = (r.rows, r.cols);
    if offsets.ndim() != 1 || offsets.shape[0] == 0 {
        return Err(Error::value("offsets", format!("expected (bags + 1,) int32 offsets, got {:?}", offsets.shape)));
    }
    let bags = offsets.shape[0] - 1;
    let n = indices.numel();
    let ip = int_vec("indices", indices, n)?;
    let op = int_vec("offsets", offsets, bags + 1)?;
    expect_dtype(rows_arg, rows, table.dtype)?;
    if rows.shape != [bags, dim] {
        return Err(Error::value(rows_arg, format!("expected shape ({bags}, {dim}), got {:?}", rows.shape)));
    }
    let (_, b) = rows_of(rows_arg, rows)?;
    let psw = match psw {
        Some(s) => {
            if mode != Mode::Sum {
                return Err(Error::value("per_sample_weights", "only supported with mode='sum'"));
            }
            expect_dtype("per_sample_weights", s, table.dtype)?;
            if s.ndim() != 1 || s.shape[0] != n || (n > 1 && s.strides[0] != 1) {
                return Err(Error::value(
                    "per_sample_weights",
                    format!("expected shape ({n},) contiguous, got {:?}", s.shape),
                ));
            }
            Some(s.ptr)
        }
        None => None,
    };
    let am = match (mode, argmax) {
        (Mode::Max, Some(a)) => {
            expect_dtype("argmax", a, DType::I32)?;
            let m = rows_like("argmax", a, rows_arg, rows)?;
            if bags > 1 && m.row_stride != b.row_stride {
                return Err(Error::value(
                    "argmax",
                    format!("expected the row stride of {rows_arg} ({})", b.row_stride),
                ));
            }
            Some(a.ptr)
        }
        (Mode::Max, None) => return Err(Error::value("argmax", "max mode needs an argmax output")),
        _ => None,
    };
    Ok((t, b, num, dim, bags, psw, am, n, ip, op))
}

impl EmbagFwd<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        let device = common_device(&[
            ("weight", Some(self.weight)),
            ("indices", Some(self.indices)),
            ("offsets", Some(self.offsets)),
            ("per_sample_weights", self.per_sample_weights),
            ("out", Some(self.out)),
            ("argmax", self.argmax),
        ])?;
        let (table, bag_rows, num, dim, bags, psw, argmax, n, indices, offsets) = common(
            self.mode,
            "weight",
            self.weight,
            "out",
            self.out,
            self.indices,
            self.offsets,
            self.per_sample_weights,
            self.argmax,
        )?;
        let parts = (table, bag_rows, num, dim, bags, psw, argmax, n, indices, offsets);
        Ok((device, Plan::assemble(self.mode, parts, self.padding_idx, None)))
    }
}

impl EmbagBwd<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        let device = common_device(&[
            ("grad_out", Some(self.grad_out)),
            ("indices", Some(self.indices)),
            ("offsets", Some(self.offsets)),
            ("per_sample_weights", self.per_sample_weights),
            ("sorted", Some(self.sorted)),
            ("argmax", self.argmax),
            ("grad_weight", Some(self.grad_weight)),
        ])?;
        let (table, bag_rows, num, dim, bags, psw, argmax, n, indices, offsets) = common(
            self.mode,
            "grad_weight",
            self.grad_weight,
            "grad_out",
            self.grad_out,
            self.indices,
            self.offsets,
            self.per_sample_weights,
            self.argmax,
        )?;
        let sorted = int_vec("sorted", self.sorted, n)?;
        let parts = (table, bag_rows, num, dim, bags, psw, argmax, n, indices, offsets);
        Ok((device, Plan::assemble(self.mode, parts, self.padding_idx, Some(sorted))))
    }
}

fn run(planned: Result<(Device, Plan)>, exec: Exec) -> Result<()> {
    let (device, plan) = planned?;
    let work = if plan.backward { plan.n } else { plan.bags };
    if work == 0 || plan.dim == 0 {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::embag::run(&plan),
        Device::Cuda(ordinal) => crate::cuda::embag::run(&plan, ordinal, exec),
    }
}

/// Indices must lie in `[0, num_embeddings)` and offsets rise from 0 to at most the number of
/// indices. On the CPU they are checked first: `Ok(true)` (nothing computed) when one is not, so
/// that the caller raises naming it; on a GPU the caller checks them (the kernels clamp every
/// read) and this returns `Ok(false)`.
pub fn embag_fwd(args: &EmbagFwd<'_>, exec: Exec) -> Result<bool> {
    let (device, plan) = args.plan()?;
    // SAFETY: the plan validated the int32 indices (n) and offsets (bags + 1).
    if device == Device::Cpu && !unsafe { crate::cpu::embag::in_range(&plan) } {
        return Ok(true);
    }
    run(Ok((device, plan)), exec).map(|()| false)
}

pub fn embag_bwd(args: &EmbagBwd<'_>, exec: Exec) -> Result<()> {
    run(args.plan(), exec)
}
