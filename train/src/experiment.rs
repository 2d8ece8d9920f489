//! `mixneg experiment`: batch softmax with and without logQ, MNS at
//! B′/B ∈ {0.5, 1, 2, 4} and uniform-only negatives, over several seeds at an
//! equal budget.

use crate::freq::QMode;
use crate::{Error, Negatives, TrainConfig};
use mixneg::Backend;
use std::path::Path;
use std::time::Instant;

/// Runs the experiment's configurations over `seeds` seeds with the fused
/// loss on `be`; writes `results.csv`, one metrics CSV per run and
/// `table.md` (mean ± 95% CI) to `out`, and prints the table.
pub fn run(base: &TrainConfig, seeds: u64, out: &Path, be: &dyn Backend) -> Result<(), Error> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let b = base.batch;
    // (name, B′, negatives, Q mode); equal budget: same epochs and batches of B stream positives.
    let configs: Vec<(String, usize, Negatives, QMode)> = vec![
        (
            "batch softmax, no correction".into(),
            0,
            Negatives::Mixed,
            QMode::None,
        ),
        (
            "batch softmax, unigram logQ".into(),
            0,
            Negatives::Mixed,
            QMode::Unigram,
        ),
        (
            "MNS B'/B = 0.5".into(),
            b / 2,
            Negatives::Mixed,
            QMode::Mixture,
        ),
        ("MNS B'/B = 1".into(), b, Negatives::Mixed, QMode::Mixture),
        (
            "MNS B'/B = 2".into(),
            2 * b,
            Negatives::Mixed,
            QMode::Mixture,
        ),
        (
            "MNS B'/B = 4".into(),
            4 * b,
            Negatives::Mixed,
            QMode::Mixture,
        ),
        (
            "uniform negatives only, B' = B".into(),
            b,
            Negatives::UniformOnly,
            QMode::None,
        ),
    ];
    let mut csv = String::from(
        "config,seed,recall10,recall50,recall100,head100,tail100,fresh100,intrusion10,intrusion100,loss,examples_per_s,loss_share\n",
    );
    let mut rows: Vec<(String, Vec<[f64; 8]>)> = vec![];
    for (name, bp, neg, q) in &configs {
        let mut runs = vec![];
        for seed in 1..=seeds {
            let mut cfg = base.clone();
            cfg.b_prime = *bp;
            cfg.negatives = *neg;
            cfg.q_mode = *q;
            cfg.seed = seed;
            cfg.quiet = true;
            cfg.metrics = Some(out.join(format!("run-{}-seed{seed}.csv", slug(name))));
            // One checkpoint directory per configuration and seed: each run
            // resumes its own (a shared one belongs to the first run only).
            cfg.checkpoint = base
                .checkpoint
                .as_ref()
                .map(|d| d.join(format!("{}-seed{seed}", slug(name))));
            let t = Instant::now();
            let (_, reps) = crate::train(&cfg, be)?;
            let r = reps.last().expect("epochs");
            let v = r.metrics.headline();
            println!(
                "{name:<34} seed {seed}: recall@10/50/100 {:.4} {:.4} {:.4}, tail intrusion@10 {:.3} ({:.0} s)",
                v[0],
                v[1],
                v[2],
                v[6],
                t.elapsed().as_secs_f64()
            );
            csv += &format!(
                "{},{seed},{},{},{},{},{},{},{},{},{},{},{}\n",
                name,
                v[0],
                v[1],
                v[2],
                v[3],
                v[4],
                v[5],
                v[6],
                v[7],
                r.loss,
                r.examples_per_s,
                r.loss_share
            );
            runs.push(v);
        }
        rows.push((name.clone(), runs));
    }
    let p = out.join("results.csv");
    std::fs::write(&p, csv).map_err(|e| Error::io(&p, e))?;
    // Mean ± 95% CI (Student t, n − 1 degrees of freedom).
    let t95 = |n: usize| match n {
        2 => 12.706,
        3 => 4.303,
        4 => 3.182,
        5 => 2.776,
        6 => 2.571,
        _ => 1.96,
    };
    let mut md = String::from(
        "| configuration | Recall@10 | Recall@50 | Recall@100 | head R@100 | tail R@100 | fresh R@100 | tail intrusion@10 | tail intrusion@100 |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, runs) in &rows {
        md += &format!("| {name} |");
        for c in 0..8 {
            let n = runs.len();
            let mean = runs.iter().map(|r| r[c]).sum::<f64>() / n as f64;
            let sd = (runs.iter().map(|r| (r[c] - mean).powi(2)).sum::<f64>()
                / (n.max(2) - 1) as f64)
                .sqrt();
            md += &format!(" {mean:.4} ± {:.4} |", t95(n) * sd / (n as f64).sqrt());
        }
        md += "\n";
    }
    let p = out.join("table.md");
    std::fs::write(&p, &md).map_err(|e| Error::io(&p, e))?;
    println!("\n{md}");
    Ok(())
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}
