#![no_std]

//! Signed 64-bit division: wrapping (MIN / -1 = MIN), Euclidean, and checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn divrem_i64(i: u64, a: *const i64, b: *const i64, out: *mut i64) {
    let i = i as usize;
    let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
    let r = if y == 0 {
        [1, 2, 3, 4]
    } else {
        [x.wrapping_div(y), x.wrapping_rem(y), x.wrapping_div_euclid(y), x.wrapping_rem_euclid(y)]
    };
    for (k, v) in r.iter().enumerate() {
        unsafe { *out.add(4 * i + k) = *v };
    }
}
