// mixneg kernels: the SIMT path (any GPU, any K); what each kernel does is
// in the header of mns.cu. Included by mns.cu after params.cuh.

#pragma once


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
    MnsTileSmem& sm, float (&acc)[4][4],
    const float* __restrict__ x, i64 x_rows, i64 r0,
    const float* __restrict__ y, i64 y_rows, i64 c0,
    i64 k, int tid, int ty, int tx)
{
    mns_zero(acc);
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
    MNS_UNPACK_GRAD(p, out);
    __shared__ MnsBwdSmem sm;
    mns_smem_poison(&sm, sizeof sm);
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const i64 own0 = (i64)blockIdx.x * MNS_BM;  // first owned row of the output
    const i64 kc0 = (i64)blockIdx.y * MNS_KC;
    const i64 own_rows = DV ? n : b, other_rows = DV ? b : n;
    // The side streamed against the G tile: V for dU, U for dV.
    const float* __restrict__ w_src = DV ? u : v;
    float acc[4][4];  // [owned row ty+16i][component tx+16j]
    mns_zero(acc);

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
