/* Nested loops with goto, early return and a while loop over a collatz-like sequence. */
#include <stdint.h>
void nested_loops_c(uint64_t i, uint32_t rounds, uint64_t *out) {
    uint64_t x = i * 2654435761u + 1, total = 0;
    for (uint32_t r = 0; r < rounds; r++) {
        uint32_t n = 0;
        while (x != 1 && n < 200) {
            x = (x & 1) ? 3 * x + 1 : x / 2;
            n++;
            if (x == 16) goto found;
        }
        total += n;
        x = x * 6364136223846793005ull + r;
        continue;
    found:
        total += 1000 + n;
        if (total > 5000) {
            out[i] = total;
            return;
        }
        x += i;
    }
    out[i] = total ^ x;
}
