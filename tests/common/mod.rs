//! Shared test support: cases, the test vectors, and the one tolerance policy.
#![allow(dead_code)]

use mixneg::{MnsInput, MnsOutput};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// Awkward (B, B′, K) every fast path is checked on: B = 1, B′ = 0, K = 1,
/// odd K, and tails in every tile dimension of the CPU and CUDA kernels;
/// each test adds the shapes its own kernels need.
pub const AWKWARD: [(usize, usize, usize); 6] = [
    (1, 0, 1),
    (1, 7, 3),
    (3, 0, 7),
    (17, 203, 9),
    (64, 64, 64),
    (65, 130, 65),
];

/// One problem, owning its data.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub u: Vec<f32>,
    pub v: Vec<f32>,
    pub log_q: Vec<f32>,
    pub ids: Option<Vec<i64>>,
    pub row_weight: Option<Vec<f32>>,
    pub k: usize,
    pub temperature: f32,
    /// τ as written in the vector's metadata (for the f64 comparison).
    pub temperature_text: String,
    pub correct_positive: bool,
    /// o: query i's positive is candidate i + o.
    pub positive_offset: usize,
    /// The products' arithmetic; the plain baseline of the tolerance policy
    /// rounds the same factors ([`naive_f32`]).
    pub precision: mixneg::Precision,
    /// The products run on tensor cores (the CUDA tensor-core kernels, F32
    /// as 3xTF32): the plain baseline adds as they do ([`tc_dot`]).
    pub tensor_cores: bool,
    /// [`magnitudes`], computed once.
    pub mags: std::sync::OnceLock<Mags>,
    /// [`naive_f32`] in its three variants, computed once.
    pub naive: std::sync::OnceLock<[MnsOutput; 3]>,
}

impl Case {
    /// A case with the given data, τ, no weights, the corrected diagonal and
    /// no positive offset.
    pub fn new(
        name: String,
        (u, v, log_q): (Vec<f32>, Vec<f32>, Vec<f32>),
        ids: Option<Vec<i64>>,
        k: usize,
        temperature: f32,
    ) -> Case {
        Case {
            name,
            u,
            v,
            log_q,
            ids,
            row_weight: None,
            k,
            temperature,
            temperature_text: temperature.to_string(),
            correct_positive: true,
            positive_offset: 0,
            precision: mixneg::Precision::F32,
            tensor_cores: false,
            mags: Default::default(),
            naive: Default::default(),
        }
    }

    /// This case at another precision tier (its plain baselines recomputed
    /// for that tier).
    pub fn at(&self, precision: mixneg::Precision) -> Case {
        Case {
            name: format!("{} [{precision:?}]", self.name),
            precision,
            naive: Default::default(),
            ..self.clone()
        }
    }

    /// This case as the tensor-core kernels compute it (its plain baselines
    /// recomputed with the tensor cores' arithmetic).
    pub fn on_tensor_cores(&self) -> Case {
        Case {
            tensor_cores: true,
            naive: Default::default(),
            ..self.clone()
        }
    }

    pub fn input(&self) -> MnsInput<'_> {
        let mut x = MnsInput::new(&self.u, &self.v, &self.log_q, self.k)
            .precision(self.precision)
            .temperature(self.temperature)
            .correct_positive(self.correct_positive)
            .positive_offset(self.positive_offset);
        if let Some(ids) = &self.ids {
            x = x.ids(ids);
        }
        if let Some(w) = &self.row_weight {
            x = x.row_weight(w);
        }
        x
    }
    pub fn b(&self) -> usize {
        self.u.len() / self.k
    }
    pub fn n(&self) -> usize {
        self.v.len() / self.k
    }

    /// A-priori scale of the logits: max|u_i|·max|v_j|/τ + max|log_q_j|.
    pub fn logit_scale(&self) -> f64 {
        let norm = |x: &[f32]| {
            x.chunks(self.k)
                .map(|r| r.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt())
                .fold(0.0, f64::max)
        };
        norm(&self.u) * norm(&self.v) / self.temperature as f64
            + self
                .log_q
                .iter()
                .fold(0.0f64, |m, &q| m.max((q as f64).abs()))
    }
}

/// SplitMix64: a seeded stream for test data (no dependency for eight lines).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unif(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Approximately standard normal (sum of 4 uniforms, rescaled).
    pub fn normal(&mut self) -> f32 {
        let s: f64 = (0..4).map(|_| self.unif()).sum::<f64>() - 2.0;
        (s * 3.0f64.sqrt()) as f32
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.unif() * n as f64) as usize
    }
}

/// A seeded random case of B queries, B′ negatives and K dimensions, with
/// embeddings of norm ~1 (as after L2 normalization), τ = 0.05, log_q of
/// a Zipf-like mixture, ids with duplicates among the negatives.
pub fn random_case(seed: u64, b: usize, bp: usize, k: usize) -> Case {
    let mut rng = Rng::new(seed ^ ((b as u64) << 40) ^ ((bp as u64) << 20) ^ k as u64);
    let n = b + bp;
    let scale = 1.0 / (k as f32).sqrt();
    let u: Vec<f32> = (0..b * k).map(|_| rng.normal() * scale).collect();
    let v: Vec<f32> = (0..n * k).map(|_| rng.normal() * scale).collect();
    let corpus = 4 * n + 10;
    let ids: Vec<i64> = (0..n)
        .map(|_| (rng.below(corpus) as f64).powf(0.7) as i64)
        .collect();
    let log_q = ids
        .iter()
        .map(|&id| (-(1.0 + id as f64).ln() - 3.0) as f32)
        .collect();
    Case::new(
        format!("random(seed={seed}, B={b}, B'={bp}, K={k})"),
        (u, v, log_q),
        Some(ids),
        k,
        0.05,
    )
}

