//! Every fast path against the f64 reference, on a sweep of awkward shapes
//! (B = 1, K = 1, K and N not multiples of any tile, B′ = 0) and on inputs
//! that exercise the numerics.

mod common;
use common::*;
use mixneg::{Backend, CpuBackend, Floats, Kernel, MnsInput, MnsOutput, reference};

/// Every CPU kernel this machine can run, each on 1, 2 and 3 threads (the
/// chunk split, and so the dV reduction, changes with the thread count).
fn cpu_paths() -> Vec<CpuBackend> {
    let mut v = vec![];
    for k in Kernel::ALL {
        match CpuBackend::with_kernel(k) {
            Ok(b) => {
                for t in [1, 2, 3] {
                    v.push(b.clone().with_threads(t).unwrap());
                }
            }
            Err(e) => skip(&format!("kernel {}: {e}", k.name())),
        }
    }
    v
}

/// Run `case` through every CPU path with NaN-poisoned outputs and compare
/// with the f64 reference: loss, d_u, d_v, lse, row_loss, the loss as the
/// weighted mean of the row losses, and top-1 where it is not a near-tie.
fn check_case(case: &Case) {
    check_on(case, &cpu_paths());
}

/// [`check_case`] on the given CPU paths.
fn check_on(case: &Case, paths: &[CpuBackend]) {
    let want = reference::mns_loss_f64(&case.input()).unwrap();
    let _ = magnitudes(case); // computed once, carried by the clones below
    for be in paths {
        let mut out = MnsOutput::filled(case.b(), case.n(), case.k, f32::NAN);
        be.mns_loss_into(&case.input(), &mut out).unwrap();
        let ctx = Case {
            name: format!("{} [{} x{}]", case.name, be.name(), be.threads()),
            ..case.clone()
        };
        assert_output(&ctx, &out, want.loss, &want.d_u, &want.d_v, &want.lse);
        assert_tensor("row_loss", &ctx, &out.row_loss, &want.row_loss, 1);
        assert_loss_consistent(&ctx, out.loss, &out.row_loss);
        // top-1 may legitimately flip where the positive ties the best negative
        // to within the logit error; elsewhere it must agree.
        let tol = logit_tolerance(case);
        for i in 0..case.b() {
            if out.top1[i] != want.top1[i] {
                let s_ii = want.lse[i] - want.row_loss[i];
                let best_other = logits_row_max_other(case, i);
                assert!(
                    (s_ii - best_other).abs() <= tol,
                    "{}: top1[{i}] differs with margin {}",
                    ctx.name,
                    s_ii - best_other
                );
            }
        }
    }
}

/// max over kept j ≠ i of s_ij, in f64 (for judging top-1 near-ties).
fn logits_row_max_other(case: &Case, i: usize) -> f64 {
    let (k, pos) = (case.k, i + case.positive_offset);
    let u = &case.u[i * k..(i + 1) * k];
    (0..case.n())
        .filter(|&j| j != pos && case.ids.as_ref().is_none_or(|ids| ids[j] != ids[pos]))
        .map(|j| {
            let d: f64 = u
                .iter()
                .zip(&case.v[j * k..(j + 1) * k])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            d / case.temperature as f64 - case.log_q[j] as f64
        })
        .fold(f64::NEG_INFINITY, f64::max)
}

/// The positive of query i is candidate i + o: offsets at both ends and in
/// between, on shapes with tails, with and without duplicate ids (removed
/// relative to the positive's id), both diagonal conventions and weights.
#[test]
fn positive_offset_sweep() {
    for (b, bp, k) in [
        (1, 1, 1),
        (3, 7, 5),
        (17, 203, 9),
        (64, 64, 64),
        (113, 1000, 17),
    ] {
        for o in [0, 1, bp / 3, bp - 1, bp] {
            for (cp, dup) in [(true, false), (false, true), (true, true)] {
                let mut c = random_case(9, b, bp, k);
                c.positive_offset = o;
                c.correct_positive = cp;
                if dup {
                    c.ids = Some((0..b + bp).map(|j| (j % 4) as i64).collect());
                    c.row_weight = Some((0..b).map(|i| (i % 3) as f32).collect());
                }
                c.name = format!("offset {o} of {bp} (B={b}, K={k}, cp={cp}, dup={dup})");
                check_case(&c);
            }
        }
    }
}

