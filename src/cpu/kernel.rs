//! What the phases share: the blocking constants, a column [`Part`] with its
//! scratch, and the macro that turns a run-time row count into a const.
//!
//! A call of the CPU backend is a pipeline (see `mod.rs`), each step in its
//! own file and named after the CUDA kernel of `kernels/mns.cu` that does the
//! same job:
//!
//! | step | file | CUDA |
//! |---|---|---|
//! | plan: strides, row-block height, column parts | `plan.rs` | `cuda::Plan` |
//! | pack: U, V, log Q in the micro-kernels' layouts | `pack.rs` | shared-memory staging |
//! | phase A: logit strip, hits, exp, per-part (max, sum) | `phase_a.rs` | `mns_fwd_f32` |
//! | row merge: lse, ℓ, top-1, row coefficients | `rows.rs` | `mns_rows_f32` |
//! | phase B: dU share, own dV rows | `phase_b.rs` | `mns_du_f32`, `mns_dv_f32` |
//! | combine: dU rows, diagonal terms, loss | `rows.rs` | `mns_du_f32`'s diagonal, `mns_loss_f32` |
//!
//! Phases A and B run over the parts in parallel (one part per task); the
//! merge and the combine run between them, over chunks of the block's
//! rows in parallel, each row in part order (`steps.rs` runs the tasks).
//! Every sum runs in a fixed order, independent of which thread runs which
//! part: results are bit-for-bit reproducible.

use super::plan::Plan;
use super::scratch::Aligned;

/// Row blocks are multiples of this many queries: every instruction set's
/// micro-kernel height `Simd::ROWS` (6 or 12) divides it.
pub(crate) const MR: usize = 12;
/// Width of one Vᵀ panel and alignment of the column parts: 16 candidates
/// (two AVX2 vectors, one AVX-512 vector).
pub(crate) const NR: usize = 16;
/// Columns of the strip per dU cache block: V rows JC×K_pad stay in L2.
pub(crate) const JC: usize = 256;

/// One column part of the current row block, with its scratch. Parts are
/// created once per call and reused for every row block.
pub(crate) struct Part<'a> {
    /// First column (a multiple of [`NR`]).
    pub j0: usize,
    /// One past the last real column (≤ N).
    pub j1: usize,
    /// Width of the part's strip rows: j1 − j0 rounded up to [`NR`].
    pub w: usize,
    /// Row stride of the strip: w, or w + 16 so that stride/64 bytes is odd —
    /// a stride of a multiple of 4 KiB maps every row of a column to the same
    /// L1 set, and the dV kernel reads the strip down its columns.
    pub ld: usize,
    /// The strip, mb × ld.
    pub strip: Aligned,
    /// Unscaled dU share of the block, mb × kp.
    pub du: Aligned,
    /// c_p,i·U_i of the block, mb × kp.
    pub us: Aligned,
    /// Per row: m_p, the part's max (−∞ if all its columns are removed).
    pub max: Vec<f32>,
    /// Per row: Σ_p, the part's sum of exp(s − m_p) (0 if all removed).
    pub sum: Vec<f32>,
    /// Per row: s_ii when column i is in this part.
    pub diag: Vec<Option<f32>>,
    /// Per row: c_p,i, set by the caller between the phases.
    pub coef: Vec<f32>,
    /// The bf16 tier's rounded strips and c·U (`bf16.rs`); empty on F32.
    pub bf: Aligned,
    /// Rows j0..j1 of the dV accumulator (stride kp), owned by this part.
    pub dv: &'a mut [f32],
}

impl<'a> Part<'a> {
    /// The parts of `plan`, each with its rows of the dV accumulator `dv`
    /// (N × kp, split at the part boundaries; or empty, for a forward-only
    /// call) and scratch recycled from
    /// `old` (one `[strip, du, us, bf]` per part of an earlier call);
    /// `bf_len(w)`: the length of the bf16 buffer of a part of width w.
    pub fn for_plan(
        plan: &Plan,
        n: usize,
        dv: &'a mut [f32],
        old: Vec<[Aligned; 4]>,
        bf_len: impl Fn(usize) -> usize,
    ) -> Vec<Part<'a>> {
        let (kp, mb) = (plan.kp, plan.mb);
        let mut old = old.into_iter();
        let mut parts = Vec::with_capacity(plan.bounds.len() - 1);
        let mut rest = dv;
        for w in plan.bounds.windows(2) {
            let (j0, j1) = (w[0], w[1].min(n));
            let wd = w[1] - w[0];
            let ld = Plan::strip_stride(wd);
            // An empty accumulator (a forward-only call): no part owns dV rows.
            let rows = if rest.is_empty() { 0 } else { (j1 - j0) * kp };
            let (mine, tail) = rest.split_at_mut(rows);
            rest = tail;
            let [strip, du, us, bf] = old.next().unwrap_or_default();
            parts.push(Part {
                j0,
                j1,
                w: wd,
                ld,
                strip: strip.recycle(mb * ld),
                du: du.recycle(mb * kp),
                us: us.recycle(mb * kp),
                bf: bf.recycle(bf_len(wd)),
                max: vec![0.0; mb],
                sum: vec![0.0; mb],
                diag: vec![None; mb],
                coef: vec![0.0; mb],
                dv: mine,
            });
        }
        parts
    }

    /// The part's large buffers, to be kept for the next call.
    pub fn into_scratch(self) -> [Aligned; 4] {
        [self.strip, self.du, self.us, self.bf]
    }
}

/// Runs `$body` with the const `$r` set to the run-time row count `$rows`
/// (1..=12), so that the micro-kernels' accumulator arrays have a fixed size.
macro_rules! with_rows {
    ($rows:expr, $r:ident => $body:expr) => {
        match $rows {
            12 => {
                const $r: usize = 12;
                $body
            }
            11 => {
                const $r: usize = 11;
                $body
            }
            10 => {
                const $r: usize = 10;
                $body
            }
            9 => {
                const $r: usize = 9;
                $body
            }
            8 => {
                const $r: usize = 8;
                $body
            }
            7 => {
                const $r: usize = 7;
                $body
            }
            6 => {
                const $r: usize = 6;
                $body
            }
            5 => {
                const $r: usize = 5;
                $body
            }
            4 => {
                const $r: usize = 4;
                $body
            }
            3 => {
                const $r: usize = 3;
                $body
            }
            2 => {
                const $r: usize = 2;
                $body
            }
            _ => {
                const $r: usize = 1;
                $body
            }
        }
    };
}
pub(crate) use with_rows;
