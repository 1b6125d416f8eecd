use offload_macros::kernel;

#[kernel]
const SCALE: fn(usize, &[f32], &mut [f32]) = |i, x, y| y[0] = 2.0 * x[i];

fn main() {}
