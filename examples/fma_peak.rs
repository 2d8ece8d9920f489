//! The machine's f32 FMA peak, the yardstick of BENCHMARKS.md: independent
//! FMA chains in registers only (24 zmm for AVX-512, 12 ymm for AVX2 — enough
//! to hide the FMA latency), on `threads` cores at once, per core.
//!
//! `cargo run --release --example fma_peak -- [threads (2)] [rounds (3)]`
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 24 independent zmm chains of `n` FMAs each; returns a sum so that
    /// nothing is optimized away.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains512(n: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); 24];
        let (a, b) = (_mm512_set1_ps(1.000_001), _mm512_set1_ps(0.999_999));
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_set1_ps(0.0), |s, &x| _mm512_add_ps(s, x));
        _mm512_reduce_add_ps(s)
    }

    /// 12 independent ymm chains of `n` FMAs each.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains256(n: usize) -> f32 {
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let (a, b) = (_mm256_set1_ps(1.000_001), _mm256_set1_ps(0.999_999));
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let s = acc
            .iter()
            .fold(_mm256_set1_ps(0.0), |s, &x| _mm256_add_ps(s, x));
        let x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let x = _mm_hadd_ps(x, x);
        _mm_cvtss_f32(_mm_hadd_ps(x, x))
    }
}

/// GFLOP/s per core of `f` (flops per call `flops`) run on `threads` threads
/// at once: a barrier starts every loop together, so the cores are busy side
/// by side rather than one after another.
fn per_core(threads: usize, flops: f64, f: fn() -> f32) -> Vec<f64> {
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    std::hint::black_box(f());
                    flops / t.elapsed().as_secs_f64() / 1e9
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|x| x.parse().expect("threads and rounds are integers"))
        .collect();
    let (threads, rounds) = (*a.first().unwrap_or(&2), *a.get(1).unwrap_or(&3));
    const N: usize = 50_000_000;
    #[cfg(target_arch = "x86_64")]
    for round in 1..=rounds {
        let fmt = |v: Vec<f64>| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected just above.
            let v = per_core(threads, (N * 24 * 32) as f64, || unsafe {
                x86::chains512(N)
            });
            println!(
                "round {round}: avx512 GFLOP/s per core on {threads} threads: {}",
                fmt(v)
            );
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were detected just above.
            let v = per_core(threads, (N * 12 * 16) as f64, || unsafe {
                x86::chains256(N)
            });
            println!(
                "round {round}: avx2   GFLOP/s per core on {threads} threads: {}",
                fmt(v)
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("fma_peak measures x86-64 only ({threads} threads, {rounds} rounds asked)");
}
