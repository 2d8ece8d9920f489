//! The fused CPU backend: packing, blocking, rayon, kernel dispatch.
//!
//! Row blocks of `mb` queries are processed one after another; inside a
//! block the N candidates are split into column *parts* (up to 8 per worker
//! thread, at least 256 columns each) that rayon hands to idle workers, in
//! two fork–join phases per block (see `kernel.rs`): A — logits, fix-ups,
//! exp and per-part (max, sum); B — the part's dU share and its own rows of
//! dV. Between the phases the parts' row statistics are merged in part
//! order, and after phase B the dU shares are summed in part order. All
//! threads thus share each block's pass over V (each reads only its parts'
//! columns), each part owns its rows of dV (no per-thread copies, no
//! reduction), and a slower core simply takes fewer parts. Part boundaries
//! depend only on (N, thread count), the block height only on the shape,
//! the thread count and the L2 size, and every sum has a fixed order, so
//! results are bit-for-bit reproducible for a fixed thread count on a given
//! machine, whatever the scheduling.
//!
//! Memory beyond the inputs and outputs: packed copies of U and V (two of V:
//! column-tiled and panel-transposed), one N×K dV accumulator, and the
//! strips of one row block, `mb × N` floats with `mb` (between [`MB_MIN`]
//! and 96 rows) chosen so that each worker's share of them and one part's
//! packed rows fit one core's L2 ([`l2_budget_bytes`]).
//! Nothing is proportional to B·N.

mod kernel;
mod portable;
mod simd;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::{Backend, MnsError, MnsInput, MnsOutput, Problem};
use kernel::{MR, NR, Part, Shared};
use rayon::prelude::*;
use simd::Simd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The per-worker cache budget where the L2 size cannot be read (see
/// [`l2_budget_bytes`]): 2 MiB, the L2 of the machine the rule was measured on.
pub const L2_BUDGET_BYTES: usize = 2 << 20;

/// Per-worker cache budget that sets the row-block height: a worker's
/// strips of one block (mb × N/threads floats) plus the packed Vᵀ, V and dV
/// rows of the part it is working on (3 × part width × K_pad floats) should
/// stay within it. Taller blocks than that evict the strip between the
/// phases (measured at (4096, 4096, 128) with a 2 MiB L2: 96-row blocks
/// 5–7% slower than 48).
///
/// It is the size of one core's L2 as Linux reports it (the level-2 data or
/// unified cache in `/sys/devices/system/cpu/cpu0/cache/`), clamped to
/// 256 KiB ..= 8 MiB, or [`L2_BUDGET_BYTES`] where that cannot be read (other
/// systems). Read once per process. The block height sets the grouping of
/// the dV sums over row blocks, so machines with different L2 sizes may
/// differ in the last bits (within the same accuracy).
pub fn l2_budget_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        l2_from_sysfs(std::path::Path::new("/sys/devices/system/cpu/cpu0/cache"))
            .map_or(L2_BUDGET_BYTES, |b| b.clamp(256 << 10, 8 << 20))
    })
}

/// The size of the level-2 data or unified cache described under `dir`
/// (sysfs layout: `index*/{level,type,size}`), if any.
fn l2_from_sysfs(dir: &std::path::Path) -> Option<usize> {
    (0..16).find_map(|i| {
        let read = |f: &str| std::fs::read_to_string(dir.join(format!("index{i}/{f}"))).ok();
        let (level, kind) = (read("level")?, read("type")?);
        if level.trim() == "2" && kind.trim() != "Instruction" {
            parse_cache_size(&read("size")?)
        } else {
            None
        }
    })
}

/// A sysfs cache size ("2048K", "1M", "512") in bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(unit)
}

