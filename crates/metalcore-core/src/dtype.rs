//! Element types the core understands, and where each one is computed.

use crate::error::{Error, Result};

/// Storage dtype of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    /// Integer outputs only (e.g. per-matrix `info` of a factorization).
    I32,
    /// Integer workspaces only (e.g. the device pointer table of a multi-tensor op).
    I64,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// PyTorch's name for the dtype (`torch.<name>`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I32 => "int32",
            DType::I64 => "int64",
        }
    }

    /// Parses PyTorch's name (`"float32"`, `"torch.bfloat16"`, …).
    pub fn parse(arg: &'static str, s: &str) -> Result<Self> {
        let s = s.strip_prefix("torch.").unwrap_or(s);
        Ok(match s {
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "float32" | "float" => DType::F32,
            "float64" | "double" => DType::F64,
            "int32" | "int" => DType::I32,
            "int64" | "long" => DType::I64,
            other => {
                return Err(Error::dtype(
                    arg,
                    format!("expected a floating dtype (float16, bfloat16, float32 or float64), got {other}"),
                ))
            }
        })
    }

    /// True for the floating dtypes.
    pub const fn is_float(self) -> bool {
        !matches!(self, DType::I32 | DType::I64)
    }

    /// The dtype in which an op on this storage dtype accumulates: float32, or float64 for float64 data.
    pub const fn compute(self) -> DType {
        match self {
            DType::F64 => DType::F64,
            _ => DType::F32,
        }
    }

    /// Type promotion as `torch.promote_types` does it for the floating dtypes.
    pub fn promote(a: DType, b: DType) -> DType {
        use DType::*;
        match (a, b) {
            (x, y) if x == y => x,
            (F64, _) | (_, F64) => F64,
            (F32, _) | (_, F32) => F32,
            // float16 with bfloat16 promotes to float32 in PyTorch.
            _ => F32,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "torch.{}", self.name())
    }
}
