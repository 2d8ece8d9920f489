//! Sampling probabilities of the in-batch candidates.
//!
//! The streaming frequency estimator of Yi et al. 2019 ("Sampling-Bias-
//! Corrected Neural Modeling for Large Corpus Item Recommendations",
//! Algorithm 2): for each of `m` hash functions h, arrays A (the step an item
//! was last seen) and B (a running estimate of the gap between its
//! occurrences). On seeing item y at step t:
//!
//! ```text
//! B[h(y)] ← (1 − α)·B[h(y)] + α·(t − A[h(y)]),   A[h(y)] ← t
//! ```
//!
//! except that a bucket's first occurrence sets B to its gap since the start,
//! t (A starts at 0), instead of blending it into the prior: with the prior
//! B₀ = 10⁴ and α = 0.01, blending left p̂ 20–140× too small for items ranked
//! 50–10 000 after a 2 300-step run; the prior only stands for
//! never-seen items. p̂_y = 1/(steps between occurrences) = 1 / max_h B[h(y)] — in
//! occurrences per step; divided by the batch size it is the probability
//! that one draw from the training stream is y. Taking the max over hash
//! functions undoes collisions (a collision only shortens gaps). An
//! exact-count mode serves tests and small corpora.
//!
//! Q* (docs/design.md §1) for a batch of B stream positives and B′ uniform draws
//! from a corpus of |C| items: `None` (no correction), `Unigram`
//! (Q = p̂), or the MNS mixture Q*_j = (B·p̂_j + B′/|C|)/(B + B′).

use crate::Error;

/// How candidates' log Q enters the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QMode {
    /// No correction (log Q = 0).
    None,
    /// Unigram frequency of the training stream: Q_j = p̂_j.
    Unigram,
    /// The MNS mixture Q*_j = (B·p̂_j + B′/|C|)/(B + B′).
    Mixture,
}

/// Per-item probability that one draw of the training stream is the item.
pub trait FrequencyEstimator {
    /// Record one batch of stream positives (one step).
    fn observe(&mut self, items: &[u32]);
    /// p̂_y: the estimated probability that a stream draw is `item`.
    fn prob(&self, item: u32) -> f64;
    /// The whole state as f64 vectors (checkpoints).
    fn state(&self) -> Vec<Vec<f64>>;
    /// Restore a state from [`FrequencyEstimator::state`]; an error (and
    /// nothing changed) if it does not fit.
    fn set_state(&mut self, state: Vec<Vec<f64>>) -> Result<(), Error>;
}

/// Yi et al.'s hashed streaming estimator.
#[derive(Debug, Clone)]
pub struct StreamingEstimator {
    a: Vec<Vec<f64>>,
    b: Vec<Vec<f64>>,
    seeds: Vec<u64>,
    alpha: f64,
    step: f64,
    batch: f64,
}

impl StreamingEstimator {
    /// `hashes` hash functions over `buckets` buckets each, learning rate α.
    /// B starts at `initial_gap` steps (a prior of rare items).
    pub fn new(buckets: usize, hashes: usize, alpha: f64, initial_gap: f64) -> Self {
        Self {
            a: vec![vec![0.0; buckets]; hashes],
            b: vec![vec![initial_gap; buckets]; hashes],
            seeds: (0..hashes as u64)
                .map(|h| 0x5851_F42D_4C95_7F2D ^ (h * 0x9E37_79B9))
                .collect(),
            alpha,
            step: 0.0,
            batch: 1.0,
        }
    }

    fn bucket(&self, h: usize, item: u32) -> usize {
        (crate::synthetic::splitmix(item as u64 ^ self.seeds[h]) % self.a[h].len() as u64) as usize
    }

    /// The raw state (A, B, step, batch) for checkpoints.
    pub fn state(&self) -> (&[Vec<f64>], &[Vec<f64>], f64, f64) {
        (&self.a, &self.b, self.step, self.batch)
    }
}

impl FrequencyEstimator for StreamingEstimator {
    fn observe(&mut self, items: &[u32]) {
        self.step += 1.0;
        self.batch = items.len().max(1) as f64;
        let t = self.step;
        for &y in items {
            for h in 0..self.seeds.len() {
                let k = self.bucket(h, y);
                // An item seen twice in one batch: a gap of 0 steps is a
                // frequency of one per step per occurrence; keep the update.
                // A bucket's first occurrence (A = 0: steps count from 1)
                // replaces the prior with the gap since the start.
                let gap = t - self.a[h][k];
                self.b[h][k] = if self.a[h][k] == 0.0 {
                    gap
                } else {
                    (1.0 - self.alpha) * self.b[h][k] + self.alpha * gap
                };
                self.a[h][k] = t;
            }
        }
    }

