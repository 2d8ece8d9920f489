//! The kernels' ABI, written once: one `#[repr(C)]` parameter struct per
//! launch, mirroring the structs declared in `kernels/params.cuh`
//! (FlashAttention's `Flash_fwd_params` habit), and the launch sequence of
//! one call as a pure function of the grid [`Plan`] and the buffers'
//! addresses. The backend launches exactly what [`launches`] returns; the
//! CPU emulator of the kernels (`tests/cuda_emu/`) runs the same list, with
//! buffer numbers in place of device addresses. `tests/cuda_ptx.rs` and
//! `tests/cuda_emulated.rs` check that [`layout`] agrees with what NVRTC (read
//! off its PTX) and the C++ compiler make of the `.cu` structs (size and
//! every field offset).
//!
//! One file: each struct, its byte image and its layout entry must change
//! together, and the tests compare them field by field.
//!
//! Every struct is laid out without implicit padding (8-byte fields first,
//! 4-byte fields in pairs), so that [`Params::bytes`] — the fields'
//! little-endian bytes in order — is the struct's exact memory image.

use super::{Kernel, Plan};

/// Declares the parameter structs once: each becomes a `#[repr(C)]` struct
/// (the fields in order, as in the `.cu` struct named beside it) and, for the
/// tests, an [`Abi`] implementation that writes its memory image and lists
/// its fields' offsets — so a field is written here, in `params.cuh` and in the
/// emulator's harness, and nowhere else.
macro_rules! abi_structs {
    ($(
        $(#[$m:meta])*
        pub struct $name:ident($cname:literal) {
            $( $(#[$fm:meta])* pub $field:ident: $ty:ty, )*
        }
    )*) => {$(
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq)]
        pub struct $name {
            $( $(#[$fm])* pub $field: $ty, )*
        }

        #[cfg(feature = "testing")]
        impl Abi for $name {
            const C_NAME: &'static str = $cname;
            fn write(&self, out: &mut Vec<u8>) {
                $( Abi::write(&self.$field, out); )*
            }
            fn fields(name: &str, base: usize, out: &mut Vec<(String, usize)>) {
                $(
                    let field = stringify!($field);
                    let at = base + std::mem::offset_of!($name, $field);
                    if name.is_empty() {
                        <$ty as Abi>::fields(field, at, out);
                    } else {
                        <$ty as Abi>::fields(&format!("{name}.{field}"), at, out);
                    }
                )*
            }
        }
    )*};
}

/// What the tests read off a parameter struct (or a field): its memory image
/// and its (field, offset) list, nested structs as `x.u`.
#[cfg(feature = "testing")]
trait Abi {
    /// The C struct's name (structs only).
    const C_NAME: &'static str = "";
    /// Append the little-endian bytes of every field, in order.
    fn write(&self, out: &mut Vec<u8>);
    /// Append (name, offset) of each leaf field.
    fn fields(name: &str, base: usize, out: &mut Vec<(String, usize)>);
}

/// Leaf fields: their little-endian bytes, and their one (name, offset).
macro_rules! abi_leaf {
    ($($t:ty),*) => {$(
        #[cfg(feature = "testing")]
        impl Abi for $t {
            fn write(&self, out: &mut Vec<u8>) {
                out.extend(self.to_le_bytes());
            }
            fn fields(name: &str, base: usize, out: &mut Vec<(String, usize)>) {
                out.push((name.to_string(), base));
            }
        }
    )*};
}
abi_leaf!(u64, i64, i32, f32, f64);

abi_structs! {
    /// What every logit-tile kernel reads (`MnsLogits`).
    pub struct Logits("MnsLogits") {
        /// B×K queries.
        pub u: u64,
        /// N×K candidates.
        pub v: u64,
        /// N log Q.
        pub log_q: u64,
        /// N item ids, or 0 (null): no accidental-hit removal.
        pub ids: u64,
        /// B.
        pub b: i64,
        /// N.
        pub n: i64,
        /// K.
        pub k: i64,
        /// o: row r's positive is column r + o.
        pub offset: i64,
        /// 1/τ in f32.
        pub inv_tau: f32,
        /// Explicit padding (0): the logit kernels never form the diagonal,
        /// which `mns_rows_f32` computes (with or without its correction).
        pub pad: i32,
    }

    /// `mns_fwd_f32` (`MnsFwdParams`).
    pub struct FwdParams("MnsFwdParams") {
        /// The logits.
        pub x: Logits,
        /// Columns per split, a multiple of 64.
        pub cols_per_split: i64,
        /// splits × B partial maxima (out).
        pub part_m: u64,
        /// splits × B partial sums (out).
        pub part_s: u64,
        /// splits × B × K partial O = Σ_j e^{s_ij − m} v_j (out; tensor-core
        /// forward only, 0 for `mns_fwd_f32`).
        pub part_o: u64,
    }

    /// `mns_du_merge_f32` (`MnsMergeParams`).
    pub struct MergeParams("MnsMergeParams") {
        /// N×K candidates.
        pub v: u64,
        /// splits × B partial maxima (in).
        pub part_m: u64,
        /// splits × B × K partial O (in).
        pub part_o: u64,
        /// B row maxima (in).
        pub mrow: u64,
        /// B coefficients (in).
        pub coef: u64,
        /// B diagonal terms (in).
        pub gdiag: u64,
        /// B×K ∂L/∂U (out).
        pub d_u: u64,
        /// B.
        pub b: i64,
        /// K.
        pub k: i64,
        /// o: row r's positive is column r + o.
        pub offset: i64,
        /// Column splits of the forward kernel.
        pub splits: i32,
        /// Explicit padding (0).
        pub pad: i32,
    }

    /// `mns_rows_f32` (`MnsRowsParams`).
    pub struct RowsParams("MnsRowsParams") {
        /// B×K queries.
        pub u: u64,
        /// N×K candidates.
        pub v: u64,
        /// N log Q.
        pub log_q: u64,
        /// B row weights, or 0 (null): all 1.
        pub row_weight: u64,
        /// splits × B partial maxima (in).
        pub part_m: u64,
        /// splits × B partial sums (in).
        pub part_s: u64,
        /// B lse (out).
        pub lse: u64,
        /// B ℓ (out).
        pub row_loss: u64,
        /// B top-1 flags, i32 (out).
        pub top1: u64,
        /// B w·ℓ (out).
        pub wloss: u64,
        /// B row maxima m_i (out).
        pub mrow: u64,
        /// B coefficients w_i/(B·τ·Σ_i) (out).
        pub coef: u64,
        /// B diagonal terms G_ii/τ (out).
        pub gdiag: u64,
        /// B.
        pub b: i64,
        /// K.
        pub k: i64,
        /// o: row r's positive is column r + o.
        pub offset: i64,
        /// 1/τ in f32.
        pub inv_tau: f32,
        /// 1: subtract log_q on the diagonal too.
        pub correct_positive: i32,
        /// Column splits of the forward kernel.
        pub splits: i32,
        /// The tensor-core tier (`MNS_TIER_*`; 0 on the SIMT path): s_ii's
        /// factors are rounded as that tier rounds the other logits', so that
        /// ℓ = lse − s_ii keeps its cancellation.
        pub tier: i32,
    }

    /// `mns_loss_f32` (`MnsLossParams`).
    pub struct LossParams("MnsLossParams") {
        /// B w·ℓ (in).
        pub wloss: u64,
        /// The loss, one f32 (out).
        pub loss: u64,
        /// B.
        pub b: i64,
    }

    /// `mns_dtau_f32` (`MnsDtauParams`).
    pub struct DtauParams("MnsDtauParams") {
        /// B×K queries.
        pub u: u64,
        /// B×K ∂L/∂U (in).
        pub d_u: u64,
        /// `parts` f64 partial sums of u·dU (out of phase 0, in of phase 1).
        pub part: u64,
        /// ∂L/∂τ, one f32 (out of phase 1).
        pub d_temperature: u64,
        /// B·K.
        pub len: i64,
        /// 1/τ in f64.
        pub inv_tau: f64,
        /// Blocks of phase 0 ([`dtau_parts`]).
        pub parts: i32,
        /// 0: per-block partials; 1: their fixed-order sum, −Σ/τ.
        pub phase: i32,
    }


    /// `mns_du_f32` and `mns_dv_f32` (`MnsGradParams`).
    pub struct GradParams("MnsGradParams") {
        /// The logits.
        pub x: Logits,
        /// B row maxima (in).
        pub mrow: u64,
        /// B coefficients (in).
        pub coef: u64,
        /// B diagonal terms (in).
        pub gdiag: u64,
        /// dU (B×K) or dV (N×K) (out).
        pub out: u64,
    }
}

/// Blocks of `mns_dtau_f32`'s first phase for B·K = `len` elements: one per
/// 2048 elements (8 a thread), at most 1024, so that the second phase sums
/// a few hundred partials at most. A function of the shape alone.
pub fn dtau_parts(len: usize) -> usize {
    len.div_ceil(2048).clamp(1, 1024)
}

// SAFETY: each is `#[repr(C)]` of plain integers and floats (device
// addresses as u64), with no padding and no Rust-only invariant, and its
// layout is the `.cu` struct's (tested: `layout` against NVRTC and g++), so
// the kernel reads exactly the bytes cudarc copies into its parameter space.
unsafe impl cudarc::driver::DeviceRepr for FwdParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for RowsParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for LossParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for GradParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for DtauParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for MergeParams {}

/// The parameters of one launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Params {
    /// `mns_fwd_f32`.
    Fwd(FwdParams),
    /// `mns_rows_f32`.
    Rows(RowsParams),
    /// `mns_loss_f32`.
    Loss(LossParams),
    /// `mns_du_f32` or `mns_dv_f32`.
    Grad(GradParams),
    /// `mns_dtau_f32`.
    Dtau(DtauParams),
    /// `mns_du_merge_f32`.
    Merge(MergeParams),
}

#[cfg(feature = "testing")]
impl Params {
    /// The struct's memory image: its fields' little-endian bytes in order
    /// (there is no padding; a test checks the length against `size_of`).
    pub fn bytes(&self) -> Vec<u8> {
        let mut o = vec![];
        match self {
            Params::Fwd(p) => p.write(&mut o),
            Params::Merge(p) => p.write(&mut o),
            Params::Rows(p) => p.write(&mut o),
            Params::Loss(p) => p.write(&mut o),
            Params::Grad(p) => p.write(&mut o),
            Params::Dtau(p) => p.write(&mut o),
        }
        o
    }
}

/// One kernel launch: the kernel, its grid, block size, dynamic shared
/// memory and parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Launch {
    /// The kernel.
    pub kernel: Kernel,
    /// Grid (x, y).
    pub grid: (u32, u32),
    /// Threads a block.
    pub threads: u32,
    /// Dynamic shared memory a block, bytes.
    pub smem: u32,
    /// The kernel's parameter struct.
    pub params: Params,
}

/// The address of every buffer of one call (device pointers on a GPU;
/// buffer numbers in the emulator). 0 is null.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Buffers {
    /// B×K queries.
    pub u: u64,
    /// N×K candidates.
    pub v: u64,
    /// N log Q.
    pub log_q: u64,
    /// N ids; 0 without ids.
    pub ids: u64,
    /// B row weights; 0 without row weights.
    pub row_weight: u64,
    /// splits × B partial maxima.
    pub part_m: u64,
    /// splits × B partial sums.
    pub part_s: u64,
    /// splits × B × K (tensor-core path only; 0 otherwise).
    pub part_o: u64,
    /// B lse.
    pub lse: u64,
    /// B ℓ.
    pub row_loss: u64,
    /// B top-1 flags (i32).
    pub top1: u64,
    /// B w·ℓ.
    pub wloss: u64,
    /// B row maxima.
    pub mrow: u64,
    /// B row coefficients.
    pub coef: u64,
    /// B diagonal terms.
    pub gdiag: u64,
    /// The loss (one f32).
    pub loss: u64,
    /// B×K ∂L/∂U.
    pub d_u: u64,
    /// N×K ∂L/∂V.
    pub d_v: u64,
    /// ∂L/∂τ (one f32).
    pub d_temperature: u64,
    /// [`dtau_parts`]`(B·K)` f64 partial sums of ∂L/∂τ.
    pub dtau_part: u64,
}

