/* 8-bit shifts: logical and arithmetic, every amount 0..7, results widened. */
#include <stdint.h>
void shifts_u8(uint64_t i, const uint32_t *a, uint32_t *out) {
    uint8_t x = (uint8_t)a[i];
    int8_t s = (int8_t)a[i];
    unsigned k = (a[i] >> 8) & 7u;
    out[4 * i] = (uint8_t)(x << k);
    out[4 * i + 1] = (uint8_t)(x >> k);
    out[4 * i + 2] = (uint32_t)(int32_t)(int8_t)(s >> k);
    out[4 * i + 3] = (uint8_t)((uint8_t)(x << k) | (uint8_t)(x >> ((8 - k) & 7u)));
}
