//! criterion: the fused MNS loss, forward + backward, per backend and shape.
//!
//! Groups are named `{backend}/mns/{B}x{N}x{K}`; throughput is
//! `Elements(6·B·N·K)`, so criterion's "elem/s" is effective flop/s.
//! Run: `cargo bench --bench mns` (filter e.g. `-- avx2_fma/mns/4096x8192x64`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mixneg::{Backend, CpuBackend, Kernel, MnsInput, MnsOutput, ReferenceBackend};
use std::hint::black_box;

/// (B, B′, K) of issue #2.
const SHAPES: [(usize, usize, usize); 3] = [(1024, 1024, 64), (4096, 4096, 64), (4096, 4096, 128)];

struct Data {
    u: Vec<f32>,
    v: Vec<f32>,
    log_q: Vec<f32>,
    k: usize,
}

fn data(b: usize, bp: usize, k: usize) -> Data {
    // A cheap LCG: benchmark data needs variety, not statistical quality.
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.4 / (k as f32).sqrt()
    };
    let n = b + bp;
    Data {
        u: (0..b * k).map(|_| next()).collect(),
        v: (0..n * k).map(|_| next()).collect(),
        log_q: (0..n)
            .map(|j| -((j % 1000) as f32 + 1.0).ln() - 5.0)
            .collect(),
        k,
    }
}

fn bench(c: &mut Criterion) {
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(ReferenceBackend)];
    for k in Kernel::ALL {
        if let Ok(b) = CpuBackend::with_kernel(k) {
            backends.push(Box::new(b));
        }
    }
    // The CUDA backend through the host entry point (copies included; the
    // device-resident timing with CUDA events is `mixneg gpu-bench`).
    #[cfg(feature = "cuda")]
    match mixneg::cuda::is_available()
        .and_then(|()| mixneg::CudaBackend::new(0).map_err(|e| e.to_string()))
    {
        Ok(g) => backends.push(Box::new(g)),
        Err(why) => eprintln!("skipping cuda: {why}"),
    }
    for (b, bp, k) in SHAPES {
        let n = b + bp;
        let d = data(b, bp, k);
        let input = MnsInput::new(&d.u, &d.v, &d.log_q, d.k).temperature(0.05);
        for be in &backends {
            // The reference materializes B×N f64 and is ~100× slower: only the smallest shape.
            if be.name() == "reference" && b > 1024 {
                continue;
            }
            let name = be.name().trim_start_matches("cpu/");
            let mut g = c.benchmark_group(format!("{name}/mns/{b}x{n}x{k}"));
            g.throughput(Throughput::Elements((6 * b * n * k) as u64));
            g.sample_size(10);
            let mut out = MnsOutput::filled(b, n, k, 0.0);
            g.bench_function("fwd_bwd", |bench| {
                bench.iter(|| be.mns_loss_into(black_box(&input), &mut out).unwrap())
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
