//! Every PyTorch-float64 test vector (tests/vectors, copied from
//! shared/vectors) passes for every backend available here.

mod common;
use common::*;
use mixneg::{Backend, CpuBackend, Kernel, ReferenceBackend, reference};

fn backends() -> Vec<Box<dyn Backend>> {
    let mut v: Vec<Box<dyn Backend>> = vec![Box::new(ReferenceBackend)];
    for k in Kernel::ALL {
        if let Ok(b) = CpuBackend::with_kernel(k) {
            v.push(Box::new(b));
        }
    }
    v
}

#[test]
fn every_vector_every_backend() {
    for (case, exp) in load_vectors() {
        for be in backends() {
            let mut out = mixneg::MnsOutput::filled(case.b(), case.n(), case.k, f32::NAN);
            be.mns_loss_into(&case.input(), &mut out).unwrap();
            let nv = &naive(&case)[0];
            eprintln!(
                "{:<44} {:<14} loss {:.2e} d_u {:.2e} d_v {:.2e} lse {:.2e} (naive f32: {:.2e} {:.2e} {:.2e} {:.2e})",
                case.name,
                be.name(),
                ((out.loss as f64 - exp.loss) / exp.loss).abs(),
                rel_l2(&out.d_u, &exp.d_u),
                rel_l2(&out.d_v, &exp.d_v),
                rel_l2(&out.lse, &exp.lse),
                ((nv.loss as f64 - exp.loss) / exp.loss).abs(),
                rel_l2(&nv.d_u, &exp.d_u),
                rel_l2(&nv.d_v, &exp.d_v),
                rel_l2(&nv.lse, &exp.lse),
            );
            assert_output(&case, &out, exp.loss, &exp.d_u, &exp.d_v, &exp.lse);
        }
    }
}

/// The f64 reference itself reproduces PyTorch's float64: the two compute the
/// same formulas in the same precision. The one difference is τ, which the
/// API takes as f32 (0.1 becomes 0.100000001490116…): that moves every logit
/// by |Δτ/τ|·|s|, so the bound is 1e-12 + 2·|Δτ/τ|·S, S the logit scale.
#[test]
fn reference_f64_matches_pytorch_f64() {
    for (case, exp) in load_vectors() {
        let r = reference::mns_loss_f64(&case.input()).unwrap();
        let t64: f64 = case.temperature_text.parse().unwrap();
        let tol = 1e-12 + 2.0 * ((case.temperature as f64 - t64) / t64).abs() * case.logit_scale();
        let rel = |a: &[f64], b: &[f64]| {
            let num: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt();
            num / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300)
        };
        assert!(
            (r.loss - exp.loss).abs() <= tol * exp.loss.abs().max(1.0),
            "{}",
            case.name
        );
        for (what, a, b) in [
            ("d_u", &r.d_u, &exp.d_u),
            ("d_v", &r.d_v, &exp.d_v),
            ("lse", &r.lse, &exp.lse),
        ] {
            assert!(
                rel(a, b) <= tol,
                "{}: {what} {:.3e} > {tol:.3e}",
                case.name,
                rel(a, b)
            );
        }
    }
}

/// The absolute bar on the realistic vector (B = 256, B′ = 1024, K = 64,
/// τ = 0.1, ids): every tensor within 1e-5 relative, the loss within 1e-6.
#[test]
fn realistic_vector_meets_the_bar() {
    let (case, exp) = load_vectors()
        .into_iter()
        .find(|(c, _)| c.name.starts_with("realistic"))
        .unwrap();
    for be in backends() {
        let out = be.mns_loss(&case.input()).unwrap();
        assert!(
            ((out.loss as f64 - exp.loss) / exp.loss).abs() <= 1e-6,
            "{} loss",
            be.name()
        );
        for (what, got, want) in [
            ("d_u", &out.d_u, &exp.d_u),
            ("d_v", &out.d_v, &exp.d_v),
            ("lse", &out.lse, &exp.lse),
        ] {
            let e = rel_l2(got, want);
            assert!(e <= 1e-5, "{}: {what} {e:.3e}", be.name());
        }
    }
}

/// Every test vector on the CPU's bf16 tier, where this CPU has it, within
/// the tier's derived tolerance (the policy against a plain implementation
/// that rounds the same factors to bf16).
#[test]
fn every_vector_on_the_bf16_tier() {
    let Ok(be) = CpuBackend::with_kernel(Kernel::Avx512) else {
        return skip("no avx512 kernel on this CPU");
    };
    if !be.supports(mixneg::Precision::Bf16) {
        return skip("this CPU lacks AVX512_BF16: the bf16 tier is not run");
    }
    for (case, exp) in load_vectors() {
        let case = case.at(mixneg::Precision::Bf16);
        let out = be.mns_loss(&case.input()).unwrap();
        assert_output(&case, &out, exp.loss, &exp.d_u, &exp.d_v, &exp.lse);
    }
}
