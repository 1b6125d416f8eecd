#![no_std]

//! Rust's saturating `as` casts from f32 and f64 at the edges: NaN -> 0, out of range ->
//! the nearest bound (llvm.fptosi.sat / llvm.fptoui.sat).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn float_to_int_sat(i: u64, f: *const f32, d: *const f64, out: *mut u64) {
    let i = i as usize;
    let (x, y) = unsafe { (*f.add(i), *d.add(i)) };
    let r = [
        x as i32 as u32 as u64,
        x as u32 as u64,
        x as i64 as u64,
        x as u64,
        x as u8 as u64,
        y as i32 as u32 as u64,
        y as u32 as u64,
        y as i64 as u64,
        y as u64,
        y as u8 as u64,
    ];
    for (k, v) in r.iter().enumerate() {
        unsafe { *out.add(10 * i + k) = *v };
    }
}
