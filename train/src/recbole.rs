//! RecBole atomic files: `NAME.inter` with `NAME.user` and `NAME.item`
//! beside it (each optional but the first). Each file is tab-separated with
//! a header of `name:type` fields, types `token`, `token_seq`
//! (space-separated tokens), `float` and `float_seq`.
//!
//! * `.inter` needs `user_id` and `item_id`; `rating` and `timestamp` are
//!   used when present (without a timestamp, file order is time).
//! * Features: the id first (fields 100 and 200: an id-only tower keeps
//!   just it), then every other field of `.user` / `.item`: one feature per
//!   `token`, one per token of a `token_seq` (lower-cased), a `float` as
//!   its floor, a `float_seq` element-wise; a field whose name contains
//!   `zip` keeps its first two characters (a region, not a person).
//! * Every item of `.item` is in the corpus, rated or not.
//! * Positives: the interactions rated at least `--min-rating` (all, without
//!   a rating field or the flag).
//! * Splits (`--split`): `user`, each user's last positive by time is their
//!   test item (ties by file order; users with one positive only train); or
//!   `time`, the last `--test-share` of all positives by time (ties by file
//!   order) are the test set. *Fresh* items are those with no interaction
//!   of any rating before the split: for `time`, first rated after the split
//!   time; for `user`, rated only in test positions.
//! * Quality proxy: an item whose mean rating over the training part (every
//!   rating, positive or not) is at most `--low-quality-rating` is
//!   low-quality.

use crate::Error;
use crate::data::{Dataset, Pair, drop_seen_test_pairs, feature, feature_str};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How the training and test sets are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// Each user's last positive by time is held out.
    User,
    /// The last share of all positives by time is held out.
    Time,
}

/// Options of the RecBole reader (the flags of `mixneg train --logs X.inter`).
#[derive(Debug, Clone, clap::Args)]
pub struct LogConfig {
    /// RecBole logs: the smallest rating that counts as a positive.
    #[arg(long)]
    pub min_rating: Option<f64>,
    /// RecBole logs: how to split train and test.
    #[arg(long, value_enum, default_value_t = Split::User)]
    pub split: Split,
    /// RecBole logs, `--split time`: the share of positives held out.
    #[arg(long, default_value_t = 0.1)]
    pub test_share: f64,
    /// RecBole logs: items whose mean training rating is at most this are
    /// low-quality.
    #[arg(long, default_value_t = 2.5)]
    pub low_quality_rating: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            min_rating: None,
            split: Split::User,
            test_share: 0.1,
            low_quality_rating: 2.5,
        }
    }
}

/// A parsed atomic file: field names, types and rows.
struct Atomic {
    path: PathBuf,
    names: Vec<String>,
    types: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Atomic {
    fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut lines = text.lines().enumerate();
        let header = lines
            .next()
            .ok_or_else(|| Error::Invalid(format!("{}: empty file", path.display())))?
            .1;
        let (mut names, mut types) = (vec![], vec![]);
        for f in header.split('\t') {
            let (n, t) = f.trim().rsplit_once(':').ok_or_else(|| {
                Error::Invalid(format!(
                    "{}:1: header field {f:?} is not name:type",
                    path.display()
                ))
            })?;
            if !["token", "token_seq", "float", "float_seq"].contains(&t) {
                return Err(Error::Invalid(format!(
                    "{}:1: field {n:?} has type {t:?} (token, token_seq, float or float_seq)",
                    path.display()
                )));
            }
            names.push(n.to_string());
            types.push(t.to_string());
        }
        let mut rows = vec![];
        for (k, line) in lines {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let v: Vec<String> = line.split('\t').map(|s| s.trim().to_string()).collect();
            if v.len() != names.len() {
                return Err(Error::Invalid(format!(
                    "{}:{}: {} fields, the header has {}",
                    path.display(),
                    k + 1,
                    v.len(),
                    names.len()
                )));
            }
            rows.push((k + 1, v));
        }
        Ok(Self {
            path: path.to_path_buf(),
            names,
            types,
            rows,
        })
    }

    fn col(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    fn float(&self, line: usize, col: usize, v: &str) -> Result<f64, Error> {
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}:{line}: field {} = {v:?} is not a finite number",
                    self.path.display(),
                    self.names[col]
                ))
            })
    }

    /// Features of every row keyed by the `id` column: the id (field
    /// `field0`) first, then the other fields (`field0 + 1 + k`).
    fn features(&self, id: &str, field0: u64) -> Result<HashMap<String, Vec<u64>>, Error> {
        let ic = self
            .col(id)
            .ok_or_else(|| Error::Invalid(format!("{}: no {id} field", self.path.display())))?;
        let mut out = HashMap::new();
        for (line, row) in &self.rows {
            let mut f = vec![];
            for (k, v) in row.iter().enumerate() {
                if k == ic || v.is_empty() {
                    continue;
                }
                let field = field0 + 1 + k as u64;
                let zip = self.names[k].contains("zip");
                match self.types[k].as_str() {
                    "token" if zip => {
                        f.push(feature_str(field, &v.chars().take(2).collect::<String>()))
                    }
                    "token" => f.push(feature_str(field, v)),
                    "token_seq" => f.extend(
                        v.split_whitespace()
                            .map(|t| feature_str(field, &t.to_lowercase())),
                    ),
                    _ => {
                        for x in v.split_whitespace() {
                            let x = self.float(*line, k, x)?;
                            f.push(feature(field, x.floor() as i64 as u64));
                        }
                    }
                }
            }
            out.insert(row[ic].clone(), f);
        }
        Ok(out)
    }
}