#[test]
fn shape_sweep() {
    // Awkward sizes: full product of B and B′ at a few K, and the
    // full K list at a few (B, B′): 6·5·3 + 11·4 = 134 shapes × 9 paths.
    // K = 17, 40, 65 pad to 32, 48, 80 for AVX-512 (a lone 16-lane K tile
    // after the 32-wide ones), K = 9, 65 to 16, 72 for the 8-lane kernels.
    let bs = [1, 2, 3, 17, 64, 113];
    let bps = [0, 1, 7, 203, 1000];
    let ks = [1, 3, 7, 8, 9, 17, 31, 40, 64, 65, 128];
    let mut n = 0;
    for &b in &bs {
        for &bp in &bps {
            for &k in &[1, 9, 65] {
                check_case(&random_case(1, b, bp, k));
                n += 1;
            }
        }
    }
    for &k in &ks {
        for (b, bp) in [(1, 0), (17, 7), (64, 203), (113, 1000)] {
            check_case(&random_case(2, b, bp, k));
            n += 1;
        }
    }
    eprintln!("{n} shapes checked");
}

#[test]
fn realistic_shape_with_options() {
    // A trainer-like batch: B = 512, B′ = 1536, K = 64, ids with duplicates,
    // weights with zeros, both diagonal conventions, three temperatures.
    for (t, cp) in [(0.05, true), (1.0, false), (0.02, true)] {
        let mut c = random_case(3, 512, 1536, 64);
        c.temperature = t;
        c.correct_positive = cp;
        c.row_weight = Some(
            (0..512)
                .map(|i| {
                    if i % 7 == 0 {
                        0.0
                    } else {
                        0.5 + (i % 5) as f32
                    }
                })
                .collect(),
        );
        c.name = format!("realistic(tau={t}, correct_positive={cp}, weights)");
        check_case(&c);
    }
}

#[test]
fn no_ids_and_uncorrected_positive() {
    let mut c = random_case(4, 37, 91, 23);
    c.ids = None;
    c.correct_positive = false;
    c.name = "no ids, uncorrected positive".into();
    check_case(&c);
}

#[test]
fn huge_logits() {
    // |s| ~ 10³: embeddings of norm ~30, τ = 1. exp of unshifted logits would
    // overflow f32; the max-shift must keep everything finite.
    let mut c = random_case(5, 33, 70, 16);
    c.u.iter_mut().for_each(|x| *x *= 30.0);
    c.v.iter_mut().for_each(|x| *x *= 30.0);
    c.temperature = 1.0;
    c.name = "huge logits".into();
    assert!(c.logit_scale() > 500.0);
    check_case(&c);
}

#[test]
fn tiny_sampling_probabilities() {
    // Q = 1e-9 for a third of the candidates: log_q = −20.7 lifts them by 20.7.
    let mut c = random_case(6, 20, 60, 12);
    for (j, q) in c.log_q.iter_mut().enumerate() {
        if j % 3 == 0 {
            *q = (1e-9f64).ln() as f32;
        }
    }
    c.name = "tiny Q".into();
    check_case(&c);
}

#[test]
fn heavy_duplicate_ids() {
    // Three distinct ids over 90 candidates: most of every row is removed.
    let mut c = random_case(7, 30, 60, 8);
    c.ids = Some((0..90).map(|j| (j % 3) as i64).collect());
    c.name = "heavy duplicates".into();
    check_case(&c);
}

#[test]
fn row_with_everything_but_the_positive_removed() {
    // B = 1 and every candidate carries the query's positive id: the only
    // kept logit is the positive, so lse = s_00, ℓ = 0 and the gradient is 0.
    let mut c = random_case(8, 1, 10, 6);
    c.ids = Some(vec![42; 11]);
    c.name = "all removed but positive".into();
    check_case(&c);
    for be in cpu_paths() {
        let out = be.mns_loss(&c.input()).unwrap();
        assert_eq!(out.row_loss[0], 0.0, "{}", be.name());
        assert!(out.top1[0]);
        assert!(
            out.d_u.iter().chain(&out.d_v).all(|&x| x == 0.0),
            "{}",
            be.name()
        );
    }
}

#[test]
fn every_row_fully_removed() {
    // All ids equal: every row keeps only its positive; loss 0, gradients 0.
    let mut c = random_case(9, 7, 9, 5);
    c.ids = Some(vec![3; 16]);
    for be in cpu_paths() {
        let out = be.mns_loss(&c.input()).unwrap();
        assert_eq!(out.loss, 0.0);
        assert!(out.d_u.iter().chain(&out.d_v).all(|&x| x == 0.0));
        assert!(out.top1.iter().all(|&t| t));
    }
}

