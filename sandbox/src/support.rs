//! What this kernel offers the sandbox, so that a node can refuse to serve without it.

use std::fmt;

use crate::files::query_abi;
use crate::names::Arch;

/// Whether seccomp-bpf and Landlock are available here. See [`support`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Support {
    /// seccomp filters that trap (`SECCOMP_RET_TRAP`) can be installed, and this crate has
    /// system call tables for the architecture.
    pub seccomp: bool,
    /// The Landlock ABI version of the kernel (`None`: not built in, or not enabled at boot).
    pub landlock_abi: Option<u32>,
    /// Why something is missing, in words (empty when nothing is).
    pub missing: Vec<String>,
}

/// The first Landlock ABI that restricts every thread of a process at once (`TSYNC`).
pub const LANDLOCK_ALL_THREADS_ABI: u32 = 8;

impl Support {
    /// Both layers are there: a node may serve sandboxed.
    pub fn is_complete(&self) -> bool {
        self.seccomp && self.landlock_abi.is_some()
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seccomp-bpf: {}",
            if self.seccomp { "yes" } else { "no" }
        )?;
        match self.landlock_abi {
            Some(abi) if abi >= LANDLOCK_ALL_THREADS_ABI => write!(f, "; Landlock: ABI {abi}")?,
            Some(abi) => write!(
                f,
                "; Landlock: ABI {abi} (restricts the calling thread and later ones; all threads at once needs ABI {LANDLOCK_ALL_THREADS_ABI})"
            )?,
            None => f.write_str("; Landlock: no")?,
        }
        for why in &self.missing {
            write!(f, "; {why}")?;
        }
        Ok(())
    }
}

/// Detects seccomp-bpf and Landlock on the running kernel, without changing anything.
pub fn support() -> Support {
    let mut missing = Vec::new();
    let seccomp = match Arch::host() {
        None => {
            missing.push(format!(
                "the sandbox has no system call tables for {}",
                std::env::consts::ARCH
            ));
            false
        }
        Some(_) => match seccomp_traps() {
            Ok(()) => true,
            Err(why) => {
                missing.push(why);
                false
            }
        },
    };
    let landlock_abi = match query_abi() {
        Ok(abi) => Some(abi),
        Err(why) => {
            missing.push(landlock_missing(&why));
            None
        }
    };
    Support {
        seccomp,
        landlock_abi,
        missing,
    }
}

fn seccomp_traps() -> Result<(), String> {
    // SAFETY: PR_GET_SECCOMP only reads this thread's mode.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return Err("the kernel has no seccomp (CONFIG_SECCOMP)".into());
    }
    let action: u32 = libc::SECCOMP_RET_TRAP;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads the action from the pointer and changes nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if rc != 0 {
        return Err(format!(
            "the kernel cannot install trapping seccomp filters (CONFIG_SECCOMP_FILTER): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn landlock_missing(why: &std::io::Error) -> String {
    // EOPNOTSUPP: built in but not enabled at boot; ENOSYS: not built in.
    match why.raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            "Landlock is built into the kernel but not enabled (add `landlock` to the `lsm=` boot parameter)".into()
        }
        _ => "the kernel has no Landlock (CONFIG_SECURITY_LANDLOCK, Linux 5.13 or newer)".into(),
    }
}
