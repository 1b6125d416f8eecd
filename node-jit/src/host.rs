//! What this node's CPU is, as LLVM sees it, and target machines for it or others.

use std::fmt;
use std::path::Path;

use inkwell::targets::{CodeModel, RelocMode, Target, TargetMachine, TargetTriple};
use inkwell::OptimizationLevel;
use ir_packager::LlvmVersion;

use crate::JitError;

/// The code generation target: triple, CPU name and feature string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostTarget {
    /// The target triple, e.g. `x86_64-unknown-linux-gnu`.
    pub triple: String,
    /// LLVM's CPU name, e.g. `skylake-avx512`.
    pub cpu: String,
    /// LLVM's feature string, e.g. `+avx512f,+fma,...`.
    pub features: String,
    /// The LLVM this process is linked against.
    pub llvm_version: LlvmVersion,
}

impl HostTarget {
    /// Detects the machine this process runs on.
    pub fn detect() -> HostTarget {
        ir_packager::initialize_llvm();
        HostTarget {
            triple: target_lexicon::HOST.to_string(),
            cpu: TargetMachine::get_host_cpu_name().to_string(),
            features: TargetMachine::get_host_cpu_features().to_string(),
            llvm_version: ir_packager::linked_llvm_version(),
        }
    }

    /// This machine as [`HostTarget::detect`] sees it, remembered in the cache directory
    /// `root` (`root/host/KEY`) so that a process whose kernels all come from the code
    /// cache never loads LLVM. The key is a hash of what the answer depends on, read
    /// without LLVM: the CPU as the kernel describes it (`/proc/cpuinfo`'s vendor,
    /// family, model, stepping and flags, which include the ISA extensions the OS
    /// enables), the libLLVM file this build loads (path, size, modification time) and
    /// offload's version; a different CPU or LLVM never matches. Without a usable
    /// private cache directory, or with a damaged entry, it detects (and rewrites).
    pub fn detect_cached(root: Option<&Path>) -> HostTarget {
        let Some(root) = root else {
            return HostTarget::detect();
        };
        let Some(key) = host_key() else {
            return HostTarget::detect();
        };
        if crate::ensure_private_dir(root).is_err() {
            return HostTarget::detect();
        }
        let dir = root.join("host");
        let path = dir.join(&key);
        if let Some(host) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| HostTarget::from_record(&text))
        {
            return host;
        }
        let host = HostTarget::detect();
        // Best effort: a cache that cannot be written only costs the next process LLVM.
        let _ = std::fs::create_dir_all(&dir).and_then(|()| {
            let mut file = tempfile::NamedTempFile::new_in(&dir)?;
            std::io::Write::write_all(&mut file, host.record().as_bytes())?;
            file.persist(&path).map(drop).map_err(|e| e.error)
        });
        host
    }

    /// The record [`HostTarget::detect_cached`] keeps: one `name=value` line per field,
    /// then a blake3 digest of those lines, so a damaged record is detected again.
    fn record(&self) -> String {
        let fields = format!(
            "triple={}\ncpu={}\nfeatures={}\nllvm={}.{}.{}\n",
            self.triple,
            self.cpu,
            self.features,
            self.llvm_version.major,
            self.llvm_version.minor,
            self.llvm_version.patch
        );
        let digest = blake3::hash(fields.as_bytes()).to_hex();
        format!("{fields}digest={digest}\n")
    }

    /// Reads a record back; `None` if any field is missing or malformed, or its digest
    /// does not match.
    fn from_record(text: &str) -> Option<HostTarget> {
        let (fields, digest) = text.rsplit_once("digest=")?;
        if blake3::hash(fields.as_bytes()).to_hex().as_str() != digest.trim_end() {
            return None;
        }
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let llvm = field("llvm")?;
        let mut numbers = llvm.split('.').map(|n| n.parse::<u32>().ok());
        let version = LlvmVersion {
            major: numbers.next()??,
            minor: numbers.next()??,
            patch: numbers.next()??,
        };
        let host = HostTarget {
            triple: field("triple")?,
            cpu: field("cpu")?,
            features: field("features")?,
            llvm_version: version,
        };
        (!host.triple.is_empty() && !host.cpu.is_empty()).then_some(host)
    }

    /// A generic CPU of `triple`, for ahead-of-time objects. The triple is checked with
    /// target-lexicon and LLVM.
    pub fn generic(triple: &str) -> Result<HostTarget, JitError> {
        let parsed: target_lexicon::Triple =
            triple.parse().map_err(|e| JitError::UnknownTarget {
                triple: triple.to_string(),
                reason: format!("{e}"),
            })?;
        Ok(HostTarget {
            triple: parsed.to_string(),
            cpu: "generic".into(),
            features: String::new(),
            llvm_version: ir_packager::linked_llvm_version(),
        })
    }

    /// LLVM's CPU `cpu` of `triple` with that CPU's own features (an empty feature
    /// string), e.g. `znver3` or `cascadelake`: to see the code another node would get.
    /// The triple is checked as for [`HostTarget::generic`]; the CPU name when a target
    /// machine is made.
    pub fn named_cpu(triple: &str, cpu: &str) -> Result<HostTarget, JitError> {
        Ok(HostTarget {
            cpu: cpu.to_string(),
            ..HostTarget::generic(triple)?
        })
    }

    /// The ISA extensions enabled on this target (`avx2`, `avx512f`, `neon`, ...).
    pub fn enabled_features(&self) -> Vec<&str> {
        self.features
            .split(',')
            .filter_map(|f| f.strip_prefix('+'))
            .collect()
    }

    /// Creates an LLVM target machine for this target.
    pub(crate) fn machine(&self, level: OptimizationLevel) -> Result<TargetMachine, JitError> {
        ir_packager::initialize_llvm();
        let triple = TargetTriple::create(&self.triple);
        let target = Target::from_triple(&triple).map_err(|e| JitError::UnknownTarget {
            triple: self.triple.clone(),
            reason: e.to_string(),
        })?;
        target
            .create_target_machine(
                &triple,
                &self.cpu,
                &self.features,
                level,
                RelocMode::PIC,
                CodeModel::Default,
            )
            .ok_or_else(|| JitError::UnknownTarget {
                triple: self.triple.clone(),
                reason: format!("LLVM has no target machine for CPU `{}`", self.cpu),
            })
    }
}

