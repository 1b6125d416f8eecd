use offload_macros::kernel;

#[kernel]
pub fn scale<T: Copy>(i: usize, x: &[T], #[split(1)] y: &mut [T]) {
    y[0] = x[i];
}

fn main() {}
