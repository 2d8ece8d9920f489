//! The `mixneg` command line: `train` (the main job: an MNS model beside
//! batch softmax), `experiment`, `loss` (the fused loss on tensors from a
//! safetensors file), `demo` (timing on a random problem) and `gpu-bench`.
//!
//! One file: the subcommands' argument structs and their short handlers,
//! which share the backend choice and the CPU flags; the work itself is in
//! the library (the trainer, `comparison`, `experiment`).

use clap::{Parser, Subcommand, ValueEnum};
use mixneg::{Backend, CpuBackend, MnsInput, MnsOutput, ReferenceBackend};
use mixneg_train::synthetic::Synthetic;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use mixneg_train::Error;
use mixneg_train::comparison;

#[derive(Parser)]
#[command(
    name = "mixneg",
    version,
    about = "Fused Mixed-Negative-Sampling loss for two-tower retrieval"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// CPU kernel for `--backend cpu`: auto, portable, avx2_fma or avx512
    /// (default: $MIXNEG_CPU_KERNEL, else auto = the best this CPU runs).
    #[arg(long, global = true)]
    cpu_kernel: Option<String>,
    /// Worker threads of the CPU backend (default: rayon's, one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
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
        /// The products' arithmetic (below f32: CUDA tensor cores only).
        #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
        precision: PrecisionArg,
    },
    /// Time the fused CPU loss on a random problem and check it against the
    /// f64 reference on a slice of it.
    Demo {
        /// Queries per batch, B.
        #[arg(long, visible_alias = "b", default_value_t = 4096)]
        batch: usize,
        /// Uniformly sampled negatives, B′.
        #[arg(long, default_value_t = 4096)]
        b_prime: usize,
        /// Embedding dimension, K.
        #[arg(long, visible_alias = "k", default_value_t = 64)]
        dim: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Skip the check against the reference.
        #[arg(long)]
        no_check: bool,
        /// Keep accidental hits (no item ids): the problem PyTorch's fused
        /// `F.linear_cross_entropy` can express.
        #[arg(long)]
        no_ids: bool,
        /// Which implementation to time.
        #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
        backend: BackendArg,
        /// The products' arithmetic (below f32: CUDA tensor cores only).
        #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
        precision: PrecisionArg,
    },
    /// Train a two-tower model with mixed negative sampling (on the paper
    /// world by default) and print what it learned, epoch by epoch; then,
    /// unless --alone, corrected batch softmax on the same world and seed,
    /// the two side by side with the popularity list and the planted model,
    /// a plain reading of the difference and a plot.
    Train {
        #[command(flatten)]
        cfg: Box<mixneg_train::TrainConfig>,
        /// Which implementation computes the fused loss.
        #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
        backend: BackendArg,
        /// Train the configured model only (no batch-softmax comparison).
        #[arg(long)]
        alone: bool,
        /// Where the comparison's plot (SVG) is written.
        #[arg(long, default_value = "target/mixneg-train.svg")]
        plot: std::path::PathBuf,
    },
    /// The MNS experiment: batch softmax with and without logQ, MNS at
    /// B′/B ∈ {0.5, 1, 2, 4} and uniform-only negatives, over several seeds at
    /// an equal budget; writes a table (mean ± 95% CI) as Markdown and CSV.
    Experiment {
        #[command(flatten)]
        cfg: Box<mixneg_train::TrainConfig>,
        /// Seeds per configuration.
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// Run only the configurations of these names (`;`-separated, as in
        /// table.md; default: all).
        #[arg(long, value_delimiter = ';')]
        only: Vec<String>,
        /// Output directory for results.csv, per-run metrics and table.md.
        #[arg(long, default_value = "experiments")]
        out: PathBuf,
    },
    /// Time the CUDA kernels on device-resident data with CUDA events
    /// (no host copies in the measured region) and report device memory.
    #[cfg(feature = "cuda")]
    GpuBench {
        /// Queries per batch, B.
        #[arg(long, visible_alias = "b", default_value_t = 16384)]
        batch: usize,
        /// Uniformly sampled negatives, B′.
        #[arg(long, default_value_t = 16384)]
        b_prime: usize,
        /// Embedding dimension, K.
        #[arg(long, visible_alias = "k", default_value_t = 128)]
        dim: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
}

