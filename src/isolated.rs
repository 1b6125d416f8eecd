//! Isolated kernel workers for local runs: the CPU packets of a job run in worker
//! processes (`offload __engine-worker`), one per CPU device, not in the caller's
//! threads, so a kernel that traps, overflows its stack, hangs or makes a system call
//! ends its worker and fails the job with a sentence, and the caller lives on.
//!
//! The job's buffers are anonymous files ([`crate::Buffer::try_shared`]) mapped by the
//! coordinator and by every worker: kernels read and write them in place, nothing is
//! copied. Each worker also maps its **mailbox**, a page the coordinator writes one
//! packet request into (kernel, items, the argument slots: scalars, buffer offsets and
//! `sum` accumulators in the mailbox's own scratch space) and the worker answers in,
//! and a **control** page shared by all, whose completion counter the coordinator sleeps
//! on. Both sides spin on their word for up to [`SPIN`] before sleeping on it (a futex):
//! waking a sleeper costs tens of µs on a virtual machine, as much as a short packet.
//!
//! A worker is started with a socket as stdin, possibly ahead of its job ([`warm_up`]),
//! builds the sandbox's filters while it waits, and gets its set-up there: one JSON
//! message (versions must match), then its descriptors (`SCM_RIGHTS`). It loads the
//! code the coordinator compiled (verified against its key and digest:
//! [`node_jit::load_cache_entry`]), maps the buffers, closes every other descriptor,
//! applies the CPU sandbox profile ([`sandbox`]) and answers `ready`; then it only runs
//! packets. A worker that dies is seen by the coordinator's wait (it checks the
//! processes whenever it wakes without an answer) and reported with
//! [`sandbox::WorkerEnd`]'s words; a packet that runs past its timeout has its worker
//! killed. The workers of a job end with it (and with the thread that started them).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ir_packager::KernelSpec;
use scheduler::{DeviceId, Packet};
use serde::{Deserialize, Serialize};

use crate::buffer::Buffer;
use crate::shared::{futex_wait, futex_wake, SharedMemory};

// The mailbox: one page of request and answer, then the scratch for `sum` accumulators.
/// u32: the sequence number of the last request posted; the worker sleeps on it.
const POSTED: usize = 0;
/// u32: 1 while the worker sleeps on `POSTED`.
const WORKER_ASLEEP: usize = 4;
/// u32: the sequence number of the last request answered.
const FINISHED: usize = 8;
/// u32: 0 the packet ran, 1 the kernel panicked (code in `PANIC_CODE`).
const STATUS: usize = 12;
/// u32: the kernel's index in the set-up, or [`STOP`].
const KERNEL: usize = 16;
/// u32: how many argument slots follow.
const SLOT_COUNT: usize = 20;
/// u32: the kernel's panic code.
const PANIC_CODE: usize = 24;
/// u64: first item, end of items, the kernel's time in ns.
const START: usize = 32;
const END: usize = 40;
const COMPUTE_NS: usize = 48;
/// The argument slots: kind (u32), buffer index (u32), value (u64), length (u64).
const SLOT_TABLE: usize = 64;
const SLOT_BYTES: usize = 24;
const HEADER: usize = 4096;
/// The most arguments a kernel may have to run in a worker.
pub(crate) const MAX_SLOTS: usize = (HEADER - SLOT_TABLE) / SLOT_BYTES;
/// A request's kernel index that ends the worker.
const STOP: u32 = u32::MAX;

const SLOT_SCALAR: u32 = 0;
const SLOT_BUFFER: u32 = 1;
const SLOT_SUM: u32 = 2;

// The control page.
/// u32: answers given by all workers; the coordinator sleeps on it.
const COMPLETIONS: usize = 0;
/// u32: 1 while the coordinator sleeps on `COMPLETIONS`.
const COORDINATOR_ASLEEP: usize = 4;
const CONTROL_LEN: usize = 64;

/// How long a worker may take to load its kernels and sandbox itself.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// How long either side polls its word before sleeping on it.
const SPIN: Duration = Duration::from_micros(1000);

/// How long the coordinator sleeps without an answer before it looks at the worker
/// processes (a dead worker answers nothing).
const CHECK_EVERY: Duration = Duration::from_millis(5);

/// What the engine passes to a worker for one argument slot.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Slot {
    /// A scalar's bits.
    Scalar(u64),
    /// `offset` bytes into job buffer `index`.
    Buffer { index: usize, offset: u64 },
    /// A zeroed `sum` accumulator of `len` bytes at `offset` in the scratch space.
    Sum { offset: usize, len: usize },
}

/// A kernel's code as a worker loads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WorkerKernel {
    /// The code cache entry ([`node_jit::CompiledKernel::library_path`]).
    pub library: PathBuf,
    /// Its key.
    pub key: String,
    /// The kernel's manifest entry.
    pub spec: KernelSpec,
}

