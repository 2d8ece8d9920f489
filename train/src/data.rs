//! Training data: a seeded synthetic world that makes MNS matter, and a
//! reader for real interaction logs.
//!
//! **Synthetic.** Users and items get planted latent factors a_u, b_i ∈ R^d
//! (N(0, 1/d) entries); items get Zipf popularity pop_i ∝ 1/rank^s over a
//! random ranking. A user's interactions are drawn from
//! P(i | u) ∝ pop_i^β · exp(⟨a_u, b_i⟩/τ₀) — popularity-biased logs — by
//! sampling-importance-resampling: a pool of candidates drawn ∝ pop^β, then
//! one of them ∝ exp(⟨a_u, b_i⟩/τ₀). A share of the items is *fresh*: never
//! in the training logs, but in the corpus with features, and in the test
//! interactions like any other item. Features are hashed categorical values:
//! the id, and noisy bucketed random projections of the planted factors (so
//! a tower can generalize to fresh items through content).
//!
//! **Real logs.** `user,item[,timestamp]` CSV/TSV, MovieLens `ratings.dat`
//! (`user::item::rating::timestamp`) and `u.data` (tab-separated, 4 fields);
//! ids are mapped to dense indices, each user's last interaction by time is
//! the test set (leave-last-out) and features are the ids alone.

use crate::Error;
use mixneg::synthetic::splitmix;
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
    /// Hashed features of every user.
    pub user_feats: Vec<Vec<u64>>,
    /// Hashed features of every item.
    pub item_feats: Vec<Vec<u64>>,
    /// Training interactions, in log order.
    pub train: Vec<Pair>,
    /// Held-out interactions.
    pub test: Vec<Pair>,
    /// Items absent from the training logs on purpose.
    pub fresh: Vec<bool>,
    /// The planted model, for synthetic data.
    pub oracle: Option<Oracle>,
}

/// The planted generative model of a synthetic dataset.
#[derive(Debug, Clone)]
pub struct Oracle {
    /// d.
    pub dim: usize,
    /// a_u, n_users × d.
    pub user_factors: Vec<f32>,
    /// b_i, n_items × d.
    pub item_factors: Vec<f32>,
    /// log pop_i.
    pub log_pop: Vec<f32>,
    /// β.
    pub beta: f32,
    /// τ₀.
    pub tau0: f32,
}

impl Oracle {
    /// log P(i | u) up to a constant: β·log pop_i + ⟨a_u, b_i⟩/τ₀.
    pub fn score(&self, u: usize, i: usize) -> f32 {
        let d = self.dim;
        let a = &self.user_factors[u * d..(u + 1) * d];
        let b = &self.item_factors[i * d..(i + 1) * d];
        self.beta * self.log_pop[i] + a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / self.tau0
    }
}

/// Parameters of the synthetic world.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthConfig {
    /// Users.
    #[arg(long, default_value_t = 20_000)]
    pub users: usize,
    /// Items in the corpus (fresh ones included).
    #[arg(long, default_value_t = 50_000)]
    pub items: usize,
    /// Dimension of the planted factors.
    #[arg(long, default_value_t = 16)]
    pub latent_dim: usize,
    /// Zipf exponent of item popularity.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Popularity bias β of the logs: P(i|u) ∝ pop^β·exp(⟨a,b⟩/τ₀).
    #[arg(long, default_value_t = 0.8)]
    pub pop_bias: f64,
    /// Temperature τ₀ of the planted affinity.
    #[arg(long, default_value_t = 0.25)]
    pub affinity_temperature: f64,
    /// Share of items that never occur in the training logs.
    #[arg(long, default_value_t = 0.15)]
    pub fresh_share: f64,
    /// Training interactions per user.
    #[arg(long, default_value_t = 20)]
    pub train_per_user: usize,
    /// Test interactions per user.
    #[arg(long, default_value_t = 2)]
    pub test_per_user: usize,
    /// Noisy projections of the factors used as features.
    #[arg(long, default_value_t = 8)]
    pub projections: usize,
    /// Buckets per projection feature.
    #[arg(long, default_value_t = 8)]
    pub feature_buckets: usize,
    /// Noise of the projection features, relative to their spread.
    #[arg(long, default_value_t = 0.5)]
    pub feature_noise: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            users: 20_000,
            items: 50_000,
            latent_dim: 16,
            zipf: 1.0,
            pop_bias: 0.8,
            affinity_temperature: 0.25,
            fresh_share: 0.15,
            train_per_user: 20,
            test_per_user: 2,
            projections: 8,
            feature_buckets: 8,
            feature_noise: 0.5,
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
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.unif().max(1e-300), self.unif());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