/// The key of this machine's [`HostTarget`] record, from what it depends on (see
/// [`HostTarget::detect_cached`]); `None` where `/proc/cpuinfo` cannot be read.
fn host_key() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mut h = blake3::Hasher::new();
    h.update(b"offload host record\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(target_lexicon::HOST.to_string().as_bytes());
    // The first processor's identity and flags (the others are the same CPU).
    for line in cpuinfo.lines().take_while(|l| !l.trim().is_empty()) {
        let key = line.split(':').next().unwrap_or("").trim();
        if matches!(
            key,
            "vendor_id"
                | "cpu family"
                | "model"
                | "model name"
                | "stepping"
                | "flags"
                | "CPU implementer"
                | "CPU architecture"
                | "CPU variant"
                | "CPU part"
                | "Features"
                | "cpu"
                | "isa"
        ) {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
    }
    let library = ir_packager::llvm_library_path();
    h.update(library.as_bytes());
    if let Ok(meta) = std::fs::metadata(&library) {
        use std::os::unix::fs::MetadataExt;
        h.update(&meta.len().to_le_bytes());
        h.update(&meta.mtime().to_le_bytes());
        h.update(&meta.mtime_nsec().to_le_bytes());
    }
    Some(h.finalize().to_hex()[..32].to_string())
}

/// The CPU as the operating system names it (`/proc/cpuinfo` on Linux): what benchmark
/// figures are recorded against, next to LLVM's name for it ([`HostTarget::cpu`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuIdentity {
    /// `vendor_id`, e.g. `AuthenticAMD`, `GenuineIntel`.
    pub vendor: String,
    /// `model name`, e.g. `Intel(R) Xeon(R) Processor @ 2.50GHz`.
    pub model_name: String,
    /// `cpu family`, `model` and `stepping` (x86); absent where the kernel does not say.
    pub family: Option<u32>,
    /// See `family`.
    pub model: Option<u32>,
    /// See `family`.
    pub stepping: Option<u32>,
}

impl CpuIdentity {
    /// This machine's CPU, from `/proc/cpuinfo`; `None` where that file is missing or
    /// names no model.
    pub fn of_this_machine() -> Option<CpuIdentity> {
        CpuIdentity::parse(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
    }

    /// The first processor's entry of a `/proc/cpuinfo` text: x86's `model name` (with
    /// vendor, family, model and stepping), PowerPC's `cpu`, a board's `Model`.
    pub fn parse(cpuinfo: &str) -> Option<CpuIdentity> {
        let mut identity = CpuIdentity::default();
        for line in cpuinfo.lines() {
            if line.trim().is_empty() && !identity.model_name.is_empty() {
                break;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let number = || value.parse::<u32>().ok();
            match key {
                "vendor_id" | "CPU implementer" if identity.vendor.is_empty() => {
                    identity.vendor = value.to_string()
                }
                "model name" | "Model" | "cpu" if identity.model_name.is_empty() => {
                    identity.model_name = value.to_string()
                }
                "cpu family" => identity.family = number(),
                "model" => identity.model = number(),
                "stepping" => identity.stepping = number(),
                _ => {}
            }
        }
        (!identity.model_name.is_empty()).then_some(identity)
    }
}

impl fmt::Display for CpuIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.model_name)?;
        let numbers: Vec<String> = [
            ("family", self.family),
            ("model", self.model),
            ("stepping", self.stepping),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name} {v}")))
        .collect();
        match (self.vendor.is_empty(), numbers.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => write!(f, " ({})", self.vendor),
            (true, false) => write!(f, " ({})", numbers.join(", ")),
            (false, false) => write!(f, " ({}, {})", self.vendor, numbers.join(", ")),
        }
    }
}

