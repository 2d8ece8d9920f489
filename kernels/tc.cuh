// mixneg kernels: the tensor-core path (sm_80 and newer, K <= 128).
// Included by mns.cu after simt.cuh, whose mns_rows_f32 it shares.

#pragma once

// ===========================================================================
// The tensor-core path (sm_80 and newer): two flash-style kernels at
// 8 B N K flops (the SIMT path does 10-14), both products of each on
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
    float (&acc)[8][4], const float* xs, const float* ys, int kp, int ld, int lane)
{
    const int g = lane / 4, t = lane % 4;
    mns_zero(acc);
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
            mns_tf32_frag<MODE>(av, ab, as);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float* yb = ys + (8 * j + g) * ld + kk + t;
                const float bv[2] = {mns_lds(yb), mns_lds(yb + 4)};
                unsigned bb[2], bs[2];
                mns_tf32_frag<MODE>(bv, bb, bs);
                mns_mma_tier<MODE>(acc[j], ab, as, bb, bs);
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
            mns_tf32_frag<MODE>(av, ab, as);
#pragma unroll
            for (int c = 0; c < KT; ++c) {
                if (c >= kc) break;  // warp-uniform
                const float* yb = ys + (8 * j + 2 * t) * ld + 8 * c + g;
                const float bv[2] = {mns_lds(yb), mns_lds(yb + ld)};
                unsigned bb[2], bs[2];
                mns_tf32_frag<MODE>(bv, bb, bs);
                mns_mma_tier<MODE>(o[c], ab, as, bb, bs);
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
    mns_zero(o);

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
    MNS_UNPACK_GRAD(p, d_v);
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
    mns_zero(o);

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
