//! # mixneg-train — a two-tower trainer on the mixneg kernels
//!
//! (One file holds the configuration and the training loop, `train_on`,
//! with the model-level evaluations; splitting the loop into a `Trainer` is
//! pending.)
//!
//! A minimal but real two-tower trainer, the kernels' first customer:
//! query and item towers ([`tower`]), MNS batching — B
//! positives from the training stream plus B′ items drawn uniformly from the
//! whole corpus —, the sampling probabilities of [`freq`], the fused loss
//! through any [`Backend`], Adagrad/Adam, full-corpus evaluation ([`eval`])
//! and a periodic check of the fused kernel against the reference on the
//! live batch.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod features;
pub mod freq;
pub mod io;
pub mod linalg;
pub mod recbole;
mod report;
pub mod rng;
pub mod synthetic;
pub mod tower;

use data::Dataset;
pub use error::Error;
use freq::{ExactCounts, FrequencyEstimator, LogCounts, QMode, StreamingEstimator};
use mixneg::{Backend, MnsInput, MnsOutput, ReferenceBackend};
use report::{csv_header, csv_line, parse_csv_line, write_csv};
use std::time::Instant;
use tower::{Optimizer, Tower};

/// Which negatives a batch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Negatives {
    /// In-batch positives plus B′ uniform corpus items (MNS; B′ = 0 is
    /// batch softmax).
    Mixed,
    /// Only the B′ uniform items: other rows' positives are removed (their
    /// log Q is set to +10⁴ and the diagonal left uncorrected).
    UniformOnly,
}

/// How the positive's own logit is corrected (with mixed negatives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PositiveCorrection {
    /// Subtract log Q from the positive too (Yi et al. 2019, TFRS).
    Yi,
    /// Leave the positive uncorrected (eq. 5 of the MNS paper).
    Eq5,
}

/// Which item features the item tower sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ItemFeatures {
    /// Every feature field.
    All,
    /// The id alone (an id-only embedding table: the production baseline of
    /// the MNS paper).
    Id,
}

/// Which frequency estimator feeds log Q.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Estimator {
    /// Yi et al.'s streaming, hashed estimator.
    Streaming,
    /// Exact counts of the batches seen so far (add-one smoothed).
    Exact,
    /// The exact counts of the whole training log, known in advance
    /// (add-one smoothed): no estimation error at all.
    Log,
}

