//! Rotary position embedding (RoPE), forward and backward: validation and dispatch.
//!
//! Operands are seen in the logical layout `(batch, heads, seq, head_dim)` with any strides (unit
//! stride along `head_dim`), so both `(B, H, S, D)` and `(B, S, H, D)` storage are views of it.
//! The first `rot` elements of each head are rotated; the rest pass through (partial rotary).
//! With `c`, `s` the cos/sin row of the token (`rot` values; HF's convention, whose two halves repeat):
//!
//! - half rotation (HF `rotate_half`), `h = rot/2`, `j < h`:
//!   `y[j] = x[j]·c[j] − x[j+h]·s[j]`, `y[j+h] = x[j+h]·c[j+h] + x[j]·s[j+h]`;
//!   backward `dx[j] = dy[j]·c[j] + dy[j+h]·s[j+h]`, `dx[j+h] = dy[j+h]·c[j+h] − dy[j]·s[j]`;
//! - interleaved (GPT-J `rotate_every_two`), pairs `(2i, 2i+1)`:
//!   `y[2i] = x[2i]·c[2i] − x[2i+1]·s[2i]`, `y[2i+1] = x[2i+1]·c[2i+1] + x[2i]·s[2i+1]`;
//!   backward `dx[2i] = dy[2i]·c[2i] + dy[2i+1]·s[2i+1]`, `dx[2i+1] = dy[2i+1]·c[2i+1] − dy[2i]·s[2i]`.
//!
//! cos/sin are either one row per token, `(batch, seq, rot)` with any strides (0 to broadcast), or
//! a table `(positions, rot)` indexed by `position_ids` `(batch, seq)` (int32; out-of-range ids are
//! clamped by the kernels, so they never read outside the table — the Python layer reports them).
//! Computed in float32 (float64 for float64 data), rounded once.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::expect_float;
use crate::tensor::{common_device, Device, Exec, TensorRef};

/// One tensor to rotate and where its result goes (the same memory for in-place).
pub struct RopeTensor<'a> {
    pub x: &'a TensorRef,
    pub out: &'a TensorRef,
}

/// The arguments of one launch: `q` and optionally `k` (their head counts may differ).
pub struct Rope<'a> {
    pub q: RopeTensor<'a>,
    pub k: Option<RopeTensor<'a>>,
    pub cos: &'a TensorRef,
    pub sin: &'a TensorRef,
    pub position_ids: Option<&'a TensorRef>,
    pub interleaved: bool,
    pub backward: bool,
}

/// One validated operand: pointers, head count and (batch, head, seq) strides in elements.
#[derive(Clone, Copy, Debug)]
pub struct Side {
    pub x: usize,
    pub out: usize,
    pub heads: usize,
    pub xs: [i64; 3],
    pub os: [i64; 3],
}

/// A validated call.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub batch: usize,
    pub seq: usize,
    pub dim: usize,
    pub rot: usize,
    pub dtype: DType,
    pub cos_dtype: DType,
    pub q: Side,
    pub k: Option<Side>,
    /// Elements `rot..dim` are copied to the output (false in place, where they already are).
    pub copy_pass: bool,
    pub cos: usize,
    pub sin: usize,
    /// Strides of a cos/sin row: (batch, seq) per token, or (0, table row) with position ids.
    pub cs: [i64; 2],
    /// Position ids: pointer and (batch, seq) strides.
    pub pos: Option<(usize, [i64; 2])>,
    pub table_rows: usize,
    pub interleaved: bool,
    pub backward: bool,
}

impl Plan {
    pub fn acc(&self) -> DType {
        self.dtype.compute()
    }
    pub fn sides(&self) -> impl Iterator<Item = &Side> {
        std::iter::once(&self.q).chain(self.k.as_ref())
    }
}

fn four_d(arg: &'static str, t: &TensorRef) -> Result<()> {
    if t.ndim() != 4 {
        return Err(Error::value(
            arg,
            format!("expected a 4-D (batch, heads, seq, head_dim) view, got shape {:?}", t.shape),
        ));
    }
    if t.shape[3] > 1 && t.strides[3] != 1 {
        return Err(Error::Unsupported(format!("{arg}: head_dim must have stride 1 (got strides {:?})", t.strides)));
    }
    Ok(())
}

fn side(
    name: &'static str,
    out_name: &'static str,
    t: &RopeTensor<'_>,
    want: &[usize; 3],
    dtype: DType,
) -> Result<Side> {
    four_d(name, t.x)?;
    four_d(out_name, t.out)?;
    let s = &t.x.shape;
    if s[0] != want[0] || s[2] != want[1] || s[3] != want[2] {
        return Err(Error::value(
            name,
            format!(
                "expected shape ({}, heads, {}, {}) (batch, seq and head_dim of q), got {:?}",
                want[0], want[1], want[2], s
            ),
        ));
    }
    if t.x.dtype != dtype {
        return Err(Error::dtype(name, format!("expected dtype {dtype} (the dtype of q), got {}", t.x.dtype)));
    }
    if t.out.shape != t.x.shape || t.out.dtype != dtype {
        return Err(Error::value(out_name, format!("expected shape {:?} and dtype {dtype}", t.x.shape)));
    }
    let st = |t: &TensorRef| [t.strides[0] as i64, t.strides[1] as i64, t.strides[2] as i64];
    Ok(Side { x: t.x.ptr, out: t.out.ptr, heads: s[1], xs: st(t.x), os: st(t.out) })
}