/// Fewest rows per block: every block streams V (twice) and dV, so much
/// shorter blocks make huge-N problems memory-bound (12-row blocks at
/// N = 327 680, K = 128 were several times slower than 48-row ones).
pub const MB_MIN: usize = 48;
/// Most rows per block, a multiple of the micro-kernels' heights. Each
/// block reads V (twice) and writes dV once, so taller blocks mean less
/// memory traffic per flop, as long as [`l2_budget_bytes`] holds.
const MB_MAX: usize = 96;
/// Column parts per worker thread (at most). More parts balance unequal
/// cores better and shrink each part's packed V and dV rows, which lets
/// [`l2_budget_bytes`] afford taller row blocks (at (4096, 4096, 128): 72
/// rows with 8 parts per thread, 48 with 4; ABBA median ratios 0.94–0.98).
const PARTS_PER_THREAD: usize = 8;
/// Narrowest column part (a multiple of 16).
const PART_MIN: usize = 256;

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

    /// The kernel's (`Simd::LANES`, `Simd::ROWS`): f32 lanes per vector (packed
    /// rows are padded to a multiple of it) and micro-kernel rows (the
    /// interleaving of the packed U), read from its `Simd` implementation.
    fn lanes_rows(self) -> (usize, usize) {
        match self {
            Kernel::Portable => (portable::Portable::LANES, portable::Portable::ROWS),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => (x86::Avx2::LANES, x86::Avx2::ROWS),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => (x86::Avx512::LANES, x86::Avx512::ROWS),
            // Never run off x86-64 (with_kernel refuses them); any width works.
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma | Kernel::Avx512 => (8, 6),
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

    /// How many part phases this kernel has run in this process — lets
    /// tests prove that a forced kernel really ran.
    pub fn phases_run(self) -> u64 {
        CALLS[self as usize].load(Ordering::Relaxed)
    }
}

/// The fused CPU backend (DESIGN.md §4). Cheap to clone; `Send + Sync`.
///
/// The backend keeps the scratch of its calls — the packed copies of U and
/// V, the dV accumulator and the row block's strips, about
/// (2·B + 3·N)·K + 48..96·N floats — and reuses it when a later call fits
/// (a buffer more than 4× too large is freed and replaced instead),
/// so that a training loop does not allocate and page-fault them in every
/// step (the page faults alone were ~3% of a call's CPU time at
/// (4096, 4096, 128); BENCHMARKS.md item 17). Clones share it;
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

    /// Frees the scratch kept from earlier calls (see [`CpuBackend`]); the
    /// next call allocates it again. Also for this backend's clones.
    pub fn release_scratch(&self) {
        self.scratch
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn in_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    fn compute(&self, p: &Problem<'_>, out: &mut MnsOutput) {
        let (b, n, k) = (p.b, p.n, p.k);
        let (lanes, rows) = self.kernel.lanes_rows();
        let kp = k.next_multiple_of(lanes);
        let np = n.next_multiple_of(NR);

        let mut scratch = self.scratch.take();
        let mut up = std::mem::take(&mut scratch.up).recycle(b * kp);
        let mut vp = std::mem::take(&mut scratch.vp).recycle(n * kp);
        let mut vt = std::mem::take(&mut scratch.vt).recycle(np * kp);
        pad_rows(p.u, k, &mut up, kp);
        let mut ug = std::mem::take(&mut scratch.ug).recycle(b.next_multiple_of(rows) * kp);
        ug.par_chunks_mut(kp * rows)
            .enumerate()
            .for_each(|(g, dst)| {
                for (rr, i) in (g * rows..((g + 1) * rows).min(b)).enumerate() {
                    for (c, &x) in p.u[i * k..(i + 1) * k].iter().enumerate() {
                        dst[c * rows + rr] = x;
                    }
                }
            });
        // Column tiles of 16 (the last of 8 when kp % 16 == 8), rows contiguous.
        // (kp is a multiple of the kernel's lanes, 8 or 16.)
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
            k,
            kp,
            inv_tau: 1.0 / p.temperature,
            up: &up,
            ug: &ug,
            vp: &vp,
            v: p.v,
            vt: &vt,
            nlq: &nlq,
            correct_positive: p.correct_positive,
            hits: hits.as_ref().map(|(r, g)| (r.as_slice(), g.as_slice())),
        };

        // Column parts: up to PARTS_PER_THREAD per thread, ≥ PART_MIN columns, 16-aligned.
        let threads = self.threads();
        let nparts = (PARTS_PER_THREAD * threads).min(np / PART_MIN).max(1);
        let width = np.div_ceil(nparts).next_multiple_of(NR);
        let bounds: Vec<usize> = (0..np).step_by(width).chain([np]).collect();
        let part_bytes = 3 * width * kp * 4;
        let strip_bytes_per_row = np.div_ceil(threads).max(1) * 4;
        let mb = (l2_budget_bytes().saturating_sub(part_bytes) / strip_bytes_per_row / MR * MR)
            .clamp(MB_MIN, MB_MAX)
            .min(b.next_multiple_of(MR));
        let mut dv = std::mem::take(&mut scratch.dv).recycle(n * kp);
        let mut old_parts = std::mem::take(&mut scratch.parts).into_iter();
        let mut parts: Vec<Part<'_>> = Vec::with_capacity(bounds.len() - 1);
        let mut rest = &mut dv[..];
        for w in bounds.windows(2) {
            let (j0, j1) = (w[0], w[1].min(n));
            let wd = w[1] - w[0];
            let ld = if (wd / NR).is_multiple_of(2) {
                wd + NR
            } else {
                wd
            };
            let (mine, tail) = rest.split_at_mut((j1 - j0) * kp);
            rest = tail;
            let [strip, du, us] = old_parts.next().unwrap_or_default();
            parts.push(Part {
                j0,
                j1,
                w: wd,
                ld,
                strip: strip.recycle(mb * ld),
                du: du.recycle(mb * kp),
                us: us.recycle(mb * kp),
                max: vec![0.0; mb],
                sum: vec![0.0; mb],
                diag: vec![None; mb],
                coef: vec![0.0; mb],
                dv: mine,
            });
        }

        let kernel = self.kernel;
        let inv_b_tau = 1.0 / (b as f64 * p.temperature as f64);
        let mut wloss = vec![0.0f64; b];
        let mut gdiag = vec![0.0f32; mb];
        for i0 in (0..b).step_by(mb) {
            let r = mb.min(b - i0);
            parts
                .par_iter_mut()
                .with_max_len(1)
                .for_each(|part| run_phase(kernel, Phase::A, &sh, part, i0, r));
            // Merge the parts' row statistics, in part order.
            for (rr, gd) in gdiag[..r].iter_mut().enumerate() {
                let i = i0 + rr;
                let s_ii = parts
                    .iter()
                    .find_map(|q| q.diag[rr])
                    .expect("column i < B lies in some part") as f64;
                let m_off = parts
                    .iter()
                    .fold(f64::NEG_INFINITY, |m, q| m.max(q.max[rr] as f64));
                let m = m_off.max(s_ii);
                let so: f64 = parts
                    .iter()
                    .filter(|q| q.max[rr] > f32::NEG_INFINITY)
                    .map(|q| q.sum[rr] as f64 * (q.max[rr] as f64 - m).exp())
                    .sum();
                let e_ii = (s_ii - m).exp();
                let sum = e_ii + so;
                let lse = m + sum.ln();
                // ln(1 + Σ′/e_ii) is exact to rounding even when the positive
                // dominates; when e_ii underflows the difference has no cancellation.
                let loss = if e_ii > 1e-300 {
                    (so / e_ii).ln_1p()
                } else {
                    lse - s_ii
                };
                let w = p.weight(i) as f64;
                let c = w * inv_b_tau / sum;
                for q in parts.iter_mut() {
                    q.coef[rr] = if q.max[rr] > f32::NEG_INFINITY {
                        (c * (q.max[rr] as f64 - m).exp()) as f32
                    } else {
                        0.0
                    };
                }
                *gd = (-c * so) as f32;
                out.lse[i] = lse as f32;
                out.row_loss[i] = loss as f32;
                out.top1[i] = s_ii >= m_off;
                wloss[i] = w * loss;
            }
            parts
                .par_iter_mut()
                .with_max_len(1)
                .for_each(|part| run_phase(kernel, Phase::B, &sh, part, i0, r));
            // dU rows: the parts' shares in part order, plus the diagonal term.
            for (rr, &gd) in gdiag[..r].iter().enumerate() {
                let i = i0 + rr;
                let du = &mut out.d_u[i * k..(i + 1) * k];
                du.iter_mut()
                    .zip(&p.v[i * k..(i + 1) * k])
                    .for_each(|(x, &v)| *x = gd * v);
                for q in parts.iter() {
                    let cq = q.coef[rr];
                    du.iter_mut()
                        .zip(&q.du[rr * kp..])
                        .for_each(|(x, &y)| *x += cq * y);
                }
            }
            // The diagonal's dV term, G_ii/τ·U_i, into row i of the dV accumulator.
            for (rr, &gd) in gdiag[..r].iter().enumerate() {
                let i = i0 + rr;
                let q = parts
                    .iter_mut()
                    .find(|q| (q.j0..q.j1).contains(&i))
                    .expect("i < N");
                let row = &mut q.dv[(i - q.j0) * kp..(i - q.j0) * kp + k];
                row.iter_mut()
                    .zip(&p.u[i * k..(i + 1) * k])
                    .for_each(|(x, &u)| *x += gd * u);
            }
        }
        scratch.parts = parts.into_iter().map(|q| [q.strip, q.du, q.us]).collect();
        out.d_v
            .par_chunks_mut(k)
            .zip(dv.par_chunks(kp))
            .for_each(|(d, s)| d.copy_from_slice(&s[..k]));
        out.loss = (wloss.iter().sum::<f64>() / b as f64) as f32;
        (scratch.up, scratch.ug, scratch.vp, scratch.vt, scratch.dv) = (up, ug, vp, vt, dv);
        self.scratch.put(scratch);
    }
}

