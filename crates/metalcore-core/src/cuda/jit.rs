//! Run-time compilation of the embedded `.cu` sources with NVRTC, to a cubin for the device's own
//! architecture, with a two-level cache:
//! - in memory: loaded functions by (device, kernel, defines, entry point);
//! - on disk: cubins under `$METALCORE_CACHE_DIR`, else `$XDG_CACHE_HOME/metalcore`, else
//!   `~/.cache/metalcore`, named by a hash of the source, the options (architecture and `-D`
//!   constants) and the NVRTC version. `METALCORE_CACHE_DIR=off` disables the disk cache.

use super::{driver_err, DeviceState};
use crate::error::{Error, Result};
use cudarc::driver::CudaFunction;
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};
use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Source prepended to every kernel.
const COMMON: &str = include_str!("../../kernels/common/common.cuh");

/// One embedded kernel source file.
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
}

/// Compile-time constants of one kernel variant, as `-DNAME=VALUE`.
pub type Defines = Vec<(&'static str, String)>;

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !super::nvrtc_present() {
        return Err(Error::BackendUnavailable(
            "NVRTC (libnvrtc.so) could not be loaded; install the `nvidia-cuda-nvrtc` wheel or a CUDA toolkit \
             and make sure its lib folder is on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Cuda { context: "nvrtcVersion".into(), msg: e.to_string() })?;
    Ok((major, minor))
}

fn options(arch: &str, defines: &Defines) -> Vec<String> {
    let mut o = vec![format!("--gpu-architecture={arch}"), "-std=c++17".to_string(), "--fmad=true".to_string()];
    o.extend(defines.iter().map(|(k, v)| format!("-D{k}={v}")));
    o
}

/// Compiles `kernel` with `defines` for `arch` and returns the cubin. NVRTC's log is returned in the
/// error verbatim when compilation fails.
pub fn compile(kernel: &Kernel, arch: &str, defines: &Defines) -> Result<Vec<u8>> {
    nvrtc_version()?;
    let src =
        CString::new(format!("#line 1 \"common.cuh\"\n{COMMON}\n#line 1 \"{}.cu\"\n{}", kernel.name, kernel.source))
            .expect("kernel sources contain no NUL");
    let name = CString::new(format!("{}.cu", kernel.name)).unwrap();
    let opts = options(arch, defines);
    let nv_err = |what: &str| {
        let what = what.to_string();
        move |e: nvrtc::NvrtcError| Error::Cuda { context: what, msg: e.to_string() }
    };
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(nv_err("nvrtcCreateProgram"))?;
    // SAFETY: `prog` is a live program until the destroy below; `src` and `name` outlive it.
    let out = unsafe {
        let compiled = nvrtc::compile_program(prog, &opts);
        let out = match compiled {
            Ok(()) => {
                let mut size = 0usize;
                nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(nv_err("nvrtcGetCUBINSize"))?;
                let mut bin = vec![0u8; size];
                nvrtc_sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut _).result().map_err(nv_err("nvrtcGetCUBIN"))?;
                Ok(bin)
            }
            Err(_) => {
                let log = nvrtc::get_program_log(prog).map_err(nv_err("nvrtcGetProgramLog"))?;
                let log: Vec<u8> = log.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
                Err(Error::Compile {
                    kernel: kernel.name.to_string(),
                    options: opts.clone(),
                    log: String::from_utf8_lossy(&log).into_owned(),
                })
            }
        };
        let _ = nvrtc::destroy_program(prog);
        out
    };
    out
}

fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("METALCORE_CACHE_DIR") {
        Some(v) if v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("metalcore")),
    }
}