impl Rope<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        let mut all = vec![("q", Some(self.q.x)), ("q_out", Some(self.q.out)), ("cos", Some(self.cos))];
        all.push(("sin", Some(self.sin)));
        all.push(("position_ids", self.position_ids));
        if let Some(k) = &self.k {
            all.push(("k", Some(k.x)));
            all.push(("k_out", Some(k.out)));
        }
        let device = common_device(&all)?;
        expect_float("q", self.q.x)?;
        four_d("q", self.q.x)?;
        let dtype = self.q.x.dtype;
        let (batch, seq, dim) = (self.q.x.shape[0], self.q.x.shape[2], self.q.x.shape[3]);
        let want = [batch, seq, dim];
        let q = side("q", "q_out", &self.q, &want, dtype)?;
        let k = self.k.as_ref().map(|k| side("k", "k_out", k, &want, dtype)).transpose()?;
        let in_place = q.x == q.out;
        if let Some(k) = &k {
            if (k.x == k.out) != in_place {
                return Err(Error::value("k_out", "q and k must both be rotated in place, or neither"));
            }
        }
        expect_float("cos", self.cos)?;
        let cos_dtype = self.cos.dtype;
        if self.sin.dtype != cos_dtype || self.sin.shape != self.cos.shape || self.sin.strides != self.cos.strides {
            return Err(Error::value(
                "sin",
                format!(
                    "expected the shape, strides and dtype of cos ({:?}, {:?}, {cos_dtype}), got ({:?}, {:?}, {})",
                    self.cos.shape, self.cos.strides, self.sin.shape, self.sin.strides, self.sin.dtype
                ),
            ));
        }
        let rot = *self.cos.shape.last().unwrap_or(&0);
        if rot % 2 != 0 || rot > dim {
            return Err(Error::value(
                "cos",
                format!("expected an even rotary dimension of at most head_dim = {dim}, got {rot}"),
            ));
        }
        if rot > 1 && self.cos.strides.last() != Some(&1) {
            return Err(Error::Unsupported(format!(
                "cos: the last dimension must have stride 1 (got {:?})",
                self.cos.strides
            )));
        }
        let (cs, pos, table_rows) = match self.position_ids {
            None => {
                if self.cos.shape != [batch, seq, rot] {
                    return Err(Error::value(
                        "cos",
                        format!("expected shape ({batch}, {seq}, rot) (one row per token), got {:?}", self.cos.shape),
                    ));
                }
                ([self.cos.strides[0] as i64, self.cos.strides[1] as i64], None, 0)
            }
            Some(p) => {
                if self.cos.ndim() != 2 {
                    return Err(Error::value(
                        "cos",
                        format!("expected a (positions, rot) table with position_ids, got shape {:?}", self.cos.shape),
                    ));
                }
                if p.dtype != DType::I32 || p.shape != [batch, seq] {
                    return Err(Error::value(
                        "position_ids",
                        format!("expected an int32 tensor of shape ({batch}, {seq}), got {} {:?}", p.dtype, p.shape),
                    ));
                }
                if self.cos.shape[0] == 0 && batch * seq > 0 {
                    return Err(Error::value("cos", "the table has no rows"));
                }
                let ps = [p.strides[0] as i64, p.strides[1] as i64];
                ([0, self.cos.strides[0] as i64], Some((p.ptr, ps)), self.cos.shape[0])
            }
        };
        let plan = Plan {
            batch,
            seq,
            dim,
            rot,
            dtype,
            cos_dtype,
            q,
            k,
            copy_pass: !in_place && rot < dim,
            cos: self.cos.ptr,
            sin: self.sin.ptr,
            cs,
            pos,
            table_rows,
            interleaved: self.interleaved,
            backward: self.backward,
        };
        Ok((device, plan))
    }
}

/// Rotates `q` (and `k`) into their outputs on the tensors' device.
pub fn rope(args: &Rope<'_>, exec: Exec) -> Result<()> {
    let (device, plan) = args.plan()?;
    let heads: usize = plan.sides().map(|s| s.heads).sum();
    if plan.batch * plan.seq * heads * plan.dim == 0 || (plan.rot == 0 && !plan.copy_pass) {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::rope::run(&plan),
        Device::Cuda(ordinal) => crate::cuda::rope::run(&plan, ordinal, exec),
    }
}
