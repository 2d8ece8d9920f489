//! The AVX2+FMA and AVX-512F implementations of [`Simd`] — the crate's only
//! intrinsics — and the `#[target_feature]` entries that instantiate the
//! generic kernels with them.
//!
//! The entries [`phase_a_avx2_fma`] / [`phase_b_avx2_fma`] and
//! [`phase_a_avx512`] / [`phase_b_avx512`] are the only functions compiled
//! with those features enabled; everything they call is `#[inline(always)]`,
//! so each whole phase (micro-kernels, exp, row passes) is generated for its
//! instruction set in a default build with no RUSTFLAGS. They are called only
//! after `is_x86_feature_detected!` confirmed the features.

use super::kernel::{Part, Shared, phase_a, phase_b};
use super::simd::Simd;
use std::arch::x86_64::*;

/// Eight f32 lanes in a ymm register.
#[derive(Clone, Copy)]
pub(crate) struct Avx2(__m256);

// SAFETY (for every block in this impl): the trait's contract is that the
// running CPU supports AVX2 and FMA — the dispatcher only reaches these
// methods through the `*_avx2_fma` entries below, after `is_x86_feature_detected!`
// returned true for both — and, for load/store, that `p` is valid for 8 f32.
// The unaligned load/store intrinsics have no alignment requirement.
impl Simd for Avx2 {
    const LANES: usize = 8;
    const ROWS: usize = 6;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm256_set1_ps(x)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: see the impl comment (p valid for 8 reads).
        unsafe { Self(_mm256_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: see the impl comment (p valid for 8 writes).
        unsafe { _mm256_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm256_add_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm256_mul_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm256_fmadd_ps(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm256_max_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm256_min_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        // SAFETY: see the impl comment.
        unsafe {
            Self(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(self.0))
        }
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        // SAFETY: see the impl comment. Lanes are integral in [−126, 127], so
        // (r + 127) << 23 is the bit pattern of the normal float 2^r.
        unsafe {
            let e = _mm256_add_epi32(_mm256_cvtps_epi32(self.0), _mm256_set1_epi32(127));
            Self(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)))
        }
    }
    #[inline(always)]
    unsafe fn zero_where_below(self, x: Self, thr: f32) -> Self {
        // SAFETY: see the impl comment.
        unsafe {
            let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x.0, _mm256_set1_ps(thr));
            Self(_mm256_andnot_ps(below, self.0))
        }
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        // SAFETY: see the impl comment.
        unsafe {
            let m = _mm_max_ps(
                _mm256_castps256_ps128(self.0),
                _mm256_extractf128_ps::<1>(self.0),
            );
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
            _mm_cvtss_f32(m)
        }
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        // SAFETY: see the impl comment.
        unsafe {
            let s = _mm_add_ps(
                _mm256_castps256_ps128(self.0),
                _mm256_extractf128_ps::<1>(self.0),
            );
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }
}

/// Phase A of one column part, compiled for AVX2+FMA.
///
/// # Safety
///
/// The running CPU must support AVX2 and FMA (checked by the caller with
/// `is_x86_feature_detected!`).
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn phase_a_avx2_fma(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    // SAFETY: the caller guarantees AVX2+FMA, which is Avx2's whole contract.
    unsafe { phase_a::<Avx2>(sh, part, i0, r) }
}

/// Phase B of one column part, compiled for AVX2+FMA.
///
/// # Safety
///
/// As [`phase_a_avx2_fma`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn phase_b_avx2_fma(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    // SAFETY: the caller guarantees AVX2+FMA, which is Avx2's whole contract.
    unsafe { phase_b::<Avx2>(sh, part, i0, r) }
}

/// Sixteen f32 lanes in a zmm register.
#[derive(Clone, Copy)]
pub(crate) struct Avx512(__m512);

// SAFETY (for every block in this impl): the trait's contract is that the
// running CPU supports AVX-512F — the dispatcher only reaches these methods
// through the `*_avx512` entries below, after `is_x86_feature_detected!`
// returned true for it — and, for load/store, that `p` is valid for 16 f32.
// The unaligned load/store intrinsics have no alignment requirement.
impl Simd for Avx512 {
    const LANES: usize = 16;
    const ROWS: usize = 12;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm512_set1_ps(x)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: see the impl comment (p valid for 16 reads).
        unsafe { Self(_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: see the impl comment (p valid for 16 writes).
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm512_add_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm512_mul_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm512_fmadd_ps(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm512_max_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        // SAFETY: see the impl comment.
        unsafe { Self(_mm512_min_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        // SAFETY: see the impl comment. Scale 0 (imm bits 7:4), round to
        // nearest even (bits 1:0 = 0), exceptions suppressed (bit 3).
        unsafe {
            Self(_mm512_roundscale_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(self.0))
        }
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        // SAFETY: see the impl comment. Lanes are integral in [−126, 127], so
        // (r + 127) << 23 is the bit pattern of the normal float 2^r.
        unsafe {
            let e = _mm512_add_epi32(_mm512_cvtps_epi32(self.0), _mm512_set1_epi32(127));
            Self(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(e)))
        }
    }
    #[inline(always)]
    unsafe fn zero_where_below(self, x: Self, thr: f32) -> Self {
        // SAFETY: see the impl comment.
        unsafe {
            let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x.0, _mm512_set1_ps(thr));
            Self(_mm512_maskz_mov_ps(!below, self.0))
        }
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_reduce_max_ps(self.0) }
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_reduce_add_ps(self.0) }
    }
}

/// Phase A of one column part, compiled for AVX-512F.
///
/// # Safety
///
/// The running CPU must support AVX-512F (checked by the caller with
/// `is_x86_feature_detected!`).
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn phase_a_avx512(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    // SAFETY: the caller guarantees AVX-512F, which is Avx512's whole contract.
    unsafe { phase_a::<Avx512>(sh, part, i0, r) }
}

/// Phase B of one column part, compiled for AVX-512F.
///
/// # Safety
///
/// As [`phase_a_avx512`].
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn phase_b_avx512(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    // SAFETY: the caller guarantees AVX-512F, which is Avx512's whole contract.
    unsafe { phase_b::<Avx512>(sh, part, i0, r) }
}
