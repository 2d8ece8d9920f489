//! The CUDA kernels (`kernels/mns.cu`) run on the CPU emulator of
//! `tests/cuda_emu/` — each CUDA thread an OS thread, barriers and warp
//! shuffles emulated — in the launch sequence and with the grid [`Plan`] of
//! the CUDA backend, against the f64 reference. This checks the kernels'
//! arithmetic, tiling, masking and reductions on machines without a GPU; the
//! real-device tests are in `cuda_vs_reference.rs`.
//!
//! Needs a C++20 compiler (`g++`); without one it prints `skipping: …`,
//! unless `REQUIRE_CXX=1` (set by CI), which makes that a failure.
#![cfg(feature = "cuda")]

mod common;
use common::*;
use mixneg::MnsOutput;
use mixneg::cuda::Plan;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn emulator() -> Option<&'static Path> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mns_emu");
        let out = Command::new("g++")
            .args([
                "-O2",
                "-std=c++20",
                "-pthread",
                "-Wall",
                "-Wno-unknown-pragmas",
                "-o",
            ])
            .arg(&exe)
            .arg(root.join("tests/cuda_emu/harness.cpp"))
            .output();
        match out {
            Ok(o) if o.status.success() => Some(exe),
            Ok(o) => panic!(
                "the emulator does not compile:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => {
                let msg = format!("no C++ compiler (g++: {e})");
                assert!(
                    std::env::var("REQUIRE_CXX").as_deref() != Ok("1"),
                    "REQUIRE_CXX=1 but {msg}"
                );
                skip(&msg);
                None
            }
        }
    })
    .as_deref()
}

/// Run one case on the emulated kernels with the plan for a GPU of `sms`
/// multiprocessors.
fn run(exe: &Path, case: &Case, sms: usize) -> MnsOutput {
    let (b, n, k) = (case.b(), case.n(), case.k);
    let plan = Plan::new(b, n, k, sms);
    let mut buf: Vec<u8> = vec![];
    let hdr: [i64; 15] = [
        b as i64,
        n as i64,
        k as i64,
        case.ids.is_some() as i64,
        case.row_weight.is_some() as i64,
        case.correct_positive as i64,
        plan.splits as i64,
        plan.cols_per_split as i64,
        plan.fwd_grid.0 as i64,
        plan.fwd_grid.1 as i64,
        plan.rows_grid as i64,
        plan.du_grid.0 as i64,
        plan.du_grid.1 as i64,
        plan.dv_grid.0 as i64,
        plan.dv_grid.1 as i64,
    ];
    hdr.iter().for_each(|x| buf.extend(x.to_le_bytes()));
    buf.extend(case.temperature.to_le_bytes());
    for x in case.u.iter().chain(&case.v).chain(&case.log_q) {
        buf.extend(x.to_le_bytes());
    }
    if let Some(ids) = &case.ids {
        ids.iter().for_each(|x| buf.extend(x.to_le_bytes()));
    }
    if let Some(w) = &case.row_weight {
        w.iter().for_each(|x| buf.extend(x.to_le_bytes()));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tag = format!(
        "{}-{b}-{n}-{k}-{sms}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let (inp, outp) = (
        dir.join(format!("in-{tag}")),
        dir.join(format!("out-{tag}")),
    );
    std::fs::write(&inp, &buf).unwrap();
    let st = Command::new(exe).arg(&inp).arg(&outp).status().unwrap();
    assert!(st.success(), "{}: emulator failed", case.name);
    let raw = std::fs::read(&outp).unwrap();
    let _ = (std::fs::remove_file(&inp), std::fs::remove_file(&outp));
    let f: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut at = 0;
    let mut take = |len: usize| {
        at += len;
        f[at - len..at].to_vec()
    };
    let loss = take(1)[0];
    let lse = take(b);
    let row_loss = take(b);
    let d_u = take(b * k);
    let d_v = take(n * k);
    let top1 = raw[4 * at..]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) != 0)
        .collect();
    MnsOutput {
        loss,
        d_u,
        d_v,
        lse,
        row_loss,
        top1,
    }
}

fn check(exe: &Path, case: &Case, sms: usize) {
    let want = mixneg::reference::mns_loss_f64(&case.input()).unwrap();
    let out = run(exe, case, sms);
    let ctx = Case {
        name: format!("{} [emulated cuda, {sms} SMs]", case.name),
        ..case.clone()
    };
    assert_output(&ctx, &out, want.loss, &want.d_u, &want.d_v, &want.lse);
    assert_tensor("row_loss", &ctx, &out.row_loss, &want.row_loss, 1);
    let agree = out
        .top1
        .iter()
        .zip(&want.top1)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        agree + 1 >= case.b(),
        "{}: top1 agrees on {agree}/{}",
        ctx.name,
        case.b()
    );
}

#[test]
fn emulated_kernels_match_the_reference_on_awkward_shapes() {
    let Some(exe) = emulator() else { return };
    // Tails in every tile dimension: B, N, K not multiples of 64 or 16,
    // K > 64 (several component slices), one to many column splits.
    for (b, bp, k, sms) in [
        (1, 0, 1, 1),
        (1, 7, 3, 132),
        (3, 0, 7, 4),
        (17, 203, 9, 132),
        (64, 64, 64, 1),
        (65, 130, 65, 8),
        (113, 1000, 31, 132),
        (70, 30, 130, 2),
    ] {
        check(exe, &random_case(21, b, bp, k), sms);
    }
}

#[test]
fn emulated_kernels_pass_every_vector() {
    let Some(exe) = emulator() else { return };
    for (case, exp) in load_vectors() {
        for sms in [1, 132] {
            let out = run(exe, &case, sms);
            let ctx = Case {
                name: format!("{} [emulated cuda, {sms} SMs]", case.name),
                ..case.clone()
            };
            assert_output(&ctx, &out, exp.loss, &exp.d_u, &exp.d_v, &exp.lse);
        }
    }
}

#[test]
fn emulated_kernels_handle_the_numerical_edges() {
    let Some(exe) = emulator() else { return };
    // Options, huge logits, all-removed rows, a dominating positive.
    let mut c = random_case(22, 40, 90, 16);
    c.correct_positive = false;
    c.temperature = 1.0;
    c.row_weight = Some((0..40).map(|i| (i % 3) as f32).collect());
    c.name = "uncorrected, weights with zeros".into();
    check(exe, &c, 16);

    let mut c = random_case(23, 20, 44, 8);
    c.u.iter_mut().for_each(|x| *x *= 30.0);
    c.v.iter_mut().for_each(|x| *x *= 30.0);
    c.temperature = 1.0;
    c.name = "huge logits".into();
    check(exe, &c, 4);

    let mut c = random_case(24, 6, 9, 5);
    c.ids = Some(vec![7; 15]);
    c.name = "every row fully removed".into();
    let out = run(exe, &c, 3);
    assert_eq!(out.loss, 0.0);
    assert!(out.d_u.iter().chain(&out.d_v).all(|&x| x == 0.0));
    assert!(out.top1.iter().all(|&t| t));

    let mut c = random_case(25, 30, 60, 8);
    c.ids = Some((0..90).map(|j| (j % 3) as i64).collect());
    c.name = "heavy duplicates".into();
    check(exe, &c, 132);
}
