/* A float `sum` buffer; values are small integers so every summation order is exact. */
#include <stdint.h>
void sum_f32(uint64_t i, const int32_t *a, float *acc) {
    float v = (float)(a[i] % 1000);
    acc[0] += v;
    acc[1] += v * 2.0f;
    acc[2] += (float)(i & 7);
    acc[3] += 1.0f;
}