/// The set-up a worker receives: this message, then the descriptors it names, passed over
/// its socket (its report pipe's write end, the control page, the mailbox, then one per
/// job buffer, in that order).
#[derive(Debug, Serialize, Deserialize)]
struct Setup {
    /// offload's version: a worker of another version refuses the set-up.
    version: String,
    parent: u32,
    mailbox_len: u64,
    stack: u64,
    /// Each job buffer's length, in the order of the descriptors.
    buffers: Vec<u64>,
    kernels: Vec<WorkerKernel>,
}

/// The most descriptors one message carries (the kernel's limit is 253).
const FDS_PER_MESSAGE: usize = 250;

/// The longest set-up message a worker takes.
const MAX_SETUP: usize = 1 << 20;

/// How the engine's workers are started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkerProgram {
    /// The `offload` executable.
    pub program: PathBuf,
    /// Extra arguments after `__engine-worker` (test builds: `--fault ...`).
    pub args: Vec<String>,
}

/// Why a worker's packet did not finish.
#[derive(Debug)]
pub(crate) enum WorkerFailure {
    /// The kernel panicked with this code.
    Panicked(i32),
    /// The worker process ended (a trap, a forbidden call, a stack overflow, a kill).
    Ended(sandbox::WorkerEnd),
    /// The packet ran longer than this; its worker was killed.
    TimedOut(Duration),
}

/// A worker's answer.
pub(crate) struct Answer {
    pub device: DeviceId,
    pub packet: Packet,
    /// The kernel's time in the worker.
    pub compute: Duration,
    /// The packet's `sum` partials (in slot order), or why it failed.
    pub outcome: Result<Vec<Buffer>, WorkerFailure>,
}

/// Why workers could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerStartError {
    /// The OS refused something (memory, a pipe, a process).
    #[error("cannot start the kernel worker `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// A worker said why it cannot serve, or ended before it was ready.
    #[error("the kernel worker could not start: {0} (--in-process, or a Rust job without `Options::isolated`, runs kernels in this process's threads, unconfined)")]
    Refused(String),
    /// The kernel has more arguments than a worker's mailbox takes.
    #[error("kernel `{kernel}` has {args} parameters; a kernel worker takes at most {max} (run it with --in-process)")]
    TooManyArguments {
        /// The kernel.
        kernel: String,
        /// Its parameter count.
        args: usize,
        /// The most a mailbox holds.
        max: usize,
    },
}

/// One worker process.
struct Process {
    child: Child,
    /// The set-up socket: the worker answers `ready` on it, then it only stays open.
    socket: OwnedFd,
    report: Option<OwnedFd>,
    mailbox: SharedMemory,
    sequence: u32,
    busy: Option<InFlight>,
    /// How the process ended, once it has.
    ended: Option<sandbox::WorkerEnd>,
}

struct InFlight {
    device: DeviceId,
    packet: Packet,
    since: Instant,
    sums: Vec<(usize, usize)>,
}

/// A job's worker processes, one per CPU device.
pub(crate) struct Workers {
    processes: Vec<Process>,
    control: SharedMemory,
    /// The coordinator's address of each job buffer.
    bases: Vec<u64>,
    timeout: Option<Duration>,
    /// This machine's cores.
    cores: usize,
    /// A moving average of the packets' compute times.
    typical: Duration,
}

/// Packets shorter than this (on average) are waited for by polling even when every
/// core has a busy worker.
const SHORT_PACKET: Duration = Duration::from_micros(100);

