//! `mixneg._native`: the extension module under the Python package `mixneg`.
//!
//! [`mns_loss`] on NumPy arrays: the fused MNS loss of the `mixneg` crate
//! (docs/design.md §2) on its CPU backend; [`mns_loss_cuda`] on device
//! addresses (PyTorch's CUDA tensors) on the crate's CUDA backend. The Python layer
//! (`mixneg/__init__.py`) converts dtypes and layouts and checks ranks; this
//! module reads C-contiguous float32 (and int64 ids) arrays in place, without
//! a copy, releases the GIL for the call, and hands the results back as NumPy
//! arrays that own the Rust buffers (no copy either). Every crate error
//! becomes a `ValueError` carrying the crate's message.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use mixneg::cuda::CudaBackend;
use mixneg::{Backend, CpuBackend, Floats, MnsError, MnsInput, Precision};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The crate's error as a Python exception: every input error is a
/// `ValueError` with the crate's message (which names the numbers); a
/// thread-pool or kernel failure is a `RuntimeError`.
fn to_py(e: MnsError) -> PyErr {
    match e {
        MnsError::ThreadPool { .. }
        | MnsError::KernelUnavailable(_)
        | MnsError::Cuda { .. }
        | MnsError::CudaUnavailable(_) => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// One CPU backend per requested thread count (0 = rayon's global pool),
/// kept for the life of the process so that its scratch and its thread pool
/// are reused across calls. Clones share the scratch; concurrent calls each
/// take their own (the crate's `CpuBackend` docs).
fn backend(threads: usize) -> PyResult<CpuBackend> {
    static CACHE: OnceLock<Mutex<HashMap<usize, CpuBackend>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    // A poisoned lock only means another call panicked while inserting; the
    // map itself is still a valid cache.
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = map.get(&threads) {
        return Ok(b.clone());
    }
    let mut b = CpuBackend::from_env().map_err(to_py)?;
    if threads > 0 {
        b = b.with_threads(threads).map_err(to_py)?;
    }
    map.insert(threads, b.clone());
    Ok(b)
}

/// The crate takes flat rows and one K: a v with another row length could
/// otherwise be read as a different number of K-long rows.
fn same_k(k: usize, kv: usize) -> PyResult<()> {
    if kv == k {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "u has K = {k} columns but v has {kv}: queries and candidates must have the same embedding dimension"
        )))
    }
}

/// The shape checks of a call, from shapes alone (for a front end that
/// traces, such as JAX's): u B×K, v N×`kv`, log_q, ids and row weights of
/// the given lengths (None: absent). Raises the errors `mns_loss` would.
#[pyfunction]
#[pyo3(signature = (b, k, n, kv, positive_offset, log_q_len, ids_len, row_weight_len))]
#[allow(clippy::too_many_arguments)]
fn check_shapes(
    b: usize,
    k: usize,
    n: usize,
    kv: usize,
    positive_offset: usize,
    log_q_len: usize,
    ids_len: Option<usize>,
    row_weight_len: Option<usize>,
) -> PyResult<()> {
    same_k(k, kv)?;
    mixneg::check_shapes(b, n, k, positive_offset, log_q_len, ids_len, row_weight_len)
        .map_err(to_py)
}

/// The tier a Python string names.
fn precision(name: &str) -> PyResult<Precision> {
    match name {
        "f32" => Ok(Precision::F32),
        "tf32" => Ok(Precision::Tf32),
        "bf16" => Ok(Precision::Bf16),
        _ => Err(PyValueError::new_err(format!(
            "precision must be \"f32\", \"tf32\" or \"bf16\", got {name:?}"
        ))),
    }
}

/// τ checked in f64 before it is rounded to f32, so that the message shows
/// the caller's value; the crate then checks the f32 (e.g. 1e-50 rounds to
/// 0 and is refused there).
fn check_temperature(temperature: f64) -> PyResult<()> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "temperature must be finite and > 0, got {temperature}"
        )))
    }
}

/// A B×K or N×K embedding matrix from Python: float32, or uint16 arrays
/// holding bf16 bit patterns (what the Python layer passes for bfloat16
/// tensors and arrays: a view, no conversion).
#[derive(FromPyObject)]
enum Embeddings<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    Bf16(PyReadonlyArray2<'py, u16>),
}

