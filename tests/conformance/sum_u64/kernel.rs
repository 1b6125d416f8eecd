#![no_std]

//! A `sum` histogram: each item adds into one of 16 bins (wrapping u64) and a count.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sum_u64(i: u64, a: *const u64, hist: *mut u64) {
    let x = unsafe { *a.add(i as usize) };
    let bin = (x >> 60) as usize;
    unsafe {
        *hist.add(bin) = (*hist.add(bin)).wrapping_add(x);
        *hist.add(16) += 1;
    }
}
