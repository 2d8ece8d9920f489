//! `mixneg experiment`: the MNS experiment of EXPERIMENTS.md on one world
//! (a synthetic world, or logs) over several seeds, at an equal budget (the
//! same epochs over the same training stream) and with exact Q
//! (`--estimator log`, so that the frequency estimator is not a confound).
//!
//! Configurations ([`configurations`]): batch softmax without correction
//! and with unigram logQ; MNS at B′/B ∈ {¼, ½, 1, 2, 4, 8} at fixed B, and
//! at fixed B + B′ = 2B (the paper held the effective sample count fixed);
//! uniform negatives only (B′ = B); and the paper's production baseline, an
//! id-only item tower trained with sampled softmax over the corpus (uniform
//! negatives, B′ = B, logQ-corrected). Each seed draws its own world (for
//! synthetic data) and its own initialization and sampling; every
//! configuration of a seed sees the same world, so differences between
//! configurations are paired by seed. Beside the models: the popularity
//! list, the "true items, fitted users" yardstick and the planted model of
//! each seed's world.

use crate::data::Dataset;
use crate::freq::QMode;
use crate::{Error, Estimator, ItemFeatures, Negatives, TrainConfig, eval};
use mixneg::Backend;
use std::path::Path;
use std::time::Instant;

/// One configuration of the experiment.
#[derive(Debug, Clone)]
pub struct Configuration {
    /// Its name in tables.
    pub name: String,
    /// Family: `batch`, `mns-fixed-b`, `mns-fixed-total`, `uniform` or
    /// `production`.
    pub family: &'static str,
    /// B′/B.
    pub ratio: f64,
    /// B.
    pub batch: usize,
    /// B′.
    pub b_prime: usize,
    /// Negatives.
    pub negatives: Negatives,
    /// log Q.
    pub q_mode: QMode,
    /// Item features.
    pub item_features: ItemFeatures,
}

/// The name of the configuration every other one is compared with:
/// corrected batch softmax.
pub const REFERENCE: &str = "batch softmax, logQ";

/// The configurations for stream batch `b`.
pub fn configurations(b: usize) -> Vec<Configuration> {
    let c = |name: String, family, ratio, batch, b_prime, negatives, q_mode, item_features| {
        Configuration {
            name,
            family,
            ratio,
            batch,
            b_prime,
            negatives,
            q_mode,
            item_features,
        }
    };
    let (mx, all) = (Negatives::Mixed, ItemFeatures::All);
    let mut v = vec![
        c(
            "batch softmax, no correction".into(),
            "batch",
            0.0,
            b,
            0,
            mx,
            QMode::None,
            all,
        ),
        c(
            REFERENCE.into(),
            "batch",
            0.0,
            b,
            0,
            mx,
            QMode::Unigram,
            all,
        ),
    ];
    let ratios = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0];
    for r in ratios {
        let bp = (r * b as f64).round() as usize;
        v.push(c(
            format!("MNS B'/B = {r}"),
            "mns-fixed-b",
            r,
            b,
            bp,
            mx,
            QMode::Mixture,
            all,
        ));
    }
    for r in ratios.into_iter().filter(|&r| r != 1.0) {
        // B + B′ = 2b (r = 1 is the fixed-B run above).
        let bb = ((2 * b) as f64 / (1.0 + r)).round().max(1.0) as usize;
        v.push(c(
            format!("MNS B'/B = {r}, B+B' = {}", 2 * b),
            "mns-fixed-total",
            r,
            bb,
            2 * b - bb,
            mx,
            QMode::Mixture,
            all,
        ));
    }
    // Two controls of MNS B'/B = 1: as many item-tower rows per step
    // without uniform draws (batch softmax at B + B' = 2B), and as many
    // candidates per row with the extra B' negatives drawn from the
    // training stream instead of the corpus (unigram, with its log Q).
    v.push(c(
        format!("control: batch softmax, logQ, B = {}", 2 * b),
        "control-rows",
        1.0,
        2 * b,
        0,
        mx,
        QMode::Unigram,
        all,
    ));
    v.push(c(
        "control: stream negatives B'/B = 1".into(),
        "control-stream",
        1.0,
        b,
        b,
        Negatives::Stream,
        QMode::Unigram,
        all,
    ));
    let un = Negatives::UniformOnly;
    v.push(c(
        "uniform negatives only".into(),
        "uniform",
        1.0,
        b,
        b,
        un,
        QMode::None,
        all,
    ));
    v.push(c(
        "production: id-only items, sampled softmax".into(),
        "production",
        1.0,
        b,
        b,
        un,
        QMode::None,
        ItemFeatures::Id,
    ));
    v
}

