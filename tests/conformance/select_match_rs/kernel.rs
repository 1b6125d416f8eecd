#![no_std]

//! A `match` over ranges and values: selects, switches and maybe a lookup table.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn select_match_rs(i: u64, a: *const u32, out: *mut u32) {
    let x = unsafe { *a.add(i as usize) };
    let r = match x % 11 {
        0 => 17,
        1 | 2 => x >> 3,
        3 => x.wrapping_mul(5),
        4..=6 => !x,
        7 => 1234567,
        8 => x.count_ones(),
        9 => x.leading_zeros() + 100,
        _ => x.trailing_zeros() + 200,
    };
    unsafe { *out.add(i as usize) = r };
}
