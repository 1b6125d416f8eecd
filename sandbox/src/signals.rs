//! The signal handlers a sandboxed worker runs under: `SIGSYS` (the seccomp filter trapped
//! a call) and `SIGSEGV`/`SIGBUS` (to tell a stack overflow from other bad accesses).
//!
//! Everything here runs in signal context: no allocation, no locks, only async-signal-safe
//! calls (`write`, `sigaction`, `tgkill`, `_exit`), all of which the filter allows.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::exit::{Fault, FORBIDDEN_SYSCALL_EXIT, STACK_OVERFLOW_EXIT};
use crate::names::{syscall_name, Arch};

/// Where the handlers write their [`Fault`] record (-1: nowhere).
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

thread_local! {
    /// The lowest usable address of this thread's stack, 0 if unknown. Constant-initialized
    /// and without destructor, so reading it from a signal handler is a plain load.
    static STACK_LOW: Cell<usize> = const { Cell::new(0) };
}

/// `si_code` of a `SIGSYS` raised by seccomp.
const SYS_SECCOMP: i32 = 1;

/// A fault this far below the lowest usable stack address is still a stack overflow: the
/// guard pages (one page for threads, the kernel's 1 MiB gap for the main thread) and a
/// frame that jumped over them.
const GUARD_WINDOW: usize = 1 << 20;

/// For threads whose stack is unknown: a fault this close to the stack pointer is taken for
/// a stack overflow (memory just below a thread's stack pointer is mapped unless the stack
/// is exhausted).
const NEAR_STACK_POINTER: usize = 64 << 10;

/// The layout of `siginfo_t` for `SIGSYS` on the 64-bit Linux ABIs we support (the libc
/// crate does not expose `si_syscall`).
#[repr(C)]
struct SigsysInfo {
    _signo: i32,
    _errno: i32,
    code: i32,
    _pad: i32,
    _call_addr: usize,
    syscall: i32,
    arch: u32,
}

/// Records the calling thread's stack bounds so that an overflow is recognised.
pub(crate) fn remember_stack_of_this_thread() -> io::Result<()> {
    let low = this_thread_stack_low()?;
    STACK_LOW.with(|s| s.set(low));
    Ok(())
}

fn this_thread_stack_low() -> io::Result<usize> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `attr` is written by pthread_getattr_np before we read it, and destroyed
    // after use; pthread_self is always valid.
    unsafe {
        let rc = libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(addr as usize)
    }
}

/// Whether a fault at `addr` with the stack pointer at `sp` is a stack overflow, given the
/// thread's lowest usable stack address (0: unknown).
pub(crate) fn is_stack_overflow(addr: usize, sp: usize, stack_low: usize) -> bool {
    if stack_low == 0 {
        return addr.abs_diff(sp) <= NEAR_STACK_POINTER;
    }
    sp < stack_low || (addr < stack_low && addr >= stack_low.saturating_sub(GUARD_WINDOW))
}

/// Installs the handlers; records go to `report_fd` if given.
pub(crate) fn install(report_fd: Option<i32>) -> io::Result<()> {
    REPORT_FD.store(report_fd.unwrap_or(-1), Ordering::SeqCst);
    set_handler(libc::SIGSYS, on_sigsys)?;
    set_handler(libc::SIGSEGV, on_fault)?;
    set_handler(libc::SIGBUS, on_fault)?;
    Ok(())
}

/// An `SA_SIGINFO` signal handler.
type Handler = extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void);

fn set_handler(signal: i32, handler: Handler) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        // On the alternate stack (Rust's runtime gives the main thread and every thread it
        // starts one), so that a handler can run when the stack itself is exhausted.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts `signal` back to its default action and, if it did not come from a fault that will
