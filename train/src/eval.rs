//! Full-corpus evaluation: exact brute-force top-K of every test user over
//! every item (fresh items included), their training items excluded.
//!
//! * Recall@K: the share of test interactions whose item is in its user's
//!   top K; also by the test item's slice: *head* (top 10% of items by
//!   training count), *tail* (the other non-fresh items) and *fresh* (new at
//!   test time, [`Dataset::fresh`]).
//! * NDCG@10 with binary relevance (the user's test items), per user.
//! * True mass@K (synthetic worlds): Σ of the planted test law P(j | u) over
//!   the top K, per user — recall without the label noise of a few sampled
//!   test items.
//! * Low-quality intrusion@K: the share of top-K slots taken by low-quality
//!   items ([`Dataset::low_quality`]) that are not among the user's test
//!   items — the "irrelevant items" the MNS paper says batch softmax
//!   retrieves.
//! * Never-logged intrusion@K: the share of top-K slots taken by items with
//!   no training interaction that are not among the user's test items.

use super::data::Dataset;
use crate::linalg::matmul;
use rayon::prelude::*;
use std::collections::HashSet;

/// The K of Recall@K.
pub const KS: [usize; 3] = [10, 50, 100];

/// Item slices for the split metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Top 10% by training count.
    Head,
    /// The other non-fresh items.
    Tail,
    /// New at test time.
    Fresh,
}

/// Head / tail / fresh slice of every item.
pub fn classes(data: &Dataset) -> Vec<Class> {
    let mut count = vec![0u32; data.n_items];
    data.train.iter().for_each(|&(_, i)| count[i as usize] += 1);
    let mut order: Vec<usize> = (0..data.n_items)
        .filter(|&i| !data.fresh[i] && count[i] > 0)
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(count[i]));
    let head: HashSet<usize> = order.iter().take(data.n_items / 10).copied().collect();
    (0..data.n_items)
        .map(|i| {
            if data.fresh[i] {
                Class::Fresh
            } else if head.contains(&i) {
                Class::Head
            } else {
                Class::Tail
            }
        })
        .collect()
}

/// Evaluation results.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Recall@{10, 50, 100} over all test interactions.
    pub recall: [f64; 3],
    /// NDCG@10 (binary relevance), mean over test users.
    pub ndcg10: f64,
    /// True mass@{10, 50, 100}, mean over test users (NaN without a
    /// planted model).
    pub true_mass: [f64; 3],
    /// Recall@{10, 50, 100} of test items in the head, tail and fresh slices.
    pub recall_by_class: [[f64; 3]; 3],
    /// Test interactions per slice.
    pub count_by_class: [usize; 3],
    /// Low-quality intrusion@{10, 50, 100}.
    pub lowq_intrusion: [f64; 3],
    /// Never-logged intrusion@{10, 50, 100}.
    pub unlogged_intrusion: [f64; 3],
}

/// The names of [`Metrics::columns`], for CSV headers and tables.
pub const COLUMNS: [&str; 14] = [
    "recall10",
    "recall50",
    "recall100",
    "ndcg10",
    "mass10",
    "mass50",
    "mass100",
    "head100",
    "tail100",
    "fresh100",
    "lowq10",
    "lowq100",
    "unlogged10",
    "unlogged100",
];

impl Metrics {
    /// The figures reported everywhere (CSV, stdout, experiment tables), in
    /// the order of [`COLUMNS`].
    pub fn columns(&self) -> [f64; 14] {
        let (r, c, m) = (&self.recall, &self.recall_by_class, &self.true_mass);
        let (l, n) = (&self.lowq_intrusion, &self.unlogged_intrusion);
        [
            r[0],
            r[1],
            r[2],
            self.ndcg10,
            m[0],
            m[1],
            m[2],
            c[0][2],
            c[1][2],
            c[2][2],
            l[0],
            l[2],
            n[0],
            n[2],
        ]
    }

