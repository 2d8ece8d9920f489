//! The borrowed input of the fused loss and its validation — the only place
//! where shapes and values are checked. Kernels receive a [`Problem`] and
//! trust it.

use crate::error::MnsError;
use rayon::prelude::*;

/// Largest a-priori bound accepted for |s_ij| and for any gradient element.
///
/// f32 overflows at 3.4e38; 1e30 leaves eight orders of magnitude for the
/// sums of up to N terms that the kernels form, so no intermediate can reach
/// infinity when the bound holds.
pub const MAGNITUDE_LIMIT: f64 = 1e30;

/// A row-major matrix of embeddings, as f32 or as bf16 — each bf16 given by
/// its bit pattern, the upper 16 bits of the f32 of the same value (what
/// `torch.bfloat16` and `ml_dtypes.bfloat16` store), so `x` stands for
/// `f32::from_bits((x as u32) << 16)`, exactly.
///
/// The bf16 tier reads bf16 embeddings as they are (its products round their
/// factors to bf16, which leaves bf16 values unchanged); the F32 tier and
/// the CUDA backend convert them to f32 first (exact, one copy).
#[derive(Debug, Clone, Copy)]
pub enum Floats<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 values as their bit patterns.
    Bf16(&'a [u16]),
}

/// An element of a [`Floats`] slice: an f32, or a bf16 bit pattern.
pub(crate) trait Elem: Copy + Sync {
    /// The element's value (exact).
    fn value(self) -> f32;
}

impl Elem for f32 {
    #[inline]
    fn value(self) -> f32 {
        self
    }
}

impl Elem for u16 {
    #[inline]
    fn value(self) -> f32 {
        bf16_to_f32(self)
    }
}

/// `$body` with `$s` bound to the slice a [`Floats`] holds, whichever its
/// element type ([`Elem`]): one generic body for both.
macro_rules! with_slice {
    ($x:expr, $s:ident => $body:expr) => {
        match $x {
            $crate::Floats::F32($s) => $body,
            $crate::Floats::Bf16($s) => $body,
        }
    };
}
pub(crate) use with_slice;

impl<'a> Floats<'a> {
    /// The number of values.
    pub fn len(&self) -> usize {
        with_slice!(self, x => x.len())
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value i as an f32 (exact).
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        with_slice!(self, x => x[i].value())
    }

    /// The f32 slice, when the values are f32.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match self {
            Floats::F32(x) => Some(x),
            Floats::Bf16(_) => None,
        }
    }

    /// The values as f32, converted in parallel when they are bf16.
    pub fn to_f32(&self) -> std::borrow::Cow<'a, [f32]> {
        match self {
            Floats::F32(x) => std::borrow::Cow::Borrowed(x),
            Floats::Bf16(x) => {
                std::borrow::Cow::Owned(x.par_iter().map(|&b| bf16_to_f32(b)).collect())
            }
        }
    }
}

/// The f32 of the bf16 with bit pattern `b` (exact).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Borrowed input of one fused MNS loss call (docs/design.md §2).
///
/// * `u`: B×K query embeddings, row-major (f32, or bf16: [`Floats`]).
/// * `v`: N×K candidates, row-major, N = B + B′; row i + o is the positive of
///   query i (o = `positive_offset`, default 0: rows 0..B are the positives
///   and B..N the uniformly sampled negatives), so that a process's queries
///   can be scored against candidates gathered from several processes.
/// * `log_q`: N values log Q*_j (the sampling log-probability of candidate j).
/// * `ids` (optional): N item ids; for row i every column j ≠ i + o with
///   `ids[j] == ids[i + o]` is removed (an *accidental hit*).
/// * `row_weight` (optional): B weights w_i ≥ 0 (default 1).
/// * `temperature` τ > 0 (default 1) and `correct_positive` (default true).
///
/// The logits are s_ij = ⟨u_i, v_j⟩/τ − log_q\[j\], where the positive's term
/// − log_q\[i + o\] is dropped when `correct_positive` is false. Below, "the
/// diagonal" s_ii means the positive's logit s_i,i+o.
///
/// Nothing here is checked until a backend is called; the backend validates
/// once and returns an [`MnsError`] naming the offending numbers.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MnsInput<'a> {
    /// Query embeddings, B×K row-major.
    pub u: Floats<'a>,
    /// Candidate embeddings, N×K row-major.
    pub v: Floats<'a>,
    /// log Q*_j for each candidate, length N.
    pub log_q: &'a [f32],
    /// Embedding dimension K.
    pub dim: usize,
    /// Item id of every candidate, length N, for accidental-hit removal.
    pub ids: Option<&'a [i64]>,
    /// Per-example weights w_i ≥ 0, length B.
    pub row_weight: Option<&'a [f32]>,
    /// Temperature τ > 0: logits are divided by τ.
    pub temperature: f32,
    /// Subtract log_q on the diagonal too (Yi et al. 2019, TFRS); `false`
    /// reproduces eq. (5) of the MNS paper literally.
    pub correct_positive: bool,
    /// o: query i's positive is candidate i + o (0 ≤ o ≤ N − B).
    pub positive_offset: usize,
    /// The arithmetic the products may use ([`Precision`]; default F32).
    pub precision: Precision,
}

