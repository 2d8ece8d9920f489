// A small CPU emulator for mixneg's CUDA kernels, for tests on machines
// without a GPU: every CUDA thread of a block is an OS thread, blocks run one
// after another (so `__shared__` can be a function-static), `__syncthreads`
// is a block barrier and `__shfl_xor_sync` exchanges through a per-warp array
// between two warp barriers.
//
// Two things make a kernel bug show instead of hiding:
//  * Shared memory is poisoned (every byte 0xFF: NaN as f32 and f64, -1 as
//    an integer) at every block start, so a read of shared memory nobody of
//    this block wrote gives NaN rather than a zero or the previous block's
//    value. Kernels call `mns_smem_poison(&x, sizeof x)` after each
//    `__shared__` declaration (a no-op on the GPU).
//  * Warps run one at a time between block barriers, in an order drawn
//    afresh for every segment from a generator seeded by MNS_EMU_SEED
//    (default 1): the 32 threads of the running warp run concurrently, the
//    other warps wait. So a missing `__syncthreads` between a write by one
//    warp and a read (or an overwrite) by another is a wrong result for the
//    orders that put them the wrong way round — deterministic for a seed,
//    not left to the OS scheduler.
// With MNS_EMU_STATS=1 it also counts, per launch, the warps' fragment loads
// (`mns_lds`) and their shared-memory bank conflicts, and the warp-level
// mma instructions: the harness prints them after each launch.
// It says nothing about speed or the GPU memory model beyond barriers.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#define MNS_EMULATOR 1

struct EmuDim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 gridDim, blockDim;

constexpr int EMU_THREADS = 256;  // the largest block; a launch may use fewer (whole warps)
constexpr int EMU_WARPS = EMU_THREADS / 32;
inline std::barrier<>* emu_warp_barrier[EMU_WARPS];
inline float emu_xchg[EMU_WARPS][32];

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// ---- shared memory poisoning -------------------------------------------
inline std::mutex emu_smem_mutex;
inline std::vector<std::pair<void*, size_t>> emu_smem_regions;

// Registers a `__shared__` object; the first call poisons it (every thread
// of the block calls this before touching it, serialized here).
inline void mns_smem_poison(void* p, unsigned long long bytes) {
    std::lock_guard<std::mutex> g(emu_smem_mutex);
    for (auto& r : emu_smem_regions)
        if (r.first == p) return;
    emu_smem_regions.emplace_back(p, (size_t)bytes);
    std::memset(p, 0xFF, (size_t)bytes);
}

// ---- the warp scheduler ----------------------------------------------------
struct EmuScheduler {
    std::mutex m;
    std::condition_variable cv[EMU_WARPS];  // one per warp: wake only the warp whose turn it is
    int order[EMU_WARPS];
    int turn = 0;           // index into order of the running warp
    unsigned long long gen = 0;  // segment number
    int arrived[EMU_WARPS];  // threads of each warp at the barrier ending this segment
    int exited[EMU_WARPS];   // threads of each warp that returned
    unsigned long long rng;
    int nwarps;  // warps of this launch's blocks

