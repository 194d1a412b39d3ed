//! Bindings of gather, scatter-add and the sorted index-add.

use crate::bridge::{opt, to_py, Desc};
use metalcore_core::ops::index::{index_op, IndexArgs, Kind};
use metalcore_core::Exec;
use pyo3::prelude::*;

/// One op of the family over 3-D views, kind code 0 gather (table -> rows), 1 scatter-add and
/// 2 sorted add (rows -> table; the sorted add with its int64 permutation). Returns true when the
/// CPU kernel met an index out of range (CUDA: always false).
#[pyfunction]
#[pyo3(signature = (kind, table, rows, index, perm, stream))]
fn index_into(
    py: Python<'_>,
    kind: u32,
    table: Desc,
    rows: Desc,
    index: Desc,
    perm: Option<Desc>,
    stream: usize,
) -> PyResult<bool> {
    let kind = Kind::from_code(kind).map_err(to_py)?;
    let (t, r, x, p) = (table.to_ref("table")?, rows.to_ref("rows")?, index.to_ref("index")?, opt("perm", &perm)?);
    let args = IndexArgs { kind, table: &t, rows: &r, index: &x, perm: p.as_ref() };
    py.detach(|| index_op(&args, Exec::on(stream))).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(index_into, m)?)?;
    Ok(())
}
