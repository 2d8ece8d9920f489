//! The fused CPU kernels, generic over the [`Simd`] instruction set.
//!
//! Work is organized by row blocks of `mb` queries; within a block the N
//! candidates are split into column *parts* that the workers process in
//! parallel (see `mod.rs`). For one block (rows i0..i0+r) and one part
//! (columns j0..j1):
//!
//! **Phase A** ([`phase_a`]):
//! 1. the part's logit strip S = U_b·V_partᵀ/τ − log_q (r × w floats) by a
//!    6×16 register-blocked micro-kernel over packed panels of Vᵀ (12 ymm
//!    accumulators; broadcast from U, two vector loads from the panel);
//! 2. per row: the diagonal (if column i is in the part) is recorded and
//!    taken out, accidental hits are set to −∞, then m_p = max of the part's
//!    row and e_ij = exp(s_ij − m_p) *in place* (one exp per logit), with the
//!    part's sum Σ_p.
//!
//! Between the phases the caller merges the parts' (m_p, Σ_p) per row, in
//! part order: m = max(s_ii, max_p m_p), Σ′ = Σ_p Σ_p·e^{m_p − m},
//! e_ii = e^{s_ii − m}, lse = m + ln(e_ii + Σ′), ℓ = ln(1 + Σ′/e_ii), and
//! gives each part the row coefficients c_p = w_i e^{m_p − m}/(B·τ·(e_ii + Σ′)),
//! so that c_p·e_ij = G_ij/τ off the diagonal. The diagonal,
//! G_ii/τ = −(w_i/(B·τ))·Σ′/(e_ii + Σ′), never forms P_ii − 1 (no
//! cancellation when the positive dominates) and is added by the caller as a
//! rank-one term.
//!
//! **Phase B** ([`phase_b`]):
//! 3. the part's share of dU_b, Σ_j e_ij·V_j (6×16 micro-kernel, broadcast
//!    from the strip, vector loads from V's column tiles, blocked over `JC`
//!    columns), scaled and summed over parts by the caller;
//! 4. dV_j += Σ_i e_ij·(c_p,i·U_i) for the part's own columns j — each part
//!    owns its rows of dV, so no reduction and no private copies.
//!
//! The strips are written once and read back (6·B·N·K flops, no recompute).
//! Every sum runs in a fixed order, independent of which thread runs which
//! part: results are bit-for-bit reproducible.

use super::simd::{Simd, exp};

/// Micro-kernel rows (queries in the strip and dU kernels, candidates in dV).
pub(crate) const MR: usize = 6;
/// Micro-kernel columns: one Vᵀ panel is 16 candidates wide (two vectors).
pub(crate) const NR: usize = 16;
/// Columns of the strip per dU cache block: V rows JC×K_pad stay in L2.
const JC: usize = 256;

/// Read-only data shared by all workers: packed, padded copies of the inputs.
pub(crate) struct Shared<'a> {
    /// B.
    pub b: usize,
    /// N.
    pub n: usize,
    /// N rounded up to a multiple of [`NR`].
    pub np: usize,
    /// K.
    pub k: usize,
    /// K rounded up to a multiple of 8; the packed rows' stride.
    pub kp: usize,
    /// 1/τ.
    pub inv_tau: f32,
    /// U packed B×kp, zero-padded.
    pub up: &'a [f32],
    /// V for the dU kernel, in column tiles: the 16 (last: 8) columns
    /// c..c+w of every row j at vp[n·c + j·w ..][..w], zero-padded in K. The
    /// dU kernel's j loop then streams one contiguous 64-byte line per j
    /// (row-major V made it skip 4·kp bytes per j, and stall on the loads).
    pub vp: &'a [f32],
    /// V as given, N×K (for the uncorrected diagonal).
    pub v: &'a [f32],
    /// Vᵀ in np/16 panels of kp×16 (panel p, row c, lane l = V[16p+l][c]), zero-padded.
    pub vt: &'a [f32],
    /// −log_q[j] for j < N, −∞ for the padding columns (so they drop out).
    pub nlq: &'a [f32],
    /// Subtract log_q on the diagonal too.
    pub correct_positive: bool,
    /// Accidental-hit groups (see `Problem::hit_groups`).
    pub hits: Option<(&'a [usize], &'a [Vec<usize>])>,
}

