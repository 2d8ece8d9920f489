//! The bf16 tier ([`crate::Precision::Bf16`]) on AVX512_BF16: the three
//! products with bf16 factors (rounded to nearest even) and f32 sums, by
//! `vdpbf16ps`, which multiplies 32 bf16 pairs and adds each lane's two
//! products into an f32 accumulator — twice the multiply-adds of an f32 FMA
//! per instruction. Everything else (the exp, the row merge, the combine,
//! the loss) is the f32 path's, so the tier differs from F32 only where
//! docs/design.md §9 says it may: in the rounding of the products' factors.
//!
//! `vdpbf16ps` reduces over the two halves of each 32-bit lane, so each
//! product needs its factors paired along its reduction index:
//!
//! | product | reduction | left factor (broadcast pair) | right factor (vector of 16 pairs) |
//! |---|---|---|---|
//! | S = U·Vᵀ (phase A) | k | U in row groups, pairs along k ([`Bf16Packed::ug`]) | Vᵀ panels, pairs along k ([`Bf16Packed::vt`]) |
//! | dU share = E·V (phase B) | j | the strip row, pairs along j (`eb`) | V column tiles, pairs along j ([`Bf16Packed::vp`]) |
//! | dV += Eᵀ·(cU) (phase B) | i | the strip, pairs of rows (`et`) | c·U, pairs of rows (`usb`) |
//!
//! A pair is one u32 (the even index in the low half), kept in f32 buffers
//! as its bit pattern. Phase A ends by rounding its strip of exponentials
//! into `eb` and `et` (the part's `bf` buffer); phase B rounds c·U into
//! `usb`. The micro-kernels keep the f32 path's shapes (12 rows × 32
//! columns in 24 zmm accumulators) and its blocked sums.

use super::kernel::{JC, NR, Part, with_rows};
use super::pack::Shared;
use super::phase_a::{fix_row, row_max};
use super::scratch::{Aligned, Scratch};
use super::simd::{Simd, exp, prefetch};
use super::x86::Avx512;
use crate::Problem;
use crate::input::{Elem, with_slice};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows of the bf16 micro-kernels (the AVX-512 kernel's height).
pub(crate) const ROWS: usize = 12;

/// Whether this CPU has AVX-512F and AVX512_BF16 (detected once, cached by std).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}

/// x rounded to bf16, to nearest even (what `vcvtneps2bf16` does for a
/// finite x), as its 16 bits.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16
}

/// x rounded to bf16 (nearest even), as an f32: how the tier rounds a
/// product's factor (the uncorrected diagonal uses it).
pub(crate) fn round(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// The pair (lo, hi) rounded to bf16, as the bit pattern of one f32 slot.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> f32 {
    f32::from_bits(bf16_bits(lo) | bf16_bits(hi) << 16)
}

/// The bf16 copies of U and V one call packs (in place of the f32 path's
/// `ug`, `vt` and `vp`), each a pair a u32 in an f32 slot; kp is even (a
/// multiple of 16), kp2 = kp/2, n2 = ⌈N/2⌉.
pub(crate) struct Bf16Packed {
    /// U in groups of [`ROWS`] rows: row g·ROWS + rr, k-pair c2 at
    /// ug\[(g·kp2 + c2)·ROWS + rr\] = (u\[2c2\], u\[2c2+1\]); zero past B and K.
    pub ug: Aligned,
    /// Vᵀ in np/16 panels: panel p, k-pair c2, lane l at
    /// vt\[(p·kp2 + c2)·16 + l\] = (V\[16p+l\]\[2c2\], V\[16p+l\]\[2c2+1\]); zero
    /// past N and K.
    pub vt: Aligned,
    /// V in column tiles of 16 components, rows paired: tile t, row pair jj,
    /// lane kk at vp\[(t·n2 + jj)·16 + kk\] = (V\[2jj\]\[16t+kk\],
    /// V\[2jj+1\]\[16t+kk\]); zero past N and K.
    pub vp: Aligned,
}

