//! The sandbox of offload's kernel workers: what a worker process applies to itself after
//! its kernel code is loaded and before that code runs, so that a kernel can harm neither
//! the machine nor the node.
//!
//! [`apply`] takes a [`Config`] (a [`Profile`]: [`Config::cpu`] for JIT workers,
//! [`Config::opencl`] for OpenCL workers) and, in this order: asks for `SIGKILL` when the
//! parent dies (and checks the parent did not die already), moves the process into its own
//! process group, sets resource limits (open files, core dumps off, address space if
//! configured), installs the signal handlers that report a forbidden system call or a stack
//! overflow, sets no-new-privileges, restricts files with Landlock (the CPU profile can
//! open no file at all) and installs a seccomp-bpf allow-list (every other call traps).
//! It returns a [`Report`] of what was enforced.
//!
//! A worker that then makes a forbidden call writes a [`Fault`] record to the report
//! descriptor and exits with [`FORBIDDEN_SYSCALL_EXIT`]; the node reads its wait status
//! and the record and says what happened with [`WorkerEnd`] (`kernel `K` made a forbidden
//! system call (openat)`, `kernel `K` crashed: SIGSEGV (invalid memory access)`).
//! [`support`] tells a node, before it serves, whether this kernel has seccomp and Landlock.
//!
//! ```no_run
//! // In the worker: load the kernel code first (dlopen of a sealed memfd), then:
//! let report = sandbox::apply(&sandbox::Config::cpu().expected_parent(1234).report_fd(3))?;
//! eprintln!("{report}");
//! // ... serve packets: read requests, run kernels, write results.
//! # Ok::<(), sandbox::SandboxError>(())
//! ```
//!
//! What the sandbox promises and what it does not is in `docs/sandbox.md`.

mod exit;
mod files;
mod filter;
mod line;
mod names;
mod process;
mod signals;
mod support;
mod thread;

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;

pub use exit::{
    describe_exit, describe_signal, Fault, WorkerEnd, FORBIDDEN_SYSCALL_EXIT, STACK_OVERFLOW_EXIT,
};
pub use files::LandlockOutcome;
pub use filter::profile_syscalls;
pub use line::SignalSafeLine;
pub use names::{syscall_name, syscall_number, Arch};
pub use process::{die_with_parent_hook, read_report, report_fd_hook, report_pipe};
pub use support::{support, Support, LANDLOCK_ALL_THREADS_ABI};
pub use thread::{recognise_stack_overflow, spawn_with_stack};

/// Which system calls and files a worker keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// A JIT worker: I/O on the descriptors it holds, memory, threads, time; no file can be
    /// opened (Landlock without rules, and no `open`/`openat` in the filter).
    Cpu,
    /// An OpenCL worker: the CPU profile plus what a driver needs at run time (`openat` of
    /// its files under read-only Landlock rules, `ioctl` on devices, memfds). Still no
    /// `execve`, no new processes, no network.
    OpenCl,
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Cpu => "cpu",
            Profile::OpenCl => "opencl",
        })
    }
}

/// Environment an OpenCL worker must be started with (before its driver loads). PoCL
/// otherwise compiles a work-group function for each new packet size at run time, and
/// links it by running `ld`, which the sandbox forbids; with specialisation off it builds
/// one generic function per kernel, at the worker's warm-up run before [`apply`].
pub const OPENCL_WORKER_ENV: &[(&str, &str)] = &[("POCL_WORK_GROUP_SPECIALIZATION", "0")];

/// How many descriptor numbers the open-files limit leaves free above the highest one open
/// when the sandbox is applied (see [`Config::max_open_files`]).
pub const SANDBOX_SPARE_DESCRIPTORS: u64 = 16;

/// How to sandbox a worker: a profile and its settings. Build one with [`Config::cpu`] or
/// [`Config::opencl`]; every setter says its default.
#[derive(Clone, Debug)]
pub struct Config {
    profile: Profile,
    expected_parent: Option<u32>,
    report_fd: Option<RawFd>,
    address_space: Option<u64>,
    open_files: u64,
    processes: Option<u64>,
    allow_existing_threads: bool,
    readable: Vec<PathBuf>,
    devices: Vec<PathBuf>,
    extra_syscalls: Vec<String>,
    seccomp: bool,
    landlock: bool,
}

