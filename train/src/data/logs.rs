//! Interaction logs as a dataset: CSV/TSV and MovieLens files with ids as
//! the only features, and the test pairs a ranking could never hit.

use super::{Dataset, Pair};
use crate::Error;
use crate::features::feature;
use std::collections::HashMap;
use std::path::Path;

/// The test pairs whose item is not among the same user's training items.
/// Evaluation ranks every item but the user's training items
/// (`eval::evaluate`), so such a pair could never be hit: kept, ~7% of the
/// synthetic world's test pairs would count as certain misses.
pub fn drop_seen_test_pairs(train: &[Pair], test: Vec<Pair>) -> Vec<Pair> {
    let seen: std::collections::HashSet<Pair> = train.iter().copied().collect();
    test.into_iter().filter(|p| !seen.contains(p)).collect()
}

/// Read interaction logs: `user,item[,timestamp]` CSV or TSV (a header line
/// whose second field is not a number is skipped), MovieLens `ratings.dat`
/// (`::`-separated, 4 fields) or `u.data` (tab-separated, 4 fields: user,
/// item, rating, timestamp). Leave-last-out split by timestamp (file order
/// when there is none). A malformed line is an error naming file and line.
pub fn read_logs(path: &Path) -> Result<Dataset, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut users: HashMap<String, u32> = HashMap::new();
    let mut items: HashMap<String, u32> = HashMap::new();
    let mut events: Vec<(u32, u32, f64, usize)> = vec![];
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = if line.contains("::") {
            line.split("::").collect()
        } else if line.contains('\t') {
            line.split('\t').collect()
        } else {
            line.split(',').collect()
        };
        let bad = |why: &str| {
            Error::Invalid(format!(
                "{}:{}: {why}: {line:?}",
                path.display(),
                lineno + 1
            ))
        };
        if lineno == 0
            && fields.len() >= 2
            && fields[1].trim().parse::<f64>().is_err()
            && !line.contains("::")
        {
            continue; // a header
        }
        // MovieLens layouts have 4 fields: user, item, rating, timestamp.
        let (u, i, t) = match fields.len() {
            2 => (fields[0], fields[1], None),
            3 => (fields[0], fields[1], Some(fields[2])),
            4 => (fields[0], fields[1], Some(fields[3])),
            n => return Err(bad(&format!("expected 2 to 4 fields, found {n}"))),
        };
        let (u, i) = (u.trim(), i.trim());
        if u.is_empty() || i.is_empty() {
            return Err(bad("empty user or item"));
        }
        let t = match t {
            Some(t) => t
                .trim()
                .parse::<f64>()
                .map_err(|_| bad("timestamp is not a number"))?,
            None => lineno as f64,
        };
        let nu = users.len() as u32;
        let uid = *users.entry(u.to_string()).or_insert(nu);
        let ni = items.len() as u32;
        let iid = *items.entry(i.to_string()).or_insert(ni);
        events.push((uid, iid, t, lineno));
    }
    if events.is_empty() {
        return Err(format!("{}: no interactions", path.display()).into());
    }
    events.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.3.cmp(&b.3)));
    let mut last: HashMap<u32, usize> = HashMap::new();
    let mut count: HashMap<u32, usize> = HashMap::new();
    for (k, e) in events.iter().enumerate() {
        last.insert(e.0, k);
        *count.entry(e.0).or_default() += 1;
    }
    let (mut train, mut test) = (vec![], vec![]);
    for (k, e) in events.iter().enumerate() {
        if count[&e.0] >= 2 && last[&e.0] == k {
            test.push((e.0, e.1));
        } else {
            train.push((e.0, e.1));
        }
    }
    let test = drop_seen_test_pairs(&train, test);
    let (nu, ni) = (users.len(), items.len());
    Ok(Dataset {
        n_users: nu,
        n_items: ni,
        user_feats: (0..nu).map(|u| vec![feature(100, u as u64)]).collect(),
        item_feats: (0..ni).map(|i| vec![feature(200, i as u64)]).collect(),
        train,
        test,
        fresh: vec![false; ni],
        low_quality: vec![false; ni],
        oracle: None,
    })
}
