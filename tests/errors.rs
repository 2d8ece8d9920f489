//! Every bad input returns its `MnsError`, from every backend, and leaves the
//! caller's output buffers untouched.

use mixneg::{Backend, CpuBackend, Kernel, MnsError, MnsInput, MnsOutput, ReferenceBackend};

fn backends() -> Vec<Box<dyn Backend>> {
    let mut v: Vec<Box<dyn Backend>> = vec![Box::new(ReferenceBackend)];
    v.extend(
        Kernel::ALL
            .into_iter()
            .filter_map(|k| CpuBackend::with_kernel(k).ok())
            .map(|b| Box::new(b) as _),
    );
    v
}

/// (B, N, K) = (2, 3, 2) and valid data to corrupt one piece at a time.
struct Ok3 {
    u: Vec<f32>,
    v: Vec<f32>,
    lq: Vec<f32>,
    ids: Vec<i64>,
    w: Vec<f32>,
}
fn good() -> Ok3 {
    Ok3 {
        u: vec![0.1, 0.2, 0.3, 0.4],
        v: vec![0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        lq: vec![-1.0, -2.0, -3.0],
        ids: vec![1, 2, 3],
        w: vec![1.0, 2.0],
    }
}

fn expect(input: MnsInput<'_>, want: MnsError) {
    assert_eq!(input.validate().unwrap_err(), want);
    for be in backends() {
        assert_eq!(be.mns_loss(&input).unwrap_err(), want, "{}", be.name());
        assert_eq!(
            be.mns_forward(&input).unwrap_err(),
            want,
            "{} forward",
            be.name()
        );
        // mns_loss_into with (possibly wrong-sized) poisoned buffers: untouched on error.
        let mut out = MnsOutput::filled(2, 3, 2, f32::NAN);
        out.top1 = vec![true; 2];
        assert!(be.mns_loss_into(&input, &mut out).is_err());
        assert!(
            out.loss.is_nan()
                && out
                    .d_u
                    .iter()
                    .chain(&out.d_v)
                    .chain(&out.lse)
                    .all(|x| x.is_nan())
        );
        assert!(out.top1.iter().all(|&t| t));
    }
    // Messages carry the numbers.
    assert!(!want.to_string().is_empty());
}

#[test]
fn shapes() {
    let g = good();
    expect(MnsInput::new(&g.u, &g.v, &g.lq, 0), MnsError::ZeroDim);
    expect(MnsInput::new(&[], &g.v, &g.lq, 2), MnsError::EmptyBatch);
    expect(
        MnsInput::new(&g.u[..3], &g.v, &g.lq, 2),
        MnsError::RaggedRows {
            name: "u",
            len: 3,
            dim: 2,
        },
    );
    expect(
        MnsInput::new(&g.u, &g.v[..5], &g.lq, 2),
        MnsError::RaggedRows {
            name: "v",
            len: 5,
            dim: 2,
        },
    );
    expect(
        MnsInput::new(&g.u, &g.v[..2], &g.lq[..1], 2),
        MnsError::TooFewCandidates { b: 2, n: 1 },
    );
    expect(
        MnsInput::new(&g.u, &g.v, &g.lq[..2], 2),
        MnsError::Length {
            name: "log_q",
            expected: 3,
            got: 2,
        },
    );
    expect(
        MnsInput::new(&g.u, &g.v, &g.lq, 2).ids(&g.ids[..2]),
        MnsError::Length {
            name: "ids",
            expected: 3,
            got: 2,
        },
    );
    expect(
        MnsInput::new(&g.u, &g.v, &g.lq, 2).row_weight(&[1.0; 3]),
        MnsError::Length {
            name: "row_weight",
            expected: 2,
            got: 3,
        },
    );
}

#[test]
fn temperature() {
    let g = good();
    for t in [0.0, -1.0, f32::NAN, f32::INFINITY, -0.0, 5e-44, 1e-39] {
        let e = MnsInput::new(&g.u, &g.v, &g.lq, 2)
            .temperature(t)
            .validate()
            .unwrap_err();
        assert!(
            matches!(e, MnsError::Temperature(x) if x.to_bits() == t.to_bits()),
            "{t}: {e}"
        );
    }
    expect(
        MnsInput::new(&g.u, &g.v, &g.lq, 2).temperature(-0.5),
        MnsError::Temperature(-0.5),
    );
}

#[test]
fn non_finite_values() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for (name, index) in [("u", 3), ("v", 4), ("log_q", 1), ("row_weight", 1)] {
            let mut g = good();
            match name {
                "u" => g.u[index] = bad,
                "v" => g.v[index] = bad,
                "log_q" => g.lq[index] = bad,
                _ => g.w[index] = bad,
            }
            let e = MnsInput::new(&g.u, &g.v, &g.lq, 2)
                .row_weight(&g.w)
                .validate()
                .unwrap_err();
            assert!(
                matches!(e, MnsError::NonFinite { name: n, index: i, .. } if n == name && i == index),
                "{name}[{index}] = {bad}: {e}"
            );
        }
    }
    // Every backend, and the untouched-output check (∞: NaN ≠ NaN under ==).
    let mut g = good();
    g.v[5] = f32::INFINITY;
    expect(
        MnsInput::new(&g.u, &g.v, &g.lq, 2),
        MnsError::NonFinite {
            name: "v",
            index: 5,
            value: f32::INFINITY,
        },
    );
}

