//! criterion: the fused MNS loss, forward + backward, per backend and shape,
//! with the machine's SGEMM ceiling measured in the same run.
//!
//! Groups are named `{backend}/{op}/{B}x{N}x{K}`; throughput is
//! `Elements(6·B·N·K)` everywhere, so criterion's "elem/s" is effective
//! flop/s and rates compare directly:
//!
//! * `reference/mns` — the f64 specification (small shapes only);
//! * `portable/mns`, `avx2_fma/mns`, `avx512/mns` — the fused CPU kernels,
//!   each forced (those this CPU cannot run are left out);
//! * `cuda/mns` — the CUDA backend (host entry, copies included) when a GPU
//!   is available;
//! * `gemm/3mm` — the ceiling: the `gemm` crate (runtime-dispatched, with
//!   its AVX-512 kernels enabled by the `x86-v4` feature; same thread count) computing U·Vᵀ, S·V and Sᵀ·U for the same
//!   shapes — the 6·B·N·K flops of the loss with no softmax, materializing S.
//!
//! Run: `cargo bench --bench mns` (filter e.g. `-- 4096x8192x64`).
//! `MIXNEG_BENCH_SHAPES=small` runs the two smallest shapes only.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mixneg::{Backend, CpuBackend, Kernel, MnsOutput, ReferenceBackend};
use mixneg_train::linalg::{matmul, matmul_at_b};
use mixneg_train::synthetic::Synthetic;
use std::hint::black_box;

/// (B, B′, K): the benchmark ladder of BENCHMARKS.md, plus an awkward shape.
const SHAPES: [(usize, usize, usize); 7] = [
    (256, 256, 64),
    (1024, 1024, 64),
    (1000, 3001, 65),
    (4096, 4096, 64),
    (4096, 4096, 128),
    (8192, 8192, 64),
    (4096, 65536, 64),
];

/// U·Vᵀ, S·V and Sᵀ·U with the gemm crate (row-major, S of B×N).
struct ThreeMm {
    s: Vec<f32>,
    du: Vec<f32>,
    dv: Vec<f32>,
}

impl ThreeMm {
    fn new(b: usize, n: usize, k: usize) -> Self {
        Self {
            s: vec![0.0; b * n],
            du: vec![0.0; b * k],
            dv: vec![0.0; n * k],
        }
    }

    /// Through the trainer's `gemm` wrappers (safe, asserted extents,
    /// rayon's current pool).
    fn run(&mut self, u: &[f32], v: &[f32], b: usize, n: usize, k: usize) {
        matmul(b, n, k, u, v, true, &mut self.s); // S = U·Vᵀ
        matmul(b, k, n, &self.s, v, false, &mut self.du); // dU = S·V
        matmul_at_b(b, n, k, &self.s, u, &mut self.dv); // dV = Sᵀ·U
    }
}

/// The ceiling must compute the right products: check it on a tiny shape.
fn check_three_mm() {
    let (b, n, k) = (3, 5, 4);
    let d = Synthetic::new(b, n - b, k, 7);
    let mut mm = ThreeMm::new(b, n, k);
    mm.run(&d.u, &d.v, b, n, k);
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
    for i in 0..b {
        for j in 0..n {
            let want = dot(&d.u[i * k..][..k], &d.v[j * k..][..k]);
            assert!((mm.s[i * n + j] - want).abs() < 1e-5, "S[{i}][{j}]");
        }
        for c in 0..k {
            let want: f32 = (0..n).map(|j| mm.s[i * n + j] * d.v[j * k + c]).sum();
            assert!((mm.du[i * k + c] - want).abs() < 1e-4, "dU[{i}][{c}]");
        }
    }
    for j in 0..n {
        for c in 0..k {
            let want: f32 = (0..b).map(|i| mm.s[i * n + j] * d.u[i * k + c]).sum();
            assert!((mm.dv[j * k + c] - want).abs() < 1e-4, "dV[{j}][{c}]");
        }
    }
}

