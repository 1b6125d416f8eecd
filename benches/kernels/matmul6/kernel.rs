//! Small matrices: the product of two 6x6 `f32` matrices per item (batched small GEMM,
//! as in mechanics, robotics and small-block solvers).
//!
//! Item kernel: matrices are row-major, 36 floats each; item `i` computes
//! `c[i] = a[i] * b[i]` with the textbook `i, j, k` loop nest (`k` innermost, summed in
//! order, so every build must give the same bits).
#![no_std]

const N: usize = 6;

/// Item kernel: `c[36i..36i+36] = a[36i..] * b[36i..]`.
///
/// # Safety
/// `a`, `b` and `c` hold 36 floats per item of the packet (global indices).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn matmul6(item: u64, a: *const f32, b: *const f32, c: *mut f32) {
    let base = N * N * item as usize;
    // SAFETY: the item's own `[36]` slices of each buffer.
    let (a, b, c) = unsafe {
        (
            core::slice::from_raw_parts(a.add(base), N * N),
            core::slice::from_raw_parts(b.add(base), N * N),
            core::slice::from_raw_parts_mut(c.add(base), N * N),
        )
    };
    for row in 0..N {
        for col in 0..N {
            let mut sum = 0.0f32;
            for k in 0..N {
                sum += a[row * N + k] * b[k * N + col];
            }
            c[row * N + col] = sum;
        }
    }
}
