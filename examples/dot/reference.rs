//! Native reference and input generator for the `dot` example.

/// Sequential dot product `sum(x[i] * y[i])`.
pub fn dot(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "x and y must have the same length");
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Sum of `|x[i] * y[i]|`: the scale of the rounding error of any summation order, used to
/// bound the difference between a packet-wise and a sequential sum.
pub fn abs_dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a * b).abs()).sum()
}

/// Deterministic inputs `(x, y)` of `n` elements each, uniform in `[-1, 1)`.
pub fn inputs(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut state = seed;
    let mut next = move || {
        // splitmix64: tiny, deterministic and good enough for test data.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // 53 random bits: exact in f64.
    let mut unit = move || (next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
    let x = (0..n).map(|_| unit()).collect();
    let y = (0..n).map(|_| unit()).collect();
    (x, y)
}
