// Runs kernels/mns.cu on the CPU emulator in the same launch sequence as
// src/cuda/mod.rs. Usage: mns_emu IN OUT, where IN holds (little-endian)
//   i64 b, n, k, has_ids, has_w, correct_positive, splits, cols_per_split,
//       fwd_gx, fwd_gy, rows_g, du_gx, du_gy, dv_gx, dv_gy; f32 tau;
//   f32 u[b*k], v[n*k], log_q[n]; i64 ids[n] if has_ids; f32 w[b] if has_w
// and OUT receives f32 loss, lse[b], row_loss[b], d_u[b*k], d_v[n*k], i32 top1[b].
#include "emu.hpp"
#include "../../kernels/mns.cu"
#include <cstdio>
#include <cstdlib>

template <class T> static std::vector<T> take(FILE* f, size_t n) {
    std::vector<T> x(n);
    if (n && fread(x.data(), sizeof(T), n, f) != n) { fprintf(stderr, "short input\n"); exit(2); }
    return x;
}

int main(int argc, char** argv) {
    if (argc != 3) { fprintf(stderr, "usage: mns_emu IN OUT\n"); return 2; }
    FILE* in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 2; }
    auto h = take<long long>(in, 15);
    const long long b = h[0], n = h[1], k = h[2];
    const int cp = (int)h[5], splits = (int)h[6];
    const long long cps = h[7];
    const float tau = take<float>(in, 1)[0];
    auto u = take<float>(in, b * k);
    auto v = take<float>(in, n * k);
    auto lq = take<float>(in, n);
    std::vector<long long> ids = h[3] ? take<long long>(in, n) : std::vector<long long>();
    std::vector<float> w = h[4] ? take<float>(in, b) : std::vector<float>();
    fclose(in);
    const long long* idp = h[3] ? ids.data() : nullptr;
    const float* wp = h[4] ? w.data() : nullptr;
    const float inv_tau = 1.0f / tau;

    std::vector<float> part_m(splits * b), part_s(splits * b), lse(b), row_loss(b), wloss(b), mrow(b), coef(b), gdiag(b);
    std::vector<float> loss(1), d_u(b * k), d_v(n * k);
    std::vector<int> top1(b);
    emu_launch(h[8], h[9], [&] {
        mns_fwd_f32(u.data(), v.data(), lq.data(), idp, b, n, k, inv_tau, cp, cps, part_m.data(), part_s.data());
    });
    emu_launch(h[10], 1, [&] {
        mns_rows_f32(u.data(), v.data(), lq.data(), wp, b, k, inv_tau, cp, splits, part_m.data(), part_s.data(),
                     lse.data(), row_loss.data(), top1.data(), wloss.data(), mrow.data(), coef.data(), gdiag.data());
    });
    emu_launch(1, 1, [&] { mns_loss_f32(wloss.data(), b, loss.data()); });
    emu_launch(h[11], h[12], [&] {
        mns_du_f32(u.data(), v.data(), lq.data(), idp, b, n, k, inv_tau, cp, mrow.data(), coef.data(), gdiag.data(), d_u.data());
    });
    emu_launch(h[13], h[14], [&] {
        mns_dv_f32(u.data(), v.data(), lq.data(), idp, b, n, k, inv_tau, cp, mrow.data(), coef.data(), gdiag.data(), d_v.data());
    });
    FILE* out = fopen(argv[2], "wb");
    if (!out) { perror(argv[2]); return 2; }
    fwrite(loss.data(), 4, 1, out);
    fwrite(lse.data(), 4, b, out);
    fwrite(row_loss.data(), 4, b, out);
    fwrite(d_u.data(), 4, b * k, out);
    fwrite(d_v.data(), 4, n * k, out);
    fwrite(top1.data(), 4, b, out);
    fclose(out);
    return 0;
}
