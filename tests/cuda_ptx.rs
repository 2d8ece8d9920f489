//! Every kernel compiles with NVRTC for sm_80 and sm_90, without a GPU, and
//! ptxas reports no spill and no local-memory stack frame.
//!
//! Needs `libnvrtc.so.13` on the loader path (CI installs the PyPI package
//! `nvidia-cuda-nvrtc`); without it the test prints `skipping: …` and passes,
//! unless `REQUIRE_NVRTC=1`, which turns the skip into a failure.
#![cfg(feature = "cuda")]

mod common;
use mixneg::cuda;
use std::sync::OnceLock;

/// Whether NVRTC can be used; otherwise prints `skipping: …` (or fails
/// under `REQUIRE_NVRTC=1`).
fn nvrtc() -> bool {
    if cuda::nvrtc_available() {
        return true;
    }
    let msg = "libnvrtc.so.13 not found (install nvidia-cuda-nvrtc and set LD_LIBRARY_PATH)";
    assert!(
        std::env::var("REQUIRE_NVRTC").as_deref() != Ok("1"),
        "REQUIRE_NVRTC=1 but {msg}"
    );
    common::skip(msg);
    false
}

/// The kernels compiled for sm_80 and sm_90 (with ptxas's report), once for
/// every test; None without NVRTC (see [`nvrtc`]).
fn compiled() -> Option<&'static [cuda::Compiled; 2]> {
    static ALL: OnceLock<[cuda::Compiled; 2]> = OnceLock::new();
    if !nvrtc() {
        return None;
    }
    Some(ALL.get_or_init(|| {
        ["sm_80", "sm_90"]
            .map(|arch| cuda::compile(arch, true).unwrap_or_else(|e| panic!("{arch}: {e}")))
    }))
}

