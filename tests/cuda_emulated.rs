//! The CUDA kernels (`kernels/mns.cu`) run on the CPU emulator of
//! `tests/cuda_emu/` — each CUDA thread an OS thread, barriers and warp
//! shuffles emulated — in the launch sequence and with the grid [`Plan`] of
//! the CUDA backend, against the f64 reference. This checks the kernels'
//! arithmetic, tiling, masking and reductions on machines without a GPU; the
//! real-device tests are in `cuda_vs_reference.rs`.
//!
//! Needs a C++20 compiler (`g++`); without one it prints `skipping: …`,
//! unless `REQUIRE_CXX=1` (set by CI), which makes that a failure.
#![cfg(feature = "cuda")]

mod common;
use common::*;
use mixneg::cuda::Plan;
use mixneg::cuda::abi::{self, Buffers};
use mixneg::{MnsOutput, Precision};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Compiles `tests/cuda_emu/<source>` with g++ into the test's temporary
/// directory as `exe`; Err(g++'s error) when g++ cannot be run, a panic when
/// it runs and fails.
fn compile_cxx(source: &str, exe: &str) -> Result<PathBuf, std::io::Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(exe);
    let o = Command::new("g++")
        .args([
            "-O2",
            "-std=c++20",
            "-pthread",
            "-Wall",
            "-Wno-unknown-pragmas",
            "-o",
        ])
        .arg(&exe)
        .arg(root.join("tests/cuda_emu").join(source))
        .output()?;
    assert!(
        o.status.success(),
        "{source} does not compile:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(exe)
}

fn emulator() -> Option<&'static Path> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| match compile_cxx("harness.cpp", "mns_emu") {
        Ok(exe) => Some(exe),
        Err(e) => {
            let msg = format!("no C++ compiler (g++: {e})");
            assert!(
                std::env::var("REQUIRE_CXX").as_deref() != Ok("1"),
                "REQUIRE_CXX=1 but {msg}"
            );
            skip(&msg);
            None
        }
    })
    .as_deref()
}

/// The SIMT plan, or the tensor-core plan at the case's precision (K ≤ 128).
fn plan_for(case: &Case, sms: usize, tc: bool) -> Plan {
    let (b, n, k) = (case.b(), case.n(), case.k);
    if tc {
        Plan::tensor_core(b, n, k, sms, case.precision).expect("K <= 128")
    } else {
        Plan::new(b, n, k, sms)
    }
}

/// Run one case on the emulated kernels: the launch list of
/// `mixneg::cuda::abi::launches` for `plan` — exactly what the backend
/// launches — with buffer numbers for device addresses; with
/// `forward_only` the first three only (forward, row merge, loss), what the
/// backend's forward-only call launches.
fn run_launches(exe: &Path, case: &Case, plan: &Plan, forward_only: bool) -> MnsOutput {
    emulate(exe, case, plan, forward_only, false).0
}

/// What the emulator counted in one launch (`MNS_EMU_STATS=1`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct LaunchStats {
    /// The kernel's index (`mixneg::cuda::Kernel::index`).
    kernel: usize,
    /// Warp-wide fragment loads from shared memory (`mns_lds`).
    loads: u64,
    /// Their bank conflicts: extra passes beyond one per load.
    conflicts: u64,
    /// Warp-level mma instructions.
    mma: u64,
}