/// Runs every configuration whose name is one of `only` (all when
/// empty) over seeds 1..=`seeds` on the world of `base` (or its logs) with
/// the fused loss on `be`; writes `results.csv` (a row per configuration
/// and seed), `baselines.csv` (popularity, ceiling and planted model per
/// seed), one metrics CSV per run and `table.md` (means with 95% intervals,
/// and paired differences against [`REFERENCE`]) to `out`, and prints the
/// table.
pub fn run(
    base: &TrainConfig,
    seeds: u64,
    only: &[String],
    out: &Path,
    be: &dyn Backend,
) -> Result<(), Error> {
    if seeds == 0 {
        return Err("--seeds must be at least 1".into());
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let configs: Vec<Configuration> = configurations(base.batch)
        .into_iter()
        .filter(|c| only.is_empty() || only.contains(&c.name))
        .collect();
    if configs.is_empty() {
        return Err(format!("--only {only:?} matches no configuration").into());
    }
    let head = eval::COLUMNS.join(",");
    let mut csv = format!("config,family,ratio,batch,b_prime,seed,{head},loss,seconds\n");
    let mut bcsv = format!("baseline,seed,{head}\n");
    let logs = match &base.logs {
        Some(p) => Some(crate::load_logs(p, base)?),
        None => {
            base.synth.check()?;
            None
        }
    };
    // results[config][seed], baselines[name][seed].
    let mut results: Vec<Vec<[f64; 14]>> = vec![vec![]; configs.len()];
    let mut baselines: Vec<(String, Vec<[f64; 14]>)> = vec![];
    // Test interactions per seed: all, and in the head, tail and fresh slices.
    let mut counts: Vec<[usize; 4]> = vec![];
    for seed in 1..=seeds {
        let synth;
        let data: &Dataset = match &logs {
            Some(d) => d,
            None => {
                synth = crate::data::synthetic(&base.synth, seed);
                &synth
            }
        };
        let mut add = |name: &str, m: Option<eval::Metrics>| {
            if let Some(m) = m {
                let v = m.columns();
                bcsv += &format!("\"{name}\",{seed},{}\n", join(&v));
                match baselines.iter_mut().find(|b| b.0 == name) {
                    Some(b) => b.1.push(v),
                    None => baselines.push((name.to_string(), vec![v])),
                }
                println!("seed {seed} {name:<34} {}", m.summary());
            }
        };
        let popularity = crate::popularity_metrics(data);
        let c = popularity.count_by_class;
        counts.push([data.test.len(), c[0], c[1], c[2]]);
        add("popularity list", Some(popularity));
        add(crate::YARDSTICK, crate::ceiling_metrics(data));
        add("planted model (all known)", crate::oracle_metrics(data));
        for (k, c) in configs.iter().enumerate() {
            let mut cfg = base.clone();
            cfg.batch = c.batch;
            cfg.b_prime = c.b_prime;
            cfg.negatives = c.negatives;
            cfg.q_mode = c.q_mode;
            cfg.item_features = c.item_features;
            cfg.estimator = Estimator::Log;
            cfg.seed = seed;
            cfg.quiet = true;
            cfg.eval_final_only = true;
            cfg.metrics = Some(out.join(format!("run-{}-seed{seed}.csv", slug(&c.name))));
            cfg.checkpoint = base
                .checkpoint
                .as_ref()
                .map(|d| d.join(format!("{}-seed{seed}", slug(&c.name))));
            let t = Instant::now();
            let reps = crate::train_on(&cfg, be, data)?;
            let r = reps.last().expect("epochs");
            let secs = t.elapsed().as_secs_f64();
            let v = r.metrics.columns();
            println!(
                "seed {seed} {:<34} {} ({secs:.0} s)",
                c.name,
                r.metrics.summary()
            );
            // Names hold commas: quoted (RFC 4180).
            csv += &format!(
                "\"{}\",{},{},{},{},{seed},{},{},{secs}\n",
                c.name,
                c.family,
                c.ratio,
                c.batch,
                c.b_prime,
                join(&v),
                r.loss
            );
            results[k].push(v);
        }
    }
    for (name, text) in [("results.csv", &csv), ("baselines.csv", &bcsv)] {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
    }
    let md = table(&configs, &results, &baselines, &counts);
    let p = out.join("table.md");
    std::fs::write(&p, &md).map_err(|e| Error::io(&p, e))?;
    println!("\n{md}");
    Ok(())
}

fn join(v: &[f64]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom.
pub fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    if df == 0 {
        f64::NAN
    } else {
        T.get(df - 1).copied().unwrap_or(1.96)
    }
}

/// Mean and half-width of the 95% interval (Student t) of `x`.
pub fn mean_ci(x: &[f64]) -> (f64, f64) {
    let n = x.len();
    let mean = x.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return (mean, f64::NAN);
    }
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, t95(n - 1) * (var / n as f64).sqrt())
}

