/* A private float array bubble-sorted with a data-dependent index, plus a constant
 * table read with a computed index. */
#include <stdint.h>
static const uint32_t PRIMES[8] = {2, 3, 5, 7, 11, 13, 17, 19};
void private_array_c(uint64_t i, const float *a, float *out, uint32_t *tag) {
    float v[8];
    for (int k = 0; k < 8; k++) v[k] = a[8 * i + k];
    for (int p = 0; p < 8; p++)
        for (int k = 0; k + 1 < 8 - p; k++)
            if (v[k] > v[k + 1]) { float t = v[k]; v[k] = v[k + 1]; v[k + 1] = t; }
    uint32_t j = (uint32_t)(i % 8);
    out[2 * i] = v[j];
    out[2 * i + 1] = v[7 - j];
    tag[i] = PRIMES[j] * PRIMES[(i / 8) % 8];
}
