//! Per-node auto-tuning: measures which worker count, packet size, vector width, loop
//! unrolling and optimization level run a kernel fastest on this machine, and keeps the
//! answer as a [`Profile`] in the cache directory.
//!
//! A profile belongs to one CPU (LLVM's name and feature string), one LLVM version and
//! one package: its file is `<cache>/tune/<key>.toml` where the key hashes all four
//! ([`Profile::key_for`]), so a changed CPU, LLVM or package finds no profile and the
//! node runs untuned until `offload tune` runs again.
//!
//! The search ([`tune_kernel`]) starts from the default configuration (every core, the
//! scheduler's packet sizes, LLVM's vector width and unrolling, O3) and changes one knob
//! at a time, keeping a change only when it beats the best so far by more than
//! [`NOISE`]. A final head-to-head between the default and the winner, interleaved so
//! that both see the same machine load, keeps the default unless the winner is still
//! faster by more than [`NOISE`]: tuning never makes a kernel slower than the default
//! as far as the measurement can tell.
//!
//! The measured rate of the chosen configuration (items/s) is stored with it;
//! [`Profile::rate_for`] gives it to whoever advertises this node's speed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use ir_packager::{
    needed_bytes, ArgKind, KernelSpec, Package, PackageHash, ScalarType, ScalarValue, Shape,
};
use node_jit::{Config, Engine, HostTarget, OptLevel, Tuning};
use serde::{Deserialize, Serialize};

use crate::buffer::Buffer;
use crate::engine::RunError;
use crate::job::{ArgValue, Job, Options};

/// Relative speed-up a candidate needs over the best so far to be preferred: below it,
/// differences are taken for measurement noise.
pub const NOISE: f64 = 0.03;

/// Sub-folder of the cache root holding profiles.
pub const PROFILE_DIR: &str = "tune";

/// Checks (creating them private if missing) the cache root and its profile folder: a
/// profile sets how kernels are compiled, so it is read only from this user's own files.
fn check_profile_dir(cache_root: &Path) -> Result<(), TuneError> {
    node_jit::ensure_private_dir(cache_root)?;
    node_jit::ensure_private_dir(&cache_root.join(PROFILE_DIR))?;
    Ok(())
}

/// Elements given to a `whole` buffer (`f32[]`) per item when inputs are synthesized.
pub const WHOLE_ELEMENTS_PER_ITEM: u64 = 4;

/// Tuning that cannot be done, stored or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TuneError {
    /// A run failed while measuring.
    #[error("kernel `{kernel}` failed while tuning ({settings}): {source}")]
    Run {
        /// The kernel.
        kernel: String,
        /// The configuration being measured.
        settings: String,
        /// Why (boxed: a run error is large and tuning errors travel by value).
        source: Box<RunError>,
    },
    /// An engine for another optimization level could not be created.
    #[error(transparent)]
    Jit(#[from] node_jit::JitError),
    /// The package has no such kernel.
    #[error("the package has no kernel `{kernel}` (it has: {available})")]
    NoSuchKernel {
        /// The kernel asked for.
        kernel: String,
        /// The package's kernels.
        available: String,
    },
    /// Synthetic inputs cannot be made.
    #[error("cannot make inputs for argument `{arg}` of kernel `{kernel}`: {reason}")]
    Inputs {
        /// The kernel.
        kernel: String,
        /// The argument.
        arg: String,
        /// Why.
        reason: String,
    },
    /// A profile file cannot be read or written.
    #[error("tuning profile {}: {reason}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// One configuration of a kernel's run on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Worker threads.
    pub threads: usize,
    /// Items per packet, or `None` for the scheduler's own sizes.
    pub packet_items: Option<u64>,
    /// `prefer-vector-width` in bits, or `None` for LLVM's choice.
    pub vector_width: Option<u32>,
    /// Loop unrolling on or off, or `None` for LLVM's choice.
    pub unroll: Option<bool>,
    /// LLVM optimization level, 0 to 3.
    pub opt_level: u8,
}

