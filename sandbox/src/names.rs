//! System call names and numbers of the architectures the sandbox knows.
//!
//! The tables come from the `syscalls` crate, which generates them from the kernel's own
//! syscall tables and is kept current with new kernels; a table of our own would be a copy
//! of the same data that nobody regenerates.

use std::fmt;

/// An architecture the sandbox has system call tables and seccomp support for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// 64-bit x86 (`AUDIT_ARCH_X86_64`).
    X86_64,
    /// 64-bit Arm (`AUDIT_ARCH_AARCH64`).
    Aarch64,
}

/// `AUDIT_ARCH_*` values, as seccomp reports them in `si_arch` and in its data.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

impl Arch {
    /// The architecture this program runs on, if the sandbox knows it.
    pub const fn host() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    /// The architecture with this `AUDIT_ARCH_*` value.
    pub const fn from_audit(value: u32) -> Option<Arch> {
        match value {
            AUDIT_ARCH_X86_64 => Some(Arch::X86_64),
            AUDIT_ARCH_AARCH64 => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// This architecture's `AUDIT_ARCH_*` value.
    pub const fn audit(self) -> u32 {
        match self {
            Arch::X86_64 => AUDIT_ARCH_X86_64,
            Arch::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }

    /// The name Rust and the kernel use (`x86_64`, `aarch64`).
    pub const fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of system call `number` on `arch` (`openat` for 257 on x86_64), if it has one.
///
/// A pure table look-up: safe to call from a signal handler.
pub const fn syscall_name(arch: Arch, number: i64) -> Option<&'static str> {
    if number < 0 || number > i32::MAX as i64 {
        return None;
    }
    let id = number as usize;
    match arch {
        Arch::X86_64 => match syscalls::x86_64::Sysno::new(id) {
            Some(call) => Some(call.name()),
            None => None,
        },
        Arch::Aarch64 => match syscalls::aarch64::Sysno::new(id) {
            Some(call) => Some(call.name()),
            None => None,
        },
    }
}

/// The number of system call `name` on `arch`, if that architecture has it (aarch64 has no
/// `open`, `fork` or `poll`, only their `*at`/`p*` successors).
pub fn syscall_number(arch: Arch, name: &str) -> Option<i64> {
    match arch {
        Arch::X86_64 => name
            .parse::<syscalls::x86_64::Sysno>()
            .ok()
            .map(|call| i64::from(call.id())),
        Arch::Aarch64 => name
            .parse::<syscalls::aarch64::Sysno>()
            .ok()
            .map(|call| i64::from(call.id())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_calls_on_both_architectures() {
        assert_eq!(syscall_name(Arch::X86_64, 257), Some("openat"));
        assert_eq!(syscall_name(Arch::Aarch64, 56), Some("openat"));
        assert_eq!(syscall_name(Arch::X86_64, 41), Some("socket"));
        assert_eq!(syscall_name(Arch::Aarch64, 198), Some("socket"));
        assert_eq!(syscall_name(Arch::X86_64, 59), Some("execve"));
        assert_eq!(syscall_name(Arch::Aarch64, 221), Some("execve"));
        assert_eq!(syscall_name(Arch::X86_64, 435), Some("clone3"));
    }

    #[test]
    fn numbers_round_trip_and_missing_calls_are_none() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            for name in ["read", "write", "openat", "futex", "exit_group", "clone"] {
                let number = syscall_number(arch, name).expect("a common call");
                assert_eq!(syscall_name(arch, number), Some(name), "{arch} {name}");
            }
        }
        assert_eq!(syscall_number(Arch::Aarch64, "open"), None);
        assert_eq!(syscall_number(Arch::X86_64, "no_such_call"), None);
        assert_eq!(syscall_name(Arch::X86_64, -1), None);
        assert_eq!(syscall_name(Arch::X86_64, 100_000), None);
    }

    #[test]
    fn audit_values_round_trip() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            assert_eq!(Arch::from_audit(arch.audit()), Some(arch));
        }
        assert_eq!(Arch::from_audit(0x4000_0003), None); // i386
    }
}
