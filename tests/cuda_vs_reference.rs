//! The CUDA backend on a real GPU: the shape sweep and every test vector
//! against the f64 reference and the CPU backend, the device-resident entry
//! point, and sharing one backend across threads.
//!
//! With no usable device every test prints `skipping: <reason>` and passes;
//! `REQUIRE_GPU=1` turns the skip into a failure (the GPU check script sets it).
//! `MIXNEG_TEST_PATH=simt` runs every test on the SIMT kernels and
//! `MIXNEG_TEST_PATH=tc` only the tensor-core ones, so that the GPU check can
//! test each path in its own process (a fault poisons its whole context).
#![cfg(feature = "cuda")]

mod common;
use common::*;
use mixneg::cuda::{self, CudaBackend, DeviceInput, DeviceOutput};
use mixneg::{Backend, CpuBackend, MnsOutput, reference};
use std::sync::OnceLock;

fn gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    let r = GPU.get_or_init(|| {
        cuda::is_available()?;
        let mut b = CudaBackend::new(0).map_err(|e| e.to_string())?;
        if test_path().as_deref() == Some("simt") {
            b.set_tensor_cores(false);
        }
        Ok(b)
    });
    match r {
        Ok(b) => Some(b),
        Err(why) => {
            assert!(
                std::env::var("REQUIRE_GPU").as_deref() != Ok("1"),
                "REQUIRE_GPU=1 but no GPU: {why}"
            );
            skip(why);
            None
        }
    }
}

/// A second backend on the same device that always runs the SIMT kernels
/// (the check of the tensor-core path, which `gpu()` runs on sm_80+).
fn simt_gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Option<CudaBackend>> = OnceLock::new();
    gpu()?;
    if test_path().as_deref() == Some("tc") {
        skip("MIXNEG_TEST_PATH=tc: the SIMT kernels are tested in their own process");
        return None;
    }
    GPU.get_or_init(|| {
        let mut b = CudaBackend::new(0).ok()?;
        b.set_tensor_cores(false);
        Some(b)
    })
    .as_ref()
}

/// `MIXNEG_TEST_PATH`: `simt`, `tc` or unset (both).
fn test_path() -> Option<String> {
    std::env::var("MIXNEG_TEST_PATH").ok()
}

fn check(be: &CudaBackend, case: &Case) {
    let want = reference::mns_loss_f64(&case.input()).unwrap();
    // On tensor cores the yardstick adds as they do.
    let case = &if be.uses_tensor_cores(case.b(), case.n(), case.k, case.precision) {
        case.on_tensor_cores()
    } else {
        case.clone()
    };
    let _ = magnitudes(case); // computed once, carried by the clones below
    let mut out = MnsOutput::filled(case.b(), case.n(), case.k, f32::NAN);
    be.mns_loss_into(&case.input(), &mut out).unwrap();
    let ctx = Case {
        name: format!("{} [cuda {}]", case.name, be.arch()),
        ..case.clone()
    };
    assert_output(&ctx, &out, want.loss, &want.d_u, &want.d_v, &want.lse);
    assert_tensor("row_loss", &ctx, &out.row_loss, &want.row_loss, 1);
    // The forward-only call: the same forward kernels, so the same bits.
    let fwd = be.mns_forward(&case.input()).unwrap();
    assert_eq!(
        fwd.loss.to_bits(),
        out.loss.to_bits(),
        "{}: forward loss",
        ctx.name
    );
    assert_eq!(fwd.lse, out.lse, "{}: forward lse", ctx.name);
    assert_eq!(fwd.row_loss, out.row_loss, "{}: forward row loss", ctx.name);
    // And against the CPU backend: both f32, each within the policy of the
    // truth (the CPU computes F32 only, and a lower tier may flip near-ties).
    if case.precision != mixneg::Precision::F32 {
        return;
    }
    let cpu = CpuBackend::new().mns_loss(&case.input()).unwrap();
    assert_top1_agrees(&ctx, &out.top1, &cpu.top1, "the CPU");
}

/// The device call's loss and gradients, copied back, are the host entry
/// point's bits: the same kernels on the same data.
fn assert_host_bits(
    be: &CudaBackend,
    s: &std::sync::Arc<cuda::cudarc::driver::CudaStream>,
    c: &Case,
    out: &DeviceOutput,
) {
    let loss = s.clone_dtoh(&out.loss).unwrap()[0];
    let grads = (
        s.clone_dtoh(&out.d_u).unwrap(),
        s.clone_dtoh(&out.d_v).unwrap(),
    );
    s.synchronize().unwrap();
    let host = be.mns_loss(&c.input()).unwrap();
    assert_eq!(
        loss.to_bits(),
        host.loss.to_bits(),
        "same kernels, same bits"
    );
    assert_eq!(grads, (host.d_u, host.d_v));
}