/// [`run_launches`], and with `stats` the emulator's counts per launch.
fn emulate(
    exe: &Path,
    case: &Case,
    plan: &Plan,
    forward_only: bool,
    stats: bool,
) -> (MnsOutput, Vec<LaunchStats>) {
    let (b, n, k) = (case.b(), case.n(), case.k);
    // Buffers in this order; a pointer field holds its number + 1.
    let f32s = |x: &[f32]| -> Vec<u8> { x.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let mut bufs: Vec<(usize, Option<Vec<u8>>)> = vec![];
    let mut add = |bytes: usize, data: Option<Vec<u8>>| -> u64 {
        bufs.push((bytes, data));
        bufs.len() as u64
    };
    let mut a = Buffers {
        u: add(4 * b * k, Some(f32s(&case.u))),
        v: add(4 * n * k, Some(f32s(&case.v))),
        log_q: add(4 * n, Some(f32s(&case.log_q))),
        ..Buffers::default()
    };
    if let Some(ids) = &case.ids {
        a.ids = add(
            8 * n,
            Some(ids.iter().flat_map(|x| x.to_le_bytes()).collect()),
        );
    }
    if let Some(w) = &case.row_weight {
        a.row_weight = add(4 * b, Some(f32s(w)));
    }
    a.part_m = add(4 * plan.splits * b, None);
    a.part_s = add(4 * plan.splits * b, None);
    if plan.tc.is_some() {
        a.part_o = add(4 * plan.splits * b * k, None);
    }
    a.lse = add(4 * b, None);
    a.row_loss = add(4 * b, None);
    a.top1 = add(4 * b, None);
    a.wloss = add(4 * b, None);
    a.mrow = add(4 * b, None);
    a.coef = add(4 * b, None);
    a.gdiag = add(4 * b, None);
    a.loss = add(4, None);
    a.d_u = add(4 * b * k, None);
    a.d_v = add(4 * n * k, None);
    a.d_temperature = add(4, None);
    a.dtau_part = add(8 * abi::dtau_parts(b * k), None);
    let opt = abi::Options {
        temperature: case.temperature,
        correct_positive: case.correct_positive,
        positive_offset: case.positive_offset,
    };
    let all = abi::launches(plan, (b, n, k), opt, &a);
    let launches = &all[..if forward_only { 3 } else { all.len() }];
    let mut buf: Vec<u8> = vec![];
    buf.extend((bufs.len() as u64).to_le_bytes());
    for (bytes, data) in &bufs {
        buf.extend((*bytes as u64).to_le_bytes());
        buf.push(data.is_some() as u8);
        if let Some(d) = data {
            assert_eq!(d.len(), *bytes);
            buf.extend(d);
        }
    }
    buf.extend((launches.len() as u64).to_le_bytes());
    for l in launches {
        let p = l.params.bytes();
        for x in [
            l.kernel.index() as u32,
            l.grid.0,
            l.grid.1,
            l.threads,
            l.smem,
            p.len() as u32,
        ] {
            buf.extend(x.to_le_bytes());
        }
        buf.extend(p);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tag = format!(
        "{}-{b}-{n}-{k}-{}-{:?}",
        std::process::id(),
        plan.splits,
        std::thread::current().id()
    );
    let (inp, outp) = (
        dir.join(format!("in-{tag}")),
        dir.join(format!("out-{tag}")),
    );
    std::fs::write(&inp, &buf).unwrap();
    let run = Command::new(exe)
        .arg(&inp)
        .arg(&outp)
        .env("MNS_EMU_STATS", if stats { "1" } else { "0" })
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "{}: emulator failed: {stderr}",
        case.name
    );
    let counts = stderr
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 8 && w[0] == "stats").then(|| LaunchStats {
                kernel: w[1].parse().unwrap(),
                loads: w[3].parse().unwrap(),
                conflicts: w[5].parse().unwrap(),
                mma: w[7].parse().unwrap(),
            })
        })
        .collect();
    let raw = std::fs::read(&outp).unwrap();
    let _ = (std::fs::remove_file(&inp), std::fs::remove_file(&outp));
    // Every buffer comes back in order: slice out the outputs.
    let mut at = 0;
    let mut out_bytes = vec![];
    for (bytes, _) in &bufs {
        out_bytes.push(&raw[at..at + bytes]);
        at += bytes;
    }
    assert_eq!(at, raw.len(), "emulator output size");
    let f = |id: u64| -> Vec<f32> {
        out_bytes[id as usize - 1]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let top1 = out_bytes[a.top1 as usize - 1]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) != 0)
        .collect();
    let out = MnsOutput {
        loss: f(a.loss)[0],
        d_u: f(a.d_u),
        d_v: f(a.d_v),
        lse: f(a.lse),
        row_loss: f(a.row_loss),
        top1,
        d_temperature: f(a.d_temperature)[0],
    };
    (out, counts)
}

/// The emulator's C++ compiler lays the parameter structs of `mns.cu` out
/// exactly as `src/cuda/abi.rs` does (size and every field offset).
#[test]
fn parameter_structs_have_the_host_layout() {
    let Some(exe) = emulator() else { return };
    let text = Command::new(exe).arg("--layout").stdout_ok();
    let mut want = vec![];
    for (name, size, fields) in abi::layout() {
        want.push(format!("{name} {size}"));
        for (f, off) in fields {
            want.push(format!("{name}.{f} {off}"));
        }
    }
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got, want, "g++ layout (left) vs src/cuda/abi.rs (right)");
}

