#![no_std]

//! Bit counting and byte swapping on u16/u32/u64 (ctpop, ctlz, cttz, bswap).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bit_ops_rs(i: u64, a: *const u64, out: *mut u64) {
    let i = i as usize;
    let x = unsafe { *a.add(i) };
    let r = [
        x.count_ones() as u64,
        x.leading_zeros() as u64,
        x.trailing_zeros() as u64,
        x.swap_bytes(),
        (x as u32).swap_bytes() as u64,
        (x as u16).swap_bytes() as u64,
        (x as u32).trailing_zeros() as u64,
        (x as u16).leading_zeros() as u64,
        (x as u8).count_ones() as u64,
    ];
    for (k, v) in r.iter().enumerate() {
        unsafe { *out.add(9 * i + k) = *v };
    }
}
