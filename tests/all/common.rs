//! Helpers shared by the integration tests: running the real `offload` binary and reading
//! and writing buffer files (raw little-endian arrays, the CLI's format).

use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Absolute path of a file in this repository, e.g. `repo_path("examples/saxpy/kernel.rs")`.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The code cache the tests' `offload` processes share, under Cargo's scratch folder
/// for integration tests.
pub fn test_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("offload-cache")
}

/// Runs the `offload` binary built for these tests with `args` and returns its output,
/// whatever its exit status.
pub fn offload<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    Command::new(env!("CARGO_BIN_EXE_offload"))
        // Tests never touch the user's cache; `--cache-dir` in `args` still wins.
        .env("OFFLOAD_CACHE_DIR", test_cache_dir())
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start offload {args:?}: {e}"))
}

/// Like [`offload`], but fails the test (showing the command, stdout and stderr) unless
/// the command succeeded.
pub fn offload_ok<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = offload(&args);
    assert!(
        out.status.success(),
        "offload {args:?} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    out
}

/// `offload package SOURCE --manifest MANIFEST -o DIR/NAME.okp`; returns the package path.
pub fn package(source: &Path, manifest: &Path, dir: &Path, name: &str) -> PathBuf {
    let pkg = dir.join(format!("{name}.okp"));
    offload_ok([
        OsStr::new("package"),
        source.as_os_str(),
        OsStr::new("--manifest"),
        manifest.as_os_str(),
        OsStr::new("-o"),
        pkg.as_os_str(),
    ]);
    pkg
}

/// `offload package examples/saxpy/kernel.rs -o DIR/saxpy.okp` (its manifest found next
/// to the source); returns the package path.
pub fn saxpy_package(dir: &Path) -> PathBuf {
    let pkg = dir.join("saxpy.okp");
    offload_ok([
        OsStr::new("package"),
        repo_path("examples/saxpy/kernel.rs").as_os_str(),
        OsStr::new("-o"),
        pkg.as_os_str(),
    ]);
    pkg
}

/// Command line of one `offload run`, built argument by argument.
pub struct Run {
    args: Vec<OsString>,
}

impl Run {
    /// `offload run PKG --kernel KERNEL --items ITEMS`.
    pub fn new(pkg: &Path, kernel: &str, items: u64) -> Self {
        let args = vec![
            "run".into(),
            pkg.into(),
            "--kernel".into(),
            kernel.into(),
            "--items".into(),
            items.to_string().into(),
        ];
        Run { args }
    }

    /// `--arg NAME=VALUE`. Floats should be passed as Rust floats: their `Display` is the
    /// shortest text that parses back to the same value, so the kernel sees exactly it.
    pub fn arg(mut self, name: &str, value: impl Display) -> Self {
        self.args.push("--arg".into());
        self.args.push(format!("{name}={value}").into());
        self
    }

    /// A buffer flag: `--ACCESS NAME=FILE` with `ACCESS` one of `in`, `inout`, `out`, `sum`.
    pub fn buffer(mut self, access: &str, name: &str, file: &Path) -> Self {
        let mut binding = OsString::from(format!("{name}="));
        binding.push(file);
        self.args.push(format!("--{access}").into());
        self.args.push(binding);
        self
    }

    /// Appends further flags as they are (e.g. `--cluster --peer ADDR`).
    pub fn flags<A: Into<OsString>>(mut self, flags: impl IntoIterator<Item = A>) -> Self {
        self.args.extend(flags.into_iter().map(Into::into));
        self
    }

    /// Runs it and returns the output, whatever the exit status.
    pub fn output(self) -> Output {
        offload(&self.args)
    }

    /// Runs it and fails the test unless it succeeded.
    pub fn ok(self) -> Output {
        offload_ok(&self.args)
    }
}

/// Element types of buffer files, converted from and to little-endian bytes.
///
/// Implemented only for the primitive integers and floats of the manifest's types: the
/// fast paths of [`write_le`] and [`read_le`] rely on them being plain bytes in memory.
pub trait Le: Copy {
    /// Size of one element in bytes.
    const SIZE: usize;
    /// Appends the element's little-endian bytes.
    fn put(self, out: &mut Vec<u8>);
    /// Reads one element from exactly `SIZE` little-endian bytes.
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! impl_le {
    ($($t:ty),*) => {$(
        impl Le for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("exactly SIZE bytes"))
            }
        }
    )*};
}
impl_le!(u8, i32, u32, i64, u64, f32, f64);

/// Fails the test if a staged output (`.offload-*`) is left in `dir`; `what` names the
/// case in the message.
pub fn assert_no_staged_files(dir: &Path, what: &str) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .expect("the folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".offload-"))
        .collect();
    assert!(left.is_empty(), "{what}: staged files left: {left:?}");
}

