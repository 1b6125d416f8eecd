use offload_macros::kernel;

#[kernel(tile)]
pub fn a(i: usize, #[split(1)] y: &mut [f32]) {
    y[0] = i as f32;
}

#[kernel]
pub fn b(i: usize, #[sum(4)] s: f32, #[split(0)] y: &mut [f32], #[out(1)] x: &[f32], #[chunk(2)] z: &[f32]) {
    y[0] = s + x[i] + z[i];
}

#[kernel]
pub fn c(i: usize, items: u64, x: &[f32], x_len: u64, #[split(1)] y: &mut [f32]) {
    y[0] = x[i] + (items + x_len) as f32;
}

fn main() {}