impl Bf16Packed {
    /// Packs U and V of `p` for padded sizes `kp` (a multiple of 16) and
    /// `np`, in the F32 tier's buffers of `scratch` (taken out of it; see
    /// [`Bf16Packed::recycle_into`]).
    pub fn new(p: &Problem<'_>, kp: usize, np: usize, scratch: &mut Scratch) -> Self {
        let (b, n, k) = (p.b, p.n, p.k);
        assert!(kp.is_multiple_of(16) && kp >= k && np >= n && np.is_multiple_of(NR));
        let (kp2, n2) = (kp / 2, n.div_ceil(2));
        // Zeroed: the padding (past B, N and K) is left as it is.
        let mut ug = std::mem::take(&mut scratch.ug).recycle(b.next_multiple_of(ROWS) * kp2);
        let mut vt = std::mem::take(&mut scratch.vt).recycle(np * kp2);
        let mut vp = std::mem::take(&mut scratch.vp).recycle(kp / 16 * n2 * 16);
        with_slice!(p.u, u => pack_k_pairs(u, k, &mut ug, kp2, ROWS));
        with_slice!(p.v, v => pack_k_pairs(v, k, &mut vt, kp2, NR));
        with_slice!(p.v, v => pack_row_pairs(v, k, &mut vp, n2));
        Self { ug, vt, vp }
    }

    /// Gives the buffers back to `scratch` for the next call.
    pub fn recycle_into(self, scratch: &mut Scratch) {
        (scratch.ug, scratch.vp, scratch.vt) = (self.ug, self.vp, self.vt);
    }
}

/// `x` (rows of `k`) paired along k into groups of `g` rows interleaved:
/// row i's k-pair c2 at dst\[((i / g)·kp2 + c2)·g + i mod g\] (`ug`, `vt`);
/// `dst` zeroed.
fn pack_k_pairs<T: Elem>(x: &[T], k: usize, dst: &mut [f32], kp2: usize, g: usize) {
    dst.par_chunks_mut(kp2 * g)
        .zip(x.par_chunks(k * g))
        .for_each(|(dst, rows)| {
            for (rr, row) in rows.chunks_exact(k).enumerate() {
                let (even, odd) = (row.iter().step_by(2), row.iter().skip(1).step_by(2));
                let odd = odd.map(|&x| x.value()).chain([0.0]);
                for (c2, (lo, hi)) in even.zip(odd).enumerate() {
                    dst[c2 * g + rr] = pair(lo.value(), hi);
                }
            }
        });
}

/// `v` (N rows of `k`) in column tiles of 16 components, rows paired: tile
/// t, row pair jj, lane kk at dst\[(t·n2 + jj)·16 + kk\] = (V\[2jj\]\[16t+kk\],
/// V\[2jj+1\]\[16t+kk\]) (`vp`); `dst` zeroed.
fn pack_row_pairs<T: Elem>(v: &[T], k: usize, dst: &mut [f32], n2: usize) {
    dst.par_chunks_mut(n2 * 16)
        .enumerate()
        .for_each(|(t, tile)| {
            let cols = 16 * t..k.min(16 * t + 16);
            for (d, rows) in tile.chunks_exact_mut(16).zip(v.chunks(2 * k)) {
                let (lo, hi) = rows.split_at(k);
                for (kk, c) in cols.clone().enumerate() {
                    d[kk] = pair(lo[c].value(), hi.get(c).map_or(0.0, |h| h.value()));
                }
            }
        });
}

/// The part's bf16 scratch for r rows: `eb` (r rows of w/2 j-pairs), then
/// `et` (⌈r/2⌉ row pairs of w columns), then `usb` (⌈r/2⌉ row pairs of kp
/// components), in its `bf` buffer; this many f32 slots.
pub(crate) fn part_len(mb: usize, w: usize, kp: usize) -> usize {
    mb * w / 2 + mb.div_ceil(2) * (w + kp)
}

