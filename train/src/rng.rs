//! The trainer's seeded random numbers.

use crate::synthetic::splitmix;

/// A small seeded generator (SplitMix64 stream).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator's whole state (checkpoints).
    pub fn state(&self) -> u64 {
        self.0
    }
    /// A generator at a saved state.
    pub fn from_state(state: u64) -> Self {
        Self(state)
    }
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(splitmix(seed ^ 0xD1B5_4A32_D192_ED03))
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }
    /// Uniform in [0, 1).
    pub fn unif(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
    /// Shuffle `v` in place (Fisher–Yates, from the last element down).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.unif().max(1e-300), self.unif());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}
