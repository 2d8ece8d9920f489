//! The synthetic worlds (the paper world's mechanism, standardised content
//! features), per-field pooling, the metrics on a hand-computed case, and
//! the baselines.

use mixneg_train::data::{self, Dataset, SynthConfig, World, feature, feature_field};
use mixneg_train::{eval, tower};
use std::collections::HashMap;

fn paper(s_bad: f64, seed: u64) -> Dataset {
    let cfg = SynthConfig {
        world: World::Paper,
        users: 800,
        items: 4000,
        train_per_user: 25,
        bad_share: s_bad,
        ..Default::default()
    };
    data::synthetic(&cfg, seed)
}

fn counts(d: &Dataset) -> Vec<u32> {
    let mut c = vec![0u32; d.n_items];
    d.train.iter().for_each(|&(_, i)| c[i as usize] += 1);
    c
}

#[test]
fn paper_world_has_the_papers_mechanism() {
    let d = paper(0.3, 5);
    let o = d.oracle.as_ref().unwrap();
    let n = d.n_items as f64;
    let bad: Vec<usize> = (0..d.n_items).filter(|&i| d.low_quality[i]).collect();
    let good: Vec<usize> = (0..d.n_items).filter(|&i| !d.low_quality[i]).collect();
    // A share s_bad of the items is low-quality (binomial sd ≈ 0.007).
    let share = bad.len() as f64 / n;
    assert!((share - 0.3).abs() < 0.03, "bad share {share}");
    // Exposed like the others: the exposure term β·log e = bias + Δ·bad has
    // the same mean for bad and good items (sd of the mean ≈ 0.03 nats).
    let expo = |i: usize| (o.train_bias[i] + if d.low_quality[i] { 3.0 } else { 0.0 }) as f64;
    let mean = |v: &[usize]| v.iter().map(|&i| expo(i)).sum::<f64>() / v.len() as f64;
    assert!(
        (mean(&bad) - mean(&good)).abs() < 0.2,
        "{} vs {}",
        mean(&bad),
        mean(&good)
    );
    // But rarely chosen: e^-3 ≈ 0.05 as many interactions, mostly 0–3 each.
    let c = counts(&d);
    let per = |v: &[usize]| v.iter().map(|&i| c[i] as f64).sum::<f64>() / v.len() as f64;
    let ratio = per(&bad) / per(&good);
    assert!(ratio < 0.15, "bad/good interactions {ratio}");
    let sparse = bad.iter().filter(|&&i| c[i] <= 3).count() as f64 / bad.len() as f64;
    assert!(
        sparse > 0.8,
        "share of bad items with ≤ 3 interactions {sparse}"
    );
    // Content is shared: the category (field 201) shares of bad and good
    // items agree within sampling noise (20 categories, ~1200 bad items).
    let cat_share = |v: &[usize]| {
        let mut h: HashMap<u64, f64> = HashMap::new();
        for &i in v {
            let f = d.item_feats[i]
                .iter()
                .find(|&&f| feature_field(f) == 201)
                .unwrap();
            *h.entry(*f).or_default() += 1.0 / v.len() as f64;
        }
        h
    };
    let (cb, cg) = (cat_share(&bad), cat_share(&good));
    assert_eq!(cg.len(), 20);
    for (k, g) in &cg {
        let b = cb.get(k).copied().unwrap_or(0.0);
        assert!((b - g).abs() < 0.035, "category share {b} vs {g}");
    }
    // Fresh items: good, never in the training logs, ~3% of the corpus,
    // and in the test law with less exposure.
    let fresh: Vec<usize> = (0..d.n_items).filter(|&i| d.fresh[i]).collect();
    assert!(!fresh.is_empty() && (fresh.len() as f64 / n) < 0.05);
    assert!(fresh.iter().all(|&i| !d.low_quality[i] && c[i] == 0));
    assert!(fresh.iter().all(|&i| o.test_bias[i] < o.train_bias[i]));
    // Deterministic in the seed.
    assert_eq!(paper(0.3, 5).train, d.train);
    assert_ne!(paper(0.3, 6).train, d.train);
}

#[test]
fn null_world_has_no_low_quality_items_and_the_ceiling_beats_popularity() {
    let d = paper(0.0, 2);
    assert!(d.low_quality.iter().all(|&b| !b));
    let pop = mixneg_train::popularity_metrics(&d);
    let ceil = mixneg_train::ceiling_metrics(&d).unwrap();
    let planted = mixneg_train::oracle_metrics(&d).unwrap();
    assert!(
        ceil.recall[2] > pop.recall[2] + 0.05,
        "ceiling {} vs popularity {}",
        ceil.recall[2],
        pop.recall[2]
    );
    // The planted model ranks by log P: its top K holds the most true mass
    // any ranking can (up to f32 ties), and mass is a probability.
    for q in 0..3 {
        assert!(planted.true_mass[q] + 1e-6 >= ceil.true_mass[q], "{q}");
        assert!(planted.true_mass[q] + 1e-6 >= pop.true_mass[q], "{q}");
        assert!(planted.true_mass[q] <= 1.0 + 1e-6);
    }
    assert!(planted.true_mass[0] < planted.true_mass[2]);
}