impl Workers {
    /// Starts `count` workers for a job whose buffers are `buffers` (all shared) and
    /// whose kernels are `kernels`, each with `scratch` bytes for `sum` accumulators
    /// and threads of `stack` bytes; waits until every one is sandboxed and ready.
    pub(crate) fn start(
        program: &WorkerProgram,
        count: usize,
        buffers: &[&SharedMemory],
        kernels: &[WorkerKernel],
        scratch: usize,
        stack: usize,
        timeout: Option<Duration>,
    ) -> Result<Workers, WorkerStartError> {
        for kernel in kernels {
            if kernel.spec.args.len() > MAX_SLOTS {
                return Err(WorkerStartError::TooManyArguments {
                    kernel: kernel.spec.name.clone(),
                    args: kernel.spec.args.len(),
                    max: MAX_SLOTS,
                });
            }
        }
        let spawn_error = |source| WorkerStartError::Spawn {
            program: program.program.display().to_string(),
            source,
        };
        let control = SharedMemory::create(c"offload-control", CONTROL_LEN).map_err(spawn_error)?;
        // Made first: if starting one worker fails, dropping this ends those started.
        let mut workers = Workers {
            processes: Vec::with_capacity(count),
            control,
            bases: buffers.iter().map(|b| b.as_ptr() as u64).collect(),
            timeout,
            cores: node_jit::available_threads(),
            typical: Duration::ZERO,
        };
        // The same set-up for every worker: made and encoded once.
        let setup = Setup {
            version: env!("CARGO_PKG_VERSION").to_string(),
            parent: std::process::id(),
            mailbox_len: (HEADER + scratch) as u64,
            stack: stack as u64,
            buffers: buffers.iter().map(|b| b.len() as u64).collect(),
            kernels: kernels.to_vec(),
        };
        let setup =
            serde_json::to_vec(&setup).map_err(|e| spawn_error(std::io::Error::other(e)))?;
        for _ in 0..count {
            let mailbox =
                SharedMemory::create(c"offload-mailbox", HEADER + scratch).map_err(spawn_error)?;
            let mut descriptors = vec![workers.control.fd().as_raw_fd(), mailbox.fd().as_raw_fd()];
            descriptors.extend(buffers.iter().map(|b| b.fd().as_raw_fd()));
            // A spare started ahead ([`warm_up`]) that has died since takes a set-up
            // badly: a fresh worker gets it instead.
            let worker = match take_spare(program) {
                Some(mut spare) => match spare.set_up(&setup, &descriptors) {
                    Ok(()) => spare,
                    Err(_) => {
                        spare.discard();
                        let mut fresh = Spawned::start(program).map_err(spawn_error)?;
                        fresh.set_up(&setup, &descriptors).map_err(spawn_error)?;
                        fresh
                    }
                },
                None => {
                    let mut fresh = Spawned::start(program).map_err(spawn_error)?;
                    // A worker that died at once shows as its end below.
                    let _ = fresh.set_up(&setup, &descriptors);
                    fresh
                }
            };
            workers.processes.push(Process {
                child: worker.child,
                socket: worker.socket,
                report: Some(worker.report),
                mailbox,
                sequence: 0,
                busy: None,
                ended: None,
            });
        }
        // All were set up at once; now each says it is ready, or why not (within
        // READY_WITHIN: a worker that hangs before it is ready must not hang the run).
        for index in 0..workers.processes.len() {
            let socket = workers.processes[index].socket.as_raw_fd();
            let within = libc::timeval {
                tv_sec: READY_WITHIN.as_secs() as libc::time_t,
                tv_usec: 0,
            };
            // SAFETY: setsockopt on our socket with a valid timeval.
            unsafe {
                libc::setsockopt(
                    socket,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&within as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            let answer = receive_message(socket, 4096)
                .map(|(bytes, _)| String::from_utf8_lossy(&bytes).trim_end().to_string());
            match answer {
                Ok(line) if line == "ready" => continue,
                Ok(line) if line.starts_with("error: ") => {
                    return Err(WorkerStartError::Refused(
                        line["error: ".len()..].to_string(),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = workers.processes[index].child.kill();
                    return Err(WorkerStartError::Refused(format!(
                        "it was not ready within {} s",
                        READY_WITHIN.as_secs()
                    )));
                }
                _ => {
                    let end = workers.processes[index].collect();
                    return Err(WorkerStartError::Refused(format!(
                        "it {end} before it was ready"
                    )));
                }
            }
        }
        Ok(workers)
    }

    /// How many workers there are.
    pub(crate) fn len(&self) -> usize {
        self.processes.len()
    }

    /// Posts `packet` of kernel `kernel` (its index in the set-up) to worker `worker`.
    /// A worker takes one packet at a time (the scheduler gives a local CPU device one
    /// slot): `false`, and nothing posted, if it is busy or the request does not fit.
    #[must_use]
    pub(crate) fn send(
        &mut self,
        worker: usize,
        kernel: usize,
        device: DeviceId,
        packet: Packet,
        slots: &[Slot],
    ) -> bool {
        let Some(process) = self.processes.get_mut(worker) else {
            return false;
        };
        if process.busy.is_some() || slots.len() > MAX_SLOTS {
            return false;
        }
        let mailbox = &process.mailbox;
        let mut sums = Vec::new();
        for (k, slot) in slots.iter().enumerate() {
            let at = SLOT_TABLE + k * SLOT_BYTES;
            let (kind, index, value, len) = match *slot {
                Slot::Scalar(bits) => (SLOT_SCALAR, 0, bits, 0),
                Slot::Buffer { index, offset } => (SLOT_BUFFER, index as u32, offset, 0),
                Slot::Sum { offset, len } => {
                    sums.push((offset, len));
                    (SLOT_SUM, 0, offset as u64, len as u64)
                }
            };
            mailbox.word(at).store(kind, Ordering::Relaxed);
            mailbox.word(at + 4).store(index, Ordering::Relaxed);
            mailbox.word64(at + 8).store(value, Ordering::Relaxed);
            mailbox.word64(at + 16).store(len, Ordering::Relaxed);
        }
        mailbox.word(KERNEL).store(kernel as u32, Ordering::Relaxed);
        mailbox
            .word(SLOT_COUNT)
            .store(slots.len() as u32, Ordering::Relaxed);
        mailbox.word64(START).store(packet.start, Ordering::Relaxed);
        mailbox.word64(END).store(packet.end, Ordering::Relaxed);
        process.sequence = process.sequence.wrapping_add(1);
        post(mailbox, process.sequence);
        process.busy = Some(InFlight {
            device,
            packet,
            since: Instant::now(),
            sums,
        });
        true
    }

    /// The coordinator's address of job buffer `index` (offsets in [`Slot::Buffer`]
    /// count from it).
    pub(crate) fn base(&self, index: usize) -> u64 {
        self.bases[index]
    }

    /// An answer if one is there, without waiting.
    pub(crate) fn try_answer(&mut self) -> Option<Answer> {
        let answer = self
            .processes
            .iter_mut()
            .find_map(|process| process.take_answer())?;
        self.typical = (self.typical * 7 + answer.compute) / 8;
        Some(answer)
    }

    /// Waits for the next answer: a worker's, the end of a busy worker, a packet past
    /// the timeout, or `also`'s. `also` is polled on each round: another source of
    /// answers (the OpenCL devices' channel) the caller waits on at the same time; its
    /// value is returned as `Err(value)`. The caller waits only while something is
    /// outstanding.
    pub(crate) fn wait<T>(&mut self, also: &mut dyn FnMut() -> Option<T>) -> Result<Answer, T>
    where
        T: Sized,
    {
        let started = Instant::now();
        loop {
            let seen = self.control.word(COMPLETIONS).load(Ordering::SeqCst);
            if let Some(answer) = self.try_answer() {
                return Ok(answer);
            }
            // A hung packet is stopped at its timeout even while other workers keep
            // answering (the deaths of workers are looked for when nothing comes).
            if self.timeout.is_some() {
                if let Some(answer) = self.check_processes(false) {
                    return Ok(answer);
                }
            }
            if let Some(other) = also() {
                return Err(other);
            }
            // Poll while a core is free, or while packets are short: with a worker busy
            // on every core, this thread's polling takes a core's time from one of them,
            // which a long packet can spare less than the tens of µs a wake-up costs.
            let busy = self.processes.iter().filter(|p| p.busy.is_some()).count();
            let poll = busy < self.cores || self.typical < SHORT_PACKET;
            if poll && started.elapsed() < SPIN {
                yield_now();
                continue;
            }
            let asleep = self.control.word(COORDINATOR_ASLEEP);
            asleep.store(1, Ordering::SeqCst);
            if self.control.word(COMPLETIONS).load(Ordering::SeqCst) == seen {
                futex_wait(self.control.word(COMPLETIONS), seen, CHECK_EVERY);
            }
            asleep.store(0, Ordering::SeqCst);
            if let Some(answer) = self.check_processes(true) {
                return Ok(answer);
            }
        }
    }

    /// Looks for a busy worker that ran past the timeout or (with `deaths`) died; its
    /// packet's answer.
    fn check_processes(&mut self, deaths: bool) -> Option<Answer> {
        let timeout = self.timeout;
        for process in &mut self.processes {
            if process.busy.is_none() {
                continue;
            }
            // An answer that came in meanwhile wins over the process's end.
            if let Some(answer) = process.take_answer() {
                return Some(answer);
            }
            let since = process.busy.as_ref()?.since;
            let overdue = timeout.filter(|t| since.elapsed() > *t);
            if overdue.is_none()
                && (!deaths || !matches!(process.child.try_wait(), Ok(Some(_)) | Err(_)))
            {
                continue;
            }
            let in_flight = process.busy.take()?;
            let outcome = match overdue {
                Some(timeout) => {
                    let _ = process.child.kill();
                    process.collect();
                    WorkerFailure::TimedOut(timeout)
                }
                None => WorkerFailure::Ended(process.collect()),
            };
            return Some(Answer {
                device: in_flight.device,
                packet: in_flight.packet,
                compute: in_flight.since.elapsed(),
                outcome: Err(outcome),
            });
        }
        None
    }
}

/// A worker process started, not yet set up: its socket (its stdin) and report pipe.
struct Spawned {
    program: WorkerProgram,
    /// The thread that started it: the worker dies with that thread.
    thread: std::thread::ThreadId,
    child: Child,
    socket: OwnedFd,
    report: OwnedFd,
    /// The report pipe's write end, until the set-up hands it to the worker.
    writer: Option<OwnedFd>,
}

/// Workers this process has started, for [`spread`]'s round.
static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Moves a worker just started to a core of its own, taking this process's allowed
/// cores in turn from the one after the core this thread runs on. A child starts on its
/// parent's core, and on a virtual machine the scheduler tends to leave it there while
/// another core idles (an idle virtual CPU reads as preempted, so wake-ups avoid it):
/// the worker's start (1.5 ms) and the run's own work then take turns on one core.
/// The worker is pinned for an instant only, so that the move happens, and then given
/// back every allowed core; where affinity cannot be set nothing changes.
fn spread(pid: u32) {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity/sched_setaffinity and
    // sched_getcpu only read or write the sets they are given.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return;
        }
        let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &allowed))
            .collect();
        if cores.len() < 2 {
            return;
        }
        let here = libc::sched_getcpu();
        let at = cores
            .iter()
            .position(|&cpu| cpu as libc::c_int == here)
            .unwrap_or(0);
        let turn = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let target = cores[(at + 1 + turn) % cores.len()];
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(target, &mut one);
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let pid = pid as libc::pid_t;
        if libc::sched_setaffinity(pid, size, &one) == 0 {
            libc::sched_setaffinity(pid, size, &allowed);
        }
    }
}