impl Settings {
    /// The untuned configuration: `threads` workers and every other choice left to the
    /// scheduler and LLVM at O3.
    pub fn default_for(threads: usize) -> Settings {
        Settings {
            threads: threads.max(1),
            packet_items: None,
            vector_width: None,
            unroll: None,
            opt_level: 3,
        }
    }

    /// The code-generation part, for [`Engine::compile_tuned`].
    pub fn tuning(&self) -> Tuning {
        Tuning {
            prefer_vector_width: self.vector_width,
            unroll: self.unroll,
            ..Tuning::default()
        }
    }

    /// The optimization level (an unknown stored value reads as O3).
    pub fn opt(&self) -> OptLevel {
        OptLevel::parse(&self.opt_level.to_string()).unwrap_or(OptLevel::O3)
    }

    /// `options` with these threads, packet size and tuning.
    pub fn apply(&self, mut options: Options) -> Options {
        options = options.threads(self.threads).tuning(self.tuning());
        if let Some(items) = self.packet_items {
            options = options.packet_items(items);
        }
        options
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "threads {}, packet ", self.threads)?;
        match self.packet_items {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "auto")?,
        }
        write!(f, ", vector width ")?;
        match self.vector_width {
            Some(w) => write!(f, "{w}")?,
            None => write!(f, "auto")?,
        }
        write!(f, ", unroll ")?;
        match self.unroll {
            Some(true) => write!(f, "on")?,
            Some(false) => write!(f, "off")?,
            None => write!(f, "auto")?,
        }
        write!(f, ", O{}", self.opt_level)
    }
}

/// The tuning result for one kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelProfile {
    /// The kernel's name.
    pub kernel: String,
    /// The chosen configuration.
    pub settings: Settings,
    /// Measured rate of the chosen configuration, items/s: the node's tuned rate.
    pub items_per_s: f64,
    /// Measured rate of the default configuration in the same final comparison.
    pub default_items_per_s: f64,
    /// Items per measured run.
    pub items: u64,
    /// Configurations measured.
    pub candidates: usize,
    /// When it was tuned, seconds since the Unix epoch.
    pub tuned_at: u64,
}

/// The tuning profile of one package on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// [`Profile::key_for`] of the fields below.
    pub key: String,
    /// Target triple.
    pub triple: String,
    /// LLVM's CPU name.
    pub cpu: String,
    /// LLVM's CPU feature string.
    pub features: String,
    /// The LLVM version the kernels were compiled with.
    pub llvm_version: String,
    /// The package's hash, hex.
    pub package_hash: String,
    /// One entry per tuned kernel.
    pub kernels: Vec<KernelProfile>,
}

impl Profile {
    /// An empty profile for `package` on `host`.
    pub fn new(host: &HostTarget, package: &PackageHash) -> Profile {
        Profile {
            key: Profile::key_for(host, package),
            triple: host.triple.clone(),
            cpu: host.cpu.clone(),
            features: host.features.clone(),
            llvm_version: host.llvm_version.to_string(),
            package_hash: package.to_hex(),
            kernels: Vec::new(),
        }
    }

    /// The profile key: a hash of the triple, CPU name, CPU features, LLVM version and
    /// package hash, so that a change of any of them is a lookup miss.
    pub fn key_for(host: &HostTarget, package: &PackageHash) -> String {
        let mut hasher = blake3::Hasher::new();
        for part in [
            host.triple.as_str(),
            host.cpu.as_str(),
            host.features.as_str(),
            &host.llvm_version.to_string(),
            &package.to_hex(),
        ] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
        hasher.finalize().to_hex()[..32].to_string()
    }

    /// The file of the profile with `key` under `cache_root`.
    pub fn path(cache_root: &Path, key: &str) -> PathBuf {
        cache_root.join(PROFILE_DIR).join(format!("{key}.toml"))
    }