/// One column part of the current row block, with its scratch. Parts are
/// created once per call and reused for every row block.
pub(crate) struct Part<'a> {
    /// First column (a multiple of [`NR`]).
    pub j0: usize,
    /// One past the last real column (≤ N).
    pub j1: usize,
    /// Width of the part's strip rows: j1 − j0 rounded up to [`NR`].
    pub w: usize,
    /// Row stride of the strip: w, or w + 16 so that stride/64 bytes is odd —
    /// a stride of a multiple of 4 KiB maps every row of a column to the same
    /// L1 set, and the dV kernel reads the strip down its columns.
    pub ld: usize,
    /// The strip, mb × ld.
    pub strip: Vec<f32>,
    /// Unscaled dU share of the block, mb × kp.
    pub du: Vec<f32>,
    /// c_p,i·U_i of the block, mb × kp.
    pub us: Vec<f32>,
    /// Per row: m_p, the part's max (−∞ if all its columns are removed).
    pub max: Vec<f32>,
    /// Per row: Σ_p, the part's sum of exp(s − m_p) (0 if all removed).
    pub sum: Vec<f32>,
    /// Per row: s_ii when column i is in this part.
    pub diag: Vec<Option<f32>>,
    /// Per row: c_p,i, set by the caller between the phases.
    pub coef: Vec<f32>,
    /// Rows j0..j1 of the dV accumulator (stride kp), owned by this part.
    pub dv: &'a mut [f32],
}

/// Phase A of one part for rows i0..i0+r: strip, fix-ups, exp in place,
/// per-row (max, sum). See the module docs.
///
/// # Safety
///
/// The CPU supports `S`'s instruction set. (Every buffer size the
/// micro-kernels rely on is asserted here, once per call.)
#[inline(always)]
pub(crate) unsafe fn phase_a<S: Simd>(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    let (kp, w, ld) = (sh.kp, part.w, part.ld);
    assert!(
        part.j0.is_multiple_of(NR)
            && part.j1 <= sh.n
            && part.j0 + w <= sh.np
            && w.is_multiple_of(NR)
    );
    assert!(ld >= w && part.strip.len() >= r * ld && i0 + r <= sh.b);
    assert!(part.max.len() >= r && part.sum.len() >= r && part.diag.len() >= r);
    assert!(sh.up.len() == sh.b * kp && sh.vt.len() == sh.np * kp && sh.nlq.len() == sh.np);
    // SAFETY: S is supported (our contract); the asserts bound every access:
    // panels j0/16 .. (j0+w)/16 ≤ np/16, strip rows < r of stride ld ≥ w.
    unsafe { strip_block::<S>(sh, &sh.up[i0 * kp..(i0 + r) * kp], r, part) };
    for rr in 0..r {
        let i = i0 + rr;
        let row = &mut part.strip[rr * ld..rr * ld + w];
        part.diag[rr] = None;
        if (part.j0..part.j1).contains(&i) {
            let local = i - part.j0;
            if !sh.correct_positive {
                // Uncorrected diagonal: ⟨u_i, v_i⟩/τ without − log_q[i].
                let (u, v) = (&sh.up[i * kp..][..sh.k], &sh.v[i * sh.k..][..sh.k]);
                row[local] =
                    u.iter().zip(v).fold(0.0f32, |s, (&x, &y)| x.mul_add(y, s)) * sh.inv_tau;
            }
            part.diag[rr] = Some(row[local]);
            row[local] = f32::NEG_INFINITY;
        }
        if let Some((group_of_row, groups)) = sh.hits
            && let Some(cols) = groups.get(group_of_row[i])
        {
            for &j in cols.iter().filter(|&&j| (part.j0..part.j1).contains(&j)) {
                row[j - part.j0] = f32::NEG_INFINITY;
            }
        }
        // SAFETY: S is supported; row has w elements, a multiple of 16.
        let (m, s) = unsafe { max_exp_sum::<S>(row) };
        part.max[rr] = m;
        part.sum[rr] = s;
    }
}

