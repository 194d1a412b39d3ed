//! cuBLAS building blocks (TRSM, SYRK, GEMM) for the blocked factorizations of large matrices.
//!
//! Calls go through **PyTorch's own cuBLAS handle** (`torch.cuda.current_blas_handle()`, passed
//! in [`Exec::blas`](crate::tensor::Exec)), which torch has bound to its current stream with a
//! workspace from its caching allocator: nothing is allocated here, and the calls are captured by
//! `torch.cuda.graph` like torch's own. The handle belongs to torch's copy of the library, so
//! the library is looked up among those already loaded (`RTLD_NOLOAD`), never loaded a second time.
//!
//! cuBLAS is column-major: a row-major `r×c` block with row stride `ld` is, to cuBLAS, its `c×r`
//! transpose with leading dimension `ld`. Callers translate.

use crate::error::{Error, Result};
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

type Handle = *mut c_void;
type Status = c_int;

type TrsmFn<T> = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const T,
    *const T,
    c_int,
    *mut T,
    c_int,
) -> Status;
type SyrkFn<T> = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    *const T,
    *const T,
    c_int,
    *const T,
    *mut T,
    c_int,
) -> Status;
type GemmFn<T> = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const T,
    *const T,
    c_int,
    *const T,
    c_int,
    *const T,
    *mut T,
    c_int,
) -> Status;

/// The typed entry points of one precision.
pub(crate) struct Fns<T> {
    trsm: TrsmFn<T>,
    syrk: SyrkFn<T>,
    gemm: GemmFn<T>,
}

pub(crate) struct Lib {
    // Keeps the library's reference count up while the function pointers are in use.
    _lib: libloading::os::unix::Library,
    set_stream: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    get_stream: unsafe extern "C" fn(Handle, *mut *mut c_void) -> Status,
    get_math_mode: unsafe extern "C" fn(Handle, *mut c_int) -> Status,
    set_math_mode: unsafe extern "C" fn(Handle, c_int) -> Status,
    get_pointer_mode: unsafe extern "C" fn(Handle, *mut c_int) -> Status,
    set_pointer_mode: unsafe extern "C" fn(Handle, c_int) -> Status,
    s: Fns<f32>,
    d: Fns<f64>,
}

// SAFETY: the library handle and plain function pointers are immutable after loading.
unsafe impl Send for Lib {}
unsafe impl Sync for Lib {}

/// glibc's `RTLD_NOLOAD`: succeed only for a library that is already loaded.
const RTLD_NOLOAD: c_int = 0x4;

/// Sonames of the cuBLAS builds torch links against (CUDA 13, then 12).
const SONAMES: [&str; 2] = ["libcublas.so.13", "libcublas.so.12"];

fn load() -> std::result::Result<Lib, String> {
    use libloading::os::unix::{Library, RTLD_NOW};
    let lib = SONAMES
        .iter()
        // SAFETY: the library is already loaded (NOLOAD), so no initializer runs.
        .find_map(|name| unsafe { Library::open(Some(*name), RTLD_NOW | RTLD_NOLOAD) }.ok())
        .ok_or_else(|| format!("no cuBLAS library ({}) is loaded in this process", SONAMES.join(", ")))?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol is cuBLAS's v2 C API function of that name, whose C signature the
            // field's type spells out.
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| format!("cuBLAS lacks {}: {e}", $name))?
        };
    }
    Ok(Lib {
        set_stream: sym!("cublasSetStream_v2"),
        get_stream: sym!("cublasGetStream_v2"),
        get_math_mode: sym!("cublasGetMathMode"),
        set_math_mode: sym!("cublasSetMathMode"),
        get_pointer_mode: sym!("cublasGetPointerMode_v2"),
        set_pointer_mode: sym!("cublasSetPointerMode_v2"),
        s: Fns { trsm: sym!("cublasStrsm_v2"), syrk: sym!("cublasSsyrk_v2"), gemm: sym!("cublasSgemm_v2") },
        d: Fns { trsm: sym!("cublasDtrsm_v2"), syrk: sym!("cublasDsyrk_v2"), gemm: sym!("cublasDgemm_v2") },
        _lib: lib,
    })
}

fn lib() -> Result<&'static Lib> {
    static LIB: OnceLock<std::result::Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load)
        .as_ref()
        .map_err(|e| Error::Unsupported(format!("the blocked large-matrix path needs cuBLAS: {e}")))
}

/// A precision cuBLAS has entry points for.
pub(crate) trait Real: Copy {
    const ZERO: Self;
    const ONE: Self;
    const MINUS_ONE: Self;
    fn fns(lib: &Lib) -> &Fns<Self>
    where
        Self: Sized;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const MINUS_ONE: f32 = -1.0;
    fn fns(lib: &Lib) -> &Fns<f32> {
        &lib.s
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const MINUS_ONE: f64 = -1.0;
    fn fns(lib: &Lib) -> &Fns<f64> {
        &lib.d
    }
}

/// cuBLAS's enum values.
#[derive(Clone, Copy)]
pub(crate) enum Side {
    Left = 0,
    Right = 1,
}
#[derive(Clone, Copy)]
pub(crate) enum Fill {
    Lower = 0,
    Upper = 1,
}
#[derive(Clone, Copy)]
pub(crate) enum Op {
    N = 0,
    T = 1,
}

const DEFAULT_MATH: c_int = 0; // CUBLAS_DEFAULT_MATH: float32 stays float32 (no TF32)
const POINTER_HOST: c_int = 0; // CUBLAS_POINTER_MODE_HOST: alpha and beta are host scalars

fn check(what: &'static str, status: Status) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(Error::Cuda { context: format!("cuBLAS {what}"), msg: format!("status {status}") })
    }
}

