//! Step 1 of a call, **plan**: every decision that depends only on the shape,
//! the instruction set's vector width, the thread count and the cache size —
//! the padded strides, the row-block height and the column parts. A pure
//! function with its own tests, like the CUDA backend's grid plan.
//!
//! Row blocks of `mb` queries are processed one after another; inside a
//! block the N candidates are split into column *parts* (up to
//! [`PARTS_PER_THREAD`] per worker, at least [`PART_MIN`] columns each) that
//! idle workers claim one at a time. The height `mb` (between [`MB_MIN`] and
//! [`MB_MAX`], a multiple of [`MR`]) is the largest that keeps a worker's
//! strips of one block (`mb × N/threads` floats) and the packed Vᵀ, V and dV
//! rows of the part it is working on (`3 × width × K_pad` floats) within one
//! core's L2. Part boundaries depend only on (N, threads) and `mb` only on
//! the shape, the thread count and the L2 size, so together with the fixed
//! summation order of the phases the results are bit-for-bit reproducible for
//! a fixed thread count on a given machine.

use super::kernel::{MR, NR};

/// The per-worker cache budget where the L2 size cannot be read (see
/// [`l2_budget_bytes`]): 2 MiB, the L2 of the machine the rule was measured on.
pub(crate) const L2_BUDGET_BYTES: usize = 2 << 20;

/// Fewest rows per block: every block streams V (twice) and dV, so much
/// shorter blocks make huge-N problems memory-bound (12-row blocks at
/// N = 327 680, K = 128 were several times slower than 48-row ones).
pub(crate) const MB_MIN: usize = 48;
/// Most rows per block, a multiple of the micro-kernels' heights. Each
/// block reads V (twice) and writes dV once, so taller blocks mean less
/// memory traffic per flop, as long as the L2 budget holds.
pub(crate) const MB_MAX: usize = 96;
/// Column parts per worker thread (at most). More parts balance unequal
/// cores better and shrink each part's packed V and dV rows, which lets
/// the L2 budget afford taller row blocks (at (4096, 4096, 128): 72 rows
/// with 8 parts per thread, 48 with 4; ABBA median ratios 0.94–0.98).
pub(crate) const PARTS_PER_THREAD: usize = 8;
/// Narrowest column part (a multiple of [`NR`]).
pub(crate) const PART_MIN: usize = 256;

/// Per-worker cache budget that sets the row-block height: the size of one
/// core's L2 as Linux reports it (the level-2 data or unified cache in
/// `/sys/devices/system/cpu/cpu0/cache/`), clamped to 256 KiB ..= 8 MiB, or
/// [`L2_BUDGET_BYTES`] where that cannot be read (other systems). Read once
/// per process. Taller blocks than the budget allows evict the strip between
/// the phases (measured at (4096, 4096, 128) with a 2 MiB L2: 96-row blocks
/// 5–7% slower than 48). The block height sets the grouping of the dV sums
/// over row blocks, so machines with different L2 sizes may differ in the
/// last bits (within the same accuracy).
pub(crate) fn l2_budget_bytes() -> usize {
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

/// The blocking of one call (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// K rounded up to the vector width: the packed rows' stride.
    pub kp: usize,
    /// N rounded up to [`NR`]: the padded column count.
    pub np: usize,
    /// Row-block height: a multiple of [`MR`] in [`MB_MIN`, `MB_MAX`], or B
    /// rounded up to [`MR`] when that is smaller.
    pub mb: usize,
    /// Column-part boundaries 0 = b₀ < b₁ < … = np, multiples of [`NR`]; part
    /// q covers padded columns b_q..b_{q+1} (real columns up to N).
    pub bounds: Vec<usize>,
}

impl Plan {
    /// The plan for B queries, N candidates of K dimensions, on a kernel of
    /// `lanes` f32 per vector (8 or 16), `threads` workers and a per-worker
    /// cache budget of `l2_bytes`.
    pub fn new(
        (b, n, k): (usize, usize, usize),
        lanes: usize,
        threads: usize,
        l2_bytes: usize,
    ) -> Plan {
        let kp = k.next_multiple_of(lanes);
        let np = n.next_multiple_of(NR);
        let threads = threads.max(1);
        let nparts = (PARTS_PER_THREAD * threads).min(np / PART_MIN).max(1);
        let width = np.div_ceil(nparts).next_multiple_of(NR);
        let bounds: Vec<usize> = (0..np).step_by(width).chain([np]).collect();
        let part_bytes = 3 * width * kp * 4;
        let strip_bytes_per_row = np.div_ceil(threads).max(1) * 4;
        let mb = (l2_bytes.saturating_sub(part_bytes) / strip_bytes_per_row / MR * MR)
            .clamp(MB_MIN, MB_MAX)
            .min(b.next_multiple_of(MR));
        Plan { kp, np, mb, bounds }
    }