/// Everything a training run needs (the flags of `mixneg train`).
#[derive(Debug, Clone, clap::Args)]
pub struct TrainConfig {
    /// Train on real logs (CSV/TSV of user, item and an optional timestamp, or MovieLens) instead of synthetic data.
    #[arg(long)]
    pub logs: Option<std::path::PathBuf>,
    /// The synthetic world.
    #[command(flatten)]
    pub synth: data::SynthConfig,
    /// How RecBole atomic files are read and split.
    #[command(flatten)]
    pub log_cfg: recbole::LogConfig,
    /// Which item features the item tower sees.
    #[arg(long, value_enum, default_value_t = ItemFeatures::All)]
    pub item_features: ItemFeatures,
    /// B: stream positives per batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// B′: items drawn uniformly from the corpus per batch.
    #[arg(long, default_value_t = 256)]
    pub b_prime: usize,
    /// Which negatives the loss sees.
    #[arg(long, value_enum, default_value_t = Negatives::Mixed)]
    pub negatives: Negatives,
    /// How log Q is computed.
    #[arg(long, value_enum, default_value_t = QMode::Mixture)]
    pub q_mode: QMode,
    /// The positive's correction with mixed negatives (uniform-only
    /// negatives always leave it uncorrected).
    #[arg(long, value_enum, default_value_t = PositiveCorrection::Yi)]
    pub positive_correction: PositiveCorrection,
    /// Frequency estimator for p̂.
    #[arg(long, value_enum, default_value_t = Estimator::Streaming)]
    pub estimator: Estimator,
    /// Learning rate α of the streaming estimator.
    #[arg(long, default_value_t = 0.01)]
    pub estimator_alpha: f64,
    /// Softmax temperature τ.
    #[arg(long, default_value_t = 0.05)]
    pub temperature: f32,
    /// Output embedding dimension of both towers.
    #[arg(long, default_value_t = 32)]
    pub dim: usize,
    /// Embedding-bag dimension.
    #[arg(long, default_value_t = 32)]
    pub emb: usize,
    /// Hidden layer width of the MLPs (0: none).
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Hash buckets per tower's embedding table.
    #[arg(long, default_value_t = 1 << 17)]
    pub buckets: usize,
    /// Do not L2-normalize the tower outputs.
    #[arg(long)]
    pub no_l2: bool,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = Optimizer::Adagrad)]
    pub optimizer: Optimizer,
    /// Learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// Passes over the training stream.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Seed of data, initialization and sampling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Recompute the batch's loss with the reference backend every N steps (0: never).
    #[arg(long, default_value_t = 200)]
    pub verify_every: usize,
    /// Largest accepted relative error of the fused kernel in that check.
    #[arg(long, default_value_t = 1e-3)]
    pub verify_tolerance: f64,
    /// Evaluate only after the last epoch (and the random model of epoch 0
    /// not at all): the experiment's runs.
    #[arg(long)]
    pub eval_final_only: bool,
    /// Per-epoch metrics as CSV to this file.
    #[arg(long)]
    pub metrics: Option<std::path::PathBuf>,
    /// No progress bar (e.g. in logs and experiments).
    #[arg(long)]
    pub quiet: bool,
    /// Keep a checkpoint in this directory (written atomically) and resume
    /// from it when it exists.
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: usize,
}

impl TrainConfig {
    /// A fingerprint of everything that determines the run's results, so
    /// that a checkpoint is never resumed by a different run.
    pub fn fingerprint(&self) -> String {
        let mut c = self.clone();
        c.metrics = None;
        c.quiet = false;
        c.checkpoint = None;
        c.checkpoint_every = 0;
        let text = format!("{c:?}");
        let h = text.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
        });
        format!("{h:016x}")
    }
}

/// One epoch's results.
#[derive(Debug, Clone)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Full-corpus evaluation.
    pub metrics: eval::Metrics,
    /// Examples per second of training (evaluation excluded).
    pub examples_per_s: f64,
    /// Share of the training step spent in the fused loss.
    pub loss_share: f64,
    /// Largest relative error seen by the kernel verification.
    pub max_verify_error: f64,
}

/// Train and evaluate; per-epoch reports (and a random model's metrics first, epoch 0).
pub fn train(
    cfg: &TrainConfig,
    backend: &dyn Backend,
) -> Result<(Dataset, Vec<EpochReport>), Error> {
    let data = match &cfg.logs {
        Some(p) => load_logs(p, cfg)?,
        None => {
            cfg.synth.check()?;
            data::synthetic(&cfg.synth, cfg.seed)
        }
    };
    let reports = train_on(cfg, backend, &data)?;
    Ok((data, reports))
}

/// Read the logs of `--logs`: RecBole atomic files when the path ends in
/// `.inter` ([`recbole::read`], with `cfg.log_cfg`), else the plain formats
/// of [`data::read_logs`].
pub fn load_logs(path: &std::path::Path, cfg: &TrainConfig) -> Result<Dataset, Error> {
    if path.extension().is_some_and(|e| e == "inter") {
        recbole::read(path, &cfg.log_cfg)
    } else {
        data::read_logs(path)
    }
}

