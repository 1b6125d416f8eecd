//! Native reference, log generator and chunker for the `logcrunch` example.

/// Number of histogram bins: status classes 1xx..5xx, then "other/unparsable".
pub const BINS: usize = 6;

/// Status-class histogram of a whole log, the kernel's rules written independently:
/// split into lines at `\n`, drop a trailing `\r`, skip empty lines; the text after the
/// line's last `"` must read `" DDD"` optionally followed by `" ..."`, where `DDD` are three
/// ASCII digits starting with 1..=5; every other line counts as "other/unparsable".
pub fn count(log: &[u8]) -> [u64; BINS] {
    let mut hist = [0u64; BINS];
    for line in log.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        hist[status_class(line).unwrap_or(BINS - 1)] += 1;
    }
    hist
}

/// Bin 0..=4 for a parsable status of class 1xx..5xx, `None` otherwise.
fn status_class(line: &[u8]) -> Option<usize> {
    if !line.contains(&b'"') {
        return None;
    }
    let after_request = line.rsplit(|&b| b == b'"').next()?;
    let mut fields = after_request.split(|&b| b == b' ');
    // The status must follow the quote after exactly one space: the first field is empty.
    if !fields.next()?.is_empty() {
        return None;
    }
    let status = fields.next()?;
    if status.len() != 3 || !status.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match status[0] {
        b'1'..=b'5' => Some(usize::from(status[0] - b'1')),
        _ => None,
    }
}

/// Cuts `log` into `chunks` pieces at line starts: returns `chunks + 1` offsets, chunk `c`
/// being `bounds[c]..bounds[c + 1]`. Cut points are the first line start at or after
/// `c * len / chunks`, so chunks are roughly equal and may be empty when lines are long.
pub fn chunk_bounds(log: &[u8], chunks: usize) -> Vec<u64> {
    assert!(chunks > 0, "a log is cut into at least one chunk");
    let len = log.len();
    let mut bounds = Vec::with_capacity(chunks + 1);
    bounds.push(0u64);
    for c in 1..chunks {
        let target = (len as u128 * c as u128 / chunks as u128) as usize;
        let from = target.max(*bounds.last().expect("starts with 0") as usize);
        let cut = if from == 0 || log[from - 1] == b'\n' {
            from
        } else {
            log[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(len, |nl| from + nl + 1)
        };
        bounds.push(cut as u64);
    }
    bounds.push(len as u64);
    bounds
}

/// A deterministic Common Log Format access log of `lines` lines (each ending in `\n`),
/// mostly well-formed with a realistic mix of statuses, plus about 3% malformed lines
/// (truncated, no quotes, non-numeric or out-of-range or wrongly sized status, stray
/// bytes that are not UTF-8), some blank lines (which count nowhere) and some `\r\n` ends.
pub fn generate_log(lines: usize, seed: u64) -> Vec<u8> {
    const METHODS: [&str; 4] = ["GET", "POST", "HEAD", "PUT"];
    const PATHS: [&str; 6] = [
        "/",
        "/index.html",
        "/a.gif",
        "/api/v1/items?id=42",
        "/static/app.js",
        "/login",
    ];
    // Weighted like a typical site: mostly 200, then redirects, client and server errors.
    const STATUSES: [u16; 20] = [
        200, 200, 200, 200, 200, 200, 200, 200, 204, 206, 301, 302, 304, 304, 404, 404, 403, 400,
        500, 503,
    ];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut state = seed;
    let mut next = move || {
        // splitmix64: tiny, deterministic and good enough for test data.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = Vec::with_capacity(lines * 90);
    for _ in 0..lines {
        let r = next();
        let pick = |n: usize, shift: u32| (r >> shift) as usize % n;
        let status = if pick(100, 0) == 0 {
            101
        } else {
            STATUSES[pick(STATUSES.len(), 8)]
        };
        let line = format!(
            "10.{}.{}.{} - - [{:02}/{}/2024:{:02}:{:02}:{:02} +0000] \"{} {} HTTP/1.1\" {} {}",
            pick(256, 16),
            pick(256, 24),
            pick(256, 32),
            1 + pick(28, 40),
            MONTHS[pick(12, 45)],
            pick(24, 50),
            pick(60, 52),
            pick(60, 56),
            METHODS[pick(METHODS.len(), 60)],
            PATHS[next() as usize % PATHS.len()],
            status,
            next() % 100_000,
        );
        let kind = next() % 200;
        match kind {
            0 => out.extend_from_slice(&line.as_bytes()[..line.len() / 2]), // truncated
            1 => out.extend_from_slice(line.replace('"', "").as_bytes()),   // no quotes
            2 => {
                out.extend_from_slice(line.replace(&format!("\" {status} "), "\" abc ").as_bytes())
            }
            3 => {
                out.extend_from_slice(line.replace(&format!("\" {status} "), "\" 600 ").as_bytes())
            }
            4 => out.extend_from_slice(line.replace(&format!("\" {status} "), "\" 20 ").as_bytes()),
            5 => out.extend_from_slice(
                line.replace(&format!("\" {status} "), "\" 2000 ")
                    .as_bytes(),
            ),
            6 => out.extend_from_slice(
                line.replace(&format!("\" {status} "), "\"  200 ")
                    .as_bytes(),
            ),
            7 => out.extend_from_slice(&[0xff, 0xfe, b'"', 0x80, b' ', b'4']), // binary junk
            8 => {}                                                            // blank line
            9 => {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\r'); // CRLF line end: still a valid line
            }
            _ => out.extend_from_slice(line.as_bytes()),
        }
        out.push(b'\n');
    }
    out
}
