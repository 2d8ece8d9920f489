// Runs tests/cuda_emu/mma_test.cu on the CPU emulator: 8 warps, each D = A.B of a
// 16 x k and a k x 8 matrix of seeded values spanning six binades, and
// prints, for 3xTF32 and for one TF32 pass, the largest error over every
// output as a multiple of |A||B| = sum_k |a_ik b_kj| times 2^-22; for the
// bf16 kernel the same against the exact product of the bf16-rounded
// factors (K a multiple of 16 only; else -1); and the number of wrong
// outputs of the cp.async pipeline test kernel:
//   mma_emu K SEED  ->  "3xtf32 R3 tf32 R1 bf16 RB cp_async_wrong W"
#include "emu.hpp"
#include "../../kernels/mns.cu"
#include "mma_test.cu"
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
    if (argc != 3) { fprintf(stderr, "usage: mma_emu K SEED\n"); return 2; }
    const long long k = atoll(argv[1]);
    unsigned long long s = strtoull(argv[2], nullptr, 10);
    if (k <= 0 || k % 8) { fprintf(stderr, "K must be a positive multiple of 8\n"); return 2; }
    auto next = [&] {
        unsigned long long z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    };
    auto value = [&] {  // sign * mantissa in [1, 2) * 2^(-3..2)
        const double m = 1.0 + (next() >> 11) * (1.0 / 9007199254740992.0);
        const int e = (int)(next() % 6) - 3;
        return (float)((next() & 1 ? -1.0 : 1.0) * std::ldexp(m, e));
    };
    const int warps = EMU_WARPS;
    std::vector<float> a(warps * 16 * k), b(warps * k * 8), d3(warps * 128), d1(warps * 128);
    for (auto& x : a) x = value();
    for (auto& x : b) x = value();
    emu_launch(1, 1, [&] { mns_test_mma(a.data(), b.data(), d3.data(), d1.data(), k); });
    double r3 = 0, r1 = 0;
    for (int w = 0; w < warps; ++w)
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 8; ++j) {
                double exact = 0, scale = 0;
                for (long long q = 0; q < k; ++q) {
                    const double x = a[(w * 16 + i) * k + q], y = b[(w * k + q) * 8 + j];
                    exact += x * y;
                    scale += std::fabs(x * y);
                }
                const double unit = scale * std::ldexp(1.0, -22);
                r3 = std::fmax(r3, std::fabs(d3[w * 128 + i * 8 + j] - exact) / unit);
                r1 = std::fmax(r1, std::fabs(d1[w * 128 + i * 8 + j] - exact) / unit);
            }
    // bf16 factors, f32 accumulation, against the exact product of the
    // rounded factors (cvt.rn.bf16x2 rounds to nearest even, as emu_bf16).
    double rb = -1;
    if (k % 16 == 0) {
        std::vector<float> db(warps * 128);
        emu_launch(1, 1, [&] { mns_test_mma_bf16(a.data(), b.data(), db.data(), k); });
        auto bf = [](float x) { return (double)__uint_as_float(emu_bf16(x) << 16); };
        rb = 0;
        for (int w = 0; w < warps; ++w)
            for (int i = 0; i < 16; ++i)
                for (int j = 0; j < 8; ++j) {
                    double exact = 0, scale = 0;
                    for (long long q = 0; q < k; ++q) {
                        const double x = bf(a[(w * 16 + i) * k + q]), y = bf(b[(w * k + q) * 8 + j]);
                        exact += x * y;
                        scale += std::fabs(x * y);
                    }
                    rb = std::fmax(rb, std::fabs(db[w * 128 + i * 8 + j] - exact) / (scale * std::ldexp(1.0, -22)));
                }
    }
    // The cp.async pipeline: 5 chunks of 1024 floats.
    const long long chunks = 5;
    std::vector<float> in(chunks * 1024), out(chunks * 1024, 0.0f);
    for (auto& x : in) x = value();
    emu_launch(1, 1, [&] { mns_test_cp_async(in.data(), out.data(), chunks); });
    long long wrong = 0;
    for (long long c = 0; c < chunks; ++c)
        for (int j = 0; j < 1024; ++j)
            wrong += out[c * 1024 + j] != 2.0f * in[c * 1024 + (j + 37) % 1024] + 1.0f;
    printf("3xtf32 %.4f tf32 %.4f bf16 %.4f cp_async_wrong %lld\n", r3, r1, rb, wrong);
    return 0;
}
