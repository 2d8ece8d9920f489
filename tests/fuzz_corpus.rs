//! Replays the fuzzers' kept corpus and every crash reproducer
//! (`fuzz/corpus/*`, `fuzz/regressions/*`) through the fuzz targets' checks,
//! on every `cargo test` — no fuzzer needed. The fuzzers themselves:
//! `cargo install cargo-fuzz`, then `cargo fuzz run api -s none -O` (stable
//! toolchain; no sanitizer).

mod checks {
    include!("../fuzz/checks.rs");
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{} fails its check", f.display());
            n += 1;
        }
    }
    n
}

#[test]
fn api_corpus_and_regressions() {
    let n = replay("api", checks::api);
    assert!(n > 0, "no corpus for the api target");
}

#[test]
fn loss_file_corpus_and_regressions() {
    let n = replay("loss_file", checks::loss_file);
    assert!(n > 0, "no corpus for the loss_file target");
}
