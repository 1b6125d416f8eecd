//! Landlock: which files the worker may still open.
//!
//! Every access right the kernel knows is handled (filesystem rights, TCP bind/connect,
//! abstract Unix sockets and signals to other processes), so what no rule grants is denied.
//! The CPU profile adds no rule: the worker can open no file at all. The OpenCL profile
//! grants read access under the paths its driver reads.

use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, RestrictSelfAttr,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::SandboxError;

/// The newest ABI this code asks for; best-effort compatibility drops what an older
/// kernel lacks. Handling more rights only denies more, and with no rule (CPU) or only
/// read rules (OpenCL) nothing that a worker uses is in the newer rights.
const WANTED: ABI = ABI::V10;

/// The Landlock ABI version the running kernel offers, or why there is none.
pub(crate) fn query_abi() -> std::io::Result<u32> {
    // SAFETY: the documented version query: null attributes, size 0, the VERSION flag.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    match u32::try_from(version) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The Landlock ABI version the running kernel offers (`None`: not built in or not enabled).
pub(crate) fn kernel_abi() -> Option<u32> {
    query_abi().ok()
}

/// What Landlock enforces on the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LandlockOutcome {
    /// The kernel's Landlock ABI (`None`: no Landlock, nothing enforced).
    pub abi: Option<u32>,
    /// Whether the restriction took effect.
    pub enforced: bool,
    /// Whether it covers every thread of the process (ABI 8's `TSYNC`), or only the
    /// calling thread and the threads it starts afterwards.
    pub all_threads: bool,
    /// The paths the worker may read under (empty: it can open no file).
    pub readable: Vec<PathBuf>,
    /// The paths whose device files it may also write and ioctl.
    pub devices: Vec<PathBuf>,
}

/// Restricts the calling thread (all threads where the kernel can) to `readable` (read and
/// execute) and `devices` (read, write, ioctl); existing paths only.
pub(crate) fn restrict(
    readable: &[PathBuf],
    devices: &[PathBuf],
) -> Result<LandlockOutcome, SandboxError> {
    let abi = kernel_abi();
    let readable: Vec<PathBuf> = readable.iter().filter(|p| p.exists()).cloned().collect();
    let devices: Vec<PathBuf> = devices.iter().filter(|p| p.exists()).cloned().collect();
    let device_access = AccessFs::from_read(WANTED) | AccessFs::WriteFile | AccessFs::IoctlDev;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(WANTED))?
        .handle_access(AccessNet::from_all(WANTED))?
        .scope(Scope::from_all(WANTED))?
        .create()?
        .add_rules(path_beneath_rules(&readable, AccessFs::from_read(WANTED)))?
        .add_rules(path_beneath_rules(&devices, device_access))?
        .all_threads(true)?
        .restrict_self()?;
    let enforced = status.ruleset != RulesetStatus::NotEnforced;
    Ok(LandlockOutcome {
        abi,
        enforced,
        all_threads: enforced && status.all_threads,
        readable,
        devices,
    })
}
