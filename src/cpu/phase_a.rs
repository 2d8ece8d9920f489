//! Step 3, **phase A** of one column part for one row block (rows i0..i0+r,
//! columns j0..j1) — the CPU's `mns_fwd_f32` (the CUDA forward kernel of
//! `kernels/mns.cu`, which does the same per column split):
//!
//! 1. the part's logit strip S = U_b·V_partᵀ/τ − log_q (r × w floats) by a
//!    register-blocked micro-kernel over packed 16-wide panels of Vᵀ: ROWS
//!    rows × two vectors of columns (AVX2: 6 × 16 in 12 ymm accumulators;
//!    AVX-512: 12 × 32, two panels, in 24 zmm), broadcast from U, two
//!    vector loads from the panels per step of K;
//! 2. per row: the diagonal (the positive's column i + o, if it is in the
//!    part) is recorded and
//!    taken out, accidental hits are set to −∞, then m_p = max of the part's
//!    row and e_ij = exp(s_ij − m_p) *in place* (one exp per logit), with the
//!    part's sum Σ_p (blocked: [`JC`] terms from zero, then into the total).
//!
//! The strip stays in the part's scratch for phase B (no recompute: 6·B·N·K
//! flops in all).

use super::kernel::{JC, MR, NR, Part, with_rows};
use super::pack::Shared;
use super::simd::{Simd, exp, prefetch};

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
    assert!(NR.is_multiple_of(S::LANES) && kp.is_multiple_of(S::LANES) && S::ROWS <= MR);
    assert!(
        part.j0.is_multiple_of(NR)
            && part.j1 <= sh.n
            && part.j0 + w <= sh.np
            && w.is_multiple_of(NR)
    );
    assert!(ld >= w && part.strip.len() >= r * ld && i0 + r <= sh.b);
    assert!(part.max.len() >= r && part.sum.len() >= r && part.diag.len() >= r);
    assert!(sh.up.len() == sh.b * kp && sh.vt.len() == sh.np * kp && sh.nlq.len() == sh.np);
    assert!(sh.ug.len() >= r.next_multiple_of(S::ROWS) * kp && i0.is_multiple_of(S::ROWS));
    // SAFETY: S is supported (our contract); the asserts bound every access:
    // the block's row groups 0 .. r/ROWS within ug, panels j0/16 ..
    // (j0+w)/16 ≤ np/16, strip rows < r of stride ld ≥ w.
    unsafe { strip_block::<S>(sh, r, part) };
    // SAFETY: S is supported (our contract).
    unsafe { finish_rows::<S>(sh, part, i0, r) };
}

/// Step 2 of phase A on a part's finished logit strip, rows i0..i0+r:
/// per row [`fix_row`], then the max, the exponentials in place and their
/// sum (see the module docs).
///
/// # Safety
///
/// The CPU supports `S`'s instruction set.
#[inline(always)]
unsafe fn finish_rows<S: Simd>(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    let (w, ld) = (part.w, part.ld);
    assert!(w.is_multiple_of(NR) && ld >= w && part.strip.len() >= r * ld && i0 + r <= sh.b);
    assert!(part.max.len() >= r && part.sum.len() >= r && part.diag.len() >= r);
    for rr in 0..r {
        fix_row(sh, part, i0, rr);
        let row = &mut part.strip[rr * ld..rr * ld + w];
        // SAFETY: S is supported; row has w elements, a multiple of 16 and
        // so of S::LANES (asserted above).
        let (m, s) = unsafe { max_exp_sum::<S>(row) };
        part.max[rr] = m;
        part.sum[rr] = s;
    }
}