/// Expected f64 results of a test vector.
pub struct Expected {
    pub loss: f64,
    pub d_u: Vec<f64>,
    pub d_v: Vec<f64>,
    pub lse: Vec<f64>,
}

/// The workspace's `tests/vectors` (found from this crate's manifest
/// directory upwards, so the trainer crate's tests share them), or
/// `$MIXNEG_VECTORS` when set (prebuilt test binaries run elsewhere, e.g. by
/// `scripts/gpu_check.sh`).
pub fn vectors_dir() -> PathBuf {
    match std::env::var_os("MIXNEG_VECTORS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|d| d.join("tests/vectors"))
            .find(|d| d.is_dir())
            .expect("tests/vectors in this crate or the workspace root"),
    }
}

/// A little-endian tensor of `dtype` decoded with `from` (W bytes a value).
fn values<T, const W: usize>(
    t: &safetensors::tensor::TensorView<'_>,
    dtype: Dtype,
    from: fn([u8; W]) -> T,
) -> Vec<T> {
    assert_eq!(t.dtype(), dtype);
    t.data()
        .chunks_exact(W)
        .map(|c| from(c.try_into().unwrap()))
        .collect()
}
fn f32s(t: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    values(t, Dtype::F32, f32::from_le_bytes)
}
fn f64s(t: &safetensors::tensor::TensorView<'_>) -> Vec<f64> {
    values(t, Dtype::F64, f64::from_le_bytes)
}

/// Every test vector: (case, expected). Panics if the directory is empty, so
/// a missing checkout of the vectors cannot pass silently.
pub fn load_vectors() -> Vec<(Case, Expected)> {
    let mut paths: Vec<_> = std::fs::read_dir(vectors_dir())
        .expect("tests/vectors")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 7,
        "expected the 7 test vectors, found {}",
        paths.len()
    );
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
            let meta = meta.metadata().clone().unwrap_or_default();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let u = st.tensor("u").unwrap();
            let k = u.shape()[1];
            let case = Case {
                name: p.file_name().unwrap().to_string_lossy().into(),
                u: f32s(&u),
                v: f32s(&st.tensor("v").unwrap()),
                log_q: f32s(&st.tensor("log_q").unwrap()),
                ids: st.tensor("ids").ok().map(|t| {
                    assert_eq!(t.dtype(), Dtype::I64);
                    t.data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                }),
                row_weight: st.tensor("row_weight").ok().map(|t| f32s(&t)),
                k,
                temperature: meta["temperature"].parse().unwrap(),
                temperature_text: meta["temperature"].clone(),
                correct_positive: meta["correct_positive"] == "true",
                positive_offset: 0,
                precision: mixneg::Precision::F32,
                tensor_cores: false,
                mags: Default::default(),
                naive: Default::default(),
            };
            let exp = Expected {
                loss: f64s(&st.tensor("loss").unwrap())[0],
                d_u: f64s(&st.tensor("d_u").unwrap()),
                d_v: f64s(&st.tensor("d_v").unwrap()),
                lse: f64s(&st.tensor("lse").unwrap()),
            };
            (case, exp)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The tolerance policy, written once.