/// The arithmetic of the three products (the logits U·Vᵀ, G·V and Gᵀ·U).
/// Every tier accumulates in f32 and computes exp, the row merge and the
/// loss as the f32 path does; the tiers differ only in how the products'
/// factors are rounded. The CUDA tensor-core path implements every tier; the
/// CPU backend implements `F32` everywhere and `Bf16` with its `avx512`
/// kernel on a CPU with AVX512_BF16 (`vdpbf16ps`), and refuses the others
/// ([`MnsError::Precision`]); the reference computes everything in f64
/// whatever is asked.
///
/// Error bounds, per product term a·b with unit roundoff u of the tier
/// (derivation in docs/design.md §9):
///
/// * `F32` (default): f32 accuracy. On tensor cores each product is
///   3xTF32 — a = big + small + r with big = tf32(a), small = tf32(a − big),
///   |r| ≤ 2⁻²²|a|, and a·b ≈ big·big + big·small + small·big — which errs
///   by at most (3 + 3K/4)·2⁻²²·Σ|a_k b_k| against plain f32's K·2⁻²⁴·Σ|a_k b_k|,
///   and passes the same tolerance policy as the f32 kernels.
/// * `Tf32`: one TF32 pass (both factors rounded to 11 significant bits,
///   u = 2⁻¹¹): a logit errs by up to 2·2⁻¹¹·Σ_k|u_k v_k|/τ, about 2¹³ times
///   f32's; what PyTorch computes with `allow_tf32`. Tested against a plain
///   implementation that rounds the same factors.
/// * `Bf16`: factors rounded to bf16 (8 significant bits, to nearest even,
///   u = 2⁻⁸), f32 accumulation (m16n8k16 bf16 on tensor cores): a logit
///   errs by up to 2·2⁻⁸·Σ_k|u_k v_k|/τ, 2¹⁶ times f32's; what a bf16
///   autocast matmul with f32 accumulation computes. Tested the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Precision {
    /// f32 accuracy (3xTF32 on tensor cores).
    #[default]
    F32,
    /// One TF32 pass: factors rounded to 11 significant bits, f32 sums.
    Tf32,
    /// bf16 factors (8 significant bits), f32 sums.
    Bf16,
}

impl<'a> MnsInput<'a> {
    /// An input with τ = 1, `correct_positive` = true, no ids, unit weights.
    /// B = `u.len() / dim` and N = `v.len() / dim`.
    pub fn new(u: &'a [f32], v: &'a [f32], log_q: &'a [f32], dim: usize) -> Self {
        Self::with_floats(Floats::F32(u), Floats::F32(v), log_q, dim)
    }

    /// [`MnsInput::new`] for embeddings in f32 or bf16 ([`Floats`]), each
    /// matrix in its own.
    pub fn with_floats(u: Floats<'a>, v: Floats<'a>, log_q: &'a [f32], dim: usize) -> Self {
        Self {
            u,
            v,
            log_q,
            dim,
            ids: None,
            row_weight: None,
            temperature: 1.0,
            correct_positive: true,
            positive_offset: 0,
            precision: Precision::F32,
        }
    }

