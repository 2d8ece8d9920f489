// mixneg kernels: the tile sizes, the precision tiers, and the building
// blocks every kernel uses (rounding to TF32/bf16, mma.sync, cp.async).
// Included by mns.cu; read its header first.

#pragma once


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

// a = 0, for a thread's R x C register accumulator.
template <int R, int C>
__device__ __forceinline__ void mns_zero(float (&a)[R][C])
{
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < C; ++j) a[i][j] = 0.0f;
}

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

// A TF32 operand fragment of N floats at the tier MODE: split into big and
// small parts for 3xTF32 (MNS_TIER_F32), else rounded once (small unset).
template <int MODE, int N>
__device__ __forceinline__ void mns_tf32_frag(const float (&x)[N], unsigned (&big)[N], unsigned (&small)[N])
{
#pragma unroll
    for (int r = 0; r < N; ++r) {
        if (MODE == MNS_TIER_F32) mns_split_tf32(x[r], big[r], small[r]);
        else big[r] = mns_to_tf32(x[r]);
    }
}

// d += A.B at the tier MODE from fragments of mns_tf32_frag: three TF32
// products for 3xTF32, else one.
template <int MODE>
__device__ __forceinline__ void mns_mma_tier(
    float d[4], const unsigned a_big[4], const unsigned a_small[4],
    const unsigned b_big[2], const unsigned b_small[2])
{
    if (MODE == MNS_TIER_F32) mns_mma_3xtf32(d, a_big, a_small, b_big, b_small);
    else mns_mma_tf32(d, a_big, b_big);
}
#endif