impl Spawned {
    /// Starts `offload __engine-worker` with a socket as stdin. Nothing runs between
    /// fork and exec (so the standard library can use `posix_spawn`, several times faster
    /// than fork here): the worker asks to die with the thread that started it itself, and
    /// one whose parent is gone before it asked reads the end of its socket and exits.
    fn start(program: &WorkerProgram) -> std::io::Result<Spawned> {
        let mut pair = [0; 2];
        // SAFETY: socketpair writes two descriptors into `pair`.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and ours.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let (report, writer) = sandbox::report_pipe()?;
        let child = Command::new(&program.program)
            // `ps` shows `offload __engine-worker` whatever path started it.
            .arg0("offload")
            .arg("__engine-worker")
            .args(&program.args)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        spread(child.id());
        Ok(Spawned {
            program: program.clone(),
            thread: std::thread::current().id(),
            child,
            socket: ours,
            report,
            writer: Some(writer),
        })
    }

    /// Sends the encoded set-up and its descriptors (the report pipe's write end first).
    fn set_up(&mut self, line: &[u8], descriptors: &[RawFd]) -> std::io::Result<()> {
        let writer = self
            .writer
            .as_ref()
            .ok_or_else(|| std::io::Error::other("set up twice"))?;
        let all: Vec<RawFd> = std::iter::once(writer.as_raw_fd())
            .chain(descriptors.iter().copied())
            .collect();
        let socket = self.socket.as_raw_fd();
        let mut chunks = all.chunks(FDS_PER_MESSAGE);
        send_message(socket, line, chunks.next().unwrap_or(&[]))?;
        for chunk in chunks {
            send_message(socket, b"fds", chunk)?;
        }
        // The worker holds it now.
        self.writer = None;
        Ok(())
    }