impl Config {
    /// The CPU (JIT) worker's sandbox: no file can be opened.
    pub fn cpu() -> Config {
        Config {
            profile: Profile::Cpu,
            expected_parent: None,
            report_fd: None,
            address_space: None,
            open_files: 64,
            processes: None,
            allow_existing_threads: false,
            readable: Vec::new(),
            devices: Vec::new(),
            extra_syscalls: Vec::new(),
            seccomp: true,
            landlock: true,
        }
    }

    /// The OpenCL worker's sandbox: read access under the system's library folders,
    /// `/etc/OpenCL`, the CPU information in `/sys`, and the PoCL kernel cache
    /// (`$POCL_CACHE_DIR`, else `$XDG_CACHE_HOME/pocl`, else `~/.cache/pocl`); read, write
    /// and ioctl on GPU device files (`/dev/dri`, `/dev/kfd`, `/dev/nvidia*`), those that
    /// exist. Threads the driver started before
    /// [`apply`] are allowed (see [`Config::allow_existing_threads`]).
    pub fn opencl() -> Config {
        let mut readable: Vec<PathBuf> = [
            "/usr/lib",
            "/usr/lib64",
            "/usr/local/lib",
            "/lib",
            "/lib64",
            "/etc/OpenCL",
            "/sys/devices/system/cpu",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        if let Some(cache) = pocl_cache_dir() {
            readable.push(cache);
        }
        Config {
            profile: Profile::OpenCl,
            allow_existing_threads: true,
            readable,
            devices: gpu_device_files(),
            ..Config::cpu()
        }
    }

    /// The parent this worker must have (the node's pid): if the parent is another
    /// process already, the node died and [`apply`] fails with
    /// [`SandboxError::ParentGone`]. Default: the parent at the time of the call, which
    /// misses a parent that died before it.
    pub fn expected_parent(mut self, pid: u32) -> Config {
        self.expected_parent = Some(pid);
        self
    }

    /// The descriptor (a pipe the node reads) that gets a [`Fault`] record when the worker
    /// makes a forbidden call or overflows its stack. It must stay open as long as the
    /// worker runs. Default: none (the exit code still tells, without the call's name).
    pub fn report_fd(mut self, fd: RawFd) -> Config {
        self.report_fd = Some(fd);
        self
    }

    /// Limits the address space (`RLIMIT_AS`) to `bytes`: mappings beyond fail, and
    /// allocation failure aborts the worker. Count generously: every thread reserves its
    /// stack and the allocator reserves 64 MiB arenas. Default: no limit.
    pub fn address_space_limit(mut self, bytes: u64) -> Config {
        self.address_space = Some(bytes);
        self
    }

    /// Limits descriptor numbers to below `count` (`RLIMIT_NOFILE`; descriptors already
    /// open above stay usable). Default: 64. A worker that holds more descriptors when the
    /// sandbox is applied (one per shared buffer, say) gets a limit
    /// [`SANDBOX_SPARE_DESCRIPTORS`] above its highest one instead: the sandbox itself
    /// needs a few new descriptors (Landlock's ruleset and rules) after the limit is set.
    pub fn max_open_files(mut self, count: u64) -> Config {
        self.open_files = count;
        self
    }

    /// Limits the processes and threads of the worker's real user to `count`
    /// (`RLIMIT_NPROC`). The kernel counts every task of that user on the machine, threads
    /// included, and does not enforce it for root, so this is for workers that run as a
    /// user of their own; new processes are forbidden by the seccomp filter either way
    /// (`fork`, `vfork`, `clone` without `CLONE_THREAD`; `clone3` answers `ENOSYS`).
    /// Default: no limit.
    pub fn process_limit(mut self, count: u64) -> Config {
        self.processes = Some(count);
        self
    }

    /// Whether [`apply`] may proceed while other threads run. On kernels before Landlock
    /// ABI 8, Landlock restricts only the calling thread and the threads it starts later,
    /// so a thread started before stays free to open files (seccomp covers every thread
    /// either way). Default: refused for [`Profile::Cpu`] (a JIT worker has no reason to
    /// start threads before), allowed for [`Profile::OpenCl`] (drivers start theirs when
    /// the device is opened).
    pub fn allow_existing_threads(mut self, allow: bool) -> Config {
        self.allow_existing_threads = allow;
        self
    }

    /// Adds a path under which files may be read (and executed), with Landlock. Default:
    /// none for [`Profile::Cpu`], see [`Config::opencl`] for the OpenCL profile.
    pub fn readable_path(mut self, path: impl Into<PathBuf>) -> Config {
        self.readable.push(path.into());
        self
    }

    /// Allows system call `name` whatever its arguments, on top of the profile (checked
    /// against this architecture's table when applied). Default: none.
    pub fn allow_syscall(mut self, name: &str) -> Config {
        self.extra_syscalls.push(name.to_string());
        self
    }

    /// Leaves out the seccomp filter. For tests and for diagnosing one layer; a node never
    /// serves like this. Default: on.
    pub fn without_seccomp(mut self) -> Config {
        self.seccomp = false;
        self
    }

    /// Leaves out Landlock. For tests and for diagnosing one layer; a node never serves
    /// like this. Default: on.
    pub fn without_landlock(mut self) -> Config {
        self.landlock = false;
        self
    }

    /// The profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }
}

/// The device files GPU drivers open: DRM nodes (`/dev/dri`), AMD's compute node
/// (`/dev/kfd`), NVIDIA's control, unified-memory and per-GPU nodes. Not the rest of
/// `/dev`: a worker running as root could otherwise write to disks.
fn gpu_device_files() -> Vec<PathBuf> {
    let mut devices: Vec<PathBuf> = ["/dev/dri", "/dev/kfd"].iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir("/dev") {
        let mut nvidia: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("nvidia"))
            .map(|entry| entry.path())
            .collect();
        nvidia.sort();
        devices.extend(nvidia);
    }
    devices
}

