//! The fused CPU kernels, generic over the [`Simd`] instruction set.
//!
//! Work is organized by row blocks of `mb` queries; within a block the N
//! candidates are split into column *parts* that the workers process in
//! parallel (see `mod.rs`). For one block (rows i0..i0+r) and one part
//! (columns j0..j1):
//!
//! **Phase A** ([`phase_a`]):
//! 1. the part's logit strip S = U_b·V_partᵀ/τ − log_q (r × w floats) by a
//!    register-blocked micro-kernel over packed 16-wide panels of Vᵀ: ROWS
//!    rows × two vectors of columns (AVX2: 6 × 16 in 12 ymm accumulators;
//!    AVX-512: 12 × 32, two panels, in 24 zmm), broadcast from U, two
//!    vector loads from the panels per step of K;
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
//! 3. the part's share of dU_b, Σ_j e_ij·V_j (ROWS × two-vector
//!    micro-kernel, broadcast from the strip, vector loads from V's column
//!    tiles, blocked over `JC` columns), scaled and summed over parts by the
//!    caller;
//! 4. dV_j += Σ_i e_ij·(c_p,i·U_i) for the part's own columns j — each part
//!    owns its rows of dV, so no reduction and no private copies.
//!
//! The strips are written once and read back (6·B·N·K flops, no recompute).
//! Every sum runs in a fixed order, independent of which thread runs which
//! part: results are bit-for-bit reproducible.

use super::simd::{Simd, exp, prefetch};

/// Row blocks are multiples of this many queries: every instruction set's
/// micro-kernel height [`Simd::ROWS`] (6 or 12) divides it.
pub(crate) const MR: usize = 12;
/// Width of one Vᵀ panel and alignment of the column parts: 16 candidates
/// (two AVX2 vectors, one AVX-512 vector).
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
    /// K rounded up to a multiple of [`Simd::LANES`]; the packed rows' stride.
    pub kp: usize,
    /// 1/τ.
    pub inv_tau: f32,
    /// U packed B×kp, zero-padded.
    pub up: &'a [f32],
    /// U for the logit kernel, in groups of [`Simd::ROWS`] rows interleaved:
    /// row g·ROWS + rr, column c at ug[(g·kp + c)·ROWS + rr], zero past B,
    /// so that a micro-kernel's broadcasts at one step of K are adjacent
    /// floats at fixed offsets from one pointer.
    pub ug: &'a [f32],
    /// V for the dU kernel, in column tiles: the 16 (last: kp − c < 16) columns
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
    pub strip: super::Aligned,
    /// Unscaled dU share of the block, mb × kp.
    pub du: super::Aligned,
    /// c_p,i·U_i of the block, mb × kp.
    pub us: super::Aligned,
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
    assert!(sh.ug.len() == sh.b.next_multiple_of(S::ROWS) * kp && i0.is_multiple_of(S::ROWS));
    // SAFETY: S is supported (our contract); the asserts bound every access:
    // row groups i0/ROWS .. (i0 + r)/ROWS within ug, panels j0/16 ..
    // (j0+w)/16 ≤ np/16, strip rows < r of stride ld ≥ w.
    unsafe { strip_block::<S>(sh, i0, r, part) };
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
        // SAFETY: S is supported; row has w elements, a multiple of 16 and
        // so of S::LANES (asserted above).
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
    assert!(kp.is_multiple_of(S::LANES) && S::ROWS <= MR);
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

/// Runs `$body` with the const `$r` set to the run-time row count `$rows`
/// (1..=12), so that the micro-kernels' accumulator arrays have a fixed size.
macro_rules! with_rows {
    ($rows:expr, $r:ident => $body:expr) => {
        match $rows {
            12 => {
                const $r: usize = 12;
                $body
            }
            11 => {
                const $r: usize = 11;
                $body
            }
            10 => {
                const $r: usize = 10;
                $body
            }
            9 => {
                const $r: usize = 9;
                $body
            }
            8 => {
                const $r: usize = 8;
                $body
            }
            7 => {
                const $r: usize = 7;
                $body
            }
            6 => {
                const $r: usize = 6;
                $body
            }
            5 => {
                const $r: usize = 5;
                $body
            }
            4 => {
                const $r: usize = 4;
                $body
            }
            3 => {
                const $r: usize = 3;
                $body
            }
            2 => {
                const $r: usize = 2;
                $body
            }
            _ => {
                const $r: usize = 1;
                $body
            }
        }
    };
}