#[test]
fn projection_features_fill_every_bucket_equally() {
    // A clamp instead of equal-frequency cuts puts ~58% of the values into
    // the two edge buckets.
    let cfg = SynthConfig {
        users: 2000,
        items: 3000,
        ..Default::default()
    };
    for d in [data::synthetic(&cfg, 1), paper(0.3, 1)] {
        for feats in [&d.user_feats, &d.item_feats] {
            let rows = feats.len();
            let mut per_field: HashMap<u64, HashMap<u64, usize>> = HashMap::new();
            for f in feats.iter() {
                for &h in f {
                    let fl = feature_field(h);
                    if (101..=108).contains(&fl) || (210..=217).contains(&fl) {
                        *per_field.entry(fl).or_default().entry(h).or_default() += 1;
                    }
                }
            }
            assert_eq!(per_field.len(), 8);
            for (field, buckets) in &per_field {
                assert_eq!(buckets.len(), 8, "field {field}");
                for &c in buckets.values() {
                    assert!(c.abs_diff(rows / 8) <= 1, "field {field}: {c} of {rows}");
                }
            }
        }
    }
    // And the buckets follow the value: ranks, not a clamp of the scale.
    let b = data::equal_frequency_buckets(&[10.0, -3.0, 1e6, 0.5], 2);
    assert_eq!(b, vec![1, 0, 1, 0]);
}

#[test]
fn each_field_is_pooled_on_its_own() {
    let id = feature(200, 7);
    let genres: Vec<u64> = (0..5).map(|g| feature(201, g)).collect();
    let one = tower::pool_weights(&[id, genres[0]], 1 << 20);
    let five = tower::pool_weights(&[&[id][..], &genres].concat(), 1 << 20);
    // The id weighs 1 whatever the number of genres; genres share 1.
    assert_eq!(one[0].1, 1.0);
    assert_eq!(five[0].1, 1.0);
    assert_eq!(one[1].1, 1.0);
    assert!(five[1..].iter().all(|&(_, w)| (w - 0.2).abs() < 1e-7));
    assert_eq!(one[0].0, (id % (1 << 20)) as usize);
    // The field tag survives hashing and does not collide across fields.
    assert_eq!(feature_field(id), 200);
    assert_ne!(
        feature(200, 1) & ((1 << 48) - 1),
        feature(201, 1) & ((1 << 48) - 1)
    );
}

/// Two users, 120 items, scores s_i = 1000 − i for both (ties impossible).
fn hand_case() -> (Dataset, Vec<f32>) {
    let ni = 120;
    let mut low_quality = vec![false; ni];
    for i in [3, 5, 7] {
        low_quality[i] = true;
    }
    let mut fresh = vec![false; ni];
    fresh[110] = true;
    let d = Dataset {
        n_users: 2,
        n_items: ni,
        user_feats: vec![vec![]; 2],
        item_feats: vec![vec![]; ni],
        train: vec![(0, 0), (1, 1), (1, 2)],
        test: vec![(0, 5), (0, 60), (1, 110)],
        fresh,
        low_quality,
        oracle: None,
    };
    let scores = (0..ni).map(|i| 1000.0 - i as f32).collect();
    (d, scores)
}

#[test]
fn metrics_match_a_hand_computed_case() {
    let (d, row) = hand_case();
    let cls = eval::classes(&d);
    let m = eval::evaluate(&d, &cls, |users, s| *s = row.repeat(users.len()));
    // User 0 ranks 1, 2, 3, …: item 5 at position 4, item 60 at 59. User 1
    // ranks 0, 3, 4, …: item 110 at position 108.
    assert_eq!(m.recall, [1.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0]);
    let ndcg0 = (1.0 / 6f64.log2()) / (1.0 + 1.0 / 3f64.log2());
    assert!((m.ndcg10 - ndcg0 / 2.0).abs() < 1e-12, "{}", m.ndcg10);
    // Low-quality 3, 5 and 7 are in both top-10s, but 5 is user 0's test
    // item: 2 of 10 and 3 of 10.
    assert!((m.lowq_intrusion[0] - 0.25).abs() < 1e-12);
    assert!((m.lowq_intrusion[2] - 0.025).abs() < 1e-12);
    // Never logged: items other than 0, 1, 2 and not a test item: user 0
    // 10 − 2 − 1 = 7 of 10, user 1 9 of 10.
    assert!((m.unlogged_intrusion[0] - 0.8).abs() < 1e-12);
    // Slices: 5 and 60 tail (found at 100), 110 fresh (missed).
    assert_eq!(m.count_by_class, [0, 2, 1]);
    assert_eq!(m.recall_by_class[1][2], 1.0);
    assert_eq!(m.recall_by_class[2][2], 0.0);
    assert!(m.true_mass[0].is_nan());
    // The popularity list ranks 0, 1, 2 (count 1 each) first, then by index.
    let p = mixneg_train::popularity_metrics(&d);
    assert_eq!(p.recall, [1.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0]);
}
