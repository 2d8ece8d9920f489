//! The fused CPU backend: packing, blocking, rayon, kernel dispatch.
//!
//! Rows of U are split into contiguous *chunks*, a few per worker thread;
//! rayon hands chunks to idle workers (so a slower core — common on shared
//! machines — takes fewer), and each chunk runs the fused kernel of
//! `kernel.rs` over its rows in row blocks, writing its own rows of dU, lse
//! and the per-row losses, and accumulating dV into its own N×K buffer. The
//! chunk buffers are summed in chunk order at the end. Chunk boundaries
//! depend only on (B, N, K, thread count) and every sum has a fixed order,
//! so results are bit-for-bit reproducible for a fixed thread count, whatever
//! the scheduling.
//!
//! Memory beyond the inputs and outputs: packed copies of U and V (two of V:
//! column-tiled and panel-transposed), one logit strip of `mb × N` floats per
//! running chunk with `mb` chosen so that a strip stays within
//! [`STRIP_BUDGET_BYTES`] (never fewer than 6 rows), and one N×K dV
//! accumulator per chunk: up to 4 per thread while they fit in
//! [`DV_BUDGET_BYTES`], never fewer than one per thread. Nothing is
//! proportional to B·N.

mod kernel;
mod portable;
mod simd;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::{Backend, MnsError, MnsInput, MnsOutput, Problem};
use kernel::{Chunk, MR, NR, Shared};
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest logit strip per worker, in bytes. With large N the row block
/// shrinks (to no fewer than 6 rows) so that the strip fits.
pub const STRIP_BUDGET_BYTES: usize = 16 << 20;
/// Memory for the chunks' dV accumulators: more chunks than threads balance
/// the load, at N×K floats each.
pub const DV_BUDGET_BYTES: usize = 64 << 20;
/// Preferred rows per block, a multiple of the 6-row micro-kernel. Measured
/// at (4096, 4096, 64): 24 and 48 rows 86–88 GFLOP/s, 96 82, 144 76 (noisy
/// machine, ±5%); 48 keeps the strip of N ≤ 8192 inside a 2 MiB L2.
const MB_MAX: usize = 48;

/// Environment variable that forces a CPU kernel in [`CpuBackend::from_env`]:
/// `portable`, `avx2_fma` or `auto`.
pub const KERNEL_ENV: &str = "MIXNEG_CPU_KERNEL";

/// The SIMD instruction set a [`CpuBackend`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `wide::f32x8`: correct on every target, instructions fixed at build time.
    Portable,
    /// Hand-written AVX2 + FMA (`std::arch`), selected at run time.
    Avx2Fma,
}

static CALLS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

impl Kernel {
    /// Every kernel, in order of preference (best last).
    pub const ALL: [Kernel; 2] = [Kernel::Portable, Kernel::Avx2Fma];

    /// The kernel's name as used by [`KERNEL_ENV`], the CLI and the benches.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2Fma => "avx2_fma",
        }
    }

    /// Parse a name as printed by [`Kernel::name`].
    pub fn from_name(name: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether this CPU can run the kernel (detected once, then cached by std).
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma => false,
        }
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            Kernel::ALL
                .into_iter()
                .rev()
                .find(|k| k.is_available())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// How many row chunks this kernel has processed in this process — lets
    /// tests prove that a forced kernel really ran.
    pub fn chunks_run(self) -> u64 {
        CALLS[self as usize].load(Ordering::Relaxed)
    }
}