    /// The arithmetic of the products (default [`Precision::F32`]).
    #[must_use]
    pub fn precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }

    /// Remove accidental hits using these N item ids.
    #[must_use]
    pub fn ids(mut self, ids: &'a [i64]) -> Self {
        self.ids = Some(ids);
        self
    }

    /// Weight row i's loss by `w[i]` (length B, every w_i ≥ 0).
    #[must_use]
    pub fn row_weight(mut self, w: &'a [f32]) -> Self {
        self.row_weight = Some(w);
        self
    }

    /// Set the temperature τ.
    #[must_use]
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Query i's positive is candidate i + `o` (0 ≤ o ≤ N − B; default 0).
    #[must_use]
    pub fn positive_offset(mut self, o: usize) -> Self {
        self.positive_offset = o;
        self
    }

    /// Set whether log_q is also subtracted on the diagonal.
    #[must_use]
    pub fn correct_positive(mut self, yes: bool) -> Self {
        self.correct_positive = yes;
        self
    }

    /// (B, N, K) from the slice lengths, or the first shape error: K ≥ 1,
    /// u and v whole rows, B ≥ 1, N ≥ B. O(1): no value is read. Backends
    /// use it to size output buffers before the one full [`validate`]
    /// of a call.
    ///
    /// [`validate`]: MnsInput::validate
    pub fn dims(&self) -> Result<(usize, usize, usize), MnsError> {
        shape(self.u.len(), self.v.len(), self.dim, self.positive_offset)
    }

    /// Check every shape and value (one parallel pass over u, v, log_q and
    /// the weights); on success return the validated view.
    pub fn validate(&self) -> Result<Problem<'a>, MnsError> {
        let (b, n, k) = self.dims()?;
        check_side_lengths(
            b,
            n,
            self.log_q.len(),
            self.ids.map(<[i64]>::len),
            self.row_weight.map(<[f32]>::len),
        )?;
        let t = self.temperature;
        check_temperature(t)?;
        with_slice!(self.u, x => check_finite("u", x))?;
        with_slice!(self.v, x => check_finite("v", x))?;
        check_finite("log_q", self.log_q)?;
        let mut max_w = 1.0f64;
        if let Some(w) = self.row_weight {
            check_finite("row_weight", w)?;
            if let Some((index, &value)) = w.iter().enumerate().find(|(_, x)| **x < 0.0) {
                return Err(MnsError::NegativeWeight { index, value });
            }
            max_w = w.iter().fold(0.0f64, |m, &x| m.max(x as f64));
        }

        // Cauchy–Schwarz bounds, in f64 so the check itself cannot overflow:
        // |s_ij| ≤ |u_i||v_j|/τ + |log_q_j|, and |dU|, |dV| ≤ 2·w_max·max(|u|,|v|)/τ
        // (each row of G has ℓ1 norm ≤ 2 w_i / B and the 1/B cancels the sum over rows).
        let max_u = with_slice!(self.u, x => max_row_norm(x, k));
        let max_v = with_slice!(self.v, x => max_row_norm(x, k));
        let max_lq = self
            .log_q
            .iter()
            .fold(0.0f64, |m, &x| m.max((x as f64).abs()));
        check_magnitudes(b, n, t, max_u, max_v, max_lq, max_w)?;
        Ok(Problem {
            u: self.u,
            v: self.v,
            log_q: self.log_q,
            ids: self.ids,
            row_weight: self.row_weight,
            b,
            n,
            k,
            temperature: t,
            correct_positive: self.correct_positive,
            positive_offset: self.positive_offset,
            precision: self.precision,
        })
    }
}

/// (B, N, K) from the lengths of u and v, or the first shape error: K ≥ 1,
/// u and v whole rows, B ≥ 1, N ≥ B, a positive offset ≤ N − B. Shared by
/// the host and the device entry points.
pub(crate) fn shape(
    u_len: usize,
    v_len: usize,
    k: usize,
    offset: usize,
) -> Result<(usize, usize, usize), MnsError> {
    if k == 0 {
        return Err(MnsError::ZeroDim);
    }
    for (name, len) in [("u", u_len), ("v", v_len)] {
        if len % k != 0 {
            return Err(MnsError::RaggedRows { name, len, dim: k });
        }
    }
    let (b, n) = (u_len / k, v_len / k);
    check_rows(b, n, offset)?;
    Ok((b, n, k))
}

/// B ≥ 1, N ≥ B and a positive offset ≤ N − B.
fn check_rows(b: usize, n: usize, offset: usize) -> Result<(), MnsError> {
    if b == 0 {
        return Err(MnsError::EmptyBatch);
    }
    if n < b {
        return Err(MnsError::TooFewCandidates { b, n });
    }
    if offset > n - b {
        return Err(MnsError::PositiveOffset { offset, b, n });
    }
    Ok(())
}