/// The columns of the tables: (index in [`eval::COLUMNS`], title).
const SHOWN: [(usize, &str); 8] = [
    (2, "Recall@100"),
    (1, "Recall@50"),
    (3, "NDCG@10"),
    (6, "true mass@100"),
    (9, "fresh R@100"),
    (11, "low-q intrusion@100"),
    (13, "unlogged intrusion@100"),
    (0, "Recall@10"),
];

fn table(
    configs: &[Configuration],
    results: &[Vec<[f64; 14]>],
    baselines: &[(String, Vec<[f64; 14]>)],
    counts: &[[usize; 4]],
) -> String {
    let n = results.first().map_or(0, |r| r.len());
    let per_seed = |i: usize| {
        counts
            .iter()
            .map(|c| c[i].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut md = format!(
        "Means over {n} seeds ± the half-width of their 95% interval. Test interactions per \
         seed: {} (head {}; tail {}; fresh {}).\n\n| configuration |",
        per_seed(0),
        per_seed(1),
        per_seed(2),
        per_seed(3)
    );
    let cols: Vec<&str> = SHOWN.iter().map(|s| s.1).collect();
    md += &format!(
        " {} |\n|---|{}\n",
        cols.join(" | "),
        "---|".repeat(SHOWN.len())
    );
    let row = |name: &str, runs: &[[f64; 14]]| {
        let mut s = format!("| {name} |");
        for &(c, _) in &SHOWN {
            let x: Vec<f64> = runs.iter().map(|r| r[c]).collect();
            let (m, h) = mean_ci(&x);
            if m.is_nan() {
                s += " — |";
            } else {
                s += &format!(" {m:.4} ± {h:.4} |");
            }
        }
        s + "\n"
    };
    for (name, runs) in baselines {
        md += &row(&format!("*{name}*"), runs);
    }
    for (c, runs) in configs.iter().zip(results) {
        md += &row(&c.name, runs);
    }
    if let Some(r) = configs.iter().position(|c| c.name == REFERENCE) {
        md += &format!(
            "\nPaired differences against *{REFERENCE}* (same seed, same world): mean ± 95% interval; \
             **bold** where the interval excludes 0.\n\n| configuration |"
        );
        md += &format!(
            " Δ {} |\n|---|{}\n",
            cols.join(" | Δ "),
            "---|".repeat(SHOWN.len())
        );
        for (c, runs) in configs.iter().zip(results) {
            if c.name == REFERENCE {
                continue;
            }
            md += &format!("| {} |", c.name);
            for &(col, _) in &SHOWN {
                let d: Vec<f64> = runs
                    .iter()
                    .zip(&results[r])
                    .map(|(a, b)| a[col] - b[col])
                    .collect();
                let (m, h) = mean_ci(&d);
                if m.is_nan() {
                    md += " — |";
                } else if h < m.abs() {
                    md += &format!(" **{m:+.4} ± {h:.4}** |");
                } else {
                    md += &format!(" {m:+.4} ± {h:.4} |");
                }
            }
            md += "\n";
        }
        md += &headline(configs, results, r);
    }
    md
}

/// The metrics of the headline claims: (index in [`eval::COLUMNS`], title).
const HEADLINE: [(usize, &str); 3] = [
    (11, "low-q intrusion@100"),
    (2, "Recall@100"),
    (9, "fresh R@100"),
];

/// The headline claims as one family of tests: for every MNS run at fixed
/// B, every control, and MNS at fixed B pooled over its ratios (per seed,
/// the mean of its paired differences), the paired difference against the
/// reference on each [`HEADLINE`] metric, with its two-sided paired t-test
/// p-value and Holm's adjustment over the whole family (α = 0.05).
fn headline(configs: &[Configuration], results: &[Vec<[f64; 14]>], r: usize) -> String {
    let mut claims: Vec<(String, &str, Vec<f64>)> = vec![];
    for &(col, title) in &HEADLINE {
        let delta = |k: usize| -> Vec<f64> {
            results[k]
                .iter()
                .zip(&results[r])
                .map(|(a, b)| a[col] - b[col])
                .collect()
        };
        let mut fixed: Vec<Vec<f64>> = vec![];
        for (k, c) in configs.iter().enumerate() {
            if c.family == "mns-fixed-b" || c.family.starts_with("control") {
                let d = delta(k);
                if c.family == "mns-fixed-b" {
                    fixed.push(d.clone());
                }
                claims.push((c.name.clone(), title, d));
            }
        }
        if fixed.len() > 1 {
            let pooled = (0..results[r].len())
                .map(|s| fixed.iter().map(|d| d[s]).sum::<f64>() / fixed.len() as f64)
                .collect();
            claims.push(("MNS at fixed B, pooled over B'/B".into(), title, pooled));
        }
    }
    if claims.is_empty() || results[r].len() < 2 {
        return String::new();
    }
    let p: Vec<f64> = claims.iter().map(|c| paired_t_p(&c.2)).collect();
    let adj = holm(&p);
    let mut md = format!(
        "\nHeadline claims as one family of {} tests: paired difference against *{REFERENCE}*, \
         two-sided paired t-test, p adjusted by Holm's method; **bold** where the adjusted p < 0.05.\n\n\
         | claim | metric | Δ mean ± 95% | p | Holm p |\n|---|---|---|---|---|\n",
        claims.len()
    );
    for ((name, title, d), (p, a)) in claims.iter().zip(p.iter().zip(&adj)) {
        let (m, h) = mean_ci(d);
        let (o, c) = if *a < 0.05 { ("**", "**") } else { ("", "") };
        md += &format!("| {name} | {title} | {o}{m:+.4} ± {h:.4}{c} | {p:.2e} | {o}{a:.2e}{c} |\n");
    }
    md
}

/// Two-sided p-value of the paired t-test of mean(d) = 0 (1 where every
/// difference is 0; NaN with fewer than two).
pub fn paired_t_p(d: &[f64]) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let n = d.len();
    if n < 2 {
        return f64::NAN;
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    if var == 0.0 {
        return if mean == 0.0 { 1.0 } else { 0.0 };
    }
    let t = mean / (var / n as f64).sqrt();
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("n ≥ 2");
    2.0 * (1.0 - dist.cdf(t.abs()))
}

/// Holm's step-down adjustment of p-values (same order as given):
/// sorted ascending, p_(i)·(m − i) made monotone, capped at 1.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adj = vec![0.0; m];
    let mut running = 0.0f64;
    for (i, &k) in order.iter().enumerate() {
        running = running.max((p[k] * (m - i) as f64).min(1.0));
        adj[k] = running;
    }
    adj
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Holm on a textbook case, and the paired t-test's p against known
    /// values of Student's t.
    #[test]
    fn holm_and_paired_t() {
        let a = holm(&[0.01, 0.04, 0.03, 0.005]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (x, w) in a.iter().zip(want) {
            assert!((x - w).abs() < 1e-12, "{a:?}");
        }
        // d with mean 1, sd 1, n = 5: t = √5 = 2.236, df 4: p = 0.0890.
        let d = [0.0, 0.0, 1.0, 2.0, 2.0];
        let p = paired_t_p(&d);
        assert!((p - 0.0890).abs() < 5e-4, "{p}");
        assert_eq!(paired_t_p(&[0.0, 0.0]), 1.0);
    }
}