//
// A fast f32 path differs from the f64 truth mostly through the logits: each
// The tolerance policy (FlashAttention's rule): a fused f32 kernel may be at
// most FACTOR times as far from the f64 reference as a *plain f32
// materializing implementation* is on the same case ([`naive_f32`]: U·Vᵀ in
// f32 with sequential sums, libm exp, P, G and both gradient products in
// f32 — what PyTorch's fp32 eager does, up to its BLAS's summation order),
// plus a floor for what the naive baseline can be lucky about:
//
//     ‖x − ref‖₂ ≤ FACTOR·max(‖x_naive − ref‖₂ over the variants, σ) + FLOOR·ε·D + underflow,
//
// per tensor (and |L − L_ref| ≤ FACTOR·max|L_naive − L_ref| + FLOOR·ε·max(|L_ref|, 1)
// for the loss), ε = 2⁻²⁴ (f32's unit roundoff). The baseline is the worst
// of three variants of the plain algorithm ([`Naive`]: sequential sums with
// separate multiply and add, dividing by τ; reversed sums with FMA, times the
// f32 reciprocal of τ; sequential unfused sums times the reciprocal — the
// portable kernel in a build without FMA is exactly as accurate as this one,
// and on large logits up to ~3× less than the first two, found by the
// property tests at B = 3, N = 14, K = 8, |s| ~ 10²): one realization of
// rounding is a noisy yardstick when a
// few large logits dominate a row (one variant alone was 4× luckier than
// the kernels on `huge_logits`), and the reciprocal's rounding is a
// systematic error every "logits * (1/τ)" implementation shares (K = 1,
// where the dot product itself is exact, showed it). σ ([`Mags`]) is the
// *expected* error of a plain f32 computation of the logits (each rounding
// independent and uniform), computed in f64 from the case: on a small case
// with a few huge logits both naive variants can be 2–4× luckier than their
// expectation (the property tests found B = 10, N = 21, K = 3, |s| ~ 10³),
// and the yardstick is what an f32 implementation makes on average, not the
// luck of one. A systematic error — the same relative error on a whole row,
// such as P = exp(s − lse) with lse rounded to f32 — does not average out
// over a row as these do, and is caught. Why these numbers:
//
// * FACTOR = 2: the fused kernels make the same kinds of rounding as the
//   naive one — the same f32 logits, one exp per logit, products summed in
//   f32 — but sum in blocks (≤ 256 terms) and merge rows in f64, so they are
//   usually *more* accurate (measured ratios ~0.1–1.3, see tests/vectors.rs
//   output); 2 leaves room for differing orders of summation and nothing for
//   a systematic error.
// * FLOOR = 5: the naive baseline can be exact by luck (K = 1, all logits
//   equal; the property tests found K = 1 cases with naive errors of 7e-9)
//   while the kernels round a few more times per output term than it does:
//   the exp polynomial is within 2 ulp where libm's expf is within 0.5
//   (2ε on every probability), the row coefficient is rounded to f32 and
//   multiplied into each part's share (ε/2 each), the shares and the
//   diagonal term are summed (ε/2), the output is rounded (ε/2): 4ε, and
//   5ε with the f32 accumulation inside a share — each relative to D.
//   D = ‖ref‖₂, or for the gradients ‖|G|·|V|/τ‖₂ (resp. ‖|G|ᵀ·|U|/τ‖₂) when
//   larger (their terms cancel: every row of G sums to zero, and a rounding
//   is relative to the terms), and for lse and ℓ, which are in logit units,
//   max(‖ref‖₂, S·√len) with S the case's logit scale
//   max|u_i|·max|v_j|/τ + max|log_q_j|.
// * underflow: an exp below f32's smallest normal (1.2e-38 of its row's
//   largest term) is flushed to 0, so a gradient whose every term is that
//   small — a positive ahead by > 87 logits — is 0 in f32 even though f64
//   holds, say, 1e-130 (found by the property tests). Per element we allow
//   1e-30·w_max/(B·τ)·max(|u_i|, |v_j|), far above that flush and far below
//   anything a trainer could see.
//
// A deliberately degraded kernel fails this (`lab/mutation_check.sh`):
// one exp term per row and part rounded to bf16, 1/τ rounded to bf16, and
// the CUDA gradient kernels forming exp(s − lse) with lse in f32 (10×). The
// absolute bar (1e-5 on the realistic vector) is asserted on its own in
// tests/vectors.rs.
pub const EPS: f64 = 5.960_464_477_539_063e-8;
pub const FACTOR: f64 = 2.0;
pub const FLOOR: f64 = 5.0;

/// The error a logit computed in f32 can have, ~8ε·S (four roundings of
/// relative size ε, two without FMA, and a difference of two logits), plus,
/// at a lower tier, its factors' rounding (2u per product term, u the
/// tier's unit roundoff, for each of the two logits) — for deciding whether
/// a top-1 disagreement is a near-tie.
pub fn logit_tolerance(case: &Case) -> f64 {
    let tier = match case.precision {
        mixneg::Precision::Tf32 => 4.0 * 2f64.powi(-11),
        mixneg::Precision::Bf16 => 4.0 * 2f64.powi(-8),
        _ => 0.0,
    };
    (4e-6 + (8.0 * EPS + tier) * case.logit_scale()) * case.logit_scale().max(1.0)
}

/// The three plain f32 materializing implementations the policy measures
/// against (see above), computed once per case.
pub fn naive(case: &Case) -> &[MnsOutput; 3] {
    case.naive.get_or_init(|| {
        std::thread::scope(|s| {
            [Naive::Plain, Naive::ReversedFma, Naive::Reciprocal]
                .map(|v| s.spawn(move || naive_f32(case, v)))
                .map(|h| h.join().unwrap())
        })
    })
}

/// The variants of [`naive_f32`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naive {
    /// Sequential sums, separate multiply and add, divide by τ.
    Plain,
    /// Reversed sums with fused multiply-adds, multiply by the f32 1/τ.
    ReversedFma,
    /// Sequential sums, separate multiply and add, multiply by the f32 1/τ
    /// (what the portable kernel does in a build without FMA).
    Reciprocal,
}

