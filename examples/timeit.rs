//! Times the fused CPU loss at one shape, and the forward-only call
//! alternating with it: `cargo run --release --example timeit -- B BP K [reps]`.
use mixneg::{Backend, CpuBackend, MnsInput, MnsOutput};
use std::time::Instant;
fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let (b, bp, k, reps) = (a[0], a[1], a[2], *a.get(3).unwrap_or(&10));
    let n = b + bp;
    let mut s = 1u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.4 / (k as f32).sqrt()
    };
    let u: Vec<f32> = (0..b * k).map(|_| next()).collect();
    let v: Vec<f32> = (0..n * k).map(|_| next()).collect();
    let lq: Vec<f32> = (0..n)
        .map(|j| -((j % 1000) as f32 + 1.0).ln() - 5.0)
        .collect();
    let be = CpuBackend::from_env().unwrap();
    let input = MnsInput::new(&u, &v, &lq, k).temperature(0.05);
    let mut out = MnsOutput::filled(b, n, k, 0.0);
    let (mut ts, mut fs) = (vec![], vec![]);
    for _ in 0..reps {
        let t = Instant::now();
        be.mns_loss_into(&input, &mut out).unwrap();
        ts.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        be.mns_forward(&input).unwrap();
        fs.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    fs.sort_by(f64::total_cmp);
    let med = ts[ts.len() / 2];
    let fwd = fs[fs.len() / 2];
    println!(
        "{} {b}x{n}x{k}: median {:.2} ms, {:.1} GFLOP/s, loss {}",
        be.name(),
        med * 1e3,
        6.0 * (b * n * k) as f64 / med / 1e9,
        out.loss
    );
    println!(
        "  forward only: median {:.2} ms ({:.2}x the full call)",
        fwd * 1e3,
        fwd / med
    );
}
