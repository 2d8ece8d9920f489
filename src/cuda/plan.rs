//! The grid plan of one call.

use super::TILE;
use crate::Precision;

/// Grid sizes of one call (a test hook: the emulator tests drive the same
/// plan); a pure function of the shape, the path and the device's
/// multiprocessor count, shared by the launches and by the tests that run
/// the kernels on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Column splits of the forward kernel.
    pub splits: usize,
    /// Columns per split, a multiple of 64.
    pub cols_per_split: usize,
    /// Forward grid: (⌈B/64⌉, splits).
    pub fwd_grid: (u32, u32),
    /// `mns_rows_f32` grid: ⌈B/8⌉ blocks (one warp per row).
    pub rows_grid: u32,
    /// `mns_du_f32` grid: (⌈B/64⌉, ⌈K/64⌉) (SIMT path).
    pub du_grid: (u32, u32),
    /// `mns_dv_f32` grid: (⌈N/64⌉, ⌈K/64⌉) (SIMT path; the tensor-core dV
    /// kernel uses (⌈N/64⌉, 1)).
    pub dv_grid: (u32, u32),
    /// The tensor-core path, or None for the SIMT kernels.
    pub tc: Option<Tc>,
}

/// The tensor-core kernels of one call (`mns_fwd_tc_*`, `mns_dv_tc_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tc {
    /// K class: 0 for K ≤ 32, 1 for K ≤ 64, 2 for K ≤ 128.
    pub class: usize,
    /// The tier.
    pub tier: Precision,
    /// Dynamic shared memory a block, bytes ([`tc_smem_bytes`]).
    pub smem: u32,
    /// `mns_du_merge_f32` grid: ⌈B·K/256⌉.
    pub merge_grid: u32,
}

/// K classes of the tensor-core kernels: the padded K each is built for.
pub const TC_CLASSES: [usize; 3] = [32, 64, 128];

impl Tc {
    /// The forward kernel.
    pub fn fwd_kernel(&self) -> super::Kernel {
        super::Kernel::FwdTc(self.class, self.tier)
    }
    /// The dV kernel.
    pub fn dv_kernel(&self) -> super::Kernel {
        super::Kernel::DvTc(self.class, self.tier)
    }
}

/// Dynamic shared memory of a tensor-core block for K padded to `kp` (a
/// multiple of 16), as `mns_tc_smem` in `kernels/tc.cuh` lays it out: the
/// owned tile and two streamed tiles of 64 rows of kp + 4 floats, 6·64
/// floats of side data and 2·64 ids (i64).
pub fn tc_smem_bytes(kp: usize) -> usize {
    4 * (3 * TILE * (kp + 4) + 6 * TILE) + 8 * 2 * TILE
}

impl Plan {
    /// The SIMT plan for a B×N×K problem on a device with `sms`
    /// multiprocessors: enough column splits that the forward grid has ≥ 2
    /// blocks per SM.
    pub fn new(b: usize, n: usize, k: usize, sms: usize) -> Plan {
        let row_blocks = b.div_ceil(TILE);
        let col_tiles = n.div_ceil(TILE);
        let splits = (2 * sms.max(1))
            .div_ceil(row_blocks)
            .clamp(1, col_tiles.max(1));
        let tiles_per_split = col_tiles.div_ceil(splits);
        let splits = col_tiles.div_ceil(tiles_per_split);
        let k_slices = k.div_ceil(TILE) as u32;
        Plan {
            splits,
            cols_per_split: tiles_per_split * TILE,
            fwd_grid: (row_blocks as u32, splits as u32),
            rows_grid: b.div_ceil(8) as u32,
            du_grid: (row_blocks as u32, k_slices),
            dv_grid: (col_tiles as u32, k_slices),
            tc: None,
        }
    }

    /// The tensor-core plan (same splits as [`Plan::new`]) at `precision`,
    /// or None when K > 128 (the kernels hold all of K in registers).
    pub fn tensor_core(
        b: usize,
        n: usize,
        k: usize,
        sms: usize,
        precision: Precision,
    ) -> Option<Plan> {
        let class = TC_CLASSES.iter().position(|&c| k <= c)?;
        let kp = k.div_ceil(16) * 16;
        Some(Plan {
            tc: Some(Tc {
                class,
                tier: precision,
                smem: tc_smem_bytes(kp) as u32,
                merge_grid: (b * k).div_ceil(super::THREADS as usize) as u32,
            }),
            ..Plan::new(b, n, k, sms)
        })
    }
}
