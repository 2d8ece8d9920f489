//! A tower: hashed sparse features → embedding bag → MLP (ReLU between
//! layers) → optional L2 normalization, with its backward pass and the
//! Adagrad / Adam updates. Dense products go through [`crate::linalg`].
//!
//! The bag pools each feature field on its own and sums the fields:
//! x = Σ_f (1/n_f)·Σ_{h ∈ field f} E[h mod buckets], so an item's id weighs
//! the same whatever its number of genres or title tokens ([`pool_weights`]).

use crate::linalg::{matmul, matmul_at_b};

/// Which optimizer updates the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Optimizer {
    /// Adagrad (the MNS paper's choice): θ ← θ − lr·g/√(Σg² + ε).
    Adagrad,
    /// Adam with β₁ = 0.9, β₂ = 0.999 (lazy for embedding rows).
    Adam,
}

/// Optimizer state of one parameter vector.
#[derive(Debug, Clone)]
struct Slots {
    s1: Vec<f32>,
    s2: Vec<f32>,
}

impl Slots {
    fn new(n: usize) -> Self {
        Self {
            s1: vec![0.0; n],
            s2: vec![0.0; n],
        }
    }
}

/// Update `w[off..off+g.len()]` with gradient `g`.
fn update(
    opt: Optimizer,
    lr: f32,
    step: u64,
    w: &mut [f32],
    st: &mut Slots,
    off: usize,
    g: &[f32],
) {
    match opt {
        Optimizer::Adagrad => {
            for (k, &gk) in g.iter().enumerate() {
                let a = &mut st.s1[off + k];
                *a += gk * gk;
                w[off + k] -= lr * gk / (a.sqrt() + 1e-8);
            }
        }
        Optimizer::Adam => {
            let (b1, b2) = (0.9f32, 0.999f32);
            let c1 = 1.0 - b1.powi(step as i32);
            let c2 = 1.0 - b2.powi(step as i32);
            for (k, &gk) in g.iter().enumerate() {
                let m = &mut st.s1[off + k];
                *m = b1 * *m + (1.0 - b1) * gk;
                let v = &mut st.s2[off + k];
                *v = b2 * *v + (1.0 - b2) * gk * gk;
                w[off + k] -= lr * (st.s1[off + k] / c1) / ((st.s2[off + k] / c2).sqrt() + 1e-8);
            }
        }
    }
}

/// The embedding bag of one example's features: (row, weight) pairs with
/// row = h mod `buckets` and weight 1/n_f, n_f the number of the example's
/// features in h's field ([`crate::features::feature_field`]): each field is
/// mean-pooled, and the fields are summed.
pub fn pool_weights(feats: &[u64], buckets: usize) -> Vec<(usize, f32)> {
    let mut per_field: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    for &h in feats {
        *per_field
            .entry(crate::features::feature_field(h))
            .or_default() += 1;
    }
    feats
        .iter()
        .map(|&h| {
            let n = per_field[&crate::features::feature_field(h)];
            ((h % buckets as u64) as usize, 1.0 / n as f32)
        })
        .collect()
}

/// A dense layer y = x·W + b (W in×out).
#[derive(Debug, Clone)]
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    fan_in: usize,
    fan_out: usize,
    sw: Slots,
    sb: Slots,
}

/// One tower.
#[derive(Debug, Clone)]
pub struct Tower {
    /// Embedding table, `buckets` × `emb`.
    table: Vec<f32>,
    st: Slots,
    buckets: usize,
    emb: usize,
    layers: Vec<Dense>,
    l2: bool,
    /// Output dimension.
    pub out_dim: usize,
}

/// What the backward pass needs from a forward pass.
#[derive(Debug)]
pub struct Cache {
    rows: usize,
    /// (bucket, pooling weight) lists per example.
    bags: Vec<Vec<(usize, f32)>>,
    /// Inputs of every layer (the first is the pooled embedding), each rows×fan_in.
    acts: Vec<Vec<f32>>,
    /// Pre-normalization output and norms, when L2-normalizing.
    raw: Vec<f32>,
    norms: Vec<f32>,
}

impl Tower {
    /// A tower with `buckets` hashed embedding rows of size `emb`, hidden
    /// layer sizes `hidden`, output `out`, seeded initialization.
    pub fn new(
        buckets: usize,
        emb: usize,
        hidden: &[usize],
        out: usize,
        l2: bool,
        seed: u64,
    ) -> Self {
        let mut rng = crate::rng::Rng::new(seed);
        let table = (0..buckets * emb)
            .map(|_| (rng.normal() * 0.1) as f32)
            .collect();
        let mut dims = vec![emb];
        dims.extend_from_slice(hidden);
        dims.push(out);
        let layers = dims
            .windows(2)
            .map(|w| {
                let sd = (2.0 / w[0] as f64).sqrt();
                Dense {
                    w: (0..w[0] * w[1])
                        .map(|_| (rng.normal() * sd) as f32)
                        .collect(),
                    b: vec![0.0; w[1]],
                    fan_in: w[0],
                    fan_out: w[1],
                    sw: Slots::new(w[0] * w[1]),
                    sb: Slots::new(w[1]),
                }
            })
            .collect();
        Self {
            table,
            st: Slots::new(buckets * emb),
            buckets,
            emb,
            layers,
            l2,
            out_dim: out,
        }
    }

