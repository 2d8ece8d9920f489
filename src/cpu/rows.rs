//! Steps 4 and 6, between the parallel phases of a row block: the **row
//! merge** (the CPU's `mns_rows_f32`) and the **combine** (the diagonal and
//! the ordered sum of the dU shares, as `mns_du_f32` adds its diagonal term;
//! the loss as `mns_loss_f32`). Both run per chunk of a block's rows, as
//! tasks of the call's steps (`steps.rs`): each row's values are computed
//! from the parts in part order, so every result is independent of which
//! worker ran which part or chunk, and of how the rows were chunked.

use super::kernel::Part;
use crate::Problem;
use crate::input::{Elem, with_slice};
use std::sync::{Mutex, RwLock};

/// The outputs and per-row state of one chunk of a block's queries, owned
/// by the one task that merges or combines them.
pub(crate) struct RowChunk<'a> {
    /// The first query.
    i0: usize,
    lse: &'a mut [f32],
    row_loss: &'a mut [f32],
    top1: &'a mut [bool],
    /// Rows of ∂L/∂U (empty in a forward-only call).
    d_u: &'a mut [f32],
    /// Per query: G_ii/τ = −(w_i/(B·τ))·Σ′/(e_ii + Σ′).
    gdiag: Vec<f32>,
    /// Per query: w_i·ℓ_i.
    wloss: Vec<f64>,
}

/// Per-call state of the merge and combine: the outputs in chunks, the
/// same number for every row block (some empty in a short last block).
pub(crate) struct Rows<'a> {
    /// 1/(B·τ) in f64.
    inv_b_tau: f64,
    /// Block t's chunk c at `chunks[t·per_block + c]`.
    chunks: Vec<Mutex<RowChunk<'a>>>,
    /// Chunks per block.
    per_block: usize,
    /// Rows per chunk (fewer in a block's last).
    rows: usize,
}

impl<'a> Rows<'a> {
    /// Merge state for `p` in row blocks of `mb` rows, each in `per_block`
    /// chunks, writing into the per-query outputs `lse`, `row_loss` and
    /// `top1` and (unless it is empty) ∂L/∂U, `d_u`.
    pub fn new(
        p: &Problem<'_>,
        (mb, per_block): (usize, usize),
        (mut lse, mut loss, mut top1): (&'a mut [f32], &'a mut [f32], &'a mut [bool]),
        mut d_u: &'a mut [f32],
    ) -> Rows<'a> {
        let (b, k) = (p.b, p.k);
        let rows = mb.div_ceil(per_block);
        let mut chunks = Vec::with_capacity(b.div_ceil(mb) * per_block);
        let starts = (0..b)
            .step_by(mb)
            .flat_map(|t0| (0..per_block).map(move |c| (t0, c)));
        for (t0, c) in starts {
            let i0 = (t0 + c * rows).min(b);
            let n = rows.min(mb.saturating_sub(c * rows)).min(b - i0);
            let du_len = if d_u.is_empty() { 0 } else { n * k };
            let (x, l, t, d);
            (x, lse) = std::mem::take(&mut lse).split_at_mut(n);
            (l, loss) = std::mem::take(&mut loss).split_at_mut(n);
            (t, top1) = std::mem::take(&mut top1).split_at_mut(n);
            (d, d_u) = std::mem::take(&mut d_u).split_at_mut(du_len);
            chunks.push(Mutex::new(RowChunk {
                i0,
                lse: x,
                row_loss: l,
                top1: t,
                d_u: d,
                gdiag: vec![0.0; n],
                wloss: vec![0.0; n],
            }));
        }
        Rows {
            inv_b_tau: 1.0 / (b as f64 * p.temperature as f64),
            chunks,
            per_block,
            rows,
        }
    }

