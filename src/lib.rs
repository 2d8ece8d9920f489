//! # mixneg — the fused Mixed-Negative-Sampling loss
//!
//! Two-tower retrieval scores query i against candidate j by a dot product of
//! embeddings. Mixed Negative Sampling (Yang et al., WWW 2020) trains it with
//! a sampled softmax whose candidates are the B in-batch positives plus B′
//! items drawn uniformly from the corpus, corrected by the log of each
//! candidate's sampling probability Q*_j = (B·p_j + B′/|C|)/(B + B′).
//!
//! For U (B×K), V (N×K, N = B + B′, row i + o the positive of query i, the
//! positive offset o = 0 unless set), log_q (N), temperature τ and optional
//! row weights w and item ids, with ī = i + o:
//!
//! * s_ij = ⟨u_i, v_j⟩/τ − log_q\[j\]  (the positive keeps − log_q\[ī\] only
//!   when `correct_positive`), s_ij = −∞ for j ≠ ī with ids\[j\] = ids\[ī\];
//! * ℓ_i = lse_i − s_iī, lse_i = log Σ_j exp(s_ij);  L = (1/B) Σ_i w_i ℓ_i;
//! * G_ij = ∂L/∂s_ij = (w_i/B)(P_ij − δ_jī), P_ij = exp(s_ij − lse_i);
//! * ∂L/∂U = G·V/τ, ∂L/∂V = Gᵀ·U/τ, ∂L/∂τ = −⟨U, ∂L/∂U⟩/τ.
//!
//! Every backend implements [`Backend`]: the materializing f64
//! [`ReferenceBackend`] (the specification), and the fused
//! [`CpuBackend`] (AVX-512F or AVX2+FMA chosen at run time, or portable `wide`
//! SIMD; rayon-parallel; never stores the B×N logits), and, with the default
//! `cuda` feature, `CudaBackend` (hand-written CUDA kernels compiled by
//! NVRTC at run time; host or device-resident entry points).
//!
//! ```
//! use mixneg::{Backend, CpuBackend, MnsInput};
//! let (b, n, k) = (2, 3, 4);
//! let u = vec![0.1f32; b * k];
//! let v = vec![0.2f32; n * k];
//! let log_q = vec![-1.0f32; n];
//! let out = CpuBackend::new()
//!     .mns_loss(&MnsInput::new(&u, &v, &log_q, k).temperature(0.5))
//!     .unwrap();
//! // All logits equal: the loss is log N.
//! assert!((out.loss - (n as f32).ln()).abs() < 1e-6);
//! ```

#![warn(missing_docs)]

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod input;
mod output;
pub mod reference;

pub use cpu::{CpuBackend, Kernel};
#[cfg(feature = "cuda")]
pub use cuda::CudaBackend;
pub use error::{ErrorSource, MnsError};
pub use input::{
    Floats, MAGNITUDE_LIMIT, MnsInput, Precision, Problem, bf16_to_f32, check_magnitudes,
    check_shapes,
};
pub use output::{MnsForward, MnsOutput};
pub use reference::ReferenceBackend;

/// One implementation of the fused MNS loss.
pub trait Backend: Send + Sync {
    /// Short name, e.g. `reference`, `cpu/avx2_fma`.
    fn name(&self) -> &'static str;

    /// Compute loss, gradients and per-row results into `out`, whose buffers
    /// must already have the problem's sizes. On error `out` is untouched.
    fn mns_loss_into(&self, input: &MnsInput<'_>, out: &mut MnsOutput) -> Result<(), MnsError>;

    /// Compute loss, gradients and per-row results into fresh buffers. The
    /// input is validated once, by `mns_loss_into` (only its O(1) shape
    /// checks run here first, to size the buffers).
    fn mns_loss(&self, input: &MnsInput<'_>) -> Result<MnsOutput, MnsError> {
        let (b, n, k) = input.dims()?;
        let mut out = MnsOutput::filled(b, n, k, 0.0);
        self.mns_loss_into(input, &mut out)?;
        Ok(out)
    }

    /// The forward only: L, lse, ℓ and top-1 of the same input, no
    /// gradients. The CPU and CUDA backends skip the gradient work (their
    /// logit products are a third of a full call's); the default computes
    /// the full call and drops the gradients. Same validation and errors.
    fn mns_forward(&self, input: &MnsInput<'_>) -> Result<MnsForward, MnsError> {
        self.mns_loss(input).map(MnsForward::from)
    }
}
