//! How a worker ended, in words: its wait status plus what the sandbox's signal handlers
//! wrote to the report descriptor before the process exited.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use crate::names::{syscall_name, Arch};

/// Exit code of a sandboxed worker that made a forbidden system call (128 + `SIGSYS`, as
/// a shell would print a death by `SIGSYS`). A sandboxed worker must not use it otherwise.
pub const FORBIDDEN_SYSCALL_EXIT: i32 = 159;

/// Exit code of a sandboxed worker whose stack overflowed. A sandboxed worker must not use
/// it otherwise.
pub const STACK_OVERFLOW_EXIT: i32 = 158;

/// What the sandbox's handlers write to the report descriptor just before the worker
/// exits: one record of [`Fault::RECORD_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The seccomp filter trapped system call `number` of `arch`.
    ForbiddenSyscall {
        /// The calling convention of the call (`None`: one the sandbox does not know,
        /// such as 32-bit x86 calls from a 64-bit process).
        arch: Option<Arch>,
        /// The system call number.
        number: i64,
    },
    /// A thread ran off the end of its stack.
    StackOverflow,
}

const MAGIC: [u8; 4] = *b"OSBX";
const KIND_SYSCALL: u32 = 1;
const KIND_STACK: u32 = 2;

impl Fault {
    /// The size of one record.
    pub const RECORD_LEN: usize = 16;

    /// The record's bytes: magic `OSBX`, kind, `AUDIT_ARCH_*` value, system call number
    /// (little-endian `u32`s). Allocation-free, for signal handlers.
    pub const fn encode(&self) -> [u8; Fault::RECORD_LEN] {
        let (kind, arch, number) = match *self {
            Fault::ForbiddenSyscall { arch, number } => (
                KIND_SYSCALL,
                match arch {
                    Some(a) => a.audit(),
                    None => 0,
                },
                number as u32,
            ),
            Fault::StackOverflow => (KIND_STACK, 0, 0),
        };
        let k = kind.to_le_bytes();
        let a = arch.to_le_bytes();
        let n = number.to_le_bytes();
        [
            MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], k[0], k[1], k[2], k[3], a[0], a[1], a[2], a[3],
            n[0], n[1], n[2], n[3],
        ]
    }

    /// The fault in one record, or `None` if `record` is not one.
    pub fn decode(record: &[u8]) -> Option<Fault> {
        let record: &[u8; Fault::RECORD_LEN] = record.get(..Fault::RECORD_LEN)?.try_into().ok()?;
        if record[..4] != MAGIC {
            return None;
        }
        let word = |at: usize| {
            u32::from_le_bytes([record[at], record[at + 1], record[at + 2], record[at + 3]])
        };
        match word(4) {
            KIND_SYSCALL => Some(Fault::ForbiddenSyscall {
                arch: Arch::from_audit(word(8)),
                number: i64::from(word(12)),
            }),
            KIND_STACK => Some(Fault::StackOverflow),
            _ => None,
        }
    }

    /// The first fault in what was read from a report descriptor (several threads may
    /// each have written one before the process ended; the first one ended it).
    pub fn first_in(bytes: &[u8]) -> Option<Fault> {
        bytes
            .chunks_exact(Fault::RECORD_LEN)
            .find_map(Fault::decode)
    }
}

/// How a worker process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEnd {
    /// It exited with this code on its own (0: normally).
    Exited(i32),
    /// It made a system call its sandbox forbids; the name is known when the report
    /// descriptor carried the record.
    ForbiddenSyscall {
        /// The call's name (`openat`), if known.
        name: Option<&'static str>,
        /// The call's number, if known and nameless on this architecture.
        number: Option<i64>,
    },
    /// A thread's stack overflowed.
    StackOverflow,
    /// It was killed by this signal (a trap such as `SIGSEGV`, or `SIGKILL` from outside).
    Signal(i32),
}