/// What a call computes beyond its shape: τ, the diagonal convention and the
/// positive offset o.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// τ.
    pub temperature: f32,
    /// Subtract log_q on the diagonal too.
    pub correct_positive: bool,
    /// o: row r's positive is column r + o.
    pub positive_offset: usize,
}

/// The launch sequence of one call on a B×N×K problem, on one stream in
/// this order. SIMT path: forward, row merge, loss, dU, dV, ∂L/∂τ (two
/// phases). Tensor-core path (`plan.tc`): forward + O, row merge, loss, dU
/// merge, dV, ∂L/∂τ (two phases). Either way the first three are the
/// forward-only call.
pub fn launches(
    plan: &Plan,
    (b, n, k): (usize, usize, usize),
    opt: Options,
    a: &Buffers,
) -> [Launch; 7] {
    let (temperature, correct_positive) = (opt.temperature, opt.correct_positive);
    let offset = opt.positive_offset as i64;
    let inv_tau = 1.0 / temperature;
    let x = Logits {
        u: a.u,
        v: a.v,
        log_q: a.log_q,
        ids: a.ids,
        b: b as i64,
        n: n as i64,
        k: k as i64,
        offset,
        inv_tau,
        pad: 0,
    };
    let grad = |out: u64| GradParams {
        x,
        mrow: a.mrow,
        coef: a.coef,
        gdiag: a.gdiag,
        out,
    };
    let simt = |kernel: Kernel, grid: (u32, u32), params: Params| Launch {
        kernel,
        grid,
        threads: super::THREADS,
        smem: 0,
        params,
    };
    let fwd = Params::Fwd(FwdParams {
        x,
        cols_per_split: plan.cols_per_split as i64,
        part_m: a.part_m,
        part_s: a.part_s,
        part_o: if plan.tc.is_some() { a.part_o } else { 0 },
    });
    let rows = simt(
        Kernel::Rows,
        (plan.rows_grid, 1),
        Params::Rows(RowsParams {
            u: a.u,
            v: a.v,
            log_q: a.log_q,
            row_weight: a.row_weight,
            part_m: a.part_m,
            part_s: a.part_s,
            lse: a.lse,
            row_loss: a.row_loss,
            top1: a.top1,
            wloss: a.wloss,
            mrow: a.mrow,
            coef: a.coef,
            gdiag: a.gdiag,
            b: b as i64,
            k: k as i64,
            offset,
            inv_tau,
            correct_positive: correct_positive as i32,
            splits: plan.splits as i32,
            tier: plan.tc.map_or(0, |t| super::tier_code(t.tier) as i32),
        }),
    );
    let loss = simt(
        Kernel::Loss,
        (1, 1),
        Params::Loss(LossParams {
            wloss: a.wloss,
            loss: a.loss,
            b: b as i64,
        }),
    );
    let parts = dtau_parts(b * k);
    let dtau = |phase: i32| {
        simt(
            Kernel::Dtau,
            (if phase == 0 { parts as u32 } else { 1 }, 1),
            Params::Dtau(DtauParams {
                u: a.u,
                d_u: a.d_u,
                part: a.dtau_part,
                d_temperature: a.d_temperature,
                len: (b * k) as i64,
                inv_tau: 1.0 / temperature as f64,
                parts: parts as i32,
                phase,
            }),
        )
    };
    match plan.tc {
        None => [
            simt(Kernel::Fwd, plan.fwd_grid, fwd),
            rows,
            loss,
            simt(Kernel::Du, plan.du_grid, Params::Grad(grad(a.d_u))),
            simt(Kernel::Dv, plan.dv_grid, Params::Grad(grad(a.d_v))),
            dtau(0),
            dtau(1),
        ],
        Some(tc) => {
            let tensor = |kernel: Kernel, grid: (u32, u32), params: Params| Launch {
                kernel,
                grid,
                threads: super::TC_THREADS,
                smem: tc.smem,
                params,
            };
            [
                tensor(tc.fwd_kernel(), plan.fwd_grid, fwd),
                rows,
                loss,
                simt(
                    Kernel::DuMerge,
                    (tc.merge_grid, 1),
                    Params::Merge(MergeParams {
                        v: a.v,
                        part_m: a.part_m,
                        part_o: a.part_o,
                        mrow: a.mrow,
                        coef: a.coef,
                        gdiag: a.gdiag,
                        d_u: a.d_u,
                        b: b as i64,
                        k: k as i64,
                        offset,
                        splits: plan.splits as i32,
                        pad: 0,
                    }),
                ),
                tensor(
                    tc.dv_kernel(),
                    (plan.dv_grid.0, 1),
                    Params::Grad(grad(a.d_v)),
                ),
                dtau(0),
                dtau(1),
            ]
        }
    }
}

