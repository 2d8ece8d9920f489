//! Training data: seeded synthetic worlds, and readers for real
//! interaction logs. One file for now: the worlds share the generator, the
//! feature hashing and the dataset type (a split by job is pending).
//!
//! **Synthetic, `--world zipf`** (the original world). Users and items get
//! planted latent factors a_u, b_i ∈ R^d (N(0, 1/d) entries); items get Zipf
//! popularity pop_i ∝ 1/rank^s over a random ranking. A user's interactions
//! are drawn from P(i | u) ∝ pop_i^β · exp(⟨a_u, b_i⟩/τ₀) — popularity-biased
//! logs — by sampling-importance-resampling: a pool of candidates drawn
//! ∝ pop^β, then one of them ∝ exp(⟨a_u, b_i⟩/τ₀). A share of the items is
//! *fresh*: never in the training logs, but in the corpus with features, and
//! in the test interactions at full popularity.
//!
//! **Synthetic, `--world paper`** (the mechanism of the MNS paper). Items belong to one of C categories; b_i = √w·m_c + √(1−w)·ε_i and
//! a_u = √w·m_{c_u} + √(1−w)·η_u (category centroids m and noise with
//! N(0, 1/d) entries). Every item has an *exposure* e_i ∝ 1/rank^s over a
//! random ranking and, independently of everything else, a latent quality:
//! a share s_bad is low-quality. The logs are drawn exactly (no resampling)
//! from
//!
//! ```text
//! P(i | u) ∝ e_i^β · exp(⟨a_u, b_i⟩/τ₀ − Δ·bad_i)
//! ```
//!
//! so a low-quality item is shown as often as any other but chosen e^Δ times
//! less often: most of them have 0–3 interactions ("sparse feedback").
//! Content features (category and noisy projections of b_i) are shared by
//! good and bad items: nothing but feedback tells them apart. A share of the
//! *good* items is fresh: never in the training logs, and in the test law with
//! exposure × `fresh_exposure` (new items are shown less) — the items MNS's
//! uniform negatives demote for lack of feedback without deserving it.
//! `bad_share = 0` is the built-in null world.
//!
//! **Features.** Hashed categorical values tagged with their field
//! ([`feature`]): the id, and for synthetic worlds noisy projections of the
//! planted factors, standardised and cut into equal-frequency buckets (so a
//! tower can generalize to fresh items through content).
//!
//! **Real logs.** `user,item[,timestamp]` CSV/TSV, MovieLens `ratings.dat`
//! (`user::item::rating::timestamp`) and `u.data` (tab-separated, 4 fields)
//! with ids as the only features and a leave-last-out split; and RecBole
//! atomic files (`.inter` with `.user` and `.item`) with every feature
//! field, in [`crate::recbole`].

use crate::Error;
use crate::synthetic::splitmix;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// One user–item interaction.
pub type Pair = (u32, u32);

/// A dataset ready for training and evaluation.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Number of users.
    pub n_users: usize,
    /// Number of items (the corpus, fresh items included).
    pub n_items: usize,
    /// Hashed features of every user ([`feature`]: field-tagged).
    pub user_feats: Vec<Vec<u64>>,
    /// Hashed features of every item.
    pub item_feats: Vec<Vec<u64>>,
    /// Training interactions, in log order.
    pub train: Vec<Pair>,
    /// Held-out interactions.
    pub test: Vec<Pair>,
    /// Items that are new at test time: absent from the training logs on
    /// purpose (synthetic), or first rated after the split time (logs).
    pub fresh: Vec<bool>,
    /// Low-quality items: the planted bad items of the paper world, or for
    /// logs the items whose mean training rating is at most
    /// `--low-quality-rating` (items without a training rating are not).
    pub low_quality: Vec<bool>,
    /// The planted model, for synthetic data.
    pub oracle: Option<Oracle>,
}

