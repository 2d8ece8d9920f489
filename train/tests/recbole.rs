//! The RecBole atomic-file reader on small files the test writes: fields and
//! features, every catalogue item in the corpus, positives, both splits,
//! fresh items, the quality proxy, and clear errors; then `mixneg train` and
//! a smoke run of `mixneg experiment` on them.

#[path = "../../tests/common/mod.rs"]
mod common;
use common::OutputOk;
use mixneg_train::data::feature_field;
use mixneg_train::recbole::{LogConfig, Split, read};
use std::path::{Path, PathBuf};

fn mixneg() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_mixneg"))
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mixneg-recbole-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// u1: i1 (5, t=1), i2 (2, t=2), i3 (4, t=5); u2: i1 (4, t=3), i2 (1, t=4),
/// i3 (5, t=6); catalogue i1–i4 (i4 never rated).
fn write_small(d: &Path) -> PathBuf {
    let inter = d.join("toy.inter");
    std::fs::write(
        &inter,
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
         u1\ti1\t5\t1\nu1\ti2\t2\t2\nu2\ti1\t4\t3\nu2\ti2\t1\t4\nu1\ti3\t4\t5\nu2\ti3\t5\t6\n",
    )
    .unwrap();
    std::fs::write(
        d.join("toy.user"),
        "user_id:token\tage:token\tzip_code:token\nu1\t24\t85711\nu2\t53\t94043\n",
    )
    .unwrap();
    std::fs::write(
        d.join("toy.item"),
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n\
         i1\tToy Story\t1995\tAnimation Comedy\ni2\tHeat\t1995\tAction\n\
         i3\tBabe\t1995\tComedy Drama Family\ni4\tNever Rated\t1996\tDrama\n",
    )
    .unwrap();
    inter
}