/// Phase B of one part for rows i0..i0+r: the unscaled dU share and the
/// part's dV rows (see the module docs). Needs `part.coef` from the merge.
///
/// # Safety
///
/// The CPU supports `S`'s instruction set. (Sizes asserted here.)
#[inline(always)]
pub(crate) unsafe fn phase_b<S: Simd>(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    let (kp, ld) = (sh.kp, part.ld);
    let cols = part.j1 - part.j0;
    assert!(part.strip.len() >= r * ld && part.du.len() >= r * kp && part.us.len() >= r * kp);
    assert!(part.coef.len() >= r && part.dv.len() == cols * kp && i0 + r <= sh.b);
    assert!(sh.vp.len() == sh.n * kp && part.j1 <= sh.n && cols <= part.w && part.w <= ld);
    part.du[..r * kp].fill(0.0);
    // SAFETY: S is supported; strip r rows of stride ld with ≥ cols columns,
    // du r rows of kp, vp N·kp with rows j0..j1 < N in every column tile.
    unsafe { du_block::<S>(sh, part, r) };
    for rr in 0..r {
        let c = part.coef[rr];
        let src = &sh.up[(i0 + rr) * kp..(i0 + rr + 1) * kp];
        let us = &mut part.us[rr * kp..(rr + 1) * kp];
        us.iter_mut().zip(src).for_each(|(d, &x)| *d = c * x);
    }
    // SAFETY: S is supported; strip as above, us r×kp, dv cols×kp.
    unsafe { dv_block::<S>(part, kp, r) };
}

/// strip[rr·ld + j − j0] = ⟨u_rr, v_j⟩/τ − log_q[j] for rr < r and the
/// part's padded columns j0 ≤ j < j0 + w.
///
/// # Safety
///
/// S supported; `ub.len() == r·kp`, sizes as asserted in [`phase_a`].
#[inline(always)]
unsafe fn strip_block<S: Simd>(sh: &Shared<'_>, ub: &[f32], r: usize, part: &mut Part<'_>) {
    debug_assert!(ub.len() == r * sh.kp && part.strip.len() >= r * part.ld);
    let (kp, ld, p0) = (sh.kp, part.ld, part.j0 / NR);
    // Panel outer, row group inner: one 16×kp panel of Vᵀ stays in L1 while
    // every row group of the block (≤ mb×kp floats of U, also L1) passes.
    for p in p0..p0 + part.w / NR {
        let panel = sh.vt[p * kp * NR..].as_ptr();
        let nlq = sh.nlq[p * NR..].as_ptr();
        let mut g = 0;
        while g < r {
            let rows = MR.min(r - g);
            let a = ub[g * kp..].as_ptr();
            let out = part.strip[g * ld + (p - p0) * NR..].as_mut_ptr();
            // SAFETY: S supported; a covers `rows` rows of kp, the panel kp×16
            // floats, nlq 16 floats, out `rows` rows of stride ld with 16
            // columns left in each ((p − p0)·16 + 16 ≤ w ≤ ld).
            unsafe {
                match rows {
                    6 => strip_tile::<S, 6>(a, kp, panel, nlq, sh.inv_tau, out, ld),
                    5 => strip_tile::<S, 5>(a, kp, panel, nlq, sh.inv_tau, out, ld),
                    4 => strip_tile::<S, 4>(a, kp, panel, nlq, sh.inv_tau, out, ld),
                    3 => strip_tile::<S, 3>(a, kp, panel, nlq, sh.inv_tau, out, ld),
                    2 => strip_tile::<S, 2>(a, kp, panel, nlq, sh.inv_tau, out, ld),
                    _ => strip_tile::<S, 1>(a, kp, panel, nlq, sh.inv_tau, out, ld),
                }
            }
            g += rows;
        }
    }
}