/// The planted generative model of a synthetic dataset: the test law
/// log P(i | u) = bias_i + ⟨a_u, b_i⟩/τ₀ − log Z_u.
#[derive(Debug, Clone)]
pub struct Oracle {
    /// d.
    pub dim: usize,
    /// a_u, n_users × d.
    pub user_factors: Vec<f32>,
    /// b_i, n_items × d.
    pub item_factors: Vec<f32>,
    /// The item term of the training law: β·log e_i − Δ·bad_i (fresh items
    /// included, though the training logs never draw them).
    pub train_bias: Vec<f32>,
    /// The item term of the test law: `train_bias`, plus β·log
    /// `fresh_exposure` for fresh items.
    pub test_bias: Vec<f32>,
    /// What a learner can know of the item term: `train_bias` for items
    /// with training interactions' worth of history (every non-fresh item),
    /// and for fresh items the mean of `train_bias` over the others (their
    /// popularity and quality are unknown).
    pub known_bias: Vec<f32>,
    /// τ₀.
    pub tau0: f32,
}

impl Oracle {
    /// log P(i | u) of the test law, up to a per-user constant.
    pub fn score(&self, u: usize, i: usize) -> f32 {
        let d = self.dim;
        let a = &self.user_factors[u * d..(u + 1) * d];
        let b = &self.item_factors[i * d..(i + 1) * d];
        self.test_bias[i] + a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / self.tau0
    }

    /// The test law P(· | u) of each user of `users` over every item, row by
    /// row (users.len() × n_items, each row summing to 1).
    /// Written into `s` (resized to users × items; a buffer kept across
    /// calls is not page-faulted again).
    pub fn test_probs(&self, users: &[u32], s: &mut Vec<f32>) {
        let (d, ni) = (self.dim, self.test_bias.len());
        let a: Vec<f32> = users
            .iter()
            .flat_map(|&u| self.user_factors[u as usize * d..(u as usize + 1) * d].iter())
            .map(|x| x / self.tau0)
            .collect();
        s.resize(users.len() * ni, 0.0);
        // The product overwrites every element.
        crate::tower::matmul(users.len(), ni, d, &a, &self.item_factors, true, s);
        s.par_chunks_mut(ni).for_each(|row| {
            row.iter_mut()
                .zip(&self.test_bias)
                .for_each(|(x, b)| *x += b);
            softmax_in_place(row);
        });
    }
}

/// `row` ← softmax(`row`), in f64 sums.
pub fn softmax_in_place(row: &mut [f32]) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut z = 0.0f64;
    row.iter_mut().for_each(|x| {
        *x = (*x - m).exp();
        z += *x as f64;
    });
    let inv = (1.0 / z) as f32;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Which synthetic world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum World {
    /// Zipf popularity and planted affinity, a random share of fresh items
    /// at full popularity (the original world).
    Zipf,
    /// The MNS paper's mechanism: low-quality items with the same exposure
    /// and content as the others but little feedback, fresh good items
    /// with low exposure.
    Paper,
}

