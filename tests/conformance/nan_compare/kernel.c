/* Every comparison predicate with NaN and infinities: ordered ones are false on NaN,
 * != and negated ones are true. Results packed into a bit mask. */
#include <stdint.h>
void nan_compare(uint64_t i, const float *a, const float *b, uint32_t *out) {
    float x = a[i], y = b[i];
    uint32_t m = 0;
    m |= (uint32_t)(x < y) << 0;
    m |= (uint32_t)(x <= y) << 1;
    m |= (uint32_t)(x == y) << 2;
    m |= (uint32_t)(x != y) << 3;
    m |= (uint32_t)(x > y) << 4;
    m |= (uint32_t)(x >= y) << 5;
    m |= (uint32_t)!(x < y) << 6;
    m |= (uint32_t)!(x >= y) << 7;
    m |= (uint32_t)(x != x) << 8;
    m |= (uint32_t)(x == x && y == y) << 9;
    m |= (uint32_t)(x < y || x > y) << 10;
    m |= (uint32_t)!(x < y || x > y) << 11;
    out[i] = m;
}
