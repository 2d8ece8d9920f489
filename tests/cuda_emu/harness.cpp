// Runs kernels/mns.cu on the CPU emulator, driven by the launch list that
// src/cuda/abi.rs builds for the backend (tests/cuda_emulated.rs writes it).
//
//   mns_emu IN OUT     run: IN holds (little-endian)
//                        u64 nbuf, then per buffer: u64 bytes, u8 has_data,
//                        [bytes of data]  (zero-filled when has_data = 0);
//                        u64 nlaunch, then per launch: u32 kernel, u32 grid_x,
//                        u32 grid_y, u32 threads, u32 dynamic_smem_bytes,
//                        u32 param_bytes, [param struct bytes]
//                      with every pointer field holding a buffer number + 1
//                      (0: null). OUT receives every buffer's bytes in order.
//   mns_emu --layout   print "Struct size" and "Struct.field offset" lines of
//                      the parameter structs, as this compiler lays them out.
//   mns_emu --kernels  print the kernel names, one a line, in the order of
//                      their numbers (src/cuda/mod.rs's KERNELS).
// With MNS_EMU_STATS=1 a run prints to stderr, after each launch,
//   "stats KERNEL lds N conflicts C mma M"
// (fragment loads, their bank conflicts and warp-level mma instructions of
// that launch, emu.hpp).
#include "emu.hpp"
#include "../../kernels/mns.cu"
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

static void die(const char* why) { fprintf(stderr, "mns_emu: %s\n", why); exit(2); }

template <class T> static T take(FILE* f) {
    T x;
    if (fread(&x, sizeof(T), 1, f) != 1) die("short input");
    return x;
}

struct alignas(16) Chunk { unsigned char b[16]; };
static std::vector<std::vector<Chunk>> bufs;  // 16-byte aligned storage, as cudaMalloc's

// A pointer field read from the file holds a buffer number + 1.
template <class P> static void fix(P*& ptr) {
    const unsigned long long id = (unsigned long long)(uintptr_t)ptr;
    if (id == 0) { ptr = nullptr; return; }
    if (id > bufs.size()) die("pointer to an unknown buffer");
    ptr = (P*)bufs[id - 1].data();
}
static void fix(MnsLogits& x) { fix(x.u); fix(x.v); fix(x.log_q); fix(x.ids); }

template <class T> static T params(FILE* f, unsigned bytes) {
    if (bytes != sizeof(T)) die("parameter struct size differs from this build's");
    T p;
    if (fread(&p, sizeof(T), 1, f) != 1) die("short input");
    return p;
}