/// log_q and the optional ids of length N, the optional row weights of B.
fn check_side_lengths(
    b: usize,
    n: usize,
    log_q_len: usize,
    ids_len: Option<usize>,
    row_weight_len: Option<usize>,
) -> Result<(), MnsError> {
    check_len("log_q", log_q_len, n)?;
    if let Some(len) = ids_len {
        check_len("ids", len, n)?;
    }
    if let Some(len) = row_weight_len {
        check_len("row_weight", len, b)?;
    }
    Ok(())
}

/// The shape checks of [`MnsInput::validate`] for callers that hold shapes
/// rather than slices (a front end that traces, such as JAX's): B rows of u,
/// N rows of v, K components, the positive offset, and the lengths of
/// log_q, the ids and the row weights (None when absent). The same errors,
/// in the same order.
pub fn check_shapes(
    b: usize,
    n: usize,
    k: usize,
    positive_offset: usize,
    log_q_len: usize,
    ids_len: Option<usize>,
    row_weight_len: Option<usize>,
) -> Result<(), MnsError> {
    if k == 0 {
        return Err(MnsError::ZeroDim);
    }
    check_rows(b, n, positive_offset)?;
    check_side_lengths(b, n, log_q_len, ids_len, row_weight_len)
}

/// τ finite and > 0, with 1/τ finite in f32 too: τ below ~2.9e-39 would make
/// every logit ±∞ or NaN (found by the fuzzer: τ = 5e-44).
pub(crate) fn check_temperature(t: f32) -> Result<(), MnsError> {
    if t.is_finite() && t > 0.0 && (1.0 / t).is_finite() {
        Ok(())
    } else {
        Err(MnsError::Temperature(t))
    }
}

/// The a-priori overflow checks of [`MnsInput::validate`] on the data's
/// summary — the largest row norms of u and v, the largest |log_q_j| and the
/// largest row weight (1 without weights) — for callers whose data the
/// host cannot scan (a device entry point reduces these on the GPU): τ's
/// own check ([`MnsError::Temperature`]), then Err([`MnsError::Magnitude`])
/// naming the first quantity whose bound exceeds [`MAGNITUDE_LIMIT`].
pub fn check_magnitudes(
    b: usize,
    n: usize,
    t: f32,
    max_u: f64,
    max_v: f64,
    max_lq: f64,
    max_w: f64,
) -> Result<(), MnsError> {
    check_temperature(t)?;
    let tau = t as f64;
    let logit_bound = max_u * max_v / tau + max_lq;
    let grad_bound = 2.0 * max_w * max_u.max(max_v) / tau;
    // The kernels form ⟨u_i, v_j⟩ in f32 before scaling by 1/τ, so the raw
    // dot product is bounded too (found by the fuzzer: |u||v| = 2e53 with
    // τ = 5e24 has moderate logits but overflows the dot product).
    let dot_bound = max_u * max_v;
    // ℓ_i ≤ 2·max|s|, and the loss weighs it by w_i (found by the fuzzer:
    // w = 9e12 with logits of 5e27).
    let loss_bound = 2.0 * max_w.max(1.0) * logit_bound;
    // The CPU kernel sums e_ij·v_j (e_ij ≤ 1) before scaling by the row's
    // coefficient (found by the fuzzer: |v| = 2e38 with all weights 0).
    let sum_bound = n as f64 * max_v;
    // The kernels scale each row by w_i·e^{m_p − m}/(B·τ·Σ) ≤ w_max/(B·τ)
    // (Σ ≥ 1: the row's max term is e^0) in f32 before it meets the tiny
    // embeddings that keep the gradient itself finite (found by the
    // fuzzer: w = 7e24, τ = 2e-18, |u| = 2e-18 gave NaN in d_u).
    let coef_bound = max_w / (b as f64 * tau);
    // |∂L/∂τ| = |Σ_ij G_ij ⟨u_i, v_j⟩|/τ² ≤ 2·w_max·max|u|·max|v|/τ².
    let dtau_bound = 2.0 * max_w * max_u * max_v / (tau * tau);
    for (what, bound) in [
        ("a dot product", dot_bound),
        ("a sum over candidates", sum_bound),
        ("a logit", logit_bound),
        ("a row's gradient coefficient w/(B·τ)", coef_bound),
        ("a gradient element", grad_bound),
        ("the weighted loss", loss_bound),
        ("the temperature gradient", dtau_bound),
    ] {
        if bound.is_nan() || bound > MAGNITUDE_LIMIT {
            return Err(MnsError::Magnitude {
                what,
                bound,
                limit: MAGNITUDE_LIMIT,
                max_u_norm: max_u,
                max_v_norm: max_v,
                max_weight: max_w,
                temperature: t,
            });
        }
    }
    Ok(())
}