/// Parameters of the synthetic worlds.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthConfig {
    /// Which synthetic world.
    #[arg(long, value_enum, default_value_t = World::Zipf)]
    pub world: World,
    /// Users.
    #[arg(long, default_value_t = 20_000)]
    pub users: usize,
    /// Items in the corpus (fresh ones included).
    #[arg(long, default_value_t = 50_000)]
    pub items: usize,
    /// Dimension of the planted factors.
    #[arg(long, default_value_t = 16)]
    pub latent_dim: usize,
    /// Zipf exponent of item popularity (paper world: of exposure).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Popularity bias β of the logs: P(i|u) ∝ pop^β·exp(⟨a,b⟩/τ₀).
    #[arg(long, default_value_t = 0.8)]
    pub pop_bias: f64,
    /// Temperature τ₀ of the planted affinity (default 0.25 in the zipf
    /// world; 0.15 in the paper world, where 0.25 left the attainable
    /// ceiling only 0.06 Recall@100 above the popularity list).
    #[arg(long)]
    pub affinity_temperature: Option<f64>,
    /// Share of items that never occur in the training logs (default 0.15
    /// in the zipf world; 0.03 in the paper world, good items only).
    #[arg(long)]
    pub fresh_share: Option<f64>,
    /// Training interactions per user.
    #[arg(long, default_value_t = 20)]
    pub train_per_user: usize,
    /// Test interactions per user.
    #[arg(long, default_value_t = 2)]
    pub test_per_user: usize,
    /// Noisy projections of the factors used as features.
    #[arg(long, default_value_t = 8)]
    pub projections: usize,
    /// Buckets per projection feature (equal-frequency).
    #[arg(long, default_value_t = 8)]
    pub feature_buckets: usize,
    /// Noise of the projection features, in standard deviations of the
    /// projection.
    #[arg(long, default_value_t = 0.5)]
    pub feature_noise: f64,
    /// Paper world: share s_bad of low-quality items (0: the null world).
    #[arg(long, default_value_t = 0.3)]
    pub bad_share: f64,
    /// Paper world: Δ, how many nats lower a low-quality item's logit is.
    #[arg(long, default_value_t = 3.0)]
    pub bad_penalty: f64,
    /// Paper world: categories C.
    #[arg(long, default_value_t = 20)]
    pub categories: usize,
    /// Paper world: weight w of the category centroid in the factors.
    #[arg(long, default_value_t = 0.5)]
    pub category_weight: f64,
    /// Paper world: exposure factor of fresh items in the test law.
    #[arg(long, default_value_t = 0.25)]
    pub fresh_exposure: f64,
}

impl SynthConfig {
    /// An error naming the first flag whose value no world can be drawn
    /// with (a count of 0, a share outside [0, 1], τ₀ ≤ 0, a non-finite
    /// number, …); nothing is drawn before it.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |flag: &str, v: String, want: &str| -> Result<(), Error> {
            Err(Error::Invalid(format!("--{flag} {v}: {want}")))
        };
        for (flag, v) in [
            ("users", self.users),
            ("items", self.items),
            ("latent-dim", self.latent_dim),
            ("train-per-user", self.train_per_user),
            ("feature-buckets", self.feature_buckets),
            ("categories", self.categories),
        ] {
            if v == 0 {
                return bad(flag, v.to_string(), "must be at least 1");
            }
        }
        let unit = |flag: &str, v: f64, open_top: bool| -> Result<(), Error> {
            if !(v.is_finite() && v >= 0.0 && (v < 1.0 || (!open_top && v == 1.0))) {
                let want = if open_top {
                    "must be in [0, 1)"
                } else {
                    "must be in [0, 1]"
                };
                return bad(flag, v.to_string(), want);
            }
            Ok(())
        };
        if let Some(f) = self.fresh_share {
            unit("fresh-share", f, true)?;
        }
        unit("bad-share", self.bad_share, false)?;
        unit("category-weight", self.category_weight, false)?;
        for (flag, v) in [
            ("zipf", self.zipf),
            ("pop-bias", self.pop_bias),
            ("feature-noise", self.feature_noise),
            ("bad-penalty", self.bad_penalty),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(flag, v.to_string(), "must be a finite number ≥ 0");
            }
        }
        if let Some(t) = self.affinity_temperature
            && !(t.is_finite() && t > 0.0)
        {
            return bad("affinity-temperature", t.to_string(), "must be > 0");
        }
        let fe = self.fresh_exposure;
        if !(fe.is_finite() && fe > 0.0 && fe <= 1.0) {
            return bad("fresh-exposure", fe.to_string(), "must be in (0, 1]");
        }
        Ok(())
    }
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            world: World::Zipf,
            users: 20_000,
            items: 50_000,
            latent_dim: 16,
            zipf: 1.0,
            pop_bias: 0.8,
            affinity_temperature: None,
            fresh_share: None,
            train_per_user: 20,
            test_per_user: 2,
            projections: 8,
            feature_buckets: 8,
            feature_noise: 0.5,
            bad_share: 0.3,
            bad_penalty: 3.0,
            categories: 20,
            category_weight: 0.5,
            fresh_exposure: 0.25,
        }
    }
}

