#![no_std]

//! f32/f64 min and max (llvm.minnum/maxnum: a NaN operand yields the other), integer
//! min/max (llvm.smin/umax) and clamp.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn minmax_rs(i: u64, a: *const f32, b: *const f32, d: *const f64, f: *mut f32, g: *mut f64, n: *mut i32) {
    let i = i as usize;
    let (x, y, z) = unsafe { (*a.add(i), *b.add(i), *d.add(i)) };
    unsafe {
        *f.add(2 * i) = x.min(y);
        *f.add(2 * i + 1) = x.max(y);
        *g.add(2 * i) = z.min(x as f64);
        *g.add(2 * i + 1) = z.max(y as f64);
        let (p, q) = (x.to_bits() as i32, y.to_bits() as i32);
        *n.add(3 * i) = p.min(q);
        *n.add(3 * i + 1) = (p as u32).max(q as u32) as i32;
        *n.add(3 * i + 2) = p.clamp(-1000, 1000);
    }
}
