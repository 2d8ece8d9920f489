//! The CUDA backend: hand-written kernels (`kernels/mns.cu`) compiled at run
//! time by NVRTC and launched through `cudarc`.
//!
//! One file for the backend's state and its three entry points, which share
//! the launch code (`enqueue`) and its safety contract; the compile, the plan
//! and the ABI are in their own modules.
//!
//! The crate links nothing CUDA: `cudarc` loads `libcuda` and `libnvrtc`
//! (version 13) when first used, so building and testing need no toolkit and
//! no GPU. [`is_available`] probes without panicking (cudarc panics if
//! `libcuda` is missing and a context is created anyway).
//!
//! Three entry points compute the same thing (docs/design.md §2):
//!
//! * the [`Backend`] trait — host slices in, host results out, with the full
//!   validation of [`MnsInput::validate`];
//! * [`CudaBackend::mns_loss_device`] — `CudaSlice`s in and out on the
//!   caller's stream, no host copies and no synchronization, for GPU training
//!   loops. It checks shapes and τ; it cannot scan device values for NaN/∞
//!   without a copy, so callers feed it finite data (or validate on the host);
//! * [`CudaBackend::mns_loss_raw`] — the same on another library's device
//!   addresses and stream (PyTorch's tensors, from the Python package).
//!
//! The launch sequence of one call is `abi::launches`: the SIMT path's
//! forward, row merge, loss, dU, dV and ∂L/∂τ (two launches), or the
//! tensor-core path's forward + O, row merge, loss, dU merge, dV and ∂L/∂τ
//! (see the header of `mns.cu`). Each kernel takes one parameter struct that
//! `abi` mirrors; the CPU emulator of the tests runs the same list.

// The ABI, the grid plan and the NVRTC compile are public only with the
// `testing` feature, for the crate's own tests (the emulator and ptxas).
#[cfg(feature = "testing")]
pub mod abi;
#[cfg(not(feature = "testing"))]
mod abi;
mod compile;
mod plan;

use compile::cubin_for;
#[cfg(feature = "testing")]
pub use compile::{Compiled, compile, compile_source};
pub use compile::{cubin_cache_dir, is_available, nvrtc_available};
#[cfg(not(feature = "testing"))]
use plan::Plan;
#[cfg(feature = "testing")]
pub use plan::{Plan, Tc, tc_smem_bytes};

use crate::{Backend, ErrorSource, MnsError, MnsInput, MnsOutput};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

/// The `cudarc` this backend is built on (the device entry point takes its
/// `CudaSlice`s and `CudaStream`s).
pub use cudarc;

/// The kernel source, embedded at build time: `kernels/mns.cu`, which
/// includes the files of [`HEADERS`].
pub const SOURCE: &str = include_str!("../../kernels/mns.cu");

/// The files `kernels/mns.cu` includes, as (include name, text), handed to
/// NVRTC with it: the building blocks, the parameter structs, the SIMT path
/// and the tensor-core path.
pub const HEADERS: [(&str, &str); 4] = [
    ("blocks.cuh", include_str!("../../kernels/blocks.cuh")),
    ("params.cuh", include_str!("../../kernels/params.cuh")),
    ("simt.cuh", include_str!("../../kernels/simt.cuh")),
    ("tc.cuh", include_str!("../../kernels/tc.cuh")),
];

/// Every kernel in [`SOURCE`]: the SIMT path's six in launch order, the
/// tensor-core path's dU merge, then (forward, dV) of each tensor-core class
/// (K ≤ 32, 64, 128) and precision (3xTF32 `f32`, one-pass `tf32`, `bf16`). The
/// emulator's harness lists the same names in the same order (tested).
pub const KERNELS: [&str; 25] = [
    "mns_fwd_f32",
    "mns_rows_f32",
    "mns_loss_f32",
    "mns_du_f32",
    "mns_dv_f32",
    "mns_dtau_f32",
    "mns_du_merge_f32",
    "mns_fwd_tc_k32_f32",
    "mns_dv_tc_k32_f32",
    "mns_fwd_tc_k32_tf32",
    "mns_dv_tc_k32_tf32",
    "mns_fwd_tc_k32_bf16",
    "mns_dv_tc_k32_bf16",
    "mns_fwd_tc_k64_f32",
    "mns_dv_tc_k64_f32",
    "mns_fwd_tc_k64_tf32",
    "mns_dv_tc_k64_tf32",
    "mns_fwd_tc_k64_bf16",
    "mns_dv_tc_k64_bf16",
    "mns_fwd_tc_k128_f32",
    "mns_dv_tc_k128_f32",
    "mns_fwd_tc_k128_tf32",
    "mns_dv_tc_k128_tf32",
    "mns_fwd_tc_k128_bf16",
    "mns_dv_tc_k128_bf16",
];

