//! Step 5, **phase B** of one column part for one row block — the CPU's
//! `mns_du_f32` and `mns_dv_f32` (the CUDA gradient kernels of
//! `kernels/mns.cu`), on the strip of exponentials phase A left behind and
//! the row coefficients of the row merge:
//!
//! 3. the part's share of dU_b, Σ_j e_ij·V_j (ROWS × two-vector
//!    micro-kernel, broadcast from the strip, vector loads from V's rows —
//!    V as given when K needs no padding, else its column tiles — blocked
//!    over [`JC`] columns), scaled and summed over parts by the combine
//!    step;
//! 4. dV_j += Σ_i e_ij·(c_p,i·U_i) for the part's own columns j — each part
//!    owns its rows of dV, so no reduction and no private copies.

use super::kernel::{JC, MR, Part, with_rows};
use super::pack::Shared;
use super::simd::{Simd, prefetch, prefetch_l2};

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
    // wt = min(16, kp − t0): rows j at vp[n·t0 + j·wt + c − t0] — or, when
    // vp is V as given (kp = K), at vp[j·kp + c]. Returns the pointer at row
    // j0 and the row stride (wt, or kp).
    let tile_ptr = |c: usize| {
        if kp == sh.k {
            return (sh.vp[part.j0 * kp + c..].as_ptr(), kp);
        }
        let t0 = c - c % 16;
        let wt = 16.min(kp - t0);
        (sh.vp[n * t0 + part.j0 * wt + c - t0..].as_ptr(), wt)
    };
    // JC block outer, K chunk next, row group inner: one chunk of V (JC
    // rows × V·L floats, 32 KiB for AVX-512) stays in L1 while every row
    // group of the block passes over it.
    for c0 in (0..cols).step_by(JC) {
        let c1 = (c0 + JC).min(cols);
        // V as given: the next block's rows, asked into L2 a share at a
        // time while this block computes, one prefetch per 128 bytes (as
        // fast as one per 64-byte line, with half the instructions).
        let next: &[f32] = if kp == sh.k {
            &sh.vp[(part.j0 + c1) * kp..(part.j0 + (c1 + JC).min(cols)) * kp]
        } else {
            &[]
        };
        let steps = kp.div_ceil(2 * l) * r.div_ceil(S::ROWS);
        let mut ahead = next.chunks(next.len().div_ceil(32 * steps).max(1) * 32);
        let mut c = 0;
        while c < kp {
            let wide = kp - c >= 2 * l;
            let (v0, w0) = tile_ptr(c);
            let v1 = if wide { tile_ptr(c + l) } else { (v0, w0) };
            debug_assert_eq!(w0, v1.1);
            let mut g = 0;
            while g < r {
                let rows = S::ROWS.min(r - g);
                if let Some(share) = ahead.next() {
                    share.iter().step_by(32).for_each(|x| prefetch_l2(x));
                }
                let e = part.strip[g * ld..].as_ptr();
                let out = part.du[g * kp + c..].as_mut_ptr();
                // SAFETY: S supported; e covers `rows` strip rows (stride ld,
                // local columns c0..c1 ≤ cols ≤ w_part ≤ ld); each V pointer
                // is at row j0 of its column tile, whose rows j0 + c0..j0 + c1
                // ≤ j1 ≤ n have wt floats with the vector's L lanes inside
                // (c and kp are multiples of L and 16 % L = 0, so a vector
                // never straddles tiles; the two vectors of a wide step sit
                // in tiles of the same width: both 16, or one tile of 16 when
                // L = 8), or, V as given, rows of kp floats with the lanes
                // inside (c + V·L ≤ kp); out covers `rows` rows of stride kp at columns
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