impl fmt::Display for HostTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let interesting: Vec<&str> = self
            .enabled_features()
            .into_iter()
            .filter(|f| {
                [
                    "avx512f", "avx2", "fma", "sse4.2", "neon", "sve", "vsx", "v",
                ]
                .contains(f)
            })
            .collect();
        write!(
            f,
            "{} cpu={} ({}) LLVM {}",
            self.triple,
            self.cpu,
            if self.features.is_empty() && self.cpu != "generic" {
                // A named CPU without an explicit list: LLVM uses that CPU's features.
                "its default features".to_string()
            } else if interesting.is_empty() {
                "baseline".to_string()
            } else {
                interesting.join(" ")
            },
            self.llvm_version
        )
    }
}

/// The threads this process may run at once (`std::thread::available_parallelism`:
/// the CPUs it may run on, lowered by its cgroup's CPU quota; 1 when unknown), read once:
/// each read opens several files of `/proc` and `/sys`, and a run asks more than once.
pub fn available_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The most memory this process can use, in bytes: physical memory plus swap, lowered by
/// the process's address-space and data limits and its cgroup's memory limit. `None` when
/// none of them can be read. Allocations are checked against it before they are made, so
/// an impossible size is an error that names it, not an abort in the allocator.
pub fn memory_limit() -> Option<u64> {
    let mut limit: Option<u64> = None;
    let mut lower = |bytes: u64| limit = Some(limit.map_or(bytes, |l| l.min(bytes)));
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
        let field = |name: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .map(|kib| kib.saturating_mul(1024))
        };
        if let Some(total) = field("MemTotal:") {
            lower(total.saturating_add(field("SwapTotal:").unwrap_or(0)));
        }
    }
    for resource in [libc::RLIMIT_AS, libc::RLIMIT_DATA] {
        let mut rlimit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(resource, &mut rlimit) } == 0
            && rlimit.rlim_cur != libc::RLIM_INFINITY
        {
            lower(rlimit.rlim_cur);
        }
    }
    // cgroup v2: the limit of this process's group, when it has one.
    if let Some(max) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|groups| {
            groups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_string)
        })
        .and_then(|group| {
            std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", group.trim())).ok()
        })
        .and_then(|text| text.trim().parse::<u64>().ok())
    {
        lower(max);
    }
    limit
}

/// `bytes` in words for messages: `512 bytes`, `3.0 MiB`, `4.0 TiB`.
pub fn describe_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_identity_reads_the_first_processor() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n\
                    model name\t: AMD EPYC 7B13\nstepping\t: 1\nflags\t\t: fpu avx2\n\n\
                    processor\t: 1\nvendor_id\t: Other\nmodel name\t: Other\n";
        let id = CpuIdentity::parse(text).expect("a model name");
        assert_eq!(id.model_name, "AMD EPYC 7B13");
        assert_eq!(
            (id.vendor.as_str(), id.family, id.model, id.stepping),
            ("AuthenticAMD", Some(25), Some(1), Some(1))
        );
        assert_eq!(
            id.to_string(),
            "AMD EPYC 7B13 (AuthenticAMD, family 25, model 1, stepping 1)"
        );
        assert_eq!(CpuIdentity::parse("processor\t: 0\n"), None);
    }

    #[test]
    fn the_host_record_reads_back_what_was_written_and_refuses_damage() {
        let host = HostTarget {
            triple: "x86_64-unknown-linux-gnu".into(),
            cpu: "znver5".into(),
            features: "+avx2,-xop".into(),
            llvm_version: LlvmVersion {
                major: 22,
                minor: 1,
                patch: 8,
            },
        };
        assert_eq!(HostTarget::from_record(&host.record()), Some(host.clone()));
        let text = host.record();
        assert_eq!(
            HostTarget::from_record(&text.replace("llvm=22.1.8", "llvm=22.x")),
            None
        );
        assert_eq!(
            HostTarget::from_record(&text.replace("cpu=znver5\n", "")),
            None
        );
        // A changed character that still parses is caught by the digest.
        assert_eq!(
            HostTarget::from_record(&text.replace("znver5", "znver4")),
            None
        );
        assert_eq!(HostTarget::from_record("garbage"), None);
    }

    #[test]
    fn the_cached_host_is_the_detected_one_and_a_damaged_record_is_rewritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("cache");
        let detected = HostTarget::detect();
        assert_eq!(HostTarget::detect_cached(Some(&root)), detected);
        let records: Vec<_> = std::fs::read_dir(root.join("host"))
            .expect("the record's folder")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        assert_eq!(records.len(), 1, "{records:?}");
        // A record read back gives the same target.
        assert_eq!(HostTarget::detect_cached(Some(&root)), detected);
        std::fs::write(&records[0], "triple=\n").expect("damage the record");
        assert_eq!(HostTarget::detect_cached(Some(&root)), detected);
        let rewritten = std::fs::read_to_string(&records[0]).expect("the record");
        assert_eq!(HostTarget::from_record(&rewritten), Some(detected));
    }
}
