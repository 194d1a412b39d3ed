//! Binding of the multi-tensor AdamW step.

use crate::bridge::{to_py, Desc};
use metalcore_core::ops::adamw::{adamw, AdamW, AdamWTensors, Hyper};
use metalcore_core::{Exec, TensorRef};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn refs(arg: &'static str, v: &[Desc]) -> PyResult<Vec<TensorRef>> {
    v.iter().map(|d| d.to_ref(arg)).collect()
}

/// One AdamW step over parameters of one dtype (lists of equal length; optional state lists are
/// None or as long as `params`). `step` is the step number after this update.
#[pyfunction]
#[pyo3(signature = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, masters, lr, beta1, beta2, eps, weight_decay, step, maximize, seed, stream))]
#[allow(clippy::too_many_arguments)]
fn adamw_step(
    py: Python<'_>,
    params: Vec<Desc>,
    grads: Vec<Desc>,
    exp_avgs: Vec<Desc>,
    exp_avg_sqs: Vec<Desc>,
    max_exp_avg_sqs: Option<Vec<Desc>>,
    masters: Option<Vec<Desc>>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: f64,
    maximize: bool,
    seed: Option<u64>,
    stream: usize,
) -> PyResult<()> {
    let n = params.len();
    let lens = [grads.len(), exp_avgs.len(), exp_avg_sqs.len()];
    let opt_lens = [max_exp_avg_sqs.as_ref().map(|v| v.len()), masters.as_ref().map(|v| v.len())];
    if lens.iter().any(|&l| l != n) || opt_lens.iter().flatten().any(|&l| l != n) {
        return Err(PyValueError::new_err("params: every tensor list must have one entry per parameter"));
    }
    let (p, g) = (refs("param", &params)?, refs("grad", &grads)?);
    let (m, v) = (refs("exp_avg", &exp_avgs)?, refs("exp_avg_sq", &exp_avg_sqs)?);
    let vm = max_exp_avg_sqs.map(|x| refs("max_exp_avg_sq", &x)).transpose()?;
    let ms = masters.map(|x| refs("master", &x)).transpose()?;
    let tensors = (0..n)
        .map(|i| AdamWTensors {
            param: &p[i],
            grad: &g[i],
            exp_avg: &m[i],
            exp_avg_sq: &v[i],
            max_exp_avg_sq: vm.as_ref().map(|x| &x[i]),
            master: ms.as_ref().map(|x| &x[i]),
        })
        .collect();
    let hyper = Hyper { lr, beta1, beta2, eps, weight_decay, step, maximize, seed };
    let args = AdamW { tensors, hyper };
    py.detach(|| adamw(&args, Exec::on(stream))).map_err(to_py)
}

/// Adds `delta` to each float32 at the host addresses `ptrs` and returns the new values: the
/// step counters of an AdamW step (0-d float32 CPU tensors, checked by the caller), in one call
/// instead of torch's `_foreach_add_` (~2 µs per counter on the CPU).
#[pyfunction]
fn add_to_f32_scalars(ptrs: Vec<usize>, delta: f32) -> Vec<f64> {
    ptrs.iter()
        .map(|&a| {
            // SAFETY: the caller passes the data pointers of live, distinct float32 CPU tensors.
            unsafe {
                let x = a as *mut f32;
                *x += delta;
                *x as f64
            }
        })
        .collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(adamw_step, m)?)?;
    m.add_function(wrap_pyfunction!(add_to_f32_scalars, m)?)?;
    Ok(())
}