/// One kernel of [`SOURCE`]: the one place its position in [`KERNELS`] is
/// worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `mns_fwd_f32`.
    Fwd,
    /// `mns_rows_f32`.
    Rows,
    /// `mns_loss_f32`.
    Loss,
    /// `mns_du_f32`.
    Du,
    /// `mns_dv_f32`.
    Dv,
    /// `mns_dtau_f32`.
    Dtau,
    /// `mns_du_merge_f32`.
    DuMerge,
    /// `mns_fwd_tc_k{32,64,128}_{f32,tf32,bf16}`: class index into the K
    /// classes (≤ 32, ≤ 64, ≤ 128) and tier.
    FwdTc(usize, crate::Precision),
    /// `mns_dv_tc_k{32,64,128}_{f32,tf32,bf16}`.
    DvTc(usize, crate::Precision),
}

/// A tier's code: its place among a class's kernels in [`KERNELS`], and the
/// value of `MNS_TIER_*` in `kernels/blocks.cuh`.
pub(crate) fn tier_code(tier: crate::Precision) -> usize {
    match tier {
        crate::Precision::F32 => 0,
        crate::Precision::Tf32 => 1,
        crate::Precision::Bf16 => 2,
    }
}

impl Kernel {
    /// The tiers in the order of [`KERNELS`] within a class.
    const TIERS: [crate::Precision; 3] = [
        crate::Precision::F32,
        crate::Precision::Tf32,
        crate::Precision::Bf16,
    ];

    /// Its position in [`KERNELS`] (and in the emulator's numbering).
    pub fn index(self) -> usize {
        let tc = |class: usize, tier: crate::Precision| 7 + 2 * (3 * class + tier_code(tier));
        match self {
            Kernel::Fwd => 0,
            Kernel::Rows => 1,
            Kernel::Loss => 2,
            Kernel::Du => 3,
            Kernel::Dv => 4,
            Kernel::Dtau => 5,
            Kernel::DuMerge => 6,
            Kernel::FwdTc(class, tier) => tc(class, tier),
            Kernel::DvTc(class, tier) => tc(class, tier) + 1,
        }
    }

    /// Its name in [`SOURCE`].
    pub fn name(self) -> &'static str {
        KERNELS[self.index()]
    }

    /// The tensor-core class of a tensor-core kernel.
    fn tc_class(self) -> Option<usize> {
        match self {
            Kernel::FwdTc(c, _) | Kernel::DvTc(c, _) => Some(c),
            _ => None,
        }
    }

    /// Every kernel, in the order of [`KERNELS`].
    pub fn all() -> Vec<Kernel> {
        let mut v = vec![
            Kernel::Fwd,
            Kernel::Rows,
            Kernel::Loss,
            Kernel::Du,
            Kernel::Dv,
            Kernel::Dtau,
            Kernel::DuMerge,
        ];
        for class in 0..plan::TC_CLASSES.len() {
            for tier in Self::TIERS {
                v.extend([Kernel::FwdTc(class, tier), Kernel::DvTc(class, tier)]);
            }
        }
        v
    }
}

/// Rows / columns of a logit tile and the dU/dV component slice (`MNS_BM`, `MNS_BN`, `MNS_KC` in `kernels/blocks.cuh`).
const TILE: usize = 64;
/// Threads per block of the SIMT kernels and the merges.
const THREADS: u32 = 256;
/// Threads per block of the tensor-core kernels (4 warps of 16 rows).
const TC_THREADS: u32 = 128;

/// Device-resident input of [`CudaBackend::mns_loss_device`]; the same
/// meaning as [`MnsInput`].
#[derive(Debug, Clone, Copy)]
pub struct DeviceInput<'a> {
    /// B×K queries.
    pub u: &'a CudaSlice<f32>,
    /// N×K candidates.
    pub v: &'a CudaSlice<f32>,
    /// N sampling log-probabilities.
    pub log_q: &'a CudaSlice<f32>,
    /// Optional N item ids (accidental-hit removal).
    pub ids: Option<&'a CudaSlice<i64>>,
    /// Optional B row weights.
    pub row_weight: Option<&'a CudaSlice<f32>>,
    /// K.
    pub dim: usize,
    /// τ > 0.
    pub temperature: f32,
    /// Subtract log_q on the diagonal too.
    pub correct_positive: bool,
    /// o: query i's positive is candidate i + o (0 ≤ o ≤ N − B).
    pub positive_offset: usize,
    /// The products' arithmetic ([`crate::Precision`]).
    pub precision: crate::Precision,
}