/// Train on a given dataset.
pub fn train_on(
    cfg: &TrainConfig,
    backend: &dyn Backend,
    data: &Dataset,
) -> Result<Vec<EpochReport>, Error> {
    let id_only;
    let data = match cfg.item_features {
        ItemFeatures::All => data,
        ItemFeatures::Id => {
            // Every dataset puts an item's id first among its features.
            let mut d = data.clone();
            d.item_feats.iter_mut().for_each(|f| f.truncate(1));
            id_only = d;
            &id_only
        }
    };
    if cfg.batch == 0 || (cfg.negatives == Negatives::UniformOnly && cfg.b_prime == 0) {
        return Err("need B ≥ 1, and B′ ≥ 1 with uniform-only negatives".into());
    }
    let hidden: Vec<usize> = if cfg.hidden > 0 {
        vec![cfg.hidden]
    } else {
        vec![]
    };
    let l2 = !cfg.no_l2;
    let mut qt = Tower::new(cfg.buckets, cfg.emb, &hidden, cfg.dim, l2, cfg.seed ^ 0x51);
    let mut it = Tower::new(cfg.buckets, cfg.emb, &hidden, cfg.dim, l2, cfg.seed ^ 0xA7);
    let mut est: Box<dyn FrequencyEstimator> = match cfg.estimator {
        Estimator::Streaming => Box::new(StreamingEstimator::new(
            1 << 20,
            2,
            cfg.estimator_alpha,
            1e4,
        )),
        Estimator::Exact => Box::new(ExactCounts::new(data.n_items)),
        Estimator::Log => Box::new(LogCounts::new(data.train.iter().map(|p| p.1), data.n_items)),
    };
    let cls = eval::classes(data);
    let mut rng = data::Rng::new(cfg.seed ^ 0xBA7C);
    let mut reports = vec![];
    let steps_per_epoch = data.train.len() / cfg.batch;
    if steps_per_epoch == 0 {
        return Err(format!(
            "the training stream has {} interactions, fewer than one batch of B = {}: \
             no step could run (lower --batch to at most {})",
            data.train.len(),
            cfg.batch,
            data.train.len()
        )
        .into());
    }
    let mut step = 0u64;
    let mut csv = match &cfg.metrics {
        Some(p) => {
            let mut f = std::fs::File::create(p).map_err(|e| Error::io(p, e))?;
            use std::io::Write;
            writeln!(f, "{}", csv_header()).map_err(|e| e.to_string())?;
            Some(f)
        }
        None => None,
    };
    let fingerprint = cfg.fingerprint();
    let resume = match &cfg.checkpoint {
        Some(dir) => checkpoint::load(dir, &fingerprint)?,
        None => None,
    };
    if let Some(st) = &resume {
        // Check everything before changing anything: a checkpoint is loaded
        // whole or not at all.
        let mut targets: Vec<&mut Vec<f32>> = qt.state_mut();
        targets.extend(it.state_mut());
        let fits = targets.len() == st.tensors.len()
            && targets
                .iter()
                .zip(&st.tensors)
                .all(|(a, b)| a.len() == b.len());
        if !fits {
            return Err("checkpoint refused: its tensors do not fit this model".into());
        }
        let restored: Vec<EpochReport> = st
            .reports
            .iter()
            .map(|l| parse_csv_line(l))
            .collect::<Result<_, _>>()?;
        est.set_state(st.estimator.clone())?;
        for (a, b) in targets.into_iter().zip(&st.tensors) {
            a.copy_from_slice(b);
        }
        reports = restored;
        step = st.step;
        if !cfg.quiet {
            eprintln!(
                "resuming from checkpoint: epoch {}, step {}",
                st.epoch, st.step
            );
        }
    }
    if resume.is_none() && !cfg.eval_final_only {
        // The untrained towers, a random model: epoch 0.
        reports.push(EpochReport {
            epoch: 0,
            loss: f64::NAN,
            metrics: evaluate(data, &cls, &qt, &it),
            examples_per_s: 0.0,
            loss_share: 0.0,
            max_verify_error: 0.0,
        });
    }
    for r in &reports {
        write_csv(&mut csv, r)?;
    }
    let start_epoch = resume.as_ref().map_or(1, |st| st.epoch);
    for epoch in start_epoch..=cfg.epochs {
        let resuming = resume.as_ref().filter(|st| st.epoch == epoch);
        if let Some(st) = resuming {
            rng = data::Rng::from_state(st.epoch_rng);
        }
        let epoch_rng = rng.state();
        let mut order: Vec<usize> = (0..data.train.len()).collect();
        rng.shuffle(&mut order);
        if let Some(st) = resuming {
            rng = data::Rng::from_state(st.rng);
        }
        let bar = if cfg.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            let b = indicatif::ProgressBar::new(steps_per_epoch as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg}",
                )
                .map_err(|e| e.to_string())?
                .progress_chars("=> "),
            );
            b.set_prefix(format!("{epoch}/{}", cfg.epochs));
            b
        };
        let (mut loss_sum, mut t_loss, mut max_err) = (0.0f64, 0.0f64, 0.0f64);
        let first = resuming.map_or(0, |st| st.step_in_epoch);
        if let Some(st) = resuming {
            (loss_sum, max_err) = (st.loss_sum, st.max_err);
            bar.set_position(first as u64);
        }
        let t_epoch = Instant::now();
        let mut out = MnsOutput::filled(0, 0, 0, 0.0);
        for s in first..steps_per_epoch {
            step += 1;
            let idx = &order[s * cfg.batch..(s + 1) * cfg.batch];
            let users: Vec<u32> = idx.iter().map(|&k| data.train[k].0).collect();
            let mut cands: Vec<u32> = idx.iter().map(|&k| data.train[k].1).collect();
            cands.extend((0..cfg.b_prime).map(|_| rng.below(data.n_items) as u32));
            let b = cfg.batch;
            let (log_q, correct_positive) = match cfg.negatives {
                Negatives::Mixed => (
                    freq::log_q(cfg.q_mode, est.as_ref(), &cands, b, data.n_items),
                    cfg.positive_correction == PositiveCorrection::Yi,
                ),
                // The diagonal must stay uncorrected: its +10⁴ removes the
                // other rows' positives (freq::uniform_only_log_q).
                Negatives::UniformOnly => (
                    freq::uniform_only_log_q(b, cfg.b_prime, data.n_items),
                    false,
                ),
            };
            est.observe(&cands[..b]);
            let uf: Vec<&[u64]> = users
                .iter()
                .map(|&u| data.user_feats[u as usize].as_slice())
                .collect();
            let vf: Vec<&[u64]> = cands
                .iter()
                .map(|&i| data.item_feats[i as usize].as_slice())
                .collect();
            let (u, uc) = qt.forward(&uf);
            let (v, vc) = it.forward(&vf);
            let ids: Vec<i64> = cands.iter().map(|&i| i as i64).collect();
            let input = MnsInput::new(&u, &v, &log_q, cfg.dim)
                .temperature(cfg.temperature)
                .correct_positive(correct_positive)
                .ids(&ids);
            if out.lse.len() != b || out.d_v.len() != cands.len() * cfg.dim {
                out = MnsOutput::filled(b, cands.len(), cfg.dim, 0.0);
            }
            let t0 = Instant::now();
            backend
                .mns_loss_into(&input, &mut out)
                .map_err(|e| format!("step {step}: {e}"))?;
            t_loss += t0.elapsed().as_secs_f64();
            if cfg.verify_every > 0 && step.is_multiple_of(cfg.verify_every as u64) {
                let want = ReferenceBackend
                    .mns_loss(&input)
                    .map_err(|e| e.to_string())?;
                let err = max_rel_error(&out, &want);
                max_err = max_err.max(err);
                if err > cfg.verify_tolerance {
                    return Err(format!(
                        "step {step}: {} differs from the reference by {err:.2e} (> {:.0e})",
                        backend.name(),
                        cfg.verify_tolerance
                    )
                    .into());
                }
            }
            loss_sum += out.loss as f64;
            qt.backward_update(uc, &out.d_u, cfg.optimizer, cfg.lr, step);
            it.backward_update(vc, &out.d_v, cfg.optimizer, cfg.lr, step);
            if s % 20 == 0 {
                let rate = ((s + 1) * b) as f64 / t_epoch.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4}  {rate:.0} examples/s",
                    loss_sum / (s + 1) as f64
                ));
            }
            bar.inc(1);
            if let Some(dir) = &cfg.checkpoint
                && cfg.checkpoint_every > 0
                && step.is_multiple_of(cfg.checkpoint_every as u64)
                && s + 1 < steps_per_epoch
            {
                let mut tensors: Vec<Vec<f32>> =
                    qt.state_mut().into_iter().map(|t| t.clone()).collect();
                tensors.extend(it.state_mut().into_iter().map(|t| t.clone()));
                let st = checkpoint::State {
                    step,
                    epoch,
                    step_in_epoch: s + 1,
                    rng: rng.state(),
                    epoch_rng,
                    loss_sum,
                    max_err,
                    reports: reports.iter().map(csv_line).collect(),
                    tensors,
                    estimator: est.state(),
                };
                checkpoint::save(dir, &fingerprint, &st)?;
            }
        }
        bar.finish_and_clear();
        let secs = t_epoch.elapsed().as_secs_f64();
        let rep = EpochReport {
            epoch,
            loss: loss_sum / steps_per_epoch.max(1) as f64,
            metrics: if cfg.eval_final_only && epoch < cfg.epochs {
                eval::Metrics::default()
            } else {
                evaluate(data, &cls, &qt, &it)
            },
            examples_per_s: ((steps_per_epoch - first) * cfg.batch) as f64 / secs,
            loss_share: t_loss / secs,
            max_verify_error: max_err,
        };
        write_csv(&mut csv, &rep)?;
        reports.push(rep);
    }
    Ok(reports)
}