impl WorkerEnd {
    /// Reads a worker's wait status and, if it wrote one, its fault record.
    pub fn from_status(status: ExitStatus, fault: Option<Fault>) -> WorkerEnd {
        if let Some(code) = status.code() {
            return match (code, fault) {
                (FORBIDDEN_SYSCALL_EXIT, Some(Fault::ForbiddenSyscall { arch, number })) => {
                    let name = arch.and_then(|a| syscall_name(a, number));
                    WorkerEnd::ForbiddenSyscall {
                        name,
                        number: if name.is_none() { Some(number) } else { None },
                    }
                }
                (FORBIDDEN_SYSCALL_EXIT, _) => WorkerEnd::ForbiddenSyscall {
                    name: None,
                    number: None,
                },
                (STACK_OVERFLOW_EXIT, _) => WorkerEnd::StackOverflow,
                (code, _) => WorkerEnd::Exited(code),
            };
        }
        match status.signal() {
            // The filter kills outright what it cannot trap (a call of a foreign
            // calling convention), and a `SIGSYS` that a kernel blocked is fatal.
            Some(libc::SIGSYS) => WorkerEnd::ForbiddenSyscall {
                name: None,
                number: None,
            },
            Some(signal) => WorkerEnd::Signal(signal),
            // Neither exited nor signalled: a stopped or continued process, which a
            // worker's reaper never sees; say what the raw status was.
            None => WorkerEnd::Exited(status.into_raw()),
        }
    }

    /// Whether the worker ended because its kernel misbehaved (a trap, a forbidden call,
    /// a stack overflow) rather than by exiting or being killed from outside.
    pub fn is_kernel_fault(&self) -> bool {
        match self {
            WorkerEnd::ForbiddenSyscall { .. } | WorkerEnd::StackOverflow => true,
            WorkerEnd::Signal(s) => matches!(
                *s,
                libc::SIGSEGV
                    | libc::SIGBUS
                    | libc::SIGFPE
                    | libc::SIGILL
                    | libc::SIGABRT
                    | libc::SIGTRAP
            ),
            WorkerEnd::Exited(_) => false,
        }
    }

    /// The sentence a user reads: `kernel `K` made a forbidden system call (openat)`,
    /// `kernel `K` crashed: SIGSEGV (invalid memory access)`.
    pub fn blame(&self, kernel: &str) -> String {
        match self {
            WorkerEnd::ForbiddenSyscall { .. } => format!("kernel `{kernel}` made {self}"),
            WorkerEnd::Exited(_) => format!("the worker running kernel `{kernel}` {self}"),
            _ => format!("kernel `{kernel}` crashed: {self}"),
        }
    }
}

impl fmt::Display for WorkerEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerEnd::Exited(0) => f.write_str("exited normally"),
            WorkerEnd::Exited(code) => write!(f, "exited with code {code}"),
            WorkerEnd::ForbiddenSyscall {
                name: Some(name), ..
            } => write!(f, "a forbidden system call ({name})"),
            WorkerEnd::ForbiddenSyscall {
                number: Some(number),
                ..
            } => write!(f, "a forbidden system call (number {number})"),
            WorkerEnd::ForbiddenSyscall { .. } => f.write_str("a forbidden system call"),
            WorkerEnd::StackOverflow => f.write_str("stack overflow"),
            WorkerEnd::Signal(signal) => f.write_str(&describe_signal(*signal)),
        }
    }
}

/// A worker's end in words: `SIGFPE (arithmetic error, e.g. integer division by zero)`,
/// `a forbidden system call (openat)`, `stack overflow`, `exited with code 3`.
pub fn describe_exit(status: ExitStatus, fault: Option<Fault>) -> String {
    WorkerEnd::from_status(status, fault).to_string()
}