/// What a straightforward f32 implementation computes: S = U·Vᵀ/τ − log_q,
/// hits set to −∞, per row m = max, z = Σ exp(s − m) (libm `expf`),
/// lse = m + ln z, P = e/z, G = (w/B)(P − δ), ℓ = lse − s_ii, L = Σ w ℓ / B,
/// dU = G·V/τ and dV = Gᵀ·U/τ, every sum sequential in f32. Three variants
/// of the same plain algorithm, as frameworks write it ([`Naive`]): with or
/// without fused multiply-adds, dividing by τ or multiplying by its f32
/// reciprocal (as the kernels do), whose rounding is a common relative error
/// of all logits.
pub fn naive_f32(case: &Case, variant: Naive) -> MnsOutput {
    let (b, n, k) = (case.b(), case.n(), case.k);
    // A lower tier rounds both factors of every product term (what a
    // framework's TF32 matmuls do): u and v in the logits, g and v (u) in
    // dU (dV).
    let r = |x: f32| round_to(case.precision, x);
    let tau = case.temperature;
    let inv_tau = 1.0 / tau;
    let alt = variant == Naive::ReversedFma;
    let scale = |x: f32| {
        if variant == Naive::Plain {
            x / tau
        } else {
            x * inv_tau
        }
    };
    let madd = |a: f32, b: f32, c: f32| if alt { a.mul_add(b, c) } else { a * b + c };
    // The t-th index of a sum over 0..len in this variant's order.
    let at = |t: usize, len: usize| if alt { len - 1 - t } else { t };
    let mut out = MnsOutput::filled(b, n, k, 0.0);
    let mut wl = 0.0f32;
    let mut s = vec![0.0f32; n];
    // G, kept for the two gradient products when they run on tensor cores.
    let mut gm = vec![0.0f32; if case.tensor_cores { b * n } else { 0 }];
    // U and V as the tensor cores take them.
    let (tcu, tcv) = match case.tensor_cores {
        true => (
            tc_factors(case.precision, &case.u),
            tc_factors(case.precision, &case.v),
        ),
        false => (vec![], vec![]),
    };
    for i in 0..b {
        let pos = i + case.positive_offset;
        for (j, sj) in s.iter_mut().enumerate() {
            if j != pos && case.ids.as_ref().is_some_and(|ids| ids[j] == ids[pos]) {
                *sj = f32::NEG_INFINITY;
                continue;
            }
            let (ui, vj) = (&case.u[i * k..(i + 1) * k], &case.v[j * k..(j + 1) * k]);
            let d = if case.tensor_cores {
                let (fu, fv) = (&tcu[i * k..(i + 1) * k], &tcv[j * k..(j + 1) * k]);
                tc_dot(case.precision, k, |t| fu[at(t, k)], |t| fv[at(t, k)])
            } else {
                let mut d = 0.0f32;
                for t in 0..k {
                    let c = at(t, k);
                    d = madd(r(ui[c]), r(vj[c]), d);
                }
                d
            };
            let d = scale(d);
            *sj = if j == pos && !case.correct_positive {
                d
            } else {
                d - case.log_q[j]
            };
        }
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = (0..n).map(|t| (s[at(t, n)] - m).exp()).sum();
        let lse = m + z.ln();
        let w = case.row_weight.as_ref().map_or(1.0, |w| w[i]);
        out.lse[i] = lse;
        out.row_loss[i] = lse - s[pos];
        out.top1[i] = s[pos] >= m;
        wl += w * out.row_loss[i];
        for t in 0..n {
            let j = at(t, n);
            let p = (s[j] - m).exp() / z;
            let g = scale(w / b as f32 * (p - if pos == j { 1.0 } else { 0.0 }));
            if case.tensor_cores {
                gm[i * n + j] = g;
                continue;
            }
            let (du, vj) = (
                &mut out.d_u[i * k..(i + 1) * k],
                &case.v[j * k..(j + 1) * k],
            );
            let g = r(g);
            du.iter_mut()
                .zip(vj)
                .for_each(|(d, &x)| *d = madd(g, r(x), *d));
            let (dv, ui) = (
                &mut out.d_v[j * k..(j + 1) * k],
                &case.u[i * k..(i + 1) * k],
            );
            dv.iter_mut()
                .zip(ui)
                .for_each(|(d, &x)| *d = madd(g, r(x), *d));
        }
    }
    if case.tensor_cores {
        // dU = G·V and dV = Gᵀ·U as two products on tensor cores.
        // (Each sum reads rows: G, Gᵀ, Vᵀ and Uᵀ are laid out for it.)
        let tr = |x: &[[f32; 2]], rows: usize, cols: usize| -> Vec<[f32; 2]> {
            (0..cols * rows)
                .map(|t| x[(t % rows) * cols + t / rows])
                .collect()
        };
        let g = tc_factors(case.precision, &gm);
        let (gt, vt, ut) = (tr(&g, b, n), tr(&tcv, n, k), tr(&tcu, b, k));
        for i in 0..b {
            let gi = &g[i * n..(i + 1) * n];
            for c in 0..k {
                let vc = &vt[c * n..(c + 1) * n];
                out.d_u[i * k + c] = tc_dot(case.precision, n, |t| gi[at(t, n)], |t| vc[at(t, n)]);
            }
        }
        for j in 0..n {
            let gj = &gt[j * b..(j + 1) * b];
            for c in 0..k {
                let uc = &ut[c * b..(c + 1) * b];
                out.d_v[j * k + c] = tc_dot(case.precision, b, |t| gj[at(t, b)], |t| uc[at(t, b)]);
            }
        }
    }
    out.loss = wl / b as f32;
    // ∂L/∂τ = −⟨U, dU⟩/τ, summed in f32 like the rest.
    let mut dot = 0.0f32;
    for x in 0..b * k {
        dot = madd(case.u[at(x, b * k)], out.d_u[at(x, b * k)], dot);
    }
    out.d_temperature = -scale(dot);
    out
}

/// Each factor as the tensor-core kernels feed it at `precision`: [big,
/// small] with big = x rounded to TF32 and small = x − big rounded to TF32
/// for F32 (3xTF32), [x rounded to the tier, 0] for TF32 and bf16.
pub fn tc_factors(precision: mixneg::Precision, x: &[f32]) -> Vec<[f32; 2]> {
    use mixneg::Precision::{F32, Tf32};
    x.iter()
        .map(|&x| {
            if precision == F32 {
                let big = round_to(Tf32, x);
                [big, round_to(Tf32, x - big)]
            } else {
                [round_to(precision, x), 0.0]
            }
        })
        .collect()
}