/// Largest relative L2 error over loss, d_u, d_v (f32 result vs f64 reference).
fn max_rel_error(got: &MnsOutput, want: &MnsOutput) -> f64 {
    let rel = mixneg::reference::rel_l2_error::<f32>;
    let l = ((got.loss - want.loss) as f64).abs() / (want.loss as f64).abs().max(1e-12);
    l.max(rel(&got.d_u, &want.d_u))
        .max(rel(&got.d_v, &want.d_v))
}

/// Full-corpus metrics of the current towers.
pub fn evaluate(data: &Dataset, cls: &[eval::Class], qt: &Tower, it: &Tower) -> eval::Metrics {
    let d = it.out_dim;
    let mut items = Vec::with_capacity(data.n_items * d);
    for blk in data.item_feats.chunks(4096) {
        let f: Vec<&[u64]> = blk.iter().map(|x| x.as_slice()).collect();
        items.extend(it.forward(&f).0);
    }
    eval::evaluate(data, cls, |users, s| {
        let f: Vec<&[u64]> = users
            .iter()
            .map(|&u| data.user_feats[u as usize].as_slice())
            .collect();
        let (ue, _) = qt.forward(&f);
        eval::dot_scores(&ue, &items, users.len(), data.n_items, d, s)
    })
}

/// The planted model's own metrics (synthetic data): its test law with
/// everything known, the fresh items' exposure and every item's quality
/// included — an upper bound no learner reaches.
pub fn oracle_metrics(data: &Dataset) -> Option<eval::Metrics> {
    let o = data.oracle.as_ref()?;
    let cls = eval::classes(data);
    Some(eval::evaluate(data, &cls, |users, s| {
        let ni = data.n_items;
        s.resize(users.len() * ni, 0.0);
        use rayon::prelude::*;
        s.par_chunks_mut(ni).zip(users).for_each(|(row, &u)| {
            row.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = o.score(u as usize, i));
        });
    }))
}

