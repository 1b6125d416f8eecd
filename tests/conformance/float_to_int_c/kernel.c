/* C float-to-int casts truncate toward zero; inputs are clamped into range first
 * (out-of-range casts are undefined in C), plus float narrowing and widening. */
#include <stdint.h>
void float_to_int_c(uint64_t i, const double *d, int32_t *out, float *narrow) {
    double x = d[i];
    if (!(x == x)) x = 0.5;
    if (x > 2147483000.0) x = 2147483000.0;
    if (x < -2147483000.0) x = -2147483000.0;
    out[3 * i] = (int32_t)x;
    out[3 * i + 1] = (int32_t)(uint32_t)(x < 0 ? -x : x);
    out[3 * i + 2] = (int32_t)(int16_t)(int32_t)(x / 65536.0);
    narrow[i] = (float)d[i];
}