/// Σ_t a(t)·b(t) over t < len, the factors from [`tc_factors`], as the
/// tensor-core kernels compute it at `precision`: in steps of 8 terms (bf16:
/// 16), each step one mma that adds the step's exact products to the
/// accumulator as [`tc_sum`] does — F32 three such mma per step (small·big,
/// big·small, big·big: the small·small term is dropped), TF32 and bf16 one.
pub fn tc_dot(
    precision: mixneg::Precision,
    len: usize,
    a: impl Fn(usize) -> [f32; 2],
    b: impl Fn(usize) -> [f32; 2],
) -> f32 {
    let step = if precision == mixneg::Precision::Bf16 {
        16
    } else {
        8
    };
    let passes: &[(usize, usize)] = if precision == mixneg::Precision::F32 {
        &[(1, 0), (0, 1), (0, 0)]
    } else {
        &[(0, 0)]
    };
    let mut acc = 0.0f32;
    let mut terms = [0.0f64; 17];
    for start in (0..len).step_by(step) {
        let end = len.min(start + step);
        for &(pa, pb) in passes {
            terms[0] = acc as f64;
            for t in start..end {
                terms[1 + t - start] = a(t)[pa] as f64 * b(t)[pb] as f64;
            }
            acc = tc_sum(&terms[..1 + end - start]);
        }
    }
    acc
}

/// How a tensor core adds one mma's exact products to its accumulator (the
/// emulator's `emu_tc_sum`, tests/cuda_emu/emu.hpp): the terms aligned to
/// the largest one's exponent with 3 bits below f32's significand, the bits
/// shifted out dropped, the exact sum truncated toward zero to f32.
pub fn tc_sum(terms: &[f64]) -> f32 {
    let big = terms.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    if !big.is_finite() || big < f64::MIN_POSITIVE * 2f64.powi(60) {
        return terms.iter().sum::<f64>() as f32;
    }
    // big < 2^e; the terms are kept to multiples of q = 2^(e − 27).
    let e = ((big.to_bits() >> 52) & 0x7FF) as i32 - 1022;
    let q = f64::from_bits(((e - 27 + 1023) as u64) << 52);
    let inv_q = f64::from_bits(((27 - e + 1023) as u64) << 52);
    // Truncated as integers (|t|/q < 2^27, the sum of ≤ 17 < 2^32: exact).
    let sum = terms.iter().map(|t| (t * inv_q) as i64).sum::<i64>() as f64 * q;
    let f = sum as f32;
    if (f as f64).abs() > sum.abs() {
        f32::from_bits(f.to_bits() - 1)
    } else {
        f
    }
}

/// x rounded as `precision` rounds a product's factor: unchanged for F32;
/// for TF32 to 10 explicit mantissa bits, to nearest with ties away from
/// zero (`cvt.rna.tf32.f32`); for bf16 to 7, to nearest even
/// (`cvt.rn.bf16x2.f32`).
pub fn round_to(precision: mixneg::Precision, x: f32) -> f32 {
    match precision {
        mixneg::Precision::Tf32 if x.is_finite() => {
            f32::from_bits(x.to_bits().wrapping_add(0x1000) & 0xFFFF_E000)
        }
        mixneg::Precision::Bf16 if x.is_finite() => {
            let b = x.to_bits();
            f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
        }
        _ => x,
    }
}

/// Per-case magnitudes in f64 that the policy needs (see above).
#[derive(Debug, Clone, Copy)]
pub struct Mags {
    /// ‖|G|·|V|/τ‖₂ and ‖|G|ᵀ·|U|/τ‖₂: the size of the gradient sums' terms.
    pub du_abs: f64,
    pub dv_abs: f64,
    /// The expected (RMS) error of a plain f32 computation of the logits, in
    /// dU, dV and lse: each rounding in forming s_ij and its exp (the K
    /// partial sums of the dot product, the scaling by 1/τ, the subtraction
    /// of log_q, s − m, the exp) is modelled as independent and uniform
    /// within ±ε of its result (std ε|x|/√3), giving a logit error δ_ij of
    /// std σ_ij, which moves P_ij by P_ij·(δ_ij − Σ_l P_il·δ_il) (first
    /// order), hence dU_i by (w_i/Bτ)·Σ_j δP_ij·v_j, dV_j by
    /// Σ_i (w_i/Bτ)·δP_ij·u_i (the cross terms l ≠ j taken as independent),
    /// lse_i by Σ_j P_ij·δ_ij and ℓ_i by Σ_j (P_ij − δ_ij)·δ_ij.
    pub du_noise: f64,
    pub dv_noise: f64,
    pub lse_noise: f64,
    /// Likewise for ℓ_i = lse_i − s_ii (moved by Σ_j (P_ij − δ_ij)·δ_ij) and
    /// for L = Σ_i w_i ℓ_i / B.
    pub row_loss_noise: f64,
    pub loss_noise: f64,
    /// Likewise for ∂L/∂τ = −(1/τ)Σ_ij G_ij·d_ij (d_ij = ⟨u_i, v_j⟩/τ):
    /// moved by −(1/τ)Σ_i (w_i/B)Σ_l δP_il·d_il; and Σ_ij |G_ij·d_ij|/τ, the
    /// size of its terms.
    pub dtau_noise: f64,
    pub dtau_abs: f64,
}

