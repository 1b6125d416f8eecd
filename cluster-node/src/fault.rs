//! Test-only fault injection for nodes: misbehaviour on demand, so that tests can force
//! the faults whose handling they check instead of hoping a timing produces them.
//!
//! It exists only when the crate is built with the `fault-injection` feature, which the
//! workspace's integration tests enable (a dev-dependency feature, so `cargo test` builds
//! it and `cargo build`/`cargo install` never do). Without the feature [`Faults::parse`]
//! refuses every fault and nothing of the behaviour below is compiled in.
//!
//! Faults, given to `offload node --fault FAULT` (repeatable):
//! - `corrupt-results`: flip the first byte of every result (a lying node);
//! - `fail-packets`: answer every packet with a failure (a broken node);
//! - `die-on-packet`: kill the node (SIGKILL) when its first packet arrives;
//! - `stop-on-packet`: stop the node (SIGSTOP) when its first packet arrives;
//! - `gate=PATH`: hold every packet until the file PATH exists;
//! - `owner-busy`: report the node paused by its owner from the start, as `--idle-only`
//!   does while the machine's load is above the threshold (without depending on it);
//! - `owner-busy-until=PATH`: the same until the file PATH exists, then serve.
//! - `forbidden-call=CALL` (`openat`, `socket` or `execve`): every worker makes that
//!   system call itself, raw, just before it runs a packet's kernel (after its sandbox is
//!   applied), as a kernel trying to reach the machine would; the node passes it on to
//!   its workers (`offload __worker --fault forbidden-call=CALL`);
//! - `no-sandbox-support`: the node believes this kernel has neither seccomp nor Landlock
//!   (as on a kernel built without them), so it refuses to serve unless `--unsandboxed`.
//! - `compiler-abort`: the helper process that compiles kernels for `offload run`
//!   (`offload __compile-object`, given it by `offload run --worker-fault
//!   compiler-abort`) aborts before compiling, as LLVM failing on hostile bitcode would;
//!   `compiler-forbidden-call`: it opens a file instead, after its sandbox is applied.

/// The faults a node was told to inject (none outside test builds).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    #[cfg(feature = "fault-injection")]
    enabled: Enabled,
}

#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Default)]
struct Enabled {
    corrupt_results: bool,
    fail_packets: bool,
    die_on_packet: bool,
    stop_on_packet: bool,
    gate: Option<std::path::PathBuf>,
    owner_busy: bool,
    owner_busy_until: Option<std::path::PathBuf>,
    forbidden_call: Option<ForbiddenCall>,
    no_sandbox_support: bool,
    compiler_abort: bool,
    compiler_forbidden_call: bool,
}

/// The system calls `forbidden-call=` can make.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForbiddenCall {
    Openat,
    Socket,
    Execve,
}

#[cfg(feature = "fault-injection")]
impl ForbiddenCall {
    fn name(self) -> &'static str {
        match self {
            ForbiddenCall::Openat => "openat",
            ForbiddenCall::Socket => "socket",
            ForbiddenCall::Execve => "execve",
        }
    }

    /// Makes the call, raw (no libc wrapper that might choose another call). Unsandboxed
    /// it does no harm: it opens a file read-only and closes it, opens a socket and closes
    /// it, or tries to execute a program that does not exist.
    fn make(self) {
        let path = match self {
            ForbiddenCall::Openat => c"/etc/hostname",
            _ => c"/nonexistent/offload-fault-injection",
        };
        // SAFETY: raw system calls with valid, NUL-terminated paths and null argument
        // vectors; a descriptor they return is closed at once.
        unsafe {
            let fd = match self {
                ForbiddenCall::Openat => libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                ),
                ForbiddenCall::Socket => libc::syscall(
                    libc::SYS_socket,
                    libc::AF_INET,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                ),
                ForbiddenCall::Execve => {
                    let no_args: [*const libc::c_char; 1] = [std::ptr::null()];
                    libc::syscall(
                        libc::SYS_execve,
                        path.as_ptr(),
                        no_args.as_ptr(),
                        no_args.as_ptr(),
                    )
                }
            };
            if fd >= 0 && self != ForbiddenCall::Execve {
                libc::close(fd as libc::c_int);
            }
        }
    }
}

/// What a node does with a packet after [`Faults::before_packet`].
// Only fault injection fails packets: without the feature the variant is unused.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) enum Verdict {
    /// Run it.
    Run,
    /// Answer it with this failure instead.
    Fail(String),
}

