//! Steps 4 and 6, between and after the parallel phases of a row block: the
//! **row merge** (the CPU's `mns_rows_f32`) and the **combine** (the
//! diagonal and the ordered sum of the dU shares, as `mns_du_f32` adds its
//! diagonal term; the loss as `mns_loss_f32`). Both run over the block's rows
//! on the calling thread, visiting the parts in part order, so every result
//! is independent of which worker ran which part.

use super::kernel::Part;
use crate::input::{Elem, with_slice};
use crate::{MnsOutput, Problem};

/// Per-call state of the merge and combine: the block's diagonal
/// coefficients and the weighted row losses.
pub(crate) struct Rows {
    /// 1/(B·τ) in f64.
    inv_b_tau: f64,
    /// Per row of the current block: G_ii/τ = −(w_i/(B·τ))·Σ′/(e_ii + Σ′).
    gdiag: Vec<f32>,
    /// Per part, the current row's e^{m_p − m} (0 for an empty part).
    scale: Vec<f64>,
    /// Per query: w_i·ℓ_i.
    wloss: Vec<f64>,
}

impl Rows {
    /// Merge state for `p` with row blocks of `mb` rows.
    pub fn new(p: &Problem<'_>, mb: usize) -> Rows {
        Rows {
            inv_b_tau: 1.0 / (p.b as f64 * p.temperature as f64),
            gdiag: vec![0.0; mb],
            scale: Vec::new(),
            wloss: vec![0.0; p.b],
        }
    }

    /// **Row merge** for rows i0..i0+r, after phase A. From the parts'
    /// (m_p, Σ_p) and the diagonal s_ii: m = max(s_ii, max_p m_p),
    /// Σ′ = Σ_p Σ_p·e^{m_p − m}, e_ii = e^{s_ii − m}, lse = m + ln(e_ii + Σ′),
    /// ℓ = ln(1 + Σ′/e_ii) (= lse − s_ii, without cancellation when the
    /// positive dominates), top-1 = s_ii ≥ max_p m_p; and each part's row
    /// coefficient c_p = w_i e^{m_p − m}/(B·τ·(e_ii + Σ′)), so that
    /// c_p·e_ij = G_ij/τ off the diagonal. Writes lse, ℓ and top-1 into `out`.
    /// All in f64.
    pub fn merge(
        &mut self,
        p: &Problem<'_>,
        parts: &mut [Part<'_>],
        i0: usize,
        r: usize,
        out: &mut MnsOutput,
    ) {
        for (rr, gd) in self.gdiag[..r].iter_mut().enumerate() {
            let i = i0 + rr;
            let s_ii = parts
                .iter()
                .find_map(|q| q.diag[rr])
                .expect("column i + o < N lies in some part") as f64;
            let m_off = parts
                .iter()
                .fold(f64::NEG_INFINITY, |m, q| m.max(q.max[rr] as f64));
            let m = m_off.max(s_ii);
            // Each part's e^{m_p − m}, once for Σ′ and its coefficient.
            self.scale.clear();
            self.scale.extend(parts.iter().map(|q| {
                if q.max[rr] > f32::NEG_INFINITY {
                    (q.max[rr] as f64 - m).exp()
                } else {
                    0.0
                }
            }));
            let so: f64 = parts
                .iter()
                .zip(&self.scale)
                .filter(|(q, _)| q.max[rr] > f32::NEG_INFINITY)
                .map(|(q, &x)| q.sum[rr] as f64 * x)
                .sum();
            let e_ii = (s_ii - m).exp();
            let sum = e_ii + so;
            let lse = m + sum.ln();
            // ln(1 + Σ′/e_ii) is exact to rounding even when the positive
            // dominates; when e_ii underflows the difference has no cancellation.
            let loss = if e_ii > 1e-300 {
                (so / e_ii).ln_1p()
            } else {
                lse - s_ii
            };
            let w = p.weight(i) as f64;
            let c = w * self.inv_b_tau / sum;
            for (q, &x) in parts.iter_mut().zip(&self.scale) {
                q.coef[rr] = if q.max[rr] > f32::NEG_INFINITY {
                    (c * x) as f32
                } else {
                    0.0
                };
            }
            *gd = (-c * so) as f32;
            out.lse[i] = lse as f32;
            out.row_loss[i] = loss as f32;
            out.top1[i] = s_ii >= m_off;
            self.wloss[i] = w * loss;
        }
    }

    /// **Combine** for rows i0..i0+r, after phase B: dU_i = (G_ii/τ)·v_{i+o} +
    /// Σ_p c_p,i·(part p's share), the shares added in part order; and the
    /// diagonal's dV term (G_ii/τ)·u_i into row i + o of the dV accumulator
    /// (stride `kp`, owned by the part holding column i + o).
    pub fn combine(
        &self,
        p: &Problem<'_>,
        parts: &mut [Part<'_>],
        i0: usize,
        r: usize,
        kp: usize,
        out: &mut MnsOutput,
    ) {
        let (k, o) = (p.k, p.positive_offset);
        // (Each embedding type's rows read as a typed slice.)
        fn diag_term<T: Elem>(x: &mut [f32], gd: f32, src: &[T]) {
            x.iter_mut()
                .zip(src)
                .for_each(|(x, &y)| *x = gd * y.value());
        }
        fn add_diag_term<T: Elem>(x: &mut [f32], gd: f32, src: &[T]) {
            x.iter_mut()
                .zip(src)
                .for_each(|(x, &y)| *x += gd * y.value());
        }
        for (rr, &gd) in self.gdiag[..r].iter().enumerate() {
            let i = i0 + rr;
            let du = &mut out.d_u[i * k..(i + 1) * k];
            let row = (i + o) * k..(i + o + 1) * k;
            with_slice!(p.v, v => diag_term(du, gd, &v[row]));
            for q in parts.iter() {
                let cq = q.coef[rr];
                du.iter_mut()
                    .zip(&q.du[rr * kp..])
                    .for_each(|(x, &y)| *x += cq * y);
            }
        }
        for (rr, &gd) in self.gdiag[..r].iter().enumerate() {
            let i = i0 + rr;
            let pos = i + o;
            let q = parts
                .iter_mut()
                .find(|q| (q.j0..q.j1).contains(&pos))
                .expect("i + o < N");
            let row = &mut q.dv[(pos - q.j0) * kp..(pos - q.j0) * kp + k];
            with_slice!(p.u, u => add_diag_term(row, gd, &u[i * k..(i + 1) * k]));
        }
    }

    /// L = (1/B) Σ_i w_i ℓ_i, summed in row order in f64.
    pub fn loss(&self) -> f32 {
        (self.wloss.iter().sum::<f64>() / self.wloss.len() as f64) as f32
    }
}
