//! Stand-in for the CUDA backend when the `cuda` feature is off: the same entry points, each
//! answering that the backend is not built in, so the rest of the core has no `cfg` noise.

use crate::error::Error;

fn off() -> Error {
    Error::BackendUnavailable("metalcore was built without the `cuda` feature".into())
}

pub fn driver_present() -> bool {
    false
}
pub fn nvrtc_present() -> bool {
    false
}

pub mod jit {
    use crate::error::Result;
    pub fn compile_all(_arch: &str) -> Result<Vec<String>> {
        Err(super::off())
    }
    pub fn nvrtc_version() -> Result<(i32, i32)> {
        Err(super::off())
    }
}

pub mod act {
    use crate::error::Result;
    use crate::ops::act::Plan;
    use crate::tensor::Exec;
    pub fn run(_: &Plan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
}

pub mod adamw {
    use crate::error::Result;
    use crate::ops::adamw::Plan;
    use crate::tensor::Exec;
    pub fn run(_: &Plan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
}

pub mod embag {
    use crate::error::Result;
    use crate::ops::embag::Plan;
    use crate::tensor::Exec;
    pub fn run(_: &Plan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
}

pub mod index {
    use crate::error::Result;
    use crate::ops::index::Plan;
    use crate::tensor::Exec;
    pub fn run(_: &Plan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
}

pub mod norm {
    use crate::error::Result;
    use crate::ops::norm::{BwdPlan, FwdPlan};
    use crate::tensor::Exec;
    pub fn fwd(_: &FwdPlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
    pub fn bwd(_: &BwdPlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
    pub fn bwd_workspace_len(_: &BwdPlan, _: usize) -> Result<usize> {
        Err(super::off())
    }
}

pub mod rope {
    use crate::error::Result;
    use crate::ops::rope::Plan;
    use crate::tensor::Exec;
    pub fn run(_: &Plan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
}

pub mod softmax {
    use crate::error::Result;
    use crate::ops::softmax::{BwdPlan, FwdPlan};
    use crate::tensor::Exec;
    pub fn fwd(_: &FwdPlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
    pub fn bwd(_: &BwdPlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
}

pub mod xent {
    use crate::error::Result;
    use crate::ops::xent::Plan;
    use crate::tensor::Exec;
    pub fn run(_: &Plan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
}

pub mod linalg {
    use crate::error::Result;
    use crate::ops::linalg::{CholeskyPlan, CholeskySolvePlan, LuSolvePlan, QrPlan, SvdPlan, TrsmPlan};
    use crate::tensor::Exec;
    pub fn qr(_: &QrPlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
    pub fn cholesky(_: &CholeskyPlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
    pub fn cholesky_solve(_: &CholeskySolvePlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
    pub fn lu_solve(_: &LuSolvePlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
    pub fn trsm(_: &TrsmPlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
    pub fn svd(_: &SvdPlan, _: usize, _: Exec) -> Result<()> {
        Err(super::off())
    }
    pub fn eigh_cluster_tol() -> Result<f64> {
        Err(super::off())
    }
}