/// The fused CPU backend (DESIGN.md §4). Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    kernel: Kernel,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The best kernel of this CPU, on rayon's global thread pool.
    pub fn new() -> Self {
        Self {
            kernel: Kernel::best(),
            pool: None,
        }
    }

    /// Force a kernel; an error if this CPU cannot run it.
    pub fn with_kernel(kernel: Kernel) -> Result<Self, MnsError> {
        if !kernel.is_available() {
            return Err(MnsError::KernelUnavailable(kernel.name().into()));
        }
        Ok(Self { kernel, pool: None })
    }

    /// The kernel named by `MIXNEG_CPU_KERNEL` (`portable`, `avx2_fma`,
    /// `auto` or unset for the best one); an error for an unknown or
    /// unavailable name.
    pub fn from_env() -> Result<Self, MnsError> {
        match std::env::var(KERNEL_ENV) {
            Ok(name) if name != "auto" && !name.is_empty() => {
                let k = Kernel::from_name(&name).ok_or(MnsError::KernelUnavailable(name))?;
                Self::with_kernel(k)
            }
            _ => Ok(Self::new()),
        }
    }

    /// Run on a private pool of `threads` workers instead of the global pool.
    pub fn with_threads(mut self, threads: usize) -> Result<Self, MnsError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| MnsError::KernelUnavailable(format!("thread pool of {threads}: {e}")))?;
        self.pool = Some(Arc::new(pool));
        Ok(self)
    }

    /// The kernel this backend runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Worker threads used per call.
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    fn in_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    fn compute(&self, p: &Problem<'_>, out: &mut MnsOutput) {
        let (b, n, k) = (p.b, p.n, p.k);
        let kp = k.next_multiple_of(8);
        let np = n.next_multiple_of(NR);
        let ld = if (np / NR).is_multiple_of(2) {
            np + NR
        } else {
            np
        };

        let mut up = vec![0.0f32; b * kp];
        let mut vp = vec![0.0f32; n * kp];
        let mut vt = vec![0.0f32; np * kp];
        pad_rows(p.u, k, &mut up, kp);
        // Column tiles of 16 (the last of 8 when kp % 16 == 8), rows contiguous.
        let mut c0 = 0;
        while c0 < kp {
            let w = if kp - c0 >= 16 { 16 } else { 8 };
            vp[n * c0..n * (c0 + w)]
                .par_chunks_mut(w * 256)
                .enumerate()
                .for_each(|(blk, dst)| {
                    for (jj, row) in dst.chunks_exact_mut(w).enumerate() {
                        let j = blk * 256 + jj;
                        for (c, x) in row.iter_mut().enumerate() {
                            if c0 + c < k {
                                *x = p.v[j * k + c0 + c];
                            }
                        }
                    }
                });
            c0 += w;
        }
        vt.par_chunks_mut(kp * NR)
            .enumerate()
            .for_each(|(panel, dst)| {
                for (c, lanes) in dst.chunks_exact_mut(NR).enumerate().take(k) {
                    for (l, x) in lanes.iter_mut().enumerate() {
                        let j = panel * NR + l;
                        if j < n {
                            *x = p.v[j * k + c];
                        }
                    }
                }
            });
        let mut nlq = vec![f32::NEG_INFINITY; np];
        nlq.iter_mut().zip(p.log_q).for_each(|(d, &q)| *d = -q);
        let hits = p.hit_groups();
        let sh = Shared {
            b,
            n,
            np,
            ld,
            k,
            kp,
            inv_tau: 1.0 / p.temperature,
            inv_b_tau: 1.0 / (b as f64 * p.temperature as f64),
            up: &up,
            vp: &vp,
            v: p.v,
            vt: &vt,
            nlq: &nlq,
            log_q: p.log_q,
            weight: p.row_weight,
            correct_positive: p.correct_positive,
            hits: hits.as_ref().map(|(r, g)| (r.as_slice(), g.as_slice())),
        };

        // One chunk per worker, boundaries on multiples of the micro-kernel.
        let threads = self.threads();
        let chunks = (DV_BUDGET_BYTES / (n * kp * 4))
            .clamp(threads, 4 * threads)
            .min(b.div_ceil(MR))
            .max(1);
        let bounds: Vec<usize> = (0..=chunks)
            .map(|t| (b * t / chunks).next_multiple_of(MR).min(b))
            .collect();
        let mb = (STRIP_BUDGET_BYTES / (ld * 4) / MR * MR).clamp(MR, MB_MAX);
        let mut wloss = vec![0.0f64; b];

        let mut jobs = Vec::with_capacity(chunks);
        let (mut du, mut lse, mut rl, mut t1, mut wl) = (
            &mut out.d_u[..],
            &mut out.lse[..],
            &mut out.row_loss[..],
            &mut out.top1[..],
            &mut wloss[..],
        );
        for w in bounds.windows(2) {
            let rows = w[1] - w[0];
            let (a, rest) = du.split_at_mut(rows * k);
            du = rest;
            let (l, rest) = lse.split_at_mut(rows);
            lse = rest;
            let (r, rest) = rl.split_at_mut(rows);
            rl = rest;
            let (t, rest) = t1.split_at_mut(rows);
            t1 = rest;
            let (x, rest) = wl.split_at_mut(rows);
            wl = rest;
            jobs.push((w[0], rows, a, l, r, t, x));
        }
        let kernel = self.kernel;
        let run = || {
            jobs.into_par_iter()
                .with_max_len(1)
                .map(|(row0, rows, d_u, lse, row_loss, top1, wloss)| {
                    let mb = mb.min(rows.max(1));
                    let mut dv = vec![0.0f32; n * kp];
                    let mut strip = vec![0.0f32; mb * ld];
                    let mut du = vec![0.0f32; mb * kp];
                    let mut us = vec![0.0f32; mb * kp];
                    let mut c = vec![0.0f32; mb];
                    let mut ch = Chunk {
                        row0,
                        rows,
                        mb,
                        d_u,
                        lse,
                        row_loss,
                        top1,
                        wloss,
                        dv: &mut dv,
                        strip: &mut strip,
                        du: &mut du,
                        us: &mut us,
                        c: &mut c,
                    };
                    run_chunk(kernel, &sh, &mut ch);
                    dv
                })
                .collect::<Vec<_>>()
        };
        let dvs = self.in_pool(run);
        // Sum the private accumulators in worker order (deterministic).
        let d_v = &mut out.d_v;
        let reduce = move || {
            d_v.par_chunks_mut(k * 64)
                .enumerate()
                .for_each(|(blk, dst)| {
                    for (jj, row) in dst.chunks_exact_mut(k).enumerate() {
                        let j = blk * 64 + jj;
                        row.copy_from_slice(&dvs[0][j * kp..j * kp + k]);
                        for acc in &dvs[1..] {
                            row.iter_mut()
                                .zip(&acc[j * kp..j * kp + k])
                                .for_each(|(d, &x)| *d += x);
                        }
                    }
                })
        };
        self.in_pool(reduce);
        out.loss = (wloss.iter().sum::<f64>() / b as f64) as f32;
    }
}

