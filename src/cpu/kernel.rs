//! The fused CPU kernels, generic over the [`Simd`] instruction set.
//!
//! One worker owns a contiguous range of rows (a [`Chunk`]) and walks it in
//! row blocks of `mb` rows. For one block (rows i0..i0+r):
//!
//! 1. **Logit strip** S = U_b·Vᵀ/τ − log_q (r × N_pad floats, the only buffer
//!    that grows with N), by a 6×16 register-blocked micro-kernel over the
//!    packed panels of Vᵀ (12 ymm accumulators; broadcast from U, two vector
//!    loads from the panel).
//! 2. **Row pass** for each row i: diagonal and accidental-hit fix-ups, then
//!    m = max_j s_ij and e_ij = exp(s_ij − m) *in place*, one exp per element.
//!    The diagonal is kept out of the sums: with Σ′ = Σ_{j≠i} e_ij and
//!    e_ii = exp(s_ii − m), lse_i = m + ln(e_ii + Σ′), ℓ_i = ln(1 + Σ′/e_ii),
//!    and the strip's diagonal is overwritten by −Σ′, so that
//!    c_i·strip_ij = G_ij/τ for every j with c_i = w_i/(B·τ·(e_ii + Σ′)):
//!    G_ii = (w_i/B)(P_ii − 1) = −(w_i/B)·Σ′/(e_ii + Σ′) is formed without the
//!    cancellation of P_ii − 1 when the positive dominates.
//! 3. **dU_b** = diag(c)·E·V (6×16 micro-kernel, broadcast from the strip,
//!    vector loads from V's rows; blocked over `JC` columns for cache reuse).
//! 4. **dV** += Eᵀ·diag(c)·U_b into the worker's private accumulator
//!    (6 candidates × 16 components per micro-kernel, reduction over the
//!    block's rows in registers, then one add into the accumulator).
//!
//! The strip is written once and read back (6·B·N·K flops, no recompute).
//! Every sum runs in a fixed order, so a chunk's results depend only on its
//! rows: the CPU backend is deterministic for a fixed number of chunks.

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
    /// N rounded up to a multiple of [`NR`]: the strip's row length.
    pub np: usize,
    /// The strip's row stride: np, or np + 16 so that stride/64 bytes is odd —
    /// a stride of a multiple of 4 KiB maps every row of a column to the same
    /// L1 set, and the dV kernel reads the strip down its columns.
    pub ld: usize,
    /// K.
    pub k: usize,
    /// K rounded up to a multiple of 8; the packed rows' stride.
    pub kp: usize,
    /// 1/τ.
    pub inv_tau: f32,
    /// 1/(B·τ) in f64.
    pub inv_b_tau: f64,
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
    /// log_q, for the uncorrected diagonal.
    pub log_q: &'a [f32],
    /// Row weights, if any.
    pub weight: Option<&'a [f32]>,
    /// Subtract log_q on the diagonal too.
    pub correct_positive: bool,
    /// Accidental-hit groups (see `Problem::hit_groups`).
    pub hits: Option<(&'a [usize], &'a [Vec<usize>])>,
}

/// The rows one worker owns, its outputs and its scratch.
pub(crate) struct Chunk<'a> {
    /// First global row.
    pub row0: usize,
    /// Number of rows.
    pub rows: usize,
    /// Rows of the row block (multiple of [`MR`] unless it covers the chunk).
    pub mb: usize,
    /// This chunk's rows of dU, rows×K.
    pub d_u: &'a mut [f32],
    /// lse of this chunk's rows.
    pub lse: &'a mut [f32],
    /// ℓ_i of this chunk's rows.
    pub row_loss: &'a mut [f32],
    /// Top-1 flags of this chunk's rows.
    pub top1: &'a mut [bool],
    /// w_i·ℓ_i in f64, for the loss sum.
    pub wloss: &'a mut [f64],
    /// Private dV accumulator, n×kp, zero on entry.
    pub dv: &'a mut [f32],
    /// Scratch: the logit strip, mb×np.
    pub strip: &'a mut [f32],
    /// Scratch: unscaled dU of the block, mb×kp.
    pub du: &'a mut [f32],
    /// Scratch: c_i·U_i of the block, mb×kp.
    pub us: &'a mut [f32],
    /// Scratch: c_i of the block, mb.
    pub c: &'a mut [f32],
}

