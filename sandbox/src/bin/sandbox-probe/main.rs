//! `sandbox-probe`: a worker-like program for the sandbox crate's tests and measurements.
//!
//! - `sandbox-probe support` prints what this kernel offers the sandbox.
//! - `sandbox-probe worker [options]` prepares like a kernel worker (optionally loads a
//!   native kernel from a shared object through a sealed memfd, or an OpenCL kernel),
//!   applies the sandbox, prints `ready <report>`, then serves one command per line on
//!   stdin (see [`commands::serve`]) and answers on stdout, as a worker serves packets.
//! - `sandbox-probe orphan` checks that a sandboxed worker dies with its parent: it
//!   starts a parent that starts a worker and exits, adopts the orphan (child subreaper)
//!   and prints how it ended.

mod commands;
mod opencl;

use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, ExitCode, Stdio};

use sandbox::{describe_exit, Config, Fault};

/// What `worker` was asked to do before applying the sandbox.
struct WorkerOptions {
    sandboxed: bool,
    config: Config,
    thread_before: bool,
    kernel: Option<String>,
    opencl: bool,
    /// Descriptors to hold open when the sandbox is applied, as a worker holds its
    /// shared buffers.
    held_descriptors: u64,
}

fn parse_worker(args: &[String]) -> Result<WorkerOptions, String> {
    let mut options = WorkerOptions {
        sandboxed: true,
        config: Config::cpu(),
        thread_before: false,
        kernel: None,
        opencl: false,
        held_descriptors: 0,
    };
    let mut args = args.iter();
    let number = |value: Option<&String>, flag: &str| -> Result<u64, String> {
        value
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-sandbox" => options.sandboxed = false,
            "--opencl" => {
                options.opencl = true;
                options.config = Config::opencl();
            }
            // The OpenCL profile without opening a device.
            "--opencl-profile" => options.config = Config::opencl(),
            "--report-fd" => {
                options.config = options.config.report_fd(number(args.next(), arg)? as i32)
            }
            "--parent" => {
                options.config = options
                    .config
                    .expected_parent(number(args.next(), arg)? as u32)
            }
            "--processes" => {
                options.config = options.config.process_limit(number(args.next(), arg)?)
            }
            "--address-space" => {
                options.config = options
                    .config
                    .address_space_limit(number(args.next(), arg)?)
            }
            "--without-seccomp" => options.config = options.config.without_seccomp(),
            "--without-landlock" => options.config = options.config.without_landlock(),
            "--readable" => {
                let path = args.next().ok_or("--readable needs a path")?;
                options.config = options.config.readable_path(path);
            }
            "--allow" => {
                let name = args.next().ok_or("--allow needs a system call name")?;
                options.config = options.config.allow_syscall(name);
            }
            "--thread-before" => options.thread_before = true,
            "--hold-descriptors" => options.held_descriptors = number(args.next(), arg)?,
            "--kernel" => {
                options.kernel = Some(args.next().ok_or("--kernel needs a path")?.clone())
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("support") => {
            println!("{}", sandbox::support());
            Ok(())
        }
        Some("worker") => parse_worker(&args[1..]).and_then(worker),
        Some("orphan") => orphan(),
        Some("middle") => middle(&args[1..]),
        _ => Err("usage: sandbox-probe support | worker [options] | orphan".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("error {message}");
            ExitCode::from(2)
        }
    }
}

fn worker(options: WorkerOptions) -> Result<(), String> {
    // What a worker should do too: std's default hook may read the executable's debug
    // information for a backtrace (`RUST_BACKTRACE`), which opens files.
    std::panic::set_hook(Box::new(|info| eprintln!("probe: {info}")));
    let mut state = commands::State::prepare(options.kernel.as_deref())?;
    if options.opencl {
        for (name, value) in sandbox::OPENCL_WORKER_ENV {
            if std::env::var_os(name).is_none() {
                // Single-threaded still: no driver has been loaded yet.
                std::env::set_var(name, value);
            }
        }
        state.opencl = Some(opencl::Runner::open_and_warm_up()?);
    }
    let mut held = Vec::new();
    for _ in 0..options.held_descriptors {
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor of stdin, owned here.
        let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!(
                "cannot hold a descriptor: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fresh and ours.
        held.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    if options.thread_before {
        // A thread that runs (and stays) before the sandbox is applied.
        let (started, is_started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = started.send(());
            loop {
                std::thread::park();
            }
        });
        let _ = is_started.recv();
    }
    let report = if options.sandboxed {
        sandbox::apply(&options.config)
            .map_err(|e| e.to_string())?
            .to_string()
    } else {
        "unsandboxed".to_string()
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready {report}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    let stdin = std::io::stdin();
    commands::serve(&mut state, stdin.lock(), out).map_err(|e| e.to_string())
}

/// Starts `middle`, which starts a sandboxed worker and exits; adopts the worker and says
/// how it ended. Exit 0 when it died of `SIGKILL` (its parent's death), 1 otherwise.
fn orphan() -> Result<(), String> {
    // SAFETY: plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "cannot become a subreaper: {}",
            std::io::Error::last_os_error()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // The worker's stdin is this pipe, held open here: the worker does not see an end of
    // input when its parent dies, only the signal.
    let mut middle = Command::new(&exe)
        .arg("middle")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the middle process: {e}"))?;
    let _worker_input = middle.stdin.take();
    let mut lines = std::io::BufReader::new(middle.stdout.take().ok_or("no pipe")?).lines();
    let line = lines
        .next()
        .ok_or("the middle process said nothing")?
        .map_err(|e| e.to_string())?;
    let pid: i32 = line
        .strip_prefix("worker ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("the middle process said {line:?}"))?;
    let middle_status = middle.wait().map_err(|e| e.to_string())?;
    println!("middle {}", describe_exit(middle_status, None));
    // The worker is our child now. Wait for its end, for a minute at most, so that a
    // worker that survives its parent fails the check instead of hanging it.
    // SAFETY: pidfd_open on a child of ours, which cannot be reaped by anyone else.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid descriptor.
    let ready = unsafe { libc::poll(&mut poll, 1, 60_000) };
    if ready == 0 {
        // SAFETY: kill our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: waitpid on our child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::ExitStatus::from_raw(status);
    if ready == 0 {
        println!("worker survived its parent for a minute");
        std::process::exit(1);
    }
    println!("worker {}", describe_exit(status, None::<Fault>));
    if status.signal() == Some(libc::SIGKILL) {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// The worker's parent in `orphan`: starts it, passes its pid on once it is sandboxed,
/// and exits without waiting for it.
fn middle(_args: &[String]) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut worker = Command::new(&exe)
        .args(["worker", "--parent", &std::process::id().to_string()])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the worker: {e}"))?;
    let mut lines = std::io::BufReader::new(worker.stdout.take().ok_or("no pipe")?).lines();
    match lines.next() {
        Some(Ok(line)) if line.starts_with("ready ") => {}
        other => return Err(format!("the worker said {other:?}")),
    }
    println!("worker {}", worker.id());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Exit now, leaving the worker running: it must die with us.
    std::process::exit(0)
}