/// Writes `data` to `path` as a raw little-endian array.
pub fn write_le<T: Le>(path: &Path, data: &[T]) {
    let bytes: Vec<u8> = if cfg!(target_endian = "little") {
        // Memory already holds the file's bytes; converting element by element would cost
        // seconds per test in unoptimized test builds.
        // SAFETY: `Le` is only implemented for primitive integers and floats, which have no
        // padding and no invalid bit patterns, so their memory is plain initialized bytes.
        unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        }
        .to_vec()
    } else {
        let mut bytes = Vec::with_capacity(data.len() * T::SIZE);
        for &v in data {
            v.put(&mut bytes);
        }
        bytes
    };
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Reads a raw little-endian array from `path`, failing the test if the file is missing
/// or its size is not a whole number of elements.
pub fn read_le<T: Le>(path: &Path) -> Vec<T> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert_eq!(
        bytes.len() % T::SIZE,
        0,
        "{} holds {} bytes, not a whole number of {}-byte elements",
        path.display(),
        bytes.len(),
        T::SIZE
    );
    if cfg!(target_endian = "little") {
        let mut out = Vec::<T>::with_capacity(bytes.len() / T::SIZE);
        // SAFETY: `out` has room for `bytes.len() / T::SIZE` elements, every bit pattern is
        // a valid `T` (primitive integers and floats only), and on a little-endian host the
        // file's bytes are the elements' memory; `set_len` follows the full copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                out.as_mut_ptr().cast::<u8>(),
                bytes.len(),
            );
            out.set_len(bytes.len() / T::SIZE);
        }
        out
    } else {
        bytes.chunks_exact(T::SIZE).map(T::get).collect()
    }
}

/// Where skipped tests record why; `scripts/test.sh` prints it after the run, since the
/// test harness hides the output of tests that pass.
pub fn skip_log() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt")
}

/// Records that `test` cannot run here because of `reason`, loudly: under CI
/// (`CI=true`, which `.ci/run` sets) it fails instead, since CI machines are set up to run
/// every test.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason}");
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{line} (CI=true: every test must run)"
    );
    eprintln!("{line}");
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(skip_log())
    {
        let _ = writeln!(file, "{line}");
    }
}

/// Whether this process runs as root (tests that hand files to another user need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Makes the process `command` starts die when the test thread that starts it ends, so
/// a test that crashes (or a test process that is killed) leaves no node running. A node
/// is always started from the thread of the test that owns it.
pub fn die_with_test(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook only makes async-signal-safe calls (see `die_with_parent`).
    unsafe { command.pre_exec(cluster_node::node::die_with_parent()) }
}

/// Waits until `condition` holds, checking it each time `path` changes (a file written
/// or an entry made in a folder: inotify) or, with `pid`, when that process ends
/// (pidfd), for at most `limit`; returns whether it came true. The condition is checked
/// once the watch is set, so a change just before the call is not missed.
pub fn wait_for_change(
    path: &Path,
    pid: Option<u32>,
    limit: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let deadline = std::time::Instant::now() + limit;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
    // SAFETY: plain system calls on descriptors this function owns and closes.
    unsafe {
        let watch = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
        assert!(watch >= 0, "inotify: {}", std::io::Error::last_os_error());
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
        let watched = libc::inotify_add_watch(watch, name.as_ptr(), mask);
        assert!(
            watched >= 0,
            "cannot watch {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        let process = pid.map_or(-1, |pid| {
            libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as libc::c_int
        });
        let mut fds = vec![libc::pollfd {
            fd: watch,
            events: libc::POLLIN,
            revents: 0,
        }];
        if process >= 0 {
            fds.push(libc::pollfd {
                fd: process,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let held = loop {
            if condition() {
                break true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break false;
            }
            let wait_ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms);
            if fds.get(1).is_some_and(|p| p.revents != 0) {
                // The process ended: one last look, then no more waiting on it.
                break condition();
            }
            let mut events = [0u8; 4096];
            while libc::read(watch, events.as_mut_ptr().cast(), events.len()) > 0 {}
        };
        if process >= 0 {
            libc::close(process);
        }
        libc::close(watch);
        held
    }
}

/// Waits until every process of `pids` has ended (pidfd), for at most `limit`; returns
/// whether they all did.
pub fn wait_for_exits(pids: &[u32], limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    pids.iter().all(|&pid| {
        // SAFETY: pidfd_open, poll and close on a descriptor this function owns.
        unsafe {
            let fd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as libc::c_int;
            if fd < 0 {
                // ESRCH: already gone (and reaped).
                return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let wait_ms = left.as_millis().clamp(0, i32::MAX as u128) as libc::c_int;
            let ended = libc::poll(&mut poll, 1, wait_ms) > 0;
            libc::close(fd);
            ended
        }
    })
}

/// Waits until `condition` holds, checking it every 10 ms, for at most `limit`; returns
/// whether it came true. Only for conditions no event announces (a process's CPU time,
/// a node's status answer); waits on files and processes use [`wait_for_change`] and
/// [`wait_for_exits`].
pub fn wait_until(limit: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !condition() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// Runs `command` to completion (reading its output as it comes, so a chatty child never
/// blocks on a full pipe), killing it and failing the test past `limit`.
pub fn run_bounded(mut command: Command, limit: std::time::Duration) -> Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|e| panic!("{command:?}: {e}")),
        Err(_) => {
            // SAFETY: kill on a process id is a plain syscall; a reaped id is harmless here
            // because the waiting thread holds the child until it exits.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{command:?} did not finish within {limit:?}");
        }
    }
}

/// Runs a one-step job of `kernel` on the local node of `engine`, with `args` holding
/// the inputs before and the results after: the API's `Job::kernel` and `Cluster::run`.
pub fn run_values(
    engine: &offload::Engine,
    package: &offload::Package,
    kernel: &str,
    items: u64,
    args: &mut Vec<offload::ArgValue>,
    options: &offload::Options,
) -> Result<offload::Report, offload::LaunchError> {
    let mut job = offload::Job::kernel(
        std::sync::Arc::new(package.clone()),
        kernel,
        items,
        args.clone(),
    )?;
    let report = offload::Cluster::from_engine(engine.clone()).run(&mut job, options)?;
    *args = job.into_values();
    Ok(report)
}
