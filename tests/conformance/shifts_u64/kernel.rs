#![no_std]

//! 64-bit shifts and rotates of every amount, and funnel shifts across two words.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shifts_u64(i: u64, a: *const u64, b: *const u32, out: *mut u64) {
    let i = i as usize;
    let (x, k) = unsafe { (*a.add(i), *b.add(i)) };
    let hi = x.rotate_left(32) ^ 0x0123_4567_89ab_cdef;
    unsafe {
        *out.add(5 * i) = x.wrapping_shl(k);
        *out.add(5 * i + 1) = x.wrapping_shr(k);
        *out.add(5 * i + 2) = (x as i64).wrapping_shr(k) as u64;
        *out.add(5 * i + 3) = x.rotate_right(k);
        let s = k % 64;
        *out.add(5 * i + 4) = if s == 0 { x } else { (x << s) | (hi >> (64 - s)) };
    }
}
