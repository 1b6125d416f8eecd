//! Loading verified library bytes as code.
//!
//! The bytes go into a sealed anonymous file (`memfd_create`, then `F_SEAL_WRITE`,
//! `F_SEAL_GROW`, `F_SEAL_SHRINK`), which `dlopen` maps through `/proc/self/fd`. So the
//! code that runs is exactly the code whose digest was checked: no file on disk can be
//! swapped or rewritten between the check and the load, and nothing can change the
//! mapping's pages afterwards.
//!
//! The descriptor stays open as long as the library is loaded: glibc's `dlopen` first
//! looks a path up among the libraries already loaded *by name*, and `/proc/self/fd/N`
//! names repeat when descriptor numbers are reused, so closing it early would let a later
//! kernel's load return an earlier kernel's handle.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};

/// A kernel library mapped from its sealed in-memory file.
pub(crate) struct Loaded {
    // Dropped first (fields drop in order): the library is unloaded before the name
    // `/proc/self/fd/N` can be taken by another load.
    pub(crate) library: libloading::Library,
    _file: File,
}

/// Maps `library` (a shared object) into this process and returns the handle.
///
/// # Safety
/// `library` must be a shared object produced by this crate's code generator (or
/// another whose initializers are safe to run): loading runs its initializers, if any.
pub(crate) unsafe fn load(library: &[u8]) -> Result<Loaded, String> {
    // SAFETY: the name is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe {
        libc::memfd_create(
            c"offload-kernel".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot create an in-memory file: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a fresh descriptor this function owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(library)
        .map_err(|e| format!("cannot fill the in-memory file: {e}"))?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on our own descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(format!(
            "cannot seal the in-memory file: {}",
            std::io::Error::last_os_error()
        ));
    }
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    // SAFETY: upheld by the caller (the library's initializers are safe to run).
    let library = unsafe { libloading::Library::new(&path) }.map_err(|e| {
        if std::path::Path::new("/proc/self/fd").is_dir() {
            e.to_string()
        } else {
            format!("{e} (/proc is not mounted, and kernels are loaded through /proc/self/fd)")
        }
    })?;
    Ok(Loaded {
        library,
        _file: file,
    })
}
