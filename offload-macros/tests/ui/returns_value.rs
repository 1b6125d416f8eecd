use offload_macros::kernel;

#[kernel]
pub fn square(i: usize, x: &[f64]) -> f64 {
    x[i] * x[i]
}

fn main() {}