/// Strip row rr (query i0 + rr) of a part before its exponentials: the
/// positive's logit recorded in `diag` and taken out of the row, the
/// accidental hits set to −∞. Shared by every tier.
pub(crate) fn fix_row(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, rr: usize) {
    let (kp, w, ld) = (sh.kp, part.w, part.ld);
    let i = i0 + rr;
    let row = &mut part.strip[rr * ld..rr * ld + w];
    part.diag[rr] = None;
    // Row i's positive, column i + o.
    let pos = i + sh.offset;
    if (part.j0..part.j1).contains(&pos) {
        let local = pos - part.j0;
        if !sh.correct_positive {
            // Uncorrected positive: ⟨u_i, v_{i+o}⟩/τ without − log_q[i + o],
            // from the factors the tier's products use.
            let (u, v0) = (&sh.up[i * kp..][..sh.k], pos * sh.k);
            let f = sh.round;
            row[local] = u
                .iter()
                .enumerate()
                .fold(0.0f32, |s, (c, &x)| f(x).mul_add(f(sh.v.get(v0 + c)), s))
                * sh.inv_tau;
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
}

/// strip[rr·ld + j − j0] = ⟨u_rr, v_j⟩/τ − log_q[j] for the block's rows
/// rr < r (their groups in `sh.ug`) and the part's padded columns
/// j0 ≤ j < j0 + w.
///
/// # Safety
///
/// S supported; sizes as asserted in [`phase_a`].
#[inline(always)]
unsafe fn strip_block<S: Simd>(sh: &Shared<'_>, r: usize, part: &mut Part<'_>) {
    debug_assert!(part.strip.len() >= r * part.ld);
    let (kp, ld, l) = (sh.kp, part.ld, S::LANES);
    // Vector `q` of a tile starting at part column `col` holds the global
    // columns j0 + col + q·L ..+L: panel (that)/16, lanes (that)%16 onwards.
    let panel_ptr = |col: usize| {
        let j = part.j0 + col;
        sh.vt[(j / NR) * kp * NR + j % NR..].as_ptr()
    };
    // Tile outer, row group inner: the tile's kp×2L floats of Vᵀ stay in L1
    // while every row group of the block (≤ mb×kp floats of U, also L1) passes.
    let mut col = 0;
    while col < part.w {
        let wide = part.w - col >= 2 * l;
        let nlq = sh.nlq[part.j0 + col..].as_ptr();
        let mut g = 0;
        while g < r {
            let rows = S::ROWS.min(r - g);
            let a = sh.ug[g * kp..].as_ptr();
            let out = part.strip[g * ld + col..].as_mut_ptr();
            // SAFETY: S supported; a is the block's row group g/ROWS in ug
            // (g a multiple of ROWS), kp·ROWS floats; each panel
            // pointer has kp rows of 16 floats from its panel start, of which
            // the vector reads lanes (j0 + col + q·L)%16 ..+L ≤ 16 (16 % L = 0
            // and col, j0 are multiples of L); nlq and each out row have the
            // tile's L·V ≤ w − col columns left (out rows of stride ld ≥ w).
            unsafe {
                if wide {
                    let b = [panel_ptr(col), panel_ptr(col + l)];
                    with_rows!(rows, R => strip_tile::<S, R, 2>(a, kp, b, nlq, sh.inv_tau, out, ld));
                } else {
                    let b = [panel_ptr(col)];
                    with_rows!(rows, R => strip_tile::<S, R, 1>(a, kp, b, nlq, sh.inv_tau, out, ld));
                }
            }
            g += rows;
        }
        col += if wide { 2 * l } else { l };
    }
}

/// R × V·L logit tile: out[r][q·L + l] = (Σ_c a[c·ROWS + r]·b_q[c·16 + l])·inv_tau + nlq[q·L + l].
///
/// # Safety
///
/// S supported; R ≤ S::ROWS; `a` readable for kp·S::ROWS floats (a row
/// group of [`Shared::ug`]), each `b[q]` at c·16 + 0..L for c < kp, `nlq` for V·L, `out` writable for
/// R rows of stride `ldo` with V·L elements each.
#[inline(always)]
unsafe fn strip_tile<S: Simd, const R: usize, const V: usize>(
    a: *const f32,
    kp: usize,
    b: [*const f32; V],
    nlq: *const f32,
    inv_tau: f32,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: every pointer offset stays inside the ranges of the contract.
    unsafe {
        let mut acc = [[S::zero(); V]; R];
        for c in 0..kp {
            // U streams from L2 (a block's ug fills L1 with the Vᵀ tile beside
            // it): fetch 8 steps of K ahead; the tail overshoots into the next
            // row group's lines or past ug, which a prefetch may do.
            prefetch(a.wrapping_add((c + 8) * S::ROWS));
            let mut bv = [S::zero(); V];
            for (x, &p) in bv.iter_mut().zip(&b) {
                *x = S::load(p.add(c * NR));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let x = S::splat(*a.add(c * S::ROWS + r));
                for (s, &y) in accr.iter_mut().zip(&bv) {
                    *s = x.fma(y, *s);
                }
            }
        }
        let it = S::splat(inv_tau);
        let mut q = [S::zero(); V];
        for (i, x) in q.iter_mut().enumerate() {
            *x = S::load(nlq.add(i * S::LANES));
        }
        for (r, accr) in acc.iter().enumerate() {
            for (i, s) in accr.iter().enumerate() {
                s.fma(it, q[i]).store(out.add(r * ldo + i * S::LANES));
            }
        }
    }
}

/// One strip row of a part: m = max_j row[j], then row[j] = exp(row[j] − m)
/// in place and Σ_j row[j]; returns (m, Σ). A row of −∞ gives (−∞, 0) and
/// zeros (the shift is then 0).
///
/// # Safety
///
/// S supported; `row.len()` is a multiple of 16 (so of S::LANES).
#[inline(always)]
unsafe fn max_exp_sum<S: Simd>(row: &mut [f32]) -> (f32, f32) {
    debug_assert!(row.len().is_multiple_of(NR) && NR.is_multiple_of(S::LANES));
    // SAFETY: S supported (our contract), row.len() a multiple of 16.
    let m = unsafe { row_max::<S>(row) };
    let p = row.as_mut_ptr();
    let (len, l) = (row.len(), S::LANES);
    // SAFETY: S supported; p is valid for len elements, len a multiple of L,
    // and every access is at offset j..j+L with j + L ≤ len.
    unsafe {
        let mv = S::splat(if m == f32::NEG_INFINITY { 0.0 } else { -m });
        // Blocked sum (JC columns from zero, then into the total): rounding
        // grows with len/JC + JC, not with len.
        let mut total = S::zero();
        for j0 in (0..len).step_by(JC) {
            let j1 = (j0 + JC).min(len);
            let jp = j0 + (j1 - j0) / (2 * l) * (2 * l);
            let (mut s0, mut s1) = (S::zero(), S::zero());
            for j in (j0..jp).step_by(2 * l) {
                s0 = s0.add(exp_in_place(p.add(j), mv));
                s1 = s1.add(exp_in_place(p.add(j + l), mv));
            }
            if jp < j1 {
                s0 = s0.add(exp_in_place(p.add(jp), mv));
            }
            total = total.add(s0.add(s1));
        }
        (m, total.reduce_sum())
    }
}

/// max_j row\[j\] (−∞ for a row of −∞).
///
/// # Safety
///
/// S supported; `row.len()` is a multiple of 16 (so of S::LANES).
#[inline(always)]
pub(crate) unsafe fn row_max<S: Simd>(row: &[f32]) -> f32 {
    let (p, len, l) = (row.as_ptr(), row.len(), S::LANES);
    // Two independent accumulators; `pairs` is the part covered by whole
    // pairs of vectors, and at most one vector is left (len % 16 = 0).
    let pairs = len / (2 * l) * (2 * l);
    // SAFETY: S supported; every access is at j..j+L with j + L ≤ len.
    unsafe {
        let (mut m0, mut m1) = (S::splat(f32::NEG_INFINITY), S::splat(f32::NEG_INFINITY));
        for j in (0..pairs).step_by(2 * l) {
            m0 = m0.max(S::load(p.add(j)));
            m1 = m1.max(S::load(p.add(j + l)));
        }
        if pairs < len {
            m0 = m0.max(S::load(p.add(pairs)));
        }
        m0.max(m1).reduce_max()
    }
}

/// *p = exp(*p + shift) on one vector, returning the new value.
///
/// # Safety
///
/// S supported; `p` valid for reading and writing S::LANES floats.
#[inline(always)]
unsafe fn exp_in_place<S: Simd>(p: *mut f32, shift: S) -> S {
    // SAFETY: the caller's contract.
    unsafe {
        let e = exp(S::load(p).add(shift));
        e.store(p);
        e
    }
}
