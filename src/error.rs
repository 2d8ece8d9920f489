//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in a call of the fused MNS loss.
///
/// Every message carries the offending numbers, so that a caller can tell
/// from the message alone which argument was wrong and by how much.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum MnsError {
    /// B = 0: the batch has no query.
    #[error("empty batch: u has no rows (B = 0)")]
    EmptyBatch,
    /// K = 0: embeddings have no component.
    #[error("embedding dimension K must be at least 1, got K = 0")]
    ZeroDim,
    /// A slice whose length is not a whole number of K-long rows.
    #[error("{name} has {len} elements, which is not a multiple of K = {dim}")]
    RaggedRows {
        /// Which argument (`u` or `v`).
        name: &'static str,
        /// Its length in elements.
        len: usize,
        /// The embedding dimension K.
        dim: usize,
    },
    /// N < B: not every query has its positive among the candidates.
    #[error(
        "v has N = {n} rows but u has B = {b}; need N >= B (row i of v is the positive of query i)"
    )]
    TooFewCandidates {
        /// Number of queries.
        b: usize,
        /// Number of candidates.
        n: usize,
    },
    /// A positive offset o with o > N − B: some query's positive i + o would
    /// lie past the last candidate.
    #[error(
        "positive_offset = {offset} is out of range: with B = {b} queries and N = {n} candidates it must be at most N - B = {}",
        n - b
    )]
    PositiveOffset {
        /// The offset o.
        offset: usize,
        /// Number of queries.
        b: usize,
        /// Number of candidates.
        n: usize,
    },
    /// A slice of the wrong length.
    #[error("{name} has length {got}, expected {expected}")]
    Length {
        /// Which argument.
        name: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        got: usize,
    },
    /// τ ≤ 0, τ not finite, or τ so small that 1/τ overflows f32.
    #[error("temperature must be finite and > 0, with a finite reciprocal in f32, got {0}")]
    Temperature(f32),
    /// A NaN or an infinity in an input.
    #[error("{name}[{index}] = {value} is not finite")]
    NonFinite {
        /// Which argument.
        name: &'static str,
        /// Flat index of the first non-finite element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A negative row weight.
    #[error("row_weight[{index}] = {value} is negative")]
    NegativeWeight {
        /// Row index.
        index: usize,
        /// The weight.
        value: f32,
    },
    /// Inputs so large that logits or gradients could overflow f32.
    #[error(
        "inputs too large for f32: {what} may reach {bound:e} \
         (limit {limit:e}; max |u_i| = {max_u_norm:e}, max |v_j| = {max_v_norm:e}, \
         max row weight = {max_weight:e}, temperature = {temperature})"
    )]
    Magnitude {
        /// Which quantity could overflow.
        what: &'static str,
        /// Its a-priori bound (Cauchy–Schwarz).
        bound: f64,
        /// The largest bound accepted.
        limit: f64,
        /// Largest Euclidean norm of a row of u.
        max_u_norm: f64,
        /// Largest Euclidean norm of a row of v.
        max_v_norm: f64,
        /// Largest row weight (1 without weights).
        max_weight: f64,
        /// τ.
        temperature: f32,
    },
    /// An output buffer of the wrong length passed to `mns_loss_into`.
    #[error("output {name} has length {got}, expected {expected}")]
    OutputLength {
        /// Which output.
        name: &'static str,
        /// Required length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A raw device call (`CudaBackend::mns_loss_raw`) with a null address
    /// for a buffer the call reads or writes.
    #[error("the device address of {name} is null")]
    NullAddress {
        /// Which buffer.
        name: &'static str,
    },
    /// The CUDA backend cannot run here: no driver library, no NVRTC 13, or
    /// no device (the reason says which).
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    /// A CUDA driver or NVRTC call failed; `source` is cudarc's error.
    #[error("CUDA {context}: {source}")]
    Cuda {
        /// What was being done (e.g. `NVRTC compile for sm_90` with its log).
        context: String,
        /// The underlying driver or NVRTC error.
        #[source]
        source: ErrorSource,
    },
    /// The CUDA backend was asked for in a build without the `cuda` feature.
    #[error("this build of mixneg has no CUDA backend (built without the `cuda` feature)")]
    CudaNotBuilt,
    /// A CPU kernel was forced that this CPU cannot run, or an unknown name.
    #[error("CPU kernel {0} is not available on this machine")]
    KernelUnavailable(String),
    /// A precision tier the backend (or this machine) does not implement.
    #[error("the {backend} backend cannot compute Precision::{precision:?}: {reason}")]
    Precision {
        /// The backend's name.
        backend: &'static str,
        /// The tier asked for.
        precision: crate::Precision,
        /// What would compute it.
        reason: &'static str,
    },
    /// A private thread pool could not be built.
    #[error("thread pool of {threads} workers: {reason}")]
    ThreadPool {
        /// The requested worker count.
        threads: usize,
        /// rayon's reason.
        reason: String,
    },
}

/// The underlying error of [`MnsError::Cuda`], shared so that [`MnsError`]
/// stays `Clone`; two are equal when their messages are.
#[derive(Debug, Clone)]
pub struct ErrorSource(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl ErrorSource {
    /// Wraps an error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(e))
    }
}

impl std::fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ErrorSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ErrorSource {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}
