//! The fused CPU backend: [`CpuBackend`] and its [`Kernel`]s.
//!
//! One call is a pipeline **plan → pack → (per row block: phase A → row
//! merge → phase B → combine) → dV out**, monomorphized for the instruction
//! set once per call (`compute::<S>`): `kernel.rs` lists the steps, their
//! files and the CUDA kernel each one mirrors. Row blocks of `mb` queries
//! are processed one after another; inside a block the N candidates are
//! split into column *parts*, which idle workers claim one at a time in
//! the parallel phases, and the block's rows into one chunk per worker for
//! the merge and the combine. The whole call is one parallel region, a
//! sequence of such steps (`steps.rs`), with no fork–join per block. All
//! threads thus share each block's pass over V (each
//! reads only its parts' columns), each part owns its rows of dV (no
//! per-thread copies, no reduction), and a slower core simply takes fewer
//! parts. Every sum has a fixed order, so results are bit-for-bit
//! reproducible for a fixed thread count on a given machine (the L2 size
//! sets the block height, see `plan.rs`), whatever the scheduling.
//!
//! Memory beyond the inputs and outputs: Vᵀ in panels (N·K floats), one
//! row block's interleaved U groups (twice), and the strips of one row
//! block, `mb × N` floats (48 to 96 rows, sized to one core's L2; twice
//! that on the bf16 tier). When K is not a multiple of the vector width,
//! also padded copies of U and V (V in column tiles) and an N×K dV
//! accumulator; otherwise U and V are read as given and dV is summed into
//! the caller's buffer. The bf16 tier packs bf16 copies instead (U's
//! groups, V in panels and in row-paired tiles). Nothing is proportional
//! to B·N.

#[cfg(target_arch = "x86_64")]
mod bf16;
mod kernel;
mod pack;
mod phase_a;
mod phase_b;
mod plan;
mod portable;
mod rows;
mod scratch;
mod simd;
mod steps;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::{Backend, Floats, MnsError, MnsForward, MnsInput, MnsOutput, Precision, Problem};
use kernel::Part;
use pack::{Packed, Shared, UGroups};
use plan::Plan;
use rayon::prelude::*;
use rows::Rows;
use scratch::ScratchPool;
use simd::Simd;
#[cfg(feature = "testing")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Environment variable that forces a CPU kernel in [`CpuBackend::from_env`]:
/// `portable`, `avx2_fma`, `avx512` or `auto`.
pub const KERNEL_ENV: &str = "MIXNEG_CPU_KERNEL";

/// The SIMD instruction set a [`CpuBackend`] runs. Non-exhaustive: kernels
/// for further instruction sets may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// `wide::f32x8`: correct on every target, instructions fixed at build time.
    Portable,
    /// Hand-written AVX2 + FMA (`std::arch`, 8 lanes, 6×16 micro-kernels),
    /// selected at run time.
    Avx2Fma,
    /// Hand-written AVX-512F (`std::arch`, 16 lanes, 12×32 micro-kernels),
    /// selected at run time.
    Avx512,
}

#[cfg(feature = "testing")]
static CALLS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

impl Kernel {
    /// Every kernel, in order of preference (best last).
    pub const ALL: [Kernel; 3] = [Kernel::Portable, Kernel::Avx2Fma, Kernel::Avx512];

    /// The kernel's name as used by [`KERNEL_ENV`], the CLI and the benches.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2Fma => "avx2_fma",
            Kernel::Avx512 => "avx512",
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
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma | Kernel::Avx512 => false,
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

    /// How many calls this kernel has run in this process — a test hook
    /// (feature `testing`) that lets tests prove that a forced kernel really
    /// ran.
    #[cfg(feature = "testing")]
    pub fn calls_run(self) -> u64 {
        CALLS[self as usize].load(Ordering::Relaxed)
    }
}