impl Embeddings<'_> {
    fn shape(&self) -> [usize; 2] {
        let s = match self {
            Embeddings::F32(a) => a.shape(),
            Embeddings::Bf16(a) => a.shape(),
        };
        [s[0], s[1]]
    }

    /// The values in place, as the crate's [`Floats`].
    fn floats(&self, name: &str) -> PyResult<Floats<'_>> {
        Ok(match self {
            Embeddings::F32(a) => Floats::F32(slice(name, a)?),
            Embeddings::Bf16(a) => Floats::Bf16(slice(name, a)?),
        })
    }
}

/// A C-contiguous view of a NumPy array, or a `ValueError` naming it (the
/// Python layer makes every array contiguous first, so this is only reached
/// when `_native` is called directly).
fn slice<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    name: &str,
    a: &'a numpy::PyReadonlyArray<'_, T, D>,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
}

/// The fused MNS loss on NumPy arrays (docs/design.md §2, §8).
///
/// `u` (B×K) and `v` (N×K) float32 (or uint16: bf16 bit patterns, read as
/// they are by the bf16 tier, converted for the F32 tier), `log_q` (N) float32, `ids` (N) int64 or
/// None, `row_weight` (B) float32 or None; row i + `positive_offset` of `v`
/// is query i's positive. Returns a dict with `loss` (float, L = (1/B)
/// Σ w_i ℓ_i), `lse`, `row_loss` (ℓ_i, unweighted) and `top1` (B), and, when
/// `grad` is true, `d_u` = ∂L/∂U (B×K), `d_v` = ∂L/∂V (N×K) and
/// `d_temperature` = ∂L/∂τ = −⟨U, ∂L/∂U⟩/τ (float); with `grad` false those
/// three are None and the call runs the forward only (a third of the flops).
/// `threads` = 0 uses rayon's global pool (`RAYON_NUM_THREADS`).
/// `precision` is "f32", or "bf16" on a CPU with AVX512_BF16 ("tf32", and
/// "bf16" elsewhere, are refused with the crate's message).
#[pyfunction]
#[pyo3(signature = (u, v, log_q, *, temperature, ids=None, row_weight=None,
                    correct_positive=true, positive_offset=0, threads=0, grad=true,
                    precision="f32"))]
#[allow(clippy::too_many_arguments)]
fn mns_loss<'py>(
    py: Python<'py>,
    u: Embeddings<'py>,
    v: Embeddings<'py>,
    log_q: PyReadonlyArray1<'py, f32>,
    temperature: f64,
    ids: Option<PyReadonlyArray1<'py, i64>>,
    row_weight: Option<PyReadonlyArray1<'py, f32>>,
    correct_positive: bool,
    positive_offset: usize,
    threads: usize,
    grad: bool,
    precision: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let tier = self::precision(precision)?;
    let [b, k] = u.shape();
    let [n, kv] = v.shape();
    same_k(k, kv)?;
    check_temperature(temperature)?;
    let backend = backend(threads)?;
    let (us, vs, lqs) = (u.floats("u")?, v.floats("v")?, slice("log_q", &log_q)?);
    let ids_s = ids.as_ref().map(|a| slice("ids", a)).transpose()?;
    let w_s = row_weight
        .as_ref()
        .map(|a| slice("row_weight", a))
        .transpose()?;
    let mut input = MnsInput::with_floats(us, vs, lqs, k)
        .temperature(temperature as f32)
        .correct_positive(correct_positive)
        .positive_offset(positive_offset)
        .precision(tier);
    if let Some(ids) = ids_s {
        input = input.ids(ids);
    }
    if let Some(w) = w_s {
        input = input.row_weight(w);
    }
    // The kernels run without the GIL: the borrowed slices stay valid because
    // the readonly array handles above live until this function returns.
    let out = py.detach(|| {
        if grad {
            backend.mns_loss(&input).map(Ok)
        } else {
            backend.mns_forward(&input).map(Err)
        }
    });
    let d = PyDict::new(py);
    match out.map_err(to_py)? {
        Ok(o) => {
            d.set_item("loss", o.loss)?;
            d.set_item("lse", o.lse.into_pyarray(py))?;
            d.set_item("row_loss", o.row_loss.into_pyarray(py))?;
            d.set_item("top1", o.top1.into_pyarray(py))?;
            let du = Array2::from_shape_vec((b, k), o.d_u)
                .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            let dv = Array2::from_shape_vec((n, k), o.d_v)
                .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            d.set_item("d_u", du.into_pyarray(py))?;
            d.set_item("d_v", dv.into_pyarray(py))?;
            d.set_item("d_temperature", o.d_temperature)?;
        }
        Err(f) => {
            d.set_item("loss", f.loss)?;
            d.set_item("lse", f.lse.into_pyarray(py))?;
            d.set_item("row_loss", f.row_loss.into_pyarray(py))?;
            d.set_item("top1", f.top1.into_pyarray(py))?;
            d.set_item("d_u", py.None())?;
            d.set_item("d_v", py.None())?;
            d.set_item("d_temperature", py.None())?;
        }
    }
    Ok(d)
}

