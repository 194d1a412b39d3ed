//! Elementwise activations and gated linear units, forward and backward: validation and dispatch.
//!
//! Activations `f` (computed in float32, float64 for float64 data; outputs in the input's dtype):
//! - SiLU: `f(x) = x·σ(x)`, `f'(x) = σ(x)·(1 + x·(1 − σ(x)))`, with `σ(x) = 1/(1 + e^(−x))`.
//! - GELU (exact): `f(x) = x·Φ(x)`, `f'(x) = Φ(x) + x·φ(x)` (Φ, φ: standard normal CDF and density).
//! - GELU (tanh): `f(x) = ½x(1 + tanh u)` with `u = √(2/π)(x + 0.044715x³)`. Since
//!   `½(1 + tanh u) = σ(2u)`, it is computed as `x·σ(2u)`, accurate also where `1 + tanh u` cancels;
//!   `f'(x) = s + x·s(1 − s)·2√(2/π)(1 + 3·0.044715x²)` with `s = σ(2u)`.
//!
//! Every form is `x · g(x)` with `g` in [0, 1], so ±inf and NaN behave as in torch (`f(−inf)` is NaN).
//!
//! Modes (operands in this order):
//! - [`Mode::Fwd`]: `y = f(x + b)` — inputs `[x]`, outputs `[y]`, optional bias `b` over the last dim.
//! - [`Mode::Bwd`]: `dx = dy · f'(x + b)` — inputs `[x, dy]`, outputs `[dx]`.
//! - [`Mode::GluFwd`]: `h = f(gate) · up` (SwiGLU for SiLU, GeGLU for GELU) — inputs `[gate, up]`, outputs `[h]`.
//! - [`Mode::GluBwd`]: `d_gate = dh · up · f'(gate)`, `d_up = dh · f(gate)` — inputs `[gate, up, dh]`,
//!   outputs `[d_gate, d_up]`.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{expect_dtype, expect_float, rows_like, rows_of, vector, Mat};
use crate::tensor::{common_device, Device, Exec, TensorRef};

/// The activation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    Silu,
    Gelu,
    GeluTanh,
}

impl Act {
    /// From the binding's integer code: 0 SiLU, 1 GELU (exact), 2 GELU (tanh).
    pub fn from_code(code: u32) -> Result<Self> {
        match code {
            0 => Ok(Act::Silu),
            1 => Ok(Act::Gelu),
            2 => Ok(Act::GeluTanh),
            _ => Err(Error::value("act", format!("expected 0 (silu), 1 (gelu) or 2 (gelu tanh), got {code}"))),
        }
    }
}

/// What the kernel computes (see the module docs for the operands of each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Fwd,
    Bwd,
    GluFwd,
    GluBwd,
}

/// A validated call: every operand is a `rows × cols` view of one dtype. Inputs and outputs are
/// listed in the order of [`Mode`]. When every operand is contiguous and there is no bias, the
/// plan is one row of all the elements.
#[derive(Clone, Debug)]
pub struct Plan {
    pub act: Act,
    pub mode: Mode,
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    pub ins: Vec<Mat>,
    pub outs: Vec<Mat>,
    /// A bias of `cols` elements added to `x` (modes `Fwd`/`Bwd` only).
    pub bias: Option<Mat>,
}

impl Plan {
    pub fn acc(&self) -> DType {
        self.dtype.compute()
    }
}