    EmuScheduler(unsigned long long seed, int warps) : rng(seed), nwarps(warps) {
        for (int w = 0; w < EMU_WARPS; ++w) arrived[w] = exited[w] = 0;
        shuffle();
    }
    unsigned long long next() {  // SplitMix64
        unsigned long long z = (rng += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    void shuffle() {
        for (int w = 0; w < nwarps; ++w) order[w] = w;
        for (int w = nwarps - 1; w > 0; --w) std::swap(order[w], order[next() % (w + 1)]);
    }
    bool warp_done(int w) const { return arrived[w] + exited[w] == 32; }
    // Under the lock: pass the turn on while the running warp is done; when
    // every warp is, start the next segment (unless all have returned); wake
    // the warp whose turn it now is.
    void advance() {
        const int before = turn;
        const unsigned long long g0 = gen;
        while (turn < nwarps && warp_done(order[turn])) ++turn;
        if (turn == nwarps) {
            bool all_exited = true;
            for (int w = 0; w < nwarps; ++w) all_exited &= exited[w] == 32;
            if (all_exited) return;
            for (int w = 0; w < nwarps; ++w) arrived[w] = 0;
            shuffle();
            turn = 0;
            ++gen;
            while (turn < nwarps && exited[order[turn]] == 32) ++turn;
        }
        if ((turn != before || gen != g0) && turn < nwarps) cv[order[turn]].notify_all();
    }
    void wait_turn(std::unique_lock<std::mutex>& l, int w, unsigned long long g) {
        cv[w].wait(l, [&] { return gen >= g && turn < nwarps && order[turn] == w; });
    }
    void start(int w) {
        std::unique_lock<std::mutex> l(m);
        wait_turn(l, w, 0);
    }
    void barrier(int w) {
        std::unique_lock<std::mutex> l(m);
        const unsigned long long g = gen + 1;
        ++arrived[w];
        advance();
        wait_turn(l, w, g);
    }
    void exit(int w) {
        std::unique_lock<std::mutex> l(m);
        ++exited[w];
        advance();
    }
};
inline EmuScheduler* emu_sched = nullptr;

inline void __syncthreads() { emu_sched->barrier(threadIdx.x / 32); }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __shfl_xor_sync(unsigned, float v, int m) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    emu_xchg[w][l] = v;
    emu_warp_barrier[w]->arrive_and_wait();
    const float r = emu_xchg[w][l ^ m];
    emu_warp_barrier[w]->arrive_and_wait();
    return r;
}

// ---- statistics (MNS_EMU_STATS=1) ----------------------------------------
inline bool emu_stats_on() {
    static const bool on = [] {
        const char* s = std::getenv("MNS_EMU_STATS");
        return s != nullptr && s[0] == '1';
    }();
    return on;
}
inline std::atomic<unsigned long long> emu_lds_count{0}, emu_lds_conflicts{0}, emu_mma_count{0};
inline const void* emu_lds_addr[EMU_WARPS][32];

// A warp's 32-bit shared-memory load (every lane calls it at the same
// point). With statistics on, lane 0 tallies the access: shared memory has
// 32 banks of 4-byte words (bank = word mod 32); lanes reading the same
// word share it (a broadcast), and a bank asked for d distinct words
// serves them in d passes, so the access costs max_bank d passes and its
// conflicts are that maximum minus one.
template <class T>
inline T emu_lds(const T* p) {
    static_assert(sizeof(T) == 4, "32-bit loads only");
    if (emu_stats_on()) {
        const int w = threadIdx.x / 32, l = threadIdx.x % 32;
        emu_lds_addr[w][l] = p;
        emu_warp_barrier[w]->arrive_and_wait();
        if (l == 0) {
            unsigned long long word[32];
            for (int i = 0; i < 32; ++i) word[i] = (unsigned long long)(uintptr_t)emu_lds_addr[w][i] / 4;
            int passes = 1;
            for (int bank = 0; bank < 32; ++bank) {
                int distinct = 0;
                for (int i = 0; i < 32; ++i) {
                    if ((int)(word[i] % 32) != bank) continue;
                    bool seen = false;
                    for (int j = 0; j < i; ++j) seen |= word[j] == word[i];
                    distinct += !seen;
                }
                if (distinct > passes) passes = distinct;
            }
            emu_lds_count += 1;
            emu_lds_conflicts += (unsigned long long)(passes - 1);
        }
        emu_warp_barrier[w]->arrive_and_wait();
    }
    return *p;
}
#define mns_lds(p) emu_lds(p)

inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }

// cvt.rna.tf32.f32: keep 10 explicit mantissa bits, rounding the magnitude
// to nearest with ties away from zero; infinities and NaNs pass through.
inline unsigned mns_to_tf32(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7F800000u) == 0x7F800000u) return u;
    return (u + 0x1000u) & 0xFFFFE000u;
}