/// Cubin for (kernel, arch, defines), from the disk cache or freshly compiled (and then stored).
fn cubin(kernel: &Kernel, arch: &str, defines: &Defines) -> Result<Vec<u8>> {
    let (maj, min) = nvrtc_version()?;
    let opts = options(arch, defines).join(" ");
    let ver = format!("{maj}.{min}");
    let key = fnv1a(&[COMMON.as_bytes(), kernel.source.as_bytes(), opts.as_bytes(), ver.as_bytes()]);
    let path = cache_dir().map(|d| d.join(format!("{}-{arch}-{key:016x}.cubin", kernel.name)));
    if let Some(p) = &path {
        if let Ok(bin) = std::fs::read(p) {
            if !bin.is_empty() {
                return Ok(bin);
            }
        }
    }
    let bin = compile(kernel, arch, defines)?;
    if let Some(p) = &path {
        // Best effort: a read-only cache directory only costs a recompile next time.
        if let Some(dir) = p.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &bin).is_ok() {
                    let _ = std::fs::rename(&tmp, p);
                }
            }
        }
    }
    Ok(bin)
}

type FnKey = (usize, &'static str, String, &'static str);

fn functions() -> &'static Mutex<HashMap<FnKey, CudaFunction>> {
    static F: OnceLock<Mutex<HashMap<FnKey, CudaFunction>>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The loaded entry point `entry` of `kernel` compiled with `defines` for device `dev`.
pub(crate) fn function(
    dev: &DeviceState,
    kernel: &'static Kernel,
    defines: &Defines,
    entry: &'static str,
) -> Result<CudaFunction> {
    let dkey: String = defines.iter().map(|(k, v)| format!("{k}={v};")).collect();
    let key = (dev.ctx.ordinal(), kernel.name, dkey, entry);
    if let Some(f) = functions().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(f.clone());
    }
    let bin = cubin(kernel, &dev.arch, defines)?;
    let module = dev.ctx.load_module(Ptx::from_binary(bin)).map_err(driver_err("loading a compiled module"))?;
    let mut map = functions().lock().unwrap_or_else(|p| p.into_inner());
    // Load every entry point of the module once, so sibling entries share it.
    let f = module.load_function(entry).map_err(driver_err("looking up a kernel entry point"))?;
    map.insert(key, f.clone());
    Ok(f)
}

/// Loaded kernels of one launcher, keyed by its own small `Copy` key (device, dtype, flags, ...),
/// so a call finds its function without building a `-D` list.
pub(crate) struct Variants<K>(OnceLock<Mutex<HashMap<K, CudaFunction>>>);

impl<K: std::hash::Hash + Eq + Copy> Variants<K> {
    pub(crate) const fn new() -> Self {
        Variants(OnceLock::new())
    }

    /// The function for `key`, made by `load` the first time.
    pub(crate) fn get(&self, key: K, load: impl FnOnce() -> Result<CudaFunction>) -> Result<CudaFunction> {
        let map = self.0.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(f) = map.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(f.clone());
        }
        let f = load()?;
        map.lock().unwrap_or_else(|e| e.into_inner()).insert(key, f.clone());
        Ok(f)
    }
}

/// Every embedded kernel with the variants CI compiles: each code path of each kernel at least once.
pub fn ci_variants() -> Vec<(&'static Kernel, Defines)> {
    let mut v = Vec::new();
    v.extend(super::act::ci_variants());
    v.extend(super::adamw::ci_variants());
    v.extend(super::embag::ci_variants());
    v.extend(super::index::ci_variants());
    v.extend(super::linalg::ci_variants());
    v.extend(super::norm::ci_variants());
    v.extend(super::rope::ci_variants());
    v.extend(super::softmax::ci_variants());
    v.extend(super::xent::ci_variants());
    v
}

/// Compiles every variant of [`ci_variants`] for `arch` (no GPU needed). Returns one line per variant.
/// `METALCORE_NVRTC_ONLY=text` (a development aid) keeps only the variants whose kernel file or
/// defines (`NAME=value`) contain that text.
pub fn compile_all(arch: &str) -> Result<Vec<String>> {
    let only = std::env::var("METALCORE_NVRTC_ONLY").unwrap_or_default();
    ci_variants()
        .into_iter()
        .filter(|(k, d)| {
            only.is_empty() || k.name.contains(&only) || d.iter().any(|(n, v)| format!("{n}={v}").contains(&only))
        })
        .map(|(k, d)| {
            let bin = compile(k, arch, &d)?;
            let defs: Vec<String> = d.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Ok(format!("{} [{}] -> {} bytes of cubin for {arch}", k.name, defs.join(" "), bin.len()))
        })
        .collect()
}