/// [`Mags`] of a case, computed once.
pub fn magnitudes(case: &Case) -> Mags {
    *case.mags.get_or_init(|| compute_magnitudes(case))
}

fn compute_magnitudes(case: &Case) -> Mags {
    let (b, n, k) = (case.b(), case.n(), case.k);
    let tau = case.temperature as f64;
    let (mut du, mut dv) = (vec![0.0f64; b * k], vec![0.0f64; n * k]);
    let (mut du2, mut dv2) = (vec![0.0f64; b * k], vec![0.0f64; n * k]);
    let (mut lse2, mut rl2, mut l2) = (0.0f64, 0.0f64, 0.0f64);
    let (mut dtau2, mut dtau_abs) = (0.0f64, 0.0f64);
    for i in 0..b {
        let pos = i + case.positive_offset;
        let mut sigma = vec![0.0f64; n];
        let mut dots = vec![0.0f64; n];
        let s: Vec<f64> = (0..n)
            .map(|j| {
                if j != pos && case.ids.as_ref().is_some_and(|ids| ids[j] == ids[pos]) {
                    return f64::NEG_INFINITY;
                }
                // The dot product's partial sums: each is rounded once.
                let (mut d, mut p2) = (0.0f64, 0.0f64);
                for c in 0..k {
                    d += case.u[i * k + c] as f64 * case.v[j * k + c] as f64;
                    p2 += d * d;
                }
                let d = d / tau;
                dots[j] = d;
                let s = if j == pos && !case.correct_positive {
                    d
                } else {
                    d - case.log_q[j] as f64
                };
                sigma[j] = p2 / (tau * tau) + d * d + s * s;
                s
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        // Per logit, in logit units: every rounding (the partial sums, the
        // scaling by 1/τ, the subtraction of log_q, s − m, and the exp's own
        // relative error) is uniform within ±ε of its result: std ε/√3 each.
        for (sg, &x) in sigma.iter_mut().zip(&s) {
            *sg = if x.is_finite() {
                EPS * (*sg + (x - m).powi(2) + 1.0).sqrt() / 3f64.sqrt()
            } else {
                0.0
            };
        }
        let w = case.row_weight.as_ref().map_or(1.0, |w| w[i] as f64) / b as f64;
        let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
        // First order: δP_ij = P_ij (δ_ij − Σ_l P_il δ_il). With independent
        // δ of std σ: Var δdU_i = (w/Bτ)² Σ_l σ_l² P_l² (v_l − v̄)², v̄ = Σ_j P_j v_j;
        // Var δdV_j ≈ (w/Bτ)² u_i² P_j² (σ_j²(1 − P_j)² + Σ_{l≠j} σ_l² P_l²).
        let s2: f64 = p.iter().zip(&sigma).map(|(p, sg)| (p * sg).powi(2)).sum();
        let mut vbar = vec![0.0f64; k];
        for (pj, vj) in p.iter().zip(case.v.chunks_exact(k)) {
            vbar.iter_mut()
                .zip(vj)
                .for_each(|(a, &x)| *a += pj * x as f64);
        }
        let wt2 = (w / tau).powi(2);
        let dbar: f64 = p
            .iter()
            .zip(&dots)
            .filter(|(p, _)| **p > 0.0)
            .map(|(p, d)| p * d)
            .sum();
        let mut row2 = 0.0f64;
        for j in 0..n {
            let (pj, sj) = (p[j], sigma[j]);
            lse2 += (pj * sj).powi(2);
            row2 += ((pj - if pos == j { 1.0 } else { 0.0 }) * sj).powi(2);
            let g = w * if pos == j { 1.0 - pj } else { pj } / tau;
            let own = (pj * sj).powi(2);
            let dvn = wt2 * pj * pj * ((sj * (1.0 - pj)).powi(2) + (s2 - own).max(0.0));
            if pj > 0.0 || pos == j {
                dtau2 += wt2 * own * (dots[j] - dbar).powi(2);
                dtau_abs += g.abs() * dots[j].abs();
            }
            for c in 0..k {
                let (vj, ui) = (case.v[j * k + c] as f64, case.u[i * k + c] as f64);
                du[i * k + c] += g * vj.abs();
                dv[j * k + c] += g * ui.abs();
                du2[i * k + c] += wt2 * own * (vj - vbar[c]).powi(2);
                dv2[j * k + c] += dvn * ui * ui;
            }
        }
        rl2 += row2;
        l2 += w * w * row2;
    }
    let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
    let root = |x: &[f64]| x.iter().sum::<f64>().sqrt();
    Mags {
        du_abs: norm(&du),
        dv_abs: norm(&dv),
        du_noise: root(&du2),
        dv_noise: root(&dv2),
        lse_noise: lse2.sqrt(),
        row_loss_noise: rl2.sqrt(),
        loss_noise: l2.sqrt(),
        dtau_noise: dtau2.sqrt() / tau,
        dtau_abs: dtau_abs / tau,
    }
}

/// The absolute underflow floor per element (see the policy above).
pub fn underflow_floor(case: &Case) -> f64 {
    let norm = |x: &[f32]| {
        x.chunks(case.k)
            .map(|r| r.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt())
            .fold(0.0, f64::max)
    };
    let w_max = case
        .row_weight
        .as_ref()
        .map_or(1.0, |w| w.iter().fold(0.0f64, |m, &x| m.max(x as f64)));
    1e-30 * w_max / (case.b() as f64 * case.temperature as f64) * norm(&case.u).max(norm(&case.v))
}

/// ‖x − ref‖₂ / ‖ref‖₂ (absolute ‖x − ref‖₂ when ref is 0).
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    if den > 0.0 { num / den } else { num }
}

/// ‖x − ref‖₂ in f64.
pub fn l2_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// The policy's bound on ‖x − ref‖₂ for tensor `what` of `case` (see above),
/// with the naive baseline's error and the relative scale D it is measured
/// against.
pub fn tensor_bound(what: &str, case: &Case, want: &[f64]) -> (f64, f64, f64) {
    fn base<'a>(nv: &'a MnsOutput, what: &str) -> &'a [f32] {
        match what {
            "d_u" => &nv.d_u,
            "d_v" => &nv.d_v,
            "lse" => &nv.lse,
            "row_loss" => &nv.row_loss,
            _ => panic!("no naive baseline for {what}"),
        }
    }
    let m = magnitudes(case);
    let noise = match what {
        "d_u" => m.du_noise,
        "d_v" => m.dv_noise,
        "lse" => m.lse_noise,
        "row_loss" => m.row_loss_noise,
        _ => 0.0,
    };
    let naive_err = naive(case)
        .iter()
        .map(|nv| l2_err(base(nv, what), want))
        .fold(noise, f64::max);
    let mut den = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    if what == "lse" || what == "row_loss" {
        den = den.max(case.logit_scale() * (want.len() as f64).sqrt());
    }
    match what {
        "d_u" => den = den.max(m.du_abs),
        "d_v" => den = den.max(m.dv_abs),
        _ => {}
    }
    let floor = underflow_floor(case) * (want.len() as f64).sqrt();
    (
        FACTOR * naive_err + FLOOR * EPS * den + floor,
        naive_err,
        den,
    )
}

