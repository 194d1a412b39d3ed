//! AdamW step over many tensors at once (multi-tensor): validation and dispatch.
//!
//! For every element, with gradient `g` (negated with `maximize`), step `t`, and `p` the parameter
//! (its float32 master copy when there is one), in the order torch's AdamW applies them:
//!   `p ← p·(1 − lr·wd)`; `m ← m + (1 − β1)(g − m)`; `v ← β2·v + (1 − β2)·g²`;
//!   `v̂ ← max(v̂, v)` with amsgrad (else `v̂ = v`);
//!   `p ← p − (lr / (1 − β1^t)) · m / (√v̂ / √(1 − β2^t) + ε)`.
//! Arithmetic in float32 (float64 for float64 parameters); moments in float32 for 16-bit
//! parameters. The new value is rounded to the parameter's dtype to nearest even, or
//! stochastically (bfloat16/float16 parameters without a master copy, when a seed is given: the
//! discarded low bits are compared with a hash of (seed, tensor, element)).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{common_device, Device, Exec, TensorRef};

/// The tensors of one parameter.
pub struct AdamWTensors<'a> {
    pub param: &'a TensorRef,
    pub grad: &'a TensorRef,
    pub exp_avg: &'a TensorRef,
    pub exp_avg_sq: &'a TensorRef,
    pub max_exp_avg_sq: Option<&'a TensorRef>,
    pub master: Option<&'a TensorRef>,
}

#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// The step number after this update (1 for the first).
    pub step: f64,
    pub maximize: bool,
    /// Stochastic rounding of 16-bit parameters, with this seed.
    pub seed: Option<u64>,
}

/// One step over parameters of one dtype, all with the same optional states.
pub struct AdamW<'a> {
    pub tensors: Vec<AdamWTensors<'a>>,
    pub hyper: Hyper,
}

/// One validated parameter: pointers (0 when absent) and its element count.
#[derive(Clone, Copy, Debug)]
pub struct Item {
    pub param: usize,
    pub grad: usize,
    pub m: usize,
    pub v: usize,
    pub vmax: usize,
    pub master: usize,
    pub numel: usize,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub dtype: DType,
    /// Dtype of the moments (and master copy): float32, or float64 for float64 parameters.
    pub state: DType,
    pub items: Vec<Item>,
    pub amsgrad: bool,
    pub master: bool,
    pub hyper: Hyper,
}

fn contiguous(arg: &'static str, t: &TensorRef) -> Result<()> {
    let mut expect = 1isize;
    for (n, s) in t.shape.iter().zip(&t.strides).rev() {
        if *n > 1 && *s != expect {
            return Err(Error::Unsupported(format!(
                "{arg}: expected a contiguous tensor, got strides {:?}",
                t.strides
            )));
        }
        expect *= *n as isize;
    }
    Ok(())
}

fn like(arg: &'static str, t: &TensorRef, param: &TensorRef, dtype: DType) -> Result<usize> {
    if t.shape != param.shape {
        return Err(Error::value(
            arg,
            format!("expected the shape of its parameter {:?}, got {:?}", param.shape, t.shape),
        ));
    }
    if t.dtype != dtype {
        return Err(Error::dtype(arg, format!("expected dtype {dtype}, got {}", t.dtype)));
    }
    contiguous(arg, t)?;
    Ok(t.ptr)
}

impl AdamW<'_> {
    pub fn plan(&self) -> Result<(Device, Plan)> {
        let first = self.tensors.first().ok_or_else(|| Error::value("params", "no tensors given"))?;
        let dtype = first.param.dtype;
        if !dtype.is_float() {
            return Err(Error::dtype("param", format!("expected a floating dtype, got {dtype}")));
        }
        let state = dtype.compute();
        let amsgrad = first.max_exp_avg_sq.is_some();
        let master = first.master.is_some();
        let mut all: Vec<(&'static str, Option<&TensorRef>)> = Vec::new();
        let mut items = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            all.extend([("param", Some(t.param)), ("grad", Some(t.grad)), ("exp_avg", Some(t.exp_avg))]);
            all.extend([
                ("exp_avg_sq", Some(t.exp_avg_sq)),
                ("max_exp_avg_sq", t.max_exp_avg_sq),
                ("master", t.master),
            ]);
            if t.param.dtype != dtype {
                return Err(Error::dtype(
                    "param",
                    format!("expected one dtype per call ({dtype}), got {}", t.param.dtype),
                ));
            }
            if t.max_exp_avg_sq.is_some() != amsgrad || t.master.is_some() != master {
                return Err(Error::value("max_exp_avg_sq", "every parameter of a call must have the same states"));
            }
            contiguous("param", t.param)?;
            let item = Item {
                param: t.param.ptr,
                grad: like("grad", t.grad, t.param, dtype)?,
                m: like("exp_avg", t.exp_avg, t.param, state)?,
                v: like("exp_avg_sq", t.exp_avg_sq, t.param, state)?,
                vmax: t.max_exp_avg_sq.map(|x| like("max_exp_avg_sq", x, t.param, state)).transpose()?.unwrap_or(0),
                master: t.master.map(|x| like("master", x, t.param, state)).transpose()?.unwrap_or(0),
                numel: t.param.numel(),
            };
            items.push(item);
        }
        let device = common_device(&all)?;
        check_hyper(&self.hyper)?;
        Ok((device, Plan { dtype, state, items, amsgrad, master, hyper: self.hyper }))
    }
}

fn check_hyper(h: &Hyper) -> Result<()> {
    if !(h.lr >= 0.0 && h.eps >= 0.0 && (0.0..1.0).contains(&h.beta1) && (0.0..1.0).contains(&h.beta2) && h.step >= 1.0) {
        return Err(Error::value("hyperparameters", format!("invalid lr/betas/eps/step: {h:?}")));
    }
    Ok(())
}

impl Plan {
    /// This plan with new gradient addresses (one per parameter, in order) and hyperparameters.
    /// The caller vouches that each gradient is a contiguous tensor of its parameter's shape, dtype
    /// and device (torch keeps a parameter's `.grad` so), as validated when the plan was made.
    pub fn rebind(&self, grads: &[usize], hyper: Hyper) -> Result<Plan> {
        if grads.len() != self.items.len() {
            return Err(Error::value(
                "grads",
                format!("expected {} gradient addresses (one per parameter), got {}", self.items.len(), grads.len()),
            ));
        }
        check_hyper(&hyper)?;
        let mut plan = self.clone();
        for (item, &g) in plan.items.iter_mut().zip(grads) {
            if g == 0 && item.numel > 0 {
                return Err(Error::value("grads", "a null address for a non-empty gradient"));
            }
            item.grad = g;
        }
        plan.hyper = hyper;
        Ok(plan)
    }
}

/// Runs a validated (or rebound) plan on its device.
pub fn run(device: Device, plan: &Plan, exec: Exec) -> Result<()> {
    if plan.items.iter().all(|i| i.numel == 0) {
        return Ok(());
    }
    match device {
        Device::Cpu => crate::cpu::adamw::run(plan),
        Device::Cuda(ordinal) => crate::cuda::adamw::run(plan, ordinal, exec),
    }
}

/// Elements per block (CUDA) or per task (CPU).
pub const CHUNK: usize = 16384;
