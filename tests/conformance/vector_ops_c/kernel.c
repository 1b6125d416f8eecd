/* Explicit SIMD with clang's vector extension: LLVM vector types lowered to OpenCL
 * vectors (arithmetic, signed division, shifts, shuffles, lane insert/extract, lane
 * conversions, vector loads/stores of u8/i32/f32/f64 lanes). */
#include <stdint.h>
typedef float f4 __attribute__((ext_vector_type(4)));
typedef double d2 __attribute__((ext_vector_type(2)));
typedef int32_t i4 __attribute__((ext_vector_type(4)));
typedef uint32_t u4 __attribute__((ext_vector_type(4)));
typedef uint8_t b8 __attribute__((ext_vector_type(8)));
typedef uint16_t h8 __attribute__((ext_vector_type(8)));

void vector_ops_c(uint64_t i, const float *a, const int32_t *b, const uint8_t *c, const double *d,
                  float *fo, int32_t *io, uint8_t *bo, double *dout) {
    f4 v = *(const f4 *)(a + 4 * i);
    i4 n = *(const i4 *)(b + 4 * i);
    b8 bytes = *(const b8 *)(c + 8 * i);
    d2 w = *(const d2 *)(d + 2 * i);
    f4 s = v * v - v.wzyx;
    s.y = s.x + 1.0f;
    i4 q = n / ((n & 0x7fff) | 1);
    i4 r = (n >> 3) ^ (i4)(__builtin_convertvector(v, i4) << 2);
    u4 u = __builtin_convertvector(n, u4) * 2654435761u;
    h8 wide = __builtin_convertvector(bytes, h8) * (h8)(300);
    b8 back = __builtin_convertvector(wide >> 4, b8) + bytes.s76543210;
    *(f4 *)(fo + 4 * i) = s + __builtin_convertvector(n, f4) * 0.5f;
    *(i4 *)(io + 8 * i) = q + r;
    *(u4 *)(io + 8 * i + 4) = u ^ (u >> 7);
    *(b8 *)(bo + 8 * i) = back;
    *(d2 *)(dout + 2 * i) = w.yx * w + (d2)(v.x, (double)n.w);
}