#[test]
fn positive_offset_out_of_range() {
    // N − B = 1 here: o = 1 is the last valid offset, o = 2 is refused.
    let g = good();
    let (b, n) = (g.u.len() / 2, g.v.len() / 2);
    assert_eq!(n - b, 1, "the fixture has one negative");
    assert!(
        MnsInput::new(&g.u, &g.v, &g.lq, 2)
            .positive_offset(1)
            .validate()
            .is_ok()
    );
    expect(
        MnsInput::new(&g.u, &g.v, &g.lq, 2).positive_offset(2),
        MnsError::PositiveOffset { offset: 2, b, n },
    );
}

#[test]
fn negative_weight() {
    let g = good();
    expect(
        MnsInput::new(&g.u, &g.v, &g.lq, 2).row_weight(&[1.0, -0.25]),
        MnsError::NegativeWeight {
            index: 1,
            value: -0.25,
        },
    );
}

#[test]
fn logits_that_could_overflow_f32() {
    // Finite, but |u||v|/τ ~ 1e40: refused up front rather than returning inf/NaN.
    let mut g = good();
    g.u[0] = 1e20;
    g.v[0] = 1e20;
    let e = MnsInput::new(&g.u, &g.v, &g.lq, 2).validate().unwrap_err();
    assert!(
        matches!(
            e,
            MnsError::Magnitude {
                what: "a dot product",
                ..
            }
        ),
        "{e}"
    );
    // Large weights over tiny τ: every product and the gradient itself stay
    // finite (|u| = |v| ~ 2e-18), but the row coefficient w/(B·τ) ~ 1e42 does
    // not fit f32 (found by the fuzzer; the CPU kernels returned NaN in d_u).
    let (u, v, lq, w) = (
        [2.2e-18f32; 2],
        [2.2e-18f32; 2],
        [2.2e-18f32, 4.8e-23],
        [7.4e24f32, 1.7e-38],
    );
    let x = MnsInput::new(&u, &v, &lq, 1)
        .temperature(2.2e-18)
        .row_weight(&w);
    let e = x.validate().unwrap_err();
    assert!(
        matches!(e, MnsError::Magnitude { what, max_weight, .. }
            if what.contains("coefficient") && (max_weight / 7.4e24 - 1.0).abs() < 1e-6),
        "{e}"
    );
    for be in backends() {
        assert!(be.mns_loss(&x).is_err(), "{}", be.name());
    }
    // ∂L/∂τ = −⟨U, dU⟩/τ can reach 2·w·|u||v|/τ² when nothing else is large:
    // |u| = |v| = 1e-10, τ = 1e-25 (logits ~1e5, dU ~1e15, dτ ~1e30).
    let (u, v, lq) = ([1e-10f32, -1e-10], [1e-10f32, 2e-11, 3e-11], [0.0f32; 3]);
    let x = MnsInput::new(&u, &v, &lq, 1).temperature(1e-25);
    let e = x.validate().unwrap_err();
    assert!(
        matches!(
            e,
            MnsError::Magnitude {
                what: "the temperature gradient",
                ..
            }
        ),
        "{e}"
    );
    for be in backends() {
        assert!(be.mns_loss(&x).is_err(), "{}", be.name());
    }
    // Tiny τ can do the same to moderate embeddings.
    let g = good();
    let e = MnsInput::new(&g.u, &g.v, &g.lq, 2)
        .temperature(1e-35)
        .validate()
        .unwrap_err();
    assert!(matches!(e, MnsError::Magnitude { .. }), "{e}");
    for be in backends() {
        assert!(
            be.mns_loss(&MnsInput::new(&g.u, &g.v, &g.lq, 2).temperature(1e-35))
                .is_err()
        );
    }
}

