//! The two-tower trainer end to end on small synthetic data, and the log
//! reader.

use mixneg::CpuBackend;
use mixneg_train::{self as train, Negatives, TrainConfig, data, freq::QMode};

fn small() -> TrainConfig {
    let synth = data::SynthConfig {
        users: 1500,
        items: 3000,
        train_per_user: 16,
        ..Default::default()
    };
    TrainConfig {
        logs: None,
        synth,
        log_cfg: Default::default(),
        item_features: train::ItemFeatures::All,
        batch: 128,
        b_prime: 128,
        negatives: Negatives::Mixed,
        q_mode: QMode::Mixture,
        positive_correction: train::PositiveCorrection::Yi,
        estimator: train::Estimator::Streaming,
        estimator_alpha: 0.01,
        temperature: 0.05,
        dim: 16,
        emb: 16,
        hidden: 32,
        buckets: 1 << 14,
        no_l2: false,
        optimizer: train::tower::Optimizer::Adagrad,
        lr: 0.05,
        epochs: 3,
        seed: 7,
        verify_every: 25,
        verify_tolerance: 1e-3,
        eval_final_only: false,
        metrics: None,
        quiet: true,
        checkpoint: None,
        checkpoint_every: 500,
    }
}

#[test]
fn loss_decreases_and_recall_beats_a_random_model() {
    let cfg = small();
    let (data, reps) = train::train(&cfg, &CpuBackend::new()).unwrap();
    let first = &reps[1];
    let last = reps.last().unwrap();
    assert!(
        last.loss < first.loss,
        "loss {} → {}",
        first.loss,
        last.loss
    );
    // A random ranking finds a test item in the top 100 with probability
    // ≈ 100 / n_items = 0.033; the untrained towers (epoch 0) are such a model.
    let random = 100.0 / data.n_items as f64;
    assert!(
        reps[0].metrics.recall[2] < 3.0 * random,
        "epoch 0 recall {}",
        reps[0].metrics.recall[2]
    );
    assert!(
        last.metrics.recall[2] > 3.0 * random,
        "trained recall@100 {} vs random {random}",
        last.metrics.recall[2]
    );
    // The in-loop kernel check ran and agreed.
    assert!(
        last.max_verify_error > 0.0 && last.max_verify_error < 1e-3,
        "{}",
        last.max_verify_error
    );
    let oracle = train::oracle_metrics(&data).unwrap();
    assert!(
        oracle.recall[2] > last.metrics.recall[2],
        "the planted model is the ceiling"
    );
}

#[test]
fn every_negatives_mode_trains() {
    for (neg, q, bp) in [
        (Negatives::Mixed, QMode::None, 0),
        (Negatives::Mixed, QMode::Unigram, 0),
        (Negatives::UniformOnly, QMode::None, 128),
    ] {
        let mut cfg = small();
        cfg.epochs = 1;
        cfg.negatives = neg;
        cfg.q_mode = q;
        cfg.b_prime = bp;
        let (_, reps) = train::train(&cfg, &CpuBackend::new()).unwrap();
        assert!(reps[1].loss.is_finite(), "{neg:?} {q:?}");
    }
}

#[test]
fn log_reader_formats_and_errors() {
    let dir = std::env::temp_dir().join(format!("mixneg-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // MovieLens ratings.dat: user::item::rating::timestamp.
    let ml = dir.join("ratings.dat");
    std::fs::write(
        &ml,
        "1::10::5::300\n1::11::3::100\n2::10::4::50\n2::12::1::60\n3::11::2::10\n",
    )
    .unwrap();
    let d = data::read_logs(&ml).unwrap();
    assert_eq!((d.n_users, d.n_items), (3, 3));
    // Users 1 and 2 have two interactions: their last by time is the test.
    assert_eq!(d.test.len(), 2);
    assert_eq!(d.train.len(), 3);
    // CSV with a header, no timestamps.
    let csv = dir.join("log.csv");
    std::fs::write(&csv, "user,item\na,x\na,y\nb,x\n").unwrap();
    let d = data::read_logs(&csv).unwrap();
    assert_eq!((d.n_users, d.n_items, d.test.len()), (2, 2, 1));
    // u.data: tab-separated with a malformed line 3.
    let bad = dir.join("u.data");
    std::fs::write(&bad, "1\t2\t3\t4\n1\t3\t3\t5\n1\t4\tthree\n").unwrap();
    let e = data::read_logs(&bad).unwrap_err().to_string();
    assert!(e.contains("u.data:3:"), "{e}");
    let bad = dir.join("t.csv");
    std::fs::write(&bad, "1,2,100\n1,3,notatime\n").unwrap();
    let e = data::read_logs(&bad).unwrap_err().to_string();
    assert!(e.contains("t.csv:2:") && e.contains("timestamp"), "{e}");
}

/// Run the CLI trainer on a small world; returns (status, stderr).
fn run_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mixneg"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SMALL: [&str; 14] = [
    "train",
    "--users",
    "1500",
    "--items",
    "3000",
    "--epochs",
    "3",
    "--batch",
    "64",
    "--quiet",
    "--checkpoint-every",
    "100",
    "--buckets",
    "16384",
];

/// The metrics CSV without the timing columns (examples/s, loss share).
fn results(csv: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(16).collect::<Vec<_>>().join(","))
        .collect()
}