fn pocl_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("POCL_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("pocl")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("pocl")))
}

/// Why the sandbox could not be applied. After an error the process may be partly
/// restricted: a worker must exit, never serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The sandbox has no system call tables for this architecture.
    #[error("the sandbox supports x86_64 and aarch64, not {0}")]
    UnsupportedArch(&'static str),
    /// This kernel cannot install trapping seccomp filters.
    #[error("seccomp-bpf is not available: {0}")]
    SeccompUnavailable(String),
    /// A system call named in the configuration does not exist here.
    #[error("unknown system call `{name}` on {arch}")]
    UnknownSyscall {
        /// The name given.
        name: String,
        /// The architecture whose table lacks it.
        arch: Arch,
    },
    /// The seccomp filter could not be built.
    #[error("cannot build the seccomp filter: {0}")]
    Filter(String),
    /// Other threads run and Landlock would not restrict them.
    #[error(
        "{others} other thread(s) already run in this process, and Landlock ABI {abi} restricts only the calling thread and the ones it starts: apply the sandbox before starting threads"
    )]
    OtherThreads {
        /// How many.
        others: usize,
        /// The kernel's Landlock ABI.
        abi: u32,
    },
    /// The threads or descriptors of this process could not be listed.
    #[error("cannot list this process's threads or descriptors in /proc: {0}")]
    ProcFs(std::io::Error),
    /// The parent died before the worker asked to die with it.
    #[error("the worker's parent {expected} is gone (its parent is now {now}): a worker must not outlive its node")]
    ParentGone {
        /// The parent expected.
        expected: u32,
        /// The parent now (the process that adopted the orphan).
        now: u32,
    },
    /// A system call of the set-up failed.
    #[error("cannot {what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Landlock refused the ruleset.
    #[error("cannot restrict files with Landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    /// The seccomp filter could not be installed.
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(String),
}

/// What the seccomp layer enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeccompOutcome {
    /// How many system calls the allow-list has on this architecture.
    pub allowed: usize,
    /// The filter covers every thread of the process (it always does: `TSYNC`).
    pub all_threads: bool,
}

