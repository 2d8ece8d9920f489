//! NVRTC: probing for the libraries without panicking, and compiling
//! [`SOURCE`] to a CUBIN (and PTX) for one architecture, cached per process.

use super::SOURCE;
use crate::{ErrorSource, MnsError};
use cudarc::driver::CudaContext;
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::ffi::{CString, c_char};

/// Whether `libnvrtc.so.13` can be loaded (no panic).
pub fn nvrtc_available() -> bool {
    // SAFETY: cudarc's probe only attempts to dlopen the library by name.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// `Ok(())` when a CUDA device can be used; otherwise why not. Checks the
/// driver library, the NVRTC library and the device count in that order,
/// never creating a context (and so never panicking) when one is missing.
pub fn is_available() -> Result<(), String> {
    // SAFETY: cudarc's probe only attempts to dlopen the library by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) on this machine".into());
    }
    if !nvrtc_available() {
        return Err("no NVRTC 13 library (libnvrtc.so.13) found".into());
    }
    match CudaContext::device_count() {
        Ok(0) => Err("the CUDA driver reports no device".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("CUDA driver: {e}")),
    }
}

/// The result of compiling [`SOURCE`] for one architecture.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The target, e.g. `sm_90`.
    pub arch: String,
    /// NVRTC's program log (with `ptxas info` lines when `verbose`).
    pub log: String,
    /// The CUBIN image for `arch`.
    pub cubin: Vec<u8>,
    /// The PTX NVRTC generated on the way (empty where it gives none).
    pub ptx: String,
}

/// Compile the kernels for `arch` (e.g. `sm_90`) to a CUBIN with NVRTC;
/// `verbose` adds `--ptxas-options=-v` so the log reports registers, shared
/// memory, stack and spills per kernel. Needs only `libnvrtc`, no GPU.
#[doc(hidden)]
pub fn compile(arch: &str, verbose: bool) -> Result<Compiled, MnsError> {
    compile_source(SOURCE, arch, verbose)
}

/// [`compile`] for any source text (a test compiles a broken one).
#[doc(hidden)]
pub fn compile_source(source: &str, arch: &str, verbose: bool) -> Result<Compiled, MnsError> {
    if !nvrtc_available() {
        return Err(MnsError::CudaUnavailable(
            "NVRTC 13 (libnvrtc.so.13) not found".into(),
        ));
    }
    let err = |what: &str, e: nvrtc::NvrtcError| MnsError::Cuda {
        context: format!("NVRTC {what}"),
        source: ErrorSource::new(e),
    };
    let src = CString::new(source).map_err(|e| MnsError::Cuda {
        context: "kernel source".into(),
        source: ErrorSource::new(e),
    })?;
    let prog = nvrtc::create_program(&src, Some(c"mns.cu")).map_err(|e| err("create", e))?;
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ];
    if verbose {
        opts.push("--ptxas-options=-v".into());
    }
    // SAFETY: `prog` was created above and is destroyed only at the end.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    // SAFETY: as above; the log exists whether or not compilation succeeded.
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|raw| c_text(&raw))
        .unwrap_or_default();
    let cubin = compiled
        .map_err(|e| MnsError::Cuda {
            context: format!("NVRTC compile for {arch} (log:\n{log})"),
            source: ErrorSource::new(e),
        })
        .and_then(|()| {
            let mut size = 0usize;
            // SAFETY: `prog` compiled successfully for a real sm_XY target, so a
            // CUBIN of `size` bytes exists; the buffer has exactly that size.
            unsafe {
                nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| err("cubin size", e))?;
                let mut buf = vec![0u8; size];
                nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char)
                    .result()
                    .map_err(|e| err("cubin", e))?;
                Ok(buf)
            }
        });
    let ptx = match &cubin {
        // SAFETY: `prog` compiled successfully and is not yet destroyed.
        Ok(_) => unsafe { nvrtc::get_ptx(prog) }
            .map(|raw| c_text(&raw))
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    // SAFETY: created above, not yet destroyed, not used afterwards.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    Ok(Compiled {
        arch: arch.to_string(),
        log,
        cubin: cubin?,
        ptx,
    })
}

/// The CUBIN for `arch`, compiled once per process and architecture (NVRTC
/// takes ~0.5 s for the kernels); each backend loads it into its own
/// context.
pub(super) fn cubin_for(arch: &str) -> Result<Vec<u8>, MnsError> {
    static CACHE: std::sync::Mutex<Vec<(String, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, c)) = cache.iter().find(|(a, _)| a == arch) {
        return Ok(c.clone());
    }
    let c = compile(arch, false)?.cubin;
    cache.push((arch.to_string(), c.clone()));
    Ok(c)
}

/// NVRTC's NUL-terminated text (a log, PTX) as a `String`.
fn c_text(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