    /// Forward pass for examples with the given hashed features: rows × out.
    pub fn forward(&self, feats: &[&[u64]]) -> (Vec<f32>, Cache) {
        let rows = feats.len();
        let e = self.emb;
        let bags: Vec<Vec<(usize, f32)>> = feats
            .iter()
            .map(|f| pool_weights(f, self.buckets))
            .collect();
        let mut x = vec![0.0f32; rows * e];
        // Row loops this light stay on the calling thread: a fork-join per
        // layer cost more (idle workers spinning in sched_yield) than it saved.
        x.chunks_mut(e).zip(&bags).for_each(|(dst, bag)| {
            for &(r, w) in bag {
                dst.iter_mut()
                    .zip(&self.table[r * e..(r + 1) * e])
                    .for_each(|(d, &t)| *d += w * t);
            }
        });
        let mut acts = vec![];
        for (li, l) in self.layers.iter().enumerate() {
            let mut y = vec![0.0f32; rows * l.fan_out];
            matmul(rows, l.fan_out, l.fan_in, &x, &l.w, false, &mut y);
            let last = li + 1 == self.layers.len();
            y.chunks_mut(l.fan_out).for_each(|row| {
                row.iter_mut().zip(&l.b).for_each(|(v, &b)| {
                    *v += b;
                    if !last && *v < 0.0 {
                        *v = 0.0;
                    }
                })
            });
            acts.push(std::mem::replace(&mut x, y));
        }
        let (mut raw, mut norms) = (vec![], vec![]);
        if self.l2 {
            raw = x.clone();
            norms = x
                .chunks(self.out_dim)
                .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6))
                .collect();
            x.chunks_mut(self.out_dim)
                .zip(&norms)
                .for_each(|(r, &n)| r.iter_mut().for_each(|v| *v /= n));
        }
        (
            x,
            Cache {
                rows,
                bags,
                acts,
                raw,
                norms,
            },
        )
    }

    /// Backward pass from d(output) and the parameter update.
    pub fn backward_update(
        &mut self,
        cache: Cache,
        d_out: &[f32],
        opt: Optimizer,
        lr: f32,
        step: u64,
    ) {
        let rows = cache.rows;
        let mut g = d_out.to_vec();
        if self.l2 {
            // y = x/|x|: dx = (dy − y·⟨y, dy⟩)/|x|.
            let d = self.out_dim;
            g.chunks_mut(d)
                .zip(cache.raw.chunks(d))
                .zip(&cache.norms)
                .for_each(|((gr, xr), &n)| {
                    let dot: f32 = gr.iter().zip(xr).map(|(a, b)| a * b / n).sum();
                    gr.iter_mut()
                        .zip(xr)
                        .for_each(|(a, &b)| *a = (*a - b / n * dot) / n);
                });
        }
        for li in (0..self.layers.len()).rev() {
            let (fan_in, fan_out) = (self.layers[li].fan_in, self.layers[li].fan_out);
            let x = &cache.acts[li];
            // ReLU of this layer's output (all but the last).
            if li + 1 < self.layers.len() {
                let y = &cache.acts[li + 1];
                g.iter_mut().zip(y).for_each(|(a, &v)| {
                    if v <= 0.0 {
                        *a = 0.0
                    }
                });
            }
            let mut dw = vec![0.0f32; fan_in * fan_out];
            matmul_at_b(rows, fan_in, fan_out, x, &g, &mut dw);
            let mut db = vec![0.0f32; fan_out];
            g.chunks(fan_out)
                .for_each(|r| db.iter_mut().zip(r).for_each(|(d, &v)| *d += v));
            let mut dx = vec![0.0f32; rows * fan_in];
            matmul(rows, fan_in, fan_out, &g, &self.layers[li].w, true, &mut dx);
            let l = &mut self.layers[li];
            update(opt, lr, step, &mut l.w, &mut l.sw, 0, &dw);
            update(opt, lr, step, &mut l.b, &mut l.sb, 0, &db);
            g = dx;
        }
        // Embedding rows: each gets its pooling weight of the example's gradient.
        let e = self.emb;
        let mut acc: std::collections::HashMap<usize, Vec<f32>> = std::collections::HashMap::new();
        for (bag, gr) in cache.bags.iter().zip(g.chunks(e)) {
            for &(r, w) in bag {
                let slot = acc.entry(r).or_insert_with(|| vec![0.0; e]);
                slot.iter_mut().zip(gr).for_each(|(s, &v)| *s += v * w);
            }
        }
        let mut rows_touched: Vec<_> = acc.into_iter().collect();
        rows_touched.sort_by_key(|(r, _)| *r);
        for (r, gr) in rows_touched {
            update(opt, lr, step, &mut self.table, &mut self.st, r * e, &gr);
        }
    }

    /// Every parameter and optimizer slot, in a fixed order (checkpoints).
    pub fn state_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut v = vec![&mut self.table, &mut self.st.s1, &mut self.st.s2];
        for l in &mut self.layers {
            v.extend([
                &mut l.w,
                &mut l.b,
                &mut l.sw.s1,
                &mut l.sw.s2,
                &mut l.sb.s1,
                &mut l.sb.s2,
            ]);
        }
        v
    }
}