    fn state(&self) -> Vec<Vec<f64>> {
        let mut v: Vec<Vec<f64>> = self.a.iter().chain(&self.b).cloned().collect();
        v.push(vec![self.step, self.batch]);
        v
    }

    fn set_state(&mut self, mut state: Vec<Vec<f64>>) -> Result<(), Error> {
        let h = self.a.len();
        let ok = state.len() == 2 * h + 1
            && state[..2 * h].iter().all(|x| x.len() == self.a[0].len())
            && state[2 * h].len() == 2;
        if !ok {
            return Err(format!(
                "streaming estimator state does not fit {h} hashes × {} buckets",
                self.a[0].len()
            )
            .into());
        }
        let tail = state.pop().expect("checked");
        self.b = state.split_off(h);
        self.a = state;
        (self.step, self.batch) = (tail[0], tail[1]);
        Ok(())
    }

    fn prob(&self, item: u32) -> f64 {
        let gap = (0..self.seeds.len())
            .map(|h| self.b[h][self.bucket(h, item)])
            .fold(0.0f64, f64::max);
        // Occurrences per step / draws per step.
        (1.0 / gap.max(1e-9)) / self.batch
    }
}

/// Exact counts, add-one smoothed over the corpus:
/// p̂_y = (count(y) + 1) / (total draws + |C|). (A floor of 1e-12 for unseen
/// items instead would give an item's first appearance a +27.6-nat jump in
/// its column's correction.)
#[derive(Debug, Clone)]
pub struct ExactCounts {
    counts: std::collections::HashMap<u32, u64>,
    total: u64,
    corpus: u64,
}

impl ExactCounts {
    /// Counts over a corpus of `corpus` items (≥ 1).
    pub fn new(corpus: usize) -> Self {
        Self {
            counts: Default::default(),
            total: 0,
            corpus: corpus.max(1) as u64,
        }
    }
}

impl FrequencyEstimator for ExactCounts {
    fn observe(&mut self, items: &[u32]) {
        for &y in items {
            *self.counts.entry(y).or_default() += 1;
        }
        self.total += items.len() as u64;
    }

    fn state(&self) -> Vec<Vec<f64>> {
        let mut keys: Vec<u32> = self.counts.keys().copied().collect();
        keys.sort_unstable();
        let counts = keys.iter().map(|k| self.counts[k] as f64).collect();
        vec![
            keys.iter().map(|&k| k as f64).collect(),
            counts,
            vec![self.total as f64],
        ]
    }

    fn set_state(&mut self, state: Vec<Vec<f64>>) -> Result<(), Error> {
        if state.len() != 3 || state[0].len() != state[1].len() || state[2].len() != 1 {
            return Err("exact-count state is malformed".into());
        }
        self.counts = state[0]
            .iter()
            .zip(&state[1])
            .map(|(&k, &c)| (k as u32, c as u64))
            .collect();
        self.total = state[2][0] as u64;
        Ok(())
    }

    fn prob(&self, item: u32) -> f64 {
        (*self.counts.get(&item).unwrap_or(&0) + 1) as f64 / (self.total + self.corpus) as f64
    }
}

/// p known in advance: the add-one smoothed counts of the whole training log,
/// p_j = (c_j + 1)/(T + |C|) — `--estimator log`, so that the estimator is
/// not a confound of an experiment. Observing batches changes nothing.
#[derive(Debug, Clone)]
pub struct LogCounts {
    p: Vec<f64>,
}

impl LogCounts {
    /// From the training log's items over a corpus of `corpus` items (every
    /// item < `corpus`).
    pub fn new(items: impl IntoIterator<Item = u32>, corpus: usize) -> Self {
        let mut c = vec![0u64; corpus.max(1)];
        let mut t = 0u64;
        for i in items {
            c[i as usize] += 1;
            t += 1;
        }
        let z = (t + c.len() as u64) as f64;
        Self {
            p: c.iter().map(|&k| (k + 1) as f64 / z).collect(),
        }
    }
}

