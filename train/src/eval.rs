//! Full-corpus evaluation: exact brute-force top-K of every test user over
//! every item (fresh items included), their training items excluded.
//!
//! * Recall@K: the share of a user's test items found in their top K,
//!   averaged over test interactions; also split by the test item's class:
//!   *head* (top 10% of items by training count), *tail* (the rest of the
//!   logged items) and *fresh* (never logged).
//! * Tail intrusion@K: the share of top-K slots taken by tail or fresh items
//!   that are not among the user's test items — the "irrelevant long-tail
//!   items" the MNS paper says batch softmax retrieves.

use super::data::Dataset;
use super::tower::matmul;
use rayon::prelude::*;
use std::collections::HashSet;

/// The K of Recall@K.
pub const KS: [usize; 3] = [10, 50, 100];

/// Item classes for the split metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Top 10% by training count.
    Head,
    /// The other logged items.
    Tail,
    /// Never logged.
    Fresh,
}

/// Head / tail / fresh class of every item.
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
            if data.fresh[i] || count[i] == 0 {
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
    /// The same, for test items in the head, tail and fresh classes.
    pub recall_by_class: [[f64; 3]; 3],
    /// Test interactions per class.
    pub count_by_class: [usize; 3],
    /// Tail intrusion@{10, 50, 100}.
    pub tail_intrusion: [f64; 3],
}

impl Metrics {
    /// The figures reported everywhere (CSV, stdout, experiment table), in
    /// order: Recall@10, @50, @100; Recall@100 of head, tail and fresh test
    /// items; tail intrusion@10 and @100.
    pub fn headline(&self) -> [f64; 8] {
        let (r, c, t) = (&self.recall, &self.recall_by_class, &self.tail_intrusion);
        [r[0], r[1], r[2], c[0][2], c[1][2], c[2][2], t[0], t[2]]
    }
}

/// Per-user sums: (hits per K, hits per class per K, tests per class,
/// intrusion share per K, tests).
type Acc = ([f64; 3], [[f64; 3]; 3], [usize; 3], [f64; 3], usize);

fn merge(a: Acc, b: Acc) -> Acc {
    let mut s = a;
    for q in 0..3 {
        s.0[q] += b.0[q];
        s.3[q] += b.3[q];
        s.2[q] += b.2[q];
        for c in 0..3 {
            s.1[c][q] += b.1[c][q];
        }
    }
    s.4 += b.4;
    s
}

/// Evaluate rankings given by `score(user, items) -> scores of every item`
/// for the test users (batched), excluding each user's training items.
pub fn evaluate<F>(data: &Dataset, cls: &[Class], score_block: F) -> Metrics
where
    F: Fn(&[u32]) -> Vec<f32> + Sync,
{
    let kmax = KS[2];
    let mut train_of: Vec<Vec<u32>> = vec![vec![]; data.n_users];
    data.train
        .iter()
        .for_each(|&(u, i)| train_of[u as usize].push(i));
    let mut test_of: Vec<Vec<u32>> = vec![vec![]; data.n_users];
    data.test
        .iter()
        .for_each(|&(u, i)| test_of[u as usize].push(i));
    let users: Vec<u32> = (0..data.n_users as u32)
        .filter(|&u| !test_of[u as usize].is_empty())
        .collect();
    let ni = data.n_items;
    let zero = || -> Acc { ([0.0; 3], [[0.0; 3]; 3], [0; 3], [0.0; 3], 0) };
    let total = users
        .chunks(256)
        .map(|blk| {
            let scores = score_block(blk);
            blk.par_iter()
                .enumerate()
                .map(|(bi, &u)| {
                    let mut acc = zero();
                    let row = &scores[bi * ni..(bi + 1) * ni];
                    let seen: HashSet<u32> = train_of[u as usize].iter().copied().collect();
                    let mut cand: Vec<(f32, u32)> = (0..ni as u32)
                        .filter(|i| !seen.contains(i))
                        .map(|i| (row[i as usize], i))
                        .collect();
                    let kk = kmax.min(cand.len());
                    if kk < cand.len() {
                        cand.select_nth_unstable_by(kk, |a, b| {
                            b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
                        });
                    }
                    cand.truncate(kk);
                    cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    let tests: HashSet<u32> = test_of[u as usize].iter().copied().collect();
                    for &t in &test_of[u as usize] {
                        let c = cls[t as usize] as usize;
                        acc.2[c] += 1;
                        acc.4 += 1;
                        let pos = cand.iter().position(|&(_, i)| i == t);
                        for (q, &k) in KS.iter().enumerate() {
                            if pos.is_some_and(|p| p < k) {
                                acc.0[q] += 1.0;
                                acc.1[c][q] += 1.0;
                            }
                        }
                    }
                    for (q, &k) in KS.iter().enumerate() {
                        let intr = cand
                            .iter()
                            .take(k)
                            .filter(|&&(_, i)| {
                                cls[i as usize] != Class::Head && !tests.contains(&i)
                            })
                            .count();
                        acc.3[q] = intr as f64 / k as f64;
                    }
                    acc
                })
                // Collected in user order and summed in that order: the
                // metrics do not depend on how rayon split the work.
                .collect::<Vec<Acc>>()
                .into_iter()
                .fold(zero(), merge)
        })
        .fold(zero(), merge);
    let mut m = Metrics {
        count_by_class: total.2,
        ..Default::default()
    };
    for q in 0..3 {
        m.recall[q] = total.0[q] / total.4.max(1) as f64;
        m.tail_intrusion[q] = total.3[q] / users.len().max(1) as f64;
        for c in 0..3 {
            m.recall_by_class[c][q] = total.1[c][q] / total.2[c].max(1) as f64;
        }
    }
    m
}

/// Scores of a two-tower model: ⟨user embedding, item embedding⟩ for a
/// block of users against every item embedding (`items`: n_items × d).
pub fn dot_scores(
    user_emb: &[f32],
    items: &[f32],
    rows: usize,
    n_items: usize,
    d: usize,
) -> Vec<f32> {
    let mut s = vec![0.0f32; rows * n_items];
    matmul(rows, n_items, d, user_emb, items, true, &mut s);
    s
}
