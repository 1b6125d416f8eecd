use offload_macros::kernel;

#[kernel]
pub fn saxpy(i: usize, a: f32, x: &[f32], y: &mut [f32]) {
    y[i] += a * x[i];
}

fn main() {}
