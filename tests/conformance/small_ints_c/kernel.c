/* char and short arithmetic with C's promotions: products that exceed 16 bits,
 * signed narrowing, and sign extension back to 32 bits. */
#include <stdint.h>
void small_ints_c(uint64_t i, const uint32_t *a, int32_t *out) {
    uint16_t x = (uint16_t)a[i], y = (uint16_t)(a[i] >> 16);
    int8_t c = (int8_t)a[i];
    int16_t s = (int16_t)(a[i] >> 8);
    out[4 * i] = (int32_t)(uint16_t)(x * y);
    out[4 * i + 1] = (int32_t)(int16_t)(s * c);
    out[4 * i + 2] = (int32_t)(int8_t)(c + 100);
    out[4 * i + 3] = (int32_t)((uint32_t)x * y >> 3);
}
