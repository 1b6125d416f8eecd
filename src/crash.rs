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
//!
//! A [`Watchdog`] (`--packet-timeout`) ends the process the same way when a packet runs
//! too long: while one runs, [`Running`] also notes when each packet started.
//!
//! In check mode (`check`) a thread also notes the fenced copies of the item it runs
//! ([`Fenced`]); a SIGSEGV or SIGBUS at an address in one of them is reported as the
//! access it was (`kernel K wrote outside its slice of `y` on item 7 ...`), worded by the
//! same function as the writes check mode finds after an item ran.

use std::cell::Cell;
use std::ffi::CString;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, OnceLock, Weak};
use std::time::{Duration, Instant};

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
        if WATCHING.load(Ordering::Relaxed) > 0 {
            let _ = WATCH_SLOT.try_with(|slot| slot.begin(packet));
        }
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = RUNNING.try_with(|r| r.set(None));
        if WATCHING.load(Ordering::Relaxed) > 0 {
            let _ = WATCH_SLOT.try_with(|slot| slot.since.store(0, Ordering::Release));
        }
    }
}

/// How many [`Watchdog`]s run: packets note when they start only while one does.
static WATCHING: AtomicUsize = AtomicUsize::new(0);

/// The clock packets' start times count from (microseconds, 0 meaning idle).
fn watch_clock() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    (epoch.elapsed().as_micros() as u64).max(1)
}

/// What one thread is running, for the watchdog on another thread.
#[derive(Default)]
struct WatchSlot {
    /// When the packet started ([`watch_clock`]), 0 while idle; written last.
    since: AtomicU64,
    name: AtomicPtr<u8>,
    name_len: AtomicUsize,
    start: AtomicU64,
    end: AtomicU64,
}

impl WatchSlot {
    fn begin(&self, packet: Packet) {
        self.name.store(packet.name.cast_mut(), Ordering::Relaxed);
        self.name_len.store(packet.name_len, Ordering::Relaxed);
        self.start.store(packet.start, Ordering::Relaxed);
        self.end.store(packet.end, Ordering::Relaxed);
        self.since.store(watch_clock(), Ordering::Release);
    }
}

/// Every thread's slot that ran a packet while a watchdog was on (dead ones pruned).
static WATCH_SLOTS: Mutex<Vec<Weak<WatchSlot>>> = Mutex::new(Vec::new());

thread_local! {
    static WATCH_SLOT: Arc<WatchSlot> = {
        let slot = Arc::new(WatchSlot::default());
        let mut slots = WATCH_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        slot
    };
}