/// A ptxas "N bytes stack frame, S bytes spill stores, L bytes spill loads"
/// line with N = S = L = 0.
fn no_stack_or_spill(line: &str) -> bool {
    let nums: Vec<u64> = line
        .split(|ch: char| !ch.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    nums.len() >= 3 && nums[..3].iter().all(|&x| x == 0)
}

#[test]
fn kernels_compile_without_spills() {
    let Some(all) = compiled() else { return };
    for c in all {
        let arch = &c.arch;
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
            assert!(no_stack_or_spill(line), "{arch}: stack or spill: {line}");
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
    if !nvrtc() {
        return;
    }
    let e = cuda::compile_source("this is not CUDA;", "sm_80", false).unwrap_err();
    assert!(matches!(e, mixneg::MnsError::Cuda { .. }), "{e:?}");
    assert!(std::error::Error::source(&e).is_some(), "{e:?}");
    assert!(e.to_string().contains("NVRTC compile for sm_80"), "{e}");
    assert!(e.to_string().contains("error"), "no compiler log in: {e}");
}

/// NVRTC lays the parameter structs of `mns.cu` out exactly as
/// `src/cuda/abi.rs` does. Read off the PTX NVRTC generates: each kernel's
/// `.param .b8 <kernel>_param_0[SIZE]` must have the Rust struct's size,
/// every `ld.param` must start at a field's offset, and every field but the
/// explicit padding must be read by some load.
#[test]
fn parameter_structs_have_the_host_layout() {
    let Some(all) = compiled() else { return };
    let layout = cuda::abi::layout();
    let structs = [
        ("mns_fwd_f32", "MnsFwdParams"),
        ("mns_rows_f32", "MnsRowsParams"),
        ("mns_loss_f32", "MnsLossParams"),
        ("mns_du_f32", "MnsGradParams"),
        ("mns_dv_f32", "MnsGradParams"),
        ("mns_dtau_f32", "MnsDtauParams"),
        ("mns_du_merge_f32", "MnsMergeParams"),
        ("mns_fwd_tc_k32_f32", "MnsFwdParams"),
        ("mns_dv_tc_k32_f32", "MnsGradParams"),
        ("mns_fwd_tc_k128_tf32", "MnsFwdParams"),
        ("mns_dv_tc_k128_tf32", "MnsGradParams"),
    ];
    for c in all {
        let (arch, ptx) = (&c.arch, &c.ptx);
        assert!(!ptx.is_empty(), "{arch}: NVRTC gave no PTX");
        for (kernel, name) in structs {
            let (_, size, fields) = layout.iter().find(|l| l.0 == name).unwrap();
            let param = format!("{kernel}_param_0");
            let decl = format!(".b8 {param}[{size}]");
            assert!(
                ptx.contains(&decl),
                "{arch}: {kernel}: no `{decl}` in the PTX"
            );
            // This kernel's body: from its `.entry` to the next one.
            let start = ptx
                .find(&format!(".entry {kernel}("))
                .unwrap_or_else(|| panic!("{arch}: no .entry {kernel} in the PTX"));
            let body = &ptx[start..];
            let body = &body[..body[1..].find(".entry ").map_or(body.len(), |e| e + 1)];
            // Registers that hold the parameter's address (`mov.b64 %rdN,
            // <param>;`, then `ld.param [%rdN+OFF]`), and the parameter itself.
            let mut bases = vec![param.clone()];
            for l in body
                .lines()
                .filter(|l| l.contains("mov.b64") && l.contains(&param))
            {
                let reg = l.split_whitespace().nth(1).unwrap().trim_end_matches(',');
                bases.push(reg.to_string());
            }
            // (offset, bytes) of every load from the parameter.
            let loads: Vec<(usize, usize)> = body
                .lines()
                .filter(|l| l.contains("ld.param"))
                .filter_map(|l| {
                    let at = bases
                        .iter()
                        .find_map(|b| l.split(&format!("[{b}")).nth(1))?;
                    // `[%rd1` must not match `[%rd12`: the next char ends the name.
                    if !(at.starts_with('+') || at.starts_with(']')) {
                        return None;
                    }
                    let off = at.strip_prefix('+').map_or(0, |x| {
                        x.split(']').next().unwrap().parse::<usize>().unwrap()
                    });
                    let width = if l.contains(".v4.") {
                        4
                    } else if l.contains(".v2.") {
                        2
                    } else {
                        1
                    };
                    let bytes = if l.contains("64") { 8 } else { 4 };
                    Some((off, width * bytes))
                })
                .collect();
            assert!(!loads.is_empty(), "{arch}: {kernel} reads no parameter");
            for &(off, _) in &loads {
                assert!(
                    fields.iter().any(|&(_, o)| o == off),
                    "{arch}: {kernel} loads offset {off}, which is no field of {name}"
                );
            }
            // The SIMT forward has no partial O to write.
            let unused = |f: &str| f.ends_with("pad") || (kernel == "mns_fwd_f32" && f == "part_o");
            for (f, o) in fields.iter().filter(|(f, _)| !unused(f)) {
                assert!(
                    loads.iter().any(|&(off, n)| off <= *o && *o < off + n),
                    "{arch}: {kernel} never reads {name}.{f} at offset {o}"
                );
            }
        }
    }
}

/// The tensor-core and cp.async building blocks compile to
/// `cvt.rna.tf32.f32`, `mma.sync.m16n8k8` TF32, `mma.sync.m16n8k16` bf16 and
/// `cp.async` for sm_80 and
/// sm_90 (through the test kernels of tests/cuda_emu/mma_test.cu, appended to the
/// source), without spills.
#[test]
fn tensor_core_building_blocks_compile_to_mma_sync() {
    if !nvrtc() {
        return;
    }
    let src = format!(
        "{}\n{}",
        include_str!("../kernels/mns.cu"),
        include_str!("cuda_emu/mma_test.cu")
    );
    for arch in ["sm_80", "sm_90"] {
        let c = cuda::compile_source(&src, arch, true).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let ptx = &c.ptx;
        assert!(
            ptx.contains("cvt.rna.tf32.f32"),
            "{arch}: no cvt.rna.tf32.f32"
        );
        let mmas = ptx
            .matches("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32")
            .count();
        assert!(
            mmas >= 4,
            "{arch}: {mmas} mma.sync in the test kernel (3 + 1 per step)"
        );
        // ptxas reports each kernel's "Compiling entry function" and then its
        // stack-frame line.
        assert!(
            ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
            "{arch}: no bf16 mma.sync in mns_test_mma_bf16"
        );
        for kernel in ["mns_test_mma", "mns_test_mma_bf16", "mns_test_cp_async"] {
            let log = &c.log;
            let at = log
                .find(kernel)
                .unwrap_or_else(|| panic!("{arch}: no {kernel} in {log}"));
            let frame = log[at..]
                .lines()
                .find(|l| l.contains("stack frame"))
                .unwrap_or_else(|| panic!("{arch}: {log}"));
            assert!(no_stack_or_spill(frame), "{arch}: {kernel}: {frame}");
        }
    }
}

/// The tensor-core kernels are what they say: each forward and dV kernel's
/// PTX has mma.sync TF32 (three times as many in the 3xTF32 `f32` kernels
/// as in the one-pass `tf32` ones; the `bf16` ones m16n8k16 bf16 instead)
/// and cp.async staging with its waits; and the occupancy ptxas's register counts and the
/// dynamic shared memory allow on an H100/H200 (sm_90: 64 Ki registers and
/// 228 KiB shared memory an SM, 1 KiB of it reserved a block) is printed
/// and at least one block of 4 warps an SM.
#[test]
fn tensor_core_kernels_use_mma_and_cp_async() {
    let Some(all) = compiled() else { return };
    for c in all {
        let arch = &c.arch;
        let body = |kernel: &str| -> String {
            let start = c
                .ptx
                .find(&format!(".entry {kernel}("))
                .unwrap_or_else(|| panic!("{arch}: no .entry {kernel}"));
            let b = &c.ptx[start..];
            b[..b[1..].find(".entry ").map_or(b.len(), |e| e + 1)].to_string()
        };
        let mma = "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32";
        for class in ["k32", "k64", "k128"] {
            for kind in ["fwd", "dv"] {
                let f32 = body(&format!("mns_{kind}_tc_{class}_f32"));
                let tf32 = body(&format!("mns_{kind}_tc_{class}_tf32"));
                let (m3, m1) = (f32.matches(mma).count(), tf32.matches(mma).count());
                assert!(
                    m1 > 0 && m3 == 3 * m1,
                    "{arch} {kind} {class}: {m3} mma.sync in f32, {m1} in tf32"
                );
                let bf16 = body(&format!("mns_{kind}_tc_{class}_bf16"));
                assert!(
                    bf16.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
                        && bf16.contains("cvt.rn.bf16x2.f32")
                        && !bf16.contains(mma),
                    "{arch} {kind} {class}: the bf16 kernel is not on m16n8k16 bf16"
                );
                for b in [&f32, &tf32, &bf16] {
                    assert!(
                        b.contains("cp.async.cg.shared.global"),
                        "{arch} {kind} {class}"
                    );
                    assert!(b.contains("cp.async.wait_group"), "{arch} {kind} {class}");
                }
            }
        }
        // Registers per kernel from ptxas's log, then blocks an SM.
        let mut at = 0;
        let log = &c.log;
        while let Some(i) = log[at..].find("Compiling entry function '") {
            let from = at + i + "Compiling entry function '".len();
            let name = &log[from..from + log[from..].find('\'').unwrap()];
            at = from;
            let Some(class) = ["k32", "k64", "k128"]
                .iter()
                .position(|c| name.contains(&format!("_tc_{c}_")))
            else {
                continue;
            };
            let used = log[from..]
                .lines()
                .find(|l| l.contains("Used") && l.contains("registers"))
                .unwrap();
            let regs: usize = used
                .split_whitespace()
                .skip_while(|w| *w != "Used")
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            let kp = [32, 64, 128][class];
            let smem = cuda::tc_smem_bytes(kp);
            // Registers go to warps in units of 256 (8 a thread).
            let per_block = 4 * (32 * regs).div_ceil(256) * 256;
            let by_regs = 65536 / per_block;
            let by_smem = (228 * 1024) / (smem + 1024);
            let blocks = by_regs.min(by_smem);
            eprintln!(
                "{arch} {name}: {regs} registers, {smem} B dynamic shared memory (K = {kp}): \
                 {by_regs} blocks/SM by registers, {by_smem} by shared memory (sm_90 limits) -> {} warps/SM",
                4 * blocks
            );
            assert!(blocks >= 1, "{arch} {name}: does not fit an SM");
        }
    }
}
