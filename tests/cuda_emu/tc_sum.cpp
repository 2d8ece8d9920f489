// The emulator's tensor-core addition (emu_tc_sum in emu.hpp) on terms read
// from stdin, for tests/cuda_emulated.rs to hold it to the Rust yardstick's
// tc_sum (tests/common): each line is a count n and n f64 bit patterns in
// hex; each output line the f32 bit pattern of emu_tc_sum, in hex.
#include "emu.hpp"
#include <cinttypes>

int main() {
    int n;
    while (scanf("%d", &n) == 1) {
        double t[32];
        for (int i = 0; i < n && i < 32; ++i) {
            uint64_t bits;
            if (scanf("%" SCNx64, &bits) != 1) return 2;
            std::memcpy(&t[i], &bits, 8);
        }
        printf("%08x\n", __float_as_uint(emu_tc_sum(t, n)));
    }
    return 0;
}