#define FIELD(S, f) printf(#S "." #f " %zu\n", offsetof(S, f))
static int layout() {
    printf("MnsFwdParams %zu\n", sizeof(MnsFwdParams));
    FIELD(MnsFwdParams, x.u); FIELD(MnsFwdParams, x.v); FIELD(MnsFwdParams, x.log_q);
    FIELD(MnsFwdParams, x.ids); FIELD(MnsFwdParams, x.b); FIELD(MnsFwdParams, x.n);
    FIELD(MnsFwdParams, x.k); FIELD(MnsFwdParams, x.offset); FIELD(MnsFwdParams, x.inv_tau); FIELD(MnsFwdParams, x.pad);
    FIELD(MnsFwdParams, cols_per_split); FIELD(MnsFwdParams, part_m); FIELD(MnsFwdParams, part_s);
    FIELD(MnsFwdParams, part_o);
    printf("MnsRowsParams %zu\n", sizeof(MnsRowsParams));
    FIELD(MnsRowsParams, u); FIELD(MnsRowsParams, v); FIELD(MnsRowsParams, log_q);
    FIELD(MnsRowsParams, row_weight); FIELD(MnsRowsParams, part_m); FIELD(MnsRowsParams, part_s);
    FIELD(MnsRowsParams, lse); FIELD(MnsRowsParams, row_loss); FIELD(MnsRowsParams, top1);
    FIELD(MnsRowsParams, wloss); FIELD(MnsRowsParams, mrow); FIELD(MnsRowsParams, coef);
    FIELD(MnsRowsParams, gdiag); FIELD(MnsRowsParams, b); FIELD(MnsRowsParams, k); FIELD(MnsRowsParams, offset);
    FIELD(MnsRowsParams, inv_tau); FIELD(MnsRowsParams, correct_positive);
    FIELD(MnsRowsParams, splits); FIELD(MnsRowsParams, tier);
    printf("MnsLossParams %zu\n", sizeof(MnsLossParams));
    FIELD(MnsLossParams, wloss); FIELD(MnsLossParams, loss); FIELD(MnsLossParams, b);
    printf("MnsGradParams %zu\n", sizeof(MnsGradParams));
    FIELD(MnsGradParams, x.u); FIELD(MnsGradParams, x.v); FIELD(MnsGradParams, x.log_q);
    FIELD(MnsGradParams, x.ids); FIELD(MnsGradParams, x.b); FIELD(MnsGradParams, x.n);
    FIELD(MnsGradParams, x.k); FIELD(MnsGradParams, x.offset); FIELD(MnsGradParams, x.inv_tau); FIELD(MnsGradParams, x.pad);
    FIELD(MnsGradParams, mrow); FIELD(MnsGradParams, coef); FIELD(MnsGradParams, gdiag);
    FIELD(MnsGradParams, out);
    printf("MnsDtauParams %zu\n", sizeof(MnsDtauParams));
    FIELD(MnsDtauParams, u); FIELD(MnsDtauParams, d_u); FIELD(MnsDtauParams, part);
    FIELD(MnsDtauParams, d_temperature); FIELD(MnsDtauParams, len); FIELD(MnsDtauParams, inv_tau);
    FIELD(MnsDtauParams, parts); FIELD(MnsDtauParams, phase);
    printf("MnsMergeParams %zu\n", sizeof(MnsMergeParams));
    FIELD(MnsMergeParams, v); FIELD(MnsMergeParams, part_m); FIELD(MnsMergeParams, part_o);
    FIELD(MnsMergeParams, mrow); FIELD(MnsMergeParams, coef); FIELD(MnsMergeParams, gdiag);
    FIELD(MnsMergeParams, d_u); FIELD(MnsMergeParams, b); FIELD(MnsMergeParams, k);
    FIELD(MnsMergeParams, offset); FIELD(MnsMergeParams, splits); FIELD(MnsMergeParams, pad);
    return 0;
}

// Kernels 7, 8, ...: (forward, dV) of each tensor-core class, in this order.
struct TcPair { const char* fwd; const char* dv; void (*f)(const MnsFwdParams); void (*d)(const MnsGradParams); };
#define TC(KN, PN) {"mns_fwd_tc_" #KN "_" #PN, "mns_dv_tc_" #KN "_" #PN, mns_fwd_tc_##KN##_##PN, mns_dv_tc_##KN##_##PN}
static const TcPair tc_kernels[] = {TC(k32, f32),  TC(k32, tf32),  TC(k32, bf16),  TC(k64, f32),  TC(k64, tf32),
                                     TC(k64, bf16), TC(k128, f32), TC(k128, tf32), TC(k128, bf16)};
