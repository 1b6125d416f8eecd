#![no_std]

//! Unsigned division and remainder of u32 and u64 (checked: zero divisors give MAX).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn divrem_unsigned(i: u64, a: *const u64, b: *const u64, out: *mut u64) {
    let i = i as usize;
    let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
    let (x32, y32) = (x as u32, (y >> 7) as u32);
    unsafe {
        *out.add(4 * i) = x.checked_div(y).unwrap_or(u64::MAX);
        *out.add(4 * i + 1) = x.checked_rem(y).unwrap_or(u64::MAX);
        *out.add(4 * i + 2) = x32.checked_div(y32).unwrap_or(u32::MAX) as u64;
        *out.add(4 * i + 3) = x32.checked_rem(y32).unwrap_or(u32::MAX) as u64;
    }
}
