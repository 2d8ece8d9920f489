//! The reference backend: the specification every fast path is tested against.
//!
//! It materializes the B×N logits and accumulates everything in f64, in safe
//! scalar code, straight from the formulas of docs/design.md §2:
//!
//! * s_ij = ⟨u_i, v_j⟩/τ − log_q\[j\] (no correction on j = i unless
//!   `correct_positive`), s_ij = −∞ for removed accidental hits;
//! * lse_i = m_i + log Σ_j exp(s_ij − m_i), m_i = max_j s_ij;
//! * ℓ_i = lse_i − s_ii, L = (1/B) Σ_i w_i ℓ_i;
//! * G_ij = (w_i/B)(P_ij − δ_ij), P_ij = exp(s_ij − lse_i);
//!   (P_ii − 1 is evaluated as −Σ_{j≠i} P_ij, and ℓ_i as a log1p when the
//!   positive is the row max, so that f64 keeps its relative accuracy when
//!   the positive dominates by tens of logits);
//! * dU = G·V/τ, dV = Gᵀ·U/τ.
//!
//! Memory is O(B·N): use it on small problems.

use crate::{Backend, Floats, MnsError, MnsInput, MnsOutput};

/// The materializing f64 reference. Implements [`Backend`] (results rounded
/// to f32); [`mns_loss_f64`] returns the f64 values themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceBackend;

impl Backend for ReferenceBackend {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn mns_loss_into(&self, input: &MnsInput<'_>, out: &mut MnsOutput) -> Result<(), MnsError> {
        let (b, n, k) = input.dims()?;
        out.check_shape(b, n, k)?;
        let r = mns_loss_f64(input)?;
        let narrow = |dst: &mut [f32], src: &[f64]| {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s as f32)
        };
        out.loss = r.loss as f32;
        narrow(&mut out.d_u, &r.d_u);
        narrow(&mut out.d_v, &r.d_v);
        narrow(&mut out.lse, &r.lse);
        narrow(&mut out.row_loss, &r.row_loss);
        out.top1.copy_from_slice(&r.top1);
        out.d_temperature = r.d_temperature as f32;
        Ok(())
    }
}

/// Relative L2 error of a result against a reference,
/// ‖got − want‖₂ / ‖want‖₂, in f64 (the absolute ‖got − want‖₂ when
/// `want` is all zeros). `want` may be the f64 reference or an f32 output.
///
/// ```
/// use mixneg::reference::rel_l2_error;
/// assert_eq!(rel_l2_error(&[3.0, 4.0], &[3.0f64, 4.0]), 0.0);
/// assert_eq!(rel_l2_error(&[0.0, 5.0], &[3.0f32, 4.0]), 10f64.sqrt() / 5.0);
/// assert_eq!(rel_l2_error(&[3.0, 4.0], &[0.0f64, 0.0]), 5.0);
/// ```
pub fn rel_l2_error<T: Copy + Into<f64>>(got: &[f32], want: &[T]) -> f64 {
    assert_eq!(got.len(), want.len(), "rel_l2_error: lengths differ");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w.into()).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = want.iter().map(|&w| w.into().powi(2)).sum::<f64>().sqrt();
    if den > 0.0 { num / den } else { num }
}

/// The fused MNS loss in f64, materializing the logits.
pub fn mns_loss_f64(input: &MnsInput<'_>) -> Result<MnsOutput<f64>, MnsError> {
    let p = input.validate()?;
    let (b, n, k) = (p.b, p.n, p.k);
    let tau = p.temperature as f64;
    let row = |x: Floats<'_>, i: usize| -> Vec<f64> {
        (i * k..(i + 1) * k).map(|c| x.get(c) as f64).collect()
    };
    let u: Vec<Vec<f64>> = (0..b).map(|i| row(p.u, i)).collect();
    let v: Vec<Vec<f64>> = (0..n).map(|j| row(p.v, j)).collect();
    let dot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(x, y)| x * y).sum::<f64>();

    let mut out = MnsOutput::filled(b, n, k, 0.0f64);
    let mut g = vec![vec![0.0f64; n]; b];
    let o = p.positive_offset;
    for r in 0..b {
        // Row r's positive is column i = r + o; below, "i" is that column.
        let i = r + o;
        let s: Vec<f64> = (0..n)
            .map(|j| {
                let removed = j != i && p.ids.is_some_and(|ids| ids[j] == ids[i]);
                if removed {
                    f64::NEG_INFINITY
                } else if j == i && !p.correct_positive {
                    dot(&u[r], &v[j]) / tau
                } else {
                    dot(&u[r], &v[j]) / tau - p.log_q[j] as f64
                }
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + s.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
        // Off the diagonal G_ij = (w_i/B)·P_ij. On it, P_ii − 1 is formed as
        // −Σ_{j≠i} P_ij and ℓ_i as ln(1 + Σ_{j≠i} e^{s_ij − s_ii}) when the
        // positive is the row max: the same numbers, but without the
        // cancellation of 1 − P_ii and lse − s_ii, which in f64 lose
        // everything once the off-diagonal mass falls below 1e-16 (found by
        // the property tests: a margin of ~40 logits).
        let p_off: Vec<f64> = (0..n)
            .map(|j| if j == i { 0.0 } else { (s[j] - lse).exp() })
            .collect();
        let loss = if s[i] >= m {
            (0..n)
                .filter(|&j| j != i)
                .map(|j| (s[j] - s[i]).exp())
                .sum::<f64>()
                .ln_1p()
        } else {
            lse - s[i]
        };
        let w = p.weight(r) as f64;
        out.lse[r] = lse;
        out.row_loss[r] = loss;
        out.top1[r] = s[i] >= m;
        out.loss += w * loss / b as f64;
        for j in 0..n {
            let pm = if i == j {
                -p_off.iter().sum::<f64>()
            } else {
                p_off[j]
            };
            g[r][j] = w / b as f64 * pm;
        }
    }
    for i in 0..b {
        for j in 0..n {
            for c in 0..k {
                out.d_u[i * k + c] += g[i][j] * v[j][c] / tau;
                out.d_v[j * k + c] += g[i][j] * u[i][c] / tau;
            }
        }
    }
    // ∂L/∂τ = −⟨U, ∂L/∂U⟩/τ.
    out.d_temperature = -(0..b * k)
        .map(|x| u[x / k][x % k] * out.d_u[x])
        .sum::<f64>()
        / tau;
    Ok(out)
}
