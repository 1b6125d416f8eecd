/* Kernels that trap on one item: the crash report of local runs names the kernel, the
 * items and the signal, and leaves every output and --inout file as it was. `at` is the
 * item that traps; the others write their output. */
#include <stdint.h>

void divide(uint64_t i, uint64_t at, int32_t *y) {
    volatile int32_t zero = 0;
    y[i] = i == at ? (int32_t)i / zero : (int32_t)i;
}

void wild_write(uint64_t i, uint64_t at, int32_t *y) {
    volatile int32_t *nowhere = (volatile int32_t *)(uintptr_t)(16 + 0 * i);
    if (i == at)
        *nowhere = 1;
    y[i] = (int32_t)i;
}

void trap(uint64_t i, uint64_t at, int32_t *y) {
    if (i == at)
        __builtin_trap();
    y[i] = (int32_t)i;
}

/* Recurses deeper than any thread's stack on the trapping item. */
static int32_t deep(volatile int32_t *frame, uint64_t n) {
    volatile int32_t local[1024];
    local[n % 1024] = (int32_t)n;
    return n == 0 ? local[0] : deep(local, n - 1) + frame[0];
}

void overflow(uint64_t i, uint64_t at, int32_t *y) {
    volatile int32_t seed[1] = {1};
    y[i] = i == at ? deep(seed, UINT64_C(1) << 40) : (int32_t)i;
}

/* Needs a 12 MiB stack frame per item: runs with --stack-size 32M. */
void big_frame(uint64_t i, uint64_t at, int32_t *y) {
    volatile uint8_t frame[12u << 20];
    for (uint64_t k = 0; k < sizeof frame; k += 4096)
        frame[k] = (uint8_t)(k + i);
    y[i] = (int32_t)(i + at) + frame[4096] - (uint8_t)(4096 + i);
}

/* Runs until the process is stopped: for the tests of Ctrl-C. */
void spin(uint64_t i, uint64_t at, int32_t *y) {
    volatile uint64_t k = 0;
    while (k != at + 1)
        k = (k + 2) | 2; /* never at + 1 for an odd at + 1 > 2: even values only */
    y[i] = (int32_t)k;
}
