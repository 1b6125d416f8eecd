//! Native reference and scene for the `raytrace` example.
//!
//! The renderer mirrors the kernel's arithmetic operation for operation (with `f32::sqrt`
//! for libm's correctly rounded `sqrtf`), so both produce the same bytes unless a compiler
//! contracts or reassociates float operations.

/// Floats before the first sphere record: light position and ambient level.
pub const HEADER: usize = 4;
/// Floats per sphere record: centre, radius, colour, specular strength.
pub const RECORD: usize = 8;
const EPS: f32 = 1e-3;

type V3 = [f32; 3];

/// The demo scene as the kernel's `spheres` buffer, and its number of spheres: a light
/// up and to the left, a large "ground" sphere and three coloured spheres.
pub fn scene() -> (Vec<f32>, u32) {
    let light_and_ambient = [-4.0, 6.0, 2.0, 0.1];
    let spheres: [[f32; RECORD]; 4] = [
        // centre x, y, z, radius, r, g, b, specular
        [0.0, -101.0, -5.0, 100.0, 0.8, 0.8, 0.7, 0.0],
        [0.0, 0.0, -5.0, 1.0, 0.9, 0.2, 0.2, 0.6],
        [-2.2, -0.3, -6.0, 0.7, 0.2, 0.8, 0.3, 0.3],
        [1.8, -0.5, -4.0, 0.5, 0.2, 0.4, 0.9, 0.8],
    ];
    let mut buf = light_and_ambient.to_vec();
    for s in &spheres {
        buf.extend_from_slice(s);
    }
    (buf, spheres.len() as u32)
}

/// Renders the whole `width` x `height` image (row-major RGB8), like the kernel.
pub fn render(width: u32, height: u32, scene: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * width as usize * height as usize);
    let aspect = width as f32 / height as f32;
    for py in 0..height {
        for px in 0..width {
            let (px, py) = (px as f32, py as f32);
            let d = normalize([
                ((px + 0.5) * 2.0 / width as f32 - 1.0) * aspect,
                1.0 - (py + 0.5) * 2.0 / height as f32,
                -1.0,
            ]);
            let c = shade(scene, [0.0, 0.0, 0.0], d);
            out.extend(c.map(to_byte));
        }
    }
    out
}

fn dot(a: V3, b: V3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn normalize(a: V3) -> V3 {
    let inv = 1.0 / dot(a, a).sqrt();
    [a[0] * inv, a[1] * inv, a[2] * inv]
}

fn hit(o: V3, d: V3, sphere: &[f32]) -> Option<f32> {
    let oc = sub(o, [sphere[0], sphere[1], sphere[2]]);
    let b = dot(oc, d);
    let c = dot(oc, oc) - sphere[3] * sphere[3];
    let disc = b * b - c;
    if disc <= 0.0 {
        return None;
    }
    let s = disc.sqrt();
    let near = -b - s;
    let t = if near > EPS { near } else { -b + s };
    (t > EPS).then_some(t)
}

fn to_byte(c: f32) -> u8 {
    // Clamp with NaN going to 0, then round: the kernel's conversion.
    let c = if c > 1.0 {
        1.0
    } else if c >= 0.0 {
        c
    } else {
        0.0
    };
    (c * 255.0 + 0.5) as u8
}

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
    let light_dist = dot(to_light, to_light).sqrt();
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
