//! Reports a kernel that traps on this machine (a C kernel dividing by zero, writing
//! through a wild pointer, overflowing its stack) in words instead of dying silently,
//! and removes the run's staged output files first, so nothing half-written is left.
//!
//! Local runs execute kernels in this process's threads: a trap cannot be survived here
//! (the process's memory may be what the kernel broke). What can be done is to say which
//! kernel crashed, on which items and how, and to leave every output and `--inout` file
//! as it was: the engine notes the kernel and items a thread is running
//! ([`Running`], two stores per packet), and [`report_kernel_crashes`] installs handlers
//! for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT that, on a thread inside a kernel,
//! write one line to stderr with async-signal-safe calls only, unlink the staged temporary
//! files ([`remove_on_crash`]) and end the process with exit status 1. A signal outside a
//! kernel goes to the handler that was there before (Rust's stack-overflow report) or
//! the default action. Isolating kernels in worker processes, so that the process lives
//! on, is the cluster node's design and the next step for local runs.

use std::cell::Cell;
use std::ffi::CString;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Once;

/// What a thread is running: the kernel's name (borrowed from the compiled kernel, which
/// outlives the packet) and the packet's items.
#[derive(Clone, Copy)]
struct Packet {
    name: *const u8,
    name_len: usize,
    start: u64,
    end: u64,
}

thread_local! {
    // Const-initialized and without a destructor: readable from a signal handler.
    static RUNNING: Cell<Option<Packet>> = const { Cell::new(None) };
}

/// Marks this thread as running `kernel` on items `start..end` until dropped.
pub(crate) struct Running(());

impl Running {
    /// `name` must outlive the guard (the compiled kernel's name does).
    pub(crate) fn new(name: &str, start: u64, end: u64) -> Running {
        let packet = Packet {
            name: name.as_ptr(),
            name_len: name.len(),
            start,
            end,
        };
        let _ = RUNNING.try_with(|r| r.set(Some(packet)));
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = RUNNING.try_with(|r| r.set(None));
    }
}

/// Staged output files the handler removes: C strings leaked while registered.
const CLEANUP_SLOTS: usize = 64;
static CLEANUP: [AtomicPtr<libc::c_char>; CLEANUP_SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; CLEANUP_SLOTS];

/// Removes `path` if a kernel crashes before [`CleanupGuard`] is dropped (more than 64
/// staged files at once: the rest are left, as after a SIGKILL).
pub(crate) fn remove_on_crash(path: &std::path::Path) -> CleanupGuard {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return CleanupGuard(None);
    };
    let raw = c.into_raw();
    for (index, slot) in CLEANUP.iter().enumerate() {
        if slot
            .compare_exchange(
                std::ptr::null_mut(),
                raw,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            return CleanupGuard(Some(index));
        }
    }
    // SAFETY: `raw` came from `CString::into_raw` above and was not stored.
    drop(unsafe { CString::from_raw(raw) });
    CleanupGuard(None)
}

/// Takes a path off the crash clean-up list when dropped.
pub(crate) struct CleanupGuard(Option<usize>);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if let Some(index) = self.0 {
            let raw = CLEANUP[index].swap(std::ptr::null_mut(), Ordering::AcqRel);
            if !raw.is_null() {
                // SAFETY: only `remove_on_crash` stores pointers, from `CString::into_raw`.
                drop(unsafe { CString::from_raw(raw) });
            }
        }
    }
}

const SIGNALS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGABRT,
];

/// The handlers that were installed before ours, by signal, for signals outside kernels.
static PREVIOUS: [AtomicPtr<libc::sigaction>; 5] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; 5];

/// Installs the crash report for kernels run on this machine (once per process; the CLI
/// does it). Process-wide signal handlers: a library embedding offload decides whether
/// it wants them.
pub fn report_kernel_crashes() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        for (index, &signal) in SIGNALS.iter().enumerate() {
            // SAFETY: plain sigaction calls with zero-initialized, then filled, structs;
            // the handler only makes async-signal-safe calls.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    on_fatal_signal;
                action.sa_sigaction = handler as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let previous = Box::into_raw(Box::new(std::mem::zeroed::<libc::sigaction>()));
                if libc::sigaction(signal, &action, previous) == 0 {
                    PREVIOUS[index].store(previous, Ordering::Release);
                } else {
                    drop(Box::from_raw(previous));
                }
            }
        }
    });
}

