/* High half of a 64x64-bit product through unsigned __int128: OpenCL C has no 128-bit
 * integers, so the lowering must refuse this kernel (it stays CPU-only). */
#include <stdint.h>
void mulhi_u128(uint64_t i, const uint64_t *a, uint64_t *out) {
    out[i] = (uint64_t)(((unsigned __int128)a[i] * 0x123456789abcdef1ull) >> 64);
}