/// A small seeded generator (SplitMix64 stream).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator's whole state (checkpoints).
    pub fn state(&self) -> u64 {
        self.0
    }
    /// A generator at a saved state.
    pub fn from_state(state: u64) -> Self {
        Self(state)
    }
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(splitmix(seed ^ 0xD1B5_4A32_D192_ED03))
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }
    /// Uniform in [0, 1).
    pub fn unif(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
    /// Shuffle `v` in place (Fisher–Yates, from the last element down).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.unif().max(1e-300), self.unif());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

const VALUE_BITS: u32 = 48;

/// A hashed categorical feature: the field in the top 16 bits (so that a
/// tower can pool each field on its own, [`feature_field`]) and a hash of
/// (field, value) in the low 48.
pub fn feature(field: u64, value: u64) -> u64 {
    ((field & 0xFFFF) << VALUE_BITS) | (splitmix((field << VALUE_BITS) ^ value) >> 16)
}

/// The field of a [`feature`].
pub fn feature_field(f: u64) -> u64 {
    f >> VALUE_BITS
}

/// A hashed categorical feature of a string value.
pub fn feature_str(field: u64, value: &str) -> u64 {
    let h = value.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    });
    feature(field, h)
}

/// Equal-frequency buckets of `values`: bucket b holds the values ranked
/// b·n/nb to (b+1)·n/nb (ties by index), so every bucket holds n/nb ± 1
/// values whatever their scale.
pub fn equal_frequency_buckets(values: &[f64], nb: usize) -> Vec<u64> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]).then(a.cmp(&b)));
    let mut out = vec![0u64; n];
    for (r, &i) in order.iter().enumerate() {
        out[i] = (r * nb.max(1) / n.max(1)) as u64;
    }
    out
}

/// Noisy projections of factor rows (`rows` × d) as features of fields
/// `field0 + p`: z = ⟨x, w_p⟩ standardised over the rows, plus `noise` ×
/// N(0, 1), cut into `nb` equal-frequency buckets.
fn projection_features(
    rng: &mut Rng,
    factors: &[f32],
    d: usize,
    proj: &[f32],
    field0: u64,
    noise: f64,
    nb: usize,
) -> Vec<Vec<u64>> {
    let rows = factors.len() / d.max(1);
    let mut feats = vec![vec![]; rows];
    for p in 0..proj.len() / d.max(1) {
        let w = &proj[p * d..(p + 1) * d];
        let z: Vec<f64> = factors
            .chunks(d)
            .map(|x| x.iter().zip(w).map(|(a, b)| (a * b) as f64).sum())
            .collect();
        let mean = z.iter().sum::<f64>() / rows.max(1) as f64;
        let sd = (z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / rows.max(1) as f64)
            .sqrt()
            .max(1e-12);
        let noisy: Vec<f64> = z
            .iter()
            .map(|v| (v - mean) / sd + noise * rng.normal())
            .collect();
        for (f, b) in feats.iter_mut().zip(equal_frequency_buckets(&noisy, nb)) {
            f.push(feature(field0 + p as u64, b));
        }
    }
    feats
}

/// Generate the synthetic dataset of `cfg` and `seed`.
pub fn synthetic(cfg: &SynthConfig, seed: u64) -> Dataset {
    match cfg.world {
        World::Zipf => zipf_world(cfg, seed),
        World::Paper => paper_world(cfg, seed),
    }
}

