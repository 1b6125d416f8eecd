/* N-body step in C, same manifest and arithmetic as kernel.rs (clang may contract a*b+c
 * into FMA, so results differ from the Rust kernel in the last bits). */
#include <math.h>
#include <stdint.h>

void nbody(uint64_t i, uint32_t n, float dt, float softening, const float *pos, float *vel,
           float *new_pos) {
    const float soft2 = softening * softening;
    const float xi = pos[4 * i], yi = pos[4 * i + 1], zi = pos[4 * i + 2];
    float ax = 0.0f, ay = 0.0f, az = 0.0f;
    for (uint32_t j = 0; j < n; j++) {
        const float dx = pos[4 * j] - xi;
        const float dy = pos[4 * j + 1] - yi;
        const float dz = pos[4 * j + 2] - zi;
        const float d2 = dx * dx + dy * dy + dz * dz + soft2;
        const float inv = 1.0f / sqrtf(d2);
        const float s = pos[4 * j + 3] * inv * inv * inv;
        ax += dx * s;
        ay += dy * s;
        az += dz * s;
    }
    float *v = vel + 3 * i;
    v[0] += ax * dt;
    v[1] += ay * dt;
    v[2] += az * dt;
    float *p = new_pos + 4 * i;
    p[0] = xi + v[0] * dt;
    p[1] = yi + v[1] * dt;
    p[2] = zi + v[2] * dt;
    p[3] = pos[4 * i + 3];
}