/// repeat when the handler returns, sends it again: the process then ends as it would have
/// without the sandbox, with the real signal in its wait status.
fn fall_back_to_default(signal: i32, code: i32) {
    // SAFETY: async-signal-safe calls on this process only.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &action, std::ptr::null_mut());
        if code <= 0 {
            // Sent by a process (kill, tgkill): deliver it again, after we return.
            libc::syscall(
                libc::SYS_tgkill,
                libc::getpid(),
                libc::syscall(libc::SYS_gettid),
                signal,
            );
        }
    }
}

extern "C" fn on_sigsys(signal: i32, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; for SIGSYS it has
    // the `_sigsys` layout of `SigsysInfo`.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    if info.code != SYS_SECCOMP {
        fall_back_to_default(signal, info.code);
        return;
    }
    let arch = Arch::from_audit(info.arch);
    let number = i64::from(info.syscall);
    report(&Fault::ForbiddenSyscall { arch, number });
    let mut line = Line::default();
    line.push(b"offload sandbox: forbidden system call ");
    match arch.and_then(|a| syscall_name(a, number)) {
        Some(name) => line.push(name.as_bytes()),
        None => line.push(b"?"),
    }
    line.push(b" (");
    line.number(number as u64);
    line.push(b"); the worker exits\n");
    line.write_to(2);
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(FORBIDDEN_SYSCALL_EXIT) }
}

extern "C" fn on_fault(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes valid siginfo and ucontext pointers to SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code > 0 {
        let sp = stack_pointer(context);
        let low = STACK_LOW.with(|s| s.get());
        if is_stack_overflow(addr, sp, low) {
            report(&Fault::StackOverflow);
            let mut line = Line::default();
            line.push(b"offload sandbox: stack overflow; the worker exits\n");
            line.write_to(2);
            // SAFETY: as above.
            unsafe { libc::_exit(STACK_OVERFLOW_EXIT) }
        }
    }
    fall_back_to_default(signal, code);
}

fn stack_pointer(context: *mut libc::c_void) -> usize {
    let context = context.cast::<libc::ucontext_t>();
    // SAFETY: `context` is the ucontext the kernel passed to the handler.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        (*context).uc_mcontext.gregs[libc::REG_RSP as usize] as usize
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        (*context).uc_mcontext.sp as usize
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = context;
        0
    }
}

fn report(fault: &Fault) {
    let fd = REPORT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let record = fault.encode();
        // SAFETY: write of a local buffer; a record is smaller than PIPE_BUF, so it lands
        // whole even if several threads write at once.
        unsafe { libc::write(fd, record.as_ptr().cast(), record.len()) };
    }
}

/// A message line of a signal handler.
type Line = crate::SignalSafeLine<160>;

#[cfg(test)]
mod tests {
    use super::*;

    const LOW: usize = 0x7000_0000;

    #[test]
    fn a_fault_in_the_guard_below_a_known_stack_is_an_overflow() {
        assert!(is_stack_overflow(LOW - 8, LOW + 8, LOW));
        assert!(is_stack_overflow(LOW - 4096, LOW + 64, LOW));
    }

    #[test]
    fn a_stack_pointer_below_a_known_stack_is_an_overflow() {
        // A big frame that jumped over the guard: the access lands anywhere.
        assert!(is_stack_overflow(0x10, LOW - (8 << 20), LOW));
    }

    #[test]
    fn wild_accesses_are_not_overflows() {
        assert!(!is_stack_overflow(0, LOW + 4096, LOW));
        assert!(!is_stack_overflow(LOW + (64 << 20), LOW + 4096, LOW));
        assert!(!is_stack_overflow(LOW - (16 << 20), LOW + 4096, LOW));
        // Unknown stack: only accesses next to the stack pointer count.
        assert!(is_stack_overflow(LOW - 8, LOW, 0));
        assert!(!is_stack_overflow(0, LOW, 0));
    }

    #[test]
    fn lines_are_built_without_allocating_and_cut_when_full() {
        let mut line = Line::default();
        line.push(b"call ");
        line.number(257);
        line.number(0);
        assert_eq!(line.as_bytes(), b"call 2570");
        line.push(&[b'x'; 400]);
        assert_eq!(line.as_bytes().len(), 160);
    }
}
