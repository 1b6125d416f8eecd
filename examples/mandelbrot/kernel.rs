//! Mandelbrot set: one item per pixel of a `width`-wide image, row-major.
//!
//! Pixel `i` is `(i % width, i / width)` and samples `c = (x0 + px*step, y0 + py*step)`;
//! the kernel stores how many iterations of `z = z^2 + c` stay within `|z|^2 <= 4`,
//! capped at `max_iter`. Used by `offload demo`.
#![no_std]

/// Item kernel: escape iteration count of pixel `i`.
///
/// # Safety
/// `iters` must be valid for element `i` (the runtime guarantees this for split `[1]`).
/// A `width` of 0 panics (division by zero), which the runtime reports as a kernel panic.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mandelbrot(
    i: u64,
    width: u32,
    max_iter: u32,
    x0: f64,
    y0: f64,
    step: f64,
    iters: *mut u32,
) {
    let width = width as u64;
    let px = (i % width) as f64;
    let py = (i / width) as f64;
    let cx = x0 + px * step;
    let cy = y0 + py * step;
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
    // SAFETY: split [1] out buffer, indexed with the global item index.
    unsafe { *iters.add(i as usize) = n };
}