    /// Ends a worker that will not be used.
    fn discard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Workers started ahead of their job ([`warm_up`]).
static SPARES: std::sync::Mutex<Vec<Spawned>> = std::sync::Mutex::new(Vec::new());

/// A spare of `program` started by this thread (one started by another thread may be
/// dying with it); spares that have ended are collected first.
fn take_spare(program: &WorkerProgram) -> Option<Spawned> {
    let mut spares = SPARES.lock().unwrap_or_else(|e| e.into_inner());
    spares.retain_mut(|s| matches!(s.child.try_wait(), Ok(None)));
    let here = std::thread::current().id();
    let at = spares
        .iter()
        .position(|s| s.thread == here && s.program == *program)?;
    Some(spares.swap_remove(at))
}

/// Starts workers of `program` now until this thread has `count` spares of it, for the
/// next isolated run in this process to take, so that their start (exec, the runtime,
/// building the sandbox's filters) overlaps what the caller does meanwhile (reading the
/// package and the inputs). They die with the thread that calls this, and only runs on
/// that thread take them. Failures are left to the run to report.
pub(crate) fn warm_up(program: &WorkerProgram, count: usize) {
    let mut spares = SPARES.lock().unwrap_or_else(|e| e.into_inner());
    spares.retain_mut(|s| matches!(s.child.try_wait(), Ok(None)));
    let here = std::thread::current().id();
    let ready = spares
        .iter()
        .filter(|s| s.thread == here && s.program == *program)
        .count();
    for _ in ready..count {
        match Spawned::start(program) {
            Ok(spare) => spares.push(spare),
            Err(_) => break,
        }
    }
}

/// Sends `bytes` and the descriptors `fds` as one message on a `SOCK_SEQPACKET` socket.
fn send_message(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    // u64s: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty one.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    if !fds.is_empty() {
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space as _;
        // SAFETY: the control buffer holds one header with room for `fds` (CMSG_SPACE).
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(header).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: the message points at live buffers; no SIGPIPE if the worker died.
    let sent = unsafe { libc::sendmsg(socket, &message, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if sent as usize != bytes.len() {
        return Err(std::io::Error::other("a message was cut short"));
    }
    Ok(())
}

/// Receives one message of at most `max` bytes and the descriptors it carries (an empty
/// message: the other side closed its end).
fn receive_message(socket: RawFd, max: usize) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut bytes = vec![0u8; max];
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE((FDS_PER_MESSAGE * 4) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty one.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // SAFETY: the message points at live buffers of the lengths given.
    let got = unsafe { libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the headers the kernel wrote into our control buffer, walked with the
    // macros meant for it; each SCM_RIGHTS descriptor is new and ours.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                for k in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(k).read_unaligned()));
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    if message.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(std::io::Error::other("a message was too long"));
    }
    bytes.truncate(got as usize);
    Ok((bytes, fds))
}

impl Process {
    /// The answer to this worker's packet, if it has given it.
    fn take_answer(&mut self) -> Option<Answer> {
        let in_flight = self.busy.as_ref()?;
        let mailbox = &self.mailbox;
        if mailbox.word(FINISHED).load(Ordering::Acquire) != self.sequence {
            return None;
        }
        let compute = Duration::from_nanos(mailbox.word64(COMPUTE_NS).load(Ordering::Relaxed));
        let outcome = match mailbox.word(STATUS).load(Ordering::Relaxed) {
            0 => Ok(in_flight
                .sums
                .iter()
                .map(|&(offset, len)| {
                    Buffer::from_bytes(&mailbox.bytes()[HEADER + offset..HEADER + offset + len])
                })
                .collect()),
            _ => Err(WorkerFailure::Panicked(
                mailbox.word(PANIC_CODE).load(Ordering::Relaxed) as i32,
            )),
        };
        let in_flight = self.busy.take()?;
        Some(Answer {
            device: in_flight.device,
            packet: in_flight.packet,
            compute,
            outcome,
        })
    }

    /// Waits for the process to end (it has, or was killed) and says how it did.
    fn collect(&mut self) -> sandbox::WorkerEnd {
        if let Some(end) = &self.ended {
            return end.clone();
        }
        let end = match self.child.wait() {
            Ok(status) => sandbox::WorkerEnd::from_status(
                status,
                sandbox::Fault::first_in(&sandbox::read_report(self.report.take())),
            ),
            Err(_) => sandbox::WorkerEnd::Exited(-1),
        };
        self.ended = Some(end.clone());
        end
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Every worker is told to stop and killed first: a killed process runs no more
        // of its code, so the job is over for it.
        let mut dying = Vec::new();
        for process in self.processes.iter_mut().filter(|p| p.ended.is_none()) {
            process.mailbox.word(KERNEL).store(STOP, Ordering::Relaxed);
            process.sequence = process.sequence.wrapping_add(1);
            post(&process.mailbox, process.sequence);
            // Killed too: a worker inside a kernel never reads the request.
            let _ = process.child.kill();
            dying.push(process.child.id());
        }
        reap_in_background(dying);
    }
}

/// Waits for the killed worker processes `pids` on a thread of their own. Their exit
/// unmaps the job's buffers, which takes a while (0.3-1 ms even for a small job on a
/// virtual machine, more for large buffers): the job's outputs are committed meanwhile
/// instead of after it. Where no thread can be started they are waited for here.
fn reap_in_background(pids: Vec<u32>) {
    if pids.is_empty() {
        return;
    }
    let wait_all = |pids: &[u32]| {
        for &pid in pids {
            // SAFETY: waitpid on a child of ours that nothing else waits for (its
            // `Child` handle is dropped unwaited with the `Workers`).
            unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
        }
    };
    let on_thread = pids.clone();
    let started = std::thread::Builder::new()
        .name("offload-reaper".into())
        .spawn(move || wait_all(&on_thread));
    if started.is_err() {
        wait_all(&pids);
    }
}

/// Publishes request `sequence` and wakes the worker if it sleeps.
fn post(mailbox: &SharedMemory, sequence: u32) {
    mailbox.word(POSTED).store(sequence, Ordering::SeqCst);
    if mailbox.word(WORKER_ASLEEP).load(Ordering::SeqCst) != 0 {
        futex_wake(mailbox.word(POSTED));
    }
}

/// The worker process: `offload __engine-worker`. Reads its set-up from stdin, gets
/// ready, then runs packets until told to stop; returns only on a set-up error (which it
/// has answered on stdout).
pub fn serve_worker(faults: &[String]) -> Result<(), String> {
    let answer = |text: &str| {
        let _ = send_message(0, text.as_bytes(), &[]);
    };
    match prepare(faults) {
        Ok(Some(ready)) => ready.serve(&answer),
        // A spare the run did not need: it ends without a word.
        Ok(None) => Ok(()),
        Err(reason) => {
            answer(&format!("error: {reason}"));
            Err(reason)
        }
    }
}

/// A worker, set up and sandboxed.
struct Ready {
    mailbox: SharedMemory,
    control: SharedMemory,
    buffers: Vec<SharedMemory>,
    kernels: Vec<node_jit::CompiledKernel>,
    stack: usize,
    faults: cluster_node::fault::Faults,
}

/// Gets the worker ready, or `None` when the coordinator went away before sending a
/// set-up (a spare started ahead for a run that ended first).
fn prepare(faults: &[String]) -> Result<Option<Ready>, String> {
    let faults = cluster_node::fault::Faults::parse(faults)?;
    // Death with the thread that started this process, asked first (see
    // `Spawned::start`); the sandbox asks again and checks the parent. The process's
    // name (`top`, `ps -o comm`) says what it is, not `exe` of `/proc/self/exe`.
    // SAFETY: plain prctl and getppid calls on this process; the name is NUL-terminated
    // and at most 16 bytes.
    let parent = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        let name = c"offload-worker".as_ptr() as libc::c_ulong;
        libc::prctl(libc::PR_SET_NAME, name, 0, 0, 0);
        libc::getppid() as u32
    };
    // The sandbox's filters are built while the set-up is still on its way.
    let sandbox = sandbox::prepare(&sandbox::Config::cpu().expected_parent(parent));
    let (line, mut fds) = receive_message(0, MAX_SETUP).map_err(|e| {
        format!("cannot read the set-up ({e}): offload __engine-worker is started by offload run")
    })?;
    if line.is_empty() && fds.is_empty() {
        return Ok(None);
    }
    let setup: Setup =
        serde_json::from_slice(&line).map_err(|e| format!("a malformed set-up: {e}"))?;
    if setup.version != env!("CARGO_PKG_VERSION") {
        return Err(format!(
            "the worker program is offload {}, the job's is {}",
            env!("CARGO_PKG_VERSION"),
            setup.version
        ));
    }
    let wanted = setup.buffers.len() + 3;
    while fds.len() < wanted {
        let (_, more) =
            receive_message(0, 16).map_err(|e| format!("cannot read the set-up: {e}"))?;
        if more.is_empty() {
            return Err(format!(
                "the set-up came with {} of its {wanted} descriptors",
                fds.len()
            ));
        }
        fds.extend(more);
    }
    let mut fds = fds.into_iter();
    let report = fds.next().ok_or("the set-up has no report pipe")?;
    let mut map = |len: u64, what: &str| match fds.next() {
        Some(fd) => {
            SharedMemory::map(fd, len as usize).map_err(|e| format!("cannot map {what}: {e}"))
        }
        None => Err(format!("the set-up has no descriptor for {what}")),
    };
    let control = map(CONTROL_LEN as u64, "the control page")?;
    let mailbox = map(setup.mailbox_len, "the mailbox")?;
    let buffers = setup
        .buffers
        .iter()
        .map(|&len| map(len, "a job buffer"))
        .collect::<Result<Vec<_>, _>>()?;
    let kernels = setup
        .kernels
        .into_iter()
        .map(|k| node_jit::load_cache_entry(&k.library, k.spec, &k.key).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    // Kept open to the end: the sandbox's handlers write to it.
    let report_fd = std::os::fd::IntoRawFd::into_raw_fd(report);
    cluster_node::worker::close_stray_descriptors(&[report_fd]);
    let report = sandbox
        .and_then(|prepared| prepared.report_fd(report_fd).apply())
        .map_err(|e| format!("cannot apply the sandbox: {e}"))?;
    if parent != setup.parent {
        return Err(format!(
            "started by process {parent}, set up by {}",
            setup.parent
        ));
    }
    tracing::debug!("engine worker {}: {report}", std::process::id());
    Ok(Some(Ready {
        mailbox,
        control,
        buffers,
        kernels,
        stack: usize::try_from(setup.stack).unwrap_or(usize::MAX),
        faults,
    }))
}

impl Ready {
    /// Starts the thread that runs packets with the job's stack size, answers `ready`
    /// (or why the thread cannot start), serves until told to stop, then ends the
    /// process at once (destructors would make calls the sandbox forbids).
    fn serve(self, answer: &dyn Fn(&str)) -> Result<(), String> {
        let stack = self.stack;
        let runner = match sandbox::spawn_with_stack("offload-kernel", stack, move || self.run()) {
            Ok(runner) => runner,
            Err(e) => {
                let reason = format!(
                    "cannot start the thread that runs kernels with a stack of {}: {e}",
                    node_jit::describe_bytes(stack as u64)
                );
                answer(&format!("error: {reason}"));
                return Err(reason);
            }
        };
        answer("ready");
        let code = match runner.join() {
            Ok(()) => 0,
            Err(_) => 1,
        };
        // SAFETY: ends this process; everything it holds dies with it.
        unsafe { libc::_exit(code) }
    }

    fn run(&self) {
        let mailbox = &self.mailbox;
        let mut last = 0u32;
        let mut block: Vec<u64> = Vec::with_capacity(MAX_SLOTS);
        loop {
            let sequence = wait_for_request(mailbox, last);
            last = sequence;
            let kernel = mailbox.word(KERNEL).load(Ordering::Relaxed);
            if kernel == STOP {
                return;
            }
            let Some(code) = self.kernels.get(kernel as usize) else {
                return;
            };
            block.clear();
            let slots = mailbox.word(SLOT_COUNT).load(Ordering::Relaxed) as usize;
            for k in 0..slots.min(MAX_SLOTS) {
                let at = SLOT_TABLE + k * SLOT_BYTES;
                let value = mailbox.word64(at + 8).load(Ordering::Relaxed);
                block.push(match mailbox.word(at).load(Ordering::Relaxed) {
                    SLOT_BUFFER => {
                        let index = mailbox.word(at + 4).load(Ordering::Relaxed) as usize;
                        match self.buffers.get(index) {
                            Some(buffer) => buffer.as_ptr() as u64 + value,
                            None => return,
                        }
                    }
                    SLOT_SUM => {
                        let len = mailbox.word64(at + 16).load(Ordering::Relaxed) as usize;
                        let offset = HEADER + value as usize;
                        let Some(end) = offset.checked_add(len).filter(|&e| e <= mailbox.len())
                        else {
                            return;
                        };
                        // SAFETY: in the scratch space of our own mapping (checked), which
                        // the coordinator reads only after the answer.
                        unsafe {
                            std::ptr::write_bytes(mailbox.as_ptr().add(offset), 0, end - offset)
                        };
                        mailbox.as_ptr() as u64 + offset as u64
                    }
                    _ => value,
                });
            }
            let start = mailbox.word64(START).load(Ordering::Relaxed);
            let end = mailbox.word64(END).load(Ordering::Relaxed);
            self.faults.before_kernel();
            let started = Instant::now();
            // SAFETY: the coordinator checked the step's buffers against the manifest and
            // gives concurrent packets disjoint items; the buffers are mapped for the
            // whole job, `sum` accumulators are this packet's alone.
            let outcome = if block.len() == code.spec().args.len() {
                unsafe { code.run_packet(start, end, &block) }
            } else {
                return;
            };
            let elapsed = started.elapsed();
            mailbox
                .word64(COMPUTE_NS)
                .store(elapsed.as_nanos() as u64, Ordering::Relaxed);
            match outcome {
                Ok(()) => mailbox.word(STATUS).store(0, Ordering::Relaxed),
                Err(panic) => {
                    mailbox.word(STATUS).store(1, Ordering::Relaxed);
                    mailbox
                        .word(PANIC_CODE)
                        .store(panic.code as u32, Ordering::Relaxed);
                }
            }
            mailbox.word(FINISHED).store(sequence, Ordering::Release);
            let completions = self.control.word(COMPLETIONS);
            completions.fetch_add(1, Ordering::SeqCst);
            if self.control.word(COORDINATOR_ASLEEP).load(Ordering::SeqCst) != 0 {
                futex_wake(completions);
            }
        }
    }
}

/// Waits until the mailbox holds a request after `last`; returns its sequence number.
fn wait_for_request(mailbox: &SharedMemory, last: u32) -> u32 {
    let posted = mailbox.word(POSTED);
    let started = Instant::now();
    loop {
        let now = posted.load(Ordering::Acquire);
        if now != last {
            return now;
        }
        if started.elapsed() < SPIN {
            yield_now();
            continue;
        }
        let asleep = mailbox.word(WORKER_ASLEEP);
        asleep.store(1, Ordering::SeqCst);
        if posted.load(Ordering::SeqCst) == last {
            futex_wait(posted, last, Duration::from_secs(1));
        }
        asleep.store(0, Ordering::SeqCst);
    }
}

/// Gives the CPU to another runnable thread while polling: a job has as many workers as
/// cores, so a poller that kept its core would hold up the worker or coordinator that
/// has work (the sandbox allows `sched_yield`).
fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`.
        let made = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(made, 0, "{}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptors, ours.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_message_carries_its_bytes_and_descriptors_and_a_closed_peer_reads_as_empty() {
        let (a, b) = pair();
        let files: Vec<SharedMemory> = (0..3)
            .map(|n| SharedMemory::create(c"test", 4096 * (n + 1)).expect("memfd"))
            .collect();
        let fds: Vec<RawFd> = files.iter().map(|f| f.fd().as_raw_fd()).collect();
        send_message(a.as_raw_fd(), b"{\"set\":\"up\"}", &fds).expect("send");
        let (bytes, received) = receive_message(b.as_raw_fd(), 1024).expect("receive");
        assert_eq!(bytes, b"{\"set\":\"up\"}");
        assert_eq!(received.len(), 3);
        for (file, fd) in files.iter().zip(received) {
            let sent = std::fs::File::from(file.fd().try_clone_to_owned().expect("dup"));
            let got = std::fs::File::from(fd);
            assert_eq!(
                sent.metadata().expect("stat").ino(),
                got.metadata().expect("stat").ino()
            );
        }
        drop(a);
        let (bytes, received) = receive_message(b.as_raw_fd(), 1024).expect("end");
        assert!(bytes.is_empty() && received.is_empty());
    }

    #[test]
    fn a_message_longer_than_the_reader_takes_is_an_error_not_a_cut() {
        let (a, b) = pair();
        send_message(a.as_raw_fd(), &[7u8; 100], &[]).expect("send");
        assert!(receive_message(b.as_raw_fd(), 10).is_err());
    }
}
