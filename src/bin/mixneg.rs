//! The `mixneg` command line: run the fused MNS loss on tensors from a
//! safetensors file (`loss`), or time it on a random problem (`demo`).

use clap::{Parser, Subcommand, ValueEnum};
use mixneg::synthetic::Synthetic;
use mixneg::{Backend, CpuBackend, MnsInput, MnsOutput, ReferenceBackend};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

type Error = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(
    name = "mixneg",
    version,
    about = "Fused Mixed-Negative-Sampling loss for two-tower retrieval"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compute loss and gradients of tensors in a safetensors file.
    ///
    /// Reads `u` [B,K] f32, `v` [N,K] f32, `log_q` [N] f32 and optionally
    /// `ids` [N] i64 (or i32) and `row_weight` [B] f32; writes `loss` [1],
    /// `d_u` [B,K], `d_v` [N,K], `lse` [B] and `row_loss` [B] as f32.
    /// Options absent from the command line are taken from the input's
    /// metadata keys `temperature` and `correct_positive` when present.
    Loss {
        /// Input safetensors file.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        output: PathBuf,
        /// Which implementation computes the loss.
        #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
        backend: BackendArg,
        /// Temperature τ > 0 (default: metadata `temperature`, else 1).
        #[arg(long)]
        temperature: Option<f32>,
        /// Do not subtract log_q on the diagonal (default: metadata
        /// `correct_positive`, else the diagonal is corrected).
        #[arg(long)]
        no_correct_positive: bool,
    },
    /// Time the fused CPU loss on a random problem and check it against the
    /// f64 reference on a slice of it.
    Demo {
        /// Queries per batch, B.
        #[arg(long, default_value_t = 4096)]
        b: usize,
        /// Uniformly sampled negatives, B′.
        #[arg(long, default_value_t = 4096)]
        b_prime: usize,
        /// Embedding dimension, K.
        #[arg(long, default_value_t = 64)]
        k: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Skip the check against the reference.
        #[arg(long)]
        no_check: bool,
        /// Which implementation to time.
        #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
        backend: BackendArg,
    },
    /// Time the CUDA kernels on device-resident data with CUDA events
    /// (no host copies in the measured region) and report device memory.
    #[cfg(feature = "cuda")]
    GpuBench {
        /// Queries per batch, B.
        #[arg(long, default_value_t = 16384)]
        b: usize,
        /// Uniformly sampled negatives, B′.
        #[arg(long, default_value_t = 16384)]
        b_prime: usize,
        /// Embedding dimension, K.
        #[arg(long, default_value_t = 128)]
        k: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    /// The materializing f64 reference.
    Reference,
    /// The fused CPU kernels (kernel from MIXNEG_CPU_KERNEL, else the best).
    Cpu,
    /// The CUDA kernels on GPU 0 (needs a GPU, its driver and NVRTC 13).
    Cuda,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Loss {
            input,
            output,
            backend,
            temperature,
            no_correct_positive,
        } => loss(&input, &output, backend, temperature, no_correct_positive),
        Cmd::Demo {
            b,
            b_prime,
            k,
            reps,
            no_check,
            backend,
        } => demo(b, b_prime, k, reps, !no_check, backend),
        #[cfg(feature = "cuda")]
        Cmd::GpuBench {
            b,
            b_prime,
            k,
            reps,
        } => gpu_bench(b, b_prime, k, reps),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mixneg: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn backend(which: BackendArg) -> Result<Box<dyn Backend>, Error> {
    Ok(match which {
        BackendArg::Reference => Box::new(ReferenceBackend),
        BackendArg::Cpu => Box::new(CpuBackend::from_env()?),
        #[cfg(feature = "cuda")]
        BackendArg::Cuda => Box::new(mixneg::CudaBackend::new(0)?),
        #[cfg(not(feature = "cuda"))]
        BackendArg::Cuda => {
            return Err("this build has no CUDA backend (feature `cuda` off)".into());
        }
    })
}

/// A tensor's values as f32 (dtype F32) with its shape, or a message naming it.
fn read_f32(
    st: &SafeTensors<'_>,
    name: &str,
    rank: usize,
) -> Result<(Vec<f32>, Vec<usize>), Error> {
    let t = st
        .tensor(name)
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
    if t.dtype() != Dtype::F32 {
        return Err(format!("tensor `{name}` has dtype {:?}, expected F32", t.dtype()).into());
    }
    if t.shape().len() != rank {
        return Err(format!(
            "tensor `{name}` has shape {:?}, expected rank {rank}",
            t.shape()
        )
        .into());
    }
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((v, t.shape().to_vec()))
}

fn read_ids(st: &SafeTensors<'_>) -> Result<Option<Vec<i64>>, Error> {
    let Ok(t) = st.tensor("ids") else {
        return Ok(None);
    };
    if t.shape().len() != 1 {
        return Err(format!("tensor `ids` has shape {:?}, expected rank 1", t.shape()).into());
    }
    let d = t.data();
    Ok(Some(match t.dtype() {
        Dtype::I64 => d
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::I32 => d
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect(),
        other => {
            return Err(format!("tensor `ids` has dtype {other:?}, expected I64 or I32").into());
        }
    }))
}

fn loss(
    input: &Path,
    output: &Path,
    which: BackendArg,
    temperature: Option<f32>,
    no_correct_positive: bool,
) -> Result<(), Error> {
    let bytes = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", input.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();

    let (u, us) = read_f32(&st, "u", 2)?;
    let (v, vs) = read_f32(&st, "v", 2)?;
    let (log_q, _) = read_f32(&st, "log_q", 1)?;
    if us[1] != vs[1] {
        return Err(format!("u is {:?} and v is {:?}: their K differ", us, vs).into());
    }
    let ids = read_ids(&st)?;
    let weights = match st.tensor("row_weight") {
        Ok(_) => Some(read_f32(&st, "row_weight", 1)?.0),
        Err(_) => None,
    };
    let temperature = match (temperature, meta.get("temperature")) {
        (Some(t), _) => t,
        (None, Some(s)) => s
            .parse()
            .map_err(|e| format!("metadata temperature = {s:?}: {e}"))?,
        (None, None) => 1.0,
    };
    let correct_positive = if no_correct_positive {
        false
    } else {
        match meta.get("correct_positive").map(String::as_str) {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(s) => {
                return Err(
                    format!("metadata correct_positive = {s:?}: expected true or false").into(),
                );
            }
        }
    };

    let (b, n, k) = (us[0], vs[0], us[1]);
    let mut x = MnsInput::new(&u, &v, &log_q, k)
        .temperature(temperature)
        .correct_positive(correct_positive);
    if let Some(ids) = &ids {
        x = x.ids(ids);
    }
    if let Some(w) = &weights {
        x = x.row_weight(w);
    }
    let out = backend(which)?.mns_loss(&x)?;

    let bytes = |x: &[f32]| -> Vec<u8> { x.iter().flat_map(|f| f.to_le_bytes()).collect() };
    let tensors = [
        ("loss", vec![1], bytes(&[out.loss])),
        ("d_u", vec![b, k], bytes(&out.d_u)),
        ("d_v", vec![n, k], bytes(&out.d_v)),
        ("lse", vec![b], bytes(&out.lse)),
        ("row_loss", vec![b], bytes(&out.row_loss)),
    ];
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| Ok((*name, TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let meta = HashMap::from([
        ("temperature".to_string(), temperature.to_string()),
        ("correct_positive".to_string(), correct_positive.to_string()),
    ]);
    safetensors::serialize_to_file(views, Some(meta), output)
        .map_err(|e| format!("{}: {e}", output.display()))?;
    Ok(())
}

fn demo(
    b: usize,
    bp: usize,
    k: usize,
    reps: usize,
    check: bool,
    which: BackendArg,
) -> Result<(), Error> {
    let n = b + bp;
    let data = Synthetic::new(b, bp, k, 1);
    let input = data.input();

    let cpu = backend(which)?;
    let threads = match which {
        BackendArg::Cuda => "the GPU".to_string(),
        _ => format!("{} threads", rayon::current_num_threads()),
    };
    println!(
        "mixneg demo: B = {b}, B' = {bp}, N = {n}, K = {k}; {} on {threads}",
        cpu.name()
    );
    let mut out = MnsOutput::filled(b, n, k, 0.0);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        cpu.mns_loss_into(&input, &mut out)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let flops = 6.0 * b as f64 * n as f64 * k as f64;
    println!(
        "  loss {:.6}   in-batch top-1 {:.1}%   median {:.2} ms over {} runs   {:.1} effective GFLOP/s (6·B·N·K / time)",
        out.loss,
        100.0 * out.top1.iter().filter(|&&t| t).count() as f64 / b as f64,
        med * 1e3,
        times.len(),
        flops / med / 1e9
    );
    println!(
        "  logits never stored: a materializing implementation would need {:.2} GiB per B×N f32 copy",
        (b * n * 4) as f64 / (1u64 << 30) as f64
    );
    if check {
        // The f64 reference on the first 128 queries with all their candidates.
        let bs = b.min(128);
        let sub = MnsInput::new(&data.u[..bs * k], &data.v, &data.log_q, k)
            .temperature(0.05)
            .ids(&data.ids);
        let want = mixneg::reference::mns_loss_f64(&sub)?;
        let got = cpu.mns_loss(&sub)?;
        let rel = |g: &[f32], w: &[f64]| {
            let num: f64 = g
                .iter()
                .zip(w)
                .map(|(&a, &b)| (a as f64 - b).powi(2))
                .sum::<f64>()
                .sqrt();
            num / w.iter().map(|x| x * x).sum::<f64>().sqrt()
        };
        println!(
            "  vs f64 reference (B = {bs}): loss {:.1e}, d_u {:.1e}, d_v {:.1e}, lse {:.1e} relative error",
            ((got.loss as f64 - want.loss) / want.loss).abs(),
            rel(&got.d_u, &want.d_u),
            rel(&got.d_v, &want.d_v),
            rel(&got.lse, &want.lse)
        );
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu_bench(b: usize, bp: usize, k: usize, reps: usize) -> Result<(), Error> {
    use mixneg::cuda::{CudaBackend, DeviceInput, DeviceOutput};
    let n = b + bp;
    let data = Synthetic::new(b, bp, k, 1);
    let gpu = CudaBackend::new(0)?;
    let ctx = gpu.context().clone();
    let s = ctx.new_stream()?;
    let (free0, total) = ctx.mem_get_info()?;
    let u = s.clone_htod(&data.u)?;
    let v = s.clone_htod(&data.v)?;
    let lq = s.clone_htod(&data.log_q)?;
    let ids = s.clone_htod(&data.ids)?;
    let x = DeviceInput {
        u: &u,
        v: &v,
        log_q: &lq,
        ids: Some(&ids),
        row_weight: None,
        dim: k,
        temperature: 0.05,
        correct_positive: true,
    };
    let mut out = DeviceOutput::zeros(&s, b, n, k)?;
    gpu.mns_loss_device(&s, &x, &mut out)?; // warm-up
    s.synchronize()?;
    let (free1, _) = ctx.mem_get_info()?;
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t0 = ctx.new_event(None)?;
        let t1 = ctx.new_event(None)?;
        t0.record(&s)?;
        gpu.mns_loss_device(&s, &x, &mut out)?;
        t1.record(&s)?;
        t1.synchronize()?;
        ms.push(t0.elapsed_ms(&t1)? as f64);
    }
    ms.sort_by(f64::total_cmp);
    let med = ms[ms.len() / 2];
    let loss = s.clone_dtoh(&out.loss)?[0];
    let flops = 6.0 * b as f64 * n as f64 * k as f64;
    // Inputs, outputs and the per-call scratch (splits·B·2 + 3·B floats).
    let plan = gpu.plan(b, n, k);
    let bytes = 4 * (2 * (b + n) * k + n * 3 + b * 6 + 2 * plan.splits * b);
    println!(
        "mixneg cuda {}: B = {b}, B' = {bp}, K = {k}: loss {loss:.6}, median {med:.3} ms over {} runs, \
         {:.2} effective TFLOP/s, device memory {:.1} MiB (buffers) / {:.1} MiB (driver delta), GPU total {:.0} GiB",
        gpu.arch(),
        ms.len(),
        flops / med / 1e9,
        bytes as f64 / (1u64 << 20) as f64,
        (free0.saturating_sub(free1)) as f64 / (1u64 << 20) as f64,
        total as f64 / (1u64 << 30) as f64
    );
    Ok(())
}
