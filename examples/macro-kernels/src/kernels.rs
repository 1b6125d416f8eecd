//! The example's kernels: ordinary Rust functions over slices, marked `#[offload::kernel]`.
//!
//! This file uses only `core`: besides being a module of this crate, `build.rs` compiles
//! it alone, as a `#![no_std]` crate, to the LLVM bitcode of the embedded package.

/// `y = a*x + y`, one item per element. Both slices are split per item: the function
/// sees element `i` of `x` and `y` as `x[0]` and `y[0]`.
#[offload::kernel]
pub fn saxpy(_i: usize, a: f32, #[split(1)] x: &[f32], #[split(1)] y: &mut [f32]) {
    y[0] += a * x[0];
}

/// `y = c[0] + c[1]*x + c[2]*x^2 + ...` by Horner's rule, one item per element: enough
/// arithmetic per byte that the cores, not memory, are the limit. `coeffs` is whole (every
/// item reads all of it).
#[offload::kernel]
pub fn poly(_i: usize, coeffs: &[f64], #[split(1)] x: &[f64], #[out(1)] y: &mut [f64]) {
    let mut acc = 0.0;
    for &c in coeffs.iter().rev() {
        acc = acc * x[0] + c;
    }
    y[0] = acc;
}

/// `wc` over bytes `start..end` of `text`: adds the newlines, words (a non-whitespace byte
/// at the start of the text or after whitespace) and bytes of that range to `counts`.
/// A range kernel: called once per packet, so the loop is sequential Rust.
#[offload::kernel(range)]
pub fn wc(start: usize, end: usize, text: &[u8], #[sum(3)] counts: &mut [u64]) {
    let (mut lines, mut words) = (0u64, 0u64);
    let mut previous_space = start == 0 || is_space(text[start - 1]);
    for &byte in &text[start..end] {
        let space = is_space(byte);
        lines += (byte == b'\n') as u64;
        words += (previous_space && !space) as u64;
        previous_space = space;
    }
    counts[0] += lines;
    counts[1] += words;
    counts[2] += (end - start) as u64;
}

/// ASCII whitespace, as `wc` counts it.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}
