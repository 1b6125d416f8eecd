/* libm fminf/fmaxf/fmin/fmax/fdimf/copysignf with NaN and infinities. */
#include <math.h>
#include <stdint.h>
void minmax_c(uint64_t i, const float *a, const float *b, float *out) {
    float x = a[i], y = b[i];
    out[4 * i] = fminf(x, y);
    out[4 * i + 1] = fmaxf(x, y);
    out[4 * i + 2] = (float)fmax((double)x, (double)y);
    out[4 * i + 3] = copysignf(fabsf(x), y);
}
