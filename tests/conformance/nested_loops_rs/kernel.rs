#![no_std]

//! Nested loops with a labelled early exit and a data-dependent trip count.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nested_loops_rs(i: u64, limit: u32, out: *mut u32) {
    let mut acc = i as u32;
    let mut steps = 0u32;
    'outer: for a in 0..(i % 13) as u32 {
        for b in 0..(a + 3) {
            acc = acc.wrapping_mul(31).wrapping_add(a ^ b);
            steps += 1;
            if acc % 97 == 5 || steps > limit {
                break 'outer;
            }
            if acc & 1 == 0 {
                continue;
            }
            acc ^= acc >> 3;
        }
    }
    unsafe {
        *out.add(2 * i as usize) = acc;
        *out.add(2 * i as usize + 1) = steps;
    }
}
