// mixneg — the fused Mixed-Negative-Sampling loss on NVIDIA GPUs.
//
// What every kernel computes is docs/design.md §2 (the loss, the positive
// offset o, accidental hits, the gradients); the kernel parameters mirror
// src/cuda/abi.rs. One file, because NVRTC compiles one source and the CPU
// emulator of the tests includes it whole; its sections: building blocks
// (rounding, mma.sync, cp.async), the parameter structs, the SIMT path, the
// tensor-core path.
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
// The tensor-core path (sm_80 and newer, K <= 128) is described where it
// starts, below.
//
// All index arithmetic that can exceed 2^31 (row * K, split * B) is 64-bit.

#define MNS_BM 64
#define MNS_BN 64
#define MNS_BK 16
#define MNS_KC 64
#define MNS_NT 256
#define MNS_PAD 4

// The precision tiers (the tensor-core kernels' name suffix; Precision::{F32, Tf32,
// Bf16} in Rust, precision="f32" | "tf32" | "bf16" in Python). F32 runs
// each product as 3xTF32 on the tensor cores.
#define MNS_TIER_F32 0
#define MNS_TIER_TF32 1
#define MNS_TIER_BF16 2

#define MNS_NEG_INF (-__int_as_float(0x7f800000))

typedef long long i64;

// Called after each __shared__ declaration: nothing on the GPU; on the CPU
// emulator (tests/cuda_emu/emu.hpp) it poisons the object with NaN at every
// block start, so that reading shared memory this block never wrote shows.
#ifndef MNS_EMULATOR
__device__ __forceinline__ void mns_smem_poison(void*, unsigned long long) {}
#endif

// A warp's fragment load from shared memory (every lane of the warp calls it
// at the same point): a plain load on the GPU; on the emulator, with
// MNS_EMU_STATS=1, the warp's 32 addresses are also checked for bank
// conflicts (tests/cuda_emu/emu.hpp), so "conflict-free" is a test.
#ifndef MNS_EMULATOR
#define mns_lds(p) (*(p))
#endif

// The tensor-core path and its building blocks exist for sm_80 and newer
// (and on the emulator); older GPUs get the SIMT kernels only.
#if defined(MNS_EMULATOR) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define MNS_HAVE_TC 1
#endif

// x rounded to TF32 (10 explicit mantissa bits, to nearest, ties away from
// zero) in software, as cvt.rna.tf32.f32 rounds a finite x: for any GPU.
__device__ __forceinline__ float mns_round_tf32(float x)
{
    const unsigned b = __float_as_uint(x);
    return (b & 0x7F800000u) == 0x7F800000u ? x : __uint_as_float((b + 0x1000u) & 0xFFFFE000u);
}