// How a tensor core adds (Fasi, Higham, Mikaitis, Pranesh, "Numerical
// behavior of NVIDIA tensor cores", 2021, for the A100's TF32 and bf16
// mma): the K products (exact: TF32 and bf16 significands are short) and
// the accumulator are aligned to the largest exponent among them, keeping
// 3 bits below the f32 significand, the bits shifted out dropped
// (truncated); the exact sum of the aligned terms is then truncated (toward
// zero) to f32. Rounding to nearest instead, as this emulator did at first,
// kept the F32 tier (3xTF32) inside the f32 policy where the H200 was not
// (dV at B = 300, K = 65: 1.7x the bound); on the building blocks of
// mma_test.cu this model and the H200 (scripts/gpu_blocks.py) err alike.
// Non-finite terms are summed as they are.
inline float emu_tc_sum(const double* t, int n) {
    double big = 0, plain = 0;
    for (int i = 0; i < n; ++i) big = std::fmax(big, std::fabs(t[i])), plain += t[i];
    if (!std::isfinite(plain) || big == 0) return (float)plain;
    int e;
    std::frexp(big, &e);  // big < 2^e
    const double q = std::ldexp(1.0, e - 24 - 3);
    // Each aligned term is a multiple of q below 2^e: the sum of 17 is exact.
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += std::trunc(t[i] / q) * q;
    float f = (float)sum;
    if (std::fabs((double)f) > std::fabs(sum)) f = std::nextafter(f, 0.0f);
    return f;
}

// mma.sync.m16n8k8 TF32 (fragment layout in kernels/mns.cu): every lane
// posts its fragments, the warp meets, each lane computes its four results
// from the whole tiles (as emu_tc_sum adds), and the warp meets again before
// the buffers are reused.
inline unsigned emu_mma_a[EMU_WARPS][32][4], emu_mma_b[EMU_WARPS][32][2];
// One warp-collective m16n8kK: post the fragments, meet, compute this lane's
// four results with A(w, row, k) and B(w, k, col) reading the posted
// fragments (summed as emu_tc_sum), meet again.
template <int K, class FA, class FB>
inline void emu_warp_mma(float d[4], const unsigned a[4], const unsigned b[2], FA A, FB B) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    if (l == 0) emu_mma_count += 1;
    for (int r = 0; r < 4; ++r) emu_mma_a[w][l][r] = a[r];
    for (int r = 0; r < 2; ++r) emu_mma_b[w][l][r] = b[r];
    emu_warp_barrier[w]->arrive_and_wait();
    const int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
        double terms[K + 1];
        terms[0] = d[r];
        for (int k = 0; k < K; ++k) terms[k + 1] = (double)A(w, row, k) * B(w, k, col);
        d[r] = emu_tc_sum(terms, K + 1);
    }
    emu_warp_barrier[w]->arrive_and_wait();
}

inline void mns_mma_tf32(float d[4], const unsigned a[4], const unsigned b[2]) {
    // The tensor core reads a .tf32 operand's top 19 bits (the low 13 ignored).
    emu_warp_mma<8>(
        d, a, b,
        [](int w, int row, int k) {  // A[row][k]: lane 4*(row%8) + k%4, register row/8 + 2*(k/4)
            return __uint_as_float(emu_mma_a[w][4 * (row % 8) + k % 4][row / 8 + 2 * (k / 4)] & 0xFFFFE000u);
        },
        [](int w, int k, int col) {  // B[k][col]: lane 4*col + k%4, register k/4
            return __uint_as_float(emu_mma_b[w][4 * col + k % 4][k / 4] & 0xFFFFE000u);
        });
}

// cvt.rn.bf16x2.f32: each of lo, hi rounded to bf16 (to nearest even),
// packed with lo in the low half.
inline unsigned emu_bf16(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7F800000u) == 0x7F800000u) return u >> 16;
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}
inline unsigned mns_pack_bf16(float lo, float hi) { return emu_bf16(lo) | (emu_bf16(hi) << 16); }

