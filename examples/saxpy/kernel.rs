//! saxpy: `y[i] = a * x[i] + y[i]`, one item per element.
//!
//! Compiled by `offload package` with `rustc --crate-type=lib --emit=llvm-bc -C panic=abort`;
//! the runtime offsets `x` and `y` so that global item indices are valid for a packet's slice.
#![no_std]

/// Item kernel: updates element `i` of `y` in place.
///
/// # Safety
/// `x` and `y` must be valid for element `i` (the runtime guarantees this for split `[1]`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn saxpy(i: u64, a: f32, x: *const f32, y: *mut f32) {
    let i = i as usize;
    // SAFETY: the runtime hands out buffers of at least `items` elements, indexed globally.
    unsafe { *y.add(i) = a * *x.add(i) + *y.add(i) };
}
