// The fuzz targets' bodies, shared with `tests/fuzz_corpus.rs` (which replays
// the kept corpus through them on every `cargo test`).
//
// `api`: arbitrary bytes become shapes, options and raw f32 bit patterns
// (NaN, ±∞, denormals, huge values included) for the public API; every
// backend must either return an error — the same error validation for all —
// or finite results; now and then the embeddings are bf16 (the top halves of
// the same bit patterns), which must give the bits of f32 embeddings holding
// the same values. `loss_file`: arbitrary bytes as a `mixneg loss` input
// file; parsing must fail cleanly or yield an input the CPU backend accepts
// or rejects with an error.

#[allow(dead_code)]
pub fn api(data: &[u8]) {
    use mixneg::{Backend, CpuBackend, Floats, Kernel, MnsInput, ReferenceBackend};
    if data.len() < 8 {
        return;
    }
    let b = 1 + data[0] as usize % 9;
    let n = b + data[1] as usize % 13;
    let k = 1 + data[2] as usize % 12;
    let flags = data[3];
    let tau = f32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    let rest = &data[8..];
    let mut at = 0usize;
    let mut next = || -> f32 {
        if rest.len() < 4 {
            return 0.5;
        }
        let i = at % (rest.len() / 4);
        at += 1;
        let x = f32::from_le_bytes([rest[4 * i], rest[4 * i + 1], rest[4 * i + 2], rest[4 * i + 3]]);
        // Mostly moderate values, sometimes the raw bit pattern.
        if flags & 0x80 != 0 { x } else if x.is_finite() { (x % 4.0) * 0.5 } else { 0.25 }
    };
    // Wrong lengths now and then (flags bit 0).
    let ulen = b * k + (flags & 1) as usize;
    let u: Vec<f32> = (0..ulen).map(|_| next()).collect();
    let v: Vec<f32> = (0..n * k).map(|_| next()).collect();
    let log_q: Vec<f32> = (0..n).map(|_| next()).collect();
    let w: Vec<f32> = (0..b).map(|_| next()).collect();
    let ids: Vec<i64> = (0..n).map(|j| rest.get(j).map_or(0, |&x| (x % 4) as i64)).collect();
    // bf16 embeddings (flags bit 5): x16 takes them as bit patterns, x as
    // the f32 values they are.
    let bf16 = flags & 0x20 != 0;
    let top = |x: &[f32]| -> Vec<u16> { x.iter().map(|x| (x.to_bits() >> 16) as u16).collect() };
    let (ub, vb) = (top(&u), top(&v));
    let widen = |x: &[u16]| -> Vec<f32> { x.iter().map(|&b| mixneg::bf16_to_f32(b)).collect() };
    let (u, v) = if bf16 { (widen(&ub), widen(&vb)) } else { (u, v) };
    let moderate = tau.abs() % 2.0;
    let tau = if flags & 0x40 != 0 { tau } else { 0.05 + if moderate.is_finite() { moderate } else { 0.0 } };
    // A positive offset, now and then one past the last valid (N − B + 1).
    let offset = rest.first().map_or(0, |&o| o as usize % (n - b + 2));
    fn options<'a>(x: MnsInput<'a>, flags: u8, tau: f32, w: &'a [f32], ids: &'a [i64], offset: usize) -> MnsInput<'a> {
        let mut x = x.temperature(tau).correct_positive(flags & 8 == 0);
        if flags & 2 != 0 {
            x = x.row_weight(w);
        }
        if flags & 4 != 0 {
            x = x.ids(ids);
        }
        if flags & 0x10 != 0 {
            x = x.positive_offset(offset);
        }
        x
    }
    let x = options(MnsInput::new(&u, &v, &log_q, k), flags, tau, &w, &ids, offset);
    let x16 = options(MnsInput::with_floats(Floats::Bf16(&ub), Floats::Bf16(&vb), &log_q, k), flags, tau, &w, &ids, offset);
    let want = ReferenceBackend.mns_loss(&x);
    // One backend per kernel for the whole fuzzing run: it keeps its scratch
    // from input to input (other shapes, other padding), and must give the
    // bits of a fresh backend every time.
    static KEPT: std::sync::OnceLock<Vec<CpuBackend>> = std::sync::OnceLock::new();
    let kept = KEPT.get_or_init(|| Kernel::ALL.into_iter().filter_map(|k| CpuBackend::with_kernel(k).ok()).collect());
    let bits = |r: &Result<mixneg::MnsOutput, mixneg::MnsError>| -> Result<Vec<u32>, String> {
        match r {
            Ok(o) => Ok([o.loss].iter().chain(&o.d_u).chain(&o.d_v).chain(&o.lse).chain(&o.row_loss).map(|x| x.to_bits()).collect()),
            Err(e) => Err(format!("{e}")),
        }
    };
    for kept_be in kept {
        let be = CpuBackend::with_kernel(kept_be.kernel()).expect("available when KEPT was built");
        let got = be.mns_loss(&x);
        assert_eq!(bits(&got), bits(&kept_be.mns_loss(&x)), "kept scratch changed the result ({})", be.name());
        if bf16 {
            assert_eq!(bits(&got), bits(&be.mns_loss(&x16)), "bf16 embeddings differ from their f32 values ({})", be.name());
        }
        match (&want, &got) {
            (Err(a), Err(c)) => assert_eq!(format!("{a}"), format!("{c}")),
            (Ok(_), Ok(o)) => {
                assert!(o.loss.is_finite() && o.d_temperature.is_finite(), "silent non-finite loss or dL/dτ");
                for t in [&o.d_u, &o.d_v, &o.lse, &o.row_loss] {
                    assert!(t.iter().all(|x| x.is_finite()), "silent non-finite output");
                }
            }
            _ => panic!("backends disagree on validity: {:?} vs {:?}", want.as_ref().err(), got.as_ref().err()),
        }
    }
}

#[allow(dead_code)]
pub fn loss_file(data: &[u8]) {
    use mixneg::{Backend, CpuBackend};
    use mixneg_train::io::{LossFile, LossResult};
    if let Ok(f) = LossFile::parse(data) {
        // The writer: what was read is written back, and that reads back to
        // the same value (compared through Debug, so that a NaN read back
        // equals itself; the metadata's order in the bytes is a HashMap's).
        let bytes = f.to_bytes().expect("a parsed file can be written");
        let again = LossFile::parse(&bytes).expect("a written file can be read");
        assert_eq!(format!("{again:?}"), format!("{f:?}"), "input round trip");
        let (t, cp) = (f.temperature.unwrap_or(1.0), f.correct_positive.unwrap_or(true));
        if let Ok(o) = CpuBackend::new().mns_loss(&f.input(t, cp)) {
            assert!(o.loss.is_finite() && o.d_temperature.is_finite());
            let r = LossResult::new(&o, (f.b, f.n, f.k), t, cp);
            let bytes = r.to_bytes().expect("a result can be written");
            let back = LossResult::parse(&bytes).expect("a written result can be read");
            assert_eq!(back, r, "output round trip");
        }
    }
}
