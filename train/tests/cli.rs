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
            let st = mixneg()
                .args(["loss", "--backend", backend, "--input"])
                .arg(&input)
                .arg("--output")
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                st.status.success(),
                "{}: {}",
                case.name,
                String::from_utf8_lossy(&st.stderr)
            );
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
    let st = mixneg()
        .args(["loss", "--temperature", "0.5", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success());
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["temperature"], "0.5");
    assert_eq!(meta["correct_positive"], "false");
}

#[test]
fn bad_files_fail_cleanly() {
    let out = tmp("never.safetensors");
    // Missing file.
    let st = mixneg()
        .args(["loss", "--input", "/nonexistent/x.safetensors", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("/nonexistent/x.safetensors"));
    // Not a safetensors file.
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file at all").unwrap();
    let st = mixneg()
        .args(["loss", "--input"])
        .arg(&junk)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).starts_with("mixneg: error:"));
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
    let st = mixneg()
        .args(["loss", "--input"])
        .arg(&bad)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(
        String::from_utf8_lossy(&st.stderr).contains("dtype"),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // A valid file with a bad temperature: the MnsError message reaches stderr.
    let input = vectors_dir().join("basic_4x7x5.safetensors");
    let st = mixneg()
        .args(["loss", "--temperature=-1", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(
        String::from_utf8_lossy(&st.stderr).contains(
            "temperature must be finite and > 0, with a finite reciprocal in f32, got -1"
        )
    );
    assert!(!out.exists(), "no output may be written on error");
}

#[test]
fn demo_runs_and_checks() {
    let st = mixneg()
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
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{text}");
    assert!(text.contains("vs f64 reference"), "{text}");
}
