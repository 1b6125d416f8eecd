#![no_std]

//! Overflow-reporting arithmetic (llvm.*.with.overflow): checked and overflowing ops.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn overflow_rs(i: u64, a: *const u32, b: *const u32, out: *mut u32) {
    let i = i as usize;
    let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
    let (sx, sy) = (x as i32, y as i32);
    let r = [
        x.checked_add(y).unwrap_or(1),
        x.checked_sub(y).unwrap_or(2),
        x.checked_mul(y).unwrap_or(3),
        sx.checked_add(sy).map_or(4, |v| v as u32),
        sx.checked_sub(sy).map_or(5, |v| v as u32),
        sx.checked_mul(sy).map_or(6, |v| v as u32),
        (x as u8).checked_mul(y as u8).map_or(7, |v| v as u32),
        (sx as i16).checked_mul(sy as i16).map_or(8, |v| v as u16 as u32),
        ((x as u64).checked_mul((y as u64) << 20)).map_or(9, |v| (v >> 7) as u32),
    ];
    for (k, v) in r.iter().enumerate() {
        unsafe { *out.add(9 * i + k) = *v };
    }
}
