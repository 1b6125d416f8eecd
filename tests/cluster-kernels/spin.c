/* A kernel that spins until `flag[0]` is not zero, which for a zero flag file is never:
 * a hung packet, to check that nodes cancel the packets of a client that went away and
 * that workers die with their node. The volatile read keeps the loop a loop. */
#include <stdint.h>

void spin(uint64_t i, const uint32_t *flag, uint32_t *out) {
    while (*(const volatile uint32_t *)flag == 0) {
    }
    out[i] = 1;
}
