/* Twelve arguments of every kind: scalars of each type and split buffers. The i32 sum
 * wraps through unsigned arithmetic: a signed overflow would be undefined behaviour in C,
 * which lets the optimizer widen the addition on one device and not on another. */
#include <stdint.h>
void many_args_c(uint64_t i, int32_t s32, uint32_t u32, int64_t s64, uint64_t u64, float f32,
                 double f64, const int32_t *a, const uint64_t *b, const float *c,
                 const double *d, uint64_t *out, double *fout) {
    out[2 * i] = (uint64_t)(int64_t)(int32_t)((uint32_t)a[i] + (uint32_t)s32) * u32 + (uint64_t)s64 + (b[2 * i + 1] ^ u64);
    out[2 * i + 1] = (uint64_t)(int64_t)(c[i] * 16.0f) + (uint64_t)(i * 3);
    fout[i] = d[i] * f64 + (double)(c[i] * f32);
}
