// Test kernels of the tensor-core and cp.async building blocks of mns.cu (appended to it
// by tests/cuda_ptx.rs for NVRTC and ptxas, and by tests/cuda_emu/mma.cpp for
// the CPU emulator; never part of the backend). Warp w of the block computes
// D_w = A_w . B_w for A_w (16 x k) and B_w (k x 8), row-major, k a multiple
// of 8: d3 with 3xTF32, d1 with one TF32 pass.
struct MnsMmaTestParams {
    const float* a;
    const float* b;
    float* d3;
    float* d1;
    i64 k;
};

extern "C" __global__ void __launch_bounds__(MNS_NT) mns_test_mma(const MnsMmaTestParams p)
{
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const i64 k = p.k;
    const float* __restrict__ a = p.a + (i64)w * 16 * k;
    const float* __restrict__ b = p.b + (i64)w * k * 8;
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
    float* d3 = p.d3 + w * 128;
    float* d1 = p.d1 + w * 128;
    for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
        d3[row * 8 + col] = acc3[r];
        d1[row * 8 + col] = acc1[r];
    }
}

// out[c*1024 + j] = 2 in[c*1024 + (j + 37) % 1024] + 1 for `chunks` chunks of
// 1024 floats, staged through a two-stage cp.async pipeline in shared memory
// (each thread copies one 16-byte piece per chunk and reads another thread's).
struct MnsCpAsyncTestParams {
    const float* in;
    float* out;
    i64 chunks;
};

extern "C" __global__ void __launch_bounds__(MNS_NT) mns_test_cp_async(const MnsCpAsyncTestParams p)
{
    __shared__ __align__(16) float buf[2][1024];
    mns_smem_poison(buf, sizeof buf);
    const int tid = threadIdx.x;
    mns_cp_async16(&buf[0][4 * tid], p.in + 4 * tid);
    mns_cp_async_commit();
    for (i64 c = 0; c < p.chunks; ++c) {
        if (c + 1 < p.chunks) {
            mns_cp_async16(&buf[(c + 1) % 2][4 * tid], p.in + (c + 1) * 1024 + 4 * tid);
            mns_cp_async_commit();
            mns_cp_async_wait<1>();  // chunk c has landed, c + 1 may be in flight
        } else {
            mns_cp_async_wait<0>();
        }
        __syncthreads();  // every thread's piece of chunk c
        for (int j = tid; j < 1024; j += MNS_NT)
            p.out[c * 1024 + j] = 2.0f * buf[c % 2][(j + 37) % 1024] + 1.0f;
        __syncthreads();  // before chunk c + 2 overwrites this stage
    }
}
