/* Chains of conditional expressions (select) on floats and integers. */
#include <stdint.h>
void select_chain_c(uint64_t i, const float *a, const int32_t *b, float *f, int32_t *n) {
    float x = a[i];
    int32_t y = b[i];
    f[i] = x < -1.0f ? -1.0f : x > 1.0f ? 1.0f : x != x ? 0.0f : x * 0.5f;
    n[i] = y < 0 ? (y < -100 ? -100 : y) : (y > 100 ? 100 : (y & 1 ? y * 3 : y / 2));
}
