/* 16-bit shifts: logical and arithmetic, amounts 0..15. */
#include <stdint.h>
void shifts_u16(uint64_t i, const uint32_t *a, uint32_t *out) {
    uint16_t x = (uint16_t)a[i];
    int16_t s = (int16_t)a[i];
    unsigned k = (a[i] >> 16) & 15u;
    out[3 * i] = (uint16_t)(x << k);
    out[3 * i + 1] = (uint16_t)(x >> k);
    out[3 * i + 2] = (uint32_t)(int32_t)(int16_t)(s >> k);
}