#[test]
fn shape_sweep() {
    let Some(be) = gpu() else { return };
    for &b in &[1, 2, 3, 17, 64, 113] {
        for &bp in &[0, 1, 7, 203, 1000] {
            for &k in &[1, 9, 65] {
                check(be, &random_case(1, b, bp, k));
            }
        }
    }
    for &k in &[1, 3, 7, 8, 9, 31, 64, 65, 128] {
        for (b, bp) in [(1, 0), (17, 7), (64, 203), (113, 1000)] {
            check(be, &random_case(2, b, bp, k));
        }
    }
    check(be, &random_case(3, 512, 1536, 64));
}

/// The same sweep's second half on the SIMT kernels (forced), and on the
/// tensor-core kernels at the TF32 and bf16 tiers (their own policy:
/// against a plain implementation rounding the same factors).
#[test]
fn shape_sweep_simt_and_lower_tiers() {
    let Some(be) = gpu() else { return };
    // Under MIXNEG_TEST_PATH=tc the SIMT half runs in the other process.
    let simt = simt_gpu();
    assert!(
        simt.is_some() || test_path().as_deref() == Some("tc"),
        "a second backend on the same GPU"
    );
    for &k in &[1, 3, 7, 8, 9, 31, 64, 65, 128] {
        for (b, bp) in [(1, 0), (17, 7), (64, 203), (113, 1000), (300, 900)] {
            let c = random_case(4, b, bp, k);
            if let Some(simt) = simt {
                check(simt, &c);
            }
            check(be, &c.at(mixneg::Precision::Tf32));
            check(be, &c.at(mixneg::Precision::Bf16));
        }
    }
}

/// Positive offsets at both ends and in between, with duplicate ids.
#[test]
fn positive_offsets() {
    let Some(be) = gpu() else { return };
    for (b, bp, k) in [(1, 7, 3), (17, 203, 9), (300, 1100, 65)] {
        for o in [0, 1, bp / 2, bp] {
            let mut c = random_case(5, b, bp, k);
            c.positive_offset = o;
            c.ids = Some((0..b + bp).map(|j| (j % 5) as i64).collect());
            c.name = format!("offset {o} of {bp} (B={b}, K={k})");
            check(be, &c);
        }
    }
}

#[test]
fn every_vector() {
    let Some(be) = gpu() else { return };
    for (case, exp) in load_vectors() {
        let out = be.mns_loss(&case.input()).unwrap();
        let tc = be.uses_tensor_cores(case.b(), case.n(), case.k, case.precision);
        let ctx = Case {
            name: format!("{} [cuda]", case.name),
            ..if tc {
                case.on_tensor_cores()
            } else {
                case.clone()
            }
        };
        assert_output(&ctx, &out, exp.loss, &exp.d_u, &exp.d_v, &exp.lse);
    }
}

#[test]
fn numerical_edges() {
    let Some(be) = gpu() else { return };
    let mut c = random_case(5, 33, 70, 16);
    c.u.iter_mut().for_each(|x| *x *= 30.0);
    c.v.iter_mut().for_each(|x| *x *= 30.0);
    c.temperature = 1.0;
    c.name = "huge logits".into();
    check(be, &c);
    let mut c = random_case(7, 30, 60, 8);
    c.ids = Some((0..90).map(|j| (j % 3) as i64).collect());
    c.correct_positive = false;
    c.row_weight = Some((0..30).map(|i| (i % 4) as f32).collect());
    c.name = "heavy duplicates, uncorrected, weights".into();
    check(be, &c);
    let mut c = random_case(9, 7, 9, 5);
    c.ids = Some(vec![3; 16]);
    let out = be.mns_loss(&c.input()).unwrap();
    assert_eq!(out.loss, 0.0);
    assert!(out.d_u.iter().chain(&out.d_v).all(|&x| x == 0.0));
}

/// A new stream of `be` and the case's u, v, log_q and ids copied to it.
fn on_device(
    be: &CudaBackend,
    c: &Case,
) -> (
    std::sync::Arc<cuda::cudarc::driver::CudaStream>,
    [cuda::cudarc::driver::CudaSlice<f32>; 3],
    cuda::cudarc::driver::CudaSlice<i64>,
) {
    let s = be.context().new_stream().unwrap();
    let f = [&c.u, &c.v, &c.log_q].map(|x| s.clone_htod(x).unwrap());
    let ids = s.clone_htod(c.ids.as_ref().unwrap()).unwrap();
    (s, f, ids)
}

