/* libm on f32: sin, cos, exp, log, pow, atan2, fma, sqrt. OpenCL allows up to 4 ULP
 * for sin/cos/exp/log and 16 for pow, so this case has a looser bound. */
#include <math.h>
#include <stdint.h>
void f32_libm(uint64_t i, const float *a, const float *b, float *out) {
    float x = a[i], y = b[i];
    out[8 * i] = sinf(x);
    out[8 * i + 1] = cosf(y);
    out[8 * i + 2] = expf(x * 0.01f);
    out[8 * i + 3] = logf(fabsf(y) + 1.0f);
    out[8 * i + 4] = powf(fabsf(x) + 0.5f, 1.5f);
    out[8 * i + 5] = atan2f(y, x);
    out[8 * i + 6] = fmaf(x, y, 1.0f);
    out[8 * i + 7] = sqrtf(fabsf(x));
}