impl FrequencyEstimator for LogCounts {
    fn observe(&mut self, _items: &[u32]) {}

    fn prob(&self, item: u32) -> f64 {
        self.p.get(item as usize).copied().unwrap_or(0.0)
    }

    fn state(&self) -> Vec<Vec<f64>> {
        vec![]
    }

    fn set_state(&mut self, state: Vec<Vec<f64>>) -> Result<(), Error> {
        if state.is_empty() {
            Ok(())
        } else {
            Err("log-count state is malformed".into())
        }
    }
}

/// log Q_j for one batch's candidates: the first `b` are stream positives,
/// the rest uniform draws from a corpus of `corpus` items. Probabilities are
/// floored at 1e-12 so that log Q stays finite for never-seen items.
pub fn log_q(
    mode: QMode,
    est: &dyn FrequencyEstimator,
    candidates: &[u32],
    b: usize,
    corpus: usize,
) -> Vec<f32> {
    let bp = candidates.len() - b;
    candidates
        .iter()
        .map(|&j| {
            let q = match mode {
                QMode::None => 1.0,
                QMode::Unigram => est.prob(j),
                QMode::Mixture => {
                    (b as f64 * est.prob(j) + bp as f64 / corpus as f64) / (b + bp) as f64
                }
            };
            q.max(1e-12).ln() as f32
        })
        .collect()
}

