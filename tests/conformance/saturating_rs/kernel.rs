//! Saturating arithmetic (llvm.uadd.sat, usub.sat, sadd.sat, ssub.sat) on 8-, 32- and
//! 64-bit lanes.
#![no_std]

#[unsafe(no_mangle)]
pub unsafe extern "C" fn saturating_rs(i: u64, a: *const u64, b: *const u64, out: *mut u64) {
    let i = i as usize;
    let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
    let r = [
        x.saturating_add(y),
        x.saturating_sub(y),
        (x as i64).saturating_add(y as i64) as u64,
        (x as i64).saturating_sub(y as i64) as u64,
        (x as u32).saturating_add(y as u32) as u64,
        (x as i32).saturating_sub(y as i32) as u64,
        (x as u8).saturating_add(y as u8) as u64,
        (x as i8).saturating_sub(y as i8) as u64,
    ];
    for (k, v) in r.iter().enumerate() {
        unsafe { *out.add(8 * i + k) = *v };
    }
}
