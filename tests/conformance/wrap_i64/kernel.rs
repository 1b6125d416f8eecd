#![no_std]

//! Wrapping i64 arithmetic: add, sub, mul, neg, and u64 mixing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn wrap_i64(i: u64, a: *const i64, b: *const i64, out: *mut i64) {
    let i = i as usize;
    let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
    unsafe {
        *out.add(4 * i) = x.wrapping_add(y);
        *out.add(4 * i + 1) = x.wrapping_sub(y).wrapping_neg();
        *out.add(4 * i + 2) = x.wrapping_mul(y);
        *out.add(4 * i + 3) = (x as u64).wrapping_mul(0x9e3779b97f4a7c15).rotate_left(17) as i64;
    }
}
