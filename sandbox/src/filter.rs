//! The seccomp allow-lists of the two profiles, as data, and their BPF programs.
//!
//! Each entry names a system call and the condition on its arguments under which it is
//! allowed; every other call traps (`SECCOMP_RET_TRAP`: `SIGSYS`, reported by
//! [`crate::signals`]). The lists were found by running a worker-like loop under `strace -f`
//! (see `docs/sandbox.md`) and are checked by the crate's tests, which run that loop under
//! the filter.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::names::{syscall_number, Arch};
use crate::{Profile, SandboxError};

/// When an allowed system call is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum When {
    /// Whatever its arguments.
    Always,
    /// Only to start a thread: `CLONE_THREAD` set, no namespace flag (so no new process).
    ThreadsOnly,
    /// Only aimed at this process (`tgkill(getpid(), ...)`: raise and abort).
    AtThisProcess,
    /// Only when argument `index` is one of these values.
    ArgIn(u8, &'static [u64]),
    /// Only when the first argument is not this value.
    FirstArgNot(u64),
    /// Only on a descriptor: argument `index` (the flags) has `AT_EMPTY_PATH`.
    EmptyPathFlagAt(u8),
    /// Only reading: argument `index` (the new value) is a null pointer.
    NullAt(u8),
}

/// An allowed system call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allowed {
    pub(crate) name: &'static str,
    pub(crate) when: When,
}

const fn always(name: &'static str) -> Allowed {
    Allowed {
        name,
        when: When::Always,
    }
}

const fn when(name: &'static str, when: When) -> Allowed {
    Allowed { name, when }
}

const PR_SET_NAME: u64 = 15;
const PR_GET_NAME: u64 = 16;
/// `fcntl` commands on descriptors the worker holds: flags, duplicates, seals (Rust's
/// debug builds check a descriptor with `F_GETFD` before closing it). Not `F_SETOWN` and
/// its kin, which aim signals at other processes.
const FCNTL_ON_OWN_DESCRIPTORS: &[u64] = &[
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_DUPFD_CLOEXEC as u64,
    libc::F_ADD_SEALS as u64,
    libc::F_GET_SEALS as u64,
];
const AT_EMPTY_PATH: u64 = 0x1000;
const CLONE_THREAD: u64 = 0x0001_0000;
const CLONE_NAMESPACES: u64 = 0x0002_0000 // NEWNS
    | 0x0200_0000 // NEWCGROUP
    | 0x0400_0000 // NEWUTS
    | 0x0800_0000 // NEWIPC
    | 0x1000_0000 // NEWUSER
    | 0x2000_0000 // NEWPID
    | 0x4000_0000; // NEWNET

/// What a CPU worker's loop needs after its kernels are loaded: I/O on descriptors it
/// already holds, memory, threads and their synchronisation, time, randomness for hash
/// maps, signal plumbing for panics and aborts, and exit.
pub(crate) const CPU: &[Allowed] = &[
    // I/O on descriptors the worker already has (pipes, a socket to the node, memfds).
    always("read"),
    always("write"),
    always("readv"),
    always("writev"),
    always("pread64"),
    always("pwrite64"),
    always("recvmsg"),
    always("sendmsg"),
    always("poll"),
    always("ppoll"),
    always("close"),
    when("fcntl", When::ArgIn(1, FCNTL_ON_OWN_DESCRIPTORS)),
    always("fstat"),
    when("newfstatat", When::EmptyPathFlagAt(3)),
    when("statx", When::EmptyPathFlagAt(2)),
    // Memory.
    always("brk"),
    always("mmap"),
    always("munmap"),
    always("mremap"),
    always("mprotect"),
    always("madvise"),
    // Threads (glibc tries clone3 first; a second filter answers ENOSYS, since its flags
    // are out of the filter's reach, and glibc falls back to clone).
    when("clone", When::ThreadsOnly),
    always("clone3"),
    always("set_robust_list"),
    always("rseq"),
    always("futex"),
    always("sched_yield"),
    always("sched_getaffinity"),
    when("prctl", When::ArgIn(0, &[PR_SET_NAME, PR_GET_NAME])),
    always("gettid"),
    always("getpid"),
    always("getppid"),
    always("exit"),
    always("exit_group"),
    // Signals: returning from handlers, masks around thread starts, the alternate stacks
    // of new threads, handlers for anything but `SIGSYS` (glibc installs its own for
    // thread set-up at the first thread start, our handlers fall back to the default
    // action, abort() resets `SIGABRT`), and raising a signal in this process. A kernel
    // must not catch `SIGSYS`: it would survive a forbidden call unreported.
    always("rt_sigreturn"),
    always("rt_sigprocmask"),
    always("sigaltstack"),
    when("rt_sigaction", When::FirstArgNot(libc::SIGSYS as u64)),
    when("tgkill", When::AtThisProcess),
    always("restart_syscall"),
    // Time and randomness.
    always("clock_gettime"),
    always("clock_getres"),
    always("gettimeofday"),
    always("nanosleep"),
    always("clock_nanosleep"),
    always("getrandom"),
    // Rust's default panic message names source paths relative to the working folder: a
    // worker's own panic must still be reported, and the folder's name opens nothing.
    always("getcwd"),
];

