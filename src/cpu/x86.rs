//! The AVX2+FMA and AVX-512F implementations of [`Simd`] — the crate's only
//! intrinsics — and the `#[target_feature]` entries that instantiate the
//! generic kernels with them.
//!
//! The entries `phase_a_avx2_fma` / `phase_b_avx2_fma` and
//! `phase_a_avx512` / `phase_b_avx512` (reached as `Simd::phase_a` and
//! `Simd::phase_b`) are the only functions compiled
//! with those features enabled; everything they call is `#[inline(always)]`,
//! so each whole phase (micro-kernels, exp, row passes) is generated for its
//! instruction set in a default build with no RUSTFLAGS. They are called only
//! after `is_x86_feature_detected!` confirmed the features.

use super::kernel::Part;
use super::pack::Shared;
use super::phase_a::phase_a;
use super::phase_b::phase_b;
use super::simd::Simd;
use std::arch::x86_64::*;

/// Eight f32 lanes in a ymm register.
#[derive(Clone, Copy)]
pub(crate) struct Avx2(__m256);

// SAFETY (for every block in this impl): the trait's contract is that the
// running CPU supports AVX2 and FMA — the methods are only reached inside
// the `*_avx2_fma` entries below, which `CpuBackend::compute::<Avx2>` calls
// after `is_x86_feature_detected!` returned true for both — and, for load/store, that `p` is valid for 8 f32.
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
    #[inline(always)]
    unsafe fn phase_a(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
        // SAFETY: see the impl comment; the entry needs exactly this.
        unsafe { phase_a_avx2_fma(sh, part, i0, r) }
    }
    #[inline(always)]
    unsafe fn phase_b(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
        // SAFETY: see the impl comment; the entry needs exactly this.
        unsafe { phase_b_avx2_fma(sh, part, i0, r) }
    }
}

/// Phase A of one column part, compiled for AVX2+FMA.
///
/// # Safety
///
/// The running CPU must support AVX2 and FMA (checked by the caller with
/// `is_x86_feature_detected!`).
#[target_feature(enable = "avx2,fma")]
unsafe fn phase_a_avx2_fma(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    // SAFETY: the caller guarantees AVX2+FMA, which is Avx2's whole contract.
    unsafe { phase_a::<Avx2>(sh, part, i0, r) }
}

/// Phase B of one column part, compiled for AVX2+FMA.
///
/// # Safety
///
/// As [`phase_a_avx2_fma`].
#[target_feature(enable = "avx2,fma")]
unsafe fn phase_b_avx2_fma(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    // SAFETY: the caller guarantees AVX2+FMA, which is Avx2's whole contract.
    unsafe { phase_b::<Avx2>(sh, part, i0, r) }
}

/// Sixteen f32 lanes in a zmm register.
#[derive(Clone, Copy)]
pub(crate) struct Avx512(pub(crate) __m512);

// SAFETY (for every block in this impl): the trait's contract is that the
// running CPU supports AVX-512F — the methods are only reached inside the
// `*_avx512` entries below, which `CpuBackend::compute::<Avx512>` calls
// after `is_x86_feature_detected!` returned true for it — and, for load/store, that `p` is valid for 16 f32.
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
    unsafe fn ldexp_or_zero(self, r: Self, x: Self, thr: f32) -> Self {
        // SAFETY: see the impl comment. vscalefps computes self·2^floor(r),
        // rounded once: for the integral r of the contract that is the exact
        // product the default method forms with pow2i and a multiply.
        unsafe {
            let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x.0, _mm512_set1_ps(thr));
            Self(_mm512_maskz_scalef_ps(keep, self.0, r.0))
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
    #[inline(always)]
    unsafe fn phase_a(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
        // SAFETY: see the impl comment; the entry needs exactly this.
        unsafe { phase_a_avx512(sh, part, i0, r) }
    }
    #[inline(always)]
    unsafe fn phase_b(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
        // SAFETY: see the impl comment; the entry needs exactly this.
        unsafe { phase_b_avx512(sh, part, i0, r) }
    }
}

/// Phase A of one column part, compiled for AVX-512F.
///
/// # Safety
///
/// The running CPU must support AVX-512F (checked by the caller with
/// `is_x86_feature_detected!`).
#[target_feature(enable = "avx512f")]
unsafe fn phase_a_avx512(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    // SAFETY: the caller guarantees AVX-512F, which is Avx512's whole contract.
    unsafe { phase_a::<Avx512>(sh, part, i0, r) }
}

/// Phase B of one column part, compiled for AVX-512F.
///
/// # Safety
///
/// As [`phase_a_avx512`].
#[target_feature(enable = "avx512f")]
unsafe fn phase_b_avx512(sh: &Shared<'_>, part: &mut Part<'_>, i0: usize, r: usize) {
    // SAFETY: the caller guarantees AVX-512F, which is Avx512's whole contract.
    unsafe { phase_b::<Avx512>(sh, part, i0, r) }
}

#[cfg(test)]
mod tests {
    use super::{Avx2, Avx512};
    use crate::cpu::simd::{Simd, exp};

    /// exp of 16 values with AVX-512 and with AVX2 (two halves).
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn both(x: &[f32; 16]) -> ([f32; 16], [f32; 16]) {
        let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
        // SAFETY: the caller checked AVX-512F, AVX2 and FMA; every pointer
        // covers 16 (or two halves of 8) f32.
        unsafe {
            exp(Avx512::load(x.as_ptr())).store(a.as_mut_ptr());
            for h in 0..2 {
                exp(Avx2::load(x[8 * h..].as_ptr())).store(b[8 * h..].as_mut_ptr());
            }
        }
        (a, b)
    }

    #[test]
    fn avx512_exp_matches_avx2_bit_for_bit_and_f64_within_2_ulp() {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma"))
        {
            // To the stderr handle: libtest captures only the print macros.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipping: this CPU lacks AVX-512F or AVX2+FMA"
            );
            return;
        }
        // Every f32 step near the underflow threshold (results down to
        // subnormal 2^−126·y), a dense sweep of [−104, 0], and the edges.
        let mut xs: Vec<f32> = (0..200_000)
            .map(|i| -104.0 * i as f32 / 200_000.0)
            .collect();
        let lo = -87.336_54f32;
        let mut t = lo - 64.0 * f32::EPSILON * 87.0;
        while t < lo + 64.0 * f32::EPSILON * 87.0 {
            xs.push(t);
            t = f32::from_bits(t.to_bits() - 1); // toward zero (negative numbers)
        }
        xs.extend([
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            f32::MIN,
            -1e-30,
            -0.5 * std::f32::consts::LN_2,
        ]);
        xs.resize(xs.len().next_multiple_of(16), 0.0);
        for c in xs.chunks_exact(16) {
            let c: &[f32; 16] = c.try_into().unwrap();
            // SAFETY: the features were detected above.
            let (a, b) = unsafe { both(c) };
            for ((&x, &a), &b) in c.iter().zip(&a).zip(&b) {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "exp({x:e}): avx512 {a:e}, avx2 {b:e}"
                );
                let want = (x as f64).exp();
                if x < lo {
                    assert_eq!(a, 0.0, "exp({x:e}) below the cut-off must be 0");
                } else if want >= f32::MIN_POSITIVE as f64 {
                    let ulp = (want as f32).to_bits().abs_diff(a.to_bits());
                    assert!(ulp <= 2, "exp({x:e}) = {a:e}, f64 {want:e}: {ulp} ulp");
                }
            }
        }
    }
}
