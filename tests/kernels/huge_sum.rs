//! A test kernel whose manifest asks for a sum buffer of 2^40 elements.
#![no_std]

/// Counts items into four bins of `h`.
///
/// # Safety
/// `h` must hold at least 4 elements.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn count(i: u64, h: *mut u64) {
    // SAFETY: h has 2^40 elements by its manifest.
    unsafe { *h.add((i % 4) as usize) += 1 };
}
