#![no_std]

//! A private array: filled from a whole `in` buffer, insertion-sorted, reduced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn private_array_rs(i: u64, data: *const u32, n: u32, out: *mut u32) {
    let mut a = [0u32; 16];
    for k in 0..16usize {
        let idx = ((i as usize) * 7 + k * 13) % n as usize;
        a[k] = unsafe { *data.add(idx) } ^ (k as u32);
    }
    for k in 1..16 {
        let mut j = k;
        while j > 0 && a[j - 1] > a[j] {
            a.swap(j - 1, j);
            j -= 1;
        }
    }
    let mut h = 0u32;
    for v in a.iter() {
        h = h.rotate_left(5) ^ v;
    }
    unsafe {
        *out.add(3 * i as usize) = a[0];
        *out.add(3 * i as usize + 1) = a[15];
        *out.add(3 * i as usize + 2) = h;
    }
}