/// What an OpenCL worker needs on top of [`CPU`]: its driver reads files (work-group
/// functions from the driver's cache, device and system information) through Landlock's
/// read-only rules, talks to devices with ioctl, and shares memory through memfds.
pub(crate) const OPENCL_EXTRA: &[Allowed] = &[
    always("open"),
    always("openat"),
    always("access"),
    always("faccessat"),
    always("faccessat2"),
    always("newfstatat"),
    always("statx"),
    always("lseek"),
    always("getdents64"),
    always("readlink"),
    always("readlinkat"),
    always("fcntl"),
    always("ioctl"),
    always("memfd_create"),
    always("ftruncate"),
    always("sysinfo"),
    always("uname"),
    always("getrusage"),
    when("prlimit64", When::NullAt(2)),
    always("sched_setaffinity"),
    always("eventfd2"),
];

/// The allow-list of `profile`, each name once.
pub(crate) fn allowed(profile: Profile) -> Vec<Allowed> {
    let mut list: Vec<Allowed> = CPU.to_vec();
    if profile == Profile::OpenCl {
        for extra in OPENCL_EXTRA {
            // An unconditional entry replaces a conditional one of the same call.
            list.retain(|a| a.name != extra.name);
            list.push(*extra);
        }
    }
    list
}

/// The names of the system calls `profile` allows (on any architecture), for reports and
/// documentation.
pub fn profile_syscalls(profile: Profile) -> Vec<&'static str> {
    allowed(profile).iter().map(|a| a.name).collect()
}