/// Assert one tensor (`d_u`, `d_v`, `lse` or `row_loss`) against its f64
/// reference under the policy; on failure print the errors and the first
/// five offending elements.
pub fn assert_tensor(what: &str, case: &Case, got: &[f32], want: &[f64], cols: usize) {
    assert_eq!(got.len(), want.len(), "{}: {what} length", case.name);
    let nan = got.iter().filter(|x| !x.is_finite()).count();
    let num = l2_err(got, want);
    let (bound, naive_err, den) = tensor_bound(what, case, want);
    if nan > 0 || num.is_nan() || num > bound {
        let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        let bad: Vec<String> = got
            .iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (g, w))| !g.is_finite() || (**g as f64 - **w).abs() > 1e-6 * scale)
            .take(5)
            .map(|(i, (g, w))| {
                format!(
                    "({}, {}): got {g}, want {w}",
                    i / cols.max(1),
                    i % cols.max(1)
                )
            })
            .collect();
        panic!(
            "{}: {what} error {:.3e} (relative to D) > bound {:.3e} = {FACTOR}·naive f32 {:.3e} + {FLOOR}ε; {nan} non-finite; first offenders {bad:?}",
            case.name,
            num / den.max(f64::MIN_POSITIVE),
            bound / den.max(f64::MIN_POSITIVE),
            naive_err / den.max(f64::MIN_POSITIVE),
        );
    }
}

/// The loss against its f64 reference under the policy.
pub fn assert_loss(case: &Case, got: f32, want: f64) {
    let naive_err = naive(case)
        .iter()
        .map(|nv| (nv.loss as f64 - want).abs())
        .fold(magnitudes(case).loss_noise, f64::max);
    let tol = FACTOR * naive_err + FLOOR * EPS * want.abs().max(1.0);
    assert!(
        (got as f64 - want).abs() <= tol,
        "{}: loss {got} vs {want}: |diff| {:.3e} > {tol:.3e} ({FACTOR}·naive f32 {naive_err:.3e} + {FLOOR}ε)",
        case.name,
        (got as f64 - want).abs()
    );
}

