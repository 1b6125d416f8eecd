//! Indexes an 8-element table with `i % 13`: items whose index is 8..12 fail Rust's
//! bounds check, which must surface as "index out of bounds" on every device.
#![no_std]

#[unsafe(no_mangle)]
pub unsafe extern "C" fn panics(i: u64, table: *const u32, out: *mut u32) {
    // SAFETY: the manifest's whole buffer holds 8 elements in the tests.
    let table = unsafe { core::slice::from_raw_parts(table, 8) };
    let v = table[(i % 13) as usize];
    unsafe { *out.add(i as usize) = v * 3 };
}
