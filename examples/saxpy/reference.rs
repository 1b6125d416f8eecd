//! Native reference and input generator for the `saxpy` example.

/// `y[i] = a * x[i] + y[i]` for every element, the same arithmetic as the kernel.
pub fn saxpy(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "x and y must have the same length");
    for (yi, &xi) in y.iter_mut().zip(x) {
        // `y + a*x` and `a*x + y` round identically: IEEE addition is commutative.
        *yi += a * xi;
    }
}

/// Deterministic inputs `(x, y)` of `n` elements each, uniform in `[-1, 1)`.
pub fn inputs(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut state = seed;
    let mut next = move || {
        // splitmix64: tiny, deterministic and good enough for test data.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // 24 random bits give every representable value of that grid exactly in f32.
    let mut unit = move || (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    let x = (0..n).map(|_| unit()).collect();
    let y = (0..n).map(|_| unit()).collect();
    (x, y)
}