/// Torch's handle, bound to the caller's stream with full-precision math and host scalars for
/// the duration of an op; the handle's previous math and pointer modes come back on drop.
pub(crate) struct Blas {
    lib: &'static Lib,
    h: Handle,
    math: c_int,
    pointer: c_int,
}

impl Blas {
    /// `handle`: torch's `cublasHandle_t` (0: none was given, which refuses the op); `stream`:
    /// the caller's raw stream. The caller holds the device's context.
    pub(crate) fn bind(handle: usize, stream: usize) -> Result<Blas> {
        if handle == 0 {
            return Err(Error::Unsupported("the blocked large-matrix path needs torch's cuBLAS handle".into()));
        }
        let lib = lib()?;
        let h = handle as Handle;
        let (mut math, mut pointer) = (0, 0);
        // SAFETY: `h` is a live cuBLAS handle of this library (torch's); the out-pointers are valid.
        unsafe {
            check("cublasGetMathMode", (lib.get_math_mode)(h, &mut math))?;
            check("cublasGetPointerMode", (lib.get_pointer_mode)(h, &mut pointer))?;
            // torch bound its handle to its current stream, with a workspace from its allocator.
            // cublasSetStream would drop that workspace for cuBLAS's own (allocated by cuBLAS,
            // which breaks graph capture), so it is only called if the streams differ.
            let mut bound: *mut c_void = std::ptr::null_mut();
            check("cublasGetStream", (lib.get_stream)(h, &mut bound))?;
            if bound as usize != stream {
                check("cublasSetStream", (lib.set_stream)(h, stream as *mut c_void))?;
            }
            check("cublasSetMathMode", (lib.set_math_mode)(h, DEFAULT_MATH))?;
            check("cublasSetPointerMode", (lib.set_pointer_mode)(h, POINTER_HOST))?;
        }
        Ok(Blas { lib, h, math, pointer })
    }

    /// `B ← alpha op(A)⁻¹ B` (`side` left; column-major, `A` m×m triangular, `B` m×n) or
    /// `B ← alpha B op(A)⁻¹` (right; `A` n×n); `unit`: A's diagonal taken as ones.
    ///
    /// # Safety
    /// `a`/`b` are device addresses of `T` matrices of those shapes and leading dimensions.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn trsm<T: Real>(
        &self,
        side: Side,
        fill: Fill,
        op: Op,
        unit: bool,
        (m, n): (usize, usize),
        alpha: T,
        (a, lda): (usize, usize),
        (b, ldb): (usize, usize),
    ) -> Result<()> {
        let f = T::fns(self.lib).trsm;
        let (side, fill, op, diag) = (side as c_int, fill as c_int, op as c_int, unit as c_int);
        let s =
            unsafe { f(self.h, side, fill, op, diag, dim(m)?, dim(n)?, &alpha, a as _, dim(lda)?, b as _, dim(ldb)?) };
        check("trsm", s)
    }

    /// `C ← alpha op(A) op(A)ᵀ + beta C` on `fill`'s triangle of the n×n `C` (`op(A)` n×k).
    ///
    /// # Safety
    /// As for [`Blas::trsm`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn syrk<T: Real>(
        &self,
        fill: Fill,
        op: Op,
        n: usize,
        k: usize,
        alpha: T,
        a: usize,
        lda: usize,
        beta: T,
        c: usize,
        ldc: usize,
    ) -> Result<()> {
        let f = T::fns(self.lib).syrk;
        let (fill, op) = (fill as c_int, op as c_int);
        let s = unsafe { f(self.h, fill, op, dim(n)?, dim(k)?, &alpha, a as _, dim(lda)?, &beta, c as _, dim(ldc)?) };
        check("syrk", s)
    }

    /// `C ← alpha op(A) op(B) + beta C` (`C` m×n, inner dimension k).
    ///
    /// # Safety
    /// As for [`Blas::trsm`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm<T: Real>(
        &self,
        opa: Op,
        opb: Op,
        (m, n, k): (usize, usize, usize),
        alpha: T,
        (a, lda): (usize, usize),
        (b, ldb): (usize, usize),
        beta: T,
        (c, ldc): (usize, usize),
    ) -> Result<()> {
        let f = T::fns(self.lib).gemm;
        let (oa, ob) = (opa as c_int, opb as c_int);
        let s = unsafe {
            f(
                self.h,
                oa,
                ob,
                dim(m)?,
                dim(n)?,
                dim(k)?,
                &alpha,
                a as _,
                dim(lda)?,
                b as _,
                dim(ldb)?,
                &beta,
                c as _,
                dim(ldc)?,
            )
        };
        check("gemm", s)
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: restores the modes read in `bind` on the same live handle.
        unsafe {
            (self.lib.set_math_mode)(self.h, self.math);
            (self.lib.set_pointer_mode)(self.h, self.pointer);
        }
    }
}

fn dim(v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| Error::Unsupported(format!("a dimension of {v} is past cuBLAS's 32-bit interface")))
}
