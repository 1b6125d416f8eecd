/* A kernel that writes far outside its buffer: the node's worker process dies of
 * SIGSEGV on the first item >= `from`. Used to check that a crashing kernel fails its
 * job with a clear error and leaves the node serving. */
#include <stdint.h>

void crash(uint64_t i, uint32_t from, uint32_t *out) {
    if (i >= from) {
        /* 2^40 elements past the slice: unmapped on any sane system. */
        out[i + (1ull << 40)] = 1;
    }
    out[i] = (uint32_t)i;
}
