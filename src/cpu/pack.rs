//! Step 2 of a call, **pack**: the copies of U, V and log Q in the layouts
//! the micro-kernels stream, each documented where it is built, and
//! [`Shared`], the read-only view of them that every worker gets.
//!
//! The CUDA kernels read U and V as given and stage tiles in shared memory;
//! on the CPU the equivalent staging is done once per call, here, so that
//! each micro-kernel's loads are contiguous 64-byte lines.

use super::kernel::NR;
use super::plan::Plan;
use super::scratch::{Aligned, Scratch};
use crate::input::{Elem, with_slice};
use crate::{Floats, Problem};
use rayon::prelude::*;
use std::sync::RwLock;

/// Read-only data shared by all workers: packed, padded copies of the inputs.
#[derive(Clone, Copy)]
pub(crate) struct Shared<'a> {
    /// B.
    pub b: usize,
    /// N.
    pub n: usize,
    /// N rounded up to a multiple of [`NR`].
    pub np: usize,
    /// K.
    pub k: usize,
    /// K rounded up to a multiple of the vector width; the packed rows' stride.
    pub kp: usize,
    /// 1/τ.
    pub inv_tau: f32,
    /// U, B × kp (see [`Packed::up`]; U as given when kp = K).
    pub up: &'a [f32],
    /// The current row block's rows of U in interleaved groups (see
    /// [`UGroups`]); set per block.
    pub ug: &'a [f32],
    /// V in column tiles (see [`Packed::vp`]), or, when kp = K, V as given
    /// (rows of kp: column c of row j at vp\[j·kp + c\]).
    pub vp: &'a [f32],
    /// V as given, N×K (for the uncorrected diagonal).
    pub v: Floats<'a>,
    /// Vᵀ in panels (see [`Packed::vt`]).
    pub vt: &'a [f32],
    /// −log Q padded (see [`Packed::nlq`]).
    pub nlq: &'a [f32],
    /// How the tier rounds a product's factor (the identity for F32).
    pub round: fn(f32) -> f32,
    /// Subtract log_q on the diagonal too.
    pub correct_positive: bool,
    /// o: row i's positive is column i + o.
    pub offset: usize,
    /// Accidental-hit groups (see `Problem::hit_groups`).
    pub hits: Option<(&'a [usize], &'a [Vec<usize>])>,
}

/// The packed copies of one call (buffers taken from, and given back to, the
/// backend's [`Scratch`]).
pub(crate) struct Packed {
    /// U row-major with rows padded to kp: u\[i\]\[c\] at up\[i·kp + c\], zero
    /// for c ≥ K; empty when kp = K ([`Shared::up`] is then U as given).
    /// Phase B scales its rows into c·U.
    pub up: Aligned,
    /// V for the dU kernel, in column tiles of 16 (the last of 8 when
    /// kp % 16 = 8): the columns c..c+w of every row j at vp\[n·c + j·w ..\]\[..w\],
    /// zero-padded in K. The dU kernel's j loop then streams one contiguous
    /// 64-byte line per j (row-major V, read with no prefetching, stalled
    /// on the loads at large N). Empty when kp = K: the kernel then
    /// reads V as given, each block's rows asked into L2 while the previous
    /// block computes, which measured as fast as these tiles (AMD EPYC Zen
    /// 5, 2 threads, ABBA rounds at (4096, 4096, 64 and 128) and (16384,
    /// 16384, 64), same bits) and ~5% slower at (65536, 262144, 128)
    /// (BENCHMARKS.md § Scale), and saves N·K floats.
    pub vp: Aligned,
    /// Vᵀ in np/16 panels of kp × 16: panel p, row c, lane l holds
    /// V\[16p + l\]\[c\], zero past N and K. A logit tile's two vector loads per
    /// step of K come from one or two panels.
    pub vt: Aligned,
    /// −log_q\[j\] for j < N and −∞ for the padding columns, which therefore
    /// drop out of every max and sum.
    pub nlq: Vec<f32>,
}

