//! A test kernel that reads and rewrites `x` and writes `y`, and panics (a slice index
//! out of bounds) on items >= n: for checking that a failed run changes no file.
#![no_std]

/// `y[i] = x[i]; x[i] = x[i] / 2`, for items below `n`.
///
/// # Safety
/// `x` and `y` must be valid for the items below `n` (global indices).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn halve(i: u64, n: u64, x: *mut f32, y: *mut f32) {
    // SAFETY: the runtime makes x and y valid for item i; the slice's bound is what
    // makes items >= n panic.
    let xs = unsafe { core::slice::from_raw_parts_mut(x, n as usize) };
    let i = i as usize;
    let v = xs[i];
    unsafe { *y.add(i) = v };
    xs[i] = v / 2.0;
}
