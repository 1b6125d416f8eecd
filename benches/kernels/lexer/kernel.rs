//! A tokenizer as a state machine: counts the tokens of source-like text by class.
//!
//! Classes (`counts[..]`): 0 identifiers, 1 numbers, 2 string literals, 3 line comments,
//! 4 operators and punctuation, 5 invalid bytes and unterminated strings. One `match` on
//! the state and one on the byte per input byte, the shape of lexers, protocol parsers
//! and decoders. A range kernel over line-aligned chunks; no token spans a line, so
//! chunks can be lexed independently.
#![no_std]

const IDENT: usize = 0;
const NUMBER: usize = 1;
const STRING: usize = 2;
const COMMENT: usize = 3;
const OPERATOR: usize = 4;
const INVALID: usize = 5;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Ident,
    Number,
    Str,
    StrEscape,
    Slash,
    Comment,
}

/// Range kernel: adds the token counts of chunks `start..end` into `counts`.
///
/// # Safety
/// `text` holds `text_len` bytes, `bounds` holds `bounds_len` offsets; `counts` is the
/// packet's zeroed sum buffer of six counters.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lexer(
    start: u64,
    end: u64,
    text: *const u8,
    text_len: u64,
    bounds: *const u64,
    bounds_len: u64,
    counts: *mut u64,
) {
    // SAFETY: whole `in` buffers of the stated lengths and a fixed-length sum buffer.
    let (text, bounds, counts) = unsafe {
        (
            core::slice::from_raw_parts(text, text_len as usize),
            core::slice::from_raw_parts(bounds, bounds_len as usize),
            core::slice::from_raw_parts_mut(counts, 6),
        )
    };
    for c in start as usize..end as usize {
        let chunk = &text[bounds[c] as usize..bounds[c + 1] as usize];
        let mut state = State::Start;
        let mut pos = 0;
        while pos < chunk.len() {
            let b = chunk[pos];
            // Where a token ends at `b`, `b` is looked at again in the start state.
            let mut advance = true;
            state = match state {
                State::Start => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => State::Start,
                    b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                        counts[IDENT] += 1;
                        State::Ident
                    }
                    b'0'..=b'9' => {
                        counts[NUMBER] += 1;
                        State::Number
                    }
                    b'"' => State::Str,
                    b'/' => State::Slash,
                    b'+' | b'-' | b'*' | b'=' | b'<' | b'>' | b'!' | b'&' | b'|' | b'^' | b'%'
                    | b'~' | b'?' | b':' | b';' | b',' | b'.' | b'(' | b')' | b'{' | b'}'
                    | b'[' | b']' | b'#' => {
                        counts[OPERATOR] += 1;
                        State::Start
                    }
                    _ => {
                        counts[INVALID] += 1;
                        State::Start
                    }
                },
                State::Ident => match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => State::Ident,
                    _ => {
                        advance = false;
                        State::Start
                    }
                },
                State::Number => match b {
                    b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'.' | b'_' => State::Number,
                    _ => {
                        advance = false;
                        State::Start
                    }
                },
                State::Str => match b {
                    b'\\' => State::StrEscape,
                    b'"' => {
                        counts[STRING] += 1;
                        State::Start
                    }
                    b'\n' => {
                        counts[INVALID] += 1;
                        State::Start
                    }
                    _ => State::Str,
                },
                State::StrEscape => match b {
                    b'\n' => {
                        counts[INVALID] += 1;
                        State::Start
                    }
                    _ => State::Str,
                },
                State::Slash => match b {
                    b'/' => {
                        counts[COMMENT] += 1;
                        State::Comment
                    }
                    _ => {
                        counts[OPERATOR] += 1;
                        advance = false;
                        State::Start
                    }
                },
                State::Comment => match b {
                    b'\n' => State::Start,
                    _ => State::Comment,
                },
            };
            if advance {
                pos += 1;
            }
        }
        match state {
            State::Slash => counts[OPERATOR] += 1,
            State::Str | State::StrEscape => counts[INVALID] += 1,
            _ => {}
        }
    }
}
