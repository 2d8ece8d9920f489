//! The seeded synthetic worlds (`--world zipf` and `--world paper`, the
//! module docs of [`crate::data`]) and their planted model.

use super::{Dataset, Pair, drop_seen_test_pairs};
use crate::Error;
use crate::features::{equal_frequency_buckets, feature};
use crate::linalg::matmul;
use crate::rng::Rng;
use rayon::prelude::*;

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
        matmul(users.len(), ni, d, &a, &self.item_factors, true, s);
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
    #[arg(long, value_enum, default_value_t = World::Paper)]
    pub world: World,
    /// Users.
    #[arg(long, default_value_t = 5_000)]
    pub users: usize,
    /// Items in the corpus (fresh ones included).
    #[arg(long, default_value_t = 25_000)]
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
    #[arg(long, default_value_t = 25)]
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
    /// Paper world: how visible quality is in the item features, q ∈ [0, 1].
    /// Above 0 every item gets a feature (field 202) that shows its quality
    /// (good or low) with probability q and is a fair coin otherwise, drawn
    /// from a generator of its own; 0 (default): no such feature, the
    /// world of earlier runs bit for bit.
    #[arg(long, default_value_t = 0.0)]
    pub quality_signal: f64,
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
        unit("quality-signal", self.quality_signal, false)?;
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
            world: World::Paper,
            users: 5_000,
            items: 25_000,
            latent_dim: 16,
            zipf: 1.0,
            pop_bias: 0.8,
            affinity_temperature: None,
            fresh_share: None,
            train_per_user: 25,
            test_per_user: 2,
            projections: 8,
            feature_buckets: 8,
            feature_noise: 0.5,
            bad_share: 0.3,
            bad_penalty: 3.0,
            categories: 20,
            category_weight: 0.5,
            fresh_exposure: 0.25,
            quality_signal: 0.0,
        }
    }
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
        matmul(blk.len(), ni, d, &ab, &oracle.item_factors, true, &mut s);
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
    let mut data = finish(
        &mut rng,
        cfg,
        oracle,
        Some(&item_cat),
        train,
        test,
        fresh,
        bad,
    );
    if cfg.quality_signal > 0.0 {
        let mut r = Rng::new(seed ^ 0x0A11_7E57_5167_0A1F);
        for (f, &low) in data.item_feats.iter_mut().zip(&data.low_quality) {
            let shown = if r.unif() < cfg.quality_signal {
                low
            } else {
                r.unif() < 0.5
            };
            f.push(feature(202, shown as u64));
        }
    }
    data
}