fn zipf_world(cfg: &SynthConfig, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let (nu, ni, d) = (cfg.users, cfg.items, cfg.latent_dim);
    let sd = 1.0 / (d as f64).sqrt();
    let uf: Vec<f32> = (0..nu * d).map(|_| (rng.normal() * sd) as f32).collect();
    let itf: Vec<f32> = (0..ni * d).map(|_| (rng.normal() * sd) as f32).collect();
    // Random popularity ranks; Zipf weights.
    let mut rank: Vec<usize> = (0..ni).collect();
    rng.shuffle(&mut rank);
    let log_pop: Vec<f32> = rank
        .iter()
        .map(|&r| (-cfg.zipf * ((r + 1) as f64).ln()) as f32)
        .collect();
    let fresh_share = cfg.fresh_share.unwrap_or(0.15);
    let fresh: Vec<bool> = (0..ni).map(|_| rng.unif() < fresh_share).collect();
    let beta = cfg.pop_bias as f32;
    let bias: Vec<f32> = log_pop.iter().map(|l| beta * l).collect();
    let oracle = Oracle {
        dim: d,
        user_factors: uf,
        item_factors: itf,
        known_bias: known_bias(&bias, &fresh),
        train_bias: bias.clone(),
        test_bias: bias,
        tau0: cfg.affinity_temperature.unwrap_or(0.25) as f32,
    };

    // CDFs of pop^β over the non-fresh items (train) and all items (test).
    let cdf = |keep: &dyn Fn(usize) -> bool| -> (Vec<f64>, Vec<u32>) {
        let idx: Vec<u32> = (0..ni as u32).filter(|&i| keep(i as usize)).collect();
        let mut acc = 0.0;
        let c = idx
            .iter()
            .map(|&i| {
                acc += (cfg.pop_bias * log_pop[i as usize] as f64).exp();
                acc
            })
            .collect::<Vec<_>>();
        (c.iter().map(|x| x / acc).collect(), idx)
    };
    let (train_cdf, train_idx) = cdf(&|i| !fresh[i]);
    let (all_cdf, all_idx) = cdf(&|_| true);
    const POOL: usize = 256;
    let draw = |rng: &mut Rng, u: usize, cdf: &[f64], idx: &[u32]| -> u32 {
        // Sampling-importance-resampling: a pool ∝ pop^β, then ∝ exp(⟨a,b⟩/τ₀).
        let pool: Vec<u32> = (0..POOL)
            .map(|_| {
                let x = rng.unif();
                idx[cdf.partition_point(|&c| c < x).min(idx.len() - 1)]
            })
            .collect();
        let aff: Vec<f64> = pool
            .iter()
            .map(|&i| (oracle.score(u, i as usize) - oracle.test_bias[i as usize]) as f64)
            .collect();
        let m = aff.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = aff.iter().map(|a| (a - m).exp()).collect();
        let mut x = rng.unif() * w.iter().sum::<f64>();
        for (k, wk) in w.iter().enumerate() {
            x -= wk;
            if x <= 0.0 {
                return pool[k];
            }
        }
        pool[POOL - 1]
    };
    let mut train = Vec::with_capacity(nu * cfg.train_per_user);
    let mut test = Vec::with_capacity(nu * cfg.test_per_user);
    for u in 0..nu {
        for _ in 0..cfg.train_per_user {
            train.push((u as u32, draw(&mut rng, u, &train_cdf, &train_idx)));
        }
        for _ in 0..cfg.test_per_user {
            test.push((u as u32, draw(&mut rng, u, &all_cdf, &all_idx)));
        }
    }
    let low_quality = vec![false; ni];
    finish(&mut rng, cfg, oracle, None, train, test, fresh, low_quality)
}