/// Read `NAME.inter` (and `NAME.user`, `NAME.item` when present) into a
/// dataset as the module documentation says.
pub fn read(inter: &Path, cfg: &LogConfig) -> Result<Dataset, Error> {
    if !(cfg.test_share > 0.0 && cfg.test_share < 1.0) {
        return Err(format!("--test-share must be in (0, 1), got {}", cfg.test_share).into());
    }
    let it = Atomic::read(inter)?;
    let need = |n: &str| {
        it.col(n).ok_or_else(|| {
            Error::Invalid(format!("{}: no {n} field in the header", inter.display()))
        })
    };
    let (uc, ic) = (need("user_id")?, need("item_id")?);
    let (rc, tc) = (it.col("rating"), it.col("timestamp"));
    if cfg.min_rating.is_some() && rc.is_none() {
        return Err(format!("{}: --min-rating needs a rating field", inter.display()).into());
    }
    let sibling = |ext: &str| inter.with_extension(ext);
    let item_file = sibling("item");
    let user_file = sibling("user");
    let item_feats = if item_file.exists() {
        Atomic::read(&item_file)?.features("item_id", 200)?
    } else {
        HashMap::new()
    };
    let user_feats = if user_file.exists() {
        Atomic::read(&user_file)?.features("user_id", 100)?
    } else {
        HashMap::new()
    };
    // Items: those of .item in file order (sorted by id for determinism),
    // then those only in .inter.
    let mut items: HashMap<String, u32> = HashMap::new();
    let mut item_names: Vec<String> = item_feats.keys().cloned().collect();
    item_names.sort();
    for n in &item_names {
        let k = items.len() as u32;
        items.insert(n.clone(), k);
    }
    let mut users: HashMap<String, u32> = HashMap::new();
    let mut user_names: Vec<String> = vec![];
    // (user, item, rating, time, line)
    let mut ev: Vec<(u32, u32, f64, f64, usize)> = Vec::with_capacity(it.rows.len());
    for (line, row) in &it.rows {
        let (u, i) = (&row[uc], &row[ic]);
        if u.is_empty() || i.is_empty() {
            return Err(format!("{}:{line}: empty user_id or item_id", inter.display()).into());
        }
        let nu = users.len() as u32;
        let uid = *users.entry(u.clone()).or_insert_with(|| {
            user_names.push(u.clone());
            nu
        });
        if !items.contains_key(i) {
            let k = items.len() as u32;
            items.insert(i.clone(), k);
            item_names.push(i.clone());
        }
        let iid = items[i];
        let r = match rc {
            Some(c) => it.float(*line, c, &row[c])?,
            None => f64::NAN,
        };
        let t = match tc {
            Some(c) => it.float(*line, c, &row[c])?,
            None => *line as f64,
        };
        ev.push((uid, iid, r, t, *line));
    }
    if ev.is_empty() {
        return Err(format!("{}: no interactions", inter.display()).into());
    }
    ev.sort_by(|a, b| a.3.total_cmp(&b.3).then(a.4.cmp(&b.4)));
    let positive = |e: &(u32, u32, f64, f64, usize)| cfg.min_rating.is_none_or(|m| e.2 >= m);
    // in_test[k]: event k (in time order) is after the split.
    let n = ev.len();
    let in_test: Vec<bool> = match cfg.split {
        Split::Time => {
            let pos: Vec<usize> = (0..n).filter(|&k| positive(&ev[k])).collect();
            let cut = ((1.0 - cfg.test_share) * pos.len() as f64).floor() as usize;
            // Everything from the first held-out positive on is after the split.
            let from = pos.get(cut).copied().unwrap_or(n);
            (0..n).map(|k| k >= from).collect()
        }
        Split::User => {
            let mut last: HashMap<u32, usize> = HashMap::new();
            let mut count: HashMap<u32, usize> = HashMap::new();
            for (k, e) in ev.iter().enumerate() {
                if positive(e) {
                    last.insert(e.0, k);
                    *count.entry(e.0).or_default() += 1;
                }
            }
            (0..n)
                .map(|k| count.get(&ev[k].0).is_some_and(|&c| c >= 2) && last[&ev[k].0] == k)
                .collect()
        }
    };
    let ni = items.len();
    let (mut train, mut test): (Vec<Pair>, Vec<Pair>) = (vec![], vec![]);
    let (mut before, mut after) = (vec![false; ni], vec![false; ni]);
    let (mut rsum, mut rcount) = (vec![0.0f64; ni], vec![0u32; ni]);
    for (k, e) in ev.iter().enumerate() {
        if in_test[k] {
            after[e.1 as usize] = true;
        } else {
            before[e.1 as usize] = true;
            if e.2.is_finite() {
                rsum[e.1 as usize] += e.2;
                rcount[e.1 as usize] += 1;
            }
        }
        if positive(e) {
            if in_test[k] {
                test.push((e.0, e.1));
            } else {
                train.push((e.0, e.1));
            }
        }
    }
    let test = drop_seen_test_pairs(&train, test);
    let low_quality = (0..ni)
        .map(|i| rcount[i] > 0 && rsum[i] / rcount[i] as f64 <= cfg.low_quality_rating)
        .collect();
    let feats = |names: &[String], map: &HashMap<String, Vec<u64>>, field0: u64| -> Vec<Vec<u64>> {
        names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let mut f = vec![feature(field0, k as u64)];
                f.extend(map.get(n).into_iter().flatten().copied());
                f
            })
            .collect()
    };
    Ok(Dataset {
        n_users: users.len(),
        n_items: ni,
        user_feats: feats(&user_names, &user_feats, 100),
        item_feats: feats(&item_names, &item_feats, 200),
        train,
        test,
        fresh: (0..ni).map(|i| after[i] && !before[i]).collect(),
        low_quality,
        oracle: None,
    })
}
