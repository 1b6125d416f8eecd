//! The probe's commands: the work a kernel worker does, and the things a kernel must not.

use std::collections::HashMap;
use std::ffi::CString;
use std::hint::black_box;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::opencl;

/// What the probe holds while it serves: a mapping past the end of a memfd (touching it is
/// a `SIGBUS`), a loaded native kernel, an OpenCL kernel.
pub struct State {
    beyond_end: *mut u8,
    _memfd: OwnedFd,
    kernel: Option<Kernel>,
    pub opencl: Option<opencl::Runner>,
}

/// A native kernel loaded from a shared object, the way node-jit loads its code: copied
/// into a sealed memfd and opened with dlopen through `/proc/self/fd`.
struct Kernel {
    entry: extern "C" fn(i64) -> i64,
    _library: *mut libc::c_void,
    _file: OwnedFd,
}

impl State {
    /// Sets up before the sandbox: the `SIGBUS` mapping and, if given, the kernel library.
    pub fn prepare(kernel: Option<&str>) -> Result<State, String> {
        let page = 4096;
        let memfd = memfd("probe-bus")?;
        // SAFETY: ftruncate and mmap on our own descriptor; the second page lies past the
        // end of the file.
        let beyond_end = unsafe {
            if libc::ftruncate(memfd.as_raw_fd(), page as i64) != 0 {
                return Err(format!("ftruncate: {}", io::Error::last_os_error()));
            }
            let map = libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            );
            if map == libc::MAP_FAILED {
                return Err(format!("mmap: {}", io::Error::last_os_error()));
            }
            map.cast::<u8>().add(page)
        };
        let kernel = kernel.map(load_kernel).transpose()?;
        Ok(State {
            beyond_end,
            _memfd: memfd,
            kernel,
            opencl: None,
        })
    }
}

fn memfd(name: &str) -> Result<OwnedFd, String> {
    let name = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: a valid name and flags.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn load_kernel(path: &str) -> Result<Kernel, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let file = memfd("probe-kernel")?;
    let mut writer = std::fs::File::from(file.try_clone().map_err(|e| e.to_string())?);
    writer.write_all(&bytes).map_err(|e| e.to_string())?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(format!("seal: {}", io::Error::last_os_error()));
    }
    let name =
        CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| e.to_string())?;
    // SAFETY: the test's kernel library has no initializers that matter.
    let library = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if library.is_null() {
        return Err(format!("dlopen {path} failed"));
    }
    // SAFETY: a valid handle and name.
    let symbol = unsafe { libc::dlsym(library, c"probe_kernel".as_ptr()) };
    if symbol.is_null() {
        return Err(format!("{path} has no probe_kernel"));
    }
    // SAFETY: the test's library defines `long probe_kernel(long)`.
    let entry =
        unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn(i64) -> i64>(symbol) };
    Ok(Kernel {
        entry,
        _library: library,
        _file: file,
    })
}