/// A zero-filled f32 buffer whose first element is 64-byte aligned (one
/// cache line, one zmm register). The kernels' row strides are multiples of
/// 16 floats, so every vector they load or store is then line-aligned;
/// `Vec<f32>` only guarantees 4 bytes (large allocations come back at
/// 16 bytes past a page), which made most 64-byte accesses straddle two
/// lines. Safe code: the alignment is found with `align_offset` and the
/// buffer over-allocated by one line.
pub(crate) struct Aligned {
    buf: Vec<f32>,
    off: usize,
    len: usize,
}

impl Aligned {
    /// `len` zeros, starting on a 64-byte boundary.
    pub(crate) fn zeroed(len: usize) -> Self {
        let buf = vec![0.0f32; len + 16];
        let off = buf.as_ptr().align_offset(64);
        assert!(off < 16, "f32 buffer cannot be 64-byte aligned");
        Self { buf, off, len }
    }

    /// `len` zeros, in this buffer's memory if it is large enough (zeroed in
    /// parallel, already paged in) but not more than 4× too large (so that
    /// one huge call does not pin its memory behind later small ones), else
    /// in a new one (this one freed first).
    pub(crate) fn recycle(self, len: usize) -> Self {
        let fits = self.buf.len() >= len + 16;
        let oversized = self.buf.len() > 4 * (len + 16) + (1 << 16);
        if fits && !oversized {
            // `off` (< 16) still aligns the same allocation; off + len fits.
            let mut a = Self { len, ..self };
            a.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0));
            a
        } else {
            drop(self);
            Self::zeroed(len)
        }
    }
}