/// A hashed categorical feature: field and value.
pub fn feature(field: u64, value: u64) -> u64 {
    splitmix((field << 48) ^ value)
}

/// Generate the synthetic dataset of `cfg` and `seed`.
pub fn synthetic(cfg: &SynthConfig, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let (nu, ni, d) = (cfg.users, cfg.items, cfg.latent_dim);
    let sd = 1.0 / (d as f64).sqrt();
    let uf: Vec<f32> = (0..nu * d).map(|_| (rng.normal() * sd) as f32).collect();
    let itf: Vec<f32> = (0..ni * d).map(|_| (rng.normal() * sd) as f32).collect();
    // Random popularity ranks; Zipf weights.
    let mut rank: Vec<usize> = (0..ni).collect();
    for i in (1..ni).rev() {
        rank.swap(i, rng.below(i + 1));
    }
    let log_pop: Vec<f32> = rank
        .iter()
        .map(|&r| (-cfg.zipf * ((r + 1) as f64).ln()) as f32)
        .collect();
    let fresh: Vec<bool> = (0..ni).map(|_| rng.unif() < cfg.fresh_share).collect();
    let oracle = Oracle {
        dim: d,
        user_factors: uf,
        item_factors: itf,
        log_pop,
        beta: cfg.pop_bias as f32,
        tau0: cfg.affinity_temperature as f32,
    };

    // CDFs of pop^β over the non-fresh items (train) and all items (test).
    let cdf = |keep: &dyn Fn(usize) -> bool| -> (Vec<f64>, Vec<u32>) {
        let idx: Vec<u32> = (0..ni as u32).filter(|&i| keep(i as usize)).collect();
        let mut acc = 0.0;
        let c = idx
            .iter()
            .map(|&i| {
                acc += (cfg.pop_bias * oracle.log_pop[i as usize] as f64).exp();
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
            .map(|&i| {
                (oracle.score(u, i as usize) - oracle.beta * oracle.log_pop[i as usize]) as f64
            })
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
    // Interleave users in log order (a stream, not user by user).
    for i in (1..train.len()).rev() {
        train.swap(i, rng.below(i + 1));
    }

    // Features: id, and noisy bucketed projections of the factors.
    let projections: Vec<f32> = (0..cfg.projections * d)
        .map(|_| rng.normal() as f32)
        .collect();
    let featurize = |rng: &mut Rng, field: u64, id: usize, f: &[f32]| -> Vec<u64> {
        let mut out = vec![feature(field, id as u64)];
        for p in 0..cfg.projections {
            let z: f64 = f
                .iter()
                .zip(&projections[p * d..(p + 1) * d])
                .map(|(a, b)| (a * b) as f64)
                .sum::<f64>()
                / sd
                + cfg.feature_noise * rng.normal();
            let bucket =
                (((z / (1.0 + cfg.feature_noise) + 2.0) / 4.0 * cfg.feature_buckets as f64).floor()
                    as i64)
                    .clamp(0, cfg.feature_buckets as i64 - 1);
            out.push(feature(field + 1 + p as u64, bucket as u64));
        }
        out
    };
    let user_feats = (0..nu)
        .map(|u| featurize(&mut rng, 100, u, &oracle.user_factors[u * d..(u + 1) * d]))
        .collect();
    let item_feats = (0..ni)
        .map(|i| featurize(&mut rng, 200, i, &oracle.item_factors[i * d..(i + 1) * d]))
        .collect();
    let test = drop_seen_test_pairs(&train, test);
    Dataset {
        n_users: nu,
        n_items: ni,
        user_feats,
        item_feats,
        train,
        test,
        fresh,
        oracle: Some(oracle),
    }
}

/// The test pairs whose item is not among the same user's training items.
/// Evaluation ranks every item but the user's training items
/// (`eval::evaluate`), so such a pair could never be hit: ~7% of the
/// synthetic world's test pairs before issue #14 counted as certain misses.
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
        oracle: None,
    })
}