    /// The stored profile of `package` on `host`, or `None` when it was never tuned
    /// here (or was tuned on another CPU, LLVM or package version).
    pub fn load(
        cache_root: &Path,
        host: &HostTarget,
        package: &PackageHash,
    ) -> Result<Option<Profile>, TuneError> {
        let key = Profile::key_for(host, package);
        let path = Profile::path(cache_root, &key);
        check_profile_dir(cache_root)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(TuneError::Io {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let profile = Profile::parse(&text, &path)?;
        // A key collision or a hand-edited file must not apply another machine's tuning.
        if profile.key != key || profile.package_hash != package.to_hex() {
            return Ok(None);
        }
        Ok(Some(profile))
    }

    fn parse(text: &str, path: &Path) -> Result<Profile, TuneError> {
        toml::from_str(text).map_err(|e| TuneError::Io {
            path: path.to_path_buf(),
            reason: format!("not a tuning profile: {e}"),
        })
    }

    /// Writes the profile to its file (atomically: a reader sees the old or the new
    /// one) and returns the path.
    pub fn save(&self, cache_root: &Path) -> Result<PathBuf, TuneError> {
        let path = Profile::path(cache_root, &self.key);
        let io = |e: std::io::Error| TuneError::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        let dir = cache_root.join(PROFILE_DIR);
        check_profile_dir(cache_root)?;
        let text = toml::to_string_pretty(self).map_err(|e| TuneError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".profile-")
            .tempfile_in(&dir)
            .map_err(io)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(path)
    }

    /// Every profile stored under `cache_root`, sorted by file name.
    pub fn list(cache_root: &Path) -> Result<Vec<(PathBuf, Profile)>, TuneError> {
        let dir = cache_root.join(PROFILE_DIR);
        check_profile_dir(cache_root)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(TuneError::Io {
                    path: dir,
                    reason: e.to_string(),
                })
            }
        };
        let mut profiles = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| TuneError::Io {
                    path: dir.clone(),
                    reason: e.to_string(),
                })?
                .path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).map_err(|e| TuneError::Io {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                profiles.push((path.clone(), Profile::parse(&text, &path)?));
            }
        }
        profiles.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(profiles)
    }

    /// The entry for `kernel`.
    pub fn kernel(&self, kernel: &str) -> Option<&KernelProfile> {
        self.kernels.iter().find(|k| k.kernel == kernel)
    }

    /// Adds or replaces the entry for its kernel.
    pub fn insert(&mut self, entry: KernelProfile) {
        self.kernels.retain(|k| k.kernel != entry.kernel);
        self.kernels.push(entry);
        self.kernels.sort_by(|a, b| a.kernel.cmp(&b.kernel));
    }

    /// The tuned rate (items/s) of `kernel` of the package with `package_hash`, or
    /// `None` when this profile is of another package or lacks the kernel.
    pub fn rate_for(&self, package_hash: &PackageHash, kernel: &str) -> Option<f64> {
        if self.package_hash != package_hash.to_hex() {
            return None;
        }
        self.kernel(kernel).map(|k| k.items_per_s)
    }
}

/// How hard [`tune_kernel`] searches.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// Items per measured run.
    pub items: u64,
    /// Timed runs per configuration (the median counts), after one warm-up run.
    pub repeats: usize,
    /// Only worker count and packet size (no recompilation): for smoke tests.
    pub quick: bool,
    /// Stop trying new configurations after this long (the final comparison still runs).
    pub budget: Option<Duration>,
    /// Cores to consider: worker counts 1..=cores.
    pub cores: usize,
    /// Scalar values to use instead of the synthesized ones.
    pub scalars: Vec<(String, ScalarValue)>,
    /// Measure in isolated workers of this `offload` program ([`Options::isolated`]), as
    /// `offload run` executes kernels; `None`: in process.
    pub isolation: Option<std::path::PathBuf>,
    /// The longest one packet of a measured run may take ([`Options::packet_timeout`]):
    /// a kernel that hangs then fails the tuning instead of holding it. Default: none.
    pub packet_timeout: Option<Duration>,
}