/// The offsets of `et` and `usb` in a part's `bf` buffer for a block of
/// (at most) `mb` rows.
fn sections(mb: usize, w: usize) -> (usize, usize) {
    let et = mb * w / 2;
    (et, et + mb.div_ceil(2) * w)
}

/// Phase A of one part on the bf16 tier: the logit strip from bf16 factors,
/// the f32 path's row fix-ups, max, exp and sums, then the strip of
/// exponentials rounded into the part's `eb` and `et`.
///
/// # Safety
///
/// The CPU has AVX-512F and AVX512_BF16 ([`available`]).
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn phase_a(
    sh: &Shared<'_>,
    bp: &Bf16Packed,
    part: &mut Part<'_>,
    i0: usize,
    r: usize,
) {
    let (kp, w, ld) = (sh.kp, part.w, part.ld);
    let mb = part.max.len();
    assert!(kp.is_multiple_of(16) && i0.is_multiple_of(ROWS) && r <= mb && i0 + r <= sh.b);
    assert!(part.j0.is_multiple_of(NR) && part.j0 + w <= sh.np && w.is_multiple_of(NR));
    assert!(ld >= w && part.strip.len() >= r * ld);
    assert!(bp.ug.len() == sh.b.next_multiple_of(ROWS) * kp / 2 && bp.vt.len() == sh.np * kp / 2);
    assert!(sh.nlq.len() == sh.np && part.bf.len() >= part_len(mb, w, kp));
    let (kp2, l) = (kp / 2, 16);
    let mut col = 0;
    while col < w {
        let wide = w - col >= 2 * l;
        let panel = |c: usize| bp.vt[(part.j0 + c) / NR * kp2 * NR..].as_ptr();
        let nlq = sh.nlq[part.j0 + col..].as_ptr();
        let mut g = 0;
        while g < r {
            let rows = ROWS.min(r - g);
            let a = bp.ug[(i0 + g) * kp2..].as_ptr();
            let out = part.strip[g * ld + col..].as_mut_ptr();
            // SAFETY: AVX512_BF16 (our contract); a is row group (i0+g)/ROWS of
            // ug (kp2·ROWS slots); each panel has kp2 rows of 16 slots; nlq
            // and the out rows (stride ld ≥ w) have V·16 ≤ w − col columns left.
            unsafe {
                if wide {
                    let b = [panel(col), panel(col + l)];
                    with_rows!(rows, R => strip_tile::<R, 2>(a, kp2, b, nlq, sh.inv_tau, out, ld));
                } else {
                    let b = [panel(col)];
                    with_rows!(rows, R => strip_tile::<R, 1>(a, kp2, b, nlq, sh.inv_tau, out, ld));
                }
            }
            g += rows;
        }
        col += if wide { 2 * l } else { l };
    }
    for rr in 0..r {
        fix_row(sh, part, i0, rr);
    }
    // SAFETY: AVX-512F and AVX512_BF16 (our contract); the sizes were asserted.
    unsafe { exp_round(part, r, mb) };
}