/// The fused CPU backend (module docs: the pipeline). Cheap to clone;
/// `Send + Sync`.
///
/// The backend keeps the scratch of its calls — the packed copies of U and
/// V, the dV accumulator and the row block's strips, about
/// (2·B + 3·N)·K + 48..96·N floats — and reuses it when a later call fits
/// (a buffer more than 4× too large is freed and replaced instead),
/// so that a training loop does not allocate and page-fault them in every
/// step (the page faults alone would be ~3% of a call's CPU time at
/// (4096, 4096, 128)). Clones share it;
/// concurrent calls each get their own. [`CpuBackend::release_scratch`]
/// frees it.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    kernel: Kernel,
    pool: Option<Arc<rayon::ThreadPool>>,
    scratch: Arc<ScratchPool>,
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
            scratch: Arc::default(),
        }
    }

    /// Force a kernel; an error if this CPU cannot run it.
    pub fn with_kernel(kernel: Kernel) -> Result<Self, MnsError> {
        if !kernel.is_available() {
            return Err(MnsError::KernelUnavailable(kernel.name().into()));
        }
        Ok(Self {
            kernel,
            pool: None,
            scratch: Arc::default(),
        })
    }

    /// The kernel named by `MIXNEG_CPU_KERNEL` (`portable`, `avx2_fma`,
    /// `avx512`, `auto` or unset for the best one); an error for an unknown or
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
            .map_err(|e| MnsError::ThreadPool {
                threads,
                reason: e.to_string(),
            })?;
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

    /// Whether this backend computes the products at `precision`: F32
    /// always; Bf16 with the `avx512` kernel on a CPU with AVX512_BF16
    /// (`vdpbf16ps`); Tf32 never (a tensor-core format).
    pub fn supports(&self, precision: Precision) -> bool {
        self.tier(precision).is_ok()
    }

    /// Err([`MnsError::Precision`]) with the reason unless this backend
    /// computes `precision` (see [`CpuBackend::supports`]).
    fn tier(&self, precision: Precision) -> Result<(), MnsError> {
        let reason = match precision {
            Precision::F32 => return Ok(()),
            Precision::Bf16 if self.kernel == Kernel::Avx512 && bf16_available() => return Ok(()),
            Precision::Bf16 if bf16_available() => {
                "the bf16 tier runs on the avx512 kernel only (this backend runs another)"
            }
            Precision::Bf16 => {
                "this CPU lacks AVX512_BF16 (vdpbf16ps); the CUDA backend has every tier"
            }
            _ => {
                "TF32 is a tensor-core format: the CPU kernels compute F32, and Bf16 on a CPU with AVX512_BF16"
            }
        };
        Err(MnsError::Precision {
            backend: self.name(),
            precision,
            reason,
        })
    }

    /// Frees the scratch kept from earlier calls (see [`CpuBackend`]); the
    /// next call allocates it again. Also for this backend's clones.
    pub fn release_scratch(&self) {
        self.scratch.clear();
    }

    /// Runs `f` on a worker of this backend's pool (rayon's global pool
    /// without one). From any other thread the call's parallel region
    /// would be handed to the pool and back, with the calling thread idle;
    /// from a worker it starts in place.
    fn in_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => rayon::scope(|_| f()),
        }
    }

    /// The whole computation for a validated problem, for instruction set
    /// `S` (see the module docs).
    ///
    /// # Safety
    ///
    /// The running CPU supports `S`'s instruction set.
    /// With `forward_only`, phase B and the combine are skipped: `out` gets
    /// L, lse, ℓ and top-1 (its gradient buffers may be empty).
    unsafe fn compute<S: Simd>(&self, p: &Problem<'_>, out: &mut MnsOutput, forward_only: bool) {
        let (b, n, k) = (p.b, p.n, p.k);
        let bf16 = p.precision == Precision::Bf16;
        // The F32 tier packs f32 copies: bf16 embeddings are converted first
        // (exact; the bf16 tier reads them as they are).
        let (u32s, v32s) = if bf16 {
            Default::default()
        } else {
            (p.u.to_f32(), p.v.to_f32())
        };
        let converted;
        let p = if bf16 {
            p
        } else {
            converted = Problem {
                u: Floats::F32(&u32s),
                v: Floats::F32(&v32s),
                ..*p
            };
            &converted
        };
        let mut plan = Plan::new((b, n, k), S::LANES, self.threads(), plan::l2_budget_bytes());
        if bf16 {
            plan = plan.for_bf16(b);
        }
        let (kp, mb) = (plan.kp, plan.mb);

        let mut scratch = self.scratch.take();
        // The bf16 tier (reached only with S = Avx512 on a CPU with
        // AVX512_BF16: `tier` checked it) packs bf16 copies instead.
        let packed = Packed::new(p, &plan, &mut scratch, bf16);
        // The F32 tier's U groups, packed per block (the bf16 tier packs
        // its own, for all of U).
        let mut ug = (!bf16).then(|| UGroups::new(&plan, S::ROWS, &mut scratch));
        #[cfg(target_arch = "x86_64")]
        let bp = bf16.then(|| bf16::Bf16Packed::new(p, kp, plan.np, &mut scratch));
        let hits = p.hit_groups();
        let mut round: fn(f32) -> f32 = |x| x;
        #[cfg(target_arch = "x86_64")]
        if bf16 {
            round = bf16::round;
        }
        let sh = packed.shared(p, &plan, &hits, round);
        // The dV accumulator: none for a forward-only call (which leaves the
        // kept one in the scratch); the caller's ∂L/∂V itself, zeroed, when
        // its rows need no padding (kp = K: the same sums into the same
        // floats, one N×K buffer and the final copy fewer); else a padded
        // one from the scratch, copied out at the end.
        let direct = !forward_only && kp == k;
        let mut d_v = if direct {
            let mut d = std::mem::take(&mut out.d_v);
            d.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0));
            d
        } else {
            vec![]
        };
        let mut dv = if forward_only || direct {
            scratch::Aligned::default()
        } else {
            std::mem::take(&mut scratch.dv).recycle(n * kp)
        };
        let acc: &mut [f32] = if direct { &mut d_v } else { &mut dv };
        let bf_len = |w: usize| {
            #[cfg(target_arch = "x86_64")]
            if bf16 {
                return bf16::part_len(mb, w, kp);
            }
            let _ = w;
            0
        };
        let old = std::mem::take(&mut scratch.parts);
        let parts = Part::for_plan(&plan, n, acc, old, bf_len);

        // One phase of one part: A (strip, exp) or B (dU share, dV rows) of
        // the block at i0, on this call's tier.
        let phase = |sh: &Shared<'_>, q: &mut Part<'_>, b_phase: bool, i0: usize| {
            let r = mb.min(b - i0);
            // SAFETY: the CPU supports S (this function's contract), and
            // AVX512_BF16 when bf16 (checked by `tier`).
            unsafe {
                #[cfg(target_arch = "x86_64")]
                if let Some(bp) = &bp {
                    return if b_phase {
                        bf16::phase_b(sh, bp, q, i0, r)
                    } else {
                        bf16::phase_a(sh, bp, q, i0, r)
                    };
                }
                if b_phase {
                    S::phase_b(sh, q, i0, r)
                } else {
                    S::phase_a(sh, q, i0, r)
                }
            }
        };
        // The call as steps (`steps.rs`), for t = 0..=T over the T blocks:
        // a parts step (each part's phase B of block t − 1, then its phase A
        // of block t: the strip is free once B has read it), then a rows
        // step (per chunk of rows, the combine of block t − 1 and then the
        // merge of block t, which overwrites the coefficients the combine
        // reads; and, on the F32 tier, one task packing block t + 1's U
        // groups into the half of the buffer that block t − 1 used). So a
        // block's phase B and the next block's phase A share one step. The
        // same operations in the same order as separate phases: the results
        // are the same bits.
        let u_f32 = p.u.as_f32().unwrap_or_default();
        let mut halves = ug.as_mut().map(|g| g.halves());
        if let Some(h) = &mut halves {
            UGroups::pack(h[0].get_mut().unwrap(), S::ROWS, u_f32, k, kp, 0, mb.min(b));
        }
        // Each block's merge and combine in one chunk of rows per worker.
        let per_block = self.threads().min(mb / kernel::MR);
        let outs = (&mut out.lse[..], &mut out.row_loss[..], &mut out.top1[..]);
        let rows = Rows::new(p, (mb, per_block), outs, &mut out.d_u);
        let parts: Vec<RwLock<Part<'_>>> = parts.into_iter().map(RwLock::new).collect();
        let blocks = b.div_ceil(mb);
        // Whether step t has a phase B / combine (of block t − 1) and a
        // phase A / merge (of block t); a forward-only call has no t = T.
        let has_b = |t: usize| t >= 1 && !forward_only;
        let has_a = |t: usize| t < blocks;
        let last = if forward_only { blocks - 1 } else { blocks };
        let row_tasks = per_block + usize::from(halves.is_some());
        let counts: Vec<usize> = (0..=last).flat_map(|_| [parts.len(), row_tasks]).collect();
        steps::run(self.threads(), &counts, |step, task| {
            let t = step / 2;
            if step % 2 == 0 {
                let mut q = parts[task].write().unwrap();
                if has_b(t) {
                    phase(&sh, &mut q, true, (t - 1) * mb);
                }
                if has_a(t) {
                    let h = halves.as_ref().map(|h| h[t % 2].read().unwrap());
                    let sha = match &h {
                        Some(h) => Shared { ug: h, ..sh },
                        None => sh,
                    };
                    phase(&sha, &mut q, false, t * mb);
                }
            } else if task < per_block {
                if has_b(t) {
                    rows.combine(p, &parts, &plan.bounds, (t - 1) * per_block + task, kp);
                }
                if has_a(t) {
                    rows.merge(p, &parts, t * per_block + task);
                }
            } else if let Some(h) = &halves
                && t + 1 < blocks
            {
                let i1 = (t + 1) * mb;
                let mut h = h[(t + 1) % 2].write().unwrap();
                UGroups::pack(&mut h, S::ROWS, u_f32, k, kp, i1, mb.min(b - i1));
            }
        });
        let parts = parts.into_iter().map(|q| q.into_inner().unwrap());
        scratch.parts = parts.map(Part::into_scratch).collect();
        out.loss = rows.loss();
        if direct {
            out.d_v = d_v;
        } else if !forward_only {
            out.d_v
                .par_chunks_mut(k)
                .zip(dv.par_chunks(kp))
                .for_each(|(d, s)| d.copy_from_slice(&s[..k]));
            scratch.dv = dv;
        }
        if !forward_only {
            out.d_temperature = d_temperature(&sh, p.temperature, &out.d_u);
        }
        packed.recycle_into(&mut scratch);
        if let Some(ug) = ug {
            ug.recycle_into(&mut scratch);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(bp) = bp {
            bp.recycle_into(&mut scratch);
        }
        self.scratch.put(scratch);
    }

    /// Runs [`CpuBackend::compute`] for this backend's kernel: the one
    /// dispatch of a call.
    fn dispatch(&self, p: &Problem<'_>, out: &mut MnsOutput, forward_only: bool) {
        #[cfg(feature = "testing")]
        CALLS[self.kernel as usize].fetch_add(1, Ordering::Relaxed);
        match self.kernel {
            // SAFETY: Portable's operations need no CPU feature.
            Kernel::Portable => unsafe { self.compute::<portable::Portable>(p, out, forward_only) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma | Kernel::Avx512 => {
                // Checked by `with_kernel` already; a cheap cached test that
                // keeps the unsafe call below sound on its own.
                assert!(
                    self.kernel.is_available(),
                    "{} kernel chosen on a CPU without it",
                    self.kernel.name()
                );
                if self.kernel == Kernel::Avx512 {
                    // SAFETY: AVX-512F was detected on this CPU just above.
                    unsafe { self.compute::<x86::Avx512>(p, out, forward_only) }
                } else {
                    // SAFETY: AVX2 and FMA were detected on this CPU just above.
                    unsafe { self.compute::<x86::Avx2>(p, out, forward_only) }
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma | Kernel::Avx512 => {
                unreachable!("with_kernel refuses the x86 kernels off x86-64")
            }
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        match self.kernel {
            Kernel::Portable => "cpu/portable",
            Kernel::Avx2Fma => "cpu/avx2_fma",
            Kernel::Avx512 => "cpu/avx512",
        }
    }

    fn mns_loss_into(&self, input: &MnsInput<'_>, out: &mut MnsOutput) -> Result<(), MnsError> {
        // The whole call (validation and packing included) runs on this
        // backend's pool.
        self.in_pool(|| {
            let p = input.validate()?;
            self.tier(p.precision)?;
            out.check_shape(p.b, p.n, p.k)?;
            self.dispatch(&p, out, false);
            Ok(())
        })
    }

    fn mns_forward(&self, input: &MnsInput<'_>) -> Result<MnsForward, MnsError> {
        self.in_pool(|| {
            let p = input.validate()?;
            self.tier(p.precision)?;
            // Per-row buffers only: no gradient is formed.
            let mut out = MnsOutput::filled(p.b, 0, 0, 0.0);
            self.dispatch(&p, &mut out, true);
            Ok(out.into())
        })
    }
}

/// ∂L/∂τ = −⟨U, ∂L/∂U⟩/τ: per-row dot products in f64 (in parallel), summed
/// in row order (deterministic); U's rows are read from `sh.up` (f32, rows
/// of kp), which both tiers have.
fn d_temperature(sh: &pack::Shared<'_>, temperature: f32, d_u: &[f32]) -> f32 {
    let k = sh.k;
    let rows: Vec<f64> = sh
        .up
        .par_chunks(sh.kp)
        .zip(d_u.par_chunks(k))
        .map(|(u, g)| {
            u[..k]
                .iter()
                .zip(g)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum()
        })
        .collect();
    (-rows.iter().sum::<f64>() / temperature as f64) as f32
}

/// Whether this CPU can run the bf16 tier's kernels (AVX-512F and AVX512_BF16).
fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return bf16::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}
