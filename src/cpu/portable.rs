//! The portable implementation of [`Simd`] on `wide::f32x8`.
//!
//! `wide` picks its instructions when it is compiled (`cfg(target_feature)`):
//! in a default x86-64 build an f32x8 is two SSE halves and `mul_add` is an
//! unfused multiply and add. This path is therefore the correctness fallback
//! for every target, and fast only with `-C target-cpu=native`; the
//! runtime-dispatched [`super::x86`] path is the fast one on x86-64.

use super::kernel::Part;
use super::pack::Shared;
use super::phase_a::phase_a;
use super::phase_b::phase_b;
use super::simd::Simd;
use wide::{f32x8, i32x8};

/// `wide::f32x8` as a [`Simd`]. No method needs any CPU feature, so the
/// `unsafe` of the trait is vacuous here except for `load`/`store`.
#[derive(Clone, Copy)]
pub(crate) struct Portable(f32x8);

impl Simd for Portable {
    const LANES: usize = 8;
    const ROWS: usize = 6;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Self(f32x8::ZERO)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Self(f32x8::splat(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees p is valid for reading 8 f32;
        // read_unaligned has no alignment requirement.
        Self(f32x8::from(unsafe {
            p.cast::<[f32; 8]>().read_unaligned()
        }))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees p is valid for writing 8 f32.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(self.0.to_array()) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Self(self.0 + o.0)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        Self(self.0 * o.0)
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Self(self.0.mul_add(b.0, c.0))
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        Self(self.0.fast_max(o.0))
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        Self(self.0.fast_min(o.0))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        Self(self.0.round())
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        let e: i32x8 = (self.0.round_int() + i32x8::splat(127)) << 23;
        Self(wide::bytemuck::cast(e))
    }
    #[inline(always)]
    unsafe fn zero_where_below(self, x: Self, thr: f32) -> Self {
        Self(x.0.simd_lt(f32x8::splat(thr)).select(f32x8::ZERO, self.0))
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        self.0
            .to_array()
            .into_iter()
            .fold(f32::NEG_INFINITY, f32::max)
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        self.0.reduce_add()
    }
    #[inline(always)]
    unsafe fn phase_a(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
        // SAFETY: Portable needs no CPU feature.
        unsafe { phase_a::<Self>(sh, part, i0, r) }
    }
    #[inline(always)]
    unsafe fn phase_b(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
        // SAFETY: Portable needs no CPU feature.
        unsafe { phase_b::<Self>(sh, part, i0, r) }
    }
}
