//! The grid plan of one call.

use super::TILE;

/// Grid sizes of one call (a test hook: the emulator tests drive the same
/// plan); a pure function of the shape and the device's
/// multiprocessor count, shared by the launches and by the tests that run
/// the kernels on the CPU.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Column splits of the forward kernel.
    pub splits: usize,
    /// Columns per split, a multiple of 64.
    pub cols_per_split: usize,
    /// `mns_fwd_f32` grid: (⌈B/64⌉, splits).
    pub fwd_grid: (u32, u32),
    /// `mns_rows_f32` grid: ⌈B/8⌉ blocks (one warp per row).
    pub rows_grid: u32,
    /// `mns_du_f32` grid: (⌈B/64⌉, ⌈K/64⌉).
    pub du_grid: (u32, u32),
    /// `mns_dv_f32` grid: (⌈N/64⌉, ⌈K/64⌉).
    pub dv_grid: (u32, u32),
}

impl Plan {
    /// The plan for a B×N×K problem on a device with `sms` multiprocessors:
    /// enough column splits that the forward grid has ≥ 2 blocks per SM.
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
        }
    }
}
