//! Property tests (proptest): random shapes (1 and primes included), options
//! (temperature, correct_positive, ids with many duplicates, weights with
//! zeros) and value scales; every CPU path agrees with the f64 reference
//! under the tolerance policy, the loss is the weighted mean of the row
//! losses, and the gradient sum rule holds: every row of G sums to zero
//! (Σ_j (P_ij − δ_ij) = 0), so Σ_j ∂L/∂v_j = (1/τ) Σ_i (Σ_j G_ij) u_i = 0.

mod common;
use common::*;
use mixneg::{Backend, CpuBackend, Kernel, MnsOutput, reference};
use proptest::prelude::*;

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(1usize), Just(2), Just(3), Just(7), Just(13), 1usize..40],
        prop_oneof![Just(0usize), Just(1), Just(11), Just(31), 0usize..90],
        prop_oneof![Just(1usize), Just(3), Just(8), Just(17), 1usize..70],
        (any::<u64>(), prop_oneof![Just(0.01f32), Just(0.05), Just(0.3), Just(1.0), Just(7.0)]),
        (any::<bool>(), 0usize..4, any::<bool>(), prop_oneof![Just(0.1f32), Just(1.0), Just(10.0)]),
        prop_oneof![Just(0.0f64), Just(1.0), 0.0f64..1.0],
    )
        .prop_map(|(b, bp, k, (seed, tau), (cp, dup, weights, scale), at)| {
            let mut c = random_case(seed, b, bp, k);
            // The positive offset anywhere in 0..=B′ (both ends included).
            c.positive_offset = (at * bp as f64).round() as usize;
            c.temperature = tau;
            c.correct_positive = cp;
            c.u.iter_mut().for_each(|x| *x *= scale);
            // ids: none, as generated, few distinct values, or all equal.
            c.ids = match dup {
                0 => None,
                1 => c.ids.take(),
                2 => Some((0..b + bp).map(|j| (j % 3) as i64).collect()),
                _ => Some(vec![5; b + bp]),
            };
            if weights {
                c.row_weight = Some((0..b).map(|i| if i % 3 == 0 { 0.0 } else { (i % 5) as f32 * 0.7 }).collect());
            }
            c.name = format!("prop(B={b}, B'={bp}, K={k}, o={}, tau={tau}, cp={cp}, dup={dup}, w={weights}, scale={scale}, seed={seed})", c.positive_offset);
            c
        })
}

fn paths() -> Vec<CpuBackend> {
    Kernel::ALL
        .into_iter()
        .filter_map(|k| CpuBackend::with_kernel(k).ok())
        .flat_map(|b| {
            [
                b.clone().with_threads(1).unwrap(),
                b.with_threads(2).unwrap(),
            ]
        })
        .collect()
}

/// 1 000 cases (or `PROPTEST_CASES`) from a fixed seed (or
/// `PROPTEST_RNG_SEED`): CI is reproducible, and exploring more is one
/// environment variable away.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 1000;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = proptest::test_runner::RngSeed::Fixed(0x6d69_786e_6567);
    }
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_path_agrees_with_the_reference(case in case_strategy()) {
        let want = reference::mns_loss_f64(&case.input()).unwrap();
        for be in paths() {
            let mut out = MnsOutput::filled(case.b(), case.n(), case.k, f32::NAN);
            be.mns_loss_into(&case.input(), &mut out).unwrap();
            assert_output(&case, &out, want.loss, &want.d_u, &want.d_v, &want.lse);
            // L = (1/B) Σ_i w_i ℓ_i.
            assert_loss_consistent(&case, out.loss, &out.row_loss);
            // Σ_j dV_j = 0, to the rounding of a sum of N·K terms of size |dV|.
            let k = case.k;
            let scale: f64 = out.d_v.iter().map(|&x| (x as f64).abs()).sum::<f64>() / k as f64;
            for c in 0..k {
                let s: f64 = (0..case.n()).map(|j| out.d_v[j * k + c] as f64).sum();
                prop_assert!(s.abs() <= 1e-5 * scale + 1e-30, "{}: Σ_j dV[j][{c}] = {s} (scale {scale})", case.name);
            }
        }
    }
}