/// R × V·16 logit tile from bf16 pairs: out\[r\]\[q·16 + l\] =
/// (Σ_c2 a\[c2·ROWS + r\]·b_q\[c2·16 + l\])·inv_tau + nlq\[q·16 + l\].
///
/// # Safety
///
/// AVX512_BF16; `a` readable for kp2·ROWS slots, each `b[q]` for kp2·16,
/// `nlq` for V·16, `out` writable for R rows of stride `ldo`, V·16 each.
#[inline(always)]
unsafe fn strip_tile<const R: usize, const V: usize>(
    a: *const f32,
    kp2: usize,
    b: [*const f32; V],
    nlq: *const f32,
    inv_tau: f32,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: every offset is inside the ranges of the contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for c2 in 0..kp2 {
            // U streams from L2, as in the f32 kernel: 8 steps ahead (past
            // the group's end only into other lines of ug, or past it, which
            // a prefetch may do).
            prefetch(a.wrapping_add((c2 + 8) * ROWS));
            let mut bv = [bh(_mm512_setzero_si512()); V];
            for (x, &p) in bv.iter_mut().zip(&b) {
                *x = bh(_mm512_loadu_si512(p.add(c2 * NR).cast()));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let x = bh(_mm512_set1_epi32(a.add(c2 * ROWS + r).cast::<i32>().read()));
                for (s, &y) in accr.iter_mut().zip(&bv) {
                    *s = _mm512_dpbf16_ps(*s, x, y);
                }
            }
        }
        let it = _mm512_set1_ps(inv_tau);
        for (r, accr) in acc.iter().enumerate() {
            for (q, s) in accr.iter().enumerate() {
                let v = _mm512_fmadd_ps(*s, it, _mm512_loadu_ps(nlq.add(q * 16)));
                _mm512_storeu_ps(out.add(r * ldo + q * 16), v);
            }
        }
    }
}

/// 32 bf16 (16 pairs) as the operand type of `vdpbf16ps`.
#[inline(always)]
fn bh(x: __m512i) -> __m512bh {
    // SAFETY: both are 64-byte plain vectors; every bit pattern is valid.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
}

/// 16 finite f32 rounded to bf16 (nearest even) in the high half of each
/// lane, as [`bf16_bits`] does (the low half is left over).
#[inline(always)]
unsafe fn rne(x: __m512) -> __m512i {
    // SAFETY: AVX-512F (the caller's contract).
    unsafe {
        let b = _mm512_castps_si512(x);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)))
    }
}

/// Pairs of rows (a, b) of 16 finite components: lane l = (a\[l\], b\[l\])
/// rounded to bf16, the layout of `usb` — in the integer unit ([`rne`] and a
/// 16-bit blend), no cross-lane shuffle.
#[inline(always)]
unsafe fn row_pair(a: __m512, b: __m512) -> __m512i {
    // SAFETY: AVX-512F and AVX-512BW (implied by AVX512_BF16; the caller's
    // contract).
    unsafe { _mm512_mask_blend_epi16(0xAAAA_AAAA, _mm512_srli_epi32::<16>(rne(a)), rne(b)) }
}