/// Checks the output of a fused backend's call before it is timed: rows
/// i < bs of lse, ℓ and dU depend only on u_i and all candidates, so they
/// must equal the f64 reference of the slice problem (the first bs queries,
/// every candidate; its dU carries 1/bs where the full call's carries 1/B),
/// under the test suite's tolerance policy; L and dV must be finite.
fn check_output(name: &str, d: &Synthetic, out: &MnsOutput) {
    let (b, k) = (d.u.len() / d.k, d.k);
    let bs = b.min(64);
    let case = common::Case::new(
        format!(
            "bench check {name} {b}x{}x{k} (first {bs} rows)",
            d.v.len() / k
        ),
        (d.u[..bs * k].to_vec(), d.v.clone(), d.log_q.clone()),
        Some(d.ids.clone()),
        k,
        0.05,
    );
    let want = mixneg::reference::mns_loss_f64(&case.input()).unwrap();
    let scale = b as f32 / bs as f32;
    let d_u: Vec<f32> = out.d_u[..bs * k].iter().map(|x| x * scale).collect();
    common::assert_tensor("lse", &case, &out.lse[..bs], &want.lse, 1);
    common::assert_tensor("row_loss", &case, &out.row_loss[..bs], &want.row_loss, 1);
    common::assert_tensor("d_u", &case, &d_u, &want.d_u, k);
    assert!(
        out.loss.is_finite() && out.d_v.iter().all(|x| x.is_finite()),
        "{name}: non-finite output"
    );
}

fn bench(c: &mut Criterion) {
    check_three_mm();
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(ReferenceBackend)];
    for k in Kernel::ALL {
        if let Ok(b) = CpuBackend::with_kernel(k) {
            backends.push(Box::new(b));
        }
    }
    #[cfg(feature = "cuda")]
    match mixneg::cuda::is_available()
        .and_then(|()| mixneg::CudaBackend::new(0).map_err(|e| e.to_string()))
    {
        Ok(g) => backends.push(Box::new(g)),
        Err(why) => eprintln!("skipping cuda: {why}"),
    }
    let small = std::env::var("MIXNEG_BENCH_SHAPES").as_deref() == Ok("small");
    // `cargo bench --bench mns -- FILTER`: the first argument that is neither
    // a flag nor a flag's value.
    let filter = {
        let with_value = [
            "--warm-up-time",
            "--measurement-time",
            "--sample-size",
            "--save-baseline",
            "--baseline",
            "--load-baseline",
            "--output-format",
            "--color",
            "--profile-time",
            "--significance-level",
            "--noise-threshold",
            "--confidence-level",
            "--nresamples",
            "--plotting-backend",
            "--format",
            "--logfile",
        ];
        let mut args = std::env::args().skip(1);
        let mut found = None;
        while let Some(a) = args.next() {
            if with_value.contains(&a.as_str()) {
                args.next();
            } else if !a.starts_with('-') {
                found = Some(a);
                break;
            }
        }
        found
    };
    for (b, bp, k) in SHAPES
        .into_iter()
        .take(if small { 2 } else { SHAPES.len() })
    {
        let n = b + bp;
        let d = Synthetic::new(b, bp, k, 1);
        let input = d.input();
        let flops = (6 * b * n * k) as u64;
        let shape = format!("{b}x{n}x{k}");
        for be in &backends {
            // The reference materializes B×N f64: only the small shapes.
            if be.name() == "reference" && b * n > 1024 * 4096 {
                continue;
            }
            let name = be.name().trim_start_matches("cpu/");
            let mut g = c.benchmark_group(format!("{name}/mns/{shape}"));
            g.throughput(Throughput::Elements(flops));
            g.sample_size(10);
            let mut out = MnsOutput::filled(b, n, k, f32::NAN);
            // Only the groups that will be timed (criterion's name filter,
            // taken as a substring here) are checked.
            let timed = filter
                .as_deref()
                .is_none_or(|f| format!("{name}/mns/{shape}/fwd_bwd").contains(f));
            if be.name() != "reference" && timed {
                be.mns_loss_into(&input, &mut out).unwrap();
                check_output(be.name(), &d, &out);
            }
            g.bench_function("fwd_bwd", |bench| {
                bench.iter(|| be.mns_loss_into(black_box(&input), &mut out).unwrap())
            });
            g.finish();
        }
        let mut g = c.benchmark_group(format!("gemm/3mm/{shape}"));
        g.throughput(Throughput::Elements(flops));
        g.sample_size(10);
        let mut mm = ThreeMm::new(b, n, k);
        g.bench_function("ceiling", |bench| {
            bench.iter(|| mm.run(black_box(&d.u), black_box(&d.v), b, n, k))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