/// Runs the four phases over every row block of the chunk.
///
/// # Safety
///
/// The CPU supports `S`'s instruction set. (Every buffer size the
/// micro-kernels rely on is asserted here, once per call.)
#[inline(always)]
pub(crate) unsafe fn run_chunk<S: Simd>(sh: &Shared<'_>, ch: &mut Chunk<'_>) {
    let (n, np, ld, k, kp, mb) = (sh.n, sh.np, sh.ld, sh.k, sh.kp, ch.mb);
    assert!(np % NR == 0 && np >= n && ld >= np && kp % 8 == 0 && kp >= k && mb >= 1);
    assert!(ch.row0 + ch.rows <= sh.b);
    assert!(sh.up.len() == sh.b * kp && sh.vp.len() == n * kp);
    assert!(sh.vt.len() == np * kp && sh.nlq.len() == np && sh.log_q.len() == n);
    assert!(ch.strip.len() >= mb * ld && ch.du.len() >= mb * kp && ch.us.len() >= mb * kp);
    assert!(ch.c.len() >= mb && ch.dv.len() == n * kp && ch.d_u.len() == ch.rows * k);
    assert!(ch.lse.len() == ch.rows && ch.row_loss.len() == ch.rows);
    assert!(ch.top1.len() == ch.rows && ch.wloss.len() == ch.rows);

    let mut start = 0;
    while start < ch.rows {
        let r = mb.min(ch.rows - start);
        let i0 = ch.row0 + start;
        // SAFETY: S is supported (our contract); the asserts above bound every
        // access: strip rows < r ≤ mb of stride ld, up rows i0..i0+r < B.
        unsafe { strip_block::<S>(sh, &sh.up[i0 * kp..(i0 + r) * kp], r, ch.strip) };
        for rr in 0..r {
            let local = start + rr;
            let row = &mut ch.strip[rr * ld..rr * ld + np];
            // SAFETY: S is supported; row has np elements, a multiple of 16.
            let st = unsafe { row_softmax::<S>(sh, i0 + rr, row) };
            ch.lse[local] = st.lse as f32;
            ch.row_loss[local] = st.loss as f32;
            ch.top1[local] = st.top1;
            ch.wloss[local] = sh.weight.map_or(1.0, |w| w[i0 + rr] as f64) * st.loss;
            ch.c[rr] = st.c;
        }
        ch.du[..r * kp].fill(0.0);
        // SAFETY: S is supported; strip holds r rows of stride ld ≥ np ≥ n, du r rows of kp.
        unsafe { du_block::<S>(sh, ch.strip, r, ch.du) };
        for rr in 0..r {
            let c = ch.c[rr];
            let dst = &mut ch.d_u[(start + rr) * k..(start + rr + 1) * k];
            dst.iter_mut()
                .zip(&ch.du[rr * kp..])
                .for_each(|(d, &x)| *d = c * x);
            let src = &sh.up[(i0 + rr) * kp..(i0 + rr + 1) * kp];
            let us = &mut ch.us[rr * kp..(rr + 1) * kp];
            us.iter_mut().zip(src).for_each(|(d, &x)| *d = c * x);
        }
        // SAFETY: S is supported; strip r rows of stride ld, us r×kp, dv n×kp.
        unsafe { dv_block::<S>(sh, ch.strip, r, ch.us, ch.dv) };
        start += r;
    }
}

/// Per-row results of the row pass.
struct RowStats {
    lse: f64,
    loss: f64,
    top1: bool,
    /// w_i / (B·τ·Σ_j e_ij): turns strip values into G_ij/τ.
    c: f32,
}

