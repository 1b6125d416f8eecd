//! Plain-Rust references and deterministic inputs for the kernels in `benches/kernels/`.
//!
//! Each reference is written independently of its kernel (iterators where the kernel
//! uses loops and indices, and the other way round), so a bug in one is not copied into
//! the other. Used by `benches/jit_vs_native.rs` (inputs) and `tests/all/bench_kernels.rs`
//! (inputs and references). Random inputs come from the scheduler simulator's SplitMix64.

use scheduler::sim::Rng;

/// A value in `0..n`.
fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

/// A float in `[-1, 1)` on a grid that `f32` represents exactly.
fn unit(rng: &mut Rng) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

// ---- csvsum -------------------------------------------------------------------------

/// `lines` CSV lines `id,name,quantity,price\n`: names of 8 to 72 bytes (some with
/// spaces), quantities of 1 to 6 digits, and about 4% malformed lines (a missing field,
/// a letter in the quantity, an empty or ten-digit quantity), plus some empty lines.
pub fn generate_csv(lines: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "widget", "gadget", "sprocket", "flange", "bolt", "washer", "gear", "spring",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(lines * 64);
    for id in 0..lines {
        if below(&mut rng, 50) == 0 {
            out.push(b'\n');
            continue;
        }
        let mut name = String::new();
        let target = 8 + below(&mut rng, 65) as usize;
        while name.len() < target {
            if !name.is_empty() {
                name.push(if below(&mut rng, 3) == 0 { ' ' } else { '-' });
            }
            name.push_str(WORDS[below(&mut rng, WORDS.len() as u64) as usize]);
        }
        let digits = 1 + below(&mut rng, 6) as u32;
        let quantity = below(&mut rng, 10u64.pow(digits));
        let price = below(&mut rng, 100_000);
        let line = match below(&mut rng, 100) {
            0 => format!("{id},{name}\n"),
            1 => format!(
                "{id},{name},{quantity}x,{}.{:02}\n",
                price / 100,
                price % 100
            ),
            2 => format!("{id},{name},,{}.{:02}\n", price / 100, price % 100),
            3 => format!(
                "{id},{name},1234567890,{}.{:02}\n",
                price / 100,
                price % 100
            ),
            _ => format!(
                "{id},{name},{quantity},{}.{:02}\n",
                price / 100,
                price % 100
            ),
        };
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// `[sum of quantities, parsed lines, malformed lines]` of a CSV text, the kernel's rules:
/// the third field must be one to nine ASCII digits; empty lines count nowhere.
pub fn csv_totals(text: &[u8]) -> [u64; 3] {
    let mut totals = [0u64; 3];
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let quantity = line
            .split(|&b| b == b',')
            .nth(2)
            .filter(|f| (1..=9).contains(&f.len()) && f.iter().all(u8::is_ascii_digit))
            .map(|f| f.iter().fold(0u64, |v, &d| v * 10 + u64::from(d - b'0')));
        match quantity {
            Some(q) => {
                totals[0] += q;
                totals[1] += 1;
            }
            None => totals[2] += 1,
        }
    }
    totals
}

// ---- hash ---------------------------------------------------------------------------

/// Words per record of the `hash` kernel.
pub const HASH_WORDS: usize = 8;

/// `records` records of [`HASH_WORDS`] random words.
pub fn hash_records(records: usize, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    (0..records * HASH_WORDS).map(|_| rng.next_u64()).collect()
}

/// The hash of every record, as the kernel defines it.
pub fn hash_all(seed: u64, words: &[u64]) -> Vec<u64> {
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    words
        .chunks_exact(HASH_WORDS)
        .map(|record| {
            let h = record.iter().fold(seed ^ K2, |h, &w| {
                let k = w.wrapping_mul(K1).rotate_left(31).wrapping_mul(K2);
                (h ^ k)
                    .rotate_left(27)
                    .wrapping_mul(5)
                    .wrapping_add(0x52DC_E729)
            });
            let h = (h ^ (h >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
            h ^ (h >> 33)
        })
        .collect()
}

// ---- matmul6 ------------------------------------------------------------------------

/// Rows (and columns) of the `matmul6` matrices.
pub const MATRIX: usize = 6;

/// `n` pairs of random 6x6 matrices, row-major.
pub fn matrices(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let a = (0..n * MATRIX * MATRIX).map(|_| unit(&mut rng)).collect();
    let b = (0..n * MATRIX * MATRIX).map(|_| unit(&mut rng)).collect();
    (a, b)
}

/// The products, each entry summed over `k` in order (as the kernel does).
pub fn matmul_all(a: &[f32], b: &[f32]) -> Vec<f32> {
    let size = MATRIX * MATRIX;
    let mut c = vec![0.0f32; a.len()];
    for ((a, b), c) in a
        .chunks_exact(size)
        .zip(b.chunks_exact(size))
        .zip(c.chunks_exact_mut(size))
    {
        for (index, out) in c.iter_mut().enumerate() {
            let (row, col) = (index / MATRIX, index % MATRIX);
            *out = (0..MATRIX).fold(0.0f32, |sum, k| {
                sum + a[row * MATRIX + k] * b[k * MATRIX + col]
            });
        }
    }
    c
}

// ---- gather -------------------------------------------------------------------------

/// A table of `table` floats, `n` random indices into it and `n` values of `y`.
pub fn gather_inputs(n: usize, table: usize, seed: u64) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let x = (0..table).map(|_| unit(&mut rng)).collect();
    let idx = (0..n)
        .map(|_| below(&mut rng, table as u64) as u32)
        .collect();
    let y = (0..n).map(|_| unit(&mut rng)).collect();
    (x, idx, y)
}

/// `y[i] += a * x[idx[i]]`.
pub fn gather(a: f32, x: &[f32], idx: &[u32], y: &mut [f32]) {
    for (y, &j) in y.iter_mut().zip(idx) {
        *y += a * x[j as usize];
    }
}

// ---- prefixscan ---------------------------------------------------------------------

/// Values per row of the `prefixscan` kernel.
pub const ROW: usize = 64;

/// `rows` rows of [`ROW`] values in `0..1000`; most rows have one negative value at a
/// random position (often late), one in eight has none.
pub fn scan_rows(rows: usize, seed: u64) -> Vec<i32> {
    let mut rng = Rng::new(seed);
    let mut values = Vec::with_capacity(rows * ROW);
    for _ in 0..rows {
        let stop = if below(&mut rng, 8) == 0 {
            ROW
        } else {
            ROW / 2 + below(&mut rng, (ROW / 2) as u64) as usize
        };
        for j in 0..ROW {
            let v = below(&mut rng, 1000) as i32;
            values.push(if j == stop { -1 - v } else { v });
        }
    }
    values
}

/// Each row's sum up to its first negative value.
pub fn prefix_sums(values: &[i32]) -> Vec<i64> {
    values
        .chunks_exact(ROW)
        .map(|row| {
            row.iter()
                .take_while(|&&v| v >= 0)
                .map(|&v| i64::from(v))
                .sum()
        })
        .collect()
}

// ---- lexer --------------------------------------------------------------------------

/// `lines` lines of C-like source: identifiers, numbers, strings with escapes, line
/// comments, operators, indentation, and now and then an unterminated string or a byte
/// outside ASCII. No token spans a line.
pub fn generate_source(lines: usize, seed: u64) -> Vec<u8> {
    const IDENTS: [&str; 8] = [
        "count",
        "x",
        "buffer_len",
        "i",
        "next",
        "Value",
        "_tmp",
        "ok2",
    ];
    const OPS: [&str; 10] = ["=", "+", "==", "->", "(", ")", ";", "{", "}", "/"];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(lines * 48);
    for _ in 0..lines {
        for _ in 0..below(&mut rng, 4) {
            out.extend_from_slice(b"    ");
        }
        for _ in 0..1 + below(&mut rng, 8) {
            match below(&mut rng, 12) {
                0..=3 => out.extend_from_slice(IDENTS[below(&mut rng, 8) as usize].as_bytes()),
                4 | 5 => out.extend_from_slice(below(&mut rng, 100_000).to_string().as_bytes()),
                6 => out.extend_from_slice(b"\"text \\\" more\""),
                7 => out.extend_from_slice(b"0x1f.5e"),
                8..=10 => out.extend_from_slice(OPS[below(&mut rng, 10) as usize].as_bytes()),
                _ => out.extend_from_slice(match below(&mut rng, 3) {
                    0 => "\u{e9}".as_bytes(),
                    1 => b"@",
                    _ => b"\"unterminated",
                }),
            }
            out.push(if below(&mut rng, 4) == 0 { b'\t' } else { b' ' });
        }
        if below(&mut rng, 5) == 0 {
            out.extend_from_slice(b"// a comment with \"quotes\" and / slashes");
        }
        out.push(b'\n');
    }
    out
}

/// Token counts `[identifiers, numbers, strings, comments, operators, invalid]` of a
/// text, the kernel's rules, lexed line by line.
pub fn token_counts(text: &[u8]) -> [u64; 6] {
    const OPERATORS: &[u8] = b"+-*=<>!&|^%~?:;,.(){}[]#";
    let mut counts = [0u64; 6];
    for line in text.split(|&b| b == b'\n') {
        let mut rest = line;
        while let Some((&b, tail)) = rest.split_first() {
            rest = tail;
            if b.is_ascii_alphabetic() || b == b'_' {
                counts[0] += 1;
                let len = rest
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                rest = &rest[len..];
            } else if b.is_ascii_digit() {
                counts[1] += 1;
                let len = rest
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'.' || **c == b'_')
                    .count();
                rest = &rest[len..];
            } else if b == b'"' {
                // The closing quote is the first `"` not preceded by an unconsumed `\`.
                let mut escaped = false;
                let close = rest.iter().position(|&c| {
                    let closes = c == b'"' && !escaped;
                    escaped = c == b'\\' && !escaped;
                    closes
                });
                match close {
                    Some(end) => {
                        counts[2] += 1;
                        rest = &rest[end + 1..];
                    }
                    None => {
                        counts[5] += 1;
                        rest = &[];
                    }
                }
            } else if b == b'/' && rest.first() == Some(&b'/') {
                counts[3] += 1;
                rest = &[];
            } else if b == b'/' || OPERATORS.contains(&b) {
                counts[4] += 1;
            } else if !b" \t\r".contains(&b) {
                counts[5] += 1;
            }
        }
    }
    counts
}