/// The F32 device input of `c` on buffers made by [`on_device`].
fn device_input<'a>(
    c: &Case,
    u: &'a cuda::cudarc::driver::CudaSlice<f32>,
    v: &'a cuda::cudarc::driver::CudaSlice<f32>,
    lq: &'a cuda::cudarc::driver::CudaSlice<f32>,
    ids: &'a cuda::cudarc::driver::CudaSlice<i64>,
) -> DeviceInput<'a> {
    DeviceInput {
        u,
        v,
        log_q: lq,
        ids: Some(ids),
        row_weight: None,
        dim: c.k,
        temperature: c.temperature,
        correct_positive: true,
        positive_offset: c.positive_offset,
        precision: mixneg::Precision::F32,
    }
}

#[test]
fn device_entry_point_matches_host_entry_point() {
    let Some(be) = gpu() else { return };
    let c = random_case(31, 200, 600, 48);
    let (s, [u, v, lq], ids) = on_device(be, &c);
    let x = device_input(&c, &u, &v, &lq, &ids);
    let mut out = DeviceOutput::zeros(&s, c.b(), c.n(), c.k).unwrap();
    be.mns_loss_device(&s, &x, &mut out).unwrap();
    assert_host_bits(be, &s, &c, &out);
    // Shape errors are reported, not launched.
    let bad = DeviceInput { dim: 7, ..x };
    assert!(be.mns_loss_device(&s, &bad, &mut out).is_err());
}

#[test]
fn shared_across_threads_gives_the_same_bits() {
    let Some(be) = gpu() else { return };
    let c = random_case(32, 100, 300, 32);
    let alone = be.mns_loss(&c.input()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let out = be.mns_loss(&c.input()).unwrap();
                assert_eq!(out.d_v, alone.d_v);
                assert_eq!(out.loss.to_bits(), alone.loss.to_bits());
            });
        }
    });
}

/// The raw-address entry point (what the Python binding calls with PyTorch's
/// pointers and stream) writes the host entry point's bits in place; a null
/// address is an error, not a launch; the timed call names every launch.
#[test]
fn raw_entry_point_matches_host_entry_point() {
    use mixneg::cuda::RawCall;
    use mixneg::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
    let Some(be) = gpu() else { return };
    let c = random_case(33, 130, 400, 40);
    let (s, [u, v, lq], ids) = on_device(be, &c);
    let mut out = DeviceOutput::zeros(&s, c.b(), c.n(), c.k).unwrap();
    {
        let (pu, _g1) = u.device_ptr(&s);
        let (pv, _g2) = v.device_ptr(&s);
        let (pq, _g3) = lq.device_ptr(&s);
        let (pi, _g4) = ids.device_ptr(&s);
        let (loss, _g5) = out.loss.device_ptr_mut(&s);
        let (d_u, _g6) = out.d_u.device_ptr_mut(&s);
        let (d_v, _g7) = out.d_v.device_ptr_mut(&s);
        let (lse, _g8) = out.lse.device_ptr_mut(&s);
        let (row_loss, _g9) = out.row_loss.device_ptr_mut(&s);
        let (top1, _g10) = out.top1.device_ptr_mut(&s);
        let (d_temperature, _g11) = out.d_temperature.device_ptr_mut(&s);
        let call = RawCall {
            u: pu,
            v: pv,
            log_q: pq,
            ids: pi,
            row_weight: 0,
            b: c.b(),
            n: c.n(),
            k: c.k,
            temperature: c.temperature,
            correct_positive: true,
            positive_offset: c.positive_offset,
            precision: mixneg::Precision::F32,
            loss,
            d_u,
            d_v,
            lse,
            row_loss,
            top1,
            d_temperature,
        };
        // SAFETY: every address is a live slice of this context with the
        // call's lengths, kept by the guards until the stream is synchronized.
        unsafe { be.mns_loss_raw(s.cu_stream(), &call, false) }.unwrap();
        let null = RawCall { d_v: 0, ..call };
        // SAFETY: as above; the call is refused before any launch.
        let err = unsafe { be.mns_loss_raw(s.cu_stream(), &null, false) }.unwrap_err();
        assert!(err.to_string().contains("d_v"), "{err}");
        s.synchronize().unwrap();
    }
    assert_host_bits(be, &s, &c, &out);
    let x = device_input(&c, &u, &v, &lq, &ids);
    let timed = be.mns_loss_device_timed(&s, &x, &mut out).unwrap();
    assert_eq!(timed.len(), 7, "{timed:?}");
    assert!(timed.iter().all(|(_, ms)| ms.is_finite() && *ms >= 0.0));
}
