/* Unsigned 32-bit overflow wraps: add, sub, mul, negate. */
#include <stdint.h>
void wrap_u32(uint64_t i, const uint32_t *a, const uint32_t *b, uint32_t *out) {
    uint32_t x = a[i], y = b[i];
    out[4 * i] = x + y;
    out[4 * i + 1] = x - y;
    out[4 * i + 2] = x * y;
    out[4 * i + 3] = (0u - x) ^ (y * 2654435761u);
}
