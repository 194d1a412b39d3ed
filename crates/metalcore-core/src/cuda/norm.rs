//! RMSNorm and LayerNorm on CUDA: variant selection and launches (math in `kernels/norm.cu`).

use super::jit::{function, Defines, Kernel};
use super::rows::{base_defines, flag, geometry, knob, ptr_of, Geometry, Knob};
use super::{borrowed_stream, cfg, ctype, device, driver_err, vector_width, ContextGuard, DeviceState};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::norm::{BwdPlan, FwdPlan, NormKind};
use crate::tensor::Exec;
use cudarc::driver::{CudaFunction, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub static KERNEL: Kernel = Kernel { name: "norm", source: include_str!("../../kernels/norm.cu") };

// Defaults from a sweep on an H200 (2026-11-26; bf16 and fp32, rows of 1024, 4096 and 8192; see
// bench/results/rmsnorm-tuning-nvidia-h200.md): the forward streams best with 32 elements per
// thread, the backward (which keeps x, dy and dw partials live) with 8 and at least two
// resident blocks per SM.

/// Elements per thread the forward's register path aims for (METALCORE_NORM_ELEMS_FWD).
fn fwd_elems() -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_NORM_ELEMS_FWD", 32)
}

/// Elements per thread the backward's register path aims for (METALCORE_NORM_ELEMS_BWD).
fn bwd_elems() -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_NORM_ELEMS_BWD", 8)
}

/// Minimum resident blocks per SM asked of the compiler (`__launch_bounds__`), which caps the
/// registers per thread (METALCORE_NORM_MINB_FWD / _BWD).
fn fwd_min_blocks() -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_NORM_MINB_FWD", 1)
}

fn bwd_min_blocks() -> usize {
    static C: Knob = Knob::new();
    knob(&C, "METALCORE_NORM_MINB_BWD", 2)
}

fn fwd_geometry(p: &FwdPlan) -> Geometry {
    let mut ops = vec![(p.x.ptr, p.x.row_stride, p.x.dtype.size()), (p.y.ptr, p.y.row_stride, p.y.dtype.size())];
    for m in [p.residual, p.residual_out].into_iter().flatten() {
        ops.push((m.ptr, m.row_stride, m.dtype.size()));
    }
    for v in [p.weight, p.bias].into_iter().flatten() {
        ops.push((v.ptr, 0, v.dtype.size()));
    }
    geometry(p.cols, vector_width(p.x.dtype, p.cols, &ops), fwd_elems())
}

fn fwd_defines(p: &FwdPlan, g: &Geometry) -> Defines {
    let mut d = base_defines(g, p.acc);
    d.extend([
        ("MINB", fwd_min_blocks().min(2048 / g.block).max(1).to_string()),
        ("T_X", ctype(p.x.dtype).to_string()),
        ("T_W", ctype(fwd_param_dtype(p)).to_string()),
        ("T_Y", ctype(p.y.dtype).to_string()),
        ("LAYER", flag(p.kind == NormKind::Layer)),
        ("HAS_W", flag(p.weight.is_some())),
        ("HAS_B", flag(p.bias.is_some())),
        ("HAS_RES", flag(p.residual.is_some())),
        ("HAS_RSTD", flag(p.rstd.is_some())),
        ("CAST_BEFORE_W", flag(p.cast_before_weight)),
        // Unused by the forward entry, fixed so that forward and backward can share a module.
        ("T_DY", "float".into()),
        ("T_DX", "float".into()),
        ("T_DR", "float".into()),
    ]);
    d
}

/// Storage dtype of the weight/bias (they share one); x's when neither is given.
fn fwd_param_dtype(p: &FwdPlan) -> DType {
    p.weight.or(p.bias).map_or(p.x.dtype, |m| m.dtype)
}

/// Storage dtype of the weight and of the weight/bias gradients (they share one).
fn bwd_param_dtype(p: &BwdPlan) -> DType {
    p.weight.or(p.dw).or(p.db).map_or(p.x.dtype, |m| m.dtype)
}

/// What selects a compiled variant: cheap to build and hash on every call, unlike the `-D` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct VariantKey {
    ordinal: usize,
    kind: NormKind,
    dtypes: [DType; 5],
    geometry: Geometry,
    flags: [bool; 7],
}

/// Loaded functions of one variant, and the backward grid size it allows.
#[derive(Clone)]
struct Loaded {
    main: CudaFunction,
    reduce: Option<CudaFunction>,
    grid_cap: usize,
}