#[test]
fn dominating_positive_keeps_relative_accuracy() {
    // s_ii exceeds every other logit by ~25: P_ii = 1 − O(1e-11) and the
    // gradient is tiny. Forming P_ii − 1 in f32 would lose it entirely; the
    // kernel's −Σ′ diagonal keeps it to the usual relative accuracy.
    let (b, bp, k) = (8, 24, 8);
    let mut c = random_case(10, b, bp, k);
    c.temperature = 1.0;
    c.ids = None;
    c.log_q = vec![0.0; b + bp];
    c.u = vec![0.0; b * k];
    c.v = vec![0.0; (b + bp) * k];
    for i in 0..b {
        // Query i and its positive lie on axis i: s_ii = 25 + 0.05 i, s_ij = 0
        // for the other positives.
        c.u[i * k + i] = 5.0;
        c.v[i * k + i] = 5.0 + 0.01 * i as f32;
    }
    for j in b..b + bp {
        // Negatives: 0.3 on one axis, s_ij ∈ {0, 1.5}.
        c.v[j * k + j % k] = 0.3;
    }
    c.name = "dominating positive".into();
    let want = reference::mns_loss_f64(&c.input()).unwrap();
    assert!(want.loss < 1e-8 && want.loss > 0.0, "loss {}", want.loss);
    check_case(&c);
}

#[test]
fn hand_worked_case() {
    // B = 1, N = 2, K = 1, u = [1], v = [[1], [0]], log_q = 0, τ = 1:
    // s = [1, 0], lse = ln(e + 1) = 1.3132617, loss = lse − 1 = 0.3132617,
    // P = [0.7310586, 0.2689414], G = [−0.2689414, 0.2689414],
    // dU = G·V = −0.2689414, dV = Gᵀ·U = [−0.2689414, 0.2689414].
    let (u, v, lq) = ([1.0f32], [1.0f32, 0.0], [0.0f32; 2]);
    let input = mixneg::MnsInput::new(&u, &v, &lq, 1);
    let mut all: Vec<Box<dyn Backend>> = vec![Box::new(mixneg::ReferenceBackend)];
    all.extend(
        cpu_paths()
            .into_iter()
            .map(|b| Box::new(b) as Box<dyn Backend>),
    );
    for be in all {
        let out = be.mns_loss(&input).unwrap();
        approx::assert_relative_eq!(out.loss, 0.313_261_7, max_relative = 1e-6);
        approx::assert_relative_eq!(out.lse[0], 1.313_261_7, max_relative = 1e-6);
        approx::assert_relative_eq!(out.d_u[0], -0.268_941_4, max_relative = 1e-6);
        approx::assert_relative_eq!(out.d_v[0], -0.268_941_4, max_relative = 1e-6);
        approx::assert_relative_eq!(out.d_v[1], 0.268_941_4, max_relative = 1e-6);
        assert!(out.top1[0]);
    }
}

#[test]
fn forced_x86_kernels_really_run() {
    for k in [Kernel::Avx2Fma, Kernel::Avx512] {
        if !k.is_available() {
            skip(&format!("this CPU cannot run the {} kernel", k.name()));
            continue;
        }
        let be = CpuBackend::with_kernel(k).unwrap();
        assert_eq!(be.kernel(), k);
        let before = k.calls_run();
        be.mns_loss(&random_case(11, 12, 12, 8).input()).unwrap();
        assert!(
            k.calls_run() > before,
            "the {} phase entries were not called",
            k.name()
        );
    }
    // What auto-detection must pick, from the CPU's features directly.
    #[cfg(target_arch = "x86_64")]
    let want = if is_x86_feature_detected!("avx512f") {
        Kernel::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Kernel::Avx2Fma
    } else {
        Kernel::Portable
    };
    #[cfg(not(target_arch = "x86_64"))]
    let want = Kernel::Portable;
    assert_eq!(
        Kernel::best(),
        want,
        "auto-detection must pick the best kernel this CPU can run"
    );
}

/// Every output's bit pattern (loss, d_u, d_v, lse), for bit-for-bit checks.
fn output_bits(o: &MnsOutput) -> Vec<u32> {
    [o.loss]
        .into_iter()
        .chain(o.d_u.iter().copied())
        .chain(o.d_v.iter().copied())
        .chain(o.lse.iter().copied())
        .map(f32::to_bits)
        .collect()
}

