//! A reduction with an early exit: the sum of each row's values up to (not including)
//! its first negative value, as in scans for a sentinel or a budget.
//!
//! Item kernel: row `i` is `values[64i..64i + 64]` (`i32`); `sums[i]` is the `i64` sum
//! of the row's leading non-negative values (all 64 if none is negative).
#![no_std]

const ROW: usize = 64;

/// Item kernel: `sums[i]` = the sum of row `i` up to its first negative value.
///
/// # Safety
/// `values` holds 64 values per item and `sums` one slot per item (global indices).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn prefixscan(i: u64, values: *const i32, sums: *mut i64) {
    let i = i as usize;
    // SAFETY: the item's own `[64]` row and output slot.
    let row = unsafe { core::slice::from_raw_parts(values.add(ROW * i), ROW) };
    let mut sum = 0i64;
    for &v in row {
        if v < 0 {
            break;
        }
        sum += i64::from(v);
    }
    // SAFETY: as above.
    unsafe { *sums.add(i) = sum };
}
