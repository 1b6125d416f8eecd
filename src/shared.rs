//! Memory shared with the engine's worker processes: an anonymous file (`memfd`) mapped
//! into this process and into each worker, so kernels in the workers read and write the
//! job's buffers in place, and the futex calls that let either side sleep on a word of
//! it until the other changes it.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

/// A shared mapping of an anonymous file, readable and writable, page-aligned.
pub(crate) struct SharedMemory {
    ptr: *mut u8,
    len: usize,
    mapped: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory owned by this value; who may write what, when, is
// the business of its users (the engine gives disjoint slices to concurrent packets).
unsafe impl Send for SharedMemory {}
// SAFETY: as above; `&SharedMemory` only hands out the address.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// A new zero-filled file of `len` bytes, mapped. `name` shows in `/proc/PID/maps`.
    pub(crate) fn create(name: &CStr, len: usize) -> io::Result<SharedMemory> {
        // SAFETY: a valid NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        SharedMemory::map(fd, len)
    }

    /// Maps `len` bytes of the file `fd` (a worker's side of [`SharedMemory::create`]).
    /// Pages are mapped as they are touched: a worker faults in only what its packets
    /// use (mapping every page up front, `MAP_POPULATE`, made each worker pay for all of
    /// them: saxpy over 128 MB ran at half the speed).
    pub(crate) fn map(fd: OwnedFd, len: usize) -> io::Result<SharedMemory> {
        // An empty file still gets a page: a mapping cannot be empty, and its address is
        // what a kernel is given for an empty buffer.
        let mapped = len.max(1);
        // SAFETY: a fresh shared mapping of our descriptor; nothing is replaced.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMemory {
            ptr: ptr.cast(),
            len,
            mapped,
            fd,
        })
    }

    /// The first byte.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The file, to hand to a worker.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The contents.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The contents, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, through the only reference in this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The 32-bit word at byte `offset` (4-aligned, inside the mapping), for futexes and
    /// flags both sides use.
    pub(crate) fn word(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= self.mapped);
        // SAFETY: in bounds and aligned (checked); the mapping outlives the reference;
        // every access to the word, from any process, is atomic.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU32>() }
    }

    /// The 64-bit word at byte `offset` (8-aligned, inside the mapping).
    pub(crate) fn word64(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.mapped);
        // SAFETY: as in `word`.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU64>() }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.mapped) };
    }
}

/// Sleeps while `word` holds `expected`, for at most `timeout` (a wake-up, a timeout or
/// a signal all return: callers check the word again). The word may be shared with
/// another process, so the futex is not the process-private kind.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let spec = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: FUTEX_WAIT on a valid, aligned word with a valid relative timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &spec as *const libc::timespec,
        )
    };
}

/// Wakes every process sleeping on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned word.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_second_mapping_of_the_file_sees_the_first_ones_writes() {
        let mut first = SharedMemory::create(c"test", 10_000).expect("memfd");
        first.bytes_mut()[9_999] = 7;
        let fd = first.fd().try_clone_to_owned().expect("dup");
        let second = SharedMemory::map(fd, 10_000).expect("map");
        assert_eq!(second.bytes()[9_999], 7);
        second.word(8).store(5, Ordering::SeqCst);
        assert_eq!(first.word(8).load(Ordering::SeqCst), 5);
        assert_eq!(first.as_ptr() as usize % 4096, 0);
        // Nothing waits for a word that already changed.
        futex_wait(first.word(8), 4, Duration::from_secs(5));
        assert!(SharedMemory::create(c"empty", 0)
            .expect("memfd")
            .bytes()
            .is_empty());
    }
}
