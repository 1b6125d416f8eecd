/* Floyd-Warshall (PolyBench floyd-warshall), one item per matrix row. Step k first copies
 * row k (`take_row`, one item), then relaxes every row through vertex k in place
 * (`relax`): row k itself does not change in step k (path[k][k] is 0), so reading it
 * from a copy gives PolyBench's in-place result. Buffers are indexed globally. */
#include <stdint.h>

void init(uint64_t i, uint64_t n, int32_t *path) {
    for (uint64_t j = 0; j < n; j++) {
        int32_t v = (int32_t)(i * j % 7 + 1);
        if ((i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0)
            v = 999;
        path[i * n + j] = v;
    }
}

void take_row(uint64_t i, uint64_t n, uint64_t k, const int32_t *path, uint64_t path_len,
              int32_t *row) {
    (void)i;
    if (k >= n || path_len < (k + 1) * n)
        return; /* the program sizes path n*n; nothing to copy otherwise */
    for (uint64_t j = 0; j < n; j++)
        row[j] = path[k * n + j];
}

void relax(uint64_t i, uint64_t n, uint64_t k, const int32_t *row_k, int32_t *path) {
    int32_t *row = path + i * n;
    int32_t through = row[k];
    for (uint64_t j = 0; j < n; j++) {
        int32_t via = through + row_k[j];
        row[j] = row[j] < via ? row[j] : via;
    }
}
