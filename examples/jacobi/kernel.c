/* 2-D Jacobi stencil (PolyBench jacobi-2d), one item per grid row. Buffers are indexed
 * globally: row i of an n-wide grid starts at element i*n, and the halo of `src` makes
 * rows i-1 and i+1 readable. */
#include <stdint.h>

void init(uint64_t i, uint64_t n, double *a, double *b) {
    for (uint64_t j = 0; j < n; j++) {
        a[i * n + j] = ((double)i * (double)(j + 2) + 2.0) / (double)n;
        b[i * n + j] = ((double)i * (double)(j + 3) + 3.0) / (double)n;
    }
}

void jacobi(uint64_t i, uint64_t n, const double *src, double *dst) {
    const double *row = src + i * n;
    double *out = dst + i * n;
    if (i == 0 || i + 1 == n) {
        for (uint64_t j = 0; j < n; j++)
            out[j] = row[j];
        return;
    }
    out[0] = row[0];
    out[n - 1] = row[n - 1];
    for (uint64_t j = 1; j + 1 < n; j++)
        out[j] = 0.2 * (row[j] + row[j - 1] + row[j + 1] + row[j + n] + row[j - n]);
}
