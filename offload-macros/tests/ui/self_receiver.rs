use offload_macros::kernel;

pub struct Scaler {
    factor: f32,
}

impl Scaler {
    #[kernel]
    pub fn scale(&self, i: usize, x: &[f32], #[split(1)] y: &mut [f32]) {
        y[0] = self.factor * x[i];
    }
}

fn main() {}