/// Device-resident results of [`CudaBackend::mns_loss_device`].
#[derive(Debug)]
pub struct DeviceOutput {
    /// L, one element.
    pub loss: CudaSlice<f32>,
    /// B×K.
    pub d_u: CudaSlice<f32>,
    /// N×K.
    pub d_v: CudaSlice<f32>,
    /// B.
    pub lse: CudaSlice<f32>,
    /// B.
    pub row_loss: CudaSlice<f32>,
    /// B flags, 1 where s_ii is the row maximum.
    pub top1: CudaSlice<i32>,
    /// ∂L/∂τ, one element.
    pub d_temperature: CudaSlice<f32>,
}

impl DeviceOutput {
    /// Zeroed outputs for a B×N×K problem on `stream`.
    pub fn zeros(stream: &Arc<CudaStream>, b: usize, n: usize, k: usize) -> Result<Self, MnsError> {
        Ok(Self {
            loss: stream.alloc_zeros(1).map_err(cuda_err)?,
            d_u: stream.alloc_zeros(b * k).map_err(cuda_err)?,
            d_v: stream.alloc_zeros(n * k).map_err(cuda_err)?,
            lse: stream.alloc_zeros(b).map_err(cuda_err)?,
            row_loss: stream.alloc_zeros(b).map_err(cuda_err)?,
            top1: stream.alloc_zeros(b).map_err(cuda_err)?,
            d_temperature: stream.alloc_zeros(1).map_err(cuda_err)?,
        })
    }
}

/// The shape, length and τ checks of the device entry points; (B, N, K).
fn check_device(
    input: &DeviceInput<'_>,
    out: &DeviceOutput,
) -> Result<(usize, usize, usize), MnsError> {
    use crate::input::{check_len, check_temperature, shape};
    let (b, n, k) = shape(
        input.u.len(),
        input.v.len(),
        input.dim,
        input.positive_offset,
    )?;
    check_len("log_q", input.log_q.len(), n)?;
    if let Some(ids) = input.ids {
        check_len("ids", ids.len(), n)?;
    }
    if let Some(w) = input.row_weight {
        check_len("row_weight", w.len(), b)?;
    }
    check_temperature(input.temperature)?;
    let outs = [
        ("loss", out.loss.len(), 1),
        ("d_u", out.d_u.len(), b * k),
        ("d_v", out.d_v.len(), n * k),
        ("lse", out.lse.len(), b),
        ("row_loss", out.row_loss.len(), b),
        ("top1", out.top1.len(), b),
        ("d_temperature", out.d_temperature.len(), 1),
    ];
    for (name, got, expected) in outs {
        if got != expected {
            return Err(MnsError::OutputLength {
                name,
                expected,
                got,
            });
        }
    }
    Ok((b, n, k))
}

/// A failed driver call as an [`MnsError::Cuda`] that keeps cudarc's error.
fn cuda_err(e: cudarc::driver::DriverError) -> MnsError {
    e.into()
}

impl From<cudarc::driver::DriverError> for MnsError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        MnsError::Cuda {
            context: "driver call".into(),
            source: ErrorSource::new(e),
        }
    }
}

/// The fused MNS loss on one CUDA device. The kernels are compiled for the
/// device's own `sm_XY` once per process and loaded at construction; `Send + Sync`, and calls from
/// several threads are serialized on the backend's stream by the driver.
#[derive(Debug)]
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: Vec<CudaFunction>,
    sms: usize,
    arch: String,
    /// How many tensor-core K classes fit this device's shared memory.
    tc_classes: usize,
    tensor_cores: bool,
}

