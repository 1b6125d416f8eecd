/* Kernels for check mode (`offload run --check`): each but `stencil` and `histogram`
 * touches memory outside what its manifest gives item `at`, and check mode must name the
 * buffer and that item. `stencil` (a halo of 1) and `histogram` (a `sum` buffer) are
 * correct: under check mode they give the same results as a normal run. */
#include <stdint.h>

/* Item `at` also writes its right neighbour's element. */
void past_end(uint64_t i, uint64_t at, int32_t *y) {
    y[i] = (int32_t)i;
    if (i == at)
        y[i + 1] = -1;
}

/* Item `at` also writes its left neighbour's element. */
void before_start(uint64_t i, uint64_t at, int32_t *y) {
    y[i] = (int32_t)i;
    if (i == at)
        y[i - 1] = -1;
}

/* Item `at` writes into its input. */
void writes_input(uint64_t i, uint64_t at, const int32_t *x, int32_t *y) {
    if (i == at)
        ((int32_t *)x)[i] = 0;
    y[i] = x[i] * 2;
}

/* Reads the right neighbour's input, which a manifest without a halo does not give. */
void reads_neighbour(uint64_t i, const int32_t *x, uint64_t n, int32_t *y) {
    y[i] = i + 1 < n ? x[i] + x[i + 1] : x[i];
}

/* A three-point stencil within its halo of 1. */
void stencil(uint64_t i, const int32_t *x, uint64_t n, int32_t *y) {
    int32_t left = i > 0 ? x[i - 1] : 0;
    int32_t right = i + 1 < n ? x[i + 1] : 0;
    y[i] = left + 2 * x[i] + right;
}

/* Counts items by i mod bins and adds up a float per bin (their order matters). */
void histogram(uint64_t i, uint64_t bins, const float *w, uint64_t *count, float *total) {
    count[i % bins] += 1;
    total[i % bins] += w[i] * 0.1f;
}

/* Item `at` adds into one bin past the end of its `sum` buffer. */
void sum_overrun(uint64_t i, uint64_t at, uint64_t bins, uint64_t *count) {
    count[i % bins] += 1;
    if (i == at)
        count[bins] += 1;
}

/* Item `at` reads one element past the end of a whole `in` buffer. */
void whole_overread(uint64_t i, uint64_t at, const int32_t *table, uint64_t table_len,
                    int32_t *y) {
    y[i] = table[i % table_len] + (i == at ? table[table_len] : 0);
}
