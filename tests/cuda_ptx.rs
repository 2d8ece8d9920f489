//! Every kernel compiles with NVRTC for sm_80 and sm_90, without a GPU, and
//! ptxas reports no spill and no local-memory stack frame.
//!
//! Needs `libnvrtc.so.13` on the loader path (CI installs the PyPI package
//! `nvidia-cuda-nvrtc`); without it the test prints `skipping: …` and passes,
//! unless `REQUIRE_NVRTC=1`, which turns the skip into a failure.
#![cfg(feature = "cuda")]

mod common;
use mixneg::cuda;

#[test]
fn kernels_compile_without_spills() {
    if !cuda::nvrtc_available() {
        let msg = "libnvrtc.so.13 not found (install nvidia-cuda-nvrtc and set LD_LIBRARY_PATH)";
        assert!(
            std::env::var("REQUIRE_NVRTC").as_deref() != Ok("1"),
            "REQUIRE_NVRTC=1 but {msg}"
        );
        common::skip(msg);
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let c = cuda::compile(arch, true).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(!c.cubin.is_empty(), "{arch}: empty CUBIN");
        let info: Vec<&str> = c
            .log
            .lines()
            .filter(|l| l.contains("Used") || l.contains("stack frame") || l.contains("entry"))
            .collect();
        eprintln!("--- {arch} ---\n{}", info.join("\n"));
        for kernel in cuda::KERNELS {
            assert!(
                c.log.contains(kernel),
                "{arch}: ptxas says nothing about {kernel}:\n{}",
                c.log
            );
        }
        // "N bytes stack frame, S bytes spill stores, L bytes spill loads", once per kernel.
        let frames: Vec<&str> = c
            .log
            .lines()
            .filter(|l| l.contains("stack frame"))
            .collect();
        assert_eq!(
            frames.len(),
            cuda::KERNELS.len(),
            "{arch}: expected one stack-frame line per kernel:\n{}",
            c.log
        );
        for line in frames {
            let nums: Vec<u64> = line
                .split(|ch: char| !ch.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            assert!(
                nums.len() >= 3 && nums[..3].iter().all(|&x| x == 0),
                "{arch}: stack or spill: {line}"
            );
        }
        let used = c
            .log
            .lines()
            .filter(|l| l.contains("Used") && l.contains("registers"))
            .count();
        assert_eq!(
            used,
            cuda::KERNELS.len(),
            "{arch}: one 'Used N registers' line per kernel:\n{}",
            c.log
        );
    }
}

/// A compile failure is an `MnsError::Cuda` that keeps NVRTC's error as its
/// `source()` and carries the compiler log in its message.
#[test]
fn a_compile_error_keeps_its_source_and_log() {
    if !cuda::nvrtc_available() {
        common::skip("libnvrtc.so.13 not found");
        return;
    }
    let e = cuda::compile_source("this is not CUDA;", "sm_80", false).unwrap_err();
    assert!(matches!(e, mixneg::MnsError::Cuda { .. }), "{e:?}");
    assert!(std::error::Error::source(&e).is_some(), "{e:?}");
    assert!(e.to_string().contains("NVRTC compile for sm_80"), "{e}");
    assert!(e.to_string().contains("error"), "no compiler log in: {e}");
}
