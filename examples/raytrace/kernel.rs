//! Ray tracer: renders pixels `start..end` of a `width` x `height` image (row-major, RGB8).
//!
//! This is a *range* kernel: one call renders a tile of consecutive pixels.
//! The scene buffer `spheres` starts with a 4-float header, the point light's position
//! `(x, y, z)` and the ambient light level, followed by `nspheres` records of 8 floats:
//! centre `(x, y, z)`, radius, colour `(r, g, b)` in `0..=1` and specular strength.
//! The camera sits at the origin looking down `-z` with a 90° vertical field of view.
//! Shading: ambient + Lambert diffuse + Blinn-Phong specular (exponent 32), hard shadows;
//! rays that miss every sphere get a sky gradient.
#![no_std]

unsafe extern "C" {
    // libm, on the packager's allow-list; the kernel has no std to take it from.
    safe fn sqrtf(x: f32) -> f32;
}

/// Floats before the first sphere record: light position and ambient level.
const HEADER: usize = 4;
/// Floats per sphere record.
const RECORD: usize = 8;
/// Minimum ray distance, so a ray leaving a surface does not hit that surface again.
const EPS: f32 = 1e-3;

type V3 = [f32; 3];

fn dot(a: V3, b: V3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn normalize(a: V3) -> V3 {
    let inv = 1.0 / sqrtf(dot(a, a));
    [a[0] * inv, a[1] * inv, a[2] * inv]
}

/// Distance along the unit ray `o + t*d` to the sphere, if it is hit at `t > EPS`.
fn hit(o: V3, d: V3, sphere: &[f32]) -> Option<f32> {
    let oc = sub(o, [sphere[0], sphere[1], sphere[2]]);
    let b = dot(oc, d);
    let c = dot(oc, oc) - sphere[3] * sphere[3];
    let disc = b * b - c;
    if disc <= 0.0 {
        return None;
    }
    let s = sqrtf(disc);
    let near = -b - s;
    let t = if near > EPS { near } else { -b + s };
    if t > EPS {
        Some(t)
    } else {
        None
    }
}

/// Maps a colour channel to a byte, clamping first (NaN maps to 0) and rounding, so that
/// last-bit differences in the float rarely change the byte.
fn to_byte(c: f32) -> u8 {
    let c = if c > 1.0 {
        1.0
    } else if c >= 0.0 {
        c
    } else {
        0.0
    };
    (c * 255.0 + 0.5) as u8
}

/// Colour seen along the unit ray `o + t*d`.
fn shade(scene: &[f32], o: V3, d: V3) -> V3 {
    let records = &scene[HEADER..];
    let mut best: Option<(f32, &[f32])> = None;
    for sphere in records.chunks_exact(RECORD) {
        if let Some(t) = hit(o, d, sphere) {
            if best.is_none_or(|(bt, _)| t < bt) {
                best = Some((t, sphere));
            }
        }
    }
    let Some((t, sphere)) = best else {
        let k = 0.5 * (d[1] + 1.0);
        return [1.0 - k + k * 0.5, 1.0 - k + k * 0.7, 1.0 - k + k * 1.0];
    };
    let p = [o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2]];
    let inv_r = 1.0 / sphere[3];
    let n = [
        (p[0] - sphere[0]) * inv_r,
        (p[1] - sphere[1]) * inv_r,
        (p[2] - sphere[2]) * inv_r,
    ];
    let to_light = sub([scene[0], scene[1], scene[2]], p);
    let light_dist = sqrtf(dot(to_light, to_light));
    let l = [
        to_light[0] / light_dist,
        to_light[1] / light_dist,
        to_light[2] / light_dist,
    ];
    let lambert = dot(n, l);
    let ambient = scene[3];
    let mut diffuse = 0.0f32;
    let mut spec = 0.0f32;
    if lambert > 0.0 {
        let shadowed = records
            .chunks_exact(RECORD)
            .any(|s| hit(p, l, s).is_some_and(|ts| ts < light_dist));
        if !shadowed {
            diffuse = lambert;
            let h = normalize(sub(l, d));
            let nh = dot(n, h);
            if nh > 0.0 {
                // nh^32 by repeated squaring: no powf needed.
                let mut x = nh;
                for _ in 0..5 {
                    x *= x;
                }
                spec = sphere[7] * x;
            }
        }
    }
    let k = ambient + (1.0 - ambient) * diffuse;
    [
        sphere[4] * k + spec,
        sphere[5] * k + spec,
        sphere[6] * k + spec,
    ]
}

/// Range kernel: renders pixels `start..end` into `rgb[3*start..3*end]`.
///
/// # Safety
/// `spheres` must hold `4 + 8 * nspheres` floats (whole buffer); `rgb` must be valid for
/// the packet's pixels (split `[3]`, indexed globally). `width` or `height` of 0 panics.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn raytrace(
    start: u64,
    end: u64,
    width: u32,
    height: u32,
    spheres: *const f32,
    nspheres: u32,
    rgb: *mut u8,
) {
    // SAFETY: the scene is a whole `in` buffer of the stated size; the output slice covers
    // exactly this packet's pixels, whose pointer the runtime offsets for global indexing.
    let (scene, out) = unsafe {
        (
            core::slice::from_raw_parts(spheres, HEADER + RECORD * nspheres as usize),
            core::slice::from_raw_parts_mut(
                rgb.add(3 * start as usize),
                3 * (end - start) as usize,
            ),
        )
    };
    let (w, h) = (width as u64, height as u64);
    let aspect = width as f32 / height as f32;
    for (pixel, px_out) in (start..end).zip(out.chunks_exact_mut(3)) {
        let (px, py) = ((pixel % w) as f32, (pixel / w % h) as f32);
        let d = normalize([
            ((px + 0.5) * 2.0 / width as f32 - 1.0) * aspect,
            1.0 - (py + 0.5) * 2.0 / height as f32,
            -1.0,
        ]);
        let c = shade(scene, [0.0, 0.0, 0.0], d);
        px_out[0] = to_byte(c[0]);
        px_out[1] = to_byte(c[1]);
        px_out[2] = to_byte(c[2]);
    }
}