impl Default for Aligned {
    /// An empty buffer (to be [`Aligned::recycle`]d).
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            off: 0,
            len: 0,
        }
    }
}

/// The large buffers of one call, kept between calls (see [`CpuBackend`]).
#[derive(Default)]
struct Scratch {
    up: Aligned,
    ug: Aligned,
    vp: Aligned,
    vt: Aligned,
    dv: Aligned,
    /// Per column part: its strip, dU share and scaled U rows.
    parts: Vec<[Aligned; 3]>,
}

/// Idle [`Scratch`]es: a call takes one (or starts empty) and puts it back.
#[derive(Default)]
struct ScratchPool(std::sync::Mutex<Vec<Scratch>>);

impl ScratchPool {
    fn take(&self) -> Scratch {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        idle.pop().unwrap_or_default()
    }

    fn put(&self, s: Scratch) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
}

impl std::fmt::Debug for ScratchPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.0.lock().map_or(0, |v| v.len());
        write!(f, "ScratchPool({idle} idle)")
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..self.off + self.len]
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

#[derive(Clone, Copy)]
enum Phase {
    A,
    B,
}

fn run_phase(
    kernel: Kernel,
    phase: Phase,
    sh: &Shared<'_>,
    part: &mut Part<'_>,
    i0: usize,
    r: usize,
) {
    CALLS[kernel as usize].fetch_add(1, Ordering::Relaxed);
    match (kernel, phase) {
        // SAFETY: Portable's operations need no CPU feature.
        (Kernel::Portable, Phase::A) => unsafe {
            kernel::phase_a::<portable::Portable>(sh, part, i0, r)
        },
        // SAFETY: as above.
        (Kernel::Portable, Phase::B) => unsafe {
            kernel::phase_b::<portable::Portable>(sh, part, i0, r)
        },
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx2Fma | Kernel::Avx512, phase) => {
            assert!(
                kernel.is_available(),
                "{} kernel chosen on a CPU without it",
                kernel.name()
            );
            type Entry = unsafe fn(&Shared<'_>, &mut Part<'_>, usize, usize);
            let entry: Entry = match (kernel, phase) {
                (Kernel::Avx512, Phase::A) => x86::phase_a_avx512,
                (Kernel::Avx512, Phase::B) => x86::phase_b_avx512,
                (_, Phase::A) => x86::phase_a_avx2_fma,
                (_, Phase::B) => x86::phase_b_avx2_fma,
            };
            // SAFETY: `entry` is compiled for `kernel`'s instruction set,
            // which was detected on this CPU just above.
            unsafe { entry(sh, part, i0, r) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        (Kernel::Avx2Fma | Kernel::Avx512, _) => {
            unreachable!("with_kernel refuses the x86 kernels off x86-64")
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
            out.check_shape(p.b, p.n, p.k)?;
            self.compute(&p, out);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{L2_BUDGET_BYTES, l2_budget_bytes, l2_from_sysfs, parse_cache_size};

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("2048K\n"), Some(2 << 20));
        assert_eq!(parse_cache_size("512K"), Some(512 << 10));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("65536"), Some(65536));
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("12Q"), None);
    }

    #[test]
    fn l2_is_read_from_a_sysfs_tree() {
        let root = std::env::temp_dir().join(format!("mixneg-sysfs-{}", std::process::id()));
        let write = |i: usize, level: &str, kind: &str, size: &str| {
            let d = root.join(format!("index{i}"));
            std::fs::create_dir_all(&d).unwrap();
            for (f, v) in [("level", level), ("type", kind), ("size", size)] {
                std::fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        };
        assert_eq!(l2_from_sysfs(&root), None, "no tree");
        write(0, "1", "Data", "32K");
        write(1, "1", "Instruction", "32K");
        assert_eq!(l2_from_sysfs(&root), None, "no level 2");
        write(2, "2", "Instruction", "64K");
        assert_eq!(l2_from_sysfs(&root), None, "an L2 for instructions only");
        write(3, "2", "Unified", "512K");
        write(4, "3", "Unified", "32768K");
        assert_eq!(l2_from_sysfs(&root), Some(512 << 10));
        std::fs::remove_dir_all(&root).unwrap();
        // This machine's budget is its L2 or the default, within the clamp.
        let b = l2_budget_bytes();
        assert!((256 << 10..=8 << 20).contains(&b), "{b}");
        if l2_from_sysfs(std::path::Path::new("/sys/devices/system/cpu/cpu0/cache")).is_none() {
            assert_eq!(b, L2_BUDGET_BYTES);
        }
    }
}