static const char* simt_kernels[] = {"mns_fwd_f32", "mns_rows_f32", "mns_loss_f32", "mns_du_f32", "mns_dv_f32", "mns_dtau_f32", "mns_du_merge_f32"};
static int kernels() {
    for (auto* k : simt_kernels) printf("%s\n", k);
    for (auto& t : tc_kernels) printf("%s\n%s\n", t.fwd, t.dv);
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 2 && strcmp(argv[1], "--layout") == 0) return layout();
    if (argc == 2 && strcmp(argv[1], "--kernels") == 0) return kernels();
    if (argc != 3) die("usage: mns_emu IN OUT | mns_emu --layout");
    FILE* in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 2; }
    const auto nbuf = take<unsigned long long>(in);
    std::vector<size_t> sizes;
    for (unsigned long long i = 0; i < nbuf; ++i) {
        const auto bytes = take<unsigned long long>(in);
        const auto has = take<unsigned char>(in);
        bufs.emplace_back((bytes + 15) / 16, Chunk{});
        sizes.push_back(bytes);
        if (has && bytes && fread(bufs.back().data(), 1, bytes, in) != bytes) die("short input");
    }
    const auto nlaunch = take<unsigned long long>(in);
    unsigned last_kernel = 0;
    auto report = [&] {
        if (!emu_stats_on()) return;
        fprintf(stderr, "stats %u lds %llu conflicts %llu mma %llu\n", last_kernel, emu_lds_count.exchange(0),
                emu_lds_conflicts.exchange(0), emu_mma_count.exchange(0));
    };
    for (unsigned long long l = 0; l < nlaunch; ++l) {
        if (l > 0) report();
        const auto kernel = take<unsigned>(in), gx = take<unsigned>(in), gy = take<unsigned>(in);
        const auto threads = take<unsigned>(in), smem = take<unsigned>(in);
        const auto bytes = take<unsigned>(in);
        last_kernel = kernel;
        if (smem > EMU_DYNAMIC_SMEM) die("more dynamic shared memory than a block can have");
        const unsigned ntc = sizeof tc_kernels / sizeof tc_kernels[0];
        if (kernel >= 7 && kernel < 7 + 2 * ntc) {
            const auto& tc = tc_kernels[(kernel - 7) / 2];
            if ((kernel - 7) % 2 == 0) {
                auto p = params<MnsFwdParams>(in, bytes);
                fix(p.x); fix(p.part_m); fix(p.part_s); fix(p.part_o);
                emu_launch(gx, gy, threads, [&] { tc.f(p); });
            } else {
                auto p = params<MnsGradParams>(in, bytes);
                fix(p.x); fix(p.mrow); fix(p.coef); fix(p.gdiag); fix(p.out);
                emu_launch(gx, gy, threads, [&] { tc.d(p); });
            }
            continue;
        }
        switch (kernel) {
        case 0: {
            auto p = params<MnsFwdParams>(in, bytes);
            fix(p.x); fix(p.part_m); fix(p.part_s); fix(p.part_o);
            emu_launch(gx, gy, threads, [&] { mns_fwd_f32(p); });
            break;
        }
        case 1: {
            auto p = params<MnsRowsParams>(in, bytes);
            fix(p.u); fix(p.v); fix(p.log_q); fix(p.row_weight); fix(p.part_m); fix(p.part_s);
            fix(p.lse); fix(p.row_loss); fix(p.top1); fix(p.wloss); fix(p.mrow); fix(p.coef); fix(p.gdiag);
            emu_launch(gx, gy, threads, [&] { mns_rows_f32(p); });
            break;
        }
        case 2: {
            auto p = params<MnsLossParams>(in, bytes);
            fix(p.wloss); fix(p.loss);
            emu_launch(gx, gy, threads, [&] { mns_loss_f32(p); });
            break;
        }
        case 3:
        case 4: {
            auto p = params<MnsGradParams>(in, bytes);
            fix(p.x); fix(p.mrow); fix(p.coef); fix(p.gdiag); fix(p.out);
            if (kernel == 3) emu_launch(gx, gy, threads, [&] { mns_du_f32(p); });
            else emu_launch(gx, gy, threads, [&] { mns_dv_f32(p); });
            break;
        }
        case 5: {
            auto p = params<MnsDtauParams>(in, bytes);
            fix(p.u); fix(p.d_u); fix(p.part); fix(p.d_temperature);
            emu_launch(gx, gy, threads, [&] { mns_dtau_f32(p); });
            break;
        }
        case 6: {
            auto p = params<MnsMergeParams>(in, bytes);
            fix(p.v); fix(p.part_m); fix(p.part_o); fix(p.mrow); fix(p.coef); fix(p.gdiag); fix(p.d_u);
            emu_launch(gx, gy, threads, [&] { mns_du_merge_f32(p); });
            break;
        }
        default: die("unknown kernel");
        }
    }
    if (nlaunch > 0) report();
    fclose(in);
    FILE* out = fopen(argv[2], "wb");
    if (!out) { perror(argv[2]); return 2; }
    for (size_t i = 0; i < bufs.size(); ++i) fwrite(bufs[i].data(), 1, sizes[i], out);
    fclose(out);
    return 0;
}