impl TuneOptions {
    /// `items` items per run, 3 repeats, every core, the full search.
    pub fn new(items: u64) -> TuneOptions {
        TuneOptions {
            items: items.max(1),
            repeats: 3,
            quick: false,
            budget: None,
            cores: node_jit::available_threads(),
            scalars: Vec::new(),
            isolation: None,
            packet_timeout: None,
        }
    }
}

/// Arguments for a timing run of `spec` over `items` items (every argument but the
/// lengths the runtime fills in): input buffers sized by the manifest
/// ([`needed_bytes`]) filled with deterministic values in [0, 1) (integers
/// 0..16), `whole` buffers with [`WHOLE_ELEMENTS_PER_ITEM`] elements per item, and
/// scalars from `scalars` or else 1 (floats), `items` (unsigned integers, saturated).
pub fn synthetic_args(
    spec: &KernelSpec,
    items: u64,
    scalars: &[(String, ScalarValue)],
) -> Result<Vec<ArgValue>, TuneError> {
    let fail = |arg: &ir_packager::Arg, reason: &str| TuneError::Inputs {
        kernel: spec.name.clone(),
        arg: arg.name.clone(),
        reason: reason.to_string(),
    };
    // Scalars first: buffer sizes may be expressions of them.
    let mut chosen: Vec<(String, ScalarValue)> = Vec::new();
    for arg in spec.args.iter().filter(|a| a.derived.is_none()) {
        if let ArgKind::Scalar(ty) = arg.kind {
            let value = match scalars.iter().find(|(n, _)| *n == arg.name) {
                Some((_, v)) if v.scalar_type() == ty => *v,
                Some((_, v)) => return Err(fail(arg, &format!("{v} is not a {ty}"))),
                None => default_scalar(ty, items),
            };
            chosen.push((arg.name.clone(), value));
        }
    }
    let scalar = |name: &str| chosen.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let mut values = Vec::with_capacity(spec.args.len());
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for (slot, arg) in spec.args.iter().enumerate() {
        if arg.derived.is_some() {
            continue;
        }
        let value = match arg.kind {
            ArgKind::Scalar(_) => match scalar(&arg.name) {
                Some(v) => ArgValue::Scalar(v),
                None => return Err(fail(arg, "has no value")),
            },
            ArgKind::Buffer {
                elem, ref shape, ..
            } => {
                let bytes = match shape {
                    Shape::Whole => items
                        .checked_mul(WHOLE_ELEMENTS_PER_ITEM * elem.size() as u64)
                        .ok_or_else(|| fail(arg, "too many items"))?,
                    _ => needed_bytes(spec, slot, items, &scalar)
                        .map_err(|e| fail(arg, &e.to_string()))?
                        .unwrap_or(0),
                };
                let len = usize::try_from(bytes).map_err(|_| fail(arg, "too many items"))?;
                let mut data = Vec::with_capacity(len);
                while data.len() < len {
                    // xorshift: cheap, deterministic, no dependency.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let unit = (seed >> 11) as f64 / (1u64 << 53) as f64;
                    data.extend_from_slice(&element_bytes(elem, unit));
                }
                data.truncate(len);
                ArgValue::Buffer(Buffer::from_bytes(&data))
            }
        };
        values.push(value);
    }
    Ok(values)
}

fn default_scalar(ty: ScalarType, items: u64) -> ScalarValue {
    match ty {
        // There are no `u8` scalars (only `u8` buffers); `check_args` reports a mismatch.
        ScalarType::U8 | ScalarType::U32 => ScalarValue::U32(items.min(u32::MAX.into()) as u32),
        ScalarType::I32 => ScalarValue::I32(items.min(i32::MAX as u64) as i32),
        ScalarType::I64 => ScalarValue::I64(items.min(i64::MAX as u64) as i64),
        ScalarType::U64 => ScalarValue::U64(items),
        ScalarType::F32 => ScalarValue::F32(1.0),
        ScalarType::F64 => ScalarValue::F64(1.0),
    }
}