impl Packed {
    /// Packs `p` (all but U's groups: [`UGroups`]), in buffers recycled
    /// from `scratch` (taken out of it). With `only_up` (the bf16 tier,
    /// which packs its own copies) only `up` and `nlq` are built.
    pub fn new(p: &Problem<'_>, plan: &Plan, scratch: &mut Scratch, only_up: bool) -> Packed {
        let (b, n, k, kp, np) = (p.b, p.n, p.k, plan.kp, plan.np);
        // U itself serves as `up` when it is f32 and its rows need no
        // padding (kp = K).
        let mut up = Aligned::default();
        if kp != k || p.u.as_f32().is_none() {
            up = std::mem::take(&mut scratch.up).recycle(b * kp);
            pad_rows(p.u, k, &mut up, kp);
        }
        let mut nlq = vec![f32::NEG_INFINITY; np];
        nlq.iter_mut().zip(p.log_q).for_each(|(d, &q)| *d = -q);
        if only_up {
            // The bf16 tier's copies take the scratch's other buffers.
            return Packed {
                up,
                vp: Aligned::default(),
                vt: Aligned::default(),
                nlq,
            };
        }

        // The F32 tier's copies, from f32 embeddings (the backend converts
        // bf16 ones for this tier).
        let v = p.v.as_f32().expect("the F32 tier packs f32 embeddings");
        // When V's rows need no padding (kp = K), the dU kernel reads V as
        // given (see `Shared::vp`): one N×K copy fewer.
        let v_in_place = kp == k;
        let mut vp = Aligned::default();
        if !v_in_place {
            vp = std::mem::take(&mut scratch.vp).recycle(n * kp);
        }
        // kp is a multiple of the kernel's lanes, 8 or 16.
        let mut c0 = 0;
        while c0 < kp && !v_in_place {
            let w = if kp - c0 >= 16 { 16 } else { 8 };
            vp[n * c0..n * (c0 + w)]
                .par_chunks_mut(w * 256)
                .enumerate()
                .for_each(|(blk, dst)| {
                    for (jj, row) in dst.chunks_exact_mut(w).enumerate() {
                        let j = blk * 256 + jj;
                        for (c, x) in row.iter_mut().enumerate() {
                            if c0 + c < k {
                                *x = v[j * k + c0 + c];
                            }
                        }
                    }
                });
            c0 += w;
        }

        let mut vt = std::mem::take(&mut scratch.vt).recycle(np * kp);
        vt.par_chunks_mut(kp * NR)
            .enumerate()
            .for_each(|(panel, dst)| {
                for (c, lanes) in dst.chunks_exact_mut(NR).enumerate().take(k) {
                    for (l, x) in lanes.iter_mut().enumerate() {
                        let j = panel * NR + l;
                        if j < n {
                            *x = v[j * k + c];
                        }
                    }
                }
            });

        Packed { up, vp, vt, nlq }
    }

    /// The workers' view of these copies and of `p`.
    pub fn shared<'a>(
        &'a self,
        p: &Problem<'a>,
        plan: &Plan,
        hits: &'a Option<(Vec<usize>, Vec<Vec<usize>>)>,
        round: fn(f32) -> f32,
    ) -> Shared<'a> {
        Shared {
            b: p.b,
            n: p.n,
            np: plan.np,
            k: p.k,
            kp: plan.kp,
            inv_tau: 1.0 / p.temperature,
            up: match p.u {
                Floats::F32(u) if self.up.is_empty() => u,
                _ => &self.up,
            },
            ug: &[],
            vp: match p.v {
                Floats::F32(v) if plan.kp == p.k => v,
                _ => &self.vp,
            },
            v: p.v,
            vt: &self.vt,
            nlq: &self.nlq,
            round,
            correct_positive: p.correct_positive,
            offset: p.positive_offset,
            hits: hits.as_ref().map(|(r, g)| (r.as_slice(), g.as_slice())),
        }
    }

    /// Gives the buffers back to `scratch` for the next call (before the
    /// bf16 tier's, which replace the empty ones of an `only_up` pack).
    pub fn recycle_into(self, scratch: &mut Scratch) {
        (scratch.up, scratch.vp, scratch.vt) = (self.up, self.vp, self.vt);
    }
}

