//! Hashed categorical features: the field in the top bits, so that a tower
//! pools each field on its own, and equal-frequency buckets for continuous
//! values.

use crate::synthetic::splitmix;

const VALUE_BITS: u32 = 48;

/// A hashed categorical feature: the field in the top 16 bits (so that a
/// tower can pool each field on its own, [`feature_field`]) and a hash of
/// (field, value) in the low 48.
pub fn feature(field: u64, value: u64) -> u64 {
    ((field & 0xFFFF) << VALUE_BITS) | (splitmix((field << VALUE_BITS) ^ value) >> 16)
}

/// The field of a [`feature`].
pub fn feature_field(f: u64) -> u64 {
    f >> VALUE_BITS
}

/// A hashed categorical feature of a string value.
pub fn feature_str(field: u64, value: &str) -> u64 {
    let h = value.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    });
    feature(field, h)
}

/// Equal-frequency buckets of `values`: bucket b holds the values ranked
/// b·n/nb to (b+1)·n/nb (ties by index), so every bucket holds n/nb ± 1
/// values whatever their scale.
pub fn equal_frequency_buckets(values: &[f64], nb: usize) -> Vec<u64> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]).then(a.cmp(&b)));
    let mut out = vec![0u64; n];
    for (r, &i) in order.iter().enumerate() {
        out[i] = (r * nb.max(1) / n.max(1)) as u64;
    }
    out
}
