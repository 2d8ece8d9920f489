//! NVRTC: probing for the libraries without panicking, and compiling
//! [`SOURCE`] to a CUBIN (and PTX) for one architecture, cached per process.

use super::{HEADERS, SOURCE};
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
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
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
pub fn compile(arch: &str, verbose: bool) -> Result<Compiled, MnsError> {
    compile_source(SOURCE, arch, verbose)
}

/// [`compile`] for any source text (a test compiles a broken one); the
/// source may include the files of [`HEADERS`] by name.
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
    let cstr = |t: &str| {
        CString::new(t).map_err(|e| MnsError::Cuda {
            context: "kernel header".into(),
            source: ErrorSource::new(e),
        })
    };
    let texts = HEADERS
        .iter()
        .map(|(_, t)| cstr(t))
        .collect::<Result<Vec<_>, _>>()?;
    let names = HEADERS
        .iter()
        .map(|(n, _)| cstr(n))
        .collect::<Result<Vec<_>, _>>()?;
    let text_ptrs: Vec<*const c_char> = texts.iter().map(|t| t.as_ptr()).collect();
    let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let mut prog = std::mem::MaybeUninit::uninit();
    // SAFETY: every pointer is to a NUL-terminated string alive until this
    // call returns (NVRTC copies them); the two arrays have HEADERS.len()
    // entries; on success NVRTC initialised `prog`.
    let prog = unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            prog.as_mut_ptr(),
            src.as_ptr(),
            c"mns.cu".as_ptr(),
            HEADERS.len() as i32,
            text_ptrs.as_ptr(),
            name_ptrs.as_ptr(),
        )
        .result()
        .map_err(|e| err("create", e))?;
        prog.assume_init()
    };
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
/// takes ~0.5 s for the kernels) and kept on disk for later processes
/// ([`cubin_cache_dir`]); each backend loads it into its own context. With
/// `MIXNEG_LOG_COMPILE=1` it says on stderr where the CUBIN came from and how
/// long that took. `fresh` skips the disk (a cached image the driver refused
/// is replaced).
pub(super) fn cubin_for(arch: &str, fresh: bool) -> Result<(Vec<u8>, bool), MnsError> {
    static CACHE: std::sync::Mutex<Vec<(String, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if fresh {
        cache.retain(|(a, _)| a != arch);
    }
    if let Some((_, c)) = cache.iter().find(|(a, _)| a == arch) {
        return Ok((c.clone(), false));
    }
    let log = std::env::var("MIXNEG_LOG_COMPILE").as_deref() == Ok("1");
    let file = cubin_cache_dir().map(|d| d.join(cubin_file_name(arch)));
    let (c, from_disk) = disk_cached(file.as_deref(), fresh, || {
        compile(arch, false).map(|c| c.cubin)
    })?;
    if log {
        eprintln!("mixneg: {arch}: {}", from_disk.describe(file.as_deref()));
    }
    cache.push((arch.to_string(), c.clone()));
    Ok((c, matches!(from_disk, Source::Disk(_))))
}

/// Where [`disk_cached`] found its CUBIN, and how long that took.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    /// Read from the cache file, in ms.
    Disk(f64),
    /// Compiled by NVRTC, in ms; whether the cache file was written.
    Compiled(f64, bool),
}

impl Source {
    fn describe(self, file: Option<&std::path::Path>) -> String {
        let path = file.map_or(String::new(), |f| f.display().to_string());
        match self {
            Source::Disk(ms) => format!("CUBIN read from {path} in {ms:.1} ms"),
            Source::Compiled(ms, true) => {
                format!("NVRTC compiled the kernels in {ms:.0} ms, cached at {path}")
            }
            Source::Compiled(ms, false) => {
                format!("NVRTC compiled the kernels in {ms:.0} ms (not cached)")
            }
        }
    }
}