/// R×16 logit tile: out[r][l] = (Σ_c a[r][c]·panel[c][l])·inv_tau + nlq[l].
///
/// # Safety
///
/// S supported; `a` readable for R rows of stride `kp` (kp elements each),
/// `panel` for kp×16, `nlq` for 16, `out` writable for R rows of stride `ldo`
/// with 16 elements each.
#[inline(always)]
unsafe fn strip_tile<S: Simd, const R: usize>(
    a: *const f32,
    kp: usize,
    panel: *const f32,
    nlq: *const f32,
    inv_tau: f32,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: every pointer offset stays inside the ranges of the contract.
    unsafe {
        let mut acc = [[S::zero(); 2]; R];
        for c in 0..kp {
            let b0 = S::load(panel.add(c * NR));
            let b1 = S::load(panel.add(c * NR + 8));
            for (r, accr) in acc.iter_mut().enumerate() {
                let x = S::splat(*a.add(r * kp + c));
                accr[0] = x.fma(b0, accr[0]);
                accr[1] = x.fma(b1, accr[1]);
            }
        }
        let it = S::splat(inv_tau);
        let (q0, q1) = (S::load(nlq), S::load(nlq.add(8)));
        for (r, accr) in acc.iter().enumerate() {
            accr[0].fma(it, q0).store(out.add(r * ldo));
            accr[1].fma(it, q1).store(out.add(r * ldo + 8));
        }
    }
}

/// One strip row of a part: m = max_j row[j], then row[j] = exp(row[j] − m)
/// in place and Σ_j row[j]; returns (m, Σ). A row of −∞ gives (−∞, 0) and
/// zeros (the shift is then 0).
///
/// # Safety
///
/// S supported; `row.len()` is a multiple of 16.
#[inline(always)]
unsafe fn max_exp_sum<S: Simd>(row: &mut [f32]) -> (f32, f32) {
    debug_assert!(row.len().is_multiple_of(NR));
    let p = row.as_mut_ptr();
    let len = row.len();
    // SAFETY: S supported; p is valid for len elements, len a multiple of 16,
    // and every access is at offset j..j+16 with j + 16 ≤ len.
    unsafe {
        let (mut m0, mut m1) = (S::splat(f32::NEG_INFINITY), S::splat(f32::NEG_INFINITY));
        for j in (0..len).step_by(NR) {
            m0 = m0.max(S::load(p.add(j)));
            m1 = m1.max(S::load(p.add(j + 8)));
        }
        let m = m0.max(m1).reduce_max();
        let mv = S::splat(if m == f32::NEG_INFINITY { 0.0 } else { -m });
        // Blocked sum (JC columns from zero, then into the total): rounding
        // grows with len/JC + JC, not with len.
        let mut total = S::zero();
        for j0 in (0..len).step_by(JC) {
            let (mut s0, mut s1) = (S::zero(), S::zero());
            for j in (j0..(j0 + JC).min(len)).step_by(NR) {
                let e0 = exp(S::load(p.add(j)).add(mv));
                let e1 = exp(S::load(p.add(j + 8)).add(mv));
                e0.store(p.add(j));
                e1.store(p.add(j + 8));
                s0 = s0.add(e0);
                s1 = s1.add(e1);
            }
            total = total.add(s0.add(s1));
        }
        (m, total.reduce_sum())
    }
}

