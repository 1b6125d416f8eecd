/* Item i adds up row i of an n-wide matrix: jobs whose packets carry a lot of inputs
 * (n doubles per item) and almost no results, for the tests of measured links: every
 * packet of a job with n = 131072 is a bandwidth sample of the client-to-node direction
 * (1 MiB per item), and no result is big enough to be one. */
#include <stdint.h>

void rowsum(uint64_t i, uint64_t n, const double *x, double *total) {
    double s = 0.0;
    for (uint64_t j = 0; j < n; j++)
        s += x[i * n + j];
    total[i] = s;
}