/// The bytes of `file` when it exists, is non-empty and `fresh` is false;
/// else `compile()`'s, written to `file` (to a temporary name, then renamed:
/// concurrent processes never read half a file). A cache that cannot be
/// written only costs the next process a compile.
fn disk_cached(
    file: Option<&std::path::Path>,
    fresh: bool,
    compile: impl FnOnce() -> Result<Vec<u8>, MnsError>,
) -> Result<(Vec<u8>, Source), MnsError> {
    let t0 = std::time::Instant::now();
    let ms = || t0.elapsed().as_secs_f64() * 1e3;
    let cached = file
        .filter(|_| !fresh)
        .and_then(|f| std::fs::read(f).ok())
        .filter(|c| !c.is_empty());
    if let Some(c) = cached {
        return Ok((c, Source::Disk(ms())));
    }
    let c = compile()?;
    let kept = file.is_some_and(|f| {
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        f.parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, &c).is_ok()
            && std::fs::rename(&tmp, f).is_ok()
    });
    Ok((c, Source::Compiled(ms(), kept)))
}

/// Where compiled kernels are kept between processes: `MIXNEG_CACHE_DIR`
/// if set (empty: no disk cache), else `$XDG_CACHE_HOME/mixneg`, else
/// `$HOME/.cache/mixneg`; None when none of these is set.
pub fn cubin_cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    match std::env::var_os("MIXNEG_CACHE_DIR") {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(PathBuf::from(d)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join("mixneg"))
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|d| !d.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache").join("mixneg"))
            }),
    }
}

/// The cache file of the kernels for `arch`: keyed by a 64-bit FNV-1a hash
/// of everything the CUBIN depends on (the source, the NVRTC options, the
/// NVRTC version), so that an edited kernel or another NVRTC never loads a
/// stale image.
fn cubin_file_name(arch: &str) -> String {
    let (mut major, mut minor) = (0, 0);
    let nvrtc = if !nvrtc_available() {
        String::new()
    } else {
        // SAFETY: the library is present (checked just above: cudarc loads
        // it on first use); nvrtcVersion only writes the two integers.
        match unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }.result() {
            Ok(()) => format!("{major}.{minor}"),
            Err(_) => String::new(),
        }
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let headers = HEADERS.iter().flat_map(|(n, t)| [*n, *t]);
    for part in [SOURCE, arch, "--std=c++17", &nvrtc]
        .into_iter()
        .chain(headers)
    {
        for &byte in part.as_bytes().iter().chain(&[0u8]) {
            h = (h ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("mns-{arch}-{h:016x}.cubin")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The disk cache: a first call compiles and writes the file, a second
    /// reads it without compiling, an empty file or `fresh` compiles again,
    /// and without a directory nothing is written.
    #[test]
    fn the_disk_cache_compiles_once_and_reads_after() {
        let dir = std::env::temp_dir().join(format!("mixneg-cache-test-{}", std::process::id()));
        let file = dir.join("sub").join(cubin_file_name("sm_90"));
        let calls = std::cell::Cell::new(0);
        let compile = || {
            calls.set(calls.get() + 1);
            Ok(vec![1u8, 2, 3])
        };
        let (c, s) = disk_cached(Some(&file), false, compile).unwrap();
        assert_eq!((c.as_slice(), calls.get()), (&[1u8, 2, 3][..], 1));
        assert!(matches!(s, Source::Compiled(_, true)), "{s:?}");
        let (c, s) = disk_cached(Some(&file), false, compile).unwrap();
        assert_eq!((c.as_slice(), calls.get()), (&[1u8, 2, 3][..], 1));
        assert!(matches!(s, Source::Disk(_)), "{s:?}");
        disk_cached(Some(&file), true, compile).unwrap();
        assert_eq!(calls.get(), 2, "fresh compiles");
        std::fs::write(&file, b"").unwrap();
        disk_cached(Some(&file), false, compile).unwrap();
        assert_eq!(calls.get(), 3, "an empty file compiles");
        let (_, s) = disk_cached(None, false, compile).unwrap();
        assert!(matches!(s, Source::Compiled(_, false)), "{s:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The file name changes with the architecture (and, through the hash,
    /// with the source) and is stable within a build.
    #[test]
    fn cache_file_names_are_keyed() {
        assert_eq!(cubin_file_name("sm_90"), cubin_file_name("sm_90"));
        assert_ne!(cubin_file_name("sm_90"), cubin_file_name("sm_80"));
        assert!(cubin_file_name("sm_90").starts_with("mns-sm_90-"));
    }
}