fn loaded_cache() -> &'static Mutex<HashMap<VariantKey, Loaded>> {
    static C: OnceLock<Mutex<HashMap<VariantKey, Loaded>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

fn fwd_key(p: &FwdPlan, ordinal: usize, g: Geometry) -> VariantKey {
    VariantKey {
        ordinal,
        kind: p.kind,
        dtypes: [p.x.dtype, fwd_param_dtype(p), p.y.dtype, p.acc, p.acc],
        geometry: g,
        flags: [
            p.weight.is_some(),
            p.residual.is_some(),
            p.rstd.is_some(),
            p.cast_before_weight,
            false,
            p.bias.is_some(),
            false,
        ],
    }
}

fn bwd_key(p: &BwdPlan, ordinal: usize, g: Geometry) -> VariantKey {
    let dr = p.d_residual_out.map_or(p.x.dtype, |m| m.dtype);
    VariantKey {
        ordinal,
        kind: p.kind,
        dtypes: [p.x.dtype, bwd_param_dtype(p), p.dy.dtype, p.dx.dtype, dr],
        geometry: g,
        flags: [
            p.weight.is_some(),
            p.dw.is_some(),
            p.d_residual_out.is_some(),
            p.cast_before_weight,
            true,
            p.acc == DType::F64,
            p.db.is_some(),
        ],
    }
}

fn cached(key: VariantKey, make: impl FnOnce() -> Result<Loaded>) -> Result<Loaded> {
    if let Some(l) = loaded_cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(l.clone());
    }
    let l = make()?;
    loaded_cache().lock().unwrap_or_else(|e| e.into_inner()).insert(key, l.clone());
    Ok(l)
}

pub fn fwd(p: &FwdPlan, ordinal: usize, exec: Exec) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let g = fwd_geometry(p);
    let f = cached(fwd_key(p, ordinal, g), || {
        let main = function(&dev, &KERNEL, &fwd_defines(p, &g), "norm_fwd")?;
        Ok(Loaded { main, reduce: None, grid_cap: 0 })
    })?
    .main;
    let rpb = g.block / g.tpr;
    let grid = p.rows.div_ceil(rpb).min(dev.sm_count * 64) as u32;
    let stream = borrowed_stream(&dev, exec.stream);
    let (x, res, w, b, y, ro) = (
        p.x.ptr as u64,
        ptr_of(p.residual, |m| m.ptr),
        ptr_of(p.weight, |m| m.ptr),
        ptr_of(p.bias, |m| m.ptr),
        p.y.ptr as u64,
        ptr_of(p.residual_out, |m| m.ptr),
    );
    let (mean, rstd) = (p.mean.unwrap_or(0) as u64, p.rstd.unwrap_or(0) as u64);
    let (x_rs, res_rs, y_rs, ro_rs) = (
        p.x.row_stride as i64,
        p.residual.map_or(0, |m| m.row_stride) as i64,
        p.y.row_stride as i64,
        p.residual_out.map_or(0, |m| m.row_stride) as i64,
    );
    let (rows, cols) = (p.rows as i64, p.cols as i32);
    let (eps32, off32, eps64, off64) = (p.eps as f32, p.offset as f32, p.eps, p.offset);
    let mut l = stream.launch_builder(&f);
    l.arg(&x).arg(&x_rs).arg(&res).arg(&res_rs).arg(&w).arg(&b).arg(&y).arg(&y_rs).arg(&ro).arg(&ro_rs);
    l.arg(&mean).arg(&rstd).arg(&rows).arg(&cols);
    if p.acc == DType::F64 {
        l.arg(&eps64).arg(&off64);
    } else {
        l.arg(&eps32).arg(&off32);
    }
    // SAFETY: every pointer is a live tensor validated for this shape by `RmsNormFwd::plan`, the
    // argument list matches the kernel's signature, and the launch goes on the caller's stream.
    unsafe { l.launch(cfg(grid, (g.block as u32, 1), 0)) }.map_err(driver_err("launching norm_fwd"))?;
    Ok(())
}

fn bwd_geometry(p: &BwdPlan) -> Geometry {
    let mut ops = vec![
        (p.x.ptr, p.x.row_stride, p.x.dtype.size()),
        (p.dy.ptr, p.dy.row_stride, p.dy.dtype.size()),
        (p.dx.ptr, p.dx.row_stride, p.dx.dtype.size()),
    ];
    if let Some(m) = p.d_residual_out {
        ops.push((m.ptr, m.row_stride, m.dtype.size()));
    }
    if let Some(w) = p.weight {
        ops.push((w.ptr, 0, w.dtype.size()));
    }
    if let Some((ws, _)) = p.workspace {
        ops.push((ws, p.cols, p.acc.size()));
    }
    geometry(p.cols, vector_width(p.x.dtype, p.cols, &ops), bwd_elems())
}

