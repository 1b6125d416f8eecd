//! Log crunching: counts HTTP status classes in a Common Log Format access log.
//!
//! A line such as
//! `127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326`
//! is classified by the token after the request's closing quote (the last `"` of the line):
//! it must be a space, exactly three ASCII digits, then a space or the end of the line.
//! A first digit of 1..=5 counts as class 1xx..5xx (`hist[0..5]`); anything else,
//! including lines without a quote, counts as "other/unparsable" (`hist[5]`). Empty lines
//! are skipped and a trailing `\r` is ignored.
//!
//! This is a *range* kernel: item `c` is chunk `c` of the log, bytes
//! `bounds[c]..bounds[c + 1]`, with chunks cut at line starts, so no line spans two chunks.
//! It uses slices and indexing on purpose: inconsistent bounds or lengths hit Rust's
//! bounds checks, which the runtime reports as a kernel panic instead of reading memory
//! that is not the log's.
#![no_std]

/// Number of histogram bins: classes 1xx..5xx and "other/unparsable".
const BINS: usize = 6;
/// Bin of lines that are not a parsable CLF line with a status of class 1..=5.
const OTHER: usize = BINS - 1;

/// Range kernel: adds the status-class counts of chunks `start..end` into `hist`.
///
/// # Safety
/// `log` must hold `log_len` bytes and `bounds` `bounds_len` offsets (whole buffers);
/// `hist` points at the packet's private, zeroed sum buffer of `BINS` counters.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn logcrunch(
    start: u64,
    end: u64,
    log: *const u8,
    log_len: u64,
    bounds: *const u64,
    bounds_len: u64,
    hist: *mut u64,
) {
    // SAFETY: whole `in` buffers of the stated lengths and a fixed-length sum buffer.
    let (log, bounds, hist) = unsafe {
        (
            core::slice::from_raw_parts(log, log_len as usize),
            core::slice::from_raw_parts(bounds, bounds_len as usize),
            core::slice::from_raw_parts_mut(hist, BINS),
        )
    };
    for c in start as usize..end as usize {
        let chunk = &log[bounds[c] as usize..bounds[c + 1] as usize];
        for line in chunk.split(|&b| b == b'\n') {
            let line = match line {
                [rest @ .., b'\r'] => rest,
                _ => line,
            };
            if !line.is_empty() {
                hist[classify(line)] += 1;
            }
        }
    }
}

/// Histogram bin of one non-empty line (without its line terminator).
fn classify(line: &[u8]) -> usize {
    let Some(quote) = line.iter().rposition(|&b| b == b'"') else {
        return OTHER;
    };
    match &line[quote + 1..] {
        [b' ', d0 @ b'1'..=b'5', d1, d2, tail @ ..]
            if d1.is_ascii_digit() && d2.is_ascii_digit() && matches!(tail, [] | [b' ', ..]) =>
        {
            (d0 - b'1') as usize
        }
        _ => OTHER,
    }
}