    /// **Row merge** for the rows of block t's chunk c (`c` = t·per_block +
    /// c), after phase A. From the parts' (m_p, Σ_p) and
    /// the diagonal s_ii: m = max(s_ii, max_p m_p),
    /// Σ′ = Σ_p Σ_p·e^{m_p − m}, e_ii = e^{s_ii − m}, lse = m + ln(e_ii + Σ′),
    /// ℓ = ln(1 + Σ′/e_ii) (= lse − s_ii, without cancellation when the
    /// positive dominates), top-1 = s_ii ≥ max_p m_p; and each part's row
    /// coefficient c_p = w_i e^{m_p − m}/(B·τ·(e_ii + Σ′)), so that
    /// c_p·e_ij = G_ij/τ off the diagonal. All in f64.
    pub fn merge(&self, p: &Problem<'_>, parts: &[RwLock<Part<'_>>], c: usize) {
        let mut ch = self.chunks[c].lock().unwrap();
        let (n, rr0) = (ch.lse.len(), c % self.per_block * self.rows);
        if n == 0 {
            return;
        }
        let np = parts.len();
        // The parts' (m_p, Σ_p) of these rows, part-major, and s_ii.
        let (mut max, mut sum) = (vec![0f32; np * n], vec![0f32; np * n]);
        let mut diag = vec![None; n];
        for (q, (mx, sm)) in parts.iter().zip(max.chunks_mut(n).zip(sum.chunks_mut(n))) {
            let q = q.read().unwrap();
            mx.copy_from_slice(&q.max[rr0..rr0 + n]);
            sm.copy_from_slice(&q.sum[rr0..rr0 + n]);
            for (d, &s) in diag.iter_mut().zip(&q.diag[rr0..rr0 + n]) {
                *d = d.or(s);
            }
        }
        let mut coef = vec![0f32; np * n];
        let mut scale = vec![0f64; np];
        for rr in 0..n {
            let i = ch.i0 + rr;
            let s_ii = diag[rr].expect("column i + o < N lies in some part") as f64;
            let m_p = |q: usize| max[q * n + rr];
            let m_off = (0..np).fold(f64::NEG_INFINITY, |m, q| m.max(m_p(q) as f64));
            let m = m_off.max(s_ii);
            // Each part's e^{m_p − m}, once for Σ′ and its coefficient.
            for (q, x) in scale.iter_mut().enumerate() {
                *x = if m_p(q) > f32::NEG_INFINITY {
                    (m_p(q) as f64 - m).exp()
                } else {
                    0.0
                };
            }
            let so: f64 = (0..np)
                .filter(|&q| m_p(q) > f32::NEG_INFINITY)
                .map(|q| sum[q * n + rr] as f64 * scale[q])
                .sum();
            let e_ii = (s_ii - m).exp();
            let total = e_ii + so;
            let lse = m + total.ln();
            // ln(1 + Σ′/e_ii) is exact to rounding even when the positive
            // dominates; when e_ii underflows the difference has no cancellation.
            let loss = if e_ii > 1e-300 {
                (so / e_ii).ln_1p()
            } else {
                lse - s_ii
            };
            let w = p.weight(i) as f64;
            let cw = w * self.inv_b_tau / total;
            for (q, &x) in scale.iter().enumerate() {
                coef[q * n + rr] = if m_p(q) > f32::NEG_INFINITY {
                    (cw * x) as f32
                } else {
                    0.0
                };
            }
            ch.gdiag[rr] = (-cw * so) as f32;
            ch.lse[rr] = lse as f32;
            ch.row_loss[rr] = loss as f32;
            ch.top1[rr] = s_ii >= m_off;
            ch.wloss[rr] = w * loss;
        }
        for (q, cf) in parts.iter().zip(coef.chunks(n)) {
            q.write().unwrap().coef[rr0..rr0 + n].copy_from_slice(cf);
        }
    }

    /// **Combine** for the rows of block t's chunk c (`c` = t·per_block + c),
    /// after phase B: dU_i = (G_ii/τ)·v_{i+o} +
    /// Σ_p c_p,i·(part p's share), the shares added in part order; and the
    /// diagonal's dV term (G_ii/τ)·u_i into row i + o of the dV accumulator
    /// (stride `kp`, owned by the part holding column i + o; the parts'
    /// first columns are `bounds`).
    pub fn combine(
        &self,
        p: &Problem<'_>,
        parts: &[RwLock<Part<'_>>],
        bounds: &[usize],
        c: usize,
        kp: usize,
    ) {
        let (k, o) = (p.k, p.positive_offset);
        let mut ch = self.chunks[c].lock().unwrap();
        let ch = &mut *ch;
        let (i0, rr0) = (ch.i0, c % self.per_block * self.rows);
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
        for (du, (rr, &gd)) in ch.d_u.chunks_exact_mut(k).zip(ch.gdiag.iter().enumerate()) {
            let row = (i0 + rr + o) * k..(i0 + rr + o + 1) * k;
            with_slice!(p.v, v => diag_term(du, gd, &v[row]));
        }
        for q in parts {
            let q = q.read().unwrap();
            for (rr, du) in ch.d_u.chunks_exact_mut(k).enumerate() {
                let cq = q.coef[rr0 + rr];
                du.iter_mut()
                    .zip(&q.du[(rr0 + rr) * kp..])
                    .for_each(|(x, &y)| *x += cq * y);
            }
        }
        for (rr, &gd) in ch.gdiag.iter().enumerate() {
            let (i, pos) = (i0 + rr, i0 + rr + o);
            let mut q = parts[bounds.partition_point(|&j| j <= pos) - 1]
                .write()
                .unwrap();
            let q = &mut *q;
            let row = &mut q.dv[(pos - q.j0) * kp..(pos - q.j0) * kp + k];
            with_slice!(p.u, u => add_diag_term(row, gd, &u[i * k..(i + 1) * k]));
        }
    }

    /// L = (1/B) Σ_i w_i ℓ_i, summed in row order in f64.
    pub fn loss(self) -> f32 {
        let wloss: Vec<f64> = (self.chunks.into_iter())
            .flat_map(|ch| ch.into_inner().unwrap().wloss)
            .collect();
        (wloss.iter().sum::<f64>() / wloss.len() as f64) as f32
    }
}