impl CudaBackend {
    /// Open device `ordinal`, compile the kernels for it and load them.
    pub fn new(ordinal: usize) -> Result<Self, MnsError> {
        is_available().map_err(MnsError::CudaUnavailable)?;
        let ctx = CudaContext::new(ordinal).map_err(cuda_err)?;
        let (major, minor) = ctx.compute_capability().map_err(cuda_err)?;
        let arch = format!("sm_{major}{minor}");
        let (cubin, from_disk) = cubin_for(&arch, false)?;
        let module = match ctx.load_module(Ptx::from_binary(cubin)) {
            Ok(m) => m,
            // A cached image the driver refuses (damaged, or from another
            // toolchain under the same key): compile afresh, once.
            Err(_) if from_disk => ctx
                .load_module(Ptx::from_binary(cubin_for(&arch, true)?.0))
                .map_err(cuda_err)?,
            Err(e) => return Err(cuda_err(e)),
        };
        let funcs: Vec<CudaFunction> = KERNELS
            .iter()
            .map(|k| module.load_function(k).map_err(cuda_err))
            .collect::<Result<_, _>>()?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda_err)? as usize;
        // The tensor-core classes whose dynamic shared memory this device
        // grants a block (opt-in above the 48 KiB default: 227 KiB on
        // sm_90, 163 KiB on sm_80, 99 KiB on sm_86/sm_89, where K ≤ 128 does
        // not fit and runs on the SIMT kernels).
        let optin = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(cuda_err)? as usize;
        let tc_classes = if major >= 8 {
            plan::TC_CLASSES
                .iter()
                .take_while(|&&kp| plan::tc_smem_bytes(kp) <= optin)
                .count()
        } else {
            0
        };
        for kernel in Kernel::all() {
            let Some(class) = kernel.tc_class() else {
                continue;
            };
            let f = &funcs[kernel.index()];
            if class < tc_classes {
                f.set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    plan::tc_smem_bytes(plan::TC_CLASSES[class]) as i32,
                )
                .map_err(cuda_err)?;
            }
        }
        let stream = ctx.default_stream();
        Ok(Self {
            ctx,
            stream,
            funcs,
            sms,
            arch,
            tc_classes,
            tensor_cores: tc_classes > 0,
        })
    }

    /// Use the tensor-core kernels where they apply (`true`, the default on
    /// sm_80 and newer) or always the SIMT kernels (`false`: the check of
    /// the fast path, and a comparison point). Without tensor cores, or
    /// for K > 128, the SIMT kernels run at f32 whatever the precision.
    pub fn set_tensor_cores(&mut self, yes: bool) {
        self.tensor_cores = yes && self.tc_classes > 0;
    }

    /// The grid plan this backend uses for a B×N×K problem at `precision`:
    /// the tensor-core kernels when enabled and K is within a class this
    /// device's shared memory holds (K ≤ 128 on sm_80 and sm_90), else the
    /// SIMT ones.
    #[cfg(feature = "testing")]
    pub fn plan(&self, b: usize, n: usize, k: usize, precision: crate::Precision) -> Plan {
        self.plan_of(b, n, k, precision)
    }

    fn plan_of(&self, b: usize, n: usize, k: usize, precision: crate::Precision) -> Plan {
        Plan::tensor_core(b, n, k, self.sms, precision)
            .filter(|p| self.tensor_cores && p.tc.is_some_and(|t| t.class < self.tc_classes))
            .unwrap_or_else(|| Plan::new(b, n, k, self.sms))
    }

    /// Whether a B×N×K call at `precision` runs on the tensor-core kernels
    /// (else on the SIMT ones, at f32 whatever the precision).
    pub fn uses_tensor_cores(
        &self,
        b: usize,
        n: usize,
        k: usize,
        precision: crate::Precision,
    ) -> bool {
        self.plan_of(b, n, k, precision).tc.is_some()
    }

    /// Device memory one call allocates besides its inputs and outputs, in
    /// bytes: the split partials (and O on the tensor-core path), four
    /// per-row buffers and the ∂L/∂τ partials.
    pub fn scratch_bytes(
        &self,
        b: usize,
        n: usize,
        k: usize,
        precision: crate::Precision,
    ) -> usize {
        let s = Scratch::of(&self.plan_of(b, n, k, precision), b, k);
        4 * (2 * s.partials + s.part_o + 4 * s.rows) + 8 * s.dtau_parts
    }

    /// The device's architecture, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The backend's own stream (used by the host entry point).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The context, to allocate device buffers for [`Self::mns_loss_device`].
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The fused loss on device buffers, enqueued on `stream` (no host copy,
    /// no synchronization). Checks shapes and τ; values must be finite.
    pub fn mns_loss_device(
        &self,
        stream: &Arc<CudaStream>,
        input: &DeviceInput<'_>,
        out: &mut DeviceOutput,
    ) -> Result<(), MnsError> {
        let dims = check_device(input, out)?;
        self.launch_slices(stream, input, dims, out, false, None)
    }

    /// The forward only on device buffers: L, lse, ℓ and top-1 into `out`
    /// (its gradient buffers are left as they are), three of the kernels,
    /// enqueued on `stream`. The same checks as [`Self::mns_loss_device`].
    pub fn mns_forward_device(
        &self,
        stream: &Arc<CudaStream>,
        input: &DeviceInput<'_>,
        out: &mut DeviceOutput,
    ) -> Result<(), MnsError> {
        let dims = check_device(input, out)?;
        self.launch_slices(stream, input, dims, out, true, None)
    }

    /// [`Self::mns_loss_device`] with a pair of CUDA events around each
    /// launch; synchronizes `stream` and returns each launch's kernel name
    /// and milliseconds, in launch order (`mixneg gpu-bench` prints them):
    /// which kernel holds a call back.
    pub fn mns_loss_device_timed(
        &self,
        stream: &Arc<CudaStream>,
        input: &DeviceInput<'_>,
        out: &mut DeviceOutput,
    ) -> Result<Vec<(&'static str, f64)>, MnsError> {
        let dims = check_device(input, out)?;
        let mut events = vec![];
        self.launch_slices(stream, input, dims, out, false, Some(&mut events))?;
        stream.synchronize()?;
        events
            .iter()
            .map(|(name, t0, t1)| Ok((*name, t0.elapsed_ms(t1)? as f64)))
            .collect()
    }

    /// The fused loss on raw device addresses — another library's memory,
    /// e.g. PyTorch tensors' `data_ptr()`s — enqueued on another library's
    /// stream `cu_stream` (null: the legacy default stream), reading and
    /// writing that memory in place with no copy and no synchronization.
    /// With `forward_only` the three gradient outputs may be 0 and are not
    /// written. Checks the shape, τ and that every address used is non-zero;
    /// values must be finite.
    ///
    /// # Safety
    ///
    /// `cu_stream` is a live stream of this backend's context (the device's
    /// primary context, which PyTorch uses too), kept alive until the work
    /// is done. Every non-zero address is device memory of that context,
    /// valid until the work on `cu_stream` is done, holding: `u` B·K f32,
    /// `v` N·K f32, `log_q` N f32, `ids` N i64, `row_weight` B f32, `loss`
    /// and `d_temperature` one f32, `d_u` B·K f32, `d_v` N·K f32, `lse` and
    /// `row_loss` B f32, `top1` B i32; the outputs overlap no input and no
    /// other output.
    pub unsafe fn mns_loss_raw(
        &self,
        cu_stream: cudarc::driver::sys::CUstream,
        call: &RawCall,
        forward_only: bool,
    ) -> Result<(), MnsError> {
        let (b, n, k) = (call.b, call.n, call.k);
        // log_q, ids and the weights have the lengths the contract states.
        crate::check_shapes(b, n, k, call.positive_offset, n, None, None)?;
        crate::input::check_temperature(call.temperature)?;
        let mut needed = vec![
            ("u", call.u),
            ("v", call.v),
            ("log_q", call.log_q),
            ("loss", call.loss),
            ("lse", call.lse),
            ("row_loss", call.row_loss),
            ("top1", call.top1),
        ];
        if !forward_only {
            needed.extend([
                ("d_u", call.d_u),
                ("d_v", call.d_v),
                ("d_temperature", call.d_temperature),
            ]);
        }
        if let Some(&(name, _)) = needed.iter().find(|(_, p)| *p == 0) {
            return Err(MnsError::NullAddress { name });
        }
        // SAFETY: the caller guarantees `cu_stream` is a live stream of this
        // context that outlives the enqueued work; the wrapper does not
        // destroy it when dropped.
        let stream = unsafe { self.ctx.wrap_borrowed_stream(cu_stream) };
        let a = abi::Buffers {
            u: call.u,
            v: call.v,
            log_q: call.log_q,
            ids: call.ids,
            row_weight: call.row_weight,
            lse: call.lse,
            row_loss: call.row_loss,
            top1: call.top1,
            loss: call.loss,
            d_u: call.d_u,
            d_v: call.d_v,
            d_temperature: call.d_temperature,
            ..abi::Buffers::default()
        };
        let opt = abi::Options {
            temperature: call.temperature,
            correct_positive: call.correct_positive,
            positive_offset: call.positive_offset,
        };
        // SAFETY: the addresses are the caller's, valid with the lengths the
        // kernels index (this function's contract).
        unsafe {
            self.enqueue(
                &stream,
                a,
                (b, n, k),
                opt,
                call.precision,
                forward_only,
                None,
            )
        }
    }

    fn launch_slices(
        &self,
        stream: &Arc<CudaStream>,
        x: &DeviceInput<'_>,
        dims: (usize, usize, usize),
        out: &mut DeviceOutput,
        forward_only: bool,
        events: Option<&mut Vec<TimedLaunch>>,
    ) -> Result<(), MnsError> {
        // Device addresses for the parameter structs. Each guard keeps
        // cudarc's cross-stream ordering for its buffer; all live until the
        // launches are enqueued.
        let (u, _gu) = x.u.device_ptr(stream);
        let (v, _gv) = x.v.device_ptr(stream);
        let (log_q, _gq) = x.log_q.device_ptr(stream);
        let ids = x.ids.map(|s| s.device_ptr(stream));
        let row_weight = x.row_weight.map(|s| s.device_ptr(stream));
        let (lse, _g7) = out.lse.device_ptr_mut(stream);
        let (row_loss, _g8) = out.row_loss.device_ptr_mut(stream);
        let (top1, _g9) = out.top1.device_ptr_mut(stream);
        let (loss, _g10) = out.loss.device_ptr_mut(stream);
        let (d_u, _g11) = out.d_u.device_ptr_mut(stream);
        let (d_v, _g12) = out.d_v.device_ptr_mut(stream);
        let (d_temperature, _g13) = out.d_temperature.device_ptr_mut(stream);
        let a = abi::Buffers {
            u,
            v,
            log_q,
            ids: ids.as_ref().map_or(0, |(p, _)| *p),
            row_weight: row_weight.as_ref().map_or(0, |(p, _)| *p),
            lse,
            row_loss,
            top1,
            loss,
            d_u,
            d_v,
            d_temperature,
            ..abi::Buffers::default()
        };
        // The options exactly as the emulator tests pass them.
        let opt = abi::Options {
            temperature: x.temperature,
            correct_positive: x.correct_positive,
            positive_offset: x.positive_offset,
        };
        // SAFETY: every address is a live `CudaSlice` of this context whose
        // length `check_device` matched to (B, N, K); the guards above keep
        // them until the launches are enqueued, and the slices outlive them
        // (stream-ordered frees).
        unsafe { self.enqueue(stream, a, dims, opt, x.precision, forward_only, events) }
    }

    /// Allocates the call's temporaries on `stream` and enqueues its launches
    /// (the first three with `forward_only`), with a pair of timing events
    /// around each when `events` is given.
    ///
    /// # Safety
    ///
    /// The input and output addresses of `a` are device memory of this
    /// context, valid until the work on `stream` is done, with the lengths
    /// the kernels index for (B, N, K) (those of [`Self::mns_loss_raw`]).
    #[allow(clippy::too_many_arguments)]
    unsafe fn enqueue(
        &self,
        stream: &Arc<CudaStream>,
        mut a: abi::Buffers,
        (b, n, k): (usize, usize, usize),
        opt: abi::Options,
        precision: crate::Precision,
        forward_only: bool,
        mut events: Option<&mut Vec<TimedLaunch>>,
    ) -> Result<(), MnsError> {
        let plan = self.plan_of(b, n, k, precision);
        let s = Scratch::of(&plan, b, k);
        let part_m = stream.alloc_zeros::<f32>(s.partials)?;
        let part_s = stream.alloc_zeros::<f32>(s.partials)?;
        let part_o = stream.alloc_zeros::<f32>(s.part_o)?;
        let [wloss, mrow, coef, gdiag] = [(); 4].map(|()| stream.alloc_zeros::<f32>(s.rows));
        let (wloss, mrow, coef, gdiag) = (wloss?, mrow?, coef?, gdiag?);
        let dtau_part = stream.alloc_zeros::<f64>(s.dtau_parts)?;
        // The temporaries are freed in stream order after the launches.
        let (part_m, _g1) = part_m.device_ptr(stream);
        let (part_s, _g2) = part_s.device_ptr(stream);
        let (part_o, _g3) = part_o.device_ptr(stream);
        let (wloss, _g4) = wloss.device_ptr(stream);
        let (mrow, _g5) = mrow.device_ptr(stream);
        let (coef, _g6) = coef.device_ptr(stream);
        let (gdiag, _g7) = gdiag.device_ptr(stream);
        let (dtau_part, _g8) = dtau_part.device_ptr(stream);
        a.part_m = part_m;
        a.part_s = part_s;
        a.part_o = part_o;
        a.wloss = wloss;
        a.mrow = mrow;
        a.coef = coef;
        a.gdiag = gdiag;
        a.dtau_part = dtau_part;
        // A forward-only call stops after the loss (kernels 0..3).
        let all = abi::launches(&plan, (b, n, k), opt, &a);
        let count = if forward_only { 3 } else { all.len() };
        for l in &all[..count] {
            let mut lb = stream.launch_builder(&self.funcs[l.kernel.index()]);
            match &l.params {
                abi::Params::Fwd(p) => lb.arg(p),
                abi::Params::Rows(p) => lb.arg(p),
                abi::Params::Loss(p) => lb.arg(p),
                abi::Params::Grad(p) => lb.arg(p),
                abi::Params::Dtau(p) => lb.arg(p),
                abi::Params::Merge(p) => lb.arg(p),
            };
            let cfg = LaunchConfig {
                grid_dim: (l.grid.0, l.grid.1, 1),
                block_dim: (l.threads, 1, 1),
                shared_mem_bytes: l.smem,
            };
            let t0 = match events {
                Some(_) => Some(timing_event(&self.ctx, stream)?),
                None => None,
            };
            // SAFETY: each kernel takes exactly one parameter struct, the
            // one `abi::launches` pairs with it (its layout is the `.cu`
            // struct's, tested); every address in it is live device memory
            // of this context with the length the kernel indexes (u B·K, v
            // N·K, log_q and ids N, row_weight B — this function's contract —
            // part_m/part_s splits·B, part_o splits·B·K on the tensor-core
            // path, the per-row buffers B, d_u B·K, d_v N·K, loss and
            // d_temperature 1, dtau_part `dtau_parts(B·K)` f64), or null for
            // an absent optional input, which the kernels test before
            // reading; a tensor-core launch's dynamic shared memory
            // (`tc_smem_bytes` of its K) is within what the constructor opted
            // its kernel in to (the size for the largest K of its class).
            unsafe { lb.launch(cfg) }?;
            if let (Some(ev), Some(t0)) = (events.as_deref_mut(), t0) {
                let name = match l.params {
                    abi::Params::Dtau(p) if p.phase == 0 => "mns_dtau_f32 (partials)",
                    abi::Params::Dtau(_) => "mns_dtau_f32 (sum)",
                    _ => l.kernel.name(),
                };
                ev.push((name, t0, timing_event(&self.ctx, stream)?));
            }
        }
        Ok(())
    }
}

