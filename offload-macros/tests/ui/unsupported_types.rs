use offload_macros::kernel;

#[kernel]
pub fn lookup(i: usize, names: Vec<String>, key: &str, flag: bool, #[split(1)] out: &mut [f32]) {
    out[0] = (names.len() + key.len() + i + flag as usize) as f32;
}

fn main() {}