/// strip[rr·ld + j] = ⟨u_rr, v_j⟩/τ − log_q[j] for rr < r, j < np.
///
/// # Safety
///
/// S supported; `ub.len() == r·kp`, `strip.len() ≥ r·ld`, Shared sizes as
/// asserted in [`run_chunk`].
#[inline(always)]
unsafe fn strip_block<S: Simd>(sh: &Shared<'_>, ub: &[f32], r: usize, strip: &mut [f32]) {
    debug_assert!(ub.len() == r * sh.kp && strip.len() >= r * sh.ld);
    let (kp, np, ld) = (sh.kp, sh.np, sh.ld);
    // Panel outer, row group inner: one 16×kp panel of Vᵀ stays in L1 while
    // every row group of the block (≤ mb×kp floats of U, also L1) passes.
    for p in 0..np / NR {
        let panel = sh.vt[p * kp * NR..].as_ptr();
        let nlq = sh.nlq[p * NR..].as_ptr();
        let mut g = 0;
        while g < r {
            let rows = MR.min(r - g);
            let a = ub[g * kp..].as_ptr();
            let out = strip[g * ld + p * NR..].as_mut_ptr();
            // SAFETY: S supported; a covers `rows` rows of kp, the panel kp×16
            // floats, nlq 16 floats, out `rows` rows of stride ld with 16
            // columns left in each (p·16 + 16 ≤ np).
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

/// The row pass of row `i` (see the module docs), in place on its strip row.
///
/// # Safety
///
/// S supported; `row.len() == sh.np`, a multiple of 16.
#[inline(always)]
unsafe fn row_softmax<S: Simd>(sh: &Shared<'_>, i: usize, row: &mut [f32]) -> RowStats {
    debug_assert!(row.len() == sh.np && row.len().is_multiple_of(NR));
    if !sh.correct_positive {
        // Uncorrected diagonal: ⟨u_i, v_i⟩/τ without − log_q[i].
        let (u, v) = (&sh.up[i * sh.kp..][..sh.k], &sh.v[i * sh.k..][..sh.k]);
        row[i] = u.iter().zip(v).fold(0.0f32, |s, (&x, &y)| x.mul_add(y, s)) * sh.inv_tau;
    }
    let s_ii = row[i];
    row[i] = f32::NEG_INFINITY;
    if let Some((group_of_row, groups)) = sh.hits
        && let Some(cols) = groups.get(group_of_row[i])
    {
        cols.iter().for_each(|&j| row[j] = f32::NEG_INFINITY);
    }
    let p = row.as_mut_ptr();
    let len = row.len();
    // SAFETY: S supported; p is valid for len elements, len a multiple of 16,
    // and every access below is at offset j..j+16 with j + 16 ≤ len.
    let (m_off, sum_off) = unsafe {
        let (mut m0, mut m1) = (S::splat(f32::NEG_INFINITY), S::splat(f32::NEG_INFINITY));
        for j in (0..len).step_by(NR) {
            m0 = m0.max(S::load(p.add(j)));
            m1 = m1.max(S::load(p.add(j + 8)));
        }
        let m_off = m0.max(m1).reduce_max();
        let mv = S::splat(-m_off.max(s_ii));
        // Blocked sum (JC columns from zero, then into the total): rounding
        // grows with N/JC + JC, not with N.
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
        (m_off, total.reduce_sum())
    };
    let m = m_off.max(s_ii) as f64;
    let s_ii64 = s_ii as f64;
    let sum_off = sum_off as f64;
    let e_ii = (s_ii64 - m).exp();
    let sum = e_ii + sum_off;
    let lse = m + sum.ln();
    // ln(1 + Σ′/e_ii) is exact to rounding even when the positive dominates;
    // when e_ii underflows the direct difference has no cancellation anyway.
    let loss = if e_ii > 1e-300 {
        (sum_off / e_ii).ln_1p()
    } else {
        lse - s_ii64
    };
    row[i] = -(sum_off as f32);
    let w = sh.weight.map_or(1.0, |w| w[i] as f64);
    RowStats {
        lse,
        loss,
        top1: s_ii >= m_off,
        c: (w * sh.inv_b_tau / sum) as f32,
    }
}

/// du[rr][·] += Σ_{j<n} strip[rr][j]·V[j][·] for rr < r.
///
/// # Safety
///
/// S supported; `strip.len() ≥ r·np`, `du.len() ≥ r·kp`, Shared sizes as
/// asserted in [`run_chunk`].
#[inline(always)]
unsafe fn du_block<S: Simd>(sh: &Shared<'_>, strip: &[f32], r: usize, du: &mut [f32]) {
    debug_assert!(strip.len() >= r * sh.ld && du.len() >= r * sh.kp);
    let (n, ld, kp) = (sh.n, sh.ld, sh.kp);
    for j0 in (0..n).step_by(JC) {
        let j1 = (j0 + JC).min(n);
        let mut g = 0;
        while g < r {
            let rows = MR.min(r - g);
            let mut c = 0;
            while c < kp {
                let e = strip[g * ld..].as_ptr();
                let v = sh.vp[n * c..].as_ptr();
                let out = du[g * kp + c..].as_mut_ptr();
                // SAFETY: S supported; e covers `rows` strip rows (stride ld,
                // columns j0..j1 ≤ n ≤ np); v is column tile c (n rows of
                // 8·KV floats, 8·KV = 16 when kp − c ≥ 16, else 8 = kp − c);
                // out covers `rows` rows of stride kp at columns c..c+8·KV ≤ kp.
                unsafe {
                    if kp - c >= 16 {
                        du_tile_rows::<S, 2>(rows, e, ld, j0, j1, v, 16, out, kp);
                        c += 16;
                    } else {
                        du_tile_rows::<S, 1>(rows, e, ld, j0, j1, v, 8, out, kp);
                        c += 8;
                    }
                }
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

/// dv[j][·] += Σ_{rr<r} strip[rr][j]·us[rr][·] for j < n.
///
/// # Safety
///
/// S supported; `strip.len() ≥ r·np`, `us.len() ≥ r·kp`, `dv.len() == n·kp`.
#[inline(always)]
unsafe fn dv_block<S: Simd>(sh: &Shared<'_>, strip: &[f32], r: usize, us: &[f32], dv: &mut [f32]) {
    debug_assert!(strip.len() >= r * sh.ld && us.len() >= r * sh.kp && dv.len() == sh.n * sh.kp);
    let (n, ld, kp) = (sh.n, sh.ld, sh.kp);
    let mut j = 0;
    while j < n {
        let cols = MR.min(n - j);
        let mut c = 0;
        while c < kp {
            let e = strip[j..].as_ptr();
            let a = us[c..].as_ptr();
            let out = dv[j * kp + c..].as_mut_ptr();
            // SAFETY: S supported; e covers r rows of stride ld at columns
            // j..j+cols ≤ n; a covers r rows of stride kp at columns c..c+8KV
            // ≤ kp; out covers `cols` rows of stride kp at the same columns.
            unsafe {
                if kp - c >= 16 {
                    dv_tile_cols::<S, 2>(cols, e, ld, r, a, kp, out);
                    c += 16;
                } else {
                    dv_tile_cols::<S, 1>(cols, e, ld, r, a, kp, out);
                    c += 8;
                }
            }
        }
        j += cols;
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