/// The lengths of one call's temporaries (what `enqueue` allocates and
/// `scratch_bytes` counts).
struct Scratch {
    /// part_m and part_s: splits × B f32 each.
    partials: usize,
    /// part_o: splits × B × K f32 on the tensor-core path (1 otherwise).
    part_o: usize,
    /// wloss, mrow, coef, gdiag: B f32 each.
    rows: usize,
    /// dtau_part: f64.
    dtau_parts: usize,
}

impl Scratch {
    fn of(plan: &Plan, b: usize, k: usize) -> Self {
        Scratch {
            partials: plan.splits * b,
            part_o: if plan.tc.is_some() {
                plan.splits * b * k
            } else {
                1
            },
            rows: b,
            dtau_parts: abi::dtau_parts(b * k),
        }
    }
}

/// A launch's kernel name and the events recorded before and after it.
type TimedLaunch = (
    &'static str,
    cudarc::driver::CudaEvent,
    cudarc::driver::CudaEvent,
);

/// An event that can time (cudarc's `new_event(None)` disables timing),
/// recorded on `stream` now.
fn timing_event(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
) -> Result<cudarc::driver::CudaEvent, MnsError> {
    let e = ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
    e.record(stream)?;
    Ok(e)
}

/// Raw device addresses and options of one call of
/// [`CudaBackend::mns_loss_raw`] (0: null, for the absent optional inputs);
/// the same meaning as [`DeviceInput`] and [`DeviceOutput`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCall {
    /// B×K queries (f32).
    pub u: u64,
    /// N×K candidates (f32).
    pub v: u64,
    /// N sampling log-probabilities (f32).
    pub log_q: u64,
    /// N item ids (i64), or 0.
    pub ids: u64,
    /// B row weights (f32), or 0.
    pub row_weight: u64,
    /// B.
    pub b: usize,
    /// N.
    pub n: usize,
    /// K.
    pub k: usize,
    /// τ > 0.
    pub temperature: f32,
    /// Subtract log_q on the diagonal too.
    pub correct_positive: bool,
    /// o: query i's positive is candidate i + o (0 ≤ o ≤ N − B).
    pub positive_offset: usize,
    /// The products' arithmetic.
    pub precision: crate::Precision,
    /// L, one f32 (out).
    pub loss: u64,
    /// B×K ∂L/∂U (out).
    pub d_u: u64,
    /// N×K ∂L/∂V (out).
    pub d_v: u64,
    /// B lse (out).
    pub lse: u64,
    /// B ℓ (out).
    pub row_loss: u64,
    /// B top-1 flags, i32 (out).
    pub top1: u64,
    /// ∂L/∂τ, one f32 (out).
    pub d_temperature: u64,
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn mns_loss_into(&self, input: &MnsInput<'_>, out: &mut MnsOutput) -> Result<(), MnsError> {
        let p = input.validate()?;
        out.check_shape(p.b, p.n, p.k)?;
        let got = self.on_device(&p, |x, d| self.mns_loss_device(&self.stream, x, d))?;
        *out = got;
        Ok(())
    }

    fn mns_forward(&self, input: &MnsInput<'_>) -> Result<crate::MnsForward, MnsError> {
        let p = input.validate()?;
        let got = self.on_device(&p, |x, d| self.mns_forward_device(&self.stream, x, d))?;
        Ok(got.into())
    }
}

