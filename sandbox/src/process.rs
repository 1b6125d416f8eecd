//! Process-wide settings: death with the parent, an own process group, resource limits.

use std::io;

use crate::SandboxError;

/// A resource of `getrlimit`/`setrlimit` (glibc names the type; musl uses `c_int`).
#[cfg(target_env = "gnu")]
pub(crate) type Resource = libc::__rlimit_resource_t;
/// A resource of `getrlimit`/`setrlimit`.
#[cfg(not(target_env = "gnu"))]
pub(crate) type Resource = libc::c_int;

fn os(what: &'static str) -> SandboxError {
    SandboxError::Os {
        what,
        source: io::Error::last_os_error(),
    }
}

/// Asks for `SIGKILL` when the parent dies, then checks that the parent is still the one
/// expected: a parent that died before the request was made sends no signal, and the
/// worker was re-parented already. Returns the parent's pid.
pub(crate) fn die_with_parent(expected: Option<u32>) -> Result<u32, SandboxError> {
    // SAFETY: plain calls on this process.
    let before = unsafe { libc::getppid() } as u32;
    // SAFETY: as above.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(os("ask to die with the parent (PR_SET_PDEATHSIG)"));
    }
    // SAFETY: as above.
    let now = unsafe { libc::getppid() } as u32;
    let expected = expected.unwrap_or(before);
    if now != expected {
        return Err(SandboxError::ParentGone { expected, now });
    }
    Ok(now)
}

/// A `pre_exec` hook (for `std::process::Command` or tokio's) that makes the child die
/// (`SIGKILL`) when the *thread* that starts it ends, and `_exit(1)` at once if that
/// process died before the hook ran. Its calls (`prctl`, `getppid`, `_exit`) are
/// async-signal-safe and it allocates nothing, as a hook between fork and exec requires.
/// The node starts its workers with it (a worker that loses its node before it applies
/// the sandbox dies too); [`crate::apply`] makes the same request again from inside the
/// worker, checking the parent it was given.
pub fn die_with_parent_hook() -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
    let parent = std::process::id();
    move || match die_with_parent(Some(parent)) {
        Ok(_) => Ok(()),
        // SAFETY: plain call in the child: the parent is gone, nothing to clean up.
        Err(SandboxError::ParentGone { .. }) => unsafe { libc::_exit(1) },
        Err(SandboxError::Os { source, .. }) => Err(source),
        // `die_with_parent` fails in no other way; answer without allocating.
        Err(_) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Makes this process the leader of its own process group (a terminal's Ctrl-C then goes
/// to the node, which ends its workers itself). Returns the group id.
pub(crate) fn own_process_group() -> Result<u32, SandboxError> {
    // SAFETY: plain calls on this process.
    unsafe {
        let pid = libc::getpid();
        if libc::getpgrp() != pid && libc::setpgid(0, 0) != 0 {
            return Err(os("start an own process group (setpgid)"));
        }
        Ok(pid as u32)
    }
}

/// Sets `resource`'s soft and hard limits to `value`, or to the current hard limit if that
/// is lower (an unprivileged process cannot raise it). Returns the limit in force.
pub(crate) fn limit(
    resource: Resource,
    value: u64,
    what: &'static str,
) -> Result<u64, SandboxError> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `current`.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(os(what));
    }
    let value = value.min(current.rlim_max);
    let new = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads `new`.
    if unsafe { libc::setrlimit(resource, &new) } != 0 {
        return Err(os(what));
    }
    Ok(value)
}

/// How many threads this process runs besides the calling one (from `/proc/self/status`).
pub(crate) fn other_threads() -> Result<usize, SandboxError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(SandboxError::ProcFs)?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .map(|n| n.saturating_sub(1))
        .ok_or_else(|| {
            SandboxError::ProcFs(io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/self/status has no Threads: line",
            ))
        })
}

/// The descriptors open in this process, in order (from `/proc/self/fd`, without the one
/// used to read it): the files, pipes and sockets a sandboxed worker can still use.
pub(crate) fn open_descriptors() -> Result<Vec<i32>, SandboxError> {
    let listed: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(SandboxError::ProcFs)?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own descriptor is closed now: keep what is still open.
    let mut open: Vec<i32> = listed
        .into_iter()
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1)
        .collect();
    open.sort_unstable();
    Ok(open)
}

/// A pipe for a worker's fault reports ([`crate::Fault`] records): the parent's read end
/// (non-blocking) and the write end the worker gets as its report descriptor (see
/// [`report_fd_hook`]). Both are close-on-exec here, so no other child inherits them; the
/// worker's end blocks, so a record is never lost to a full pipe (it never is: 16 bytes).
pub fn report_pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and ours.
    let (read, write) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fds[1], libc::F_GETFL);
        libc::fcntl(fds[1], libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok((read, write))
}

/// A `pre_exec` hook that makes descriptor `writer` (a [`report_pipe`] write end) the
/// child's descriptor `target`, open across exec. Async-signal-safe (`dup2`, `fcntl`).
pub fn report_fd_hook(
    writer: std::os::fd::RawFd,
    target: std::os::fd::RawFd,
) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
    move || {
        if writer == target {
            // dup2 onto itself keeps close-on-exec: clear it instead.
            // SAFETY: fcntl on a descriptor open in this (child) process.
            if unsafe { libc::fcntl(writer, libc::F_SETFD, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        // SAFETY: as above.
        } else if unsafe { libc::dup2(writer, target) } != target {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// What a dead worker wrote on its report pipe's read end (its writer is gone: nothing
/// more comes). Reads what is there without waiting.
pub fn read_report(report: Option<std::os::fd::OwnedFd>) -> Vec<u8> {
    use std::io::Read;
    let Some(report) = report else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    let _ = std::fs::File::from(report).read_to_end(&mut bytes);
    bytes
}