/// The forward-only call gives the full call's loss, lse, ℓ and top-1 bit for
/// bit (phase A and the row merge are the same code), on every kernel and
/// thread count, with offsets; and it leaves the kept scratch fit for the
/// next full call (a full call after a forward one gives a fresh backend's
/// bits).
#[test]
fn forward_only_is_the_full_call_without_gradients() {
    for (b, bp, k, o) in [
        (1, 0, 1, 0),
        (17, 203, 9, 203),
        (113, 1000, 65, 500),
        (300, 700, 33, 1),
    ] {
        let mut c = random_case(4, b, bp, k);
        c.positive_offset = o;
        for be in cpu_paths() {
            let full = be.mns_loss(&c.input()).unwrap();
            let fwd = be.mns_forward(&c.input()).unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let name = format!("{} x{} ({b}, {bp}, {k}, o={o})", be.name(), be.threads());
            assert_eq!(fwd.loss.to_bits(), full.loss.to_bits(), "{name}: loss");
            assert_eq!(bits(&fwd.lse), bits(&full.lse), "{name}: lse");
            assert_eq!(
                bits(&fwd.row_loss),
                bits(&full.row_loss),
                "{name}: row_loss"
            );
            assert_eq!(fwd.top1, full.top1, "{name}: top1");
            let again = be.mns_loss(&c.input()).unwrap();
            assert_eq!(
                output_bits(&again),
                output_bits(&full),
                "{name}: full call after a forward one"
            );
        }
    }
}

#[test]
fn deterministic_for_a_fixed_thread_count() {
    let c = random_case(12, 300, 700, 33);
    for be in cpu_paths() {
        let a = be.mns_loss(&c.input()).unwrap();
        let b = be.mns_loss(&c.input()).unwrap();
        assert_eq!(
            output_bits(&a),
            output_bits(&b),
            "{} x{}",
            be.name(),
            be.threads()
        );
    }
}