/// Serves commands, one per line, until `exit` or the end of input:
///
/// - work a worker does: `compute N` (threads, locks, allocation, a hash map, time),
///   `echo TEXT`, `panic` (caught, as node-jit catches kernel panics), `kernel N` (calls
///   the loaded native kernel), `opencl N` (runs the OpenCL kernel on N items), `spin N`
///   (N rounds of arithmetic, for measurements), `alloc N` (maps and touches N MiB, says
///   whether the mapping failed);
/// - things a kernel must not do: `openat`, `open-file PATH`, `create-file PATH`,
///   `socket`, `execve`, `fork`, `kill-parent`;
/// - traps: `segv`, `bus`, `fpe`, `ill`, `abort`, `overflow` (this thread),
///   `overflow-thread` (a thread from `sandbox::spawn_with_stack`), `overflow-std-thread`
///   (a plain `std::thread`).
pub fn serve(state: &mut State, input: impl BufRead, mut out: impl Write) -> io::Result<()> {
    for line in input.lines() {
        let line = line?;
        let (command, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let number = rest.trim().parse::<u64>().unwrap_or(0);
        let answer = match command {
            "compute" => format!("sum {}", compute(number as usize)),
            "spin" => format!("spun {}", spin(number)),
            "echo" => format!("echo {rest}"),
            "alloc" => allocate(number << 20),
            "panic" => {
                let caught = std::panic::catch_unwind(|| panic!("a kernel panicked"));
                format!("caught {}", caught.is_err())
            }
            "kernel" => match &state.kernel {
                Some(kernel) => match rest.trim().parse::<i64>() {
                    Ok(argument) => format!("kernel {}", (kernel.entry)(argument)),
                    Err(_) => format!("kernel needs a number, not {rest:?}"),
                },
                None => "no kernel loaded".into(),
            },
            "opencl" => match &mut state.opencl {
                Some(runner) => match runner.run(number as usize, 3) {
                    Ok(sum) => format!("opencl {sum}"),
                    Err(e) => format!("opencl error {e}"),
                },
                None => "no OpenCL kernel".into(),
            },
            "openat" => {
                // SAFETY: a raw openat of a valid path.
                let fd = unsafe {
                    libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        c"/etc/hostname".as_ptr(),
                        libc::O_RDONLY,
                    )
                };
                format!("openat returned {fd}")
            }
            "open-file" => match std::fs::File::open(rest) {
                Ok(_) => "opened".into(),
                Err(e) => format!("open failed: {e}"),
            },
            "create-file" => match std::fs::File::create(rest) {
                Ok(_) => "created".into(),
                Err(e) => format!("create failed: {e}"),
            },
            "socket" => {
                // SAFETY: plain socket call.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                format!("socket returned {fd}")
            }
            "execve" => {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                // SAFETY: valid, null-terminated argument and environment arrays.
                let rc =
                    unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
                format!("execve returned {rc}")
            }
            "fork" => {
                // SAFETY: the child, if any, exits at once.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: _exit in the child.
                    unsafe { libc::_exit(0) };
                }
                format!("fork returned {pid}")
            }
            "kill-parent" => {
                // SAFETY: kill with signal 0 only checks whether we may signal.
                let rc = unsafe { libc::kill(libc::getppid(), 0) };
                format!("kill returned {rc}")
            }
            "segv" => {
                // SAFETY: none: this is the invalid access the command asks for.
                unsafe { std::ptr::write_volatile(black_box(16usize) as *mut u8, 1) };
                "survived".into()
            }
            "bus" => {
                // SAFETY: none: past the end of the memfd, a SIGBUS.
                unsafe { std::ptr::write_volatile(state.beyond_end, 1) };
                "survived".into()
            }
            "fpe" => {
                divide_by_zero();
                "survived".into()
            }
            "ill" => {
                illegal_instruction();
                "survived".into()
            }
            "abort" => std::process::abort(),
            "overflow" => format!("depth {}", recurse(black_box(0))),
            "overflow-thread" => {
                let thread = sandbox::spawn_with_stack("probe-small-stack", 256 << 10, || {
                    recurse(black_box(0))
                })?;
                format!("depth {:?}", thread.join().ok())
            }
            "overflow-std-thread" => {
                let thread = std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn(|| recurse(black_box(0)))?;
                format!("depth {:?}", thread.join().ok())
            }
            "exit" => return Ok(()),
            other => format!("unknown command {other}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

/// What a worker does around a packet: allocate storage (mmap, mremap as it grows), start
/// threads that share the work (clone, futex), hand a result over with a condition
/// variable, use a hash map (getrandom), read the clock.
fn compute(items: usize) -> u64 {
    let started = Instant::now();
    let mut data: Vec<u64> = Vec::new();
    for i in 0..items as u64 {
        data.push(i);
    }
    let mut seen: HashMap<usize, usize> = HashMap::new();
    seen.insert(items, 1);
    let total = Mutex::new(0u64);
    std::thread::scope(|scope| {
        for chunk in data.chunks(items.div_ceil(2).max(1)) {
            let total = &total;
            scope.spawn(move || {
                let part: u64 = chunk.iter().sum();
                if let Ok(mut t) = total.lock() {
                    *t += part;
                }
            });
        }
    });
    let handoff = Arc::new((Mutex::new(None), Condvar::new()));
    let other = Arc::clone(&handoff);
    let helper = sandbox::spawn_with_stack("probe-helper", 512 << 10, move || {
        let (slot, ready) = &*other;
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(1u64);
            ready.notify_one();
        }
    });
    let mut extra = 0;
    if let Ok(helper) = helper {
        let (slot, ready) = &*handoff;
        if let Ok(guard) = slot.lock() {
            if let Ok(guard) = ready.wait_while(guard, |value| value.is_none()) {
                extra = guard.unwrap_or(0);
            }
        }
        let _ = helper.join();
    }
    black_box(started.elapsed());
    let total = total.into_inner().unwrap_or(0);
    total + extra - 1 + seen.len() as u64 - 1
}

/// Maps `bytes` anonymous bytes, touches them and unmaps them: what a packet's storage
/// does, and what an address-space limit refuses.
fn allocate(bytes: u64) -> String {
    let Ok(len) = usize::try_from(bytes) else {
        return "alloc failed: too big".into();
    };
    // SAFETY: an anonymous private mapping, touched within bounds, then unmapped.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if map == libc::MAP_FAILED {
            return format!("alloc failed: {}", io::Error::last_os_error());
        }
        let bytes = map.cast::<u8>();
        let mut at = 0;
        while at < len {
            std::ptr::write_volatile(bytes.add(at), 1);
            at += 4096;
        }
        libc::munmap(map, len);
    }
    "allocated".into()
}

/// Arithmetic without system calls: the compute part of a kernel.
fn spin(rounds: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15u64);
    for i in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    x
}

#[allow(unconditional_recursion)] // the point: it ends only by overflowing the stack
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(black_box(depth + 1)).wrapping_add(frame[7])
}

fn divide_by_zero() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: none: a division by zero, the trap the command asks for.
    unsafe {
        std::arch::asm!("xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _);
    }
    // Arm does not trap on integer division by zero: raise the signal instead.
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: raise on this process.
    unsafe {
        libc::raise(libc::SIGFPE);
    }
}

fn illegal_instruction() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: none: an undefined instruction, the trap the command asks for.
    unsafe {
        std::arch::asm!("ud2");
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        std::arch::asm!("udf #0");
    }
}
