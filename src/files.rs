//! Buffer files: inputs read no further than they must be long, and outputs staged
//! beside their destination and renamed into place only when the whole job succeeded,
//! so that a failure at any point leaves every file as it was. The command line and
//! programs' `[buffers]` and `[outputs]` use it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use node_jit::describe_bytes;

use crate::buffer::Buffer;

/// A buffer file that cannot be read or written: the message names the file, the buffer
/// and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(FileError(format!($($arg)*)))
    };
}

/// An output file to be: a temporary file created now beside the destination (which
/// proves the folder exists and is writable before anything runs), renamed over the
/// destination by [`commit_outputs`].
pub struct StagedOutput {
    /// Where the result goes (a symbolic link's target, so the link stays a link).
    destination: PathBuf,
    /// As the user wrote it, for messages.
    shown: PathBuf,
    temp: tempfile::NamedTempFile,
    /// Removed by the crash report if a kernel traps before the commit.
    _on_crash: crate::crash::CleanupGuard,
}

/// Holds back SIGINT and SIGTERM on this thread until dropped (a pending one is then
/// delivered), and counts the thread in `crash::STAGING`, so a signal another thread
/// takes meanwhile waits for it: what the interrupt handler must see happen together,
/// happens together.
struct HeldInterrupts(libc::sigset_t);

impl HeldInterrupts {
    fn hold() -> HeldInterrupts {
        // SAFETY: sigset operations on local sets; pthread_sigmask on this thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous);
            // After blocking: the handler never waits on the thread it interrupts.
            crate::crash::STAGING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            HeldInterrupts(previous)
        }
    }
}

