// mixneg kernels: the parameter structs, one per kernel (the launch ABI).
// Included by mns.cu after blocks.cuh.

#pragma once


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
// The gradient kernels' locals from a MnsGradParams: the logits' and the
// rows' outputs they read; OUT names the gradient they write.
#define MNS_UNPACK_GRAD(P, OUT)                     \
    MNS_UNPACK_LOGITS((P).x);                       \
    const float* __restrict__ mrow = (P).mrow;      \
    const float* __restrict__ coef = (P).coef;      \
    const float* __restrict__ gdiag = (P).gdiag;    \
    float* __restrict__ OUT = (P).out

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