#[test]
fn reads_features_corpus_splits_and_quality() {
    let d = dir("read");
    let inter = write_small(&d);
    let ds = read(&inter, &LogConfig::default()).unwrap();
    // Every catalogue item is in the corpus, the never-rated i4 included.
    assert_eq!((ds.n_users, ds.n_items), (2, 4));
    // Items in sorted id order: i1, i2, i3, i4. Features: id first, then
    // 2 title tokens, the year, the genres.
    let f = &ds.item_feats[0];
    assert_eq!(feature_field(f[0]), 200);
    let fields: Vec<u64> = f.iter().map(|&h| feature_field(h)).collect();
    assert_eq!(fields, vec![200, 202, 202, 203, 204, 204]);
    assert_eq!(ds.item_feats[2].len(), 1 + 1 + 1 + 3);
    // Users: id, age, zip prefix.
    assert_eq!(ds.user_feats[0].len(), 3);
    // A zip code keeps its first two characters (field 100 + 1 + column 2).
    assert_eq!(
        ds.user_feats[0][2],
        mixneg_train::data::feature_str(103, "85")
    );
    assert_eq!(
        ds.user_feats[1][2],
        mixneg_train::data::feature_str(103, "94")
    );
    // User split: each user's last event (i3 for both) is the test item.
    assert_eq!(ds.test.len(), 2);
    assert!(ds.test.iter().all(|&(_, i)| i == 2));
    assert_eq!(ds.train.len(), 4);
    // i3 is rated only in test positions: fresh; i4 never rated: not fresh.
    assert_eq!(ds.fresh, vec![false, false, true, false]);
    // Quality proxy: mean training rating ≤ 2.5 (i2: 1.5).
    assert_eq!(ds.low_quality, vec![false, true, false, false]);

    // Positives only: ratings ≥ 4 (i2's ratings drop out of train and test,
    // but still count toward its mean rating).
    let cfg = LogConfig {
        min_rating: Some(4.0),
        ..Default::default()
    };
    let ds = read(&inter, &cfg).unwrap();
    assert_eq!(ds.train.len(), 2);
    assert!(ds.train.iter().all(|&(_, i)| i == 0));
    assert_eq!(ds.test.len(), 2);
    assert!(ds.low_quality[1]);

    // Time split: the last 1/3 of 6 positives by time (t = 5, 6) held out;
    // ties go by file order.
    let cfg = LogConfig {
        split: Split::Time,
        test_share: 1.0 / 3.0,
        ..Default::default()
    };
    let ds = read(&inter, &cfg).unwrap();
    assert_eq!(ds.test, vec![(0, 2), (1, 2)]);
    assert_eq!(ds.fresh, vec![false, false, true, false]);
    let cfg = LogConfig {
        split: Split::Time,
        test_share: 0.5,
        ..Default::default()
    };
    let ds = read(&inter, &cfg).unwrap();
    // From the 4th positive by time (t = 4) on: u2's i2 and both i3.
    assert_eq!(ds.test.len(), 3);
    assert_eq!(ds.train.len(), 3);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_files_are_clear_errors() {
    let d = dir("bad");
    let inter = d.join("x.inter");
    let cases: [(&str, &str); 5] = [
        ("user_id\titem_id\nu\ti\n", "is not name:type"),
        ("user_id:token\titem_id:blob\nu\ti\n", "has type \"blob\""),
        ("user_id:token\tthing:token\nu\ti\n", "no item_id field"),
        (
            "user_id:token\titem_id:token\trating:float\nu\ti\t5\nu\tj\n",
            "x.inter:3: 2 fields",
        ),
        (
            "user_id:token\titem_id:token\trating:float\nu\ti\tfive\n",
            "x.inter:2: field rating",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&inter, text).unwrap();
        let e = read(&inter, &LogConfig::default()).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    std::fs::write(&inter, "user_id:token\titem_id:token\nu\ti\n").unwrap();
    let cfg = LogConfig {
        min_rating: Some(4.0),
        ..Default::default()
    };
    let e = read(&inter, &cfg).unwrap_err().to_string();
    assert!(e.contains("needs a rating field"), "{e}");
    let cfg = LogConfig {
        test_share: 1.5,
        ..Default::default()
    };
    assert!(
        read(&inter, &cfg)
            .unwrap_err()
            .to_string()
            .contains("--test-share")
    );
    std::fs::remove_dir_all(&d).ok();
}

/// A larger log in the same format: 300 users with 12 ratings each over 200
/// items (taste by user group), so that a model can learn something.
fn write_medium(d: &Path) -> PathBuf {
    let mut inter = String::from("user_id:token\titem_id:token\trating:float\ttimestamp:float\n");
    let mut x = 17u64;
    let mut next = |n: u64| {
        x = mixneg_train::synthetic::splitmix(x);
        x % n
    };
    for u in 0..300 {
        for k in 0..12 {
            let item = (u % 5) * 40 + next(40);
            inter += &format!("u{u}\tm{item}\t{}\t{}\n", 1 + next(5), u * 100 + k);
        }
    }
    let p = d.join("medium.inter");
    std::fs::write(&p, inter).unwrap();
    let mut item = String::from("item_id:token\tgenre:token_seq\tyear:float\n");
    for i in 0..220 {
        item += &format!("m{i}\tg{} g{}\t{}.5\n", i / 40, i % 7, 1990 + i % 10);
    }
    std::fs::write(d.join("medium.item"), item).unwrap();
    let mut user = String::from("user_id:token\tgroup:token\n");
    for u in 0..300 {
        user += &format!("u{u}\t{}\n", u % 5);
    }
    std::fs::write(d.join("medium.user"), user).unwrap();
    p
}

#[test]
fn train_and_experiment_run_on_recbole_files() {
    let d = dir("cli");
    let inter = write_medium(&d);
    let out = mixneg()
        .args([
            "train",
            "--quiet",
            "--epochs",
            "2",
            "--batch",
            "64",
            "--b-prime",
            "64",
        ])
        .args(["--buckets", "4096", "--min-rating", "2", "--logs"])
        .arg(&inter)
        .output_ok();
    let text = String::from_utf8_lossy(&out.stdout);
    // 220 catalogue items, every metric and the popularity list printed.
    assert!(text.contains("300 users, 220 items"), "{text}");
    for m in [
        "R@10/50/100",
        "NDCG@10",
        "low-q@10/100",
        "unlogged@10/100",
        "popularity list",
    ] {
        assert!(text.contains(m), "{m}: {text}");
    }
    let exp = d.join("exp");
    mixneg()
        .args([
            "experiment",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--batch",
            "64",
            "--buckets",
            "4096",
        ])
        .args([
            "--only",
            "batch softmax, logQ;MNS B'/B = 1;production: id-only items, sampled softmax",
        ])
        .arg("--out")
        .arg(&exp)
        .arg("--logs")
        .arg(&inter)
        .output_ok();
    let results = std::fs::read_to_string(exp.join("results.csv")).unwrap();
    assert_eq!(results.lines().count(), 1 + 3 * 2);
    let table = std::fs::read_to_string(exp.join("table.md")).unwrap();
    assert!(
        table.contains("*popularity list*") && table.contains("Paired differences"),
        "{table}"
    );
    assert!(table.contains("| MNS B'/B = 1 |"), "{table}");
    // A configuration name that does not exist is an error, not an empty run.
    let err = mixneg()
        .args([
            "experiment",
            "--seeds",
            "1",
            "--only",
            "MNS B'/B = 3",
            "--logs",
        ])
        .arg(&inter)
        .arg("--out")
        .arg(&exp)
        .stderr_failed();
    assert!(err.contains("matches no configuration"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn paper_world_experiment_smoke() {
    let d = dir("paper");
    mixneg()
        .args([
            "experiment",
            "--seeds",
            "2",
            "--world",
            "paper",
            "--users",
            "300",
        ])
        .args(["--items", "1500", "--train-per-user", "12", "--epochs", "1"])
        .args([
            "--batch",
            "64",
            "--buckets",
            "4096",
            "--quality-signal",
            "0.5",
        ])
        .args([
            "--only",
            "batch softmax, logQ;MNS B'/B = 1;MNS B'/B = 2, B+B' = 128;uniform negatives only;\
             control: batch softmax, logQ, B = 128;control: stream negatives B'/B = 1",
        ])
        .arg("--out")
        .arg(&d)
        .output_ok();
    let results = std::fs::read_to_string(d.join("results.csv")).unwrap();
    // Fixed B + B′ = 2B: B = 43, B′ = 85 at B′/B = 2.
    assert!(
        results.contains("\"MNS B'/B = 2, B+B' = 128\",mns-fixed-total,2,43,85,1,"),
        "{results}"
    );
    // The controls: batch softmax at B + B' = 2B, and B' stream negatives.
    assert!(
        results.contains("\"control: batch softmax, logQ, B = 128\",control-rows,1,128,0,1,")
            && results.contains("\"control: stream negatives B'/B = 1\",control-stream,1,64,64,1,"),
        "{results}"
    );
    // The table: counts per slice, and the headline claims with Holm's
    // adjustment (MNS B'/B = 1 and both controls, three metrics each).
    let table = std::fs::read_to_string(d.join("table.md")).unwrap();
    assert!(table.contains("Test interactions per seed: "), "{table}");
    assert!(
        table.contains("Headline claims as one family of 9 tests"),
        "{table}"
    );
    assert!(
        table.contains("| control: stream negatives B'/B = 1 | fresh R@100 |"),
        "{table}"
    );
    let base = std::fs::read_to_string(d.join("baselines.csv")).unwrap();
    assert!(
        base.contains("\"true items, fitted users\",2,") && base.contains("planted model"),
        "{base}"
    );
    // Passing a flag the experiment sets itself is refused.
    mixneg()
        .args(["experiment", "--estimator", "exact"])
        .stderr_failed();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_world_that_cannot_be_drawn_is_a_clear_error() {
    for (flag, value, want) in [
        (
            "--category-weight",
            "2",
            "--category-weight 2: must be in [0, 1]",
        ),
        ("--bad-share", "1.5", "--bad-share 1.5: must be in [0, 1]"),
        ("--fresh-share", "1", "--fresh-share 1: must be in [0, 1)"),
        (
            "--fresh-exposure",
            "0",
            "--fresh-exposure 0: must be in (0, 1]",
        ),
        (
            "--feature-buckets",
            "0",
            "--feature-buckets 0: must be at least 1",
        ),
        (
            "--affinity-temperature=-1",
            "",
            "--affinity-temperature -1: must be > 0",
        ),
        (
            "--bad-penalty",
            "NaN",
            "--bad-penalty NaN: must be a finite number",
        ),
    ] {
        for cmd in ["train", "experiment"] {
            let mut c = mixneg();
            c.args([
                cmd, "--world", "paper", "--users", "50", "--items", "200", flag,
            ]);
            if !value.is_empty() {
                c.arg(value);
            }
            if cmd == "experiment" {
                c.arg("--out")
                    .arg(std::env::temp_dir().join("mixneg-never"));
            }
            let err = c.stderr_failed();
            assert!(err.contains(want), "{cmd} {flag} {value}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}
