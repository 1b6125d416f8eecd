//! A line of text built without allocating, for messages written from signal handlers
//! (only async-signal-safe calls there: no allocator, no formatting machinery).

/// Up to `N` bytes of text; what does not fit is cut.
pub struct SignalSafeLine<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for SignalSafeLine<N> {
    fn default() -> Self {
        SignalSafeLine {
            bytes: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> SignalSafeLine<N> {
    /// Appends `text`, as much of it as fits.
    pub fn push(&mut self, text: &[u8]) {
        let n = text.len().min(N - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    /// Appends `value` in decimal.
    pub fn number(&mut self, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Writes the text to descriptor `fd` with one `write(2)` (async-signal-safe).
    pub fn write_to(&self, fd: i32) {
        // SAFETY: write of a buffer this value owns.
        unsafe { libc::write(fd, self.bytes.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_built_without_allocating_and_cut_at_their_size() {
        let mut line = SignalSafeLine::<64>::default();
        line.push(b"items ");
        line.number(0);
        line.push(b"..");
        line.number(u64::MAX);
        assert_eq!(line.as_bytes(), b"items 0..18446744073709551615");
        for _ in 0..10 {
            line.push(b"0123456789");
        }
        assert_eq!(line.as_bytes().len(), 64);
    }
}
