//! Kernel buffers: byte storage aligned for every element type of the kernel model.

use ir_packager::ScalarType;

/// A byte buffer whose storage is 8-byte aligned, so it can be handed to a kernel as
/// `f64`, `u64` or any smaller element type. Contents are raw little-endian arrays, as
/// on the command line.
#[derive(Clone, PartialEq, Eq)]
pub struct Buffer {
    words: Vec<u64>,
    len: usize,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} bytes)", self.len)
    }
}

impl Buffer {
    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> Buffer {
        Buffer {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    /// A buffer of `len` zero bytes, or `None` when the memory cannot be had (instead of
    /// aborting, as a failed allocation otherwise does). Like `calloc`, untouched pages
    /// cost nothing until the kernel writes them.
    pub fn try_zeroed(len: usize) -> Option<Buffer> {
        let words = len.div_ceil(8);
        if words == 0 {
            return Some(Buffer::zeroed(0));
        }
        let layout = std::alloc::Layout::array::<u64>(words).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<u64>();
        if ptr.is_null() {
            return None;
        }
        // SAFETY: `ptr` was allocated by the global allocator with the layout of `words`
        // u64s (what a `Vec<u64>` of that capacity uses), and every word is initialized
        // (zeroed).
        let words = unsafe { Vec::from_raw_parts(ptr, words, words) };
        Some(Buffer { words, len })
    }

    /// A buffer holding a copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Buffer {
        let mut buffer = Buffer::zeroed(bytes.len());
        buffer.as_bytes_mut().copy_from_slice(bytes);
        buffer
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contents.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `words` owns at least `len` initialized bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    /// The contents, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// The address handed to kernels.
    pub fn address(&mut self) -> u64 {
        self.words.as_mut_ptr() as u64
    }

    /// Adds `other` element-wise into `self`, reading both as arrays of `elem`: how `sum`
    /// buffers combine. Integers wrap, as they do in the kernels.
    pub fn add_assign(&mut self, other: &Buffer, elem: ScalarType) {
        elem.add_into(self.as_bytes_mut(), other.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallible_zeroed_buffers_are_zero_and_refuse_impossible_sizes() {
        let b = Buffer::try_zeroed(13).expect("13 bytes");
        assert_eq!(b.as_bytes(), &[0u8; 13]);
        assert_eq!(Buffer::try_zeroed(0).expect("empty").len(), 0);
        assert!(Buffer::try_zeroed(usize::MAX).is_none());
        assert!(Buffer::try_zeroed(usize::MAX / 2).is_none());
    }

    #[test]
    fn sum_buffers_add_by_element_type() {
        let mut a = Buffer::from_bytes(&[1u64.to_le_bytes(), u64::MAX.to_le_bytes()].concat());
        let b = Buffer::from_bytes(&[2u64.to_le_bytes(), 2u64.to_le_bytes()].concat());
        a.add_assign(&b, ScalarType::U64);
        assert_eq!(
            a.as_bytes(),
            [3u64.to_le_bytes(), 1u64.to_le_bytes()].concat()
        );
        let mut f = Buffer::from_bytes(&1.5f32.to_le_bytes());
        f.add_assign(&Buffer::from_bytes(&2.25f32.to_le_bytes()), ScalarType::F32);
        assert_eq!(f.as_bytes(), 3.75f32.to_le_bytes());
    }

    #[test]
    fn storage_is_aligned_for_f64() {
        let mut b = Buffer::zeroed(13);
        assert_eq!(b.address() % 8, 0);
        assert_eq!(b.len(), 13);
    }
}