/// log Q for uniform-only negatives: the first `b` candidates are the
/// batch's positives, pushed out of every other row by +10⁴ (the loss keeps
/// each row's own positive uncorrected); the `b_prime` uniform draws from a
/// corpus of `corpus` items have log Q = ln(B′/|C|), the expected number of
/// times a given item is drawn, so that the sampled sum estimates the
/// corpus's (with 0 the negatives would weigh |C|/B′ too little).
pub fn uniform_only_log_q(b: usize, b_prime: usize, corpus: usize) -> Vec<f32> {
    let lq = (b_prime as f64 / corpus.max(1) as f64).ln() as f32;
    let mut v = vec![1e4f32; b];
    v.resize(b + b_prime, lq);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stationary Zipf-like stream: the streaming estimate matches the
    /// exact counts for the frequent items, within the estimator's noise.
    #[test]
    fn streaming_matches_exact_counts_on_a_stationary_stream() {
        let (items, batch, steps) = (200u32, 64, 3000);
        let weights: Vec<f64> = (1..=items).map(|r| 1.0 / r as f64).collect();
        let total: f64 = weights.iter().sum();
        let cdf: Vec<f64> = weights
            .iter()
            .scan(0.0, |s, w| {
                *s += w / total;
                Some(*s)
            })
            .collect();
        let mut rng = 12345u64;
        let mut draw = || {
            rng = crate::synthetic::splitmix(rng);
            let x = (rng >> 11) as f64 / (1u64 << 53) as f64;
            cdf.partition_point(|&c| c < x).min(items as usize - 1) as u32
        };
        let mut st = StreamingEstimator::new(4096, 3, 0.01, 1000.0);
        let mut ex = ExactCounts::new(items as usize);
        for _ in 0..steps {
            let b: Vec<u32> = (0..batch).map(|_| draw()).collect();
            st.observe(&b);
            ex.observe(&b);
        }
        for y in [0u32, 1, 2, 5, 10] {
            let (s, e) = (st.prob(y), ex.prob(y));
            assert!(
                (s - e).abs() <= 0.15 * e,
                "item {y}: streaming {s:.5} vs exact {e:.5}"
            );
        }
    }

    /// After the distribution switches, the streaming estimate follows the
    /// new frequencies within a few 1/α steps; exact counts cannot.
    #[test]
    fn streaming_adapts_after_a_switch() {
        let mut st = StreamingEstimator::new(1024, 2, 0.05, 1000.0);
        // Phase 1: item 7 in every batch of 10 (p = 0.1); phase 2: never.
        for t in 0..400 {
            let mut b = vec![100 + (t % 50) as u32; 10];
            b[0] = 7;
            st.observe(&b);
        }
        let before = st.prob(7);
        assert!((before - 0.1).abs() < 0.02, "{before}");
        // Phase 2: item 8 appears every other step; item 7 stops.
        for t in 0..400 {
            let mut b = vec![200 + (t % 50) as u32; 10];
            if t % 2 == 0 {
                b[0] = 8;
            }
            st.observe(&b);
        }
        let p8 = st.prob(8);
        assert!((p8 - 0.05).abs() < 0.01, "item 8 after the switch: {p8}");
    }

    #[test]
    fn q_modes() {
        // A corpus of 100 items; 4 draws seen: add-one smoothing gives
        // p = (count + 1)/(4 + 100).
        let mut ex = ExactCounts::new(100);
        ex.observe(&[1, 1, 2, 3]);
        let cands = [1u32, 2, 9, 1];
        let p = |c: f64| (c + 1.0) / 104.0;
        // b = 2 positives, b' = 2 uniform draws.
        let none = log_q(QMode::None, &ex, &cands, 2, 100);
        assert!(none.iter().all(|&x| x == 0.0));
        let uni = log_q(QMode::Unigram, &ex, &cands, 2, 100);
        assert!(
            (uni[0] - p(2.0).ln() as f32).abs() < 1e-6
                && (uni[1] - p(1.0).ln() as f32).abs() < 1e-6
        );
        // Never seen: one pseudo-count, not a 1e-12 floor.
        assert!((uni[2] - p(0.0).ln() as f32).abs() < 1e-6);
        let mix = log_q(QMode::Mixture, &ex, &cands, 2, 100);
        let want = |p: f64| ((2.0 * p + 2.0 / 100.0) / 4.0).ln() as f32;
        assert!((mix[0] - want(p(2.0))).abs() < 1e-6 && (mix[2] - want(p(0.0))).abs() < 1e-6);
    }

    /// With the prior blended in, an item seen every g steps would keep
    /// p̂ far below 1/g for ~1/α occurrences. The first occurrence now sets
    /// the gap, so p̂ is right after a handful of occurrences, short run or
    /// not; an item never seen keeps the prior.
    #[test]
    fn first_occurrence_sets_the_gap() {
        let (gap, batch) = (50u32, 10usize);
        let mut st = StreamingEstimator::new(1 << 12, 2, 0.01, 1e4);
        // 300 steps: item 5 every 50 steps (first at step 50), 6 items seen.
        for t in 1..=300u32 {
            let mut b = vec![1000 + t; batch];
            if t % gap == 0 {
                b[0] = 5;
            }
            st.observe(&b);
        }
        let want = 1.0 / (gap as f64 * batch as f64);
        let got = st.prob(5);
        assert!(
            (got - want).abs() <= 0.01 * want,
            "p̂ = {got:.3e}, want {want:.3e}"
        );
        // Never seen: the prior, 1/(10⁴·B).
        let prior = st.prob(99_999);
        assert!(
            (prior - 1.0 / (1e4 * batch as f64)).abs() < 1e-12,
            "{prior}"
        );
        // The old blend would have given (after 6 hits, α = 0.01) a gap of
        // ~0.94·10⁴ + 0.06·50: p̂ ~190× too small.
    }

    #[test]
    fn uniform_only_negatives_are_corrected() {
        let v = uniform_only_log_q(3, 2, 200);
        assert_eq!(&v[..3], &[1e4; 3]);
        assert!(
            v[3..].iter().all(|&x| (x - (0.01f32).ln()).abs() < 1e-6),
            "{v:?}"
        );
    }

    #[test]
    fn add_one_smoothing_before_any_draw() {
        let ex = ExactCounts::new(40);
        assert_eq!(ex.prob(3), 1.0 / 40.0);
    }

    #[test]
    fn log_counts_are_the_smoothed_counts_of_the_log() {
        // Items 0, 0, 2 over a corpus of 4: (c + 1)/(3 + 4).
        let mut lc = LogCounts::new([0u32, 0, 2], 4);
        let want = [3.0 / 7.0, 1.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0];
        for (j, w) in want.iter().enumerate() {
            assert!((lc.prob(j as u32) - w).abs() < 1e-15, "{j}");
        }
        // Known in advance: observing batches changes nothing.
        lc.observe(&[1, 1, 1]);
        assert!((lc.prob(1) - 1.0 / 7.0).abs() < 1e-15);
        assert!((0..4).map(|j| lc.prob(j)).sum::<f64>() - 1.0 < 1e-12);
        assert!(lc.set_state(vec![vec![1.0]]).is_err());
    }
}
