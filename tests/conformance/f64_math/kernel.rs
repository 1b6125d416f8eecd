#![no_std]

//! f64 arithmetic and the math intrinsics core provides in no_std: sqrt (llvm.sqrt),
//! floor, ceil, trunc, round, abs, mul_add (llvm.fma), copysign.
unsafe extern "C" {
    safe fn sqrt(x: f64) -> f64;
    safe fn floor(x: f64) -> f64;
    safe fn ceil(x: f64) -> f64;
    safe fn trunc(x: f64) -> f64;
    safe fn round(x: f64) -> f64;
    safe fn fma(x: f64, y: f64, z: f64) -> f64;
}
#[unsafe(no_mangle)]
pub unsafe extern "C" fn f64_math(i: u64, a: *const f64, b: *const f64, out: *mut f64) {
    let i = i as usize;
    let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
    let r = [
        x + y,
        x * y - y / 3.0,
        sqrt(x.abs()),
        floor(x),
        ceil(y),
        trunc(x * 7.5),
        round(y * 0.75),
        fma(x, y, -1.0),
        f64::from_bits(x.to_bits() & !(1 << 63)) + y.abs(),
        if x < y { x } else { -y },
    ];
    for (k, v) in r.iter().enumerate() {
        unsafe { *out.add(10 * i + k) = *v };
    }
}