impl Faults {
    /// Parses `--fault` values. Outside test builds any fault is refused.
    pub fn parse(specs: &[String]) -> Result<Faults, String> {
        #[cfg(not(feature = "fault-injection"))]
        {
            match specs.first() {
                None => Ok(Faults::default()),
                Some(spec) => Err(format!(
                    "--fault {spec}: this build of offload has no fault injection (it exists only in test builds)"
                )),
            }
        }
        #[cfg(feature = "fault-injection")]
        {
            let mut enabled = Enabled::default();
            for spec in specs {
                match spec.as_str() {
                    "corrupt-results" => enabled.corrupt_results = true,
                    "fail-packets" => enabled.fail_packets = true,
                    "die-on-packet" => enabled.die_on_packet = true,
                    "stop-on-packet" => enabled.stop_on_packet = true,
                    "owner-busy" => enabled.owner_busy = true,
                    "no-sandbox-support" => enabled.no_sandbox_support = true,
                    "compiler-abort" => enabled.compiler_abort = true,
                    "compiler-forbidden-call" => enabled.compiler_forbidden_call = true,
                    "forbidden-call=openat" => enabled.forbidden_call = Some(ForbiddenCall::Openat),
                    "forbidden-call=socket" => enabled.forbidden_call = Some(ForbiddenCall::Socket),
                    "forbidden-call=execve" => enabled.forbidden_call = Some(ForbiddenCall::Execve),
                    other => {
                        if let Some(path) = other.strip_prefix("gate=") {
                            enabled.gate = Some(path.into());
                        } else if let Some(path) = other.strip_prefix("owner-busy-until=") {
                            enabled.owner_busy_until = Some(path.into());
                        } else {
                            return Err(format!("--fault {other}: no such fault"));
                        }
                    }
                }
            }
            Ok(Faults { enabled })
        }
    }

    /// Called when a packet arrives, before it runs.
    pub(crate) async fn before_packet(&self) -> Verdict {
        #[cfg(feature = "fault-injection")]
        {
            let e = &self.enabled;
            if e.die_on_packet {
                tracing::warn!("fault injection: the node kills itself on its first packet");
                // SAFETY: plain libc calls on this process.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
            if e.stop_on_packet {
                tracing::warn!("fault injection: the node stops itself on its first packet");
                // SAFETY: as above; the process continues on SIGCONT.
                unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
            }
            if let Some(gate) = &e.gate {
                while !gate.exists() {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            if e.fail_packets {
                return Verdict::Fail("fault injection: this node fails every packet".into());
            }
        }
        Verdict::Run
    }

    /// Whether the node pretends its owner keeps it busy, and until which file exists
    /// (`None`: for good).
    // Only fault injection pauses: without the feature the node never calls it.
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub(crate) fn owner_busy(&self) -> Option<Option<std::path::PathBuf>> {
        #[cfg(feature = "fault-injection")]
        {
            let e = &self.enabled;
            if e.owner_busy {
                return Some(None);
            }
            if let Some(path) = &e.owner_busy_until {
                return Some(Some(path.clone()));
            }
        }
        None
    }

    /// The `--fault` flags a node passes on to its workers.
    pub fn worker_flags(&self) -> Vec<String> {
        #[cfg(feature = "fault-injection")]
        if let Some(call) = self.enabled.forbidden_call {
            return vec!["--fault".into(), format!("forbidden-call={}", call.name())];
        }
        Vec::new()
    }

    /// In the compiler helper, before it compiles (after its sandbox is applied): aborts
    /// (SIGABRT), if told (`compiler-abort`), as LLVM failing an assertion on hostile
    /// bitcode would; or opens a file (`compiler-forbidden-call`), as code taken over
    /// through an LLVM bug would.
    pub fn before_compile(&self) {
        #[cfg(feature = "fault-injection")]
        {
            if self.enabled.compiler_abort {
                std::process::abort();
            }
            if self.enabled.compiler_forbidden_call {
                ForbiddenCall::Openat.make();
            }
        }
    }

    /// In a worker, just before a packet's kernel runs: makes the forbidden call, if told.
    pub fn before_kernel(&self) {
        #[cfg(feature = "fault-injection")]
        if let Some(call) = self.enabled.forbidden_call {
            tracing::warn!("fault injection: the worker calls {}", call.name());
            call.make();
        }
    }

    /// What this kernel offers the sandbox: [`sandbox::support`], or, with
    /// `no-sandbox-support`, neither layer.
    pub(crate) fn sandbox_support(&self) -> sandbox::Support {
        #[cfg(feature = "fault-injection")]
        if self.enabled.no_sandbox_support {
            return sandbox::Support {
                seccomp: false,
                landlock_abi: None,
                missing: vec!["fault injection: seccomp and Landlock are reported missing".into()],
            };
        }
        sandbox::support()
    }

    /// Called on a packet's outputs before they are sent.
    pub(crate) fn on_outputs(&self, outputs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        #[cfg(feature = "fault-injection")]
        {
            let mut outputs = outputs;
            if self.enabled.corrupt_results {
                if let Some(byte) = outputs.iter_mut().find_map(|o| o.first_mut()) {
                    *byte ^= 0xff;
                }
            }
            outputs
        }
        #[cfg(not(feature = "fault-injection"))]
        outputs
    }
}
