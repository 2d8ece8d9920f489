//! Numerical edges, concurrency and unaligned inputs.

mod common;
use common::*;
use mixneg::{Backend, CpuBackend, Kernel, MnsInput, MnsOutput, reference};

fn cpu_paths() -> Vec<CpuBackend> {
    Kernel::ALL
        .into_iter()
        .filter_map(|k| CpuBackend::with_kernel(k).ok())
        .collect()
}

fn check(case: &Case) {
    let want = reference::mns_loss_f64(&case.input()).unwrap();
    let _ = magnitudes(case);
    for be in cpu_paths() {
        let mut out = MnsOutput::filled(case.b(), case.n(), case.k, f32::NAN);
        be.mns_loss_into(&case.input(), &mut out).unwrap();
        let ctx = Case {
            name: format!("{} [{}]", case.name, be.name()),
            ..case.clone()
        };
        assert_output(&ctx, &out, want.loss, &want.d_u, &want.d_v, &want.lse);
    }
}

#[test]
fn tiny_and_huge_temperatures() {
    for t in [1e-4f32, 1e-3, 10.0, 1e4] {
        let mut c = random_case(41, 19, 40, 12);
        c.temperature = t;
        c.name = format!("tau = {t}");
        check(&c);
    }
}

#[test]
fn positive_log_q() {
    // log Q > 0 is not a probability but is finite: the formula still applies.
    let mut c = random_case(42, 10, 30, 8);
    c.log_q
        .iter_mut()
        .enumerate()
        .for_each(|(j, q)| *q = (j % 7) as f32 * 3.0);
    c.name = "log_q > 0".into();
    check(&c);
}

#[test]
fn long_k_accumulation_stays_inside_the_bound() {
    // K = 4096: every logit is a 4096-term f32 dot product; the policy's ε·S
    // term (S includes |u||v|/τ) bounds it.
    let c = random_case(43, 9, 23, 4096);
    check(&Case {
        name: "K = 4096".into(),
        ..c
    });
}

#[test]
fn unaligned_input_slices() {
    // Inputs starting one float past an allocation's alignment.
    let c = random_case(44, 13, 29, 11);
    let shift = |x: &[f32]| -> Vec<f32> { std::iter::once(0.0).chain(x.iter().copied()).collect() };
    let (u, v, q) = (shift(&c.u), shift(&c.v), shift(&c.log_q));
    let ids = c.ids.clone().unwrap();
    let input = MnsInput::new(&u[1..], &v[1..], &q[1..], c.k)
        .temperature(c.temperature)
        .ids(&ids);
    let want = reference::mns_loss_f64(&c.input()).unwrap();
    for be in cpu_paths() {
        let out = be.mns_loss(&input).unwrap();
        assert_output(&c, &out, want.loss, &want.d_u, &want.d_v, &want.lse);
    }
}

#[test]
fn many_threads_at_once_give_the_same_bits_as_one_call() {
    let c = random_case(45, 300, 900, 40);
    for be in cpu_paths() {
        let alone = be.mns_loss(&c.input()).unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..3)
                            .map(|_| be.mns_loss(&c.input()).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for out in h.join().unwrap() {
                    assert_eq!(out.loss.to_bits(), alone.loss.to_bits(), "{}", be.name());
                    assert!(
                        out.d_u
                            .iter()
                            .zip(&alone.d_u)
                            .all(|(a, b)| a.to_bits() == b.to_bits())
                    );
                    assert!(
                        out.d_v
                            .iter()
                            .zip(&alone.d_v)
                            .all(|(a, b)| a.to_bits() == b.to_bits())
                    );
                }
            }
        });
    }
}