impl Drop for HeldInterrupts {
    fn drop(&mut self) {
        crate::crash::STAGING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        // SAFETY: restores the mask `hold` saved.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Whether `error` is the process (`EMFILE`) or the system (`ENFILE`) out of descriptors.
/// An error that hides its OS cause (tempfile wraps it with the path) is told by trying
/// to open a descriptor now.
pub(crate) fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    let out = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    match error.raw_os_error() {
        Some(_) => out(error),
        None => std::fs::File::open("/").err().is_some_and(|e| out(&e)),
    }
}

/// What to do when [`is_out_of_descriptors`]: every buffer of a local run holds one.
pub(crate) fn out_of_descriptors_advice() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`, ours.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let how_many = if known {
        format!("{}; ", limit.rlim_cur)
    } else {
        String::new()
    };
    format!(
        "this process has as many files open as it may ({how_many}each buffer of a local run holds one); raise the limit (`ulimit -n`, LimitNOFILE=) or use fewer buffers"
    )
}

/// Where writing `path` lands: the path with its folders and symbolic links resolved,
/// also when the file does not exist yet or is a link to a file that does not (so two
/// names of one file are told to be one). Unresolvable parts are kept as written.
fn resolve_destination(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    // A chain of links, followed as the kernel would (it gives up after 40).
    for _ in 0..40 {
        if let Ok(resolved) = std::fs::canonicalize(&path) {
            return resolved;
        }
        match std::fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(folder) if target.is_relative() => folder.join(target),
                    _ => target,
                };
            }
            Err(_) => break,
        }
    }
    // A file to be made: its folder resolved, its name as given.
    match (path.parent(), path.file_name()) {
        (Some(folder), Some(name)) => {
            let folder = if folder.as_os_str().is_empty() {
                Path::new(".")
            } else {
                folder
            };
            match std::fs::canonicalize(folder) {
                Ok(folder) => folder.join(name),
                Err(_) => path,
            }
        }
        _ => path,
    }
}

impl StagedOutput {
    /// Stages an output for `path`; `what` names it in messages (`buffer `y``).
    pub fn new(path: &Path, what: &str) -> Result<StagedOutput, FileError> {
        let destination = resolve_destination(path);
        if destination.is_dir() {
            fail!(
                "cannot write {what} to {}: it is a directory",
                path.display()
            );
        }
        let folder = match destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Ctrl-C between making the file and registering it for removal would leave it.
        let _held = HeldInterrupts::hold();
        let temp = tempfile::Builder::new()
            .prefix(".offload-")
            .suffix(".tmp")
            .tempfile_in(&folder)
            .map_err(|e| {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "does not exist".to_string(),
                    std::io::ErrorKind::PermissionDenied => "is not writable".to_string(),
                    _ if is_out_of_descriptors(&e) => {
                        format!("cannot take a new file: {}", out_of_descriptors_advice())
                    }
                    kind => format!("cannot take a new file ({kind})"),
                };
                FileError(format!(
                    "cannot write {what} to {}: the folder {} {why}; nothing was run",
                    path.display(),
                    folder.display()
                ))
            })?;
        let _on_crash = crate::crash::remove_on_crash(temp.path());
        Ok(StagedOutput {
            destination,
            shown: path.to_path_buf(),
            temp,
            _on_crash,
        })
    }

    /// The destination, resolved.
    pub fn destination(&self) -> &Path {
        &self.destination
    }
}

/// Writes every output's bytes to its staged file and flushes them to disk; only when
/// all of them are written are they renamed into place (a rename within a folder is
/// atomic), so an error while writing leaves every destination as it was.
pub fn commit_outputs(outputs: Vec<(StagedOutput, &[u8])>) -> Result<(), FileError> {
    let mut ready = Vec::with_capacity(outputs.len());
    for (mut staged, bytes) in outputs {
        let shown = staged.shown.display().to_string();
        let file = staged.temp.as_file_mut();
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                FileError(format!(
                    "cannot write {shown}: {e}; no output file was changed"
                ))
            })?;
        // A replaced file keeps its permissions.
        if let Ok(meta) = std::fs::metadata(&staged.destination) {
            let _ = file.set_permissions(std::fs::Permissions::from_mode(
                meta.permissions().mode() & 0o7777,
            ));
        }
        ready.push(staged);
    }
    for staged in ready {
        let shown = staged.shown.display().to_string();
        staged
            .temp
            .persist(&staged.destination)
            .map_err(|e| FileError(format!("cannot replace {shown}: {}", e.error)))?;
    }
    Ok(())
}

/// What an input file must hold.
#[derive(Debug, Clone, Copy)]
pub enum Expected {
    /// Exactly this many bytes (split and sum buffers: the manifest and `--items` say).
    Exactly(u64),
    /// A whole number of elements of this size, at most `limit` bytes in all.
    Elements {
        /// Bytes per element.
        size: u64,
        /// The most bytes accepted.
        limit: u64,
    },
}

/// Fills `buffer` from `reader`. A shared buffer is filled through its file (`sendfile`
/// from the input into the memfd), not through this process's mapping: the kernel then
/// runs in a worker process that maps the pages itself, and pages this process never
/// touches cost it no page faults (about 1.4 µs per 4 KiB page here).
fn fill(buffer: &mut Buffer, reader: &mut std::io::Take<File>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if let Some(shared) = buffer.shared() {
        let (to, from) = (shared.fd().as_raw_fd(), reader.get_ref().as_raw_fd());
        let mut left = buffer.len();
        while left > 0 {
            // SAFETY: sendfile between two descriptors we hold; both offsets are the files'
            // own (the memfd's starts at 0, the input's where nothing was read yet).
            let sent = unsafe { libc::sendfile(to, from, std::ptr::null_mut(), left) };
            match sent {
                n if n > 0 => left -= n as usize,
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                _ => {
                    let error = std::io::Error::last_os_error();
                    if left == buffer.len() && error.raw_os_error() == Some(libc::EINVAL) {
                        // A file sendfile cannot read: through the mapping.
                        break;
                    }
                    return Err(error);
                }
            }
        }
        if left == 0 {
            // What `take` would have counted: the caller reads on to find a longer file.
            reader.set_limit(reader.limit().saturating_sub(buffer.len() as u64));
            return Ok(());
        }
    }
    reader.read_exact(buffer.as_bytes_mut())
}

/// Reads buffer `name` from `path`, never reading more than `expected` allows: a
/// device or an endless pipe is cut off, not read until memory runs out. `spec` is the
/// argument as the manifest spells it, for messages.
pub fn read_input(
    path: &Path,
    name: &str,
    spec: &str,
    expected: Expected,
    items: u64,
) -> Result<Buffer, FileError> {
    let context = |e: std::io::Error| {
        FileError(format!(
            "cannot read buffer `{name}` from {}: {e}",
            path.display()
        ))
    };
    let file = File::open(path).map_err(context)?;
    let meta = file.metadata().map_err(context)?;
    if meta.is_dir() {
        fail!(
            "cannot read buffer `{name}` from {}: it is a directory",
            path.display()
        );
    }
    let regular = meta.is_file().then_some(meta.len());
    let limit = match expected {
        Expected::Exactly(bytes) => {
            if let Some(len) = regular.filter(|&len| len != bytes) {
                fail!(
                    "buffer `{name}` (`{spec}`) must be {bytes} bytes for {items} items, but {} has {len} bytes",
                    path.display()
                );
            }
            bytes
        }
        Expected::Elements { limit, .. } => {
            if let Some(len) = regular.filter(|&len| len > limit) {
                fail!(
                    "buffer `{name}` from {} is {} ({len} bytes), more than this machine can hold ({})",
                    path.display(),
                    describe_bytes(len),
                    describe_bytes(limit)
                );
            }
            regular.unwrap_or(limit)
        }
    };
    let mut reader = file.take(limit.saturating_add(1));
    let (buffer, got) = match regular {
        // The usual case: the size is known, so the bytes go straight into the buffer.
        Some(len) => {
            let mut buffer = usize::try_from(len)
                .ok()
                .and_then(Buffer::try_zeroed_shared)
                .ok_or_else(|| {
                    FileError(format!(
                        "cannot allocate {} for buffer `{name}`",
                        describe_bytes(len)
                    ))
                })?;
            fill(&mut buffer, &mut reader).map_err(context)?;
            // A file that grew since it was measured holds more than it should.
            let mut extra = [0u8; 1];
            let more = reader.read(&mut extra).map_err(context)? as u64;
            (buffer, len + more)
        }
        // A pipe or a device: read what comes, up to one byte past the limit.
        None => {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).map_err(context)?;
            let got = bytes.len() as u64;
            (Buffer::from_bytes(&bytes), got)
        }
    };
    match expected {
        Expected::Exactly(want) if got > want => fail!(
            "buffer `{name}` (`{spec}`) must be {want} bytes for {items} items, but {} holds more",
            path.display()
        ),
        Expected::Exactly(want) if got < want => fail!(
            "buffer `{name}` (`{spec}`) must be {want} bytes for {items} items, but {} holds {got}",
            path.display()
        ),
        Expected::Elements { limit, .. } if got > limit => fail!(
            "buffer `{name}` from {} is more than this machine can hold ({})",
            path.display(),
            describe_bytes(limit)
        ),
        Expected::Elements { size, .. } if got % size != 0 => fail!(
            "buffer `{name}` (`{spec}`) must be a whole number of {size}-byte elements, but {} holds {got} bytes",
            path.display()
        ),
        _ => {}
    }
    Ok(buffer)
}
