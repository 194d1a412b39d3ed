//! Bindings of the activations and gated linear units.

use crate::bridge::{opt, to_py, Desc};
use metalcore_core::ops::act::{act_bwd, act_fwd, glu_bwd, glu_fwd, Act, ActBwd, ActFwd, GluBwd, GluFwd};
use metalcore_core::Exec;
use pyo3::prelude::*;

fn act_of(code: u32) -> PyResult<Act> {
    Act::from_code(code).map_err(to_py)
}

/// `out = f(x + bias)` for activation code `act` (0 silu, 1 gelu, 2 gelu tanh).
#[pyfunction]
#[pyo3(signature = (act, x, bias, out, stream))]
fn act_fwd_into(py: Python<'_>, act: u32, x: Desc, bias: Option<Desc>, out: Desc, stream: usize) -> PyResult<()> {
    let act = act_of(act)?;
    let (x, bias, y) = (x.to_ref("x")?, opt("bias", &bias)?, out.to_ref("out")?);
    py.detach(|| act_fwd(&ActFwd { act, x: &x, bias: bias.as_ref(), y: &y }, Exec::on(stream))).map_err(to_py)
}

/// `grad_x = grad_out · f'(x + bias)`.
#[pyfunction]
#[pyo3(signature = (act, x, bias, grad_out, grad_x, stream))]
fn act_bwd_into(
    py: Python<'_>,
    act: u32,
    x: Desc,
    bias: Option<Desc>,
    grad_out: Desc,
    grad_x: Desc,
    stream: usize,
) -> PyResult<()> {
    let act = act_of(act)?;
    let (x, bias) = (x.to_ref("x")?, opt("bias", &bias)?);
    let (dy, dx) = (grad_out.to_ref("grad_out")?, grad_x.to_ref("grad_x")?);
    let args = ActBwd { act, x: &x, bias: bias.as_ref(), dy: &dy, dx: &dx };
    py.detach(|| act_bwd(&args, Exec::on(stream))).map_err(to_py)
}

/// `out = f(gate) · up`.
#[pyfunction]
#[pyo3(signature = (act, gate, up, out, stream))]
fn glu_fwd_into(py: Python<'_>, act: u32, gate: Desc, up: Desc, out: Desc, stream: usize) -> PyResult<()> {
    let act = act_of(act)?;
    let (g, u, h) = (gate.to_ref("gate")?, up.to_ref("up")?, out.to_ref("out")?);
    py.detach(|| glu_fwd(&GluFwd { act, gate: &g, up: &u, h: &h }, Exec::on(stream))).map_err(to_py)
}

/// `grad_gate = grad_out · up · f'(gate)`, `grad_up = grad_out · f(gate)`.
#[pyfunction]
#[pyo3(signature = (act, gate, up, grad_out, grad_gate, grad_up, stream))]
#[allow(clippy::too_many_arguments)]
fn glu_bwd_into(
    py: Python<'_>,
    act: u32,
    gate: Desc,
    up: Desc,
    grad_out: Desc,
    grad_gate: Desc,
    grad_up: Desc,
    stream: usize,
) -> PyResult<()> {
    let act = act_of(act)?;
    let (g, u, dh) = (gate.to_ref("gate")?, up.to_ref("up")?, grad_out.to_ref("grad_out")?);
    let (dg, du) = (grad_gate.to_ref("grad_gate")?, grad_up.to_ref("grad_up")?);
    let args = GluBwd { act, gate: &g, up: &u, dh: &dh, d_gate: &dg, d_up: &du };
    py.detach(|| glu_bwd(&args, Exec::on(stream))).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(act_fwd_into, m)?)?;
    m.add_function(wrap_pyfunction!(act_bwd_into, m)?)?;
    m.add_function(wrap_pyfunction!(glu_fwd_into, m)?)?;
    m.add_function(wrap_pyfunction!(glu_bwd_into, m)?)?;
    Ok(())
}