/// U for the logit kernel, one row block at a time: the block's rows in
/// groups of ROWS (the micro-kernel height) interleaved — the block's row
/// g·ROWS + rr, column c at ug\[(g·kp + c)·ROWS + rr\], zero past B and
/// K — so that a micro-kernel's broadcasts at one step of K are adjacent
/// floats at fixed offsets from one pointer. Each block's groups are
/// packed (mb·K floats, by one task) during the step before its phase A,
/// rather than for all of U at once: B·K floats of memory fewer.
/// Consecutive blocks alternate between two halves of the buffer, so that
/// block t + 1's groups are packed while block t's are read; with one half
/// and the packing between the phases the call had taken 4–9% longer at
/// (4096, 4096, 64) (AMD EPYC Zen 5, 2 threads, ABBA rounds; the cause was
/// not found), with two it was as fast as packing all of U.
pub(crate) struct UGroups {
    buf: Aligned,
}

impl UGroups {
    /// A buffer for two blocks of up to `mb` rows of `plan`, for a kernel
    /// of micro-kernel height `rows`, recycled from `scratch`.
    pub fn new(plan: &Plan, rows: usize, scratch: &mut Scratch) -> UGroups {
        let len = plan.mb.next_multiple_of(rows) * plan.kp;
        let buf = std::mem::take(&mut scratch.ug).recycle(2 * len);
        UGroups { buf }
    }

    /// The two halves, block t's groups in half t mod 2, each locked for
    /// the tasks that read or pack it.
    pub fn halves(&mut self) -> [RwLock<&mut [f32]>; 2] {
        let half = self.buf.len() / 2;
        let (a, b) = self.buf.split_at_mut(half);
        [RwLock::new(a), RwLock::new(b)]
    }

    /// Packs rows i0..i0+r of `u` (f32, B×K) into `dst` (one half), in
    /// groups of `rows`.
    pub fn pack(dst: &mut [f32], rows: usize, u: &[f32], k: usize, kp: usize, i0: usize, r: usize) {
        let groups = r.div_ceil(rows);
        for (g, dst) in dst[..groups * rows * kp]
            .chunks_exact_mut(kp * rows)
            .enumerate()
        {
            let n = rows.min(r - g * rows);
            if n < rows || k < kp {
                dst.fill(0.0);
            }
            let src = &u[(i0 + g * rows) * k..(i0 + g * rows + n) * k];
            // Written in order, read from the group's n rows.
            for (c, d) in dst.chunks_exact_mut(rows).take(k).enumerate() {
                for (rr, x) in d[..n].iter_mut().enumerate() {
                    *x = src[rr * k + c];
                }
            }
        }
    }

    /// Gives the buffer back to `scratch` for the next call.
    pub fn recycle_into(self, scratch: &mut Scratch) {
        scratch.ug = self.buf;
    }
}

/// Copies `src` (rows of `k`) into `dst` (rows of `kp`, already zeroed),
/// as f32.
fn pad_rows(src: Floats<'_>, k: usize, dst: &mut [f32], kp: usize) {
    fn pad<T: Elem>(src: &[T], k: usize, dst: &mut [f32], kp: usize) {
        dst.par_chunks_mut(kp * 256)
            .zip(src.par_chunks(k * 256))
            .for_each(|(d, s)| {
                d.chunks_exact_mut(kp)
                    .zip(s.chunks_exact(k))
                    .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, x)| *d = x.value()))
            });
    }
    with_slice!(src, s => pad(s, k, dst, kp))
}
