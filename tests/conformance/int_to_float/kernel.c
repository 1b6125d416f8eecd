/* Integer to float conversions of every width and signedness (round to nearest even). */
#include <stdint.h>
void int_to_float(uint64_t i, const uint64_t *a, float *f, double *d) {
    uint64_t x = a[i];
    f[4 * i] = (float)x;
    f[4 * i + 1] = (float)(int64_t)x;
    f[4 * i + 2] = (float)(uint32_t)x;
    f[4 * i + 3] = (float)(int32_t)x;
    d[4 * i] = (double)x;
    d[4 * i + 1] = (double)(int64_t)x;
    d[4 * i + 2] = (double)(uint32_t)(x >> 32);
    d[4 * i + 3] = (double)(int8_t)x;
}