#[test]
fn wrong_output_buffers() {
    let g = good();
    let input = MnsInput::new(&g.u, &g.v, &g.lq, 2);
    for be in backends() {
        let mut out = MnsOutput::filled(2, 4, 2, f32::NAN);
        assert_eq!(
            be.mns_loss_into(&input, &mut out).unwrap_err(),
            MnsError::OutputLength {
                name: "d_v",
                expected: 6,
                got: 8
            }
        );
        assert!(out.d_u.iter().all(|x| x.is_nan()));
    }
}

#[test]
fn unknown_or_unavailable_kernel() {
    #[cfg(not(target_arch = "x86_64"))]
    assert!(CpuBackend::with_kernel(Kernel::Avx2Fma).is_err());
    #[cfg(target_arch = "x86_64")]
    if !is_x86_feature_detected!("avx512f") {
        assert!(matches!(
            CpuBackend::with_kernel(Kernel::Avx512),
            Err(MnsError::KernelUnavailable(_))
        ));
    }
    assert_eq!(Kernel::from_name("avx1024"), None);
    assert_eq!(Kernel::from_name("avx512"), Some(Kernel::Avx512));
    assert_eq!(Kernel::from_name("portable"), Some(Kernel::Portable));
}

#[test]
fn edge_values_that_are_valid() {
    // Zero weights everywhere: loss 0 and zero gradients, no NaN.
    let g = good();
    for be in backends() {
        let out = be
            .mns_loss(&MnsInput::new(&g.u, &g.v, &g.lq, 2).row_weight(&[0.0, 0.0]))
            .unwrap();
        assert_eq!(out.loss, 0.0);
        assert!(out.d_u.iter().chain(&out.d_v).all(|&x| x == 0.0));
        assert!(out.lse.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn first_non_finite_index_in_long_inputs() {
    // Validation scans in parallel chunks of 32 768 elements; the reported
    // index must still be the first bad one, and the largest row norm (for
    // the magnitude bounds) must not depend on the split.
    let k = 3;
    let (b, n) = (40_000, 40_000);
    let u = vec![0.5f32; b * k];
    let mut v = vec![0.25f32; n * k];
    let lq = vec![-1.0f32; n];
    for (i, bad) in [
        (110_000, f32::NAN),
        (70_001, f32::INFINITY),
        (40_000, f32::NEG_INFINITY),
    ] {
        v[i] = bad;
    }
    let e = MnsInput::new(&u, &v, &lq, k).validate().unwrap_err();
    assert!(
        matches!(
            e,
            MnsError::NonFinite {
                name: "v",
                index: 40_000,
                ..
            }
        ),
        "{e}"
    );
    // One huge element in the last row of V sets the bound (|v| = 1e35, so
    // the dot-product bound √3·1e35 passes the 1e30 limit) and is reported.
    let mut v = vec![0.25f32; n * k];
    v[n * k - 2] = 1e35;
    let e = MnsInput::new(&u, &v, &lq, k).validate().unwrap_err();
    match e {
        MnsError::Magnitude { max_v_norm, .. } => {
            assert!((max_v_norm / 1e35 - 1.0).abs() < 1e-6, "{max_v_norm}")
        }
        e => panic!("expected a magnitude error, got {e}"),
    }
}

/// TF32 is refused by every CPU kernel (a tensor-core format), and bf16 by
/// those that cannot compute it here, with an error that names the backend,
/// the tier and why, and the caller's output is untouched; the f64
/// reference computes every tier exactly (more accurate than asked), and
/// F32 is accepted by all.
#[test]
fn cpu_backends_refuse_lower_precision_tiers() {
    let g = good();
    let x = MnsInput::new(&g.u, &g.v, &g.lq, 2).precision(mixneg::Precision::Tf32);
    for be in backends() {
        if be.name() == "reference" {
            let exact = be.mns_loss(&x).unwrap();
            let f32_input = x.precision(mixneg::Precision::F32);
            assert_eq!(exact.loss, be.mns_loss(&f32_input).unwrap().loss);
            continue;
        }
        let want = MnsError::Precision {
            backend: be.name(),
            precision: mixneg::Precision::Tf32,
            reason: "TF32 is a tensor-core format: the CPU kernels compute F32, and Bf16 on a CPU with AVX512_BF16",
        };
        assert_eq!(be.mns_loss(&x).unwrap_err(), want);
        assert_eq!(be.mns_forward(&x).unwrap_err(), want);
        let mut out = MnsOutput::filled(2, 3, 2, 7.0);
        assert_eq!(be.mns_loss_into(&x, &mut out).unwrap_err(), want);
        assert!(out.d_u.iter().chain(&out.d_v).all(|&v| v == 7.0));
        assert!(want.to_string().contains("Tf32"), "{want}");
        assert!(be.mns_loss(&MnsInput::new(&g.u, &g.v, &g.lq, 2)).is_ok());
        let bf16 = MnsInput::new(&g.u, &g.v, &g.lq, 2).precision(mixneg::Precision::Bf16);
        match be.mns_loss(&bf16) {
            Ok(_) => assert!(be.name() == "cpu/avx512", "{}", be.name()),
            Err(e) => assert!(
                e.to_string().contains("Bf16") && e.to_string().to_lowercase().contains("avx512"),
                "{e}"
            ),
        }
    }
}

/// (B, N, K, offset, log_q length, ids length, weights length).
type Shapes = (
    usize,
    usize,
    usize,
    usize,
    usize,
    Option<usize>,
    Option<usize>,
);

/// `check_shapes` (shapes alone, for front ends that trace) gives the error
/// `MnsInput::validate` gives for the same shapes, and none for good ones.
#[test]
fn shape_checks_from_shapes_alone_agree_with_validate() {
    let zeros = |n: usize| vec![0.0f32; n];
    // (B, N, K, offset, log_q length, ids length, weights length)
    let cases: [Shapes; 9] = [
        (2, 5, 3, 0, 5, None, None),
        (2, 5, 3, 3, 5, Some(5), Some(2)),
        (0, 5, 3, 0, 5, None, None),
        (2, 5, 0, 0, 5, None, None),
        (6, 5, 3, 0, 5, None, None),
        (2, 5, 3, 4, 5, None, None),
        (2, 5, 3, 0, 4, None, None),
        (2, 5, 3, 0, 5, Some(4), None),
        (2, 5, 3, 0, 5, None, Some(3)),
    ];
    for (b, n, k, o, lq, ids, w) in cases {
        let (u, v, log_q) = (zeros(b * k), zeros(n * k), zeros(lq));
        let ids_v = ids.map(|l| (0..l as i64).collect::<Vec<_>>());
        let w_v = w.map(zeros);
        let mut input = MnsInput::new(&u, &v, &log_q, k).positive_offset(o);
        if let Some(ids) = &ids_v {
            input = input.ids(ids);
        }
        if let Some(w) = &w_v {
            input = input.row_weight(w);
        }
        let want = input.validate().err();
        let got = mixneg::check_shapes(b, n, k, o, lq, ids, w).err();
        assert_eq!(got, want, "B = {b}, N = {n}, K = {k}, offset {o}");
    }
}