/// A signal's name and what it means for a kernel.
pub fn describe_signal(signal: i32) -> String {
    let words = match signal {
        libc::SIGSEGV => "SIGSEGV (invalid memory access)",
        libc::SIGBUS => "SIGBUS (bus error: misaligned or vanished memory)",
        libc::SIGFPE => "SIGFPE (arithmetic error, e.g. integer division by zero)",
        libc::SIGILL => {
            "SIGILL (illegal instruction, e.g. a trap or an instruction this CPU lacks)"
        }
        libc::SIGABRT => "SIGABRT (abort)",
        libc::SIGTRAP => "SIGTRAP (breakpoint trap)",
        libc::SIGSYS => "SIGSYS (a forbidden system call)",
        libc::SIGKILL => "SIGKILL (killed)",
        libc::SIGTERM => "SIGTERM (terminated)",
        libc::SIGINT => "SIGINT (interrupted)",
        libc::SIGPIPE => "SIGPIPE (wrote to a closed pipe)",
        libc::SIGXCPU => "SIGXCPU (CPU time limit exceeded)",
        libc::SIGXFSZ => "SIGXFSZ (file size limit exceeded)",
        other => return format!("signal {other}"),
    };
    words.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn signalled(signal: i32) -> ExitStatus {
        ExitStatus::from_raw(signal)
    }

    #[test]
    fn records_round_trip() {
        for fault in [
            Fault::ForbiddenSyscall {
                arch: Some(Arch::X86_64),
                number: 257,
            },
            Fault::ForbiddenSyscall {
                arch: Some(Arch::Aarch64),
                number: 56,
            },
            Fault::ForbiddenSyscall {
                arch: None,
                number: 5,
            },
            Fault::StackOverflow,
        ] {
            assert_eq!(Fault::decode(&fault.encode()), Some(fault));
        }
        assert_eq!(Fault::decode(b"not a record at all"), None);
        assert_eq!(Fault::decode(&[0; 4]), None);
    }

    #[test]
    fn the_first_record_is_the_one_that_ended_the_worker() {
        let mut bytes = Fault::StackOverflow.encode().to_vec();
        bytes.extend_from_slice(
            &Fault::ForbiddenSyscall {
                arch: Some(Arch::X86_64),
                number: 41,
            }
            .encode(),
        );
        assert_eq!(Fault::first_in(&bytes), Some(Fault::StackOverflow));
        assert_eq!(Fault::first_in(&[]), None);
    }

    #[test]
    fn a_forbidden_call_with_its_record_is_named() {
        let fault = Fault::ForbiddenSyscall {
            arch: Some(Arch::X86_64),
            number: 257,
        };
        let status = exited(FORBIDDEN_SYSCALL_EXIT);
        assert_eq!(
            describe_exit(status, Some(fault)),
            "a forbidden system call (openat)"
        );
        assert_eq!(
            WorkerEnd::from_status(status, Some(fault)).blame("k"),
            "kernel `k` made a forbidden system call (openat)"
        );
        assert_eq!(describe_exit(status, None), "a forbidden system call");
        assert_eq!(
            describe_exit(
                status,
                Some(Fault::ForbiddenSyscall {
                    arch: None,
                    number: 5
                })
            ),
            "a forbidden system call (number 5)"
        );
    }

    #[test]
    fn traps_are_described_in_words() {
        assert_eq!(
            describe_exit(signalled(libc::SIGSEGV), None),
            "SIGSEGV (invalid memory access)"
        );
        assert_eq!(
            describe_exit(signalled(libc::SIGFPE), None),
            "SIGFPE (arithmetic error, e.g. integer division by zero)"
        );
        assert!(describe_exit(signalled(libc::SIGILL), None).starts_with("SIGILL"));
        assert!(describe_exit(signalled(libc::SIGBUS), None).starts_with("SIGBUS"));
        assert_eq!(
            describe_exit(signalled(libc::SIGABRT), None),
            "SIGABRT (abort)"
        );
        assert_eq!(
            describe_exit(signalled(libc::SIGSYS), None),
            "a forbidden system call"
        );
        assert_eq!(
            describe_exit(exited(STACK_OVERFLOW_EXIT), Some(Fault::StackOverflow)),
            "stack overflow"
        );
        assert_eq!(describe_exit(signalled(64), None), "signal 64");
        // A core-dump bit does not change the words.
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV | 0x80), None),
            "SIGSEGV (invalid memory access)"
        );
    }

    #[test]
    fn plain_exits_are_not_faults() {
        assert_eq!(describe_exit(exited(0), None), "exited normally");
        assert_eq!(describe_exit(exited(3), None), "exited with code 3");
        assert!(!WorkerEnd::from_status(exited(0), None).is_kernel_fault());
        assert!(!WorkerEnd::from_status(signalled(libc::SIGKILL), None).is_kernel_fault());
        assert!(WorkerEnd::from_status(signalled(libc::SIGFPE), None).is_kernel_fault());
        assert_eq!(
            WorkerEnd::from_status(signalled(libc::SIGSEGV), None).blame("k"),
            "kernel `k` crashed: SIGSEGV (invalid memory access)"
        );
    }
}
