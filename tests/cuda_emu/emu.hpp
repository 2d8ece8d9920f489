// A small CPU emulator for mixneg's CUDA kernels, for tests on machines
// without a GPU: every CUDA thread of a block is an OS thread, blocks run one
// after another (so `__shared__` can be a function-static), `__syncthreads`
// is a block barrier and `__shfl_xor_sync` exchanges through a per-warp array
// between two warp barriers. It checks the kernels' indexing, tiling,
// masking, reductions and barrier discipline (a missing barrier shows up as a
// data race or a wrong result); it says nothing about speed or the GPU
// memory model beyond barriers.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <thread>
#include <vector>

struct EmuDim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 gridDim, blockDim;

constexpr int EMU_THREADS = 256;
constexpr int EMU_WARPS = EMU_THREADS / 32;
inline std::barrier<>* emu_block_barrier = nullptr;
inline std::barrier<>* emu_warp_barrier[EMU_WARPS];
inline float emu_xchg[EMU_WARPS][32];

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__ __restrict
#define __shared__ static

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __shfl_xor_sync(unsigned, float v, int m) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    emu_xchg[w][l] = v;
    emu_warp_barrier[w]->arrive_and_wait();
    const float r = emu_xchg[w][l ^ m];
    emu_warp_barrier[w]->arrive_and_wait();
    return r;
}

// Run `kernel()` on a grid of (gx, gy) blocks of EMU_THREADS threads.
template <class F>
void emu_launch(unsigned gx, unsigned gy, F kernel) {
    gridDim = {gx, gy, 1};
    blockDim = {EMU_THREADS, 1, 1};
    for (unsigned by = 0; by < gy; ++by) {
        for (unsigned bx = 0; bx < gx; ++bx) {
            std::barrier<> block(EMU_THREADS);
            std::vector<std::barrier<>*> warps;
            for (int w = 0; w < EMU_WARPS; ++w) warps.push_back(new std::barrier<>(32));
            emu_block_barrier = &block;
            for (int w = 0; w < EMU_WARPS; ++w) emu_warp_barrier[w] = warps[w];
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < EMU_THREADS; ++t)
                ts.emplace_back([=] { threadIdx = {t, 0, 0}; blockIdx = {bx, by, 0}; kernel(); });
            for (auto& t : ts) t.join();
            for (auto* w : warps) delete w;
        }
    }
}