/// Per pair of strip rows (a, b): the rows' maxima m, their exponentials
/// e = exp(s − m) and the sums Σ_j e (blocked as the f32 path's), with e
/// rounded straight into `eb` (row rr, j-pair t at eb\[rr·w/2 + t\]) and
/// `et` (row pair ii, column j at et\[ii·w + j\]; a missing last row is
/// zero). The f32 strip is only read: the tier needs the rounded e alone.
///
/// # Safety
///
/// AVX-512F and AVX512_BF16; r ≤ mb; the part's buffers sized for mb rows.
#[inline(always)]
unsafe fn exp_round(part: &mut Part<'_>, r: usize, mb: usize) {
    let (w, ld) = (part.w, part.ld);
    let (et0, _) = sections(mb, w);
    for ii in 0..r.div_ceil(2) {
        let (a, b) = (2 * ii, 2 * ii + 1);
        let has_b = b < r;
        // SAFETY: strip rows a (and b when has_b) < r have w floats at stride
        // ld; w is a multiple of 16; AVX-512F.
        let (ma, mb_) = unsafe {
            (
                row_max::<Avx512>(&part.strip[a * ld..a * ld + w]),
                if has_b {
                    row_max::<Avx512>(&part.strip[b * ld..b * ld + w])
                } else {
                    f32::NEG_INFINITY
                },
            )
        };
        let shift = |m: f32| if m == f32::NEG_INFINITY { 0.0 } else { -m };
        let strip = part.strip.as_ptr();
        let bf = part.bf.as_mut_ptr();
        // SAFETY: every load is inside strip rows a, b (j + 16 ≤ w ≤ ld);
        // every store inside eb rows a, b (w/2 slots each, below et0) or et
        // row ii (w slots at et0 + ii·w, ii < ⌈mb/2⌉); AVX512_BF16.
        let (sa, sb) = unsafe {
            let (xa, xb) = (Avx512::splat(shift(ma)), Avx512::splat(shift(mb_)));
            let (pa, pb) = (strip.add(a * ld), strip.add(b * ld));
            let (ea_out, eb_out, et_out) =
                (bf.add(a * w / 2), bf.add(b * w / 2), bf.add(et0 + ii * w));
            let (mut ta, mut tb) = (Avx512::zero(), Avx512::zero());
            for j0 in (0..w).step_by(JC) {
                let (mut sa, mut sb) = (Avx512::zero(), Avx512::zero());
                for j in (j0..(j0 + JC).min(w)).step_by(16) {
                    let ea = exp(Avx512::load(pa.add(j)).add(xa));
                    let eb = if has_b {
                        exp(Avx512::load(pb.add(j)).add(xb))
                    } else {
                        Avx512::zero()
                    };
                    sa = sa.add(ea);
                    sb = sb.add(eb);
                    // One conversion of the two rows: eb takes its halves,
                    // et their words widened and interleaved, (a_j, b_j)
                    // per lane (row a's word in the low half).
                    let both = _mm512_cvtne2ps_pbh(eb.0, ea.0);
                    let lo = std::mem::transmute::<__m512bh, [__m256i; 2]>(both);
                    let et = _mm512_or_si512(
                        _mm512_cvtepu16_epi32(lo[0]),
                        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(lo[1])),
                    );
                    _mm512_storeu_si512(et_out.add(j).cast(), et);
                    _mm256_storeu_si256(ea_out.add(j / 2).cast(), lo[0]);
                    if has_b {
                        _mm256_storeu_si256(eb_out.add(j / 2).cast(), lo[1]);
                    }
                }
                ta = ta.add(sa);
                tb = tb.add(sb);
            }
            (ta.reduce_sum(), tb.reduce_sum())
        };
        part.max[a] = ma;
        part.sum[a] = sa;
        if has_b {
            part.max[b] = mb_;
            part.sum[b] = sb;
        }
    }
}