/// One struct of [`layout`]: its C name, its size and (field, offset) pairs.
#[cfg(feature = "testing")]
pub type StructLayout = (&'static str, usize, Vec<(String, usize)>);

/// The Rust side of the ABI: (C struct name, size, [(field, offset)]), the
/// names as in `kernels/params.cuh` (nested `MnsLogits` fields as `x.u`, …).
#[cfg(feature = "testing")]
pub fn layout() -> Vec<StructLayout> {
    fn of<T: Abi>() -> StructLayout {
        let mut fields = vec![];
        T::fields("", 0, &mut fields);
        (T::C_NAME, std::mem::size_of::<T>(), fields)
    }
    vec![
        of::<FwdParams>(),
        of::<RowsParams>(),
        of::<LossParams>(),
        of::<GradParams>(),
        of::<DtauParams>(),
        of::<MergeParams>(),
    ]
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    /// The byte images have the structs' sizes: no implicit padding.
    #[test]
    fn byte_images_are_the_whole_structs() {
        let a = Buffers::default();
        let opt = Options {
            temperature: 2.0,
            correct_positive: true,
            positive_offset: 3,
        };
        let plans = [
            Plan::new(100, 300, 70, 4),
            Plan::tensor_core(100, 300, 70, 4, crate::Precision::F32).unwrap(),
        ];
        for plan in plans {
            for l in launches(&plan, (100, 300, 70), opt, &a) {
                let size = match l.params {
                    Params::Fwd(_) => std::mem::size_of::<FwdParams>(),
                    Params::Rows(_) => std::mem::size_of::<RowsParams>(),
                    Params::Loss(_) => std::mem::size_of::<LossParams>(),
                    Params::Grad(_) => std::mem::size_of::<GradParams>(),
                    Params::Dtau(_) => std::mem::size_of::<DtauParams>(),
                    Params::Merge(_) => std::mem::size_of::<MergeParams>(),
                };
                assert_eq!(l.params.bytes().len(), size, "{l:?}");
            }
        }
        // And the layout lists every field once, in increasing order, with
        // no gap (each field 8 bytes, or 4 for the f32/i32 ones).
        for (name, size, fields) in layout() {
            let mut end = 0;
            for (f, off) in &fields {
                assert_eq!(*off, end, "{name}.{f}");
                let four = (f.ends_with("inv_tau") && name != "MnsDtauParams")
                    || f.ends_with("correct_positive")
                    || f.ends_with("splits")
                    || f.ends_with("tier")
                    || f.ends_with("parts")
                    || f.ends_with("phase")
                    || f.ends_with("pad");
                end += if four { 4 } else { 8 };
            }
            assert_eq!(end, size, "{name}");
        }
    }
}
