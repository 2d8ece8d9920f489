//! Training data: the dataset type, seeded synthetic worlds
//! (`worlds.rs`) and readers for real interaction logs (`logs.rs`; RecBole
//! files in [`crate::recbole`]).
//!
//! **Synthetic, `--world zipf`** (the original world). Users and items get
//! planted latent factors a_u, b_i ∈ R^d (N(0, 1/d) entries); items get Zipf
//! popularity pop_i ∝ 1/rank^s over a random ranking. A user's interactions
//! are drawn from P(i | u) ∝ pop_i^β · exp(⟨a_u, b_i⟩/τ₀) — popularity-biased
//! logs — by sampling-importance-resampling: a pool of candidates drawn
//! ∝ pop^β, then one of them ∝ exp(⟨a_u, b_i⟩/τ₀). A share of the items is
//! *fresh*: never in the training logs, but in the corpus with features, and
//! in the test interactions at full popularity.
//!
//! **Synthetic, `--world paper`** (the mechanism of the MNS paper). Items belong to one of C categories; b_i = √w·m_c + √(1−w)·ε_i and
//! a_u = √w·m_{c_u} + √(1−w)·η_u (category centroids m and noise with
//! N(0, 1/d) entries). Every item has an *exposure* e_i ∝ 1/rank^s over a
//! random ranking and, independently of everything else, a latent quality:
//! a share s_bad is low-quality. The logs are drawn exactly (no resampling)
//! from
//!
//! ```text
//! P(i | u) ∝ e_i^β · exp(⟨a_u, b_i⟩/τ₀ − Δ·bad_i)
//! ```
//!
//! so a low-quality item is shown as often as any other but chosen e^Δ times
//! less often: most of them have 0–3 interactions ("sparse feedback").
//! Content features (category and noisy projections of b_i) are shared by
//! good and bad items: nothing but feedback tells them apart. A share of the
//! *good* items is fresh: never in the training logs, and in the test law with
//! exposure × `fresh_exposure` (new items are shown less) — the items MNS's
//! uniform negatives demote for lack of feedback without deserving it.
//! `bad_share = 0` is the built-in null world.
//!
//! **Features.** Hashed categorical values tagged with their field
//! ([`feature`]): the id, and for synthetic worlds noisy projections of the
//! planted factors, standardised and cut into equal-frequency buckets (so a
//! tower can generalize to fresh items through content).
//!
//! **Real logs.** `user,item[,timestamp]` CSV/TSV, MovieLens `ratings.dat`
//! (`user::item::rating::timestamp`) and `u.data` (tab-separated, 4 fields)
//! with ids as the only features and a leave-last-out split; and RecBole
//! atomic files (`.inter` with `.user` and `.item`) with every feature
//! field, in [`crate::recbole`].

mod logs;
mod worlds;

pub use crate::features::{equal_frequency_buckets, feature, feature_field, feature_str};
pub use crate::rng::Rng;
pub use logs::{drop_seen_test_pairs, read_logs};
pub use worlds::{Oracle, SynthConfig, World, softmax_in_place, synthetic};

/// One user–item interaction.
pub type Pair = (u32, u32);

/// A dataset ready for training and evaluation.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Number of users.
    pub n_users: usize,
    /// Number of items (the corpus, fresh items included).
    pub n_items: usize,
    /// Hashed features of every user ([`feature`]: field-tagged).
    pub user_feats: Vec<Vec<u64>>,
    /// Hashed features of every item.
    pub item_feats: Vec<Vec<u64>>,
    /// Training interactions, in log order.
    pub train: Vec<Pair>,
    /// Held-out interactions.
    pub test: Vec<Pair>,
    /// Items that are new at test time: absent from the training logs on
    /// purpose (synthetic), or first rated after the split time (logs).
    pub fresh: Vec<bool>,
    /// Low-quality items: the planted bad items of the paper world, or for
    /// logs the items whose mean training rating is at most
    /// `--low-quality-rating` (items without a training rating are not).
    pub low_quality: Vec<bool>,
    /// The planted model, for synthetic data.
    pub oracle: Option<Oracle>,
}
