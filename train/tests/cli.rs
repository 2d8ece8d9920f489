//! The `mixneg` command line: `loss` on every test vector with both backends,
//! the metadata and flag precedence, and clean failures on bad files.

#[path = "../../tests/common/mod.rs"]
mod common;
use common::*;
use safetensors::{Dtype, SafeTensors};
use std::process::Command;

fn mixneg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mixneg"))
}

fn read(path: &std::path::Path) -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            assert_eq!(t.dtype(), Dtype::F32, "{name}");
            (
                name,
                t.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )
        })
        .collect()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mixneg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn loss_on_every_vector_with_both_backends() {
    for (case, exp) in load_vectors() {
        for backend in ["reference", "cpu"] {
            let out = tmp(&format!("{backend}-{}", case.name));
            let input = vectors_dir().join(&case.name);
            mixneg()
                .args(["loss", "--backend", backend, "--input"])
                .arg(&input)
                .arg("--output")
                .arg(&out)
                .output_ok();
            let got = read(&out);
            assert_loss(&case, got["loss"][0], exp.loss);
            assert_tensor("d_u", &case, &got["d_u"], &exp.d_u, case.k);
            assert_tensor("d_v", &case, &got["d_v"], &exp.d_v, case.k);
            assert_tensor("lse", &case, &got["lse"], &exp.lse, 1);
        }
    }
}