/// What [`apply`] enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// The profile applied.
    pub profile: Profile,
    /// The parent whose death kills this worker.
    pub parent: u32,
    /// The worker's own process group.
    pub process_group: u32,
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// The address-space limit in bytes, if any.
    pub address_space_limit: Option<u64>,
    /// Descriptor numbers must stay below this.
    pub open_files_limit: u64,
    /// The `RLIMIT_NPROC` set, if any (see [`Config::process_limit`]).
    pub process_limit: Option<u64>,
    /// Threads that ran besides the calling one when the sandbox was applied.
    pub other_threads: usize,
    /// The descriptors open when the sandbox was applied: the worker can still read and
    /// write them (the filter cannot tell one descriptor from another), so a worker should
    /// hold only its pipes or socket and its memfds, and may check this list.
    pub descriptors: Vec<i32>,
    /// The calling thread's stack bounds are known, so its overflow is recognised.
    pub stack_known: bool,
    /// Landlock's part (`None`: left out with [`Config::without_landlock`]).
    pub landlock: Option<LandlockOutcome>,
    /// seccomp's part (`None`: left out with [`Config::without_seccomp`]).
    pub seccomp: Option<SeccompOutcome>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sandbox ({} profile): ", self.profile)?;
        if self.no_new_privs {
            f.write_str("no new privileges")?;
        } else {
            f.write_str("new privileges NOT prevented")?;
        }
        match &self.seccomp {
            Some(s) => write!(
                f,
                "; seccomp: {} system calls allowed, all threads",
                s.allowed
            )?,
            None => f.write_str("; seccomp: OFF")?,
        }
        match &self.landlock {
            None => f.write_str("; Landlock: OFF")?,
            Some(l) if !l.enforced || l.abi.is_none() => {
                f.write_str("; Landlock: NOT ENFORCED (the kernel lacks it)")?
            }
            Some(l) => {
                write!(f, "; Landlock ABI {}: ", l.abi.unwrap_or(0))?;
                if l.readable.is_empty() && l.devices.is_empty() {
                    f.write_str("no file can be opened")?;
                } else {
                    write!(
                        f,
                        "files readable under {} paths, devices under {}",
                        l.readable.len(),
                        l.devices.len()
                    )?;
                }
                if l.all_threads {
                    f.write_str(", all threads")?;
                } else if self.other_threads > 0 {
                    write!(
                        f,
                        ", this thread and later ones ({} earlier thread(s) NOT covered)",
                        self.other_threads
                    )?;
                } else {
                    f.write_str(", this thread and later ones (no other thread ran)")?;
                }
            }
        }
        match self.address_space_limit {
            Some(bytes) => write!(f, "; address space {} MiB", bytes >> 20)?,
            None => f.write_str("; address space unlimited")?,
        }
        if let Some(count) = self.process_limit {
            write!(f, "; at most {count} tasks of this user")?;
        }
        f.write_str("; descriptors open:")?;
        for (i, fd) in self.descriptors.iter().enumerate() {
            write!(f, "{}{fd}", if i == 0 { " " } else { ", " })?;
        }
        write!(
            f,
            "; descriptors below {}; no core dumps; own process group {}; dies with parent {}",
            self.open_files_limit, self.process_group, self.parent
        )
    }
}

/// Sandboxes the calling process, as described in the crate documentation, and says what
/// was enforced. Call it once the kernel code is loaded and before any kernel runs, from
/// the thread that will run kernels or start the threads that do.
///
/// Nothing irreversible happens before the configuration is checked and the filters are
/// built; after an error the process may be partly restricted and must exit. Landlock is
/// best effort (the report says what the kernel enforced); seccomp is required unless left
/// out, since [`support`] lets a node refuse to serve where it is missing.
pub fn apply(config: &Config) -> Result<Report, SandboxError> {
    prepare(config)?.apply()
}