/// The common end of both worlds: the training stream shuffled into log
/// order (a stream, not user by user), the features, the test pairs that
/// repeat a training item dropped.
#[allow(clippy::too_many_arguments)]
fn finish(
    rng: &mut Rng,
    cfg: &SynthConfig,
    oracle: Oracle,
    category: Option<&[u32]>,
    mut train: Vec<Pair>,
    test: Vec<Pair>,
    fresh: Vec<bool>,
    low_quality: Vec<bool>,
) -> Dataset {
    rng.shuffle(&mut train);
    let (user_feats, item_feats) = featurize(rng, cfg, &oracle, category);
    let test = drop_seen_test_pairs(&train, test);
    Dataset {
        n_users: cfg.users,
        n_items: cfg.items,
        user_feats,
        item_feats,
        train,
        test,
        fresh,
        low_quality,
        oracle: Some(oracle),
    }
}

/// The item term a learner can know: `bias` for non-fresh items, the mean
/// of the non-fresh ones for fresh items.
fn known_bias(bias: &[f32], fresh: &[bool]) -> Vec<f32> {
    let (s, n) = bias
        .iter()
        .zip(fresh)
        .filter(|(_, f)| !**f)
        .fold((0.0f64, 0usize), |(s, n), (b, _)| (s + *b as f64, n + 1));
    let mean = (s / n.max(1) as f64) as f32;
    bias.iter()
        .zip(fresh)
        .map(|(&b, &f)| if f { mean } else { b })
        .collect()
}

/// Features of a synthetic world: the id (fields 100 and 200), the item's
/// category (field 201) when given, and noisy projections of the factors
/// (fields 101+p and 210+p).
fn featurize(
    rng: &mut Rng,
    cfg: &SynthConfig,
    o: &Oracle,
    category: Option<&[u32]>,
) -> (Vec<Vec<u64>>, Vec<Vec<u64>>) {
    let d = o.dim;
    let proj: Vec<f32> = (0..cfg.projections * d)
        .map(|_| rng.normal() as f32)
        .collect();
    let (nb, noise) = (cfg.feature_buckets, cfg.feature_noise);
    let mut uf = projection_features(rng, &o.user_factors, d, &proj, 101, noise, nb);
    let mut itf = projection_features(rng, &o.item_factors, d, &proj, 210, noise, nb);
    for (u, f) in uf.iter_mut().enumerate() {
        f.insert(0, feature(100, u as u64));
    }
    for (i, f) in itf.iter_mut().enumerate() {
        f.insert(0, feature(200, i as u64));
        if let Some(c) = category {
            f.insert(1, feature(201, c[i] as u64));
        }
    }
    (uf, itf)
}