/// The SIMT kernels on `case` against the f64 reference.
fn check(exe: &Path, case: &Case, sms: usize) {
    check_plan(exe, case, &plan_for(case, sms, false), "simt");
}

/// The SIMT kernels and, where K ≤ 128, the tensor-core kernels at the
/// case's precision (F32: 3xTF32) — both under the same f32 policy.
fn check_paths(exe: &Path, case: &Case, sms: usize) {
    check(exe, case, sms);
    if case.k <= 128 {
        check_plan(exe, case, &plan_for(case, sms, true), "tensor cores");
    }
}

/// [`check_paths`], and the tensor-core kernels at the lower tiers too
/// (each under its own yardstick, see `emulated_tensor_core_kernels_…`).
fn check_every_tier(exe: &Path, case: &Case, sms: usize) {
    check_paths(exe, case, sms);
    if case.k <= 128 {
        for tier in [Precision::Tf32, Precision::Bf16] {
            let c = case.at(tier);
            check_plan(exe, &c, &plan_for(&c, sms, true), "tensor cores");
        }
    }
}

fn check_plan(exe: &Path, case: &Case, plan: &Plan, path: &str) {
    let want = mixneg::reference::mns_loss_f64(&case.input()).unwrap();
    let out = run_launches(exe, case, plan, false);
    // On tensor cores the yardstick adds as they do.
    let case = &if plan.tc.is_some() {
        case.on_tensor_cores()
    } else {
        case.clone()
    };
    let ctx = Case {
        name: format!(
            "{} [emulated cuda, {path}, {} splits]",
            case.name, plan.splits
        ),
        ..case.clone()
    };
    assert_output(&ctx, &out, want.loss, &want.d_u, &want.d_v, &want.lse);
    assert_tensor("row_loss", &ctx, &out.row_loss, &want.row_loss, 1);
    assert_top1_agrees(&ctx, &out.top1, &want.top1, "the reference");
}

/// The SM counts the awkward shapes are planned for, shape by shape: one to
/// many column splits.
const SMS: [usize; 12] = [1, 132, 4, 132, 1, 8, 132, 2, 1, 1, 1, 1];

#[test]
fn emulated_kernels_match_the_reference_on_awkward_shapes() {
    let Some(exe) = emulator() else { return };
    // Tails in every tile dimension: B, N, K not multiples of 64 or 16,
    // K > 64 (several component slices), one to many column splits.
    let more = [(113, 1000, 31), (70, 30, 130)];
    for ((b, bp, k), sms) in AWKWARD.into_iter().chain(more).zip(SMS) {
        check(exe, &random_case(21, b, bp, k), sms);
    }
}

/// The tensor-core kernels (3xTF32, one-pass TF32, bf16) against the f64
/// reference on the same awkward shapes, each K class (≤ 32, ≤ 64, ≤ 128),
/// K a multiple of 4 (cp.async staging) and not (plain loads), one to many
/// column splits (the flash-decoding merge of O), and splits long enough
/// that both stages of each kernel's pipeline are refilled. F32 passes the
/// f32 policy; TF32 and bf16 the same policy measured against a plain
/// implementation that rounds the same factors to the tier.
#[test]
fn emulated_tensor_core_kernels_match_the_reference_on_awkward_shapes() {
    let Some(exe) = emulator() else { return };
    // Each K class's top (32, 128), and one split of 7 column tiles and 3
    // row tiles for dV: each pipeline stage is refilled (cp.async at K = 20,
    // plain loads at K = 19, class 128 at K = 72).
    let more = [(113, 1000, 32), (70, 30, 128), (9, 140, 100)]
        .into_iter()
        .chain([(150, 250, 20), (150, 250, 19), (130, 70, 72)]);
    for ((b, bp, k), sms) in AWKWARD.into_iter().chain(more).zip(SMS) {
        let c = random_case(21, b, bp, k);
        for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
            let c = c.at(precision);
            check_plan(exe, &c, &plan_for(&c, sms, true), "tensor cores");
        }
    }
}

