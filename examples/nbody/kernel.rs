//! N-body: one explicit integration step, one item per body.
//!
//! `pos` holds all `n` bodies as `(x, y, z, mass)`; body `i` sums the softened gravitational
//! pull of every body (itself included: its distance is 0, so it adds nothing), updates its
//! velocity `vel[3i..3i+3]` in place and writes its new position and unchanged mass to
//! `new_pos[4i..4i+4]`. Units are chosen so that the gravitational constant is 1.
#![no_std]

unsafe extern "C" {
    // libm, on the packager's allow-list; the kernel has no std to take it from.
    safe fn sqrtf(x: f32) -> f32;
}

/// Item kernel: advances body `i` by one step of `dt`.
///
/// # Safety
/// `pos` must hold `4 * n` floats; `vel` and `new_pos` must be valid for the item's slice
/// (split `[3]` and `[4]`, indexed globally).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nbody(
    i: u64,
    n: u32,
    dt: f32,
    softening: f32,
    pos: *const f32,
    vel: *mut f32,
    new_pos: *mut f32,
) {
    let i = i as usize;
    // SAFETY: `pos` is the whole buffer of `n` bodies, per the manifest's `[]` split.
    let bodies = unsafe { core::slice::from_raw_parts(pos, 4 * n as usize) };
    let soft2 = softening * softening;
    let (xi, yi, zi) = (bodies[4 * i], bodies[4 * i + 1], bodies[4 * i + 2]);
    let (mut ax, mut ay, mut az) = (0.0f32, 0.0f32, 0.0f32);
    for body in bodies.chunks_exact(4) {
        let dx = body[0] - xi;
        let dy = body[1] - yi;
        let dz = body[2] - zi;
        let d2 = dx * dx + dy * dy + dz * dz + soft2;
        let inv = 1.0 / sqrtf(d2);
        let s = body[3] * inv * inv * inv;
        ax += dx * s;
        ay += dy * s;
        az += dz * s;
    }
    // SAFETY: split [3] and [4] buffers, indexed with the global item index.
    unsafe {
        let v = vel.add(3 * i);
        let vx = *v + ax * dt;
        let vy = *v.add(1) + ay * dt;
        let vz = *v.add(2) + az * dt;
        *v = vx;
        *v.add(1) = vy;
        *v.add(2) = vz;
        let p = new_pos.add(4 * i);
        *p = xi + vx * dt;
        *p.add(1) = yi + vy * dt;
        *p.add(2) = zi + vz * dt;
        *p.add(3) = bodies[4 * i + 3];
    }
}