/// Ends the process when a packet runs longer than its timeout: a kernel running in
/// this process's threads cannot be stopped any other way. The line names the kernel
/// and the items, the staged output files are removed, and the exit status is 1, as
/// for a kernel that traps. Stops watching when dropped.
pub(crate) struct Watchdog {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watches every packet started from now on against `timeout`.
    pub(crate) fn start(timeout: Duration) -> Result<Watchdog, std::io::Error> {
        WATCHING.fetch_add(1, Ordering::SeqCst);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = Arc::clone(&stop);
        // Checked a few times per timeout: a hung packet ends the run within 1.25x it.
        let every = (timeout / 4).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let limit = timeout.as_micros() as u64;
        let thread = std::thread::Builder::new()
            .name("offload-watchdog".into())
            .spawn(move || {
                let (stopped, wake) = &*stopping;
                let mut stopped = stopped.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped {
                    stopped = wake
                        .wait_timeout(stopped, every)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if !*stopped {
                        overdue(limit, timeout);
                    }
                }
            })?;
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        WATCHING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ends the process if a watched packet has run for more than `limit` µs.
fn overdue(limit: u64, timeout: Duration) {
    let now = watch_clock();
    let slots: Vec<Arc<WatchSlot>> = WATCH_SLOTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for slot in slots {
        let since = slot.since.load(Ordering::Acquire);
        if since == 0 || now.saturating_sub(since) <= limit {
            continue;
        }
        let name = slot.name.load(Ordering::Relaxed);
        let name_len = slot.name_len.load(Ordering::Relaxed);
        let (start, end) = (
            slot.start.load(Ordering::Relaxed),
            slot.end.load(Ordering::Relaxed),
        );
        // The packet may have ended while the fields were read: then it is not hung.
        if slot.since.load(Ordering::Acquire) != since {
            continue;
        }
        // SAFETY: the name belongs to a compiled kernel of the run, which outlives the
        // watchdog (the run drops it last).
        let name = unsafe { std::slice::from_raw_parts(name, name_len) };
        let mut line = Line::default();
        line.push(b"error: kernel `");
        line.push(name);
        line.push(b"` ran longer than the packet timeout (");
        line.push(format!("{} s", timeout.as_secs_f64()).as_bytes());
        line.push(b") on items ");
        line.number(start);
        line.push(b"..");
        line.number(end);
        line.push(b"; no output or --inout file was changed\n");
        // SAFETY: plain system calls on our own buffers.
        unsafe {
            line.write_to(2);
            remove_staged();
            libc::_exit(1);
        }
    }
}

/// What one fenced copy of check mode (`check`) covers, for the handler to name an
/// access that trapped in it. Plain addresses: readable from a signal handler.
#[derive(Clone, Copy)]
pub(crate) struct FenceNote {
    /// The whole mapping, guards included: `mapped_start..mapped_end`.
    pub(crate) mapped_start: usize,
    pub(crate) mapped_end: usize,
    /// The copy the kernel may touch: `copy_start..copy_end`.
    pub(crate) copy_start: usize,
    pub(crate) copy_end: usize,
    /// The buffer's name (borrowed from the kernel's manifest, which outlives the item).
    pub(crate) name: *const u8,
    pub(crate) name_len: usize,
    /// What the copy is.
    pub(crate) kind: FenceKind,
}

/// What a fenced copy holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FenceKind {
    /// An item's slice of an `out` or `inout` buffer (writable).
    Slice,
    /// What an item may read of a split `in` buffer: its elements and the halo.
    Readable,
    /// A whole `in` buffer.
    Whole,
    /// A packet's `sum` accumulator (writable).
    Sum,
}

/// How a trapping access used memory, as far as the CPU says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Access {
    Read,
    Write,
    Unknown,
}

