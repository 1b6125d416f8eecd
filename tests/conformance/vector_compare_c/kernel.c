/* Vector comparisons (with NaN and infinities), masks combined and used to select
 * lanes, signed vs unsigned lane comparisons, and any/all over a mask. */
#include <stdint.h>
typedef float f4 __attribute__((ext_vector_type(4)));
typedef int32_t i4 __attribute__((ext_vector_type(4)));
typedef uint32_t u4 __attribute__((ext_vector_type(4)));

void vector_compare_c(uint64_t i, const float *a, const float *b, const int32_t *c,
                      int32_t *masks, float *picked, int32_t *flags) {
    f4 x = *(const f4 *)(a + 4 * i), y = *(const f4 *)(b + 4 * i);
    i4 n = *(const i4 *)(c + 4 * i);
    i4 lt = x < y, ne = x != y, un = !(x >= y);
    i4 slt = n < (i4)(3);
    i4 ult = (i4)(__builtin_convertvector(n, u4) < (u4)(3u));
    *(i4 *)(masks + 8 * i) = lt ^ (ne << 1) ^ (un << 2);
    *(i4 *)(masks + 8 * i + 4) = slt - ult * 2;
    i4 xb = (i4)x, yb = (i4)y;
    i4 sel = (lt & xb) | (~lt & yb);
    *(f4 *)(picked + 4 * i) = (f4)sel;
    int any = (lt.x | lt.y | lt.z | lt.w) != 0;
    int all = (slt.x & slt.y & slt.z & slt.w) != 0;
    flags[i] = any + 2 * all;
}
