//! Native reference and input generator for the `nbody` example.

/// One integration step of all bodies, the kernel's arithmetic in the same order.
///
/// `pos` holds `(x, y, z, mass)` per body and `vel` `(vx, vy, vz)`; `vel` is updated in
/// place and the new positions (with unchanged masses) are returned.
pub fn step(dt: f32, softening: f32, pos: &[f32], vel: &mut [f32]) -> Vec<f32> {
    let n = pos.len() / 4;
    assert_eq!(pos.len(), 4 * n, "pos must hold (x, y, z, mass) per body");
    assert_eq!(vel.len(), 3 * n, "vel must hold (vx, vy, vz) per body");
    let soft2 = softening * softening;
    let mut new_pos = vec![0.0f32; 4 * n];
    for i in 0..n {
        let (xi, yi, zi) = (pos[4 * i], pos[4 * i + 1], pos[4 * i + 2]);
        let (mut ax, mut ay, mut az) = (0.0f32, 0.0f32, 0.0f32);
        for body in pos.chunks_exact(4) {
            let dx = body[0] - xi;
            let dy = body[1] - yi;
            let dz = body[2] - zi;
            let d2 = dx * dx + dy * dy + dz * dz + soft2;
            let inv = 1.0 / d2.sqrt();
            let s = body[3] * inv * inv * inv;
            ax += dx * s;
            ay += dy * s;
            az += dz * s;
        }
        let v = &mut vel[3 * i..3 * i + 3];
        v[0] += ax * dt;
        v[1] += ay * dt;
        v[2] += az * dt;
        new_pos[4 * i] = xi + v[0] * dt;
        new_pos[4 * i + 1] = yi + v[1] * dt;
        new_pos[4 * i + 2] = zi + v[2] * dt;
        new_pos[4 * i + 3] = pos[4 * i + 3];
    }
    new_pos
}

/// Deterministic initial state `(pos, vel)` of `n` bodies: positions in a cube of side 2
/// around the origin, masses in `[0.5, 1.5)`, small random velocities.
pub fn bodies(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut state = seed;
    let mut next = move || {
        // splitmix64: tiny, deterministic and good enough for test data.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // Uniform in [0, 1) on a 2^-24 grid, exact in f32.
    let mut unit = move || (next() >> 40) as f32 / (1u64 << 24) as f32;
    let mut pos = Vec::with_capacity(4 * n);
    let mut vel = Vec::with_capacity(3 * n);
    for _ in 0..n {
        pos.extend([
            2.0 * unit() - 1.0,
            2.0 * unit() - 1.0,
            2.0 * unit() - 1.0,
            0.5 + unit(),
        ]);
        vel.extend([
            0.1 * (unit() - 0.5),
            0.1 * (unit() - 0.5),
            0.1 * (unit() - 0.5),
        ]);
    }
    (pos, vel)
}