/// part.du[rr][·] += Σ_{j0≤j<j1} e_rr,j·V_j[·] for rr < r (local strip
/// columns 0..j1−j0).
///
/// # Safety
///
/// S supported; sizes as asserted in [`phase_b`].
#[inline(always)]
unsafe fn du_block<S: Simd>(sh: &Shared<'_>, part: &mut Part<'_>, r: usize) {
    let (n, ld, kp) = (sh.n, part.ld, sh.kp);
    let cols = part.j1 - part.j0;
    debug_assert!(part.strip.len() >= r * ld && part.du.len() >= r * kp);
    for c0 in (0..cols).step_by(JC) {
        let c1 = (c0 + JC).min(cols);
        let mut g = 0;
        while g < r {
            let rows = MR.min(r - g);
            let mut c = 0;
            while c < kp {
                let w = if kp - c >= 16 { 16 } else { 8 };
                let e = part.strip[g * ld..].as_ptr();
                let v = sh.vp[n * c + part.j0 * w..].as_ptr();
                let out = part.du[g * kp + c..].as_mut_ptr();
                // SAFETY: S supported; e covers `rows` strip rows (stride ld,
                // local columns c0..c1 ≤ cols ≤ w_part ≤ ld); v is column tile
                // c from row j0 (rows j0 + c0..j0 + c1 ≤ j1 ≤ n of w floats,
                // w = 16 when kp − c ≥ 16, else 8 = kp − c); out covers
                // `rows` rows of stride kp at columns c..c+w ≤ kp.
                unsafe {
                    if w == 16 {
                        du_tile_rows::<S, 2>(rows, e, ld, c0, c1, v, 16, out, kp);
                    } else {
                        du_tile_rows::<S, 1>(rows, e, ld, c0, c1, v, 8, out, kp);
                    }
                }
                c += w;
            }
            g += rows;
        }
    }
}

/// Dispatches a dU tile on its (run-time) row count.
///
/// # Safety
///
/// As [`du_tile`] with R = `rows` ≤ 6.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn du_tile_rows<S: Simd, const KV: usize>(
    rows: usize,
    e: *const f32,
    lde: usize,
    j0: usize,
    j1: usize,
    v: *const f32,
    ldv: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match rows {
            6 => du_tile::<S, 6, KV>(e, lde, j0, j1, v, ldv, out, ldo),
            5 => du_tile::<S, 5, KV>(e, lde, j0, j1, v, ldv, out, ldo),
            4 => du_tile::<S, 4, KV>(e, lde, j0, j1, v, ldv, out, ldo),
            3 => du_tile::<S, 3, KV>(e, lde, j0, j1, v, ldv, out, ldo),
            2 => du_tile::<S, 2, KV>(e, lde, j0, j1, v, ldv, out, ldo),
            _ => du_tile::<S, 1, KV>(e, lde, j0, j1, v, ldv, out, ldo),
        }
    }
}