    /// The inverse of [`Metrics::columns`] (the figures not in it are 0).
    pub fn from_columns(v: &[f64; 14]) -> Self {
        let mut m = Self {
            recall: [v[0], v[1], v[2]],
            ndcg10: v[3],
            true_mass: [v[4], v[5], v[6]],
            ..Default::default()
        };
        (
            m.recall_by_class[0][2],
            m.recall_by_class[1][2],
            m.recall_by_class[2][2],
        ) = (v[7], v[8], v[9]);
        (m.lowq_intrusion[0], m.lowq_intrusion[2]) = (v[10], v[11]);
        (m.unlogged_intrusion[0], m.unlogged_intrusion[2]) = (v[12], v[13]);
        m
    }

    /// One line: recall, NDCG, true mass, slices and intrusions.
    pub fn summary(&self) -> String {
        let v = self.columns();
        let mass = if v[6].is_nan() {
            String::new()
        } else {
            format!("  mass@10/100 {:.4} {:.4}", v[4], v[6])
        };
        format!(
            "R@10/50/100 {:.4} {:.4} {:.4}  NDCG@10 {:.4}{mass}  R@100 head/tail/fresh {:.4} {:.4} {:.4}  low-q@10/100 {:.3} {:.3}  unlogged@10/100 {:.3} {:.3}",
            v[0], v[1], v[2], v[3], v[7], v[8], v[9], v[10], v[11], v[12], v[13]
        )
    }
}

/// Per-user sums.
#[derive(Clone, Copy, Default)]
struct Acc {
    hits: [f64; 3],
    hits_by_class: [[f64; 3]; 3],
    tests_by_class: [usize; 3],
    tests: usize,
    users: usize,
    ndcg: f64,
    mass: [f64; 3],
    lowq: [f64; 3],
    unlogged: [f64; 3],
}

fn merge(a: Acc, b: Acc) -> Acc {
    let mut s = a;
    for q in 0..3 {
        s.hits[q] += b.hits[q];
        s.tests_by_class[q] += b.tests_by_class[q];
        s.mass[q] += b.mass[q];
        s.lowq[q] += b.lowq[q];
        s.unlogged[q] += b.unlogged[q];
        for c in 0..3 {
            s.hits_by_class[c][q] += b.hits_by_class[c][q];
        }
    }
    s.tests += b.tests;
    s.users += b.users;
    s.ndcg += b.ndcg;
    s
}