/// The CPU kernel the calls run (`avx512`, `avx2_fma` or `portable`; set by
/// `MIXNEG_CPU_KERNEL` before the first call) and its default thread count.
#[pyfunction]
fn backend_info() -> PyResult<(String, usize)> {
    let b = backend(0)?;
    Ok((b.kernel().name().to_string(), b.threads()))
}

/// Whether the CPU backend the calls run computes `precision` ("f32"
/// always; "bf16" on a CPU with AVX512_BF16): the crate's
/// `CpuBackend::supports`.
#[pyfunction]
fn cpu_supports(precision: &str) -> PyResult<bool> {
    Ok(backend(0)?.supports(self::precision(precision)?))
}

/// One CUDA backend per device ordinal, created on first use (NVRTC compile
/// or the on-disk CUBIN) and kept for the life of the process.
fn cuda_backend(device: usize) -> PyResult<&'static CudaBackend> {
    static CACHE: OnceLock<Mutex<HashMap<usize, &'static CudaBackend>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = map.get(&device) {
        return Ok(b);
    }
    // Leaked on purpose: a backend lives as long as the process (its module
    // and context), and calls hand out `&'static` references to it.
    let b: &'static CudaBackend = Box::leak(Box::new(CudaBackend::new(device).map_err(to_py)?));
    map.insert(device, b);
    Ok(b)
}

/// `None` when the CUDA backend can run here, else why not (no driver
/// library, no NVRTC 13, no device). Probes without creating a context.
#[pyfunction]
fn cuda_unavailable() -> Option<String> {
    mixneg::cuda::is_available().err()
}

/// The fused MNS loss on CUDA device memory (docs/design.md §2, §8), enqueued
/// on `stream` (a `CUstream` handle, 0 for the legacy default stream) of
/// device `device`, reading and writing the given addresses in place — no
/// copy and no synchronization. Inputs: `u` B×K, `v` N×K, `log_q` N float32,
/// `ids` N int64 or 0, `row_weight` B float32 or 0. Outputs: `loss` and
/// `d_temperature` one float32, `lse` and `row_loss` B float32, `top1` B
/// int32, `d_u` B×K and `d_v` N×K float32 (0 when `grad` is false: the
/// forward-only call). `precision` "f32" (3xTF32 on tensor cores), "tf32" or
/// "bf16". Shapes, τ and null addresses are checked (ValueError); values
/// must be finite (the caller checks them on the device). The caller keeps
/// every buffer alive until the stream has run the call (PyTorch's caching
/// allocator does for tensors used on their stream).
#[pyfunction]
#[pyo3(signature = (device, stream, u, v, log_q, ids, row_weight, b, n, k, *, temperature,
                    correct_positive, positive_offset, precision, loss, lse, row_loss, top1,
                    d_u, d_v, d_temperature))]