fn paper_world(cfg: &SynthConfig, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed ^ 0x9A9E_5EED);
    let (nu, ni, d) = (cfg.users, cfg.items, cfg.latent_dim);
    let nc = cfg.categories.max(1);
    let sd = 1.0 / (d as f64).sqrt();
    let (sw, sn) = (
        cfg.category_weight.sqrt(),
        (1.0 - cfg.category_weight).sqrt(),
    );
    let centroids: Vec<f64> = (0..nc * d).map(|_| rng.normal() * sd).collect();
    let mixed = |rng: &mut Rng, n: usize| -> (Vec<f32>, Vec<u32>) {
        let cats: Vec<u32> = (0..n).map(|_| rng.below(nc) as u32).collect();
        let f = cats
            .iter()
            .flat_map(|&c| {
                (0..d)
                    .map(|k| (sw * centroids[c as usize * d + k] + sn * rng.normal() * sd) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        (f, cats)
    };
    let (uf, _) = mixed(&mut rng, nu);
    let (itf, item_cat) = mixed(&mut rng, ni);
    let mut rank: Vec<usize> = (0..ni).collect();
    rng.shuffle(&mut rank);
    let bad: Vec<bool> = (0..ni).map(|_| rng.unif() < cfg.bad_share).collect();
    let fresh_share = cfg.fresh_share.unwrap_or(0.03);
    let fresh: Vec<bool> = bad
        .iter()
        .map(|&b| {
            let x = rng.unif();
            !b && x < fresh_share
        })
        .collect();
    let beta = cfg.pop_bias;
    let train_bias: Vec<f32> = (0..ni)
        .map(|i| {
            (-beta * cfg.zipf * ((rank[i] + 1) as f64).ln()
                - if bad[i] { cfg.bad_penalty } else { 0.0 }) as f32
        })
        .collect();
    let fresh_boost = (beta * cfg.fresh_exposure.max(1e-300).ln()) as f32;
    let test_bias: Vec<f32> = train_bias
        .iter()
        .zip(&fresh)
        .map(|(&b, &f)| if f { b + fresh_boost } else { b })
        .collect();
    let oracle = Oracle {
        dim: d,
        user_factors: uf,
        item_factors: itf,
        known_bias: known_bias(&train_bias, &fresh),
        train_bias,
        test_bias,
        tau0: cfg.affinity_temperature.unwrap_or(0.15) as f32,
    };
    // Exact draws: for a block of users, the logits against every item, then
    // per user a CDF of the training law (fresh items excluded) and one of
    // the test law; draws without repetition (a user does not choose the same
    // item twice), from a generator of its own (the draws do not depend on
    // how rayon splits the work).
    let (tpu, spu) = (cfg.train_per_user, cfg.test_per_user);
    let mut train = Vec::with_capacity(nu * tpu);
    let mut test = Vec::with_capacity(nu * spu);
    let users: Vec<u32> = (0..nu as u32).collect();
    for blk in users.chunks(256) {
        let (a, tau) = (&oracle.user_factors, oracle.tau0);
        let ab: Vec<f32> = blk
            .iter()
            .flat_map(|&u| {
                a[u as usize * d..(u as usize + 1) * d]
                    .iter()
                    .map(|x| x / tau)
            })
            .collect();
        let mut s = vec![0.0f32; blk.len() * ni];
        crate::tower::matmul(blk.len(), ni, d, &ab, &oracle.item_factors, true, &mut s);
        let drawn: Vec<(Vec<Pair>, Vec<Pair>)> = s
            .par_chunks(ni)
            .zip(blk)
            .map(|(row, &u)| {
                let mut r = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ u as u64);
                let law = |bias: &[f32], keep: &dyn Fn(usize) -> bool| -> Vec<f64> {
                    let m = row
                        .iter()
                        .zip(bias)
                        .map(|(x, b)| x + b)
                        .fold(f32::NEG_INFINITY, f32::max);
                    let mut acc = 0.0f64;
                    (0..ni)
                        .map(|i| {
                            if keep(i) {
                                acc += ((row[i] + bias[i] - m) as f64).exp();
                            }
                            acc
                        })
                        .collect()
                };
                let tr = law(&oracle.train_bias, &|i| !fresh[i]);
                let te = law(&oracle.test_bias, &|_| true);
                let mut chosen: Vec<u32> = vec![];
                let pick = |cdf: &[f64], chosen: &mut Vec<u32>, r: &mut Rng| {
                    for _ in 0..64 {
                        let x = r.unif() * cdf[ni - 1];
                        let i = cdf.partition_point(|&c| c <= x).min(ni - 1) as u32;
                        if !chosen.contains(&i) {
                            chosen.push(i);
                            return Some(i);
                        }
                    }
                    None
                };
                let trn: Vec<Pair> = (0..tpu)
                    .filter_map(|_| pick(&tr, &mut chosen, &mut r).map(|i| (u, i)))
                    .collect();
                let tst: Vec<Pair> = (0..spu)
                    .filter_map(|_| pick(&te, &mut chosen, &mut r).map(|i| (u, i)))
                    .collect();
                (trn, tst)
            })
            .collect();
        for (a, b) in drawn {
            train.extend(a);
            test.extend(b);
        }
    }
    finish(
        &mut rng,
        cfg,
        oracle,
        Some(&item_cat),
        train,
        test,
        fresh,
        bad,
    )
}

/// The test pairs whose item is not among the same user's training items.
/// Evaluation ranks every item but the user's training items
/// (`eval::evaluate`), so such a pair could never be hit: kept, ~7% of the
/// synthetic world's test pairs would count as certain misses.
pub fn drop_seen_test_pairs(train: &[Pair], test: Vec<Pair>) -> Vec<Pair> {
    let seen: std::collections::HashSet<Pair> = train.iter().copied().collect();
    test.into_iter().filter(|p| !seen.contains(p)).collect()
}

/// Read interaction logs: `user,item[,timestamp]` CSV or TSV (a header line
/// whose second field is not a number is skipped), MovieLens `ratings.dat`
/// (`::`-separated, 4 fields) or `u.data` (tab-separated, 4 fields: user,
/// item, rating, timestamp). Leave-last-out split by timestamp (file order
/// when there is none). A malformed line is an error naming file and line.
pub fn read_logs(path: &Path) -> Result<Dataset, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut users: HashMap<String, u32> = HashMap::new();
    let mut items: HashMap<String, u32> = HashMap::new();
    let mut events: Vec<(u32, u32, f64, usize)> = vec![];
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = if line.contains("::") {
            line.split("::").collect()
        } else if line.contains('\t') {
            line.split('\t').collect()
        } else {
            line.split(',').collect()
        };
        let bad = |why: &str| {
            Error::Invalid(format!(
                "{}:{}: {why}: {line:?}",
                path.display(),
                lineno + 1
            ))
        };
        if lineno == 0
            && fields.len() >= 2
            && fields[1].trim().parse::<f64>().is_err()
            && !line.contains("::")
        {
            continue; // a header
        }
        // MovieLens layouts have 4 fields: user, item, rating, timestamp.
        let (u, i, t) = match fields.len() {
            2 => (fields[0], fields[1], None),
            3 => (fields[0], fields[1], Some(fields[2])),
            4 => (fields[0], fields[1], Some(fields[3])),
            n => return Err(bad(&format!("expected 2 to 4 fields, found {n}"))),
        };
        let (u, i) = (u.trim(), i.trim());
        if u.is_empty() || i.is_empty() {
            return Err(bad("empty user or item"));
        }
        let t = match t {
            Some(t) => t
                .trim()
                .parse::<f64>()
                .map_err(|_| bad("timestamp is not a number"))?,
            None => lineno as f64,
        };
        let nu = users.len() as u32;
        let uid = *users.entry(u.to_string()).or_insert(nu);
        let ni = items.len() as u32;
        let iid = *items.entry(i.to_string()).or_insert(ni);
        events.push((uid, iid, t, lineno));
    }
    if events.is_empty() {
        return Err(format!("{}: no interactions", path.display()).into());
    }
    events.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.3.cmp(&b.3)));
    let mut last: HashMap<u32, usize> = HashMap::new();
    let mut count: HashMap<u32, usize> = HashMap::new();
    for (k, e) in events.iter().enumerate() {
        last.insert(e.0, k);
        *count.entry(e.0).or_default() += 1;
    }
    let (mut train, mut test) = (vec![], vec![]);
    for (k, e) in events.iter().enumerate() {
        if count[&e.0] >= 2 && last[&e.0] == k {
            test.push((e.0, e.1));
        } else {
            train.push((e.0, e.1));
        }
    }
    let test = drop_seen_test_pairs(&train, test);
    let (nu, ni) = (users.len(), items.len());
    Ok(Dataset {
        n_users: nu,
        n_items: ni,
        user_feats: (0..nu).map(|u| vec![feature(100, u as u64)]).collect(),
        item_feats: (0..ni).map(|i| vec![feature(200, i as u64)]).collect(),
        train,
        test,
        fresh: vec![false; ni],
        low_quality: vec![false; ni],
        oracle: None,
    })
}
