//! Results of the fused loss.

use crate::error::MnsError;

/// Everything one fused call returns (docs/design.md §2).
///
/// `T` is `f32` for the fast backends; the reference can also return `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct MnsOutput<T = f32> {
    /// L = (1/B) Σ_i w_i ℓ_i.
    pub loss: T,
    /// ∂L/∂U = (1/τ)·G·V, B×K row-major.
    pub d_u: Vec<T>,
    /// ∂L/∂V = (1/τ)·Gᵀ·U, N×K row-major.
    pub d_v: Vec<T>,
    /// lse_i = log Σ_j exp(s_ij) over the kept columns, length B.
    pub lse: Vec<T>,
    /// ℓ_i = lse_i − s_ii, unweighted, length B.
    pub row_loss: Vec<T>,
    /// In-batch top-1 hit: s_ii ≥ s_ij for every kept j, length B.
    pub top1: Vec<bool>,
    /// ∂L/∂τ = Σ_ij G_ij·∂s_ij/∂τ = −⟨U, ∂L/∂U⟩/τ (every logit's dot-product
    /// part is divided by τ; log_q does not depend on it), formed from dU
    /// with no extra pass over the candidates.
    pub d_temperature: T,
}

impl<T: Copy> MnsOutput<T> {
    /// Buffers for B queries, N candidates, K dimensions, every value `fill`.
    pub fn filled(b: usize, n: usize, k: usize, fill: T) -> Self {
        Self {
            loss: fill,
            d_u: vec![fill; b * k],
            d_v: vec![fill; n * k],
            lse: vec![fill; b],
            row_loss: vec![fill; b],
            top1: vec![false; b],
            d_temperature: fill,
        }
    }

    /// Check that the buffers fit a B×N×K problem.
    pub(crate) fn check_shape(&self, b: usize, n: usize, k: usize) -> Result<(), MnsError> {
        for (name, got, expected) in [
            ("d_u", self.d_u.len(), b * k),
            ("d_v", self.d_v.len(), n * k),
            ("lse", self.lse.len(), b),
            ("row_loss", self.row_loss.len(), b),
            ("top1", self.top1.len(), b),
        ] {
            if got != expected {
                return Err(MnsError::OutputLength {
                    name,
                    expected,
                    got,
                });
            }
        }
        Ok(())
    }
}

/// What a forward-only call returns ([`crate::Backend::mns_forward`]): the
/// loss and the per-row results, no gradients — for evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct MnsForward {
    /// L = (1/B) Σ_i w_i ℓ_i.
    pub loss: f32,
    /// lse_i, length B.
    pub lse: Vec<f32>,
    /// ℓ_i, length B.
    pub row_loss: Vec<f32>,
    /// In-batch top-1 hit, length B.
    pub top1: Vec<bool>,
}

impl From<MnsOutput> for MnsForward {
    fn from(o: MnsOutput) -> Self {
        Self {
            loss: o.loss,
            lse: o.lse,
            row_loss: o.row_loss,
            top1: o.top1,
        }
    }
}