/// ∂L/∂τ against −⟨U, dU_ref⟩/τ in f64 (an identity, so it holds for the
/// PyTorch vectors' dU too). The kernels form it from their own dU, summed in
/// f64, so its error is −⟨U, δdU⟩/τ: at most ‖U‖_F·(the policy's bound on
/// ‖δdU‖)/τ by Cauchy–Schwarz, plus its own rounding to f32 (ε/2·|∂L/∂τ|).
/// Where the naive f32 baseline's own error is larger (it sums in f32), the
/// policy's rule for a scalar applies instead.
pub fn assert_d_temperature(case: &Case, got: f32, d_u: &[f64]) {
    let tau = case.temperature as f64;
    let want = -case
        .u
        .iter()
        .zip(d_u)
        .map(|(&a, &g)| a as f64 * g)
        .sum::<f64>()
        / tau;
    let m = magnitudes(case);
    let naive_err = naive(case)
        .iter()
        .map(|nv| (nv.d_temperature as f64 - want).abs())
        .fold(m.dtau_noise, f64::max);
    let u_norm = case
        .u
        .iter()
        .map(|&x| (x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let from_du = u_norm * tensor_bound("d_u", case, d_u).0 / tau + EPS * want.abs();
    let floor = underflow_floor(case) * (case.u.len() as f64).sqrt() * case.logit_scale();
    let tol = (FACTOR * naive_err + FLOOR * EPS * m.dtau_abs.max(want.abs())).max(from_du) + floor;
    assert!(
        got.is_finite() && (got as f64 - want).abs() <= tol,
        "{}: d_temperature {got} vs {want}: |diff| {:.3e} > {tol:.3e} (from the dU bound {from_du:.3e}; {FACTOR}·naive f32 {naive_err:.3e} + {FLOOR}ε·{:.3e})",
        case.name,
        (got as f64 - want).abs(),
        m.dtau_abs
    );
}

/// L against the weighted mean `mean` of the same call's (f32) row losses:
/// L is summed in f64 and rounded once, the mean sums the rounded ℓ_i, so
/// they differ by at most ε·(|L| + Σ w_i|ℓ_i|/B) (+ the mean's own f64 sum),
/// or, where L or the ℓ_i are subnormal in f32, by the subnormal spacing
/// 2⁻¹⁴⁹ for each rounding: (1 + max w)·2⁻¹⁴⁹.
pub fn assert_loss_consistent(case: &Case, got: f32, row_loss: &[f32]) {
    let w = |i: usize| case.row_weight.as_ref().map_or(1.0, |w| w[i] as f64);
    let b = row_loss.len() as f64;
    let mean: f64 = row_loss
        .iter()
        .enumerate()
        .map(|(i, &l)| w(i) * l as f64)
        .sum::<f64>()
        / b;
    let abs: f64 = row_loss
        .iter()
        .enumerate()
        .map(|(i, &l)| w(i) * (l as f64).abs())
        .sum::<f64>()
        / b;
    let w_max = (0..row_loss.len()).map(w).fold(0.0f64, f64::max);
    let tiny = f32::from_bits(1) as f64;
    let tol = 2.0 * EPS * ((got as f64).abs() + abs) + (1.0 + w_max) * tiny;
    assert!(
        (got as f64 - mean).abs() <= tol,
        "{}: loss {got} vs the mean of its row losses {mean}: |diff| {:.3e} > {tol:.3e}",
        case.name,
        (got as f64 - mean).abs()
    );
}

/// Compare every output of a backend with f64 expectations.
pub fn assert_output(
    case: &Case,
    out: &MnsOutput,
    loss: f64,
    d_u: &[f64],
    d_v: &[f64],
    lse: &[f64],
) {
    assert_loss(case, out.loss, loss);
    assert_d_temperature(case, out.d_temperature, d_u);
    assert_tensor("d_u", case, &out.d_u, d_u, case.k);
    assert_tensor("d_v", case, &out.d_v, d_v, case.k);
    assert_tensor("lse", case, &out.lse, lse, 1);
}

/// Asserts that `out`'s gradients lie *outside* the policy's bounds for
/// `judge` (the case at a stricter tier than `out` was computed at): the
/// policy sees the lower tier's rounding instead of being blind to it.
pub fn assert_fails_policy(label: &str, judge: &Case, out: &MnsOutput, want: &MnsOutput<f64>) {
    for (what, got, exp) in [("d_u", &out.d_u, &want.d_u), ("d_v", &out.d_v, &want.d_v)] {
        let (bound, _, _) = tensor_bound(what, judge, exp);
        let err = l2_err(got, exp);
        assert!(
            err > bound,
            "{label} {what} error {err:.3e} within the {:?} bound {bound:.3e}",
            judge.precision
        );
    }
}

/// Asserts that the top-1 flags agree with `want`'s on all rows but at most
/// one (a near-tie may flip one).
pub fn assert_top1_agrees(ctx: &Case, got: &[bool], want: &[bool], with: &str) {
    let agree = got.iter().zip(want).filter(|(a, b)| a == b).count();
    assert!(
        agree + 1 >= ctx.b(),
        "{}: top1 agrees with {with} on {agree}/{}",
        ctx.name,
        ctx.b()
    );
}

/// Report a skipped test where it cannot be missed: libtest captures a
/// test's `eprintln!` (and shows it only on failure), so the line is written
/// to the process's stderr handle directly, which capture does not see.
pub fn skip(why: &str) {
    use std::io::Write;
    // libtest captures only the print!/eprint! macros. Writing through fd 2
    // as it is works for a pipe, a terminal and a redirected file alike;
    // reopening /dev/stderr for appending (the first version) lost the line
    // whenever stderr was a file opened without O_APPEND, as in `> log 2>&1`:
    // the harness's own writes then overwrote it.
    let _ = std::io::stderr().write_all(format!("skipping: {why}\n").as_bytes());
}

/// `Command::output` that asserts the command succeeded, with its stderr
/// in the failure message.
pub trait OutputOk {
    /// Runs the command and asserts that it succeeded.
    fn output_ok(&mut self) -> std::process::Output;
    /// Runs the command, asserts that it succeeded, returns its stdout.
    fn stdout_ok(&mut self) -> String {
        String::from_utf8_lossy(&self.output_ok().stdout).into_owned()
    }
    /// Runs the command, asserts that it failed with a message, returns its
    /// stderr.
    fn stderr_failed(&mut self) -> String;
}

impl OutputOk for std::process::Command {
    fn output_ok(&mut self) -> std::process::Output {
        let out = self.output().unwrap();
        assert!(
            out.status.success(),
            "{:?}: {}",
            self,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn stderr_failed(&mut self) -> String {
        let out = self.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{self:?} succeeded: {err}");
        assert!(!err.is_empty(), "{self:?} failed without a message");
        err
    }
}
