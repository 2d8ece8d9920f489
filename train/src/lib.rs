//! # mixneg-train — a two-tower trainer on the mixneg kernels
//!
//! This file holds the configuration and the model-level evaluations; the
//! training loop is [`Trainer`].
//!
//! A minimal but real two-tower trainer, the kernels' first customer:
//! query and item towers ([`tower`]), MNS batching — B
//! positives from the training stream plus B′ items drawn uniformly from the
//! whole corpus —, the sampling probabilities of [`freq`], the fused loss
//! through any [`Backend`], Adagrad/Adam, full-corpus evaluation ([`eval`])
//! and a periodic check of the fused kernel against the reference on the
//! live batch.

pub mod checkpoint;
pub mod comparison;
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
pub mod trainer;

use data::Dataset;
pub use error::Error;
use freq::QMode;
use mixneg::{Backend, MnsOutput};
use tower::{Optimizer, Tower};
pub use trainer::Trainer;

/// Which negatives a batch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Negatives {
    /// In-batch positives plus B′ uniform corpus items (MNS; B′ = 0 is
    /// batch softmax).
    Mixed,
    /// Only the B′ uniform items: other rows' positives are removed (their
    /// log Q is set to +10⁴ and the diagonal left uncorrected).
    UniformOnly,
    /// In-batch positives plus the items of B′ interactions drawn from the
    /// training stream: every candidate drawn by item frequency, so log Q is
    /// the unigram estimate for every column (whatever `--q-mode` says).
    /// The control of MNS with as many candidates and no uniform draws.
    Stream,
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
    #[arg(long, default_value_t = 2)]
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

/// Train on a given dataset: [`Trainer::new`] then [`Trainer::run`].
pub fn train_on(
    cfg: &TrainConfig,
    backend: &dyn Backend,
    data: &Dataset,
) -> Result<Vec<EpochReport>, Error> {
    Trainer::new(cfg, backend, data)?.run()
}

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

/// The name of [`ceiling_metrics`] in every output: what it knows.
pub const YARDSTICK: &str = "true items, fitted users";

/// The yardstick [`YARDSTICK`] (synthetic data) — not a ceiling: no learner
/// knows the true item terms it uses. The planted model with what a
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