fn bwd_defines(p: &BwdPlan, g: &Geometry) -> Defines {
    let mut d = base_defines(g, p.acc);
    d.extend([
        ("MINB", bwd_min_blocks().min(2048 / g.block).max(1).to_string()),
        ("T_X", ctype(p.x.dtype).to_string()),
        ("T_W", ctype(bwd_param_dtype(p)).to_string()),
        ("T_DY", ctype(p.dy.dtype).to_string()),
        ("T_DX", ctype(p.dx.dtype).to_string()),
        ("T_DR", ctype(p.d_residual_out.map_or(p.x.dtype, |m| m.dtype)).to_string()),
        ("LAYER", flag(p.kind == NormKind::Layer)),
        ("HAS_W", flag(p.weight.is_some())),
        ("HAS_DW", flag(p.dw.is_some())),
        ("HAS_DB", flag(p.db.is_some())),
        ("HAS_DRES", flag(p.d_residual_out.is_some())),
        ("CAST_BEFORE_W", flag(p.cast_before_weight)),
        ("T_Y", "float".into()),
    ]);
    d
}

/// The backward variant for `p`, loaded, with its grid: as many blocks as are resident at once
/// (occupancy, read once per variant), at most one per row group.
fn bwd_loaded(dev: &DeviceState, p: &BwdPlan) -> Result<(Geometry, Loaded, usize)> {
    let g = bwd_geometry(p);
    let l = cached(bwd_key(p, dev.ctx.ordinal(), g), || {
        let d = bwd_defines(p, &g);
        let main = function(dev, &KERNEL, &d, "norm_bwd")?;
        let reduce = Some(function(dev, &KERNEL, &d, "norm_col_reduce")?);
        let occ = main
            .occupancy_max_active_blocks_per_multiprocessor(g.block as u32, 0, None)
            .map_err(driver_err("querying occupancy"))?
            .max(1) as usize;
        Ok(Loaded { main, reduce, grid_cap: dev.sm_count * occ })
    })?;
    let groups = p.rows.div_ceil(g.block / g.tpr).max(1);
    let grid = groups.min(l.grid_cap);
    Ok((g, l, grid))
}

/// Elements of one partial-sum array (dw or db): one row of `cols` per row group.
fn partial_len(g: &Geometry, grid: usize, p: &BwdPlan) -> usize {
    grid * (g.block / g.tpr) * p.cols
}

fn workspace_need(g: &Geometry, grid: usize, p: &BwdPlan) -> usize {
    (p.dw.is_some() as usize + p.db.is_some() as usize) * partial_len(g, grid, p)
}

/// Workspace elements (of the accumulation dtype) that `bwd` needs for this call.
pub fn bwd_workspace_len(p: &BwdPlan, ordinal: usize) -> Result<usize> {
    if p.dw.is_none() && p.db.is_none() {
        return Ok(0);
    }
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let (g, _, grid) = bwd_loaded(&dev, p)?;
    Ok(workspace_need(&g, grid, p))
}

