/* gemm (PolyBench), one item per row of C, i-k-j loop order (unit stride inside). */
#include <stdint.h>

void init_c(uint64_t i, uint64_t ni, uint64_t nj, double *c) {
    for (uint64_t j = 0; j < nj; j++)
        c[i * nj + j] = (double)((i * j + 1) % ni) / (double)ni;
}

void init_a(uint64_t i, uint64_t nk, double *a) {
    for (uint64_t k = 0; k < nk; k++)
        a[i * nk + k] = (double)(i * (k + 1) % nk) / (double)nk;
}

void init_b(uint64_t k, uint64_t nj, double *b) {
    for (uint64_t j = 0; j < nj; j++)
        b[k * nj + j] = (double)(k * (j + 2) % nj) / (double)nj;
}

void gemm(uint64_t i, uint64_t nj, uint64_t nk, double alpha, double beta, double *c,
          const double *a, const double *b) {
    double *row = c + i * nj;
    const double *ai = a + i * nk;
    for (uint64_t j = 0; j < nj; j++)
        row[j] *= beta;
    for (uint64_t k = 0; k < nk; k++) {
        double t = alpha * ai[k];
        const double *bk = b + k * nj;
        for (uint64_t j = 0; j < nj; j++)
            row[j] += t * bk[j];
    }
}