/// Builds a plan: `ins[0]` sets the shape and dtype every other operand must have.
fn plan(
    act: Act,
    mode: Mode,
    ins: &[(&'static str, &TensorRef)],
    outs: &[(&'static str, &TensorRef)],
    bias: Option<&TensorRef>,
) -> Result<(Device, Plan)> {
    let mut all: Vec<(&'static str, Option<&TensorRef>)> = ins.iter().chain(outs).map(|&(n, t)| (n, Some(t))).collect();
    all.push(("bias", bias));
    let device = common_device(&all)?;
    let (first_name, first) = ins[0];
    expect_float(first_name, first)?;
    let dtype = first.dtype;
    let (r, m0) = rows_of(first_name, first)?;
    let mut in_mats = vec![m0];
    for &(name, t) in &ins[1..] {
        expect_dtype(name, t, dtype)?;
        in_mats.push(rows_like(name, t, first_name, first)?);
    }
    let mut out_mats = Vec::with_capacity(outs.len());
    for &(name, t) in outs {
        expect_dtype(name, t, dtype)?;
        out_mats.push(rows_like(name, t, first_name, first)?);
    }
    let bias = match bias {
        Some(b) => {
            expect_dtype("bias", b, dtype)?;
            Some(vector("bias", b, r.cols)?)
        }
        None => None,
    };
    let (mut rows, mut cols) = (r.rows, r.cols);
    let dense = in_mats.iter().chain(&out_mats).all(|m| m.row_stride == cols);
    if bias.is_none() && dense && rows > 1 {
        cols *= rows;
        rows = 1;
        for m in in_mats.iter_mut().chain(out_mats.iter_mut()) {
            m.row_stride = cols;
        }
    }
    Ok((device, Plan { act, mode, rows, cols, dtype, ins: in_mats, outs: out_mats, bias }))
}

/// `y = f(x + bias)`.
pub struct ActFwd<'a> {
    pub act: Act,
    pub x: &'a TensorRef,
    pub bias: Option<&'a TensorRef>,
    pub y: &'a TensorRef,
}

/// `dx = dy · f'(x + bias)`.
pub struct ActBwd<'a> {
    pub act: Act,
    pub x: &'a TensorRef,
    pub bias: Option<&'a TensorRef>,
    pub dy: &'a TensorRef,
    pub dx: &'a TensorRef,
}

/// `h = f(gate) · up`.
pub struct GluFwd<'a> {
    pub act: Act,
    pub gate: &'a TensorRef,
    pub up: &'a TensorRef,
    pub h: &'a TensorRef,
}

/// `d_gate = dh · up · f'(gate)`, `d_up = dh · f(gate)`.
pub struct GluBwd<'a> {
    pub act: Act,
    pub gate: &'a TensorRef,
    pub up: &'a TensorRef,
    pub dh: &'a TensorRef,
    pub d_gate: &'a TensorRef,
    pub d_up: &'a TensorRef,
}

impl ActFwd<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        plan(self.act, Mode::Fwd, &[("x", self.x)], &[("out", self.y)], self.bias)
    }
}

impl ActBwd<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        plan(self.act, Mode::Bwd, &[("x", self.x), ("grad_out", self.dy)], &[("grad_x", self.dx)], self.bias)
    }
}

impl GluFwd<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        plan(self.act, Mode::GluFwd, &[("gate", self.gate), ("up", self.up)], &[("out", self.h)], None)
    }
}

impl GluBwd<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        let ins = [("gate", self.gate), ("up", self.up), ("grad_out", self.dh)];
        plan(self.act, Mode::GluBwd, &ins, &[("grad_gate", self.d_gate), ("grad_up", self.d_up)], None)
    }
}

fn run(planned: Result<(Device, Plan)>, exec: Exec) -> Result<()> {
    let (device, plan) = planned?;
    if plan.rows == 0 || plan.cols == 0 {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::act::run(&plan),
        Device::Cuda(ordinal) => crate::cuda::act::run(&plan, ordinal, exec),
    }
}

pub fn act_fwd(args: &ActFwd<'_>, exec: Exec) -> Result<()> {
    run(args.plan(), exec)
}

pub fn act_bwd(args: &ActBwd<'_>, exec: Exec) -> Result<()> {
    run(args.plan(), exec)
}

pub fn glu_fwd(args: &GluFwd<'_>, exec: Exec) -> Result<()> {
    run(args.plan(), exec)
}

pub fn glu_bwd(args: &GluBwd<'_>, exec: Exec) -> Result<()> {
    run(args.plan(), exec)
}