/// The products' arithmetic (`mixneg::Precision`); the tiers below F32 need
/// the CUDA backend's tensor-core path (the CPU refuses them).
#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    /// f32 accuracy (3xTF32 on tensor cores).
    F32,
    /// One TF32 pass.
    Tf32,
    /// bf16 factors, f32 accumulation.
    Bf16,
}

impl From<PrecisionArg> for mixneg::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => mixneg::Precision::F32,
            PrecisionArg::Tf32 => mixneg::Precision::Tf32,
            PrecisionArg::Bf16 => mixneg::Precision::Bf16,
        }
    }
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

/// The flags of `train` that `experiment` sets itself for each of its
/// configurations; passing one is an error rather than silently ignored.
const EXPERIMENT_SETS: [&str; 8] = [
    "b_prime",
    "negatives",
    "q_mode",
    "seed",
    "quiet",
    "metrics",
    "estimator",
    "item_features",
];

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    if let Some(("experiment", sub)) = matches.subcommand() {
        let given: Vec<String> = EXPERIMENT_SETS
            .iter()
            .filter(|id| sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        if !given.is_empty() {
            eprintln!(
                "mixneg: error: `experiment` sets {} itself for each configuration and seed; remove {}",
                EXPERIMENT_SETS
                    .map(|id| format!("--{}", id.replace('_', "-")))
                    .join(", "),
                given.join(" ")
            );
            return ExitCode::FAILURE;
        }
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let cpu = CpuChoice {
        kernel: cli.cpu_kernel.clone(),
        threads: cli.threads,
    };
    // Every command runs on a worker of one rayon pool (rayon's default
    // size), so that the fork-joins of the loss, the towers and the
    // evaluation start from a worker: from the main thread each one would
    // be a hand-off to the pool and back (a context switch pair, and idle
    // workers spinning in sched_yield between them).
    let pool = match rayon::ThreadPoolBuilder::new().build() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mixneg: error: cannot start the thread pool: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = pool.install(|| match cli.cmd {
        Cmd::Loss {
            input,
            output,
            backend,
            temperature,
            no_correct_positive,
            precision,
        } => loss(
            &cpu,
            &input,
            &output,
            backend,
            temperature,
            no_correct_positive,
            precision.into(),
        ),
        Cmd::Demo {
            batch,
            b_prime,
            dim,
            reps,
            no_check,
            no_ids,
            backend,
            precision,
        } => demo(
            &cpu,
            (batch, b_prime, dim),
            reps,
            (!no_check, !no_ids),
            backend,
            precision.into(),
        ),
        #[cfg(feature = "cuda")]
        Cmd::GpuBench {
            batch,
            b_prime,
            dim,
            reps,
        } => gpu_bench(batch, b_prime, dim, reps),
        Cmd::Train {
            cfg,
            backend,
            alone,
            plot,
        } => train(&cpu, &cfg, backend, alone, &plot),
        Cmd::Experiment {
            cfg,
            seeds,
            only,
            out,
        } => cpu
            .backend()
            .and_then(|be| mixneg_train::experiment::run(&cfg, seeds, &only, &out, &be)),
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mixneg: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--cpu-kernel` and `--threads`.
struct CpuChoice {
    kernel: Option<String>,
    threads: Option<usize>,
}

impl CpuChoice {
    /// The CPU backend these flags ask for (the kernel from
    /// $MIXNEG_CPU_KERNEL when `--cpu-kernel` is absent).
    fn backend(&self) -> Result<CpuBackend, Error> {
        let be = match self.kernel.as_deref() {
            None => CpuBackend::from_env()?,
            Some("auto") => CpuBackend::new(),
            Some(name) => {
                let k = mixneg::Kernel::from_name(name)
                    .ok_or_else(|| mixneg::MnsError::KernelUnavailable(name.to_string()))?;
                CpuBackend::with_kernel(k)?
            }
        };
        Ok(match self.threads {
            Some(0) => return Err("--threads must be at least 1".into()),
            Some(t) => be.with_threads(t)?,
            None => be,
        })
    }
}

fn backend(cpu: &CpuChoice, which: BackendArg) -> Result<Box<dyn Backend>, Error> {
    Ok(match which {
        BackendArg::Reference => Box::new(ReferenceBackend),
        BackendArg::Cpu => Box::new(cpu.backend()?),
        #[cfg(feature = "cuda")]
        BackendArg::Cuda => Box::new(mixneg::CudaBackend::new(0)?),
        #[cfg(not(feature = "cuda"))]
        BackendArg::Cuda => {
            return Err(mixneg::MnsError::CudaNotBuilt.into());
        }
    })
}

fn loss(
    cpu: &CpuChoice,
    input: &Path,
    output: &Path,
    which: BackendArg,
    temperature: Option<f32>,
    no_correct_positive: bool,
    precision: mixneg::Precision,
) -> Result<(), Error> {
    let bytes = std::fs::read(input).map_err(|e| Error::io(input, e))?;
    let file = mixneg_train::io::LossFile::parse(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: {e}", input.display())))?;
    let temperature = temperature.or(file.temperature).unwrap_or(1.0);
    let correct_positive = !no_correct_positive && file.correct_positive.unwrap_or(true);
    let (b, n, k) = (file.b, file.n, file.k);
    let x = file
        .input(temperature, correct_positive)
        .precision(precision);
    let out = backend(cpu, which)?.mns_loss(&x)?;

    let result = mixneg_train::io::LossResult::new(&out, (b, n, k), temperature, correct_positive);
    std::fs::write(output, result.to_bytes()?).map_err(|e| Error::io(output, e))?;
    Ok(())
}

fn demo(
    cpu_choice: &CpuChoice,
    (b, bp, k): (usize, usize, usize),
    reps: usize,
    (check, ids): (bool, bool),
    which: BackendArg,
    precision: mixneg::Precision,
) -> Result<(), Error> {
    let n = b + bp;
    let data = Synthetic::new(b, bp, k, 1);
    let ids = ids.then_some(data.ids.as_slice());
    fn with_ids<'a>(x: MnsInput<'a>, ids: Option<&'a [i64]>) -> MnsInput<'a> {
        if let Some(ids) = ids { x.ids(ids) } else { x }
    }
    let input = with_ids(data.input_without_ids(), ids).precision(precision);

    let cpu = backend(cpu_choice, which)?;
    let threads = match which {
        BackendArg::Cuda => "the GPU".to_string(),
        _ => format!(
            "{} threads",
            cpu_choice
                .threads
                .unwrap_or_else(rayon::current_num_threads)
        ),
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
    let flops = input.validate()?.flops();
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
        let sub = with_ids(
            MnsInput::new(&data.u[..bs * k], &data.v, &data.log_q, k),
            ids,
        )
        .precision(precision)
        .temperature(0.05);
        let want = mixneg::reference::mns_loss_f64(&sub)?;
        let got = cpu.mns_loss(&sub)?;
        let rel = mixneg::reference::rel_l2_error::<f64>;
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
    let mut gpu = CudaBackend::new(0)?;
    let ctx = gpu.context().clone();
    let s = ctx.new_stream()?;
    let (free0, total) = ctx.mem_get_info()?;
    let u = s.clone_htod(&data.u)?;
    let v = s.clone_htod(&data.v)?;
    let lq = s.clone_htod(&data.log_q)?;
    // The no-ids problem, the one the fused peers (lab/gpu_peers.py)
    // can express, on the same synthetic data.
    let x = DeviceInput {
        u: &u,
        v: &v,
        log_q: &lq,
        ids: None,
        row_weight: None,
        dim: k,
        temperature: 0.05,
        correct_positive: true,
        positive_offset: 0,
        precision: mixneg::Precision::F32,
    };
    // Every path this GPU has, side by side on the same data: the SIMT
    // kernels, then the tensor-core ones at each precision.
    let mut paths = vec![("simt f32", false, mixneg::Precision::F32)];
    if gpu.uses_tensor_cores(b, n, k, mixneg::Precision::F32) {
        paths.push(("tc f32", true, mixneg::Precision::F32));
        paths.push(("tc tf32", true, mixneg::Precision::Tf32));
        paths.push(("tc bf16", true, mixneg::Precision::Bf16));
    }
    for (name, tc, precision) in paths {
        gpu.set_tensor_cores(tc);
        let x = DeviceInput { precision, ..x };
        let mut out = DeviceOutput::zeros(&s, b, n, k)?;
        gpu.mns_loss_device(&s, &x, &mut out)?; // warm-up
        s.synchronize()?;
        let (free1, _) = ctx.mem_get_info()?;
        let mut ms = Vec::with_capacity(reps);
        // Timing events: cudarc's `new_event(None)` creates them with
        // CU_EVENT_DISABLE_TIMING, for which every elapsed_ms fails.
        let timed = Some(mixneg::cuda::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        for _ in 0..reps.max(1) {
            let t0 = ctx.new_event(timed)?;
            let t1 = ctx.new_event(timed)?;
            t0.record(&s)?;
            gpu.mns_loss_device(&s, &x, &mut out)?;
            t1.record(&s)?;
            t1.synchronize()?;
            ms.push(t0.elapsed_ms(&t1)? as f64);
        }
        ms.sort_by(f64::total_cmp);
        let med = ms[ms.len() / 2];
        let loss = s.clone_dtoh(&out.loss)?[0];
        // Each launch on its own events (separate calls, so the breakdown
        // does not disturb the end-to-end median above).
        let mut per: Vec<(&str, Vec<f64>)> = vec![];
        for _ in 0..reps.max(1) {
            for (i, (kernel, t)) in gpu
                .mns_loss_device_timed(&s, &x, &mut out)?
                .into_iter()
                .enumerate()
            {
                if per.len() <= i {
                    per.push((kernel, vec![]));
                }
                per[i].1.push(t);
            }
        }
        // Useful work: the three products, 6·B·N·K (the tensor-core path
        // does 8·B·N·K, recomputing the logits once for dV).
        let flops = 6.0 * b as f64 * n as f64 * k as f64;
        // Inputs, outputs and the per-call scratch.
        let bytes =
            4 * (2 * (b + n) * k + n * 2 + b * 3 + 2) + gpu.scratch_bytes(b, n, k, precision);
        println!(
            "mixneg cuda {} [{name}]: B = {b}, B' = {bp}, K = {k}: loss {loss:.6}, median {med:.3} ms over {} runs, \
             {:.2} effective TFLOP/s, device memory {:.1} MiB (buffers) / {:.1} MiB (driver delta), GPU total {:.0} GiB",
            gpu.arch(),
            ms.len(),
            flops / med / 1e9,
            bytes as f64 / (1u64 << 20) as f64,
            (free0.saturating_sub(free1)) as f64 / (1u64 << 20) as f64,
            total as f64 / (1u64 << 30) as f64
        );
        for (kernel, mut t) in per {
            t.sort_by(f64::total_cmp);
            let m = t[t.len() / 2];
            println!(
                "  launch {kernel}: median {m:.3} ms ({:.0}% of the call)",
                100.0 * m / med
            );
        }
    }
    Ok(())
}

fn print_report(r: &mixneg_train::EpochReport) {
    let m = &r.metrics;
    let (epoch, loss, speed) = if r.epoch == 0 {
        // Before any training: the untrained towers, a random model.
        (
            "untrained".to_string(),
            "       —".to_string(),
            String::new(),
        )
    } else {
        (
            format!("epoch {:>2}", r.epoch),
            format!("{:>8.4}", r.loss),
            format!(
                "  {:>6.0} examples/s  fused loss {:.0}% of the step",
                r.examples_per_s,
                100.0 * r.loss_share
            ),
        )
    };
    println!("{epoch:<9}  loss {loss}  {}{speed}", m.summary());
}

fn train(
    cpu: &CpuChoice,
    cfg: &mixneg_train::TrainConfig,
    which: BackendArg,
    alone: bool,
    plot: &std::path::Path,
) -> Result<(), Error> {
    let be = backend(cpu, which)?;
    let t = Instant::now();
    println!(
        "mixneg train: {} negatives, B = {}, B' = {}, Q {:?}, loss on {}",
        match cfg.negatives {
            mixneg_train::Negatives::Mixed => "mixed",
            mixneg_train::Negatives::UniformOnly => "uniform-only",
            mixneg_train::Negatives::Stream => "stream",
        },
        cfg.batch,
        cfg.b_prime,
        cfg.q_mode,
        be.name()
    );
    let (data, reports) = mixneg_train::train(cfg, be.as_ref())?;
    println!(
        "data: {} users, {} items ({} fresh), {} train / {} test interactions",
        data.n_users,
        data.n_items,
        data.fresh.iter().filter(|&&f| f).count(),
        data.train.len(),
        data.test.len()
    );
    for r in &reports {
        print_report(r);
    }
    // The comparison: corrected batch softmax (B' = 0, unigram log Q) on the
    // same data, seed and epochs.
    let mixed = cfg.negatives == mixneg_train::Negatives::Mixed && cfg.b_prime > 0;
    let baseline = if alone || !mixed {
        None
    } else {
        let mut bc = cfg.clone();
        bc.b_prime = 0;
        bc.q_mode = mixneg_train::freq::QMode::Unigram;
        bc.checkpoint = None;
        bc.metrics = None;
        println!(
            "\nbatch softmax on the same world and seed (B = {}, B' = 0, logQ)",
            bc.batch
        );
        let r = mixneg_train::train_on(&bc, be.as_ref(), &data)?;
        for x in &r {
            print_report(x);
        }
        Some(r)
    };
    let popularity = mixneg_train::popularity_metrics(&data);
    println!("{:<25}{}", "popularity list", popularity.summary());
    if let Some(c) = mixneg_train::ceiling_metrics(&data) {
        println!("{:<25}{}", mixneg_train::YARDSTICK, c.summary());
    }
    let planted = mixneg_train::oracle_metrics(&data);
    if let Some(o) = &planted {
        println!("{:<25}{}", "planted model (all known)", o.summary());
    }
    if let (Some(base), Some(mns)) = (&baseline, reports.last()) {
        let base = &base.last().expect("epoch reports").metrics;
        let rows = comparison::rows(cfg, base, &mns.metrics, &popularity, planted.as_ref());
        comparison::print(&rows, &data);
        println!("\n{}", comparison::reading(cfg, &data, base, &mns.metrics));
        match comparison::plot(&rows, plot) {
            Ok(()) => println!("plot: {}", plot.display()),
            Err(e) => eprintln!("mixneg: plot not written: {e}"),
        }
    }
    let steps = cfg.epochs * (data.train.len() / cfg.batch.max(1));
    let check = if cfg.verify_every == 0 || steps < cfg.verify_every {
        format!(
            "not run ({steps} steps, --verify-every {})",
            cfg.verify_every
        )
    } else {
        let worst = reports
            .iter()
            .map(|r| r.max_verify_error)
            .fold(0.0f64, f64::max);
        format!("max relative error vs the f64 reference {worst:.1e}")
    };
    println!(
        "kernel check: {check}; total {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