// x rounded to bf16 (8 significant bits, to nearest even) in software, as
// cvt.rn.bf16 rounds a finite x.
__device__ __forceinline__ float mns_round_bf16(float x)
{
    const unsigned b = __float_as_uint(x);
    if ((b & 0x7F800000u) == 0x7F800000u) return x;
    return __uint_as_float((b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u);
}

// Tensor-core building blocks (sm_80 and newer), behind device functions so
// that NVRTC compiles the inline PTX and the CPU emulator its own version
// (tests/cuda_emu/emu.hpp). mma.sync.m16n8k8 TF32 fragments, per PTX ISA,
// with g = lane / 4 and t = lane % 4:
//   A (16 x 8, row-major): a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4],
//                          a3 = A[g+8][t+4];
//   B (8 x 8, "col"):      b0 = B[t][g], b1 = B[t+4][g];
//   C, D (16 x 8):         c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t],
//                          c3 = C[g+8][2t+1].
// 3xTF32: x = big + small + r with big = tf32(x), small = tf32(x - big),
// |r| <= 2^-22 |x| (each rounding keeps 11 significant bits); a.b is then
// big.big + big.small + small.big, the small.small term (<= 2^-22 |a b|)
// dropped: f32-level accuracy from three TF32 products.
#if !defined(MNS_EMULATOR) && defined(MNS_HAVE_TC)
__device__ __forceinline__ unsigned mns_to_tf32(float x)
{
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// d += A.B for one m16n8k8 TF32 tile of the warp (every lane calls it).
__device__ __forceinline__ void mns_mma_tf32(float d[4], const unsigned a[4], const unsigned b[2])
{
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// (lo, hi) rounded to bf16 (to nearest even) and packed, lo in the low half.
__device__ __forceinline__ unsigned mns_pack_bf16(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// d += A.B for one m16n8k16 bf16 tile of the warp, f32 accumulation. With
// g = lane / 4, t = lane % 4, each register two bf16 (the lower index in
// the low half):
//   A (16 x 16): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..2t+1],
//                a2 = A[g][2t+8..2t+9], a3 = A[g+8][2t+8..2t+9];
//   B (16 x 8):  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g];
//   C, D as for m16n8k8.
__device__ __forceinline__ void mns_mma_bf16(float d[4], const unsigned a[4], const unsigned b[2])
{
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// cp.async (sm_80 and newer): 16-byte copies from global to shared memory
// that complete asynchronously; mns_cp_async_commit closes a group of them
// and mns_cp_async_wait<N> waits until at most N of this thread's groups are
// still in flight. Other threads' copies are visible only after their wait
// and a __syncthreads.
#if !defined(MNS_EMULATOR) && defined(MNS_HAVE_TC)
__device__ __forceinline__ void mns_cp_async16(void* smem, const void* gmem)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void mns_cp_async_commit()
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void mns_cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
#endif

#ifdef MNS_HAVE_TC
// big = tf32(x), small = tf32(x - big), as 32-bit patterns.
__device__ __forceinline__ void mns_split_tf32(float x, unsigned& big, unsigned& small)
{
    big = mns_to_tf32(x);
    small = mns_to_tf32(x - __uint_as_float(big));
}

// d += A.B at f32 accuracy: three TF32 products, the small ones first.
__device__ __forceinline__ void mns_mma_3xtf32(
    float d[4], const unsigned a_big[4], const unsigned a_small[4],
    const unsigned b_big[2], const unsigned b_small[2])
{
    mns_mma_tf32(d, a_small, b_big);
    mns_mma_tf32(d, a_big, b_small);
    mns_mma_tf32(d, a_big, b_big);
}
#endif

// The launch ABI: one parameter struct per kernel, passed by value. Mirrored
// field for field by src/cuda/abi.rs (tests compare sizes and offsets with
// NVRTC's and g++'s); every struct is free of implicit padding. Pointers
// are device addresses; null for the absent optional inputs (ids,
// row_weight).
struct MnsLogits {
    const float* u;      // B x K
    const float* v;      // N x K
    const float* log_q;  // N
    const i64* ids;      // N, or null
    i64 b, n, k;
    i64 offset;          // row r's positive is column r + offset
    float inv_tau;
    int pad;  // 0; the diagonal is never formed from these (see mns_rows_f32)
};
// The logit kernels' locals from a MnsLogits (restrict-qualified pointers).
#define MNS_UNPACK_LOGITS(X)                        \
    const float* __restrict__ u = (X).u;           \
    const float* __restrict__ v = (X).v;           \
    const float* __restrict__ log_q = (X).log_q;   \
    const i64* __restrict__ ids = (X).ids;         \
    const i64 b = (X).b, n = (X).n, k = (X).k;     \
    const i64 offset = (X).offset;                 \
    const float inv_tau = (X).inv_tau

struct MnsFwdParams {
    MnsLogits x;
    i64 cols_per_split;
    float* part_m;  // splits x B
    float* part_s;  // splits x B
    float* part_o;  // splits x B x K (tensor-core forward only; null for mns_fwd_f32)
};
struct MnsRowsParams {
    const float* u;
    const float* v;
    const float* log_q;
    const float* row_weight;  // B, or null
    const float* part_m;
    const float* part_s;
    float* lse;
    float* row_loss;
    int* top1;
    float* wloss;
    float* mrow;
    float* coef;
    float* gdiag;
    i64 b, k;
    i64 offset;
    float inv_tau;
    int correct_positive;
    int splits;
    int tier;  // MNS_TIER_*: s_ii's factors rounded as the tensor-core tier rounds the other logits' (F32: not)
};
struct MnsLossParams {
    const float* wloss;
    float* loss;
    i64 b;
};
struct MnsDtauParams {
    const float* u;      // B x K
    const float* d_u;    // B x K, from mns_du_f32 or mns_du_merge_f32
    double* part;        // parts per-block partial sums of u . d_u
    float* d_temperature;  // 1
    i64 len;             // B * K
    double inv_tau;      // 1/tau in f64
    int parts;           // blocks of phase 0 (src/cuda/abi.rs: dtau_parts)
    int phase;           // 0: partials, grid (parts); 1: their sum, one block
};
struct MnsGradParams {
    MnsLogits x;
    const float* mrow;
    const float* coef;
    const float* gdiag;
    float* out;  // d_u (B x K) or d_v (N x K)
};

// Half-warp (16-lane) reductions: the 16 threads sharing a row group.
__device__ __forceinline__ float mns_max16(float x) {
    for (int m = 8; m >= 1; m >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, m));
    return x;
}
__device__ __forceinline__ float mns_sum16(float x) {
    for (int m = 8; m >= 1; m >>= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
    return x;
}
__device__ __forceinline__ float mns_sum32(float x) {
    for (int m = 16; m >= 1; m >>= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
    return x;
}

// Shared staging of one 16-wide K slice of 64 rows of U and 64 rows of V,
// transposed ([kk][row]) so that the inner product reads are conflict-free.
struct MnsTileSmem {
    float a[MNS_BK][MNS_BM + MNS_PAD];
    float b[MNS_BK][MNS_BN + MNS_PAD];
};

// acc[i][j] = <x_{r0+ty+16i}, y_{c0+tx+16j}> over all K (0 outside the
// matrices). Every thread of the block must call it (it synchronizes).
__device__ __forceinline__ void mns_dot_tile(
    MnsTileSmem& sm, float acc[4][4],
    const float* __restrict__ x, i64 x_rows, i64 r0,
    const float* __restrict__ y, i64 y_rows, i64 c0,
    i64 k, int tid, int ty, int tx)
{
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (i64 k0 = 0; k0 < k; k0 += MNS_BK) {
        // 64 x 16 floats each, 4 per thread; consecutive threads read
        // consecutive components of a row (64-byte segments).
        for (int idx = tid; idx < MNS_BM * MNS_BK; idx += MNS_NT) {
            int r = idx / MNS_BK, kk = idx % MNS_BK;
            i64 gk = k0 + kk;
            i64 gr = r0 + r, gc = c0 + r;
            sm.a[kk][r] = (gr < x_rows && gk < k) ? x[gr * k + gk] : 0.0f;
            sm.b[kk][r] = (gc < y_rows && gk < k) ? y[gc * k + gk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MNS_BK; ++kk) {
            float av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = sm.a[kk][ty + 16 * i];
            for (int j = 0; j < 4; ++j) bv[j] = sm.b[kk][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
}

// The corrected logit s_rc from the raw dot product, for a column col that is
// not the row's positive pos = row + offset; -inf when removed (an accidental
// hit: ids[col] == ids[pos]) or outside the candidates.
__device__ __forceinline__ float mns_logit(
    float dot, i64 pos, i64 col, i64 n, const float* __restrict__ log_q,
    const i64* __restrict__ ids, float inv_tau)
{
    if (col >= n) return MNS_NEG_INF;
    if (ids != nullptr && ids[col] == ids[pos]) return MNS_NEG_INF;
    return fmaf(dot, inv_tau, -log_q[col]);
}

extern "C" __global__ void __launch_bounds__(MNS_NT) mns_fwd_f32(const MnsFwdParams p)
{
    MNS_UNPACK_LOGITS(p.x);
    const i64 cols_per_split = p.cols_per_split;
    float* __restrict__ part_m = p.part_m;
    float* __restrict__ part_s = p.part_s;
    __shared__ MnsTileSmem sm;
    mns_smem_poison(&sm, sizeof sm);
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const i64 r0 = (i64)blockIdx.x * MNS_BM;
    const i64 split = blockIdx.y;
    const i64 c_begin = split * cols_per_split;
    i64 c_end = c_begin + cols_per_split;
    if (c_end > n) c_end = n;

    float m[4], s[4];
    for (int i = 0; i < 4; ++i) { m[i] = MNS_NEG_INF; s[i] = 0.0f; }

    for (i64 c0 = c_begin; c0 < c_end; c0 += MNS_BN) {
        float acc[4][4];
        mns_dot_tile(sm, acc, u, b, r0, v, n, c0, k, tid, ty, tx);
        for (int i = 0; i < 4; ++i) {
            const i64 row = r0 + ty + 16 * i;
            float x[4];
            float tmax = MNS_NEG_INF;
            for (int j = 0; j < 4; ++j) {
                const i64 col = c0 + tx + 16 * j;
                // Columns of the next split, rows past B and the diagonal are
                // excluded (the diagonal is handled exactly by mns_rows_f32).
                x[j] = (row >= b || col >= c_end || col == row + offset)
                           ? MNS_NEG_INF
                           : mns_logit(acc[i][j], row + offset, col, n, log_q, ids, inv_tau);
                tmax = fmaxf(tmax, x[j]);
            }
            tmax = mns_max16(tmax);
            const float m_new = fmaxf(m[i], tmax);
            // While everything so far is removed, shift by 0: exp(-inf) = 0
            // keeps s at 0 without a branch (all 32 lanes must reach the
            // shuffles below, whatever their rows hold).
            const float shift = m_new == MNS_NEG_INF ? 0.0f : m_new;
            float p = 0.0f;
            for (int j = 0; j < 4; ++j) p += expf(x[j] - shift);
            p = mns_sum16(p);
            s[i] = s[i] * expf(m[i] - shift) + p;
            m[i] = m_new;
        }
    }
    if (tx == 0) {
        for (int i = 0; i < 4; ++i) {
            const i64 row = r0 + ty + 16 * i;
            if (row < b) {
                part_m[split * b + row] = m[i];
                part_s[split * b + row] = s[i];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(MNS_NT) mns_rows_f32(const MnsRowsParams p)
{
    const float* __restrict__ u = p.u;
    const float* __restrict__ v = p.v;
    const float* __restrict__ log_q = p.log_q;
    const float* __restrict__ row_weight = p.row_weight;
    const i64 b = p.b, k = p.k, offset = p.offset;
    const float inv_tau = p.inv_tau;
    const int correct_positive = p.correct_positive, splits = p.splits;
    const float* __restrict__ part_m = p.part_m;
    const float* __restrict__ part_s = p.part_s;
    float* __restrict__ lse = p.lse;
    float* __restrict__ row_loss = p.row_loss;
    int* __restrict__ top1 = p.top1;
    float* __restrict__ wloss = p.wloss;
    float* __restrict__ mrow = p.mrow;
    float* __restrict__ coef = p.coef;
    float* __restrict__ gdiag = p.gdiag;
    const int lane = threadIdx.x % 32;
    const i64 row = (i64)blockIdx.x * (MNS_NT / 32) + threadIdx.x / 32;
    if (row >= b) return;  // whole warp
    float d = 0.0f;
    const i64 pos = row + offset;  // the row's positive
    if (p.tier == MNS_TIER_TF32) {
        for (i64 c = lane; c < k; c += 32)
            d = fmaf(mns_round_tf32(u[row * k + c]), mns_round_tf32(v[pos * k + c]), d);
    } else if (p.tier == MNS_TIER_BF16) {
        for (i64 c = lane; c < k; c += 32)
            d = fmaf(mns_round_bf16(u[row * k + c]), mns_round_bf16(v[pos * k + c]), d);
    } else {
        for (i64 c = lane; c < k; c += 32) d = fmaf(u[row * k + c], v[pos * k + c], d);
    }
    d = mns_sum32(d);
    if (lane != 0) return;
    const float s_ii_f = correct_positive ? fmaf(d, inv_tau, -log_q[pos]) : d * inv_tau;
    // Ordered merge of the split partials (f64: B scalars, cheap).
    const double neg_inf = (double)MNS_NEG_INF;
    double m_off = neg_inf;
    for (int sp = 0; sp < splits; ++sp) m_off = fmax(m_off, (double)part_m[(i64)sp * b + row]);
    double so = 0.0;
    if (m_off > neg_inf) {
        for (int sp = 0; sp < splits; ++sp) {
            const double pm = part_m[(i64)sp * b + row];
            if (pm > neg_inf) so += (double)part_s[(i64)sp * b + row] * exp(pm - m_off);
        }
    }
    const double s_ii = s_ii_f;
    const double mx = fmax(m_off, s_ii);
    const double e_ii = exp(s_ii - mx);
    const double so2 = (m_off > neg_inf) ? so * exp(m_off - mx) : 0.0;
    const double sum = e_ii + so2;
    const double l = log(sum) + mx;
    const double loss = e_ii > 1e-300 ? log1p(so2 / e_ii) : l - s_ii;
    const double w = row_weight != nullptr ? (double)row_weight[row] : 1.0;
    lse[row] = (float)l;
    row_loss[row] = (float)loss;
    top1[row] = s_ii >= m_off ? 1 : 0;
    wloss[row] = (float)(w * loss);
    // The gradient kernels form G_ij/tau = coef_i * exp(s_ij - m_i) with m_i
    // a logit of this row (exact in f32), not exp(s_ij - lse_i): lse_i
    // rounded to f32 is off by eps*|lse_i|, which would scale the whole row
    // of P by that much (measured: 2e-6 relative at |s| ~ 1e3).
    const double c = w * (double)inv_tau / (double)b;
    mrow[row] = (float)mx;
    coef[row] = (float)(c / sum);
    gdiag[row] = (float)(-c * so2 / sum);
}

extern "C" __global__ void __launch_bounds__(MNS_NT) mns_loss_f32(const MnsLossParams p)
{
    const float* __restrict__ wloss = p.wloss;
    const i64 b = p.b;
    float* __restrict__ loss = p.loss;
    __shared__ double part[MNS_NT];
    mns_smem_poison(part, sizeof part);
    double acc = 0.0;
    for (i64 i = threadIdx.x; i < b; i += MNS_NT) acc += (double)wloss[i];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int h = MNS_NT / 2; h >= 1; h >>= 1) {
        if ((int)threadIdx.x < h) part[threadIdx.x] += part[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) loss[0] = (float)(part[0] / (double)b);
}

// G_rc / tau for one logit: coef_r exp(s_rc - m_r) off the diagonal (m_r the
// row's largest logit, coef_r = w_r/(B tau sum_r)), gdiag_r = c_r (P_rr - 1)
// on it, 0 when removed or outside the matrices.
__device__ __forceinline__ float mns_grad(
    float dot, i64 row, i64 col, i64 b, i64 n, i64 offset, const float* __restrict__ log_q,
    const i64* __restrict__ ids, float inv_tau,
    const float* __restrict__ mrow, const float* __restrict__ coef, const float* __restrict__ gdiag)
{
    if (row >= b || col >= n) return 0.0f;
    if (col == row + offset) return gdiag[row];
    const float x = mns_logit(dot, row + offset, col, n, log_q, ids, inv_tau);
    return coef[row] * expf(x - mrow[row]);  // expf(-inf) = 0 for removed hits
}

struct MnsBwdSmem {
    MnsTileSmem t;
    float g[MNS_BM][MNS_BN + 1];   // G tile, [row][col]
    float w[MNS_BM][MNS_KC + 1];   // V (dU) or U (dV) slice, [row or col][component]
};

// dU (DV false) or dV (DV true), one block per 64 owned rows of the output
// (queries for dU, candidates for dV) and 64-component slice kc0: the block
// sweeps every tile of the other side, recomputes the 64 x 64 logit tile
// (always queries x candidates), forms G/tau in shared memory and
// accumulates G V (dU) or G^T U (dV) for its slice in registers.
template <bool DV>
__device__ __forceinline__ void mns_grad_simt(const MnsGradParams& p)
{
    MNS_UNPACK_LOGITS(p.x);
    const float* __restrict__ mrow = p.mrow;
    const float* __restrict__ coef = p.coef;
    const float* __restrict__ gdiag = p.gdiag;
    float* __restrict__ out = p.out;
    __shared__ MnsBwdSmem sm;
    mns_smem_poison(&sm, sizeof sm);
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const i64 own0 = (i64)blockIdx.x * MNS_BM;  // first owned row of the output
    const i64 kc0 = (i64)blockIdx.y * MNS_KC;
    const i64 own_rows = DV ? n : b, other_rows = DV ? b : n;
    // The side streamed against the G tile: V for dU, U for dV.
    const float* __restrict__ w_src = DV ? u : v;
    float acc[4][4];  // [owned row ty+16i][component tx+16j]
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (i64 t0 = 0; t0 < other_rows; t0 += MNS_BN) {
        const i64 r0 = DV ? t0 : own0, c0 = DV ? own0 : t0;
        float dot[4][4];
        mns_dot_tile(sm.t, dot, u, b, r0, v, n, c0, k, tid, ty, tx);
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j)
                sm.g[ty + 16 * i][tx + 16 * j] = mns_grad(dot[i][j], r0 + ty + 16 * i, c0 + tx + 16 * j, b, n, offset,
                                                          log_q, ids, inv_tau, mrow, coef, gdiag);
        for (int idx = tid; idx < MNS_BN * MNS_KC; idx += MNS_NT) {
            const int r = idx / MNS_KC, kk = idx % MNS_KC;
            const i64 gr = t0 + r, gk = kc0 + kk;
            sm.w[r][kk] = (gr < other_rows && gk < k) ? w_src[gr * k + gk] : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int x = 0; x < MNS_BN; ++x) {
            float gv[4], wv[4];
            for (int i = 0; i < 4; ++i) gv[i] = DV ? sm.g[x][ty + 16 * i] : sm.g[ty + 16 * i][x];
            for (int j = 0; j < 4; ++j) wv[j] = sm.w[x][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(gv[i], wv[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        const i64 row = own0 + ty + 16 * i;
        for (int j = 0; j < 4; ++j) {
            const i64 c = kc0 + tx + 16 * j;
            if (row < own_rows && c < k) out[row * k + c] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(MNS_NT) mns_du_f32(const MnsGradParams p) { mns_grad_simt<false>(p); }
extern "C" __global__ void __launch_bounds__(MNS_NT) mns_dv_f32(const MnsGradParams p) { mns_grad_simt<true>(p); }

// dL/dtau = -<U, dU>/tau after dU, in two launches of one kernel (no
// atomics, so the result is reproducible): phase 0, grid (parts), block x
// sums u.d_u over elements x*256 + tid + j*parts*256 in f64 and writes the
// block's fixed-order tree sum to part[x]; phase 1, one block, sums the
// parts partials by the same tree and scales by -1/tau.
extern "C" __global__ void __launch_bounds__(MNS_NT) mns_dtau_f32(const MnsDtauParams p)
{
    __shared__ double part[MNS_NT];
    mns_smem_poison(part, sizeof part);
    double acc = 0.0;
    if (p.phase == 0) {
        const i64 stride = (i64)p.parts * MNS_NT;
        for (i64 x = (i64)blockIdx.x * MNS_NT + threadIdx.x; x < p.len; x += stride)
            acc += (double)p.u[x] * (double)p.d_u[x];
    } else {
        for (int i = threadIdx.x; i < p.parts; i += MNS_NT) acc += p.part[i];
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int h = MNS_NT / 2; h >= 1; h >>= 1) {
        if ((int)threadIdx.x < h) part[threadIdx.x] += part[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        if (p.phase == 0) p.part[blockIdx.x] = part[0];
        else p.d_temperature[0] = (float)(-part[0] * p.inv_tau);
    }
}

// ===========================================================================
// The tensor-core path (sm_80 and newer): two flash-style kernels at
// 8 B N K flops (the SIMT path above does 10-14), both products of each on
// mma.sync, plus a small merge.
//
//   mns_fwd_tc_*   grid (ceil(B/64), splits), 128 threads (4 warps). Block
//                  (x, y) owns rows 64x..64x+63 (warp w rows 16w..16w+15) and
//                  the y-th column range, FlashAttention-forward style with
//                  Q = U and K = V = V: per 64-column tile S = U V^T (tensor
//                  cores), masked and corrected logits, an online max m and
//                  sum l per row excluding the diagonal, and
//                  O = sum_j exp(s_ij - m_i) v_j accumulated on the tensor
//                  cores with the same V tile (rescaled when m grows). Writes
//                  the split's (m, l) as the SIMT forward does, and O.
//   mns_rows_f32   unchanged: merges the (m, l) partials into lse, l, top-1
//                  and the row coefficients.
//   mns_du_merge_f32  dU_i = coef_i sum_split exp(m_split,i - m_i) O_split,i
//                  + gdiag_i v_{i+o}: the ordered (flash-decoding) merge of
//                  the splits' O, plus the diagonal term P_ii - 1 formed
//                  without cancellation by mns_rows_f32.
//   mns_dv_tc_*    grid ceil(N/64), 128 threads: FlashAttention-backward's
//                  dK/dV half. Block owns candidates 64x..64x+63 and all K of
//                  their dV rows and sweeps every row tile: S^T = V U^T
//                  recomputed (tensor cores), G^T/tau from the row
//                  coefficients staged in shared memory, dV += G^T U (tensor
//                  cores).
// Each kernel keeps all of K (up to 128, padded to KP <= 8 KT) in one pass:
// the owned tile (64 x KP) is staged once, the streamed tiles through a
// two-stage cp.async pipeline, with the streamed tile's per-column (or
// per-row) side data staged beside it. Shared memory is dynamic
// (mns_tc_smem_bytes, mirrored by src/cuda/plan.rs), rows padded to KP + 4
// floats so that every fragment load (mns_lds) is free of bank conflicts
// (counted by the emulator's tests). The P.V and G^T.U products skip the
// n-tiles past ceil(K/8): at K = 65 in the K <= 128 class, 7 of 16.
//
// Precision (the kernel name's suffix): f32 = each product by 3xTF32
// (mns_mma_3xtf32: f32-level accuracy); tf32 = one TF32 pass (inputs and the
// exp'd tile rounded to 10-bit mantissas); bf16 = m16n8k16 bf16 (factors
// rounded to 7-bit mantissas, to nearest even). Accumulation is f32
// throughout. K is padded to a multiple of 16 (KP) for every tier.
// ===========================================================================

#define MNS_TC_BM 64
#define MNS_TC_BN 64
#define MNS_TC_NT 128
// mns_tc_stage fills 64-row tiles for both the owned and the streamed tile.
static_assert(MNS_TC_BM == MNS_TC_BN, "the owned and streamed tiles share one staging routine");

#ifndef MNS_EMULATOR
// The block's dynamic shared memory (sized at launch).
__device__ __forceinline__ unsigned char* mns_dynamic_smem()
{
    extern __shared__ __align__(16) unsigned char mns_dsmem[];
    return mns_dsmem;
}
#endif

struct MnsMergeParams {
    const float* v;       // N x K
    const float* part_m;  // splits x B
    const float* part_o;  // splits x B x K
    const float* mrow;
    const float* coef;
    const float* gdiag;
    float* d_u;           // B x K
    i64 b, k;
    i64 offset;
    int splits;
    int pad;
};

#ifdef MNS_HAVE_TC
// Stage rows r0..r0+63 of x (`rows` x k, row-major) into dst (64 rows of ld
// floats): components k..kp-1 and rows past `rows` are zero. With `vec`
// (k % 4 == 0 and x 16-byte aligned) in-range 16-byte pieces go by cp.async
// (the caller commits and waits), the rest by plain stores.
__device__ __forceinline__ void mns_tc_stage(
    float* dst, const float* __restrict__ x, i64 rows, i64 r0, i64 k, int kp, int ld, bool vec, int tid)
{
    const int q = kp / 4;
    for (int idx = tid; idx < MNS_TC_BN * q; idx += MNS_TC_NT) {
        const int r = idx / q, c = 4 * (idx % q);
        const i64 gr = r0 + r;
        float* d = dst + r * ld + c;
        if (vec && gr < rows && c < k) {
            mns_cp_async16(d, x + gr * k + c);
        } else {
            for (int e = 0; e < 4; ++e) d[e] = (gr < rows && c + e < k) ? x[gr * k + c + e] : 0.0f;
        }
    }
}


// acc[j] = the warp's 16 x 64 block of X Y^T in C-fragment layout (columns
// 8j..8j+7): xs the warp's 16 rows, ys the tile's 64 rows, ld floats a row,
// kp components (a multiple of MNS_KSTEP(MODE)).
#define MNS_KSTEP(MODE) ((MODE) == MNS_TIER_BF16 ? 16 : 8)
template <int MODE>
__device__ __forceinline__ void mns_tc_dots(
    float acc[8][4], const float* xs, const float* ys, int kp, int ld, int lane)
{
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int j = 0; j < 8; ++j)
        for (int r = 0; r < 4; ++r) acc[j][r] = 0.0f;
    for (int kk = 0; kk < kp; kk += MNS_KSTEP(MODE)) {
        if constexpr (MODE == MNS_TIER_BF16) {
            // The k-step's 16 components enter the fragments' k slots
            // permuted (slots 2t, 2t+1, 2t+8, 2t+9 hold components t, t+4,
            // t+8, t+12), the same for A and B, so the sum is unchanged and
            // lane (g, t) reads word g*ld + t + 4i: banks 4g + t (ld = 4 or
            // 20 mod 32), all 32 distinct. The natural order (2t, 2t+1)
            // would put two lanes on every even bank.
            const float* xa = xs + g * ld + kk + t;
            const unsigned a[4] = {mns_pack_bf16(mns_lds(xa), mns_lds(xa + 4)),
                                   mns_pack_bf16(mns_lds(xa + 8 * ld), mns_lds(xa + 8 * ld + 4)),
                                   mns_pack_bf16(mns_lds(xa + 8), mns_lds(xa + 12)),
                                   mns_pack_bf16(mns_lds(xa + 8 * ld + 8), mns_lds(xa + 8 * ld + 12))};
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float* yb = ys + (8 * j + g) * ld + kk + t;
                const unsigned bb[2] = {mns_pack_bf16(mns_lds(yb), mns_lds(yb + 4)),
                                        mns_pack_bf16(mns_lds(yb + 8), mns_lds(yb + 12))};
                mns_mma_bf16(acc[j], a, bb);
            }
        } else {
            const float* xa = xs + g * ld + kk + t;
            const float av[4] = {mns_lds(xa), mns_lds(xa + 8 * ld), mns_lds(xa + 4), mns_lds(xa + 8 * ld + 4)};
            unsigned ab[4], as[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                if (MODE == MNS_TIER_F32) mns_split_tf32(av[r], ab[r], as[r]);
                else ab[r] = mns_to_tf32(av[r]);
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float* yb = ys + (8 * j + g) * ld + kk + t;
                const float bv[2] = {mns_lds(yb), mns_lds(yb + 4)};
                unsigned bb[2], bs[2];
                for (int r = 0; r < 2; ++r) {
                    if (MODE == MNS_TIER_F32) mns_split_tf32(bv[r], bb[r], bs[r]);
                    else bb[r] = mns_to_tf32(bv[r]);
                }
                if (MODE == MNS_TIER_F32) mns_mma_3xtf32(acc[j], ab, as, bb, bs);
                else mns_mma_tf32(acc[j], ab, bb);
            }
        }
    }
}

// o[c] += F Y for the n-tiles c < kc = ceil(k/8): F the warp's 16 x 64 block
// in C-fragment layout (f[j] = columns 8j..8j+7), Y the tile (64 rows of ld
// floats), o's n-tile c the components 8c..8c+7. The class's other n-tiles
// (up to KT) are padding: never computed, never written out.
// TF32 (k8): a C fragment is an A fragment as it stands if each k-step
// takes its 8 columns in the order 0,2,4,6,1,3,5,7: a0 = F[g][2t] = f0,
// a1 = F[g+8][2t] = f2, a2 = F[g][2t+1] = f1, a3 = F[g+8][2t+1] = f3; B's
// rows follow the same order, b0 = Y[2t][g], b1 = Y[2t+1][g].
// bf16 (k16): the C fragments of columns 8j' and 8j'+8 are the A fragment
// of the 16 columns 16j'.. in natural order: a0 = (f[2j'][0], f[2j'][1]),
// a1 = (f[2j'][2], f[2j'][3]), a2 and a3 the same of f[2j'+1].
template <int KT, int MODE>
__device__ __forceinline__ void mns_tc_accumulate(
    float o[KT][4], float f[8][4], const float* ys, int ld, int kc, int lane)
{
    const int g = lane / 4, t = lane % 4;
    if constexpr (MODE == MNS_TIER_BF16) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            const float* f0 = f[2 * jj];
            const float* f1 = f[2 * jj + 1];
            const unsigned a[4] = {mns_pack_bf16(f0[0], f0[1]), mns_pack_bf16(f0[2], f0[3]),
                                   mns_pack_bf16(f1[0], f1[1]), mns_pack_bf16(f1[2], f1[3])};
#pragma unroll
            for (int c = 0; c < KT; ++c) {
                if (c >= kc) break;  // warp-uniform
                const float* yb = ys + (16 * jj + 2 * t) * ld + 8 * c + g;
                const unsigned bb[2] = {mns_pack_bf16(mns_lds(yb), mns_lds(yb + ld)),
                                        mns_pack_bf16(mns_lds(yb + 8 * ld), mns_lds(yb + 9 * ld))};
                mns_mma_bf16(o[c], a, bb);
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float av[4] = {f[j][0], f[j][2], f[j][1], f[j][3]};
            unsigned ab[4], as[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                if (MODE == MNS_TIER_F32) mns_split_tf32(av[r], ab[r], as[r]);
                else ab[r] = mns_to_tf32(av[r]);
            }
#pragma unroll
            for (int c = 0; c < KT; ++c) {
                if (c >= kc) break;  // warp-uniform
                const float* yb = ys + (8 * j + 2 * t) * ld + 8 * c + g;
                const float bv[2] = {mns_lds(yb), mns_lds(yb + ld)};
                unsigned bb[2], bs[2];
                for (int r = 0; r < 2; ++r) {
                    if (MODE == MNS_TIER_F32) mns_split_tf32(bv[r], bb[r], bs[r]);
                    else bb[r] = mns_to_tf32(bv[r]);
                }
                if (MODE == MNS_TIER_F32) mns_mma_3xtf32(o[c], ab, as, bb, bs);
                else mns_mma_tf32(o[c], ab, bb);
            }
        }
    }
}

// The dynamic shared memory layout of both kernels, in floats from the
// start: the owned tile (64 x ld), two streamed tiles (64 x ld each), 6 x 64
// floats of side data (two stages of three per-row/column values), then
// 2 x 64 i64 ids (two stages). mns_tc_smem_bytes in src/cuda/plan.rs is
// the same sum.
struct MnsTcSmem {
    float* xs;
    float* ys;    // stage s at ys + s * 64 * ld
    float* side;  // stage s, value a at side + (3 s + a) * 64
    i64* ids;     // stage s at ids + s * 64
};
__device__ __forceinline__ MnsTcSmem mns_tc_smem(int ld)
{
    MnsTcSmem s;
    s.xs = (float*)mns_dynamic_smem();
    s.ys = s.xs + MNS_TC_BM * ld;
    s.side = s.ys + 2 * MNS_TC_BN * ld;
    s.ids = (i64*)(s.side + 6 * MNS_TC_BN);  // ld % 4 == 0: 8-byte aligned
    return s;
}

template <int KT, int MODE>
__device__ __forceinline__ void mns_fwd_tc(const MnsFwdParams& p)
{
    MNS_UNPACK_LOGITS(p.x);
    float* __restrict__ part_m = p.part_m;
    float* __restrict__ part_s = p.part_s;
    float* __restrict__ part_o = p.part_o;
    const int kp = (int)((k + 15) / 16 * 16), ld = kp + 4, kc = (int)((k + 7) / 8);
    const MnsTcSmem sm = mns_tc_smem(ld);
    const int tid = threadIdx.x, w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const i64 r0 = (i64)blockIdx.x * MNS_TC_BM;
    const i64 split = blockIdx.y;
    const i64 c_begin = split * p.cols_per_split;
    const i64 c_end = c_begin + p.cols_per_split < n ? c_begin + p.cols_per_split : n;
    const i64 tiles = c_end > c_begin ? (c_end - c_begin + MNS_TC_BN - 1) / MNS_TC_BN : 0;
    const bool vec = k % 4 == 0 && (unsigned long long)u % 16 == 0 && (unsigned long long)v % 16 == 0;
    // This lane's two rows (fragment rows g and g + 8 of its warp).
    i64 row[2], rid[2];
    for (int h = 0; h < 2; ++h) {
        row[h] = r0 + 16 * w + g + 8 * h;
        rid[h] = (ids != nullptr && row[h] < b) ? ids[row[h] + offset] : 0;
    }
    // Stage s of the streamed tile: columns c0.. of V, their log_q and ids.
    auto stage = [&](int s, i64 c0) {
        mns_tc_stage(sm.ys + s * MNS_TC_BN * ld, v, n, c0, k, kp, ld, vec, tid);
        if (tid < MNS_TC_BN) {
            const i64 col = c0 + tid;
            sm.side[3 * s * MNS_TC_BN + tid] = col < n ? log_q[col] : 0.0f;
            if (ids != nullptr) sm.ids[s * MNS_TC_BN + tid] = col < n ? ids[col] : 0;
        }
    };
    mns_tc_stage(sm.xs, u, b, r0, k, kp, ld, vec, tid);
    if (tiles > 0) stage(0, c_begin);
    mns_cp_async_commit();

    float m[2] = {MNS_NEG_INF, MNS_NEG_INF}, l[2] = {0.0f, 0.0f};
    float o[KT][4];
#pragma unroll
    for (int c = 0; c < KT; ++c)
        for (int r = 0; r < 4; ++r) o[c][r] = 0.0f;

    for (i64 tt = 0; tt < tiles; ++tt) {
        const int cur = (int)(tt % 2);
        const i64 c0 = c_begin + tt * MNS_TC_BN;
        if (tt + 1 < tiles) {
            stage(1 - cur, c0 + MNS_TC_BN);
            mns_cp_async_commit();
            mns_cp_async_wait<1>();  // tile tt (and the owned tile) landed
        } else {
            mns_cp_async_wait<0>();
        }
        __syncthreads();  // every thread's pieces of tile tt
        const float* ys = sm.ys + cur * MNS_TC_BN * ld;
        const float* lq = sm.side + 3 * cur * MNS_TC_BN;
        const i64* cid = sm.ids + cur * MNS_TC_BN;
        float s[8][4];
        mns_tc_dots<MODE>(s, sm.xs + 16 * w * ld, ys, kp, ld, lane);
        float tmax[2] = {MNS_NEG_INF, MNS_NEG_INF};
#pragma unroll
        for (int j = 0; j < 8; ++j)
            for (int r = 0; r < 4; ++r) {
                const int h = r / 2, cl = 8 * j + 2 * t + r % 2;
                const i64 col = c0 + cl;
                // Rows past B, columns of the next split, the diagonal
                // (mns_rows_f32 forms it) and accidental hits are excluded.
                const bool out = row[h] >= b || col >= c_end || col == row[h] + offset ||
                                 (ids != nullptr && cid[cl] == rid[h]);
                s[j][r] = out ? MNS_NEG_INF : fmaf(s[j][r], inv_tau, -lq[cl]);
                tmax[h] = fmaxf(tmax[h], s[j][r]);
            }
        float shift[2], alpha[2];
        for (int h = 0; h < 2; ++h) {
            // The 4 lanes of a row (same g) hold its 64 columns.
            tmax[h] = fmaxf(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 1));
            tmax[h] = fmaxf(tmax[h], __shfl_xor_sync(0xffffffffu, tmax[h], 2));
            const float m_new = fmaxf(m[h], tmax[h]);
            // While everything so far is removed, shift by 0 (exp(-inf) = 0).
            shift[h] = m_new == MNS_NEG_INF ? 0.0f : m_new;
            alpha[h] = expf(m[h] - shift[h]);
            l[h] *= alpha[h];
            m[h] = m_new;
        }
#pragma unroll
        for (int c = 0; c < KT; ++c)
            for (int r = 0; r < 4; ++r) o[c][r] *= alpha[r / 2];
#pragma unroll
        for (int j = 0; j < 8; ++j)
            for (int r = 0; r < 4; ++r) {
                s[j][r] = expf(s[j][r] - shift[r / 2]);
                l[r / 2] += s[j][r];
            }
        mns_tc_accumulate<KT, MODE>(o, s, ys, ld, kc, lane);
        __syncthreads();  // before tile tt + 2 overwrites this stage
    }
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
        if (row[h] < b) {
            if (t == 0) {
                part_m[split * b + row[h]] = m[h];
                part_s[split * b + row[h]] = l[h];
            }
            float* dst = part_o + (split * b + row[h]) * k;
#pragma unroll
            for (int c = 0; c < KT; ++c)
                for (int e = 0; e < 2; ++e) {
                    const i64 comp = 8 * c + 2 * t + e;
                    if (comp < k) dst[comp] = o[c][2 * h + e];
                }
        }
    }
}

template <int KT, int MODE>
__device__ __forceinline__ void mns_dv_tc(const MnsGradParams& p)
{
    MNS_UNPACK_LOGITS(p.x);
    const float* __restrict__ mrow = p.mrow;
    const float* __restrict__ coef = p.coef;
    const float* __restrict__ gdiag = p.gdiag;
    float* __restrict__ d_v = p.out;
    const int kp = (int)((k + 15) / 16 * 16), ld = kp + 4, kc = (int)((k + 7) / 8);
    const MnsTcSmem sm = mns_tc_smem(ld);
    const int tid = threadIdx.x, w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const i64 c0 = (i64)blockIdx.x * MNS_TC_BM;
    const i64 tiles = (b + MNS_TC_BN - 1) / MNS_TC_BN;
    const bool vec = k % 4 == 0 && (unsigned long long)u % 16 == 0 && (unsigned long long)v % 16 == 0;
    // This lane's two candidates, their log_q and ids.
    i64 cand[2], cid[2];
    float clq[2];
    for (int h = 0; h < 2; ++h) {
        cand[h] = c0 + 16 * w + g + 8 * h;
        clq[h] = cand[h] < n ? log_q[cand[h]] : 0.0f;
        cid[h] = (ids != nullptr && cand[h] < n) ? ids[cand[h]] : 0;
    }
    // Stage s of the streamed tile: rows r0.. of U, their m_i, coef_i,
    // gdiag_i and positives' ids.
    auto stage = [&](int s, i64 r0) {
        mns_tc_stage(sm.ys + s * MNS_TC_BN * ld, u, b, r0, k, kp, ld, vec, tid);
        if (tid < MNS_TC_BN) {
            const i64 row = r0 + tid;
            float* side = sm.side + 3 * s * MNS_TC_BN;
            side[tid] = row < b ? mrow[row] : 0.0f;
            side[MNS_TC_BN + tid] = row < b ? coef[row] : 0.0f;
            side[2 * MNS_TC_BN + tid] = row < b ? gdiag[row] : 0.0f;
            if (ids != nullptr) sm.ids[s * MNS_TC_BN + tid] = row < b ? ids[row + offset] : 0;
        }
    };
    mns_tc_stage(sm.xs, v, n, c0, k, kp, ld, vec, tid);
    stage(0, 0);
    mns_cp_async_commit();

    float o[KT][4];
#pragma unroll
    for (int c = 0; c < KT; ++c)
        for (int r = 0; r < 4; ++r) o[c][r] = 0.0f;

    for (i64 tt = 0; tt < tiles; ++tt) {
        const int cur = (int)(tt % 2);
        const i64 r0 = tt * MNS_TC_BN;
        if (tt + 1 < tiles) {
            stage(1 - cur, r0 + MNS_TC_BN);
            mns_cp_async_commit();
            mns_cp_async_wait<1>();
        } else {
            mns_cp_async_wait<0>();
        }
        __syncthreads();
        const float* ys = sm.ys + cur * MNS_TC_BN * ld;
        const float* side = sm.side + 3 * cur * MNS_TC_BN;
        const i64* rid = sm.ids + cur * MNS_TC_BN;
        float s[8][4];
        mns_tc_dots<MODE>(s, sm.xs + 16 * w * ld, ys, kp, ld, lane);
        // G^T/tau: coef_i exp(s_ij - m_i) off the diagonal, gdiag_i on it, 0
        // when removed or outside the matrices (as mns_grad).
#pragma unroll
        for (int j = 0; j < 8; ++j)
            for (int r = 0; r < 4; ++r) {
                const int h = r / 2, rl = 8 * j + 2 * t + r % 2;
                const i64 row = r0 + rl;
                float gv;
                if (row >= b || cand[h] >= n) gv = 0.0f;
                else if (cand[h] == row + offset) gv = side[2 * MNS_TC_BN + rl];
                else if (ids != nullptr && cid[h] == rid[rl]) gv = 0.0f;
                else gv = side[MNS_TC_BN + rl] * expf(fmaf(s[j][r], inv_tau, -clq[h]) - side[rl]);
                s[j][r] = gv;
            }
        mns_tc_accumulate<KT, MODE>(o, s, ys, ld, kc, lane);
        __syncthreads();
    }
    for (int h = 0; h < 2; ++h) {
        if (cand[h] >= n) continue;
        float* dst = d_v + cand[h] * k;
#pragma unroll
        for (int c = 0; c < KT; ++c)
            for (int e = 0; e < 2; ++e) {
                const i64 comp = 8 * c + 2 * t + e;
                if (comp < k) dst[comp] = o[c][2 * h + e];
            }
    }
}
#endif  // MNS_HAVE_TC

// One thread per element of dU (after mns_rows_f32), splits merged in order.
extern "C" __global__ void __launch_bounds__(MNS_NT) mns_du_merge_f32(const MnsMergeParams p)
{
    const i64 x = (i64)blockIdx.x * MNS_NT + threadIdx.x;
    if (x >= p.b * p.k) return;
    const i64 row = x / p.k, c = x % p.k;
    const float mr = p.mrow[row];
    float acc = 0.0f;
    for (int sp = 0; sp < p.splits; ++sp) {
        const float pm = p.part_m[(i64)sp * p.b + row];
        if (pm > MNS_NEG_INF) acc = fmaf(expf(pm - mr), p.part_o[((i64)sp * p.b + row) * p.k + c], acc);
    }
    p.d_u[x] = fmaf(p.coef[row], acc, p.gdiag[row] * p.v[(row + p.offset) * p.k + c]);
}

// The tensor-core kernels, one per K class (KP <= 32, 64, 128) and precision.
#ifdef MNS_HAVE_TC
#define MNS_TC_BODY(f, KT, MODE) f<KT, MODE>(p);
#else
#define MNS_TC_BODY(f, KT, MODE)
#endif
#define MNS_TC_KERNELS(KT, KNAME, MODE, PNAME)                                                 \
    extern "C" __global__ void __launch_bounds__(MNS_TC_NT, 2)                                  \
        mns_fwd_tc_##KNAME##_##PNAME(const MnsFwdParams p) { MNS_TC_BODY(mns_fwd_tc, KT, MODE) } \
    extern "C" __global__ void __launch_bounds__(MNS_TC_NT, 2)                                  \
        mns_dv_tc_##KNAME##_##PNAME(const MnsGradParams p) { MNS_TC_BODY(mns_dv_tc, KT, MODE) }
MNS_TC_KERNELS(4, k32, MNS_TIER_F32, f32)
MNS_TC_KERNELS(4, k32, MNS_TIER_TF32, tf32)
MNS_TC_KERNELS(4, k32, MNS_TIER_BF16, bf16)
MNS_TC_KERNELS(8, k64, MNS_TIER_F32, f32)
MNS_TC_KERNELS(8, k64, MNS_TIER_TF32, tf32)
MNS_TC_KERNELS(8, k64, MNS_TIER_BF16, bf16)
MNS_TC_KERNELS(16, k128, MNS_TIER_F32, f32)
MNS_TC_KERNELS(16, k128, MNS_TIER_TF32, tf32)
MNS_TC_KERNELS(16, k128, MNS_TIER_BF16, bf16)