/// The tensor-core kernels' fragment loads from shared memory are free of
/// bank conflicts for every tier and K class (the emulator counts each warp
/// access's passes), and the P·V and Gᵀ·U products skip the n-tiles past
/// ⌈K/8⌉: per warp and 64-wide tile the forward and dV kernels each issue
/// exactly (K_p/k_step)·8 mma for S and (8 or, for bf16, 4)·⌈K/8⌉ for the
/// second product, three times that for 3xTF32 (K_p = K rounded up to 16;
/// k_step 8 for TF32, 16 for bf16). One 64×64 tile (B = N = 64), so each
/// kernel has one block of 4 warps and one tile.
#[test]
fn emulated_tensor_core_loads_are_conflict_free_and_skip_pad_tiles() {
    let Some(exe) = emulator() else { return };
    for k in [20, 64, 65, 128] {
        for tier in [Precision::F32, Precision::Tf32, Precision::Bf16] {
            let c = random_case(31, 64, 0, k).at(tier);
            let plan = plan_for(&c, 1, true);
            let tc = plan.tc.unwrap();
            let (out, stats) = emulate(exe, &c, &plan, false, true);
            assert!(out.loss.is_finite());
            let kp = k.div_ceil(16) * 16;
            let kc = k.div_ceil(8) as u64;
            let (step, second, passes) = match tier {
                Precision::F32 => (8, 8, 3),
                Precision::Tf32 => (8, 8, 1),
                _ => (16, 4, 1),
            };
            let want = 4 * passes * ((kp / step) as u64 * 8 + second * kc);
            for kernel in [tc.fwd_kernel(), tc.dv_kernel()] {
                let name = kernel.name();
                let s = stats.iter().find(|s| s.kernel == kernel.index()).unwrap();
                assert!(s.loads > 0, "{name} K = {k}: no fragment load counted");
                assert_eq!(
                    s.conflicts, 0,
                    "{name} K = {k}: {} bank conflicts in {} fragment loads",
                    s.conflicts, s.loads
                );
                assert_eq!(s.mma, want, "{name} K = {k}: mma count");
            }
        }
    }
}

/// Each lower tier is what it says and the tolerances see the difference:
/// one TF32 pass fails the f32 policy and bf16 fails the TF32 tier's policy
/// on an ordinary case (so a tier's pass is not the policy being blind to
/// its rounding).
#[test]
fn emulated_lower_tiers_fail_the_stricter_policy() {
    let Some(exe) = emulator() else { return };
    let c = random_case(26, 40, 100, 64);
    let want = mixneg::reference::mns_loss_f64(&c.input()).unwrap();
    for (tier, stricter) in [
        (Precision::Tf32, Precision::F32),
        (Precision::Bf16, Precision::Tf32),
    ] {
        let plan = Plan::tensor_core(c.b(), c.n(), c.k, 4, tier).unwrap();
        let out = run_launches(exe, &c.at(tier), &plan, false);
        let judge = c.at(stricter).on_tensor_cores();
        assert_fails_policy(&format!("{tier:?}"), &judge, &out, &want);
    }
}

/// The emulator's tensor-core addition (`emu_tc_sum`) and the yardstick's
/// (`tc_sum` in tests/common) are one model written twice: the same f32 bits
/// on 20 000 random mma sums (1 to 17 terms over 2⁻⁴⁰…2⁴⁰, mixed signs,
/// cancelling pairs, zeros).
#[test]
fn emulator_and_yardstick_add_alike() {
    let Some(_) = emulator() else { return };
    let exe = compile_cxx("tc_sum.cpp", "tc_sum_emu").unwrap();
    let mut rng = Rng::new(41);
    let mut cases: Vec<Vec<f64>> = Vec::new();
    for _ in 0..20_000 {
        let n = 1 + rng.next_u64() as usize % 17;
        let mut t: Vec<f64> = (0..n)
            .map(|_| {
                let m = 1.0 + (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let e = (rng.next_u64() % 81) as i32 - 40;
                let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
                match rng.next_u64() % 16 {
                    0 => 0.0,
                    _ => sign * m * 2f64.powi(e),
                }
            })
            .collect();
        if n > 1 && rng.next_u64().is_multiple_of(4) {
            t[1] = -t[0]; // a cancelling pair
        }
        cases.push(t);
    }
    let input: String = cases
        .iter()
        .map(|t| {
            let bits: Vec<String> = t.iter().map(|x| format!("{:x}", x.to_bits())).collect();
            format!("{} {}\n", t.len(), bits.join(" "))
        })
        .collect();
    let mut child = Command::new(&exe)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(input.as_bytes()).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), cases.len());
    for (t, g) in cases.iter().zip(got) {
        let want = tc_sum(t).to_bits();
        assert_eq!(
            u32::from_str_radix(g, 16).unwrap(),
            want,
            "terms {t:?}: emulator {g}, yardstick {want:08x}"
        );
    }
}

