// A test kernel of the tensor-core building blocks of mns.cu (appended to it
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