/// Phase B of one part on the bf16 tier: the unscaled dU share Σ_j e_ij·V_j
/// from `eb` and V's row-paired tiles, then c·U rounded into `usb` and the
/// part's dV rows += Σ_i e_ij·(c_i·U_i) from `et`.
///
/// # Safety
///
/// The CPU has AVX-512F and AVX512_BF16 ([`available`]).
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn phase_b(
    sh: &Shared<'_>,
    bp: &Bf16Packed,
    part: &mut Part<'_>,
    i0: usize,
    r: usize,
) {
    let (kp, w, n) = (sh.kp, part.w, sh.n);
    let mb = part.max.len();
    let cols = part.j1 - part.j0;
    let n2 = n.div_ceil(2);
    assert!(kp.is_multiple_of(16) && r <= mb && i0 + r <= sh.b && part.j0.is_multiple_of(2));
    assert!(part.du.len() >= r * kp && part.coef.len() >= r && part.dv.len() == cols * kp);
    assert!(bp.vp.len() == kp / 16 * n2 * 16 && part.j1 <= n && cols <= w);
    assert!(part.bf.len() >= part_len(mb, w, kp) && sh.up.len() == sh.b * kp);
    let (et0, us0) = sections(mb, w);
    part.du[..r * kp].fill(0.0);
    // dU share: j-pairs jp0..jp1 of the part (a last odd column pairs with
    // the zero row past N, or with a strip column of exp(−∞ − m) = 0).
    let (jp0, jp1) = (part.j0 / 2, part.j1.div_ceil(2));
    let local = jp1 - jp0;
    let wp = w / 2;
    for c0 in (0..local).step_by(JC / 2) {
        let c1 = (c0 + JC / 2).min(local);
        let mut c = 0;
        while c < kp {
            let wide = kp - c >= 32;
            let tile = |c: usize| bp.vp[(c / 16 * n2 + jp0) * 16..].as_ptr();
            let mut g = 0;
            while g < r {
                let rows = ROWS.min(r - g);
                let e = part.bf[g * wp..].as_ptr();
                let out = part.du[g * kp + c..].as_mut_ptr();
                // SAFETY: AVX512_BF16; e covers `rows` eb rows of wp slots at
                // pairs c0..c1 ≤ local ≤ wp; each tile pointer is at row pair
                // jp0 of a 16-wide tile with pairs jp0 + c1 ≤ n2; out covers
                // `rows` du rows of stride kp at c..c + V·16 ≤ kp.
                unsafe {
                    if wide {
                        let v = [tile(c), tile(c + 16)];
                        with_rows!(rows, R => pair_tile::<R, 2>(e, (wp, 1), (c0, c1), v, 16, out, kp, false));
                    } else {
                        let v = [tile(c)];
                        with_rows!(rows, R => pair_tile::<R, 1>(e, (wp, 1), (c0, c1), v, 16, out, kp, false));
                    }
                }
                g += rows;
            }
            c += if wide { 32 } else { 16 };
        }
    }
    // usb: row pair ii, component c = (c_a·u_a[c], c_b·u_b[c]), zero past r.
    for ii in 0..r.div_ceil(2) {
        let (a, b) = (i0 + 2 * ii, i0 + 2 * ii + 1);
        let ca = _mm512_set1_ps(part.coef[2 * ii]);
        let cb = _mm512_set1_ps(if 2 * ii + 1 < r {
            part.coef[2 * ii + 1]
        } else {
            0.0
        });
        let b = if 2 * ii + 1 < r { b } else { a };
        for c in (0..kp).step_by(16) {
            // SAFETY: AVX512_BF16; rows a, b < B of up have kp ≥ c + 16
            // floats; usb row ii < ⌈mb/2⌉ has kp slots.
            unsafe {
                let x = _mm512_mul_ps(ca, _mm512_loadu_ps(sh.up.as_ptr().add(a * kp + c)));
                let y = _mm512_mul_ps(cb, _mm512_loadu_ps(sh.up.as_ptr().add(b * kp + c)));
                let dst = part.bf.as_mut_ptr().add(us0 + ii * kp + c);
                _mm512_storeu_si512(dst.cast(), row_pair(x, y));
            }
        }
    }
    // dV rows of the part's columns.
    let rp = r.div_ceil(2);
    let mut j = 0;
    while j < cols {
        let jn = ROWS.min(cols - j);
        let mut c = 0;
        while c < kp {
            let e = part.bf[et0 + j..].as_ptr();
            let a = part.bf[us0 + c..].as_ptr();
            let out = part.dv[j * kp + c..].as_mut_ptr();
            // SAFETY: AVX512_BF16; e covers rp et rows of stride w at columns
            // j..j + jn ≤ cols ≤ w; a covers rp usb rows of stride kp at
            // c..c + V·16 ≤ kp; out covers jn dV rows of stride kp there.
            unsafe {
                if kp - c >= 32 {
                    let v = [a, a.wrapping_add(16)];
                    with_rows!(jn, C => pair_tile::<C, 2>(e, (1, w), (0, rp), v, kp, out, kp, true));
                    c += 32;
                } else {
                    with_rows!(jn, C => pair_tile::<C, 1>(e, (1, w), (0, rp), [a], kp, out, kp, true));
                    c += 16;
                }
            }
        }
        j += jn;
    }
}

