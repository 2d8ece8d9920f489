//! The f32 vector interface the fused kernels are written against, and the
//! vectorized exp built on it.
//!
//! Three implementations: [`super::portable`] (`wide::f32x8`, correct on
//! every target, fast only when the crate is compiled with AVX2) and, in
//! [`super::x86`], AVX2+FMA (8 lanes) and AVX-512F (16 lanes) intrinsics,
//! chosen at run time. The phases (`phase_a.rs`, `phase_b.rs`) are generic
//! over this trait and are instantiated inside one `#[target_feature]` entry
//! per instruction set ([`Simd::phase_a`], [`Simd::phase_b`]), so every
//! method here inlines into code compiled for that instruction set.

use super::kernel::Part;
use super::pack::Shared;

/// [`Simd::LANES`] f32 lanes.
///
/// # Safety
///
/// Every method is `unsafe` with one shared contract: the running CPU
/// supports the instruction set of the implementation (trivially true for the
/// portable one). `load` and `store` additionally need `p` valid for reading /
/// writing `LANES` consecutive f32 (no alignment required).
pub(crate) trait Simd: Copy {
    /// f32 lanes per vector: 8 or 16 (the kernels rely on 16 % LANES == 0).
    const LANES: usize;
    /// Rows of the register-blocked micro-kernels: each keeps ROWS × 2
    /// vector accumulators, which must fit the register file with room for
    /// the two loaded vectors (6 × 2 of 16 ymm; 12 × 2 of 32 zmm).
    const ROWS: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// self·b + c, fused where the instruction set has FMA.
    unsafe fn fma(self, b: Self, c: Self) -> Self;
    unsafe fn max(self, o: Self) -> Self;
    unsafe fn min(self, o: Self) -> Self;
    /// Round to nearest integer (ties to even), as f32.
    unsafe fn round(self) -> Self;
    /// 2^self for integral lanes in [−126, 127], built from the exponent bits.
    unsafe fn pow2i(self) -> Self;
    /// Lanes where `x < thr` become +0, the others keep `self`.
    unsafe fn zero_where_below(self, x: Self, thr: f32) -> Self;
    /// self·2^r (r integral in [−126, 127]) where `x ≥ thr`, +0 where
    /// `x < thr`: the last step of [`exp`]. Exact (a product with a power of
    /// two), so every implementation gives the same bits; AVX-512 overrides
    /// it with one masked `vscalefps`.
    #[inline(always)]
    unsafe fn ldexp_or_zero(self, r: Self, x: Self, thr: f32) -> Self {
        // SAFETY: the trait's contract, passed on.
        unsafe { self.mul(r.pow2i()).zero_where_below(x, thr) }
    }
    unsafe fn reduce_max(self) -> f32;
    unsafe fn reduce_sum(self) -> f32;
    /// Phase A of one column part (`phase_a.rs`) compiled for this
    /// instruction set: its `#[target_feature]` entry, through which every
    /// method above is inlined.
    unsafe fn phase_a(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize);
    /// Phase B of one column part (`phase_b.rs`), compiled likewise.
    unsafe fn phase_b(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize);
}

/// Below this e^x is under f32's smallest normal (1.18e-38); exp returns 0.
const EXP_LO: f32 = -87.336_54;
/// Above this e^x overflows f32. The kernels only take exp of s − max ≤ 0.
const EXP_HI: f32 = 88.376_26;

/// e^x on every lane: Cody–Waite range reduction x = r·ln2 + f, |f| ≤ ln2/2,
/// then the degree-7 Cephes `expf` polynomial (≈ 1 ulp on the reduced range),
/// times 2^r. −∞ and everything below [`EXP_LO`] give exactly 0 (the plain
/// polynomial would give ~1e-38 there, which would leak mass into removed
/// columns); NaN is never passed in (inputs are validated finite).
///
/// # Safety
///
/// As for [`Simd`]: the CPU supports `S`'s instruction set.
#[inline(always)]
pub(crate) unsafe fn exp<S: Simd>(x: S) -> S {
    // SAFETY: the caller guarantees S's instruction set; no memory is touched.
    unsafe {
        let xc = x.max(S::splat(EXP_LO)).min(S::splat(EXP_HI));
        let r = xc.mul(S::splat(std::f32::consts::LOG2_E)).round();
        // ln 2 split so that r·C1 is exact for |r| ≤ 128 (C1 has 9 significant bits).
        let f = r.fma(S::splat(-0.693_359_4), xc);
        let f = r.fma(S::splat(2.121_944_4e-4), f);
        let mut p = S::splat(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = p.fma(f, S::splat(c));
        }
        let y = p.fma(f.mul(f), f.add(S::splat(1.0)));
        y.ldexp_or_zero(r, x, EXP_LO)
    }
}

/// Hints the CPU to bring the cache line holding `p` into L1 (a no-op off
/// x86-64). Never faults and never reads for the program: any address is
/// allowed, though the kernels only pass addresses inside their buffers.
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// As [`prefetch`], into L2.
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T1 }>(p);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// PREFETCHh with hint `H` of the line holding `p`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_hint<const H: i32>(p: *const f32) {
    // SAFETY: PREFETCHh is SSE (baseline on x86-64) and is only a hint: it
    // does not dereference `p` architecturally and cannot fault.
    unsafe { std::arch::x86_64::_mm_prefetch::<H>(p.cast::<i8>()) };
}