    /// This plan for the bf16 tier: blocks twice as tall. Its dV kernel
    /// sums over pairs of rows, so a block of mb rows makes mb/2 steps per
    /// read-modify-write of the dV rows; twice the rows restore the f32
    /// kernel's ratio. Measured (AMD EPYC Zen 5, 1 MiB L2, 2 threads,
    /// `examples/timeit.rs`, the f32 rule giving 48 rows, two rounds):
    /// bf16 with 96-row blocks took 0–8% less time than with 48 at
    /// (4096, 4096, 64), (4096, 4096, 128) and (16384, 16384, 64); 144 was no
    /// better than 96.
    pub fn for_bf16(mut self, b: usize) -> Plan {
        self.mb = (2 * self.mb).min(b.next_multiple_of(MR));
        self
    }

    /// The row stride of a strip `w` columns wide: w, or w + 16 so that the
    /// stride in 64-byte lines is odd — a stride of a multiple of 4 KiB maps
    /// every row of a column to the same L1 set, and phase B's dV kernel
    /// reads the strip down its columns.
    pub fn strip_stride(w: usize) -> usize {
        if (w / NR).is_multiple_of(2) {
            w + NR
        } else {
            w
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Worked by hand from the rule: (4096, 8192, 128), AVX-512, 2 threads,
    /// 2 MiB: 16 parts of 512 columns, each part's packed rows 3·512·128·4 =
    /// 768 KiB, a strip row per worker 4096·4 = 16 KiB, (2048 − 768)/16 = 80
    /// rows, rounded down to 72.
    #[test]
    fn plan_of_the_benchmark_shape_is_the_hand_worked_one() {
        let p = Plan::new((4096, 8192, 128), 16, 2, 2 << 20);
        assert_eq!((p.kp, p.np, p.mb), (128, 8192, 72));
        // The bf16 tier's blocks: twice as tall, never past B (rounded to 12).
        assert_eq!(p.clone().for_bf16(4096).mb, 144);
        assert_eq!(Plan::new((30, 500, 8), 16, 2, 2 << 20).for_bf16(30).mb, 36);
        assert_eq!(p.bounds, (0..=8192).step_by(512).collect::<Vec<_>>());
        // With a 512 KiB L2 (Zen 3) the packed part rows alone exceed the
        // budget: the floor.
        assert_eq!(Plan::new((4096, 8192, 128), 16, 2, 512 << 10).mb, MB_MIN);
        // Small B: one block of B rounded up to MR.
        assert_eq!(Plan::new((5, 20, 3), 8, 2, 2 << 20).mb, 12);
        // K padded to the lanes, N to NR.
        let p = Plan::new((5, 20, 3), 8, 2, 2 << 20);
        assert_eq!((p.kp, p.np, p.bounds.clone()), (8, 32, vec![0, 32]));
    }

    #[test]
    fn every_plan_keeps_its_invariants() {
        for b in [1, 2, 13, 48, 97, 4096] {
            for n in [b, b + 1, b + 255, b + 4097, 300_000] {
                for k in [1, 7, 16, 65, 128] {
                    for (lanes, threads) in [(8, 1), (8, 3), (16, 2), (16, 7)] {
                        for l2 in [256 << 10, 2 << 20, 8 << 20] {
                            let p = Plan::new((b, n, k), lanes, threads, l2);
                            let ctx = format!("{b} {n} {k} {lanes} {threads} {l2}: {p:?}");
                            assert!(
                                p.kp >= k && p.kp < k + lanes && p.kp.is_multiple_of(lanes),
                                "{ctx}"
                            );
                            assert!(
                                p.np >= n && p.np < n + NR && p.np.is_multiple_of(NR),
                                "{ctx}"
                            );
                            assert!(p.mb.is_multiple_of(MR), "{ctx}");
                            assert!(p.mb <= MB_MAX, "{ctx}");
                            assert!(p.mb >= MB_MIN.min(b.next_multiple_of(MR)), "{ctx}");
                            assert_eq!((p.bounds[0], *p.bounds.last().unwrap()), (0, p.np));
                            let parts = p.bounds.len() - 1;
                            assert!(parts >= 1 && parts <= PARTS_PER_THREAD * threads, "{ctx}");
                            for (q, w) in p.bounds.windows(2).enumerate() {
                                assert!(w[0] < w[1] && w[0].is_multiple_of(NR), "{ctx}");
                                // Every part but the last is at least PART_MIN wide.
                                assert!(q + 1 == parts || w[1] - w[0] >= PART_MIN, "{ctx}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn strip_strides_are_an_odd_number_of_lines() {
        for w in (NR..=4096).step_by(NR) {
            let ld = Plan::strip_stride(w);
            assert!(
                ld >= w && ld <= w + NR && !(ld / NR).is_multiple_of(2),
                "{w} → {ld}"
            );
        }
    }
}