/// The second products' micro-kernel, R × V·16 accumulators:
/// out\[r·ldo + q·16..\]\[..16\] += Σ_{t0≤t<t1} e\[r·rs + t·ts\]·v_q\[t·vs..\]\[..16\],
/// each e a bf16 pair broadcast, each v row 16 pairs. The dU share runs it
/// over the strip's j-pairs (rs = the eb row stride, ts = 1, v_q: V's
/// row-paired tiles); dV over row pairs (rs = 1, ts = the et row stride,
/// v_q: c·U's row pairs, prefetching the dV rows first).
///
/// # Safety
///
/// AVX512_BF16; `e` readable at r·rs + t·ts (r < R, t0 ≤ t < t1), each
/// `v[q]` at t·vs + 0..16, `out` readable and writable at r·ldo + 0..V·16.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pair_tile<const R: usize, const V: usize>(
    e: *const f32,
    (rs, ts): (usize, usize),
    (t0, t1): (usize, usize),
    v: [*const f32; V],
    vs: usize,
    out: *mut f32,
    ldo: usize,
    prefetch_out: bool,
) {
    // SAFETY: every offset is inside the ranges of the contract.
    unsafe {
        if prefetch_out {
            // The dV rows are usually out of L2: ask for their lines now, as
            // the f32 kernel does.
            for r in 0..R {
                for q in 0..V {
                    prefetch(out.add(r * ldo + q * 16));
                }
            }
        }
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for t in t0..t1 {
            let mut b = [bh(_mm512_setzero_si512()); V];
            for (bq, &p) in b.iter_mut().zip(&v) {
                *bq = bh(_mm512_loadu_si512(p.add(t * vs).cast()));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let x = bh(_mm512_set1_epi32(
                    e.add(r * rs + t * ts).cast::<i32>().read(),
                ));
                for (a, &bq) in accr.iter_mut().zip(&b) {
                    *a = _mm512_dpbf16_ps(*a, x, bq);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            for (q, a) in accr.iter().enumerate() {
                let p = out.add(r * ldo + q * 16);
                _mm512_storeu_ps(p, _mm512_add_ps(*a, _mm512_loadu_ps(p)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The software rounding agrees with `vcvtneps2bf16` on normal numbers,
    /// ties and the extremes of f32.
    #[test]
    fn software_rounding_matches_the_instruction() {
        if !available() {
            return;
        }
        // Ties to even both ways (1 + 2⁻⁸ and 1 + 3·2⁻⁸), the largest
        // finite values, a small normal, zeros.
        let tie_down = f32::from_bits(0x3F80_8000);
        let tie_up = f32::from_bits(0x3F81_8000);
        let mut xs = vec![
            1.0f32, -1.0, tie_down, tie_up, 3.4e38, -3.4e38, 1e-30, 0.0, -0.0,
        ];
        let mut s = 0x1234_5678u32;
        for _ in 0..10_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits(s);
            if x.is_finite() && (x == 0.0 || x.abs() > f32::MIN_POSITIVE) {
                xs.push(x);
            }
        }
        #[target_feature(enable = "avx512f,avx512bf16")]
        fn hw(x: &[f32; 16]) -> [u32; 16] {
            let mut o = [0u32; 16];
            // SAFETY: the enclosing test returned early without AVX512_BF16;
            // both arrays hold 16 elements.
            unsafe {
                let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr()));
                let v = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h));
                _mm512_storeu_si512(o.as_mut_ptr().cast(), v);
            }
            o
        }
        for chunk in xs.chunks_exact(16) {
            let x: [f32; 16] = chunk.try_into().unwrap();
            // SAFETY: AVX512_BF16 was detected above.
            let got = unsafe { hw(&x) };
            for (l, &xi) in x.iter().enumerate() {
                assert_eq!(got[l], bf16_bits(xi), "{xi:e}");
            }
        }
    }
}
