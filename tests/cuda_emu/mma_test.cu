// Test kernels of the tensor-core and cp.async building blocks of mns.cu
// (appended to it by tests/cuda_ptx.rs for NVRTC and ptxas, by
// tests/cuda_emu/mma.cpp for the CPU emulator and by scripts/gpu_blocks.py
// for a real GPU through CuPy; never part of the backend). Plain arguments,
// so that any launcher can pass them. Warp w of the block computes
// D_w = A_w . B_w for A_w (16 x k) and B_w (k x 8), row-major: d3 with
// 3xTF32 and d1 with one TF32 pass (k a multiple of 8), or d with bf16
// factors (mns_test_mma_bf16, k a multiple of 16), f32 accumulation.
extern "C" __global__ void __launch_bounds__(MNS_NT)
    mns_test_mma(const float* pa, const float* pb, float* pd3, float* pd1, i64 k)
{
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const float* __restrict__ a = pa + (i64)w * 16 * k;
    const float* __restrict__ b = pb + (i64)w * k * 8;
    float acc3[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (i64 k0 = 0; k0 < k; k0 += 8) {
        const float av[4] = {a[g * k + k0 + t], a[(g + 8) * k + k0 + t],
                             a[g * k + k0 + t + 4], a[(g + 8) * k + k0 + t + 4]};
        const float bv[2] = {b[(k0 + t) * 8 + g], b[(k0 + t + 4) * 8 + g]};
        unsigned ab[4], as[4], bb[2], bs[2];
        for (int r = 0; r < 4; ++r) mns_split_tf32(av[r], ab[r], as[r]);
        for (int r = 0; r < 2; ++r) mns_split_tf32(bv[r], bb[r], bs[r]);
        mns_mma_3xtf32(acc3, ab, as, bb, bs);
        mns_mma_tf32(acc1, ab, bb);
    }
    float* d3 = pd3 + w * 128;
    float* d1 = pd1 + w * 128;
    for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
        d3[row * 8 + col] = acc3[r];
        d1[row * 8 + col] = acc1[r];
    }
}

// The m16n8k16 bf16 fragments in their natural order (mns.cu's
// mns_mma_bf16 comment): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..2t+1],
// a2 = A[g][2t+8..2t+9], a3 = A[g+8][2t+8..2t+9]; b0 = B[2t..2t+1][g],
// b1 = B[2t+8..2t+9][g].
extern "C" __global__ void __launch_bounds__(MNS_NT)
    mns_test_mma_bf16(const float* pa, const float* pb, float* pd, i64 k)
{
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const float* __restrict__ a = pa + (i64)w * 16 * k;
    const float* __restrict__ b = pb + (i64)w * k * 8;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (i64 k0 = 0; k0 < k; k0 += 16) {
        const float* a0 = a + g * k + k0 + 2 * t;
        const float* a8 = a0 + 8 * k;
        const unsigned af[4] = {mns_pack_bf16(a0[0], a0[1]), mns_pack_bf16(a8[0], a8[1]),
                                mns_pack_bf16(a0[8], a0[9]), mns_pack_bf16(a8[8], a8[9])};
        const float* b0 = b + (k0 + 2 * t) * 8 + g;
        const unsigned bf[2] = {mns_pack_bf16(b0[0], b0[8]), mns_pack_bf16(b0[64], b0[72])};
        mns_mma_bf16(acc, af, bf);
    }
    float* d = pd + w * 128;
    for (int r = 0; r < 4; ++r) d[(g + 8 * (r / 2)) * 8 + 2 * t + r % 2] = acc[r];
}

// out[c*1024 + j] = 2 in[c*1024 + (j + 37) % 1024] + 1 for `chunks` chunks of
// 1024 floats, staged through a two-stage cp.async pipeline in shared memory
// (each thread copies one 16-byte piece per chunk and reads another thread's).
extern "C" __global__ void __launch_bounds__(MNS_NT)
    mns_test_cp_async(const float* p_in, float* p_out, i64 chunks)
{
    __shared__ __align__(16) float buf[2][1024];
    mns_smem_poison(buf, sizeof buf);
    const int tid = threadIdx.x;
    mns_cp_async16(&buf[0][4 * tid], p_in + 4 * tid);
    mns_cp_async_commit();
    for (i64 c = 0; c < chunks; ++c) {
        if (c + 1 < chunks) {
            mns_cp_async16(&buf[(c + 1) % 2][4 * tid], p_in + (c + 1) * 1024 + 4 * tid);
            mns_cp_async_commit();
            mns_cp_async_wait<1>();  // chunk c has landed, c + 1 may be in flight
        } else {
            mns_cp_async_wait<0>();
        }
        __syncthreads();  // every thread's piece of chunk c
        for (int j = tid; j < 1024; j += MNS_NT)
            p_out[c * 1024 + j] = 2.0f * buf[c % 2][(j + 37) % 1024] + 1.0f;
        __syncthreads();  // before chunk c + 2 overwrites this stage
    }
}
