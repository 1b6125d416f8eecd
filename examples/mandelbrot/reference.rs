//! Native reference for the `mandelbrot` example.

/// Escape iteration counts of a `width` x `height` image, row-major, with exactly the
/// kernel's floating-point operations in the same order (so results are bit-identical
/// unless a compiler contracts or reassociates, which neither rustc nor the JIT may do
/// without fast-math flags).
pub fn mandelbrot(width: u32, height: u32, max_iter: u32, x0: f64, y0: f64, step: f64) -> Vec<u32> {
    let mut out = Vec::with_capacity(width as usize * height as usize);
    for py in 0..height {
        for px in 0..width {
            let cx = x0 + f64::from(px) * step;
            let cy = y0 + f64::from(py) * step;
            let (mut zx, mut zy) = (0.0f64, 0.0f64);
            let mut n = 0u32;
            while n < max_iter {
                let x2 = zx * zx;
                let y2 = zy * zy;
                if x2 + y2 > 4.0 {
                    break;
                }
                zy = 2.0 * zx * zy + cy;
                zx = x2 - y2 + cx;
                n += 1;
            }
            out.push(n);
        }
    }
    out
}