/// Makes Ctrl-C (SIGINT) and SIGTERM end a run cleanly: the staged output files are
/// removed, one line says that nothing was written, and the process exits with 130 or
/// 143 (128 + the signal), its threads with it. For commands that write outputs (`offload
/// run`), not for servers that handle SIGTERM themselves (a node drains on it).
pub fn end_runs_cleanly_on_interrupt() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: as in `report_kernel_crashes`; the handler is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                let handler: extern "C" fn(libc::c_int) = on_interrupt;
                action.sa_sigaction = handler as *const () as usize;
                action.sa_flags = libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    });
}

extern "C" fn on_interrupt(signal: libc::c_int) {
    let mut line = Line::default();
    line.push(b"\noffload: interrupted (");
    line.push(if signal == libc::SIGINT {
        b"SIGINT"
    } else {
        b"SIGTERM"
    });
    line.push(b"); no output or --inout file was changed\n");
    // SAFETY: write, unlink and _exit are async-signal-safe; the buffers are ours.
    unsafe {
        remove_staged();
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(128 + signal);
    }
}

/// Unlinks every staged file on the clean-up list (async-signal-safe).
fn remove_staged() {
    for slot in &CLEANUP {
        let path = slot.load(Ordering::Acquire);
        if !path.is_null() {
            // SAFETY: a C string leaked by `remove_on_crash`, alive while listed.
            unsafe { libc::unlink(path) };
        }
    }
}

/// What a signal means for a kernel, in words.
fn describe(signal: libc::c_int) -> &'static [u8] {
    match signal {
        libc::SIGSEGV => b"SIGSEGV (an invalid memory access, or a stack overflow)",
        libc::SIGBUS => b"SIGBUS (a misaligned or truncated memory access)",
        libc::SIGFPE => b"SIGFPE (an arithmetic trap: integer division by zero or overflow)",
        libc::SIGILL => {
            b"SIGILL (an illegal instruction: a trap, or an instruction this CPU lacks)"
        }
        libc::SIGABRT => b"SIGABRT (the kernel aborted)",
        _ => b"a fatal signal",
    }
}

extern "C" fn on_fatal_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let running = RUNNING.try_with(Cell::get).ok().flatten();
    let Some(packet) = running else {
        pass_on(signal, info, context);
        return;
    };
    let mut line = Line::default();
    line.push(b"error: kernel `");
    // SAFETY: the guard's contract: the name outlives the packet.
    line.push(unsafe { std::slice::from_raw_parts(packet.name, packet.name_len) });
    line.push(b"` crashed on items ");
    line.number(packet.start);
    line.push(b"..");
    line.number(packet.end);
    line.push(b": ");
    line.push(describe(signal));
    line.push(b"; no output or --inout file was changed\n");
    // SAFETY: write, unlink and _exit are async-signal-safe; the buffers are ours.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        remove_staged();
        libc::_exit(1);
    }
}

/// Hands a signal that did not come from a kernel to the handler before ours, or
/// restores the default action (the faulting instruction runs again and the process
/// ends as it would have).
fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let index = SIGNALS.iter().position(|&s| s == signal);
    let previous = index.map_or(std::ptr::null_mut(), |i| {
        PREVIOUS[i].load(Ordering::Acquire)
    });
    // SAFETY: `previous` is null or a sigaction saved at install time and never freed.
    unsafe {
        if !previous.is_null() {
            let handler = (*previous).sa_sigaction;
            if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
                if (*previous).sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(handler);
                    f(signal, info, context);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                    f(signal);
                }
                return;
            }
        }
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &default, std::ptr::null_mut());
    }
}

/// A line built without allocating.
struct Line {
    bytes: [u8; 512],
    len: usize,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            bytes: [0; 512],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn number(&mut self, mut value: u64) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_built_without_allocating_and_cut_at_their_size() {
        let mut line = Line::default();
        line.push(b"items ");
        line.number(0);
        line.push(b"..");
        line.number(u64::MAX);
        assert_eq!(&line.bytes[..line.len], b"items 0..18446744073709551615");
        for _ in 0..100 {
            line.push(b"0123456789");
        }
        assert_eq!(line.len, 512);
    }

    #[test]
    fn a_thread_notes_the_packet_it_runs_until_the_guard_drops() {
        let name = String::from("saxpy");
        {
            let _running = Running::new(&name, 3, 9);
            let packet = RUNNING.with(Cell::get).expect("noted");
            assert_eq!((packet.start, packet.end, packet.name_len), (3, 9, 5));
        }
        assert!(RUNNING.with(Cell::get).is_none());
    }

    #[test]
    fn staged_files_are_listed_while_guarded() {
        let guard = remove_on_crash(std::path::Path::new("/tmp/offload-crash-test"));
        let listed = CLEANUP
            .iter()
            .filter(|s| !s.load(Ordering::Acquire).is_null())
            .count();
        assert!(listed >= 1);
        drop(guard);
    }
}
