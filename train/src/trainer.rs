//! One training run, step by step: [`Trainer::new`] builds the towers and
//! the frequency estimator (or restores them from a checkpoint),
//! [`Trainer::run`] trains epoch by epoch, each epoch batch by batch
//! (`step`), with periodic checkpoints and an evaluation after each epoch.

use crate::checkpoint;
use crate::data::{self, Dataset};
use crate::eval;
use crate::freq::{self, ExactCounts, FrequencyEstimator, LogCounts, StreamingEstimator};
use crate::report::{csv_header, csv_line, parse_csv_line, write_csv};
use crate::tower::Tower;
use crate::{
    EpochReport, Error, Estimator, ItemFeatures, Negatives, PositiveCorrection, TrainConfig,
    evaluate, max_rel_error,
};
use mixneg::{Backend, MnsInput, MnsOutput, ReferenceBackend};
use std::borrow::Cow;
use std::time::Instant;

/// A training run in progress.
pub struct Trainer<'a> {
    cfg: &'a TrainConfig,
    backend: &'a dyn Backend,
    /// The dataset (an id-only copy with `--item-features id`).
    data: Cow<'a, Dataset>,
    qt: Tower,
    it: Tower,
    est: Box<dyn FrequencyEstimator>,
    cls: Vec<eval::Class>,
    rng: data::Rng,
    reports: Vec<EpochReport>,
    /// Steps taken over the whole run.
    step: u64,
    steps_per_epoch: usize,
    csv: Option<std::fs::File>,
    fingerprint: String,
    /// The checkpoint this run resumed from, if any.
    resume: Option<checkpoint::State>,
    /// The fused loss's outputs, reused across steps.
    out: MnsOutput,
}

/// Where an epoch stands (what a checkpoint saves of it).
struct EpochState {
    epoch: usize,
    /// The generator's state when the epoch's order was drawn.
    epoch_rng: u64,
    loss_sum: f64,
    max_err: f64,
    /// Seconds spent in the fused loss.
    t_loss: f64,
}