pub(crate) fn check_len(name: &'static str, got: usize, expected: usize) -> Result<(), MnsError> {
    if got == expected {
        Ok(())
    } else {
        Err(MnsError::Length {
            name,
            expected,
            got,
        })
    }
}

/// Elements per rayon task in the validation passes: large enough that the
/// split costs nothing, small enough that B or N of a few thousand rows use
/// every worker (both passes are O((B + N)·K), ~1% of a call when serial).
const CHUNK: usize = 1 << 15;

/// The first element whose value is not finite, as an error.
fn check_finite<T: Elem>(name: &'static str, xs: &[T]) -> Result<(), MnsError> {
    // The first non-finite element (find_map_first: the same index whatever
    // the scheduling).
    match xs.par_chunks(CHUNK).enumerate().find_map_first(|(c, xs)| {
        xs.iter()
            .position(|x| !x.value().is_finite())
            .map(|i| c * CHUNK + i)
    }) {
        None => Ok(()),
        Some(index) => Err(MnsError::NonFinite {
            name,
            index,
            value: xs[index].value(),
        }),
    }
}

fn max_row_norm<T: Elem>(x: &[T], k: usize) -> f64 {
    // Max is exact in any order, so the parallel reduction is deterministic.
    x.par_chunks(k * CHUNK.div_ceil(k))
        .map(|c| {
            c.chunks_exact(k)
                .map(|r| {
                    r.iter()
                        .map(|a| {
                            let a = a.value() as f64;
                            a * a
                        })
                        .sum::<f64>()
                })
                .fold(0.0f64, f64::max)
        })
        .reduce(|| 0.0, f64::max)
        .sqrt()
}

/// A validated problem: shapes consistent, values finite, τ > 0, weights ≥ 0,
/// logits and gradients bounded well inside f32. Kernels take this and only
/// `debug_assert!` what it guarantees.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    /// B×K queries.
    pub u: Floats<'a>,
    /// N×K candidates.
    pub v: Floats<'a>,
    /// N sampling log-probabilities.
    pub log_q: &'a [f32],
    /// N item ids, if accidental hits are removed.
    pub ids: Option<&'a [i64]>,
    /// B row weights, if any.
    pub row_weight: Option<&'a [f32]>,
    /// Number of queries B ≥ 1.
    pub b: usize,
    /// Number of candidates N ≥ B.
    pub n: usize,
    /// Embedding dimension K ≥ 1.
    pub k: usize,
    /// τ > 0.
    pub temperature: f32,
    /// Whether the diagonal logit is corrected by log_q too.
    pub correct_positive: bool,
    /// o: row i's positive is column i + o (o ≤ N − B).
    pub positive_offset: usize,
    /// The arithmetic the products may use.
    pub precision: Precision,
}

impl Problem<'_> {
    /// Weight of row i (1 when no weights were given).
    #[inline]
    pub fn weight(&self, i: usize) -> f32 {
        self.row_weight.map_or(1.0, |w| w[i])
    }

    /// Useful flops of one forward+backward call: 6·B·N·K (docs/design.md §3).
    pub fn flops(&self) -> f64 {
        6.0 * self.b as f64 * self.n as f64 * self.k as f64
    }

    /// Accidental-hit groups: `(group_of_row, columns_of_group)` where
    /// `columns_of_group[g]` lists, in increasing order, every column whose id
    /// is the id of the rows in group g. O(N) memory whatever the duplication.
    /// Row i's removed columns are `columns_of_group[group_of_row[i]]` minus
    /// its positive i + o (the group is that of ids\[i + o\]).
    /// Groups holding only one column are dropped (`usize::MAX`).
    pub fn hit_groups(&self) -> Option<(Vec<usize>, Vec<Vec<usize>>)> {
        let ids = self.ids?;
        let mut order: Vec<usize> = (0..self.n).collect();
        order.sort_by_key(|&j| (ids[j], j));
        let mut group_of_id = std::collections::HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for run in order.chunk_by(|&a, &b| ids[a] == ids[b]) {
            if run.len() > 1 {
                group_of_id.insert(ids[run[0]], groups.len());
                groups.push(run.to_vec());
            }
        }
        let row_group = (0..self.b)
            .map(|i| {
                let id = ids[i + self.positive_offset];
                group_of_id.get(&id).copied().unwrap_or(usize::MAX)
            })
            .collect();
        Some((row_group, groups))
    }
}
