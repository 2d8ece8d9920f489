//! AMX probe: ns per TDPBF16PS with 4 tile loads per 4 products (2×2 accumulators), operands
//! streamed from 8 KiB / 32 KiB (L1), 1 MiB (L2, with and without prefetch) and 8 MiB (memory).
//! Four rounds, interleaved, to show how much the tile unit's speed drifts on a shared host.
use std::arch::asm;
use std::time::Instant;
#[repr(C, align(64))]
struct Cfg([u8; 64]);
/// # Safety
/// AMX is configured on this thread; q is valid for ntiles 1 KiB tiles.
unsafe fn run(q: *const u16, ntiles: usize, iters: usize, pf: usize) -> f64 {
    let t = Instant::now();
    // SAFETY: every tile read lies in the first ntiles tiles at q (o + 4 tiles
    // ≤ ntiles); prefetches never fault.
    unsafe {
    for it in 0..iters {
        let o = (it * 4) % (ntiles - 4) * 512;
        for l in 0..pf { std::arch::x86_64::_mm_prefetch::<3>(q.wrapping_add((o + 16 * 512) % (ntiles * 512) + l * 32).cast()); }
        asm!("tileloadd tmm4, [{a} + {s}*1]", "tileloadd tmm6, [{c} + {s}*1]", "tdpbf16ps tmm0, tmm4, tmm6",
             "tileloadd tmm7, [{d} + {s}*1]", "tdpbf16ps tmm1, tmm4, tmm7",
             "tileloadd tmm5, [{b} + {s}*1]", "tdpbf16ps tmm2, tmm5, tmm6", "tdpbf16ps tmm3, tmm5, tmm7",
             a = in(reg) q.add(o), b = in(reg) q.add(o + 512), c = in(reg) q.add(o + 1024), d = in(reg) q.add(o + 1536), s = in(reg) 64usize);
    }
    }
    t.elapsed().as_secs_f64() / iters as f64 / 4.0 * 1e9
}
fn main() {
    assert_eq!(unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1023, 18) }, 0);
    let mut cfg = Cfg([0; 64]);
    cfg.0[0] = 1;
    for t in 0..8 { cfg.0[16 + 2 * t] = 64; cfg.0[48 + t] = 16; }
    let big = vec![0x3f80u16; 8192 * 512 + 64];
    let q = big.as_ptr().wrapping_add(big.as_ptr().align_offset(64));
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr());
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3");
        for _ in 0..4 {
            let mut line = String::new();
            for (name, nt, pf) in [("L1 8K", 8, 0), ("L1 32K", 32, 0), ("L2 1M", 1024, 0), ("L2 1M pf", 1024, 64), ("mem 8M", 8192, 0), ("mem 8M pf", 8192, 64)] {
                line += &format!("{name}: {:.1}  ", run(q, nt, 200_000, pf));
            }
            println!("{line}");
        }
        asm!("tilerelease");
    }
}
