/* saxpy in C: y[i] = a * x[i] + y[i]. Same manifest as kernel.rs. */
#include <stdint.h>

void saxpy(uint64_t i, float a, const float *x, float *y) {
    y[i] = a * x[i] + y[i];
}
