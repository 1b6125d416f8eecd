/* A dense switch that clang turns into a lookup table (a constant global array). */
#include <stdint.h>
void switch_table_c(uint64_t i, const uint32_t *a, uint32_t *out) {
    uint32_t r;
    switch (a[i] & 15u) {
    case 0: r = 11; break;
    case 1: r = 22; break;
    case 2: r = 35; break;
    case 3: r = 48; break;
    case 4: r = 51; break;
    case 5: r = 66; break;
    case 6: r = 79; break;
    case 7: r = 81; break;
    case 8: r = 93; break;
    case 9: r = 107; break;
    case 10: r = 110; break;
    default: r = 1; break;
    }
    out[i] = r;
}
