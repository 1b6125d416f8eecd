/* Unaligned 32- and 64-bit reads from a byte buffer (memcpy), and a struct layout. */
#include <stdint.h>
#include <string.h>
struct rec { uint8_t tag; uint32_t value; double weight; };
void unaligned_c(uint64_t i, const uint8_t *bytes, const uint8_t *recs, uint64_t *out) {
    uint32_t w;
    uint64_t q;
    memcpy(&w, bytes + 9 * i + 3, 4);
    memcpy(&q, bytes + 9 * i + 1, 8);
    struct rec r;
    memcpy(&r, recs + (i % 4) * sizeof(struct rec), sizeof r);
    out[3 * i] = w;
    out[3 * i + 1] = q;
    out[3 * i + 2] = (uint64_t)r.tag + r.value + (uint64_t)(r.weight == r.weight);
}