fn pad_rows(src: &[f32], k: usize, dst: &mut [f32], kp: usize) {
    dst.par_chunks_mut(kp * 256)
        .zip(src.par_chunks(k * 256))
        .for_each(|(d, s)| {
            d.chunks_exact_mut(kp)
                .zip(s.chunks_exact(k))
                .for_each(|(d, s)| d[..k].copy_from_slice(s))
        });
}

fn run_chunk(kernel: Kernel, sh: &Shared<'_>, ch: &mut Chunk<'_>) {
    CALLS[kernel as usize].fetch_add(1, Ordering::Relaxed);
    match kernel {
        // SAFETY: Portable's operations need no CPU feature.
        Kernel::Portable => unsafe { kernel::run_chunk::<portable::Portable>(sh, ch) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => {
            assert!(
                Kernel::Avx2Fma.is_available(),
                "AVX2+FMA kernel chosen on a CPU without it"
            );
            // SAFETY: AVX2 and FMA were detected on this CPU just above.
            unsafe { x86::run_chunk_avx2_fma(sh, ch) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Fma => unreachable!("with_kernel refuses Avx2Fma off x86-64"),
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        match self.kernel {
            Kernel::Portable => "cpu/portable",
            Kernel::Avx2Fma => "cpu/avx2_fma",
        }
    }

    fn mns_loss_into(&self, input: &MnsInput<'_>, out: &mut MnsOutput) -> Result<(), MnsError> {
        let p = input.validate()?;
        out.check_shape(p.b, p.n, p.k)?;
        self.compute(&p, out);
        Ok(())
    }
}