/// The popularity list: every user ranks the items by their training count
/// (ties: lower index first), their own training items excluded.
pub fn popularity_metrics(data: &Dataset) -> eval::Metrics {
    let mut count = vec![0.0f32; data.n_items];
    data.train
        .iter()
        .for_each(|&(_, i)| count[i as usize] += 1.0);
    let cls = eval::classes(data);
    eval::evaluate(data, &cls, |users, s| {
        s.clear();
        s.extend(
            count
                .iter()
                .copied()
                .cycle()
                .take(users.len() * data.n_items),
        );
    })
}

/// The attainable ceiling (synthetic data): the planted model with what a
/// learner can know — the item factors and the item term of every
/// non-fresh item ([`data::Oracle::known_bias`]: no fresh item's exposure
/// or quality), and each user's factor estimated from their training items
/// as â_u = c·mean(b_j), the one scale c chosen from a grid by the
/// likelihood of the second half of up to 512 users' training items given
/// â from their first half (under the training law). Scores:
/// ⟨â_u, b_i⟩/τ₀ + known_bias_i.
pub fn ceiling_metrics(data: &Dataset) -> Option<eval::Metrics> {
    let o = data.oracle.as_ref()?;
    let (d, ni) = (o.dim, data.n_items);
    let mut train_of: Vec<Vec<u32>> = vec![vec![]; data.n_users];
    data.train
        .iter()
        .for_each(|&(u, i)| train_of[u as usize].push(i));
    let mean_of = |items: &[u32]| -> Vec<f32> {
        let mut a = vec![0.0f32; d];
        for &j in items {
            let b = &o.item_factors[j as usize * d..(j as usize + 1) * d];
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        let inv = 1.0 / items.len().max(1) as f32;
        a.iter_mut().for_each(|x| *x *= inv / o.tau0);
        a
    };
    // Fit c: â from the first half, likelihood of the second half.
    let fit: Vec<u32> = (0..data.n_users as u32)
        .filter(|&u| train_of[u as usize].len() >= 2)
        .take(512)
        .collect();
    let a_half: Vec<f32> = fit
        .iter()
        .flat_map(|&u| {
            let t = &train_of[u as usize];
            mean_of(&t[..t.len() / 2])
        })
        .collect();
    let mut dots = vec![0.0f32; fit.len() * ni];
    linalg::matmul(fit.len(), ni, d, &a_half, &o.item_factors, true, &mut dots);
    let grid = [0.25f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0];
    let fresh = &data.fresh;
    let loglik = |c: f32| -> f64 {
        use rayon::prelude::*;
        dots.par_chunks(ni)
            .zip(&fit)
            .map(|(row, &u)| {
                let z: Vec<f32> = row
                    .iter()
                    .zip(&o.known_bias)
                    .map(|(x, b)| c * x + b)
                    .collect();
                let m = z
                    .iter()
                    .zip(fresh)
                    .filter(|(_, f)| !**f)
                    .map(|(x, _)| *x)
                    .fold(f32::NEG_INFINITY, f32::max);
                let lse = m as f64
                    + z.iter()
                        .zip(fresh)
                        .filter(|(_, f)| !**f)
                        .map(|(x, _)| ((x - m) as f64).exp())
                        .sum::<f64>()
                        .ln();
                let t = &train_of[u as usize];
                t[t.len() / 2..]
                    .iter()
                    .map(|&j| z[j as usize] as f64 - lse)
                    .sum::<f64>()
            })
            .sum()
    };
    let c = grid
        .iter()
        .copied()
        .map(|c| (c, loglik(c)))
        .fold(
            (1.0f32, f64::NEG_INFINITY),
            |a, b| if b.1 > a.1 { b } else { a },
        )
        .0;
    let cls = eval::classes(data);
    Some(eval::evaluate(data, &cls, |users, s| {
        let a: Vec<f32> = users
            .iter()
            .flat_map(|&u| mean_of(&train_of[u as usize]))
            .map(|x| c * x)
            .collect();
        s.resize(users.len() * ni, 0.0);
        // The product overwrites every element.
        linalg::matmul(users.len(), ni, d, &a, &o.item_factors, true, s);
        use rayon::prelude::*;
        s.par_chunks_mut(ni)
            .for_each(|row| row.iter_mut().zip(&o.known_bias).for_each(|(x, b)| *x += b));
    }))
}
