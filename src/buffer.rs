//! Kernel buffers: byte storage aligned for every element type of the kernel model.

use ir_packager::ScalarType;

use crate::shared::SharedMemory;

/// A byte buffer whose storage is aligned to a cache line (64 bytes), so it can be
/// handed to a kernel as any element type, and vector loads of rows whose length is a
/// multiple of 64 bytes never straddle two lines (an unaligned AVX-512 load of a
/// memory-bound loop costs up to twice an aligned one). Contents are raw little-endian
/// arrays, as on the command line.
///
/// A job's buffers may live in shared memory ([`Buffer::try_shared`]): an anonymous file
/// mapped here and in the engine's worker processes, so a kernel running in a worker
/// writes them in place.
pub struct Buffer {
    memory: Memory,
    len: usize,
}

/// Where a buffer's bytes are.
enum Memory {
    /// This process's heap.
    Heap(Vec<Line>),
    /// An anonymous file, shared with worker processes.
    Shared(SharedMemory),
}

impl Clone for Buffer {
    /// A copy on the heap (a shared buffer's copy is this process's alone).
    fn clone(&self) -> Buffer {
        Buffer::from_bytes(self.as_bytes())
    }
}

impl PartialEq for Buffer {
    fn eq(&self, other: &Buffer) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Buffer {}

/// One cache line of storage.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
struct Line([u64; 8]);

const LINE: usize = std::mem::size_of::<Line>();

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} bytes)", self.len)
    }
}

impl Buffer {
    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> Buffer {
        Buffer {
            memory: Memory::Heap(vec![Line([0; 8]); len.div_ceil(LINE)]),
            len,
        }
    }

    /// A buffer of `len` zero bytes, or `None` when the memory cannot be had (instead of
    /// aborting, as a failed allocation otherwise does). Like `calloc`, untouched pages
    /// cost nothing until the kernel writes them.
    pub fn try_zeroed(len: usize) -> Option<Buffer> {
        let words = len.div_ceil(LINE);
        if words == 0 {
            return Some(Buffer::zeroed(0));
        }
        let layout = std::alloc::Layout::array::<Line>(words).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Line>();
        if ptr.is_null() {
            return None;
        }
        // SAFETY: `ptr` was allocated by the global allocator with the layout of `words`
        // lines (what a `Vec<Line>` of that capacity uses), and every line is initialized
        // (zeroed; all-zero bits are a valid `Line`).
        let words = unsafe { Vec::from_raw_parts(ptr, words, words) };
        Some(Buffer {
            memory: Memory::Heap(words),
            len,
        })
    }

    /// A buffer of `len` zero bytes in memory the engine's worker processes can map (an
    /// anonymous file). Untouched pages cost nothing until written.
    pub fn try_shared(len: usize) -> std::io::Result<Buffer> {
        Ok(Buffer {
            memory: Memory::Shared(SharedMemory::create(c"offload-buffer", len)?),
            len,
        })
    }

    /// A job buffer of `len` zero bytes: in shared memory ([`Buffer::try_shared`]) where
    /// that can be had, else on the heap ([`Buffer::try_zeroed`]), so isolated workers
    /// map it without a copy.
    pub fn try_zeroed_shared(len: usize) -> Option<Buffer> {
        Buffer::try_shared(len)
            .ok()
            .or_else(|| Buffer::try_zeroed(len))
    }

    /// The anonymous file of a shared buffer ([`Buffer::try_shared`]).
    pub(crate) fn shared(&self) -> Option<&SharedMemory> {
        match &self.memory {
            Memory::Shared(shared) => Some(shared),
            Memory::Heap(_) => None,
        }
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
        match &self.memory {
            // SAFETY: `words` owns at least `len` initialized bytes; u8 has no alignment
            // needs.
            Memory::Heap(words) => unsafe {
                std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), self.len)
            },
            Memory::Shared(shared) => shared.bytes(),
        }
    }

    /// The contents, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        match &mut self.memory {
            // SAFETY: as in `as_bytes`, and we hold the only reference.
            Memory::Heap(words) => unsafe {
                std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len)
            },
            Memory::Shared(shared) => shared.bytes_mut(),
        }
    }

    /// The address handed to kernels.
    pub fn address(&mut self) -> u64 {
        match &mut self.memory {
            Memory::Heap(words) => words.as_mut_ptr() as u64,
            Memory::Shared(shared) => shared.as_ptr() as u64,
        }
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
    fn storage_is_aligned_to_a_cache_line() {
        for len in [1, 13, 64, 65, 1 << 20] {
            let mut b = Buffer::zeroed(len);
            assert_eq!(b.address() % 64, 0);
            assert_eq!(b.len(), len);
            let mut c = Buffer::try_zeroed(len).expect("memory");
            assert_eq!(c.address() % 64, 0);
            assert_eq!(b.as_bytes(), c.as_bytes());
            let mut d = Buffer::try_shared(len).expect("memfd");
            assert_eq!(d.address() % 64, 0);
            assert_eq!(b, d);
        }
    }
}