/// The sandbox of `config` with its filters built, not yet applied: [`apply`] in two
/// parts, so a worker can build the filters (the costly part: support probing and
/// compiling the allow-list) while it still waits for its work, and apply them once its
/// kernel code is loaded. Prepare in the process that applies: the filters name its pid.
pub struct Prepared {
    config: Config,
    programs: Option<(Vec<seccompiler::BpfProgram>, usize)>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("config", &self.config)
            .field("filters", &self.programs.as_ref().map(|p| p.0.len()))
            .finish()
    }
}

/// Checks `config` and builds its filters for this process (see [`Prepared`]).
pub fn prepare(config: &Config) -> Result<Prepared, SandboxError> {
    let arch = Arch::host().ok_or(SandboxError::UnsupportedArch(std::env::consts::ARCH))?;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let programs = if config.seccomp {
        let available = support();
        if !available.seccomp {
            return Err(SandboxError::SeccompUnavailable(
                available.missing.join("; "),
            ));
        }
        Some(filter::programs(
            config.profile,
            &config.extra_syscalls,
            arch,
            pid,
        )?)
    } else {
        None
    };
    Ok(Prepared {
        config: config.clone(),
        programs,
    })
}

impl Prepared {
    /// The descriptor fault records go to (see [`Config::report_fd`]), when it is known
    /// only after [`prepare`].
    pub fn report_fd(mut self, fd: RawFd) -> Prepared {
        self.config = self.config.report_fd(fd);
        self
    }

    /// Applies the sandbox, as [`apply`] does.
    pub fn apply(self) -> Result<Report, SandboxError> {
        let Prepared { config, programs } = self;
        let config = &config;
        let other_threads = process::other_threads()?;
        let descriptors = process::open_descriptors()?;
        if config.landlock && other_threads > 0 && !config.allow_existing_threads {
            if let Some(abi) = files::kernel_abi().filter(|abi| *abi < LANDLOCK_ALL_THREADS_ABI) {
                return Err(SandboxError::OtherThreads {
                    others: other_threads,
                    abi,
                });
            }
        }
        // The bounds of this thread's stack come from /proc/self/maps for the main thread:
        // read them while files can still be opened.
        let stack_known = signals::remember_stack_of_this_thread().is_ok();

        let parent = process::die_with_parent(config.expected_parent)?;
        let process_group = process::own_process_group()?;
        process::limit(libc::RLIMIT_CORE, 0, "turn core dumps off (RLIMIT_CORE)")?;
        let highest_open = descriptors.last().map_or(0, |&fd| fd.max(0) as u64 + 1);
        let open_files_limit = process::limit(
            libc::RLIMIT_NOFILE,
            config
                .open_files
                .max(highest_open + SANDBOX_SPARE_DESCRIPTORS),
            "limit open files (RLIMIT_NOFILE)",
        )?;
        let address_space_limit = match config.address_space {
            Some(bytes) => Some(process::limit(
                libc::RLIMIT_AS,
                bytes,
                "limit the address space (RLIMIT_AS)",
            )?),
            None => None,
        };
        let process_limit = match config.processes {
            Some(count) => Some(process::limit(
                libc::RLIMIT_NPROC,
                count,
                "limit processes (RLIMIT_NPROC)",
            )?),
            None => None,
        };
        signals::install(config.report_fd).map_err(|source| SandboxError::Os {
            what: "install the sandbox's signal handlers",
            source,
        })?;
        // SAFETY: plain prctl calls on this process.
        let no_new_privs = unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(SandboxError::Os {
                    what: "set no_new_privs",
                    source: std::io::Error::last_os_error(),
                });
            }
            libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1
        };
        let landlock = if config.landlock {
            Some(files::restrict(&config.readable, &config.devices)?)
        } else {
            None
        };
        let seccomp = match programs {
            Some((programs, allowed)) => {
                for program in &programs {
                    seccompiler::apply_filter_all_threads(program)
                        .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
                }
                Some(SeccompOutcome {
                    allowed,
                    all_threads: true,
                })
            }
            None => None,
        };
        Ok(Report {
            profile: config.profile,
            parent,
            process_group,
            no_new_privs,
            address_space_limit,
            open_files_limit,
            process_limit,
            other_threads,
            descriptors,
            stack_known,
            landlock,
            seccomp,
        })
    }
}
