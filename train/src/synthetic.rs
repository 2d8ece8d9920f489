//! Reproducible synthetic problems for demos and benchmarks, defined so that
//! other languages can regenerate them bit for bit (see
//! `lab/peers.py`, used by `lab/gpu_peers.py`): every value is a pure function of its index.
//!
//! With h(x) = SplitMix64's finalizer of x and r(x) = (h(x) >> 40) / 2²⁴ − ½
//! (uniform in [−½, ½), exactly representable in f32):
//!
//! * u\[i\] = 3.46·r(seed·2³² + i)/√K (unit-variance rows of norm ≈ 1),
//! * v\[j\] = 3.46·r(seed·2³² + 2²⁸ + j)/√K, and for rows j < B
//!   v\[j\] ← 0.6·u\[j\] + 0.8·v\[j\] (the positive resembles its query),
//! * ids\[j\] = (j·7919) mod 4N, log_q\[j\] = −ln((j·7919) mod 5000 + 1) − 2.

/// SplitMix64's output function.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f32 {
    (splitmix(x) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

/// A synthetic B×K / N×K problem (N = B + B′), owning its data.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// B×K queries.
    pub u: Vec<f32>,
    /// N×K candidates.
    pub v: Vec<f32>,
    /// N log-probabilities.
    pub log_q: Vec<f32>,
    /// N item ids, with accidental hits.
    pub ids: Vec<i64>,
    /// K.
    pub k: usize,
}

impl Synthetic {
    /// Generate the problem (B, B′, K) of `seed`.
    pub fn new(b: usize, b_prime: usize, k: usize, seed: u64) -> Self {
        let n = b + b_prime;
        let scale = 3.46 / (k as f32).sqrt();
        let base = seed << 32;
        let u: Vec<f32> = (0..b * k).map(|i| scale * unit(base + i as u64)).collect();
        let mut v: Vec<f32> = (0..n * k)
            .map(|i| scale * unit(base + (1 << 28) + i as u64))
            .collect();
        v.iter_mut()
            .zip(&u)
            .for_each(|(v, &u)| *v = 0.6 * u + 0.8 * *v);
        let log_q = (0..n)
            .map(|j| -(((j * 7919) % 5000 + 1) as f32).ln() - 2.0)
            .collect();
        let ids = (0..n).map(|j| ((j * 7919) % (4 * n)) as i64).collect();
        Self {
            u,
            v,
            log_q,
            ids,
            k,
        }
    }

    /// The input at temperature 0.05 with accidental-hit removal.
    pub fn input(&self) -> mixneg::MnsInput<'_> {
        self.input_without_ids().ids(&self.ids)
    }

    /// The input at temperature 0.05, accidental hits kept (no ids).
    pub fn input_without_ids(&self) -> mixneg::MnsInput<'_> {
        mixneg::MnsInput::new(&self.u, &self.v, &self.log_q, self.k).temperature(0.05)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the definition: `lab/peers.py` regenerates these values
    /// (printed by its `synthetic(3, 2, 4)`), so a change here must change both.
    #[test]
    fn values_are_pinned() {
        let s = Synthetic::new(3, 2, 4, 1);
        let close = |a: f32, b: f32| (a - b).abs() <= 2e-7 * b.abs().max(1.0);
        assert!(
            close(s.u[0], 0.460_702_03) && close(s.u[1], -0.646_966_4),
            "{:?}",
            &s.u[..4]
        );
        assert!(
            close(s.v[0], 0.915_845_04) && close(s.v[3], 0.782_757_94),
            "{:?}",
            &s.v[..4]
        );
        assert_eq!(&s.ids, &[0, 19, 18, 17, 16]);
        assert!(close(s.log_q[0], -2.0) && close(s.log_q[1], -9.979_339));
    }
}