// mma.sync.m16n8k16 bf16 (fragment layout in kernels/mns.cu); each register
// holds two bf16, element k in the half k % 2.
inline float emu_bf16_half(unsigned reg, int k) { return __uint_as_float((k % 2 ? reg >> 16 : reg & 0xFFFFu) << 16); }
inline void mns_mma_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
    emu_warp_mma<16>(
        d, a, b,
        [](int w, int row, int k) {  // lane 4*(row%8) + (k%8)/2, register row/8 + 2*(k/8)
            return emu_bf16_half(emu_mma_a[w][4 * (row % 8) + (k % 8) / 2][row / 8 + 2 * (k / 8)], k);
        },
        [](int w, int k, int col) {  // lane 4*col + (k%8)/2, register k/8
            return emu_bf16_half(emu_mma_b[w][4 * col + (k % 8) / 2][k / 8], k);
        });
}

// cp.async: a copy is only queued; it lands when a wait retires its group,
// so shared memory read too early still holds its poison (or older data).
struct EmuCopy { void* dst; const void* src; };
inline thread_local std::vector<std::vector<EmuCopy>> emu_groups;  // committed, oldest first
inline thread_local std::vector<EmuCopy> emu_open_group;
inline void mns_cp_async16(void* smem, const void* gmem) { emu_open_group.push_back({smem, gmem}); }
inline void mns_cp_async_commit() {
    emu_groups.push_back(std::move(emu_open_group));
    emu_open_group.clear();
}
template <int N>
inline void mns_cp_async_wait() {
    while (emu_groups.size() > (size_t)N) {
        for (auto& c : emu_groups.front()) std::memcpy(c.dst, c.src, 16);
        emu_groups.erase(emu_groups.begin());
    }
}

// The block's dynamic shared memory: one buffer of the largest size a GPU
// of this crate's targets grants (227 KiB), poisoned like static shared
// memory at every block start.
constexpr unsigned long long EMU_DYNAMIC_SMEM = 227 * 1024;
inline unsigned char* mns_dynamic_smem() {
    alignas(16) static unsigned char buf[EMU_DYNAMIC_SMEM];
    mns_smem_poison(buf, sizeof buf);
    return buf;
}

inline unsigned long long emu_seed() {
    const char* s = std::getenv("MNS_EMU_SEED");
    return s ? std::strtoull(s, nullptr, 10) : 1ull;
}

// Run `kernel()` on a grid of (gx, gy) blocks of `threads` threads (a
// multiple of 32, at most EMU_THREADS).
template <class F>
void emu_launch(unsigned gx, unsigned gy, unsigned threads, F kernel) {
    static unsigned long long launches = 0;
    if (threads == 0 || threads % 32 || threads > (unsigned)EMU_THREADS) {
        std::fprintf(stderr, "emu_launch: %u threads a block\n", threads);
        std::exit(2);
    }
    const int nwarps = (int)threads / 32;
    gridDim = {gx, gy, 1};
    blockDim = {threads, 1, 1};
    for (unsigned by = 0; by < gy; ++by) {
        for (unsigned bx = 0; bx < gx; ++bx) {
            for (auto& r : emu_smem_regions) std::memset(r.first, 0xFF, r.second);
            EmuScheduler sched(emu_seed() * 0x2545F4914F6CDD1Dull + (++launches), nwarps);
            emu_sched = &sched;
            std::vector<std::barrier<>*> warps;
            for (int w = 0; w < nwarps; ++w) warps.push_back(new std::barrier<>(32));
            for (int w = 0; w < nwarps; ++w) emu_warp_barrier[w] = warps[w];
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < threads; ++t)
                ts.emplace_back([=] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {bx, by, 0};
                    emu_sched->start(t / 32);
                    kernel();
                    emu_groups.clear();  // copies never waited for are never seen
                    emu_open_group.clear();
                    emu_sched->exit(t / 32);
                });
            for (auto& t : ts) t.join();
            for (auto* w : warps) delete w;
            emu_sched = nullptr;
        }
    }
}
template <class F>
void emu_launch(unsigned gx, unsigned gy, F kernel) { emu_launch(gx, gy, EMU_THREADS, kernel); }
