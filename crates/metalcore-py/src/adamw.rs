//! Binding of the multi-tensor AdamW step.

use crate::bridge::{to_py, Desc};
use metalcore_core::ops::adamw::{run, AdamW, AdamWTensors, Hyper, Plan};
use metalcore_core::Device;
use metalcore_core::{Exec, TensorRef};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn refs(arg: &'static str, v: &[Desc]) -> PyResult<Vec<TensorRef>> {
    v.iter().map(|d| d.to_ref(arg)).collect()
}

/// The validated tensors of one parameter list (`adamw_plan`): each step passes only the
/// gradients' addresses and the hyperparameters.
#[pyclass(frozen)]
struct AdamWPlan {
    device: Device,
    plan: Plan,
}

#[pymethods]
impl AdamWPlan {
    /// One step with these gradient addresses (one per parameter, in the plan's order; the caller
    /// vouches that each is a contiguous gradient of its parameter, as torch keeps `.grad`).
    #[pyo3(signature = (grads, lr, beta1, beta2, eps, weight_decay, step, maximize, seed, stream))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        grads: Vec<usize>,
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
        let hyper = Hyper { lr, beta1, beta2, eps, weight_decay, step, maximize, seed };
        let plan = self.plan.rebind(&grads, hyper).map_err(to_py)?;
        py.detach(|| run(self.device, &plan, Exec::on(stream))).map_err(to_py)
    }
}

/// Validates one parameter list with its states and current gradients, as a reusable plan.
#[pyfunction]
#[pyo3(signature = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, masters))]
fn adamw_plan(
    params: Vec<Desc>,
    grads: Vec<Desc>,
    exp_avgs: Vec<Desc>,
    exp_avg_sqs: Vec<Desc>,
    max_exp_avg_sqs: Option<Vec<Desc>>,
    masters: Option<Vec<Desc>>,
) -> PyResult<AdamWPlan> {
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
    // Hyperparameters of a valid step; every `step` call brings its own.
    let hyper = Hyper { lr: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1.0, maximize: false, seed: None };
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
    let args = AdamW { tensors, hyper };
    let (device, plan) = args.plan().map_err(to_py)?;
    Ok(AdamWPlan { device, plan })
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
    m.add_class::<AdamWPlan>()?;
    m.add_function(wrap_pyfunction!(adamw_plan, m)?)?;
    m.add_function(wrap_pyfunction!(add_to_f32_scalars, m)?)?;
    Ok(())
}
