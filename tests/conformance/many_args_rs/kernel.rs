#![no_std]

//! Eleven arguments, buffers of every element type including u8 and an inout.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn many_args_rs(
    i: u64, k: u32, bias: i64, scale: f32, a: *const u8, b: *const i32, c: *const u32,
    d: *const i64, e: *const f32, f: *const f64, acc: *mut u64, io: *mut f32,
) {
    let i = i as usize;
    unsafe {
        let v = (*a.add(2 * i) as u64) << 8 | *a.add(2 * i + 1) as u64;
        let w = (*b.add(i) as i64).wrapping_mul(*d.add(i)).wrapping_add(bias);
        *acc.add(i) = v ^ (w as u64) ^ ((*c.add(i) as u64) << k % 32);
        *io.add(i) = *io.add(i) * scale + *e.add(i) - *f.add(i) as f32;
    }
}
