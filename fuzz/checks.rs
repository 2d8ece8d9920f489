// The fuzz targets' bodies, shared with `tests/fuzz_corpus.rs` (which replays
// the kept corpus through them on every `cargo test`).
//
// `api`: arbitrary bytes become shapes, options and raw f32 bit patterns
// (NaN, ±∞, denormals, huge values included) for the public API; every
// backend must either return an error — the same error validation for all —
// or finite results. `loss_file`: arbitrary bytes as a `mixneg loss` input
// file; parsing must fail cleanly or yield an input the CPU backend accepts
// or rejects with an error.

#[allow(dead_code)]
pub fn api(data: &[u8]) {
    use mixneg::{Backend, CpuBackend, Kernel, MnsInput, ReferenceBackend};
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
    let moderate = tau.abs() % 2.0;
    let tau = if flags & 0x40 != 0 { tau } else { 0.05 + if moderate.is_finite() { moderate } else { 0.0 } };
    let mut x = MnsInput::new(&u, &v, &log_q, k).temperature(tau).correct_positive(flags & 8 == 0);
    if flags & 2 != 0 {
        x = x.row_weight(&w);
    }
    if flags & 4 != 0 {
        x = x.ids(&ids);
    }
    let want = ReferenceBackend.mns_loss(&x);
    for kern in Kernel::ALL {
        let Ok(be) = CpuBackend::with_kernel(kern) else { continue };
        let got = be.mns_loss(&x);
        match (&want, &got) {
            (Err(a), Err(c)) => assert_eq!(format!("{a}"), format!("{c}")),
            (Ok(_), Ok(o)) => {
                assert!(o.loss.is_finite(), "silent non-finite loss");
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
    if let Ok(f) = mixneg::io::LossFile::parse(data) {
        let input = f.input(f.temperature.unwrap_or(1.0), f.correct_positive.unwrap_or(true));
        if let Ok(o) = CpuBackend::new().mns_loss(&input) {
            assert!(o.loss.is_finite());
        }
    }
}