pub fn bwd(p: &BwdPlan, ordinal: usize, exec: Exec) -> Result<()> {
    let dev = device(ordinal)?;
    let _ctx = ContextGuard::enter(&dev)?;
    let (g, l, grid) = bwd_loaded(&dev, p)?;
    let need = workspace_need(&g, grid, p);
    let ws = match p.workspace {
        Some((ptr, len)) if len >= need => ptr as u64,
        _ if need == 0 => 0,
        got => {
            return Err(Error::value(
                "workspace",
                format!("expected at least {need} elements, got {}", got.map_or(0, |g| g.1)),
            ))
        }
    };
    // dw partials first, then db partials.
    let part_bytes = (partial_len(&g, grid, p) * p.acc.size()) as u64;
    let pw = if p.dw.is_some() { ws } else { 0 };
    let pb = match (p.dw.is_some(), p.db.is_some()) {
        (_, false) => 0,
        (true, true) => ws + part_bytes,
        (false, true) => ws,
    };
    let stream = borrowed_stream(&dev, exec.stream);
    let rows = p.rows as i64;
    let cols = p.cols as i32;
    if p.rows > 0 {
        let f = &l.main;
        let (dy, x, w, dr, dx) = (
            p.dy.ptr as u64,
            p.x.ptr as u64,
            ptr_of(p.weight, |m| m.ptr),
            ptr_of(p.d_residual_out, |m| m.ptr),
            p.dx.ptr as u64,
        );
        let (mean, rstd) = (p.mean.unwrap_or(0) as u64, p.rstd as u64);
        let (dy_rs, x_rs, dr_rs, dx_rs) = (
            p.dy.row_stride as i64,
            p.x.row_stride as i64,
            p.d_residual_out.map_or(0, |m| m.row_stride) as i64,
            p.dx.row_stride as i64,
        );
        let (off32, off64) = (p.offset as f32, p.offset);
        let mut b = stream.launch_builder(f);
        b.arg(&dy).arg(&dy_rs).arg(&x).arg(&x_rs).arg(&w).arg(&mean).arg(&rstd).arg(&dr).arg(&dr_rs);
        b.arg(&dx).arg(&dx_rs).arg(&pw).arg(&pb).arg(&rows).arg(&cols);
        if p.acc == DType::F64 {
            b.arg(&off64);
        } else {
            b.arg(&off32);
        }
        // SAFETY: pointers validated by `NormBwd::plan`; the workspace holds `need` elements, which
        // covers one or two arrays of grid * rows-per-block rows of `cols`; launch on the caller's stream.
        unsafe { b.launch(cfg(grid as u32, (g.block as u32, 1), 0)) }.map_err(driver_err("launching norm_bwd"))?;
    }
    let parts = if p.rows > 0 { (grid * (g.block / g.tpr)) as i32 } else { 0 };
    for (out, part) in [(p.dw, pw), (p.db, pb)] {
        if let Some(out) = out {
            let f = l.reduce.as_ref().expect("backward variants load their reduction");
            let outp = out.ptr as u64;
            let mut b = stream.launch_builder(f);
            b.arg(&part).arg(&parts).arg(&cols).arg(&outp);
            // SAFETY: `part` holds `parts` rows of `cols` written by the launch above on the same
            // stream; `out` is a validated vector of `cols` elements of the parameter dtype.
            unsafe { b.launch(cfg(p.cols.div_ceil(32) as u32, (32, 16), 0)) }
                .map_err(driver_err("launching norm_col_reduce"))?;
        }
    }
    Ok(())
}

/// The variants CI compiles: every dtype, both casting modes, register and streaming paths, with
/// and without weight, residual, rstd, dw and d_residual.
pub(crate) fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut out = Vec::new();
    let dts = [DType::F32, DType::F16, DType::BF16, DType::F64];
    for layer in [false, true] {
        for (i, &dt) in dts.iter().enumerate() {
            for &(vec, chunks, tpr) in &[(16 / dt.size(), 2usize, 256usize), (1, 0, 1024), (1, 1, 32)] {
                let g = Geometry { vec, tpr, block: tpr.max(128), chunks };
                let mut d = base_defines(&g, dt.compute());
                let on = i % 2 == 0;
                d.extend([
                    ("T_X", ctype(dt).to_string()),
                    ("T_W", ctype(if on { DType::F32 } else { dt }).to_string()),
                    ("T_Y", ctype(if on { DType::F32 } else { dt }).to_string()),
                    ("T_DY", ctype(dt).to_string()),
                    ("T_DX", ctype(dt).to_string()),
                    ("T_DR", ctype(dt).to_string()),
                    ("LAYER", flag(layer)),
                    ("HAS_W", flag(chunks != 1)),
                    ("HAS_B", flag(layer && on)),
                    ("HAS_RES", flag(on)),
                    ("HAS_RSTD", flag(chunks != 1)),
                    ("CAST_BEFORE_W", flag(on && !layer)),
                    ("HAS_DW", flag(chunks != 1)),
                    ("HAS_DB", flag(layer && chunks != 2)),
                    ("HAS_DRES", flag(!on)),
                ]);
                out.push((&KERNEL, d));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_covers_the_row() {
        for cols in [1usize, 7, 64, 4096, 4097, 8192, 65536, 262144] {
            for vec in [1usize, 2, 4, 8] {
                if cols % vec != 0 {
                    continue;
                }
                for target in [8, 16, 32] {
                    let g = geometry(cols, vec, target);
                    assert!(g.tpr % 32 == 0 && g.block % g.tpr == 0 && g.block <= 1024, "{g:?}");
                    if g.chunks > 0 {
                        assert!(g.chunks * g.tpr * vec >= cols, "{cols} {g:?}");
                        assert!(g.chunks * vec <= 64);
                    }
                }
            }
        }
    }
}
