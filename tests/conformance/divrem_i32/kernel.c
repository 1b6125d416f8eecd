/* Signed 32-bit division and remainder (C truncates toward zero), guarded against
 * division by zero and INT_MIN / -1, which are undefined in C. */
#include <stdint.h>
void divrem_i32(uint64_t i, const int32_t *a, const int32_t *b, int32_t *out) {
    int32_t x = a[i], y = b[i];
    if (y == 0 || (x == INT32_MIN && y == -1)) {
        out[2 * i] = 7;
        out[2 * i + 1] = -7;
        return;
    }
    out[2 * i] = x / y;
    out[2 * i + 1] = x % y;
}