#[test]
fn flags_override_metadata() {
    // The uncorrected-positive vector says correct_positive = false and τ = 1:
    // passing --temperature 0.5 must change the result, and the written
    // metadata records what was used.
    let input = vectors_dir().join("uncorrected_positive_5x16x3.safetensors");
    let out = tmp("override.safetensors");
    mixneg()
        .args(["loss", "--temperature", "0.5", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .output_ok();
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["temperature"], "0.5");
    assert_eq!(meta["correct_positive"], "false");
}

#[test]
fn bad_files_fail_cleanly() {
    let out = tmp("never.safetensors");
    let loss_fails = |input: &std::path::Path, flags: &[&str]| {
        mixneg()
            .arg("loss")
            .args(flags)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(&out)
            .stderr_failed()
    };
    // Missing file.
    let err = loss_fails("/nonexistent/x.safetensors".as_ref(), &[]);
    assert!(err.contains("/nonexistent/x.safetensors"));
    // Not a safetensors file.
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file at all").unwrap();
    let err = loss_fails(&junk, &[]);
    assert!(err.starts_with("mixneg: error:"));
    // Wrong dtype: u as f64.
    let bad = tmp("f64.safetensors");
    let u = [0.0f64; 4];
    let ub: Vec<u8> = u.iter().flat_map(|x| x.to_le_bytes()).collect();
    let v = [0.0f32; 6];
    let vb: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let q = [0.0f32; 3];
    let qb: Vec<u8> = q.iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        (
            "u",
            safetensors::tensor::TensorView::new(Dtype::F64, vec![2, 2], &ub).unwrap(),
        ),
        (
            "v",
            safetensors::tensor::TensorView::new(Dtype::F32, vec![3, 2], &vb).unwrap(),
        ),
        (
            "log_q",
            safetensors::tensor::TensorView::new(Dtype::F32, vec![3], &qb).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &bad).unwrap();
    let err = loss_fails(&bad, &[]);
    assert!(err.contains("dtype"), "{err}");
    // A valid file with a bad temperature: the MnsError message reaches stderr.
    let input = vectors_dir().join("basic_4x7x5.safetensors");
    let err = loss_fails(&input, &["--temperature=-1"]);
    assert!(
        err.contains("temperature must be finite and > 0, with a finite reciprocal in f32, got -1")
    );
    assert!(!out.exists(), "no output may be written on error");
}

#[test]
fn demo_runs_and_checks() {
    let text = mixneg()
        .args([
            "demo",
            "--b",
            "64",
            "--b-prime",
            "100",
            "--k",
            "9",
            "--reps",
            "2",
        ])
        .stdout_ok();
    assert!(text.contains("vs f64 reference"), "{text}");
    // Without ids (accidental hits kept): checked against the reference too.
    let text = mixneg()
        .args(["demo", "--batch", "20", "--b-prime", "30", "--dim", "5"])
        .args(["--reps", "1", "--no-ids"])
        .stdout_ok();
    assert!(text.contains("vs f64 reference"), "{text}");
}

/// A tier the CPU backend cannot compute is refused with the library's
/// message and a non-zero exit, for `demo` and `loss` alike: TF32 always,
/// bf16 where the CPU lacks AVX512_BF16 (elsewhere it runs); and
/// `--precision f32` is the default's result.
#[test]
fn lower_precision_on_the_cpu_fails_clearly() {
    let demo = [
        "demo",
        "--batch",
        "20",
        "--b-prime",
        "10",
        "--dim",
        "4",
        "--reps",
        "1",
    ];
    let bf16_here = mixneg::CpuBackend::new().supports(mixneg::Precision::Bf16);
    for tier in ["tf32", "bf16"] {
        let st = mixneg()
            .args(demo)
            .args(["--precision", tier])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        if tier == "bf16" && bf16_here {
            assert!(st.status.success(), "{tier}: {err}");
            continue;
        }
        assert!(!st.status.success(), "{tier}: {err}");
        assert!(
            err.contains("backend cannot compute Precision::"),
            "{tier}: {err}"
        );
    }
    let vector = vectors_dir().join("basic_4x7x5.safetensors");
    let out = tmp("precision_out.safetensors");
    let err = mixneg()
        .args(["loss", "--input"])
        .arg(&vector)
        .arg("--output")
        .arg(&out)
        .args(["--precision", "tf32"])
        .stderr_failed();
    assert!(err.contains("Precision::Tf32"));
    mixneg().args(demo).args(["--precision", "f32"]).output_ok();
}

/// The same flag names across subcommands (`--batch`, `--b-prime`, `--dim`;
/// the old `--b`/`--k` stay as aliases) and the CPU kernel and thread count
/// as flags.
#[test]
fn demo_takes_the_train_flag_names_and_cpu_flags() {
    let text = mixneg()
        .args([
            "demo",
            "--batch",
            "16",
            "--b-prime",
            "20",
            "--dim",
            "5",
            "--reps",
            "1",
            "--cpu-kernel",
            "portable",
            "--threads",
            "1",
        ])
        .stdout_ok();
    assert!(text.contains("cpu/portable on 1 threads"), "{text}");
    for bad in [vec!["--cpu-kernel", "sse9"], vec!["--threads", "0"]] {
        let st = mixneg()
            .args([
                "demo",
                "--batch",
                "4",
                "--b-prime",
                "4",
                "--dim",
                "2",
                "--reps",
                "1",
            ])
            .args(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(
            !st.status.success() && err.contains("error"),
            "{bad:?}: {err}"
        );
    }
}

/// `experiment` refuses the flags it sets itself instead of ignoring them.
#[test]
fn experiment_refuses_the_flags_it_sets() {
    for flag in [["--b-prime", "7"], ["--seed", "3"], ["--q-mode", "none"]] {
        let st = mixneg()
            .args(["experiment", "--epochs", "1"])
            .args(flag)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(!st.status.success(), "{flag:?} accepted");
        assert!(
            err.contains("sets") && err.contains(flag[0]),
            "{flag:?}: {err}"
        );
    }
}

/// A log smaller than one batch is an error that says so, not 0 steps and
/// a loss of 0.
#[test]
fn train_on_a_log_smaller_than_a_batch_fails_clearly() {
    let dir = std::env::temp_dir().join(format!("mixneg-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("tiny.csv");
    let mut text = String::from("user,item\n");
    for u in 0..20 {
        for i in 0..4 {
            text += &format!("u{u},i{}\n", (u + i) % 30);
        }
    }
    std::fs::write(&log, text).unwrap();
    let st = mixneg()
        .args(["train", "--quiet", "--epochs", "1", "--logs"])
        .arg(&log)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success(), "{err}");
    assert!(err.contains("fewer than one batch of B = 256"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `experiment --checkpoint DIR` gives each configuration and seed its own
/// checkpoint (it used to share one, so the second configuration refused
/// the first one's), and a rerun resumes every run from its own.
#[test]
fn experiment_with_a_checkpoint_runs_every_configuration() {
    let dir = std::env::temp_dir().join(format!("mixneg-exp-{}", std::process::id()));
    let (ck, out) = (dir.join("ck"), dir.join("out"));
    let run = || {
        mixneg()
            .args([
                "experiment",
                "--users",
                "300",
                "--items",
                "600",
                "--train-per-user",
                "6",
                "--epochs",
                "1",
                "--seeds",
                "1",
                "--batch",
                "32",
                "--dim",
                "8",
                "--emb",
                "8",
                "--hidden",
                "0",
                "--buckets",
                "4096",
                "--verify-every",
                "0",
                "--checkpoint-every",
                "5",
                "--checkpoint",
            ])
            .arg(&ck)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let st = run();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(st.status.success(), "{err}");
    let runs = std::fs::read_dir(&ck).unwrap().count();
    assert_eq!(runs, 17, "one checkpoint directory per configuration");
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    let st = run();
    assert!(st.status.success(), "{}", err);
    assert_eq!(
        std::fs::read_to_string(out.join("table.md")).unwrap(),
        table
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mixneg train` (the README's first command) on a small paper world:
/// batch softmax and MNS side by side with the popularity list and the
/// planted model, the fresh slice's count, the plain reading and the plot;
/// `--alone` trains the configured model only.
#[test]
fn train_compares_mns_with_batch_softmax() {
    let plot = tmp("train_plot.svg");
    let small = [
        "train",
        "--users",
        "300",
        "--items",
        "1500",
        "--train-per-user",
        "12",
        "--epochs",
        "1",
        "--batch",
        "64",
        "--buckets",
        "4096",
        "--quiet",
    ];
    let st = mixneg().args(small).arg("--plot").arg(&plot).output_ok();
    let out = String::from_utf8_lossy(&st.stdout);
    for want in [
        "batch softmax on the same world and seed",
        "side by side",
        "batch softmax (B = 64)",
        "MNS (B = 64, B' = 256)",
        "popularity list",
        "planted model (knows all)",
        "of them with fresh items",
        "low quality",
        "One world and one seed",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("Recall@100"),
        "{}",
        &svg[..200.min(svg.len())]
    );
    let st = mixneg().args(small).arg("--alone").output().unwrap();
    let out = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success());
    assert!(!out.contains("side by side"), "{out}");
}