impl CudaBackend {
    /// Copies a validated problem's inputs to the device and runs `f` on
    /// them with fresh outputs, then copies everything back (before touching
    /// any caller buffer, so that a failure leaves them as they were).
    fn on_device(
        &self,
        p: &crate::Problem<'_>,
        f: impl FnOnce(&DeviceInput<'_>, &mut DeviceOutput) -> Result<(), MnsError>,
    ) -> Result<MnsOutput, MnsError> {
        let s = &self.stream;
        let u = s.clone_htod(&*p.u.to_f32()).map_err(cuda_err)?;
        let v = s.clone_htod(&*p.v.to_f32()).map_err(cuda_err)?;
        let log_q = s.clone_htod(p.log_q).map_err(cuda_err)?;
        let ids = p
            .ids
            .map(|x| s.clone_htod(x))
            .transpose()
            .map_err(cuda_err)?;
        let w = p
            .row_weight
            .map(|x| s.clone_htod(x))
            .transpose()
            .map_err(cuda_err)?;
        let dev = DeviceInput {
            u: &u,
            v: &v,
            log_q: &log_q,
            ids: ids.as_ref(),
            row_weight: w.as_ref(),
            dim: p.k,
            temperature: p.temperature,
            correct_positive: p.correct_positive,
            positive_offset: p.positive_offset,
            precision: p.precision,
        };
        let mut d = DeviceOutput::zeros(s, p.b, p.n, p.k)?;
        f(&dev, &mut d)?;
        // Copy everything back before touching `out`, so that a failure
        // leaves the caller's buffers as they were.
        let loss = s.clone_dtoh(&d.loss).map_err(cuda_err)?;
        let d_u = s.clone_dtoh(&d.d_u).map_err(cuda_err)?;
        let d_v = s.clone_dtoh(&d.d_v).map_err(cuda_err)?;
        let lse = s.clone_dtoh(&d.lse).map_err(cuda_err)?;
        let row_loss = s.clone_dtoh(&d.row_loss).map_err(cuda_err)?;
        let top1 = s.clone_dtoh(&d.top1).map_err(cuda_err)?;
        let d_temperature = s.clone_dtoh(&d.d_temperature).map_err(cuda_err)?;
        s.synchronize().map_err(cuda_err)?;
        Ok(MnsOutput {
            loss: loss[0],
            d_u,
            d_v,
            lse,
            row_loss,
            top1: top1.iter().map(|&x| x != 0).collect(),
            d_temperature: d_temperature[0],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Kernel::all` lists every kernel once, at its index, with its name.
    #[test]
    fn kernel_ids_number_the_kernel_list() {
        let all = Kernel::all();
        assert_eq!(all.len(), KERNELS.len());
        for (i, k) in all.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
            assert_eq!(k.name(), KERNELS[i]);
        }
        assert_eq!(
            Kernel::DvTc(2, crate::Precision::Tf32).name(),
            "mns_dv_tc_k128_tf32"
        );
    }
}