impl<'a> Trainer<'a> {
    /// A new run of `cfg` on `data` through `backend`, or the run its
    /// checkpoint holds (loaded whole or not at all).
    pub fn new(
        cfg: &'a TrainConfig,
        backend: &'a dyn Backend,
        data: &'a Dataset,
    ) -> Result<Self, Error> {
        let data = match cfg.item_features {
            ItemFeatures::All => Cow::Borrowed(data),
            ItemFeatures::Id => {
                // Every dataset puts an item's id first among its features.
                let mut d = data.clone();
                d.item_feats.iter_mut().for_each(|f| f.truncate(1));
                Cow::Owned(d)
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
            Estimator::Log => {
                Box::new(LogCounts::new(data.train.iter().map(|p| p.1), data.n_items))
            }
        };
        let cls = eval::classes(&data);
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
        let (mut reports, mut step) = (vec![], 0u64);
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
                metrics: evaluate(&data, &cls, &qt, &it),
                examples_per_s: 0.0,
                loss_share: 0.0,
                max_verify_error: 0.0,
            });
        }
        for r in &reports {
            write_csv(&mut csv, r)?;
        }
        Ok(Self {
            cfg,
            backend,
            data,
            qt,
            it,
            est,
            cls,
            rng: data::Rng::new(cfg.seed ^ 0xBA7C),
            reports,
            step,
            steps_per_epoch,
            csv,
            fingerprint,
            resume,
            out: MnsOutput::filled(0, 0, 0, 0.0),
        })
    }

    /// Every remaining epoch; the reports of the whole run (epoch 0, the
    /// untrained towers, first unless `eval_final_only`).
    pub fn run(mut self) -> Result<Vec<EpochReport>, Error> {
        let start_epoch = self.resume.as_ref().map_or(1, |st| st.epoch);
        for epoch in start_epoch..=self.cfg.epochs {
            let rep = self.epoch(epoch)?;
            write_csv(&mut self.csv, &rep)?;
            self.reports.push(rep);
        }
        Ok(self.reports)
    }

    /// One epoch: the stream shuffled (or the checkpoint's order and
    /// position restored), its batches, then the evaluation.
    fn epoch(&mut self, epoch: usize) -> Result<EpochReport, Error> {
        let (cfg, spe) = (self.cfg, self.steps_per_epoch);
        let resuming = self.resume.take().filter(|st| st.epoch == epoch);
        if let Some(st) = &resuming {
            self.rng = data::Rng::from_state(st.epoch_rng);
        }
        let mut ep = EpochState {
            epoch,
            epoch_rng: self.rng.state(),
            loss_sum: 0.0,
            max_err: 0.0,
            t_loss: 0.0,
        };
        let mut order: Vec<usize> = (0..self.data.train.len()).collect();
        self.rng.shuffle(&mut order);
        if let Some(st) = &resuming {
            self.rng = data::Rng::from_state(st.rng);
        }
        let bar = progress_bar(cfg, epoch, spe)?;
        let first = resuming.as_ref().map_or(0, |st| st.step_in_epoch);
        if let Some(st) = &resuming {
            (ep.loss_sum, ep.max_err) = (st.loss_sum, st.max_err);
            bar.set_position(first as u64);
        }
        let t_epoch = Instant::now();
        for s in first..spe {
            let loss = self.step(&order[s * cfg.batch..(s + 1) * cfg.batch], &mut ep)?;
            ep.loss_sum += loss as f64;
            if s % 20 == 0 {
                let rate = ((s + 1) * cfg.batch) as f64 / t_epoch.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4}  {rate:.0} examples/s",
                    ep.loss_sum / (s + 1) as f64
                ));
            }
            bar.inc(1);
            if cfg.checkpoint_every > 0
                && self.step.is_multiple_of(cfg.checkpoint_every as u64)
                && s + 1 < spe
            {
                self.checkpoint(&ep, s + 1)?;
            }
        }
        bar.finish_and_clear();
        let secs = t_epoch.elapsed().as_secs_f64();
        Ok(EpochReport {
            epoch,
            loss: ep.loss_sum / spe.max(1) as f64,
            metrics: if cfg.eval_final_only && epoch < cfg.epochs {
                eval::Metrics::default()
            } else {
                evaluate(&self.data, &self.cls, &self.qt, &self.it)
            },
            examples_per_s: ((spe - first) * cfg.batch) as f64 / secs,
            loss_share: ep.t_loss / secs,
            max_verify_error: ep.max_err,
        })
    }

    /// One batch of the stream (`idx`: positions in the training stream):
    /// B positives and B′ uniform corpus items (or, with stream negatives,
    /// the items of B′ random training interactions), the fused loss, the
    /// periodic check against the reference, and both towers' updates.
    /// Returns the batch's loss.
    fn step(&mut self, idx: &[usize], ep: &mut EpochState) -> Result<f32, Error> {
        let (cfg, data) = (self.cfg, &*self.data);
        self.step += 1;
        let step = self.step;
        let b = cfg.batch;
        let users: Vec<u32> = idx.iter().map(|&k| data.train[k].0).collect();
        let mut cands: Vec<u32> = idx.iter().map(|&k| data.train[k].1).collect();
        if cfg.negatives == Negatives::Stream {
            let n = data.train.len();
            cands.extend((0..cfg.b_prime).map(|_| data.train[self.rng.below(n)].1));
        } else {
            cands.extend((0..cfg.b_prime).map(|_| self.rng.below(data.n_items) as u32));
        }
        let (log_q, correct_positive) = match cfg.negatives {
            Negatives::Stream => (
                freq::log_q(
                    freq::QMode::Unigram,
                    self.est.as_ref(),
                    &cands,
                    b,
                    data.n_items,
                ),
                cfg.positive_correction == PositiveCorrection::Yi,
            ),
            Negatives::Mixed => (
                freq::log_q(cfg.q_mode, self.est.as_ref(), &cands, b, data.n_items),
                cfg.positive_correction == PositiveCorrection::Yi,
            ),
            // The diagonal must stay uncorrected: its +10⁴ removes the
            // other rows' positives (freq::uniform_only_log_q).
            Negatives::UniformOnly => (
                freq::uniform_only_log_q(b, cfg.b_prime, data.n_items),
                false,
            ),
        };
        self.est.observe(&cands[..b]);
        let uf: Vec<&[u64]> = users
            .iter()
            .map(|&u| data.user_feats[u as usize].as_slice())
            .collect();
        let vf: Vec<&[u64]> = cands
            .iter()
            .map(|&i| data.item_feats[i as usize].as_slice())
            .collect();
        let (u, uc) = self.qt.forward(&uf);
        let (v, vc) = self.it.forward(&vf);
        let ids: Vec<i64> = cands.iter().map(|&i| i as i64).collect();
        let input = MnsInput::new(&u, &v, &log_q, cfg.dim)
            .temperature(cfg.temperature)
            .correct_positive(correct_positive)
            .ids(&ids);
        let out = &mut self.out;
        if out.lse.len() != b || out.d_v.len() != cands.len() * cfg.dim {
            *out = MnsOutput::filled(b, cands.len(), cfg.dim, 0.0);
        }
        let t0 = Instant::now();
        self.backend
            .mns_loss_into(&input, out)
            .map_err(|e| format!("step {step}: {e}"))?;
        ep.t_loss += t0.elapsed().as_secs_f64();
        if cfg.verify_every > 0 && step.is_multiple_of(cfg.verify_every as u64) {
            let want = ReferenceBackend
                .mns_loss(&input)
                .map_err(|e| e.to_string())?;
            let err = max_rel_error(out, &want);
            ep.max_err = ep.max_err.max(err);
            if err > cfg.verify_tolerance {
                return Err(format!(
                    "step {step}: {} differs from the reference by {err:.2e} (> {:.0e})",
                    self.backend.name(),
                    cfg.verify_tolerance
                )
                .into());
            }
        }
        self.qt
            .backward_update(uc, &out.d_u, cfg.optimizer, cfg.lr, step);
        self.it
            .backward_update(vc, &out.d_v, cfg.optimizer, cfg.lr, step);
        Ok(out.loss)
    }

    /// A checkpoint after `step_in_epoch` steps of the epoch (when a
    /// checkpoint directory is set).
    fn checkpoint(&mut self, ep: &EpochState, step_in_epoch: usize) -> Result<(), Error> {
        let Some(dir) = &self.cfg.checkpoint else {
            return Ok(());
        };
        let mut tensors: Vec<Vec<f32>> =
            self.qt.state_mut().into_iter().map(|t| t.clone()).collect();
        tensors.extend(self.it.state_mut().into_iter().map(|t| t.clone()));
        let st = checkpoint::State {
            step: self.step,
            epoch: ep.epoch,
            step_in_epoch,
            rng: self.rng.state(),
            epoch_rng: ep.epoch_rng,
            loss_sum: ep.loss_sum,
            max_err: ep.max_err,
            reports: self.reports.iter().map(csv_line).collect(),
            tensors,
            estimator: self.est.state(),
        };
        checkpoint::save(dir, &self.fingerprint, &st)
    }
}

/// The epoch's progress bar (hidden with `--quiet`).
fn progress_bar(
    cfg: &TrainConfig,
    epoch: usize,
    steps: usize,
) -> Result<indicatif::ProgressBar, Error> {
    if cfg.quiet {
        return Ok(indicatif::ProgressBar::hidden());
    }
    let b = indicatif::ProgressBar::new(steps as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    b.set_prefix(format!("{epoch}/{}", cfg.epochs));
    Ok(b)
}
