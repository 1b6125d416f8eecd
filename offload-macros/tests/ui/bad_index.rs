use offload_macros::kernel;

#[kernel]
pub fn scale(a: f32, #[split(1)] y: &mut [f32]) {
    y[0] *= a;
}

#[kernel(range)]
pub fn count(start: usize, #[sum(1)] n: &mut [u64]) {
    n[0] += start as u64;
}

fn main() {}
