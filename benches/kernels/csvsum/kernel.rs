//! CSV scanning: sums the quantity column of `id,name,quantity,price` lines.
//!
//! A range kernel over line-aligned chunks (chunk `c` is bytes `bounds[c]..bounds[c + 1]`).
//! Each line is found with a search for `\n`, its fields with searches for `,`. A line
//! whose third field is one to nine ASCII digits adds its value to `totals[0]` and counts
//! in `totals[1]`; any other non-empty line counts in `totals[2]`. Names are long and
//! vary (a search over tens of bytes), numbers are short.
#![no_std]

/// Range kernel: adds the totals of chunks `start..end`.
///
/// # Safety
/// `text` holds `text_len` bytes, `bounds` holds `bounds_len` offsets; `totals` is the
/// packet's zeroed sum buffer of three counters.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn csvsum(
    start: u64,
    end: u64,
    text: *const u8,
    text_len: u64,
    bounds: *const u64,
    bounds_len: u64,
    totals: *mut u64,
) {
    // SAFETY: whole `in` buffers of the stated lengths and a fixed-length sum buffer.
    let (text, bounds, totals) = unsafe {
        (
            core::slice::from_raw_parts(text, text_len as usize),
            core::slice::from_raw_parts(bounds, bounds_len as usize),
            core::slice::from_raw_parts_mut(totals, 3),
        )
    };
    for c in start as usize..end as usize {
        let mut rest = &text[bounds[c] as usize..bounds[c + 1] as usize];
        while !rest.is_empty() {
            let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let line = &rest[..line_end];
            rest = &rest[(line_end + 1).min(rest.len())..];
            if line.is_empty() {
                continue;
            }
            match quantity(line) {
                Some(q) => {
                    totals[0] += q;
                    totals[1] += 1;
                }
                None => totals[2] += 1,
            }
        }
    }
}

/// The third comma-separated field of `line` as a number of one to nine digits.
fn quantity(line: &[u8]) -> Option<u64> {
    let mut field = line;
    for _ in 0..2 {
        let comma = field.iter().position(|&b| b == b',')?;
        field = &field[comma + 1..];
    }
    let digits = field.iter().position(|&b| b == b',').unwrap_or(field.len());
    let number = &field[..digits];
    if number.is_empty() || number.len() > 9 {
        return None;
    }
    let mut value = 0u64;
    for &d in number {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(d - b'0');
    }
    Some(value)
}