#[allow(clippy::too_many_arguments)]
fn mns_loss_cuda(
    py: Python<'_>,
    device: usize,
    stream: usize,
    u: u64,
    v: u64,
    log_q: u64,
    ids: u64,
    row_weight: u64,
    b: usize,
    n: usize,
    k: usize,
    temperature: f64,
    correct_positive: bool,
    positive_offset: usize,
    precision: &str,
    loss: u64,
    lse: u64,
    row_loss: u64,
    top1: u64,
    d_u: u64,
    d_v: u64,
    d_temperature: u64,
) -> PyResult<()> {
    check_temperature(temperature)?;
    let call = mixneg::cuda::RawCall {
        u,
        v,
        log_q,
        ids,
        row_weight,
        b,
        n,
        k,
        temperature: temperature as f32,
        correct_positive,
        positive_offset,
        precision: self::precision(precision)?,
        loss,
        d_u,
        d_v,
        lse,
        row_loss,
        top1,
        d_temperature,
    };
    let forward_only = d_u == 0 && d_v == 0 && d_temperature == 0;
    let backend = cuda_backend(device)?;
    py.detach(|| {
        let stream = stream as mixneg::cuda::cudarc::driver::sys::CUstream;
        // SAFETY: the Python layer (mixneg.torch) passes the data pointers of
        // contiguous CUDA tensors of device `device` with exactly these
        // shapes and dtypes, outputs freshly allocated (overlapping nothing),
        // and the handle of that device's current stream; PyTorch's caching
        // allocator keeps tensors used on their allocation stream valid until
        // the stream's work is done, and the tensors stay referenced by the
        // caller across this call.
        unsafe { backend.mns_loss_raw(stream, &call, forward_only) }
    })
    .map_err(to_py)
}

/// The value checks of the crate's `MnsInput::validate` on a summary of data
/// the host cannot scan (CUDA tensors, reduced on the device by
/// `mixneg.torch`), raising the CPU path's errors with its messages:
/// `nonfinite` the first non-finite element as (name, flat index, value) in
/// the order u, v, log_q, row_weight; `negative` the first negative row
/// weight (index, value); then the largest row norms of u and v, the largest
/// |log_q_j| and the largest row weight (1.0 without weights).
#[pyfunction]
#[pyo3(signature = (b, n, temperature, nonfinite, negative, max_u_norm, max_v_norm, max_abs_log_q, max_weight))]
#[allow(clippy::too_many_arguments)]
fn check_values(
    b: usize,
    n: usize,
    temperature: f64,
    nonfinite: Option<(String, usize, f32)>,
    negative: Option<(usize, f32)>,
    max_u_norm: f64,
    max_v_norm: f64,
    max_abs_log_q: f64,
    max_weight: f64,
) -> PyResult<()> {
    check_temperature(temperature)?;
    if let Some((name, index, value)) = nonfinite {
        let name = ["u", "v", "log_q", "row_weight"]
            .into_iter()
            .find(|n| *n == name)
            .ok_or_else(|| PyValueError::new_err(format!("unknown input {name:?}")))?;
        return Err(to_py(MnsError::NonFinite { name, index, value }));
    }
    if let Some((index, value)) = negative {
        return Err(to_py(MnsError::NegativeWeight { index, value }));
    }
    // τ in f32 (its reciprocal too) is checked by check_magnitudes.
    mixneg::check_magnitudes(
        b,
        n,
        temperature as f32,
        max_u_norm,
        max_v_norm,
        max_abs_log_q,
        max_weight,
    )
    .map_err(to_py)
}

/// Bytes of device memory one `mns_loss_cuda` call on `device` allocates
/// besides its inputs and outputs (the crate's scratch, freed in stream
/// order after the call; PyTorch's memory statistics do not see it).
#[pyfunction]
fn cuda_scratch_bytes(
    device: usize,
    b: usize,
    n: usize,
    k: usize,
    precision: &str,
) -> PyResult<usize> {
    Ok(cuda_backend(device)?.scratch_bytes(b, n, k, self::precision(precision)?))
}

/// The module: `mns_loss`, `mns_loss_cuda`, `check_shapes`, `check_values`,
/// `cuda_unavailable`, `cuda_scratch_bytes`, `backend_info`, `__version__`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(mns_loss, m)?)?;
    m.add_function(wrap_pyfunction!(mns_loss_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_unavailable, m)?)?;
    m.add_function(wrap_pyfunction!(check_values, m)?)?;
    m.add_function(wrap_pyfunction!(check_shapes, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_scratch_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(backend_info, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_supports, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
