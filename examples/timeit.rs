//! Times the fused CPU loss at one shape: the full call at each precision
//! tier this CPU computes (F32, and Bf16 with AVX512_BF16), in interleaved
//! rounds, and the forward-only F32 call beside them, with a hash of each
//! tier's output bits:
//! `cargo run --release --example timeit -- B BP K [reps]`.
use mixneg::{Backend, CpuBackend, MnsInput, MnsOutput, Precision};
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
    let tiers: Vec<Precision> = [Precision::F32, Precision::Bf16]
        .into_iter()
        .filter(|&t| be.supports(t))
        .collect();
    let input = MnsInput::new(&u, &v, &lq, k).temperature(0.05);
    let mut out = MnsOutput::filled(b, n, k, 0.0);
    let mut times = vec![vec![]; tiers.len()];
    let mut losses = vec![0.0; tiers.len()];
    let mut hashes = vec![0u64; tiers.len()];
    let mut fs = vec![];
    for _ in 0..reps {
        for (t, &tier) in tiers.iter().enumerate() {
            let x = input.precision(tier);
            let start = Instant::now();
            be.mns_loss_into(&x, &mut out).unwrap();
            times[t].push(start.elapsed().as_secs_f64());
            losses[t] = out.loss;
            hashes[t] = bits_hash(&out);
        }
        let start = Instant::now();
        be.mns_forward(&input).unwrap();
        fs.push(start.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let f32_med = median(&mut times[0]);
    for (t, tier) in tiers.iter().enumerate() {
        let med = median(&mut times[t]);
        println!(
            "{} {b}x{n}x{k} {tier:?}: median {:.2} ms, {:.1} GFLOP/s, loss {} ({:.2}x the F32 call's speed), output bits {:016x}",
            be.name(),
            med * 1e3,
            6.0 * (b * n * k) as f64 / med / 1e9,
            losses[t],
            f32_med / med,
            hashes[t]
        );
    }
    let fwd = median(&mut fs);
    println!(
        "  forward only (F32): median {:.2} ms ({:.2}x the full call)",
        fwd * 1e3,
        fwd / f32_med
    );
}

/// FNV-1a of every output's bits: equal hashes, equal results.
fn bits_hash(o: &MnsOutput) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let words = o.d_u.iter().chain(&o.d_v).chain(&o.lse).chain(&o.row_loss);
    for x in words.chain([&o.loss, &o.d_temperature]) {
        h = (h ^ x.to_bits() as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