fn element_bytes(elem: ScalarType, unit: f64) -> Vec<u8> {
    let small = (unit * 16.0) as u64;
    match elem {
        ScalarType::U8 => vec![small as u8],
        ScalarType::I32 => (small as i32).to_le_bytes().to_vec(),
        ScalarType::U32 => (small as u32).to_le_bytes().to_vec(),
        ScalarType::I64 => (small as i64).to_le_bytes().to_vec(),
        ScalarType::U64 => small.to_le_bytes().to_vec(),
        ScalarType::F32 => (unit as f32).to_le_bytes().to_vec(),
        ScalarType::F64 => unit.to_le_bytes().to_vec(),
    }
}

/// Engines for the optimization levels tried, sharing one cache directory.
struct Engines {
    o3: Engine,
    o2: Engine,
}

impl Engines {
    fn get(&self, level: u8) -> &Engine {
        if level == 2 {
            &self.o2
        } else {
            &self.o3
        }
    }
}

/// Measures `settings`: one warm-up run (which compiles or loads the code), then the
/// median of `repeats` timed runs, as items/s.
fn measure(
    engines: &Engines,
    package: &Package,
    kernel: &str,
    args: &mut [ArgValue],
    settings: &Settings,
    options: &TuneOptions,
) -> Result<f64, TuneError> {
    let engine = engines.get(settings.opt_level);
    let mut local = settings.apply(Options::default());
    if let Some(program) = &options.isolation {
        local = local.isolated(program);
    }
    if let Some(timeout) = options.packet_timeout {
        local = local.packet_timeout(timeout);
    }
    let fail = |source: RunError| TuneError::Run {
        kernel: kernel.to_string(),
        settings: settings.to_string(),
        source: Box::new(source),
    };
    let mut job = Job::kernel(
        Arc::new(package.clone()),
        kernel,
        options.items,
        args.to_vec(),
    )
    .map_err(|e| fail(e.into()))?;
    crate::engine::run(engine, &mut job, &local).map_err(fail)?;
    let mut times = Vec::with_capacity(options.repeats.max(1));
    for _ in 0..options.repeats.max(1) {
        let report = crate::engine::run(engine, &mut job, &local).map_err(fail)?;
        times.push(report.run_time.as_secs_f64().max(1e-9));
    }
    Ok(options.items as f64 / median(&mut times))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The vector widths worth trying on `host`: 128 always on x86 (SSE2 is baseline),
/// 256 with AVX2, 512 with AVX-512F. Other architectures get LLVM's choice only.
pub fn vector_widths(host: &HostTarget) -> Vec<u32> {
    let features = host.enabled_features();
    let mut widths = Vec::new();
    if host.triple.starts_with("x86_64") {
        widths.push(128);
        if features.contains(&"avx2") {
            widths.push(256);
        }
        if features.contains(&"avx512f") {
            widths.push(512);
        }
    }
    widths
}

/// Tunes `kernel` of `package` on this node with the engines' settings from `config`
/// (its cache directory; the optimization level is one of the knobs). `log` receives
/// one line per measured configuration.
pub fn tune_kernel(
    config: &Config,
    package: &Package,
    kernel: &str,
    options: &TuneOptions,
    log: &mut dyn FnMut(&str),
) -> Result<KernelProfile, TuneError> {
    let spec = package
        .manifest()
        .kernel(kernel)
        .ok_or_else(|| TuneError::NoSuchKernel {
            kernel: kernel.to_string(),
            available: package.manifest().kernel_names(),
        })?
        .clone();
    let engines = Engines {
        o3: Engine::new(config.clone().opt_level(OptLevel::O3))?,
        o2: Engine::new(config.clone().opt_level(OptLevel::O2))?,
    };
    let mut args = synthetic_args(&spec, options.items, &options.scalars)?;
    let started = Instant::now();
    let over_budget = || options.budget.is_some_and(|b| started.elapsed() > b);
    let cores = options.cores.max(1);
    let default = Settings::default_for(cores);
    let mut best = default.clone();
    let mut best_rate = measure(&engines, package, kernel, &mut args, &best, options)?;
    log(&format!(
        "{kernel}: {best}: {best_rate:.0} items/s (default)"
    ));
    let mut candidates = 1;

    // One knob at a time, in the order of their usual effect; each step keeps the
    // others at the best found so far.
    type Knob = Box<dyn Fn(&Settings) -> Vec<Settings>>;
    let items = options.items;
    let mut knobs: Vec<Knob> = vec![
        Box::new(move |s: &Settings| {
            (1..=cores)
                .map(|threads| Settings {
                    threads,
                    ..s.clone()
                })
                .collect()
        }),
        Box::new(move |s: &Settings| {
            // Packets of 1/2, 1/8 and 1/32 of each worker's share, and the scheduler's.
            let mut sizes: Vec<Option<u64>> = vec![None];
            for div in [2, 8, 32] {
                let size = items / (s.threads as u64 * div);
                if size >= 1 && !sizes.contains(&Some(size)) {
                    sizes.push(Some(size));
                }
            }
            sizes
                .into_iter()
                .map(|packet_items| Settings {
                    packet_items,
                    ..s.clone()
                })
                .collect()
        }),
    ];
    if !options.quick {
        let widths = vector_widths(engines.o3.host());
        knobs.push(Box::new(move |s: &Settings| {
            std::iter::once(None)
                .chain(widths.iter().copied().map(Some))
                .map(|vector_width| Settings {
                    vector_width,
                    ..s.clone()
                })
                .collect()
        }));
        knobs.push(Box::new(|s: &Settings| {
            [None, Some(false), Some(true)]
                .into_iter()
                .map(|unroll| Settings {
                    unroll,
                    ..s.clone()
                })
                .collect()
        }));
        knobs.push(Box::new(|s: &Settings| {
            [3, 2]
                .into_iter()
                .map(|opt_level| Settings {
                    opt_level,
                    ..s.clone()
                })
                .collect()
        }));
    }
    for knob in &knobs {
        for candidate in knob(&best.clone()) {
            if candidate == best || over_budget() {
                continue;
            }
            let rate = measure(&engines, package, kernel, &mut args, &candidate, options)?;
            candidates += 1;
            let kept = rate > best_rate * (1.0 + NOISE);
            log(&format!(
                "{kernel}: {candidate}: {rate:.0} items/s{}",
                if kept { " (best so far)" } else { "" }
            ));
            if kept {
                best = candidate;
                best_rate = rate;
            }
        }
    }

    // Head to head, interleaved so that both see the same load; the winner of the search
    // may have been lucky once.
    let (chosen, chosen_rate, default_rate) = if best == default {
        (default, best_rate, best_rate)
    } else {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..options.repeats.max(1) {
            theirs.push(measure(
                &engines, package, kernel, &mut args, &default, options,
            )?);
            ours.push(measure(
                &engines, package, kernel, &mut args, &best, options,
            )?);
        }
        let (ours, theirs) = (median(&mut ours), median(&mut theirs));
        log(&format!(
            "{kernel}: final: tuned {ours:.0} items/s against default {theirs:.0} items/s"
        ));
        if ours > theirs * (1.0 + NOISE) {
            (best, ours, theirs)
        } else {
            (default, theirs, theirs)
        }
    };
    Ok(KernelProfile {
        kernel: kernel.to_string(),
        settings: chosen,
        items_per_s: chosen_rate,
        default_items_per_s: default_rate,
        items: options.items,
        candidates,
        tuned_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}
