//! Dot product of two f64 vectors: each item adds `x[i] * y[i]` into a one-element `sum`
//! buffer. The runtime zeroes that buffer per packet and adds the packets' results.
#![no_std]

/// Item kernel: `acc[0] += x[i] * y[i]`.
///
/// # Safety
/// `x` and `y` must be valid for element `i` (split `[1]`); `acc` points at the packet's
/// private, zeroed one-element sum buffer (not offset by the item index).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dot(i: u64, x: *const f64, y: *const f64, acc: *mut f64) {
    let i = i as usize;
    // SAFETY: split [1] inputs indexed globally; `acc` has its fixed length of 1.
    unsafe { *acc += *x.add(i) * *y.add(i) };
}