fn condition(
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(index, len, op, value).map_err(|e| SandboxError::Filter(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(|e| SandboxError::Filter(e.to_string()))
}

/// The seccompiler rules of one entry (an empty list: allowed whatever the arguments).
fn rules_of(when: When, pid: u32) -> Result<Vec<SeccompRule>, SandboxError> {
    use SeccompCmpArgLen::{Dword, Qword};
    Ok(match when {
        When::Always => Vec::new(),
        When::ThreadsOnly => vec![rule(vec![
            condition(0, Qword, SeccompCmpOp::MaskedEq(CLONE_THREAD), CLONE_THREAD)?,
            condition(0, Qword, SeccompCmpOp::MaskedEq(CLONE_NAMESPACES), 0)?,
        ])?],
        When::AtThisProcess => vec![rule(vec![condition(
            0,
            Dword,
            SeccompCmpOp::Eq,
            u64::from(pid),
        )?])?],
        When::ArgIn(index, values) => values
            .iter()
            .map(|v| rule(vec![condition(index, Dword, SeccompCmpOp::Eq, *v)?]))
            .collect::<Result<_, _>>()?,
        When::FirstArgNot(value) => {
            vec![rule(vec![condition(0, Dword, SeccompCmpOp::Ne, value)?])?]
        }
        When::EmptyPathFlagAt(index) => vec![rule(vec![condition(
            index,
            Dword,
            SeccompCmpOp::MaskedEq(AT_EMPTY_PATH),
            AT_EMPTY_PATH,
        )?])?],
        When::NullAt(index) => vec![rule(vec![condition(index, Qword, SeccompCmpOp::Eq, 0)?])?],
    })
}

fn target(arch: Arch) -> TargetArch {
    match arch {
        Arch::X86_64 => TargetArch::x86_64,
        Arch::Aarch64 => TargetArch::aarch64,
    }
}

/// The programs to install, in order: first the one that answers `clone3` with `ENOSYS`
/// (it allows everything else), then the allow-list (installing it is the last call that
/// needs `seccomp` and `prctl`). `extra` names calls allowed on top of the profile.
///
/// Returns the programs and how many calls the allow-list has on `arch`.
pub(crate) fn programs(
    profile: Profile,
    extra: &[String],
    arch: Arch,
    pid: u32,
) -> Result<(Vec<BpfProgram>, usize), SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for entry in allowed(profile) {
        // Calls this architecture does not have (aarch64 has no `open`, `poll`, ...) need
        // no rule: nothing can make them.
        if let Some(number) = syscall_number(arch, entry.name) {
            rules.insert(number, rules_of(entry.when, pid)?);
        }
    }
    for name in extra {
        let number = syscall_number(arch, name).ok_or_else(|| SandboxError::UnknownSyscall {
            name: name.clone(),
            arch,
        })?;
        rules.insert(number, Vec::new());
    }
    let count = rules.len();
    let allow_list = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        target(arch),
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| SandboxError::Filter(e.to_string()))?;
    let clone3_number =
        syscall_number(arch, "clone3").ok_or_else(|| SandboxError::UnknownSyscall {
            name: "clone3".into(),
            arch,
        })?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(clone3_number, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target(arch),
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| SandboxError::Filter(e.to_string()))?;
    Ok((vec![no_clone3, allow_list], count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_system_call_of_some_architecture() {
        for profile in [Profile::Cpu, Profile::OpenCl] {
            for name in profile_syscalls(profile) {
                assert!(
                    syscall_number(Arch::X86_64, name).is_some()
                        || syscall_number(Arch::Aarch64, name).is_some(),
                    "{name} is not a system call"
                );
            }
        }
    }

    #[test]
    fn each_call_is_listed_once() {
        for profile in [Profile::Cpu, Profile::OpenCl] {
            let mut names = profile_syscalls(profile);
            let all = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), all, "{profile:?}");
        }
    }

    #[test]
    fn the_cpu_profile_has_no_file_network_or_process_calls() {
        let cpu = profile_syscalls(Profile::Cpu);
        for forbidden in [
            "open",
            "openat",
            "openat2",
            "creat",
            "socket",
            "socketpair",
            "connect",
            "bind",
            "execve",
            "execveat",
            "fork",
            "vfork",
            "ptrace",
            "kill",
            "unshare",
            "setns",
            "mount",
            "ioctl",
            "memfd_create",
            "seccomp",
        ] {
            assert!(!cpu.contains(&forbidden), "{forbidden}");
        }
    }

    #[test]
    fn the_opencl_profile_keeps_exec_fork_and_network_out() {
        let opencl = profile_syscalls(Profile::OpenCl);
        assert!(opencl.contains(&"openat") && opencl.contains(&"ioctl"));
        for forbidden in [
            "socket", "connect", "execve", "execveat", "fork", "vfork", "ptrace", "kill",
        ] {
            assert!(!opencl.contains(&forbidden), "{forbidden}");
        }
        // The unconditional `newfstatat` replaced the descriptor-only one.
        assert_eq!(
            allowed(Profile::OpenCl)
                .iter()
                .find(|a| a.name == "newfstatat")
                .map(|a| a.when),
            Some(When::Always)
        );
    }

    #[test]
    fn programs_build_for_both_architectures() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            for profile in [Profile::Cpu, Profile::OpenCl] {
                let (programs, count) = programs(profile, &[], arch, 42).expect("filters build");
                assert_eq!(programs.len(), 2);
                assert!(count > 30, "{arch} {profile:?}: {count}");
                assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
            }
        }
    }

    #[test]
    fn an_unknown_extra_call_is_refused_by_name() {
        let error =
            programs(Profile::Cpu, &["frobnicate".into()], Arch::X86_64, 1).expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "unknown system call `frobnicate` on x86_64"
        );
        let (_, with_extra) =
            programs(Profile::Cpu, &["uname".into()], Arch::X86_64, 1).expect("known");
        let (_, without) = programs(Profile::Cpu, &[], Arch::X86_64, 1).expect("builds");
        assert_eq!(with_extra, without + 1);
    }
}