/// The harness runs kernel i as `mixneg::cuda::KERNELS[i]`.
#[test]
fn harness_numbers_the_kernels_as_the_backend() {
    let Some(exe) = emulator() else { return };
    let text = Command::new(exe).arg("--kernels").stdout_ok();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        mixneg::cuda::KERNELS.to_vec()
    );
}

/// The forward-only launches (forward, row merge, loss) give the full call's
/// loss, lse, ℓ and top-1 bit for bit.
#[test]
fn emulated_forward_only_is_the_full_call_without_gradients() {
    let Some(exe) = emulator() else { return };
    for (b, bp, k, sms, o, tc) in [
        (1, 7, 3, 1, 7, false),
        (65, 130, 65, 8, 64, false),
        (65, 130, 65, 8, 64, true),
    ] {
        let mut c = random_case(8, b, bp, k);
        c.positive_offset = o;
        let plan = plan_for(&c, sms, tc);
        let full = run_launches(exe, &c, &plan, false);
        let fwd = run_launches(exe, &c, &plan, true);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(fwd.loss.to_bits(), full.loss.to_bits());
        assert_eq!(bits(&fwd.lse), bits(&full.lse));
        assert_eq!(bits(&fwd.row_loss), bits(&full.row_loss));
        assert_eq!(fwd.top1, full.top1);
        assert!(fwd.d_u.iter().all(|&x| x == 0.0), "no gradient kernel ran");
    }
}

/// The positive of query i is candidate i + o: offsets at both ends and in
/// between, with duplicate ids (hits are removed relative to the positive's
/// id) and both diagonal conventions.
#[test]
fn emulated_kernels_take_a_positive_offset() {
    let Some(exe) = emulator() else { return };
    for (b, bp, k, sms) in [(1, 7, 3, 1), (17, 203, 9, 132), (65, 130, 65, 8)] {
        for o in [0, 1, bp / 2, bp] {
            for cp in [true, false] {
                let mut c = random_case(5, b, bp, k);
                c.positive_offset = o;
                c.correct_positive = cp;
                c.ids = Some((0..b + bp).map(|j| (j % 5) as i64).collect());
                c.name = format!("offset {o} of {bp}, cp={cp} (B={b}, K={k})");
                check_paths(exe, &c, sms);
            }
        }
    }
}

#[test]
fn emulated_kernels_pass_every_vector() {
    let Some(exe) = emulator() else { return };
    for (case, exp) in load_vectors() {
        for (sms, tc) in [(1, false), (132, false), (1, true), (132, true)] {
            if tc && case.k > 128 {
                continue;
            }
            let out = run_launches(exe, &case, &plan_for(&case, sms, tc), false);
            let ctx = Case {
                name: format!("{} [emulated cuda, {sms} SMs, tc={tc}]", case.name),
                ..case.clone()
            };
            assert_output(&ctx, &out, exp.loss, &exp.d_u, &exp.d_v, &exp.lse);
        }
        // The lower tiers on the tensor cores, each against a plain
        // implementation of its own arithmetic.
        for tier in [Precision::Tf32, Precision::Bf16] {
            if case.k > 128 {
                continue;
            }
            let c = case.at(tier);
            let out = run_launches(exe, &c, &plan_for(&c, 132, true), false);
            assert_output(&c, &out, exp.loss, &exp.d_u, &exp.d_v, &exp.lse);
        }
    }
}