/// Evaluate rankings given by `score_block(users, scores)`, which writes
/// the scores of every item (users.len() × n_items) into `scores`, for the
/// test users (in blocks), excluding each user's training items. Ties rank
/// the lower item index first. The score and probability buffers are kept
/// across blocks and the candidate lists across a worker's users, so that
/// evaluating does not allocate and page-fault them afresh every block.
pub fn evaluate<F>(data: &Dataset, cls: &[Class], mut score_block: F) -> Metrics
where
    F: FnMut(&[u32], &mut Vec<f32>),
{
    let kmax = KS[2];
    let mut train_of: Vec<Vec<u32>> = vec![vec![]; data.n_users];
    let mut logged = vec![false; data.n_items];
    data.train.iter().for_each(|&(u, i)| {
        train_of[u as usize].push(i);
        logged[i as usize] = true;
    });
    let mut test_of: Vec<Vec<u32>> = vec![vec![]; data.n_users];
    data.test
        .iter()
        .for_each(|&(u, i)| test_of[u as usize].push(i));
    let users: Vec<u32> = (0..data.n_users as u32)
        .filter(|&u| !test_of[u as usize].is_empty())
        .collect();
    let ni = data.n_items;
    let (mut scores, mut probs_buf) = (vec![], vec![]);
    let total = users
        .chunks(256)
        .map(|blk| {
            score_block(blk, &mut scores);
            assert_eq!(
                scores.len(),
                blk.len() * ni,
                "score_block wrote the wrong size"
            );
            let probs = data.oracle.as_ref().map(|o| {
                o.test_probs(blk, &mut probs_buf);
                &probs_buf
            });
            let scores = &scores;
            blk.par_iter()
                .enumerate()
                .map_init(Vec::new, |cand: &mut Vec<(f32, u32)>, (bi, &u)| {
                    let mut acc = Acc {
                        users: 1,
                        ..Default::default()
                    };
                    let row = &scores[bi * ni..(bi + 1) * ni];
                    // Training items score −∞ and are dropped after the
                    // selection (kk leaves room for them).
                    let seen = &train_of[u as usize];
                    cand.clear();
                    cand.extend((0..ni as u32).map(|i| (row[i as usize], i)));
                    seen.iter()
                        .for_each(|&i| cand[i as usize].0 = f32::NEG_INFINITY);
                    let kk = (kmax + seen.len()).min(cand.len());
                    let order =
                        |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
                    if kk < cand.len() {
                        cand.select_nth_unstable_by(kk, order);
                    }
                    cand.truncate(kk);
                    cand.retain(|(_, i)| !seen.contains(i));
                    cand.sort_by(order);
                    cand.truncate(kmax);
                    let tests: HashSet<u32> = test_of[u as usize].iter().copied().collect();
                    for &t in &test_of[u as usize] {
                        let c = cls[t as usize] as usize;
                        acc.tests_by_class[c] += 1;
                        acc.tests += 1;
                        let pos = cand.iter().position(|&(_, i)| i == t);
                        for (q, &k) in KS.iter().enumerate() {
                            if pos.is_some_and(|p| p < k) {
                                acc.hits[q] += 1.0;
                                acc.hits_by_class[c][q] += 1.0;
                            }
                        }
                    }
                    let gain = |r: usize| 1.0 / ((r + 2) as f64).log2();
                    let dcg: f64 = cand
                        .iter()
                        .take(10)
                        .enumerate()
                        .filter(|(_, (_, i))| tests.contains(i))
                        .map(|(r, _)| gain(r))
                        .sum();
                    let idcg: f64 = (0..tests.len().min(10)).map(gain).sum();
                    acc.ndcg = dcg / idcg;
                    for (q, &k) in KS.iter().enumerate() {
                        let top = &cand[..k.min(cand.len())];
                        let irrelevant = |pred: &dyn Fn(usize) -> bool| {
                            top.iter()
                                .filter(|&&(_, i)| pred(i as usize) && !tests.contains(&i))
                                .count() as f64
                                / k as f64
                        };
                        acc.lowq[q] = irrelevant(&|i| data.low_quality[i]);
                        acc.unlogged[q] = irrelevant(&|i| !logged[i]);
                        acc.mass[q] = match &probs {
                            Some(p) => top
                                .iter()
                                .map(|&(_, i)| p[bi * ni + i as usize] as f64)
                                .sum(),
                            None => f64::NAN,
                        };
                    }
                    acc
                })
                // Collected in user order and summed in that order: the
                // metrics do not depend on how rayon split the work.
                .collect::<Vec<Acc>>()
                .into_iter()
                .fold(Acc::default(), merge)
        })
        .fold(Acc::default(), merge);
    let nu = total.users.max(1) as f64;
    let mut m = Metrics {
        count_by_class: total.tests_by_class,
        ndcg10: total.ndcg / nu,
        ..Default::default()
    };
    for q in 0..3 {
        m.recall[q] = total.hits[q] / total.tests.max(1) as f64;
        m.true_mass[q] = total.mass[q] / nu;
        m.lowq_intrusion[q] = total.lowq[q] / nu;
        m.unlogged_intrusion[q] = total.unlogged[q] / nu;
        for c in 0..3 {
            m.recall_by_class[c][q] =
                total.hits_by_class[c][q] / total.tests_by_class[c].max(1) as f64;
        }
    }
    m
}

/// Scores of a two-tower model into `s`: ⟨user embedding, item embedding⟩
/// for a block of users against every item embedding (`items`: n_items × d).
pub fn dot_scores(
    user_emb: &[f32],
    items: &[f32],
    rows: usize,
    n_items: usize,
    d: usize,
    s: &mut Vec<f32>,
) {
    s.resize(rows * n_items, 0.0);
    // The product overwrites every element.
    matmul(rows, n_items, d, user_emb, items, true, s);
}
