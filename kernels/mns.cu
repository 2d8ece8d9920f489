// mixneg — the fused Mixed-Negative-Sampling loss on NVIDIA GPUs.
//
// What every kernel computes is docs/design.md §2 (the loss, the positive
// offset o, accidental hits, the gradients); the kernel parameters mirror
// src/cuda/abi.rs. This file is the one NVRTC compiles (src/cuda/mod.rs hands
// it the included files by name) and the one the tests' CPU emulator
// includes; the kernels live in the files it includes, in this order:
// blocks.cuh (tile sizes, tiers, rounding, mma.sync, cp.async), params.cuh
// (the parameter structs), simt.cuh (the SIMT path) and tc.cuh (the
// tensor-core path).
//
// No kernel stores the B x N logits: each recomputes 64 x 64 logit tiles
// from U and V staged through shared memory, accumulating in f32 registers
// (FlashAttention-2's scheme). One stream, no atomics: every result is
// produced by a fixed sequence of f32/f64 operations, so runs are
// bit-for-bit reproducible.
//
// The SIMT path (any GPU, any K), in launch order:
//
//   mns_fwd_f32   grid (ceil(B/64), splits), 256 threads. Block (x, y) owns
//                 rows 64x..64x+63 and the y-th range of `cols_per_split`
//                 columns; thread (ty, tx) = (tid/16, tid%16) computes rows
//                 ty+16i and columns tx+16j (i, j < 4) of each tile and keeps
//                 an online (max, sum) per row excluding the positive; the 16
//                 threads of a row reduce with half-warp shuffles. Writes one
//                 partial (max, sum) per row and split. The column split keeps
//                 the GPU full when B is small.
//   mns_rows_f32  one warp per row: s_ii by a warp dot product, the ordered
//                 merge of the split partials (lane 0, f64), then lse_i, l_i,
//                 top-1, the row max m_i, c_i = w_i/(B tau (e_ii + S')) and
//                 G_ii/tau = -w_i S'/(B tau (e_ii + S')) (S' the off-diagonal
//                 sum: no cancellation when the positive dominates).
//   mns_loss_f32  one block: L = (1/B) sum_i w_i l_i, fixed-order f64 tree.
//   mns_du_f32,   grid (ceil(B/64) or ceil(N/64), ceil(K/64)), one template
//   mns_dv_f32    (mns_grad_simt): a block owns a 64-row x 64-component tile
//                 of dU (or dV) in registers and sweeps the other side:
//                 logit tile -> G tile (shared) -> dU += G V (dV += G^T U).
//                 10 B N K flops in all for 6 B N K useful (the logits are
//                 recomputed once more per 64-component slice when K > 64),
//                 chosen over one backward kernel with atomic dU for
//                 determinism.
//   mns_dtau_f32  dL/dtau = -<U, dU>/tau: per-block f64 partials, then
//                 their fixed-order sum (two launches).
//
// The tensor-core path (sm_80 and newer, K <= 128) is described at the top
// of tc.cuh.
//
// All index arithmetic that can exceed 2^31 (row * K, split * B) is 64-bit.

#include "blocks.cuh"
#include "params.cuh"
#include "simt.cuh"
#include "tc.cuh"