#[test]
fn emulated_kernels_handle_the_numerical_edges() {
    let Some(exe) = emulator() else { return };
    // Options, huge logits, all-removed rows, a dominating positive.
    let mut c = random_case(22, 40, 90, 16);
    c.correct_positive = false;
    c.temperature = 1.0;
    c.row_weight = Some((0..40).map(|i| (i % 3) as f32).collect());
    c.name = "uncorrected, weights with zeros".into();
    check_every_tier(exe, &c, 16);

    let mut c = random_case(23, 20, 44, 8);
    c.u.iter_mut().for_each(|x| *x *= 30.0);
    c.v.iter_mut().for_each(|x| *x *= 30.0);
    c.temperature = 1.0;
    c.name = "huge logits".into();
    check_every_tier(exe, &c, 4);

    let mut c = random_case(24, 6, 9, 5);
    c.ids = Some(vec![7; 15]);
    c.name = "every row fully removed".into();
    for (tc, tier) in [
        (false, Precision::F32),
        (true, Precision::F32),
        (true, Precision::Tf32),
        (true, Precision::Bf16),
    ] {
        let c = c.at(tier);
        let out = run_launches(exe, &c, &plan_for(&c, 3, tc), false);
        assert_eq!(out.loss, 0.0, "tc={tc} {tier:?}");
        assert!(
            out.d_u.iter().chain(&out.d_v).all(|&x| x == 0.0),
            "tc={tc} {tier:?}"
        );
        assert!(out.top1.iter().all(|&t| t), "tc={tc} {tier:?}");
    }

    let mut c = random_case(25, 30, 60, 8);
    c.ids = Some((0..90).map(|j| (j % 3) as i64).collect());
    c.name = "heavy duplicates".into();
    check_every_tier(exe, &c, 132);
}

/// The tensor-core building blocks (mns_to_tf32, mns_split_tf32,
/// mns_mma_tf32, mns_mma_3xtf32, mns_pack_bf16 and mns_mma_bf16 of
/// kernels/mns.cu, in the PTX fragment layouts) through tests/cuda_emu/mma_test.cu
/// on the emulator: 3xTF32 within its derived bound and one TF32 pass
/// outside it, bf16 within its tensor-core additions of the rounded
/// factors' exact product; and the cp.async building
/// blocks through a two-stage pipeline kernel (the emulator lands a copy only
/// when a wait retires its group, so a wait too few shows).
///
/// The bound, in units of 2⁻²²·Σ_k |a_ik b_kj|: the split x = big + small + r
/// with |small| ≤ 2⁻¹¹|x| and |r| ≤ 2⁻²²|x| leaves big·r_b + small·small +
/// small·r_b + r_a·b, at most 3 units; each mma of m products adds them to
/// the accumulator as a tensor core does (the emulator's `emu_tc_sum`): the
/// m + 1 terms aligned to the largest, each losing < 2⁻²⁶ of it (1/16 unit),
/// and the sum truncated to f32 (< 2⁻²³ of it, 1/2 unit) — 17/16 unit per
/// m16n8k8, 3K/8 of them for 3xTF32: 3 + 51K/128 units. One TF32 pass errs
/// by up to 2⁻¹¹ per product, 2¹¹ units.
#[test]
fn emulated_tensor_core_and_cp_async_building_blocks() {
    let Some(_) = emulator() else { return };
    let exe = compile_cxx("mma.cpp", "mma_emu").unwrap();
    for (k, seed) in [(8, 1), (8, 2), (64, 3), (136, 4)] {
        let out = Command::new(&exe)
            .args([k.to_string(), seed.to_string()])
            .output_ok();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<f64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(v.len(), 4, "{text}");
        let bound = 3.0 + 51.0 * k as f64 / 128.0;
        assert!(
            v[0] <= bound,
            "K = {k}: 3xTF32 error {} units > bound {bound}",
            v[0]
        );
        assert!(
            v[1] > bound,
            "K = {k}: one TF32 pass {} units within the 3xTF32 bound {bound}",
            v[1]
        );
        // bf16 factors: their products are exact (8 + 8 significant bits),
        // so only the additions err: K/16 m16n8k16, 1/2 + 17/16 units each.
        if k % 16 == 0 {
            let bound = 25.0 * k as f64 / 256.0;
            assert!(
                v[2] <= bound,
                "K = {k}: bf16 error {} units > bound {bound}",
                v[2]
            );
        } else {
            assert_eq!(v[2], -1.0, "K = {k}: bf16 needs K % 16 == 0");
        }
        // The two-stage cp.async pipeline kernel: every output exact.
        assert_eq!(v[3], 0.0, "cp.async pipeline: {} wrong outputs", v[3]);
    }
}
