/* A kernel that does nothing: what a program's step costs beyond its work. */
#include <stdint.h>

void nop(uint64_t i, uint32_t *x) {
    (void)i;
    (void)x;
}