/// A call's workers claim its tasks as they come, so its bits cannot depend
/// on how busy the pool is: calls made from inside a 2-thread pool, several
/// at once (each finding the other worker busy with another call, so that
/// one thread may run all of a call's tasks), and a call while one worker
/// of the pool sleeps, give the bits of a call on an idle pool, and none
/// waits on the other.
#[test]
fn calls_on_a_busy_pool_give_the_bits_of_an_idle_one() {
    let cases = [
        random_case(30, 300, 500, 40),
        random_case(31, 97, 0, 17),
        random_case(32, 130, 382, 64),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for k in Kernel::ALL {
        let Ok(be) = CpuBackend::with_kernel(k) else {
            continue;
        };
        let idle = be.clone().with_threads(2).unwrap();
        let want: Vec<Vec<u32>> = (cases.iter())
            .map(|c| output_bits(&idle.mns_loss(&c.input()).unwrap()))
            .collect();
        // On the pool's workers (the backend without a pool of its own runs
        // on the pool it is called from), three calls per case at once.
        let got: Vec<Vec<u32>> = pool.install(|| {
            use rayon::prelude::*;
            (0..3 * cases.len())
                .into_par_iter()
                .map(|i| output_bits(&be.mns_loss(&cases[i % cases.len()].input()).unwrap()))
                .collect()
        });
        for (i, g) in got.iter().enumerate() {
            assert!(
                *g == want[i % cases.len()],
                "{} busy pool, call {i}",
                be.name()
            );
        }
        let got = pool.install(|| {
            rayon::join(
                || std::thread::sleep(std::time::Duration::from_millis(50)),
                || output_bits(&be.mns_loss(&cases[0].input()).unwrap()),
            )
            .1
        });
        assert!(got == want[0], "{} beside a sleeping worker", be.name());
    }
}

#[test]
fn cache_budget_shrinks_the_block_for_large_n() {
    // N = 300 000 forces row blocks of MB_MIN = 48 rows (far past the L2
    // budget): B = 100 is three blocks, each over several column parts.
    let c = random_case(13, 100, 299_900, 8);
    check_case(&Case {
        name: "large N".into(),
        ..c
    });
}

#[test]
fn kept_scratch_gives_the_bits_of_a_fresh_backend() {
    // A backend reuses its packed copies, dV accumulator and strips between
    // calls (zeroing them). A call after a larger one, whose leftovers fill
    // the padding (K = 17 after K = 64: 15 padding columns per row; N not a
    // multiple of 16 after one that is), must not see them: every result is
    // compared bit for bit with a fresh backend's. The first case is large
    // enough (2000 × 128 packed V) that the next one replaces its buffers
    // instead of keeping them (more than 4× too large). Clones share the
    // scratch and are called from several threads at once.
    let cases = [
        random_case(25, 600, 1400, 128),
        random_case(20, 130, 382, 64),
        random_case(21, 7, 23, 17),
        random_case(22, 1, 0, 1),
        random_case(23, 200, 57, 40),
        random_case(24, 60, 131, 65),
        random_case(20, 130, 382, 64),
        random_case(25, 600, 1400, 128),
    ];
    for be in cpu_paths() {
        let fresh = |c: &Case| {
            let f = CpuBackend::with_kernel(be.kernel())
                .unwrap()
                .with_threads(be.threads())
                .unwrap();
            output_bits(&f.mns_loss(&c.input()).unwrap())
        };
        let want: Vec<Vec<u32>> = cases.iter().map(fresh).collect();
        for (c, w) in cases.iter().zip(&want) {
            let got = output_bits(&be.mns_loss(&c.input()).unwrap());
            assert!(got == *w, "{} reused scratch, {}", be.name(), c.name);
        }
        std::thread::scope(|s| {
            for t in 0..4 {
                let (be, cases, want) = (be.clone(), &cases, &want);
                s.spawn(move || {
                    for round in 0..3 {
                        let i = (t + round) % cases.len();
                        let got = output_bits(&be.mns_loss(&cases[i].input()).unwrap());
                        assert!(
                            got == want[i],
                            "{} concurrent clone, {}",
                            be.name(),
                            cases[i].name
                        );
                    }
                });
            }
        });
        be.release_scratch();
        let got = output_bits(&be.mns_loss(&cases[4].input()).unwrap());
        assert!(got == want[4], "{} after release_scratch", be.name());
    }
}

/// The CPU backends that compute the bf16 tier here (the avx512 kernel on a
/// CPU with AVX512_BF16), on 1, 2 and 3 threads; empty, with a note, where
/// this CPU lacks it.
fn bf16_paths() -> Vec<CpuBackend> {
    let paths: Vec<CpuBackend> = cpu_paths()
        .into_iter()
        .filter(|b| b.supports(mixneg::Precision::Bf16))
        .collect();
    if paths.is_empty() {
        skip("no CPU kernel here computes the bf16 tier (needs AVX512_BF16)");
    }
    paths
}

/// The CPU's bf16 tier against the f64 reference, under the policy of the
/// CUDA tiers: the f32 policy measured against a plain f32 implementation
/// that rounds the same factors to bf16 (`naive_f32` at the case's tier). On
/// the awkward shapes (B = 1, K = 1, odd K, N not a multiple of any tile, an
/// odd row count in a block, B′ = 0), offsets at both ends, without ids and
/// with the uncorrected positive, and with weights.
#[test]
fn bf16_tier_matches_the_reference_on_awkward_shapes() {
    let paths = bf16_paths();
    let mut cases = vec![];
    let more = [
        (113, 1000, 31),
        (70, 30, 130),
        (37, 600, 16),
        (200, 900, 48),
    ];
    for (b, bp, k) in AWKWARD.into_iter().chain(more) {
        cases.push(random_case(31, b, bp, k));
    }
    let mut c = random_case(32, 40, 60, 20);
    c.positive_offset = 60;
    cases.push(c.clone());
    c.positive_offset = 0;
    c.ids = None;
    c.correct_positive = false;
    cases.push(c.clone());
    c.row_weight = Some((0..40).map(|i| (i % 5) as f32 * 0.5).collect());
    cases.push(c);
    for case in cases {
        let case = case.at(mixneg::Precision::Bf16);
        check_on(&case, &paths);
        for be in &paths {
            let full = be.mns_loss(&case.input()).unwrap();
            let fwd = be.mns_forward(&case.input()).unwrap();
            assert_eq!(fwd.lse, full.lse, "{} [{}]", case.name, be.name());
        }
    }
}

/// The bf16 tier is what it says, and the policy sees it: its gradients fail
/// the f32 policy on an ordinary case (so passing its own is not the policy
/// being blind to bf16 rounding), and the F32 tier of the same backend is
/// unchanged by the tier's existence (bit-identical to a fresh backend's).
#[test]
fn bf16_tier_fails_the_f32_policy() {
    let c = random_case(26, 40, 100, 64);
    let want = reference::mns_loss_f64(&c.input()).unwrap();
    for be in bf16_paths() {
        let out = be.mns_loss(&c.at(mixneg::Precision::Bf16).input()).unwrap();
        assert_fails_policy("bf16", &c, &out, &want);
        let f32_after = be.mns_loss(&c.input()).unwrap();
        let fresh = CpuBackend::with_kernel(be.kernel())
            .unwrap()
            .with_threads(be.threads())
            .unwrap();
        assert_eq!(
            output_bits(&f32_after),
            output_bits(&fresh.mns_loss(&c.input()).unwrap())
        );
    }
}

/// Embeddings given as bf16 (their bit patterns, [`Floats::Bf16`]) are the
/// same problem as f32 embeddings holding the same values: bit-identical
/// outputs at the bf16 tier, which reads them as they are, and at the F32
/// tier, which converts them, for bf16 U and V and for each alone, with an
/// offset, weights, duplicate ids and the uncorrected positive, K a
/// multiple of 16 and not; the reference agrees exactly; a non-finite bf16
/// is refused with its index.
#[test]
fn bf16_embeddings_are_their_values() {
    let all = |o: &MnsOutput| {
        let mut bits = output_bits(o);
        bits.extend(o.row_loss.iter().map(|x| x.to_bits()));
        bits.push(o.d_temperature.to_bits());
        (bits, o.top1.clone())
    };
    for (b, bp, k, seed) in [
        (1, 7, 3, 1),
        (17, 203, 9, 2),
        (64, 64, 64, 3),
        (40, 60, 32, 4),
    ] {
        let mut c = random_case(40 + seed, b, bp, k);
        // Values on the bf16 grid (truncated), and their bit patterns.
        let to_bf16 = |x: &mut Vec<f32>| -> Vec<u16> {
            let bits: Vec<u16> = x.iter().map(|a| (a.to_bits() >> 16) as u16).collect();
            *x = bits.iter().map(|&h| mixneg::bf16_to_f32(h)).collect();
            bits
        };
        let (ub, vb) = (to_bf16(&mut c.u), to_bf16(&mut c.v));
        c.positive_offset = bp / 2;
        c.correct_positive = seed % 2 == 0;
        c.row_weight = Some((0..b).map(|i| (i % 3) as f32 * 0.5).collect());
        c.ids = Some((0..b + bp).map(|j| (j % 7) as i64).collect());
        fn with_bf16<'a>(
            x: MnsInput<'a>,
            u: Option<&'a [u16]>,
            v: Option<&'a [u16]>,
        ) -> MnsInput<'a> {
            let mut y = x;
            if let Some(u) = u {
                y.u = Floats::Bf16(u);
            }
            if let Some(v) = v {
                y.v = Floats::Bf16(v);
            }
            y
        }
        let (ub, vb) = (&ub[..], &vb[..]);
        let want_f64 = reference::mns_loss_f64(&c.input()).unwrap();
        for (u, v) in [(true, true), (true, false), (false, true)] {
            let got =
                reference::mns_loss_f64(&with_bf16(c.input(), u.then_some(ub), v.then_some(vb)))
                    .unwrap();
            assert_eq!(
                got.loss.to_bits(),
                want_f64.loss.to_bits(),
                "reference ({u}, {v})"
            );
            assert_eq!((&got.d_u, &got.d_v), (&want_f64.d_u, &want_f64.d_v));
        }
        let tiers = [
            (mixneg::Precision::F32, cpu_paths()),
            (mixneg::Precision::Bf16, bf16_paths()),
        ];
        for (tier, paths) in tiers {
            let x = c.at(tier);
            for be in &paths {
                let want = all(&be.mns_loss(&x.input()).unwrap());
                for (u, v) in [(true, true), (true, false), (false, true)] {
                    let got = be
                        .mns_loss(&with_bf16(x.input(), u.then_some(ub), v.then_some(vb)))
                        .unwrap();
                    assert_eq!(
                        all(&got),
                        want,
                        "{} {tier:?} bf16 (u, v) = ({u}, {v}), K = {k}",
                        be.name()
                    );
                }
            }
        }
        // A NaN among the bf16 values: refused, with its index.
        let mut bad = ub.to_vec();
        bad[b * k - 1] = 0x7FC0;
        let mut x = c.input();
        x.u = Floats::Bf16(&bad);
        let err = x.validate().unwrap_err();
        assert!(
            matches!(err, mixneg::MnsError::NonFinite { name: "u", index, .. } if index == b * k - 1),
            "{err}"
        );
    }
}