#[test]
fn killed_run_resumes_to_the_same_result() {
    let dir = std::env::temp_dir().join(format!("mixneg-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (full_csv, cut_csv, ck) = (dir.join("full.csv"), dir.join("cut.csv"), dir.join("ck"));
    let mut args: Vec<&str> = SMALL.to_vec();
    let full = full_csv.to_str().unwrap();
    args.extend(["--metrics", full]);
    let (ok, err) = run_cli(&args);
    assert!(ok, "{err}");

    // The same run, SIGKILLed as soon as its first checkpoint is on disk,
    // then started again with the same arguments: it resumes.
    let cut = cut_csv.to_str().unwrap();
    let ckd = ck.to_str().unwrap();
    let mut args: Vec<&str> = SMALL.to_vec();
    args.extend(["--metrics", cut, "--checkpoint", ckd]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mixneg"))
        .args(&args)
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !mixneg_train::checkpoint::path(&ck).exists() && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let killed_mid_way = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        mixneg_train::checkpoint::path(&ck).exists(),
        "no checkpoint was written"
    );
    assert!(killed_mid_way, "the run finished before it could be killed");
    let (ok, err) = run_cli(&args);
    assert!(ok, "{err}");
    assert_eq!(
        results(&full_csv),
        results(&cut_csv),
        "resumed run differs (killed mid-way: {killed_mid_way})"
    );

    // A corrupt or truncated checkpoint is refused, never half-loaded.
    let p = mixneg_train::checkpoint::path(&ck);
    let bytes = std::fs::read(&p).unwrap();
    let mut flipped = bytes.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x40;
    std::fs::write(&p, &flipped).unwrap();
    let (ok, err) = run_cli(&args);
    assert!(!ok && err.contains("checksum mismatch"), "{err}");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, err) = run_cli(&args);
    assert!(!ok && err.contains("refused"), "{err}");
    // A checkpoint of another configuration is refused too.
    std::fs::write(&p, &bytes).unwrap();
    let mut other = args.clone();
    other[2] = "1600";
    let (ok, err) = run_cli(&other);
    assert!(!ok && err.contains("another configuration"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--positive-correction eq5` reaches the loss: the same run with the
/// positive left uncorrected trains to a different loss (each positive's
/// logit differs by its log Q, which is far from 0 for every item).
#[test]
fn positive_correction_is_applied() {
    let mut cfg = small();
    cfg.epochs = 1;
    cfg.synth.users = 400;
    let (_, yi) = train::train(&cfg, &CpuBackend::new()).unwrap();
    cfg.positive_correction = train::PositiveCorrection::Eq5;
    let (_, eq5) = train::train(&cfg, &CpuBackend::new()).unwrap();
    let (a, b) = (yi.last().unwrap().loss, eq5.last().unwrap().loss);
    assert!((a - b).abs() > 1e-3 * a.abs(), "Yi {a} vs eq5 {b}");
}

/// No test pair repeats one of its user's training items (evaluation
/// excludes those, so such a pair could never be hit), in the synthetic
/// world and in logs.
#[test]
fn test_pairs_never_repeat_a_training_item() {
    use std::collections::HashSet;
    let d = data::synthetic(&small().synth, 3);
    let seen: HashSet<(u32, u32)> = d.train.iter().copied().collect();
    assert!(!d.test.is_empty());
    assert!(d.test.iter().all(|p| !seen.contains(p)));
    let kept = data::drop_seen_test_pairs(&[(0, 1), (1, 2)], vec![(0, 1), (0, 2), (1, 2), (1, 1)]);
    assert_eq!(kept, vec![(0, 2), (1, 1)]);
    // A log whose last event of user a repeats an earlier item of a.
    let dir = std::env::temp_dir().join(format!("mixneg-repeat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("log.csv");
    std::fs::write(&csv, "user,item,t\na,x,1\na,y,2\na,x,3\nb,x,1\nb,z,2\n").unwrap();
    let d = data::read_logs(&csv).unwrap();
    // a's last event (x) repeats a training item and is dropped; b's (z) stays.
    assert_eq!(d.test.len(), 1);
    std::fs::remove_dir_all(&dir).ok();
}
