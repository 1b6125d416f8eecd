/* u8 buffers: byte arithmetic with wrap-around, saturation by hand, and a checksum. */
#include <stdint.h>
void bytes_u8(uint64_t i, const uint8_t *in, uint8_t *out) {
    const uint8_t *p = in + 4 * i;
    uint8_t s = (uint8_t)(p[0] + p[1] + p[2] + p[3]);
    unsigned wide = (unsigned)p[0] + p[1];
    out[3 * i] = s;
    out[3 * i + 1] = wide > 255 ? 255 : (uint8_t)wide;
    out[3 * i + 2] = (uint8_t)((p[2] * p[3]) >> 4) ^ (uint8_t)~p[0];
}