/// strip[rr·ld + j − j0] = ⟨u_rr, v_j⟩/τ − log_q[j] for rr < r and the
/// part's padded columns j0 ≤ j < j0 + w.
///
/// # Safety
///
/// S supported; sizes as asserted in [`phase_a`].
#[inline(always)]
unsafe fn strip_block<S: Simd>(sh: &Shared<'_>, i0: usize, r: usize, part: &mut Part<'_>) {
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
            let a = sh.ug[(i0 + g) * kp..].as_ptr();
            let out = part.strip[g * ld + col..].as_mut_ptr();
            // SAFETY: S supported; a is row group (i0 + g)/ROWS of ug
            // (i0 and g are multiples of ROWS), kp·ROWS floats; each panel
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
    let p = row.as_mut_ptr();
    let (len, l) = (row.len(), S::LANES);
    // Two independent accumulators per pass; `pairs` is the part covered by
    // whole pairs of vectors, and at most one vector is left (len % 16 = 0).
    let pairs = len / (2 * l) * (2 * l);
    // SAFETY: S supported; p is valid for len elements, len a multiple of L,
    // and every access is at offset j..j+L with j + L ≤ len.
    unsafe {
        let (mut m0, mut m1) = (S::splat(f32::NEG_INFINITY), S::splat(f32::NEG_INFINITY));
        for j in (0..pairs).step_by(2 * l) {
            m0 = m0.max(S::load(p.add(j)));
            m1 = m1.max(S::load(p.add(j + l)));
        }
        if pairs < len {
            m0 = m0.max(S::load(p.add(pairs)));
        }
        let m = m0.max(m1).reduce_max();
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

/// part.du[rr][·] += Σ_{j0≤j<j1} e_rr,j·V_j[·] for rr < r (local strip
/// columns 0..j1−j0).
///
/// # Safety
///
/// S supported; sizes as asserted in [`phase_b`].
#[inline(always)]
unsafe fn du_block<S: Simd>(sh: &Shared<'_>, part: &mut Part<'_>, r: usize) {
    let (n, ld, kp, l) = (sh.n, part.ld, sh.kp, S::LANES);
    let cols = part.j1 - part.j0;
    debug_assert!(part.strip.len() >= r * ld && part.du.len() >= r * kp);
    // Vector columns c..c+L live in V's column tile t0 = c − c%16 of width
    // wt = min(16, kp − t0): rows j at vp[n·t0 + j·wt + c − t0]. Returns the
    // pointer at row j0 and the row stride wt.
    let tile_ptr = |c: usize| {
        let t0 = c - c % 16;
        let wt = 16.min(kp - t0);
        (sh.vp[n * t0 + part.j0 * wt + c - t0..].as_ptr(), wt)
    };
    // JC block outer, K chunk next, row group inner: one chunk of V (JC
    // rows × V·L floats, 32 KiB for AVX-512) stays in L1 while every row
    // group of the block passes over it.
    for c0 in (0..cols).step_by(JC) {
        let c1 = (c0 + JC).min(cols);
        let mut c = 0;
        while c < kp {
            let wide = kp - c >= 2 * l;
            let (v0, w0) = tile_ptr(c);
            let v1 = if wide { tile_ptr(c + l) } else { (v0, w0) };
            debug_assert_eq!(w0, v1.1);
            let mut g = 0;
            while g < r {
                let rows = S::ROWS.min(r - g);
                let e = part.strip[g * ld..].as_ptr();
                let out = part.du[g * kp + c..].as_mut_ptr();
                // SAFETY: S supported; e covers `rows` strip rows (stride ld,
                // local columns c0..c1 ≤ cols ≤ w_part ≤ ld); each V pointer
                // is at row j0 of its column tile, whose rows j0 + c0..j0 + c1
                // ≤ j1 ≤ n have wt floats with the vector's L lanes inside
                // (c and kp are multiples of L and 16 % L = 0, so a vector
                // never straddles tiles; the two vectors of a wide step sit
                // in tiles of the same width: both 16, or one tile of 16 when
                // L = 8); out covers `rows` rows of stride kp at columns
                // c..c+V·L ≤ kp.
                unsafe {
                    if wide {
                        with_rows!(rows, R => du_tile::<S, R, 2>(e, ld, c0, c1, [v0, v1.0], w0, out, kp));
                    } else {
                        with_rows!(rows, R => du_tile::<S, R, 1>(e, ld, c0, c1, [v0], w0, out, kp));
                    }
                }
                g += rows;
            }
            c += if wide { 2 * l } else { l };
        }
    }
}

/// out[r][q·L..][..L] += Σ_{j0≤j<j1} e[r][j]·v_q[j·ldv..][..L] for q < V.
///
/// # Safety
///
/// S supported; `e` readable at r·lde + j for r < R, j0 ≤ j < j1; each
/// `v[q]` at j·ldv + 0..L; `out` readable and writable at r·ldo + 0..V·L.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn du_tile<S: Simd, const R: usize, const V: usize>(
    e: *const f32,
    lde: usize,
    j0: usize,
    j1: usize,
    v: [*const f32; V],
    ldv: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: every offset is inside the ranges of the contract.
    unsafe {
        // Each JC-column block is summed from zero and then added to `out`:
        // blocked summation, so the f32 rounding grows with N/JC + JC rather
        // than with N (measured: 4e-5 → 1e-6 relative at N = 300 000).
        let mut acc = [[S::zero(); V]; R];
        for j in j0..j1 {
            let mut b = [S::zero(); V];
            for (bq, &p) in b.iter_mut().zip(&v) {
                *bq = S::load(p.add(j * ldv));
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
                let p = out.add(r * ldo + q * S::LANES);
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
    let (ld, cols, l) = (part.ld, part.j1 - part.j0, S::LANES);
    debug_assert!(
        part.strip.len() >= r * ld && part.us.len() >= r * kp && part.dv.len() == cols * kp
    );
    let mut j = 0;
    while j < cols {
        let jn = S::ROWS.min(cols - j);
        let mut c = 0;
        while c < kp {
            let e = part.strip[j..].as_ptr();
            let a = part.us[c..].as_ptr();
            let out = part.dv[j * kp + c..].as_mut_ptr();
            // SAFETY: S supported; e covers r rows of stride ld at local
            // columns j..j+jn ≤ cols ≤ ld; a covers r rows of stride kp at
            // columns c..c+V·L ≤ kp; out covers jn rows of stride kp at the
            // same columns (rows j..j+jn ≤ cols of the part's dV).
            unsafe {
                if kp - c >= 2 * l {
                    with_rows!(jn, C => dv_tile::<S, C, 2>(e, ld, r, a, kp, out));
                    c += 2 * l;
                } else {
                    with_rows!(jn, C => dv_tile::<S, C, 1>(e, ld, r, a, kp, out));
                    c += l;
                }
            }
        }
        j += jn;
    }
}

/// out[c][0..V·L] += Σ_{i<r} e[i][c]·a[i][0..V·L] for c < C.
///
/// # Safety
///
/// S supported; `e` readable at i·lde + c for i < r, c < C; `a` at
/// i·lda + 0..V·L; `out` readable and writable at c·lda + 0..V·L.
#[inline(always)]
unsafe fn dv_tile<S: Simd, const C: usize, const V: usize>(
    e: *const f32,
    lde: usize,
    r: usize,
    a: *const f32,
    lda: usize,
    out: *mut f32,
) {
    // SAFETY: every offset is inside the ranges of the contract.
    unsafe {
        // The dV rows are read back only after the r-step loop, and they are
        // usually out of L2 (a part's dV is N/parts·K floats): ask for their
        // lines now, so the loads at the end do not stall.
        for c in 0..C {
            // One prefetch per 64-byte line (16 floats).
            for q in (0..V * S::LANES).step_by(16) {
                prefetch(out.add(c * lda + q));
            }
        }
        let mut acc = [[S::zero(); V]; C];
        for i in 0..r {
            let mut b = [S::zero(); V];
            for (q, bq) in b.iter_mut().enumerate() {
                *bq = S::load(a.add(i * lda + q * S::LANES));
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
                let p = out.add(c * lda + q * S::LANES);
                s.add(S::load(p)).store(p);
            }
        }
    }
}
