#![no_std]

//! 32-bit shifts and rotates of every amount (wrapping_shl masks the amount).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shifts_u32(i: u64, a: *const u32, b: *const u32, out: *mut u32) {
    let i = i as usize;
    let (x, k) = unsafe { (*a.add(i), *b.add(i)) };
    unsafe {
        *out.add(5 * i) = x.wrapping_shl(k);
        *out.add(5 * i + 1) = x.wrapping_shr(k);
        *out.add(5 * i + 2) = (x as i32).wrapping_shr(k) as u32;
        *out.add(5 * i + 3) = x.rotate_left(k);
        *out.add(5 * i + 4) = x.rotate_right(k % 32);
    }
}
