//! A gather through an index buffer: `y[i] = a * x[idx[i]] + y[i]`, the access pattern
//! of sparse matrix kernels, particle-in-cell codes and table lookups.
//!
//! Item kernel. `x` is the whole table (`x_len` floats); an index outside it is a
//! caller bug, checked with Rust's bounds check (a kernel panic).
#![no_std]

/// Item kernel: `y[i] += a * x[idx[i]]`.
///
/// # Safety
/// `x` holds `x_len` floats; `idx` and `y` one element per item (global indices).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gather(i: u64, a: f32, x: *const f32, x_len: u64, idx: *const u32, y: *mut f32) {
    let i = i as usize;
    // SAFETY: the whole table, and the item's own index and output.
    let (x, j, y) = unsafe {
        (
            core::slice::from_raw_parts(x, x_len as usize),
            *idx.add(i) as usize,
            &mut *y.add(i),
        )
    };
    *y += a * x[j];
}