thread_local! {
    // The fenced copies of the item this thread runs in check mode (none otherwise).
    static FENCES: Cell<(*const FenceNote, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// Notes the fenced copies of the item this thread runs until dropped.
pub(crate) struct Fenced(());

impl Fenced {
    /// `notes` must outlive the guard.
    pub(crate) fn new(notes: &[FenceNote]) -> Fenced {
        let _ = FENCES.try_with(|f| f.set((notes.as_ptr(), notes.len())));
        Fenced(())
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        let _ = FENCES.try_with(|f| f.set((std::ptr::null(), 0)));
    }
}

/// Describes, without allocating, an access at `address` outside what `note` lets
/// kernel `kernel`'s item `item` touch: the one wording of check mode's findings, for
/// the signal handler and for writes found afterwards alike. The caller checked that
/// `address` lies in the note's mapping.
fn describe_access(
    line: &mut Line,
    kernel: &[u8],
    item: u64,
    note: &FenceNote,
    name: &[u8],
    address: usize,
    access: Access,
) {
    line.push(b"kernel `");
    line.push(kernel);
    line.push(b"` ");
    let inside = (note.copy_start..note.copy_end).contains(&address);
    line.push(match (inside, access) {
        (true, _) | (false, Access::Write) => b"wrote ",
        (false, Access::Read) => b"read ",
        (false, Access::Unknown) => b"read or wrote ",
    });
    if inside {
        // Only the read-only copies of `in` buffers trap inside.
        line.push(b"into `");
        line.push(name);
        line.push(b"`, an `in` buffer,");
    } else {
        line.push(b"outside ");
        line.push(match note.kind {
            FenceKind::Slice => b"its slice of `" as &[u8],
            FenceKind::Readable => b"the elements of `",
            FenceKind::Whole => b"the buffer `",
            FenceKind::Sum => b"the sum buffer `",
        });
        line.push(name);
        line.push(match note.kind {
            FenceKind::Readable => b"` its manifest lets it read" as &[u8],
            _ => b"`",
        });
    }
    line.push(b" on item ");
    line.number(item);
    let (distance, side): (usize, &[u8]) = if address < note.copy_start {
        (note.copy_start - address, b" before its start)")
    } else if address >= note.copy_end {
        (address - note.copy_end + 1, b" past its end)")
    } else {
        return;
    };
    line.push(b" (the access began ");
    line.number(distance as u64);
    line.push(if distance == 1 { b" byte" } else { b" bytes" });
    line.push(side);
}

/// The message of check mode for a write found after the item ran (one that did not
/// trap: before a copy's start, on its first page), worded as the handler words traps.
pub(crate) fn outside_message(kernel: &str, item: u64, note: &FenceNote, address: usize) -> String {
    let mut line = Line::default();
    // SAFETY: the note's name is borrowed from the manifest, alive while the step runs.
    let name = unsafe { std::slice::from_raw_parts(note.name, note.name_len) };
    describe_access(
        &mut line,
        kernel.as_bytes(),
        item,
        note,
        name,
        address,
        Access::Write,
    );
    String::from_utf8_lossy(line.as_bytes()).into_owned()
}

/// The fenced copy of this thread's item that holds `address`, if any.
fn fence_at(address: usize) -> Option<FenceNote> {
    let (notes, len) = FENCES.try_with(Cell::get).ok()?;
    if notes.is_null() {
        return None;
    }
    // SAFETY: the guard's contract: the notes outlive it.
    let notes = unsafe { std::slice::from_raw_parts(notes, len) };
    notes
        .iter()
        .find(|n| (n.mapped_start..n.mapped_end).contains(&address))
        .copied()
}

/// Whether the faulting access was a write, from the CPU's page-fault error code.
fn fault_access(context: *mut libc::c_void) -> Access {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        if context.is_null() {
            return Access::Unknown;
        }
        // SAFETY: the kernel passes a `ucontext_t` to SA_SIGINFO handlers; bit 1 of the
        // page-fault error code is set for writes.
        let error = unsafe {
            (*(context as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_ERR as usize]
        };
        if error & 2 != 0 {
            Access::Write
        } else {
            Access::Read
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = context;
        Access::Unknown
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
        line.write_to(2);
        libc::_exit(128 + signal);
    }
}

/// Threads between making a staged file and listing it for removal (they hold SIGINT and
/// SIGTERM back meanwhile, see `files::HeldInterrupts`): a signal delivered to another
/// thread in that window waits for them, so the file is on the list when it is read.
pub(crate) static STAGING: AtomicUsize = AtomicUsize::new(0);

/// Waits, up to a second, for every thread that is listing a staged file
/// (async-signal-safe: an atomic load, clock_gettime and sched_yield).
fn wait_for_staging() {
    let now = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into `t`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        t.tv_sec * 1_000_000_000 + t.tv_nsec
    };
    let until = now() + 1_000_000_000;
    while STAGING.load(Ordering::Acquire) > 0 && now() < until {
        // SAFETY: no preconditions.
        unsafe { libc::sched_yield() };
    }
}

/// Unlinks every staged file on the clean-up list (async-signal-safe).
fn remove_staged() {
    wait_for_staging();
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
    // SAFETY: the guard's contract: the name outlives the packet.
    let kernel = unsafe { std::slice::from_raw_parts(packet.name, packet.name_len) };
    let mut line = Line::default();
    line.push(b"error: ");
    if signal == libc::SIGSEGV || signal == libc::SIGBUS {
        // SAFETY: `info` is the siginfo of a SA_SIGINFO handler.
        let address = unsafe { (*info).si_addr() } as usize;
        if let Some(note) = fence_at(address) {
            // SAFETY: the note's name is the manifest's, alive while the item runs.
            let name = unsafe { std::slice::from_raw_parts(note.name, note.name_len) };
            let access = fault_access(context);
            describe_access(
                &mut line,
                kernel,
                packet.start,
                &note,
                name,
                address,
                access,
            );
            line.push(b" (check mode); no output or --inout file was changed\n");
            // SAFETY: as below.
            unsafe {
                line.write_to(2);
                remove_staged();
                libc::_exit(1);
            }
        }
    }
    line.push(b"kernel `");
    line.push(kernel);
    line.push(b"` crashed on items ");
    line.number(packet.start);
    line.push(b"..");
    line.number(packet.end);
    line.push(b": ");
    line.push(describe(signal));
    line.push(b"; no output or --inout file was changed\n");
    // SAFETY: write, unlink and _exit are async-signal-safe; the buffers are ours.
    unsafe {
        line.write_to(2);
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

/// A line built without allocating (the handlers may not allocate).
type Line = sandbox::SignalSafeLine<512>;

#[cfg(test)]
mod tests {
    use super::*;

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