/// out[r][0..8KV] += Σ_{j0≤j<j1} e[r][j]·v[j][0..8KV].
///
/// # Safety
///
/// S supported; `e` readable at r·lde + j for r < R, j0 ≤ j < j1; `v` at
/// j·ldv + 0..8KV; `out` readable and writable at r·ldo + 0..8KV.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn du_tile<S: Simd, const R: usize, const KV: usize>(
    e: *const f32,
    lde: usize,
    j0: usize,
    j1: usize,
    v: *const f32,
    ldv: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: every offset is inside the ranges of the contract.
    unsafe {
        // Each JC-column block is summed from zero and then added to `out`:
        // blocked summation, so the f32 rounding grows with N/JC + JC rather
        // than with N (measured: 4e-5 → 1e-6 relative at N = 300 000).
        let mut acc = [[S::zero(); KV]; R];
        for j in j0..j1 {
            let mut b = [S::zero(); KV];
            for (q, bq) in b.iter_mut().enumerate() {
                *bq = S::load(v.add(j * ldv + 8 * q));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let x = S::splat(*e.add(r * lde + j));
                for (a, &bq) in accr.iter_mut().zip(&b) {
                    *a = x.fma(bq, *a);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            for (q, a) in accr.iter().enumerate() {
                let p = out.add(r * ldo + 8 * q);
                a.add(S::load(p)).store(p);
            }
        }
    }
}

/// part.dv[j][·] += Σ_{rr<r} e_rr,j·us[rr][·] for the part's columns j
/// (local indices 0..j1−j0).
///
/// # Safety
///
/// S supported; sizes as asserted in [`phase_b`].
#[inline(always)]
unsafe fn dv_block<S: Simd>(part: &mut Part<'_>, kp: usize, r: usize) {
    let (ld, cols) = (part.ld, part.j1 - part.j0);
    debug_assert!(
        part.strip.len() >= r * ld && part.us.len() >= r * kp && part.dv.len() == cols * kp
    );
    let mut j = 0;
    while j < cols {
        let jn = MR.min(cols - j);
        let mut c = 0;
        while c < kp {
            let e = part.strip[j..].as_ptr();
            let a = part.us[c..].as_ptr();
            let out = part.dv[j * kp + c..].as_mut_ptr();
            // SAFETY: S supported; e covers r rows of stride ld at local
            // columns j..j+jn ≤ cols ≤ ld; a covers r rows of stride kp at
            // columns c..c+8KV ≤ kp; out covers jn rows of stride kp at the
            // same columns (rows j..j+jn ≤ cols of the part's dV).
            unsafe {
                if kp - c >= 16 {
                    dv_tile_cols::<S, 2>(jn, e, ld, r, a, kp, out);
                    c += 16;
                } else {
                    dv_tile_cols::<S, 1>(jn, e, ld, r, a, kp, out);
                    c += 8;
                }
            }
        }
        j += jn;
    }
}

/// Dispatches a dV tile on its (run-time) column count.
///
/// # Safety
///
/// As [`dv_tile`] with C = `cols` ≤ 6.
#[inline(always)]
unsafe fn dv_tile_cols<S: Simd, const KV: usize>(
    cols: usize,
    e: *const f32,
    lde: usize,
    r: usize,
    a: *const f32,
    lda: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match cols {
            6 => dv_tile::<S, 6, KV>(e, lde, r, a, lda, out),
            5 => dv_tile::<S, 5, KV>(e, lde, r, a, lda, out),
            4 => dv_tile::<S, 4, KV>(e, lde, r, a, lda, out),
            3 => dv_tile::<S, 3, KV>(e, lde, r, a, lda, out),
            2 => dv_tile::<S, 2, KV>(e, lde, r, a, lda, out),
            _ => dv_tile::<S, 1, KV>(e, lde, r, a, lda, out),
        }
    }
}

/// out[c][0..8KV] += Σ_{i<r} e[i][c]·a[i][0..8KV] for c < C.
///
/// # Safety
///
/// S supported; `e` readable at i·lde + c for i < r, c < C; `a` at
/// i·lda + 0..8KV; `out` readable and writable at c·lda + 0..8KV.
#[inline(always)]
unsafe fn dv_tile<S: Simd, const C: usize, const KV: usize>(
    e: *const f32,
    lde: usize,
    r: usize,
    a: *const f32,
    lda: usize,
    out: *mut f32,
) {
    // SAFETY: every offset is inside the ranges of the contract.
    unsafe {
        let mut acc = [[S::zero(); KV]; C];
        for i in 0..r {
            let mut b = [S::zero(); KV];
            for (q, bq) in b.iter_mut().enumerate() {
                *bq = S::load(a.add(i * lda + 8 * q));
            }
            for (c, accc) in acc.iter_mut().enumerate() {
                let x = S::splat(*e.add(i * lde + c));
                for (s, &bq) in accc.iter_mut().zip(&b) {
                    *s = x.fma(bq, *s);
                }
            }
        }
        for (c, accc) in acc.iter().enumerate() {
            for (q, s) in accc.iter().enumerate() {
                let p = out.add(c * lda + 8 * q);
                s.add(S::load(p)).store(p);
            }
        }
    }
}
