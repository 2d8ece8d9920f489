//! The reference's gradient is the derivative of its loss: central finite
//! differences in f64.
//!
//! The inputs are f32, so a step h is applied as x ± h rounded to f32 and the
//! quotient uses the steps actually taken. With h = 1e-3·max(1, |x|) the
//! truncation error is O(h²·L''') ≈ 1e-7 relative and the f64 rounding of the
//! loss ≈ 1e-16/h ≈ 1e-13: we allow 1e-6 relative to the gradient's scale.

use mixneg::{MnsInput, reference};

#[allow(clippy::too_many_arguments)] // a test helper spelling out every option
fn check(
    u: &[f32],
    v: &[f32],
    lq: &[f32],
    k: usize,
    ids: Option<&[i64]>,
    w: Option<&[f32]>,
    t: f32,
    cp: bool,
) {
    let at = |u: &'_ [f32], v: &'_ [f32], t: f32| -> mixneg::MnsOutput<f64> {
        let mut x = MnsInput::new(u, v, lq, k)
            .temperature(t)
            .correct_positive(cp);
        if let Some(ids) = ids {
            x = x.ids(ids);
        }
        if let Some(w) = w {
            x = x.row_weight(w);
        }
        reference::mns_loss_f64(&x).unwrap()
    };
    let input = |u: &'_ [f32], v: &'_ [f32]| at(u, v, t);
    let mk = |u: &[f32], v: &[f32]| -> f64 { input(u, v).loss };
    let g = input(u, v);
    let scale = g
        .d_u
        .iter()
        .chain(&g.d_v)
        .fold(0.0f64, |m, x| m.max(x.abs()));
    let fd = |which: usize, idx: usize| -> f64 {
        let (mut up, mut um, mut vp, mut vm) = (u.to_vec(), u.to_vec(), v.to_vec(), v.to_vec());
        let (xp, xm) = if which == 0 {
            (&mut up[idx], &mut um[idx])
        } else {
            (&mut vp[idx], &mut vm[idx])
        };
        let x0 = *xp;
        let h = 1e-3 * x0.abs().max(1.0);
        *xp = x0 + h;
        *xm = x0 - h;
        let step = *xp as f64 - *xm as f64;
        (mk(&up, &vp) - mk(&um, &vm)) / step
    };
    for (idx, &an) in g.d_u.iter().enumerate() {
        let num = fd(0, idx);
        assert!(
            (num - an).abs() <= 1e-6 * scale,
            "dU[{idx}]: analytic {an}, numeric {num}"
        );
    }
    for (idx, &an) in g.d_v.iter().enumerate() {
        let num = fd(1, idx);
        assert!(
            (num - an).abs() <= 1e-6 * scale,
            "dV[{idx}]: analytic {an}, numeric {num}"
        );
    }
    // ∂L/∂τ: the same central difference in τ, with a relative step of 1e-3:
    // the truncation error is (1e-3)²/6 times τ³·|∂³L/∂τ³|, which for logits
    // of order one is a few 1e-7 of |∂L/∂τ|: 1e-5 relative.
    let (tp, tm) = (t * (1.0 + 1e-3), t * (1.0 - 1e-3));
    let num = (at(u, v, tp).loss - at(u, v, tm).loss) / (tp as f64 - tm as f64);
    let an = g.d_temperature;
    assert!(
        (num - an).abs() <= 1e-5 * an.abs(),
        "dL/dτ: analytic {an}, numeric {num}"
    );
    assert!(an != 0.0, "a degenerate case: dL/dτ = 0");
}

#[test]
fn finite_differences_match_the_reference_gradient() {
    let (b, n, k) = (3, 7, 4);
    let u: Vec<f32> = (0..b * k)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
        .collect();
    let v: Vec<f32> = (0..n * k)
        .map(|i| ((i * 23 % 13) as f32 - 6.0) / 9.0)
        .collect();
    let lq: Vec<f32> = (0..n).map(|j| -1.0 - 0.3 * j as f32).collect();
    // ids: column 4 duplicates row 0's id, column 2 is row 1's... and row 2's duplicate of column 5.
    let ids = [10i64, 11, 12, 13, 10, 12, 14];
    let w = [1.0f32, 0.0, 2.5];
    check(&u, &v, &lq, k, None, None, 1.0, true);
    check(&u, &v, &lq, k, Some(&ids), Some(&w), 0.3, true);
    check(&u, &v, &lq, k, Some(&ids), None, 0.7, false);
}
