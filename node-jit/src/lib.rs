//! JIT-compiles offload packages for the exact CPU of this node.
//!
//! An [`Engine`] (one per process, cheap to clone) knows the host target: triple, LLVM's
//! name for the CPU and its ISA features (AVX-512 here, NEON elsewhere). [`Engine::compile`]
//! turns one kernel of a [`Package`] into native code: it retargets the module to the
//! host, wraps item kernels in a loop over the packet's range (so LLVM inlines and
//! vectorizes the body), marks buffers `noalias`, runs LLVM's O3 pipeline, emits an
//! object and links it into a shared library. That library *is* the disk cache entry:
//! its name is a hash of everything that changes the code (package hash, kernel, CPU,
//! features, optimization level, tuning, LLVM and offload versions), so a second process
//! loads it with `dlopen` instead of compiling again.
//!
//! ```no_run
//! use node_jit::{Config, Engine};
//! use ir_packager::Package;
//!
//! let engine = Engine::new(Config::default())?;
//! let package = Package::read(std::path::Path::new("saxpy.okp"))?;
//! let kernel = engine.compile(&package, "saxpy")?;
//! let (x, mut y) = (vec![1.0f32; 1024], vec![2.0f32; 1024]);
//! let args = [3.0f32.to_bits() as u64, x.as_ptr() as u64, y.as_mut_ptr() as u64];
//! // SAFETY: the block matches saxpy's manifest and both buffers hold 1024 items.
//! unsafe { kernel.run_packet(0, 1024, &args)? };
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Trust: nothing found on disk is run unchecked. The cache directory must belong to this
//! user and be writable by nobody else (else [`JitError::UnsafeCache`]); every entry
//! carries the key it was compiled for and a digest of its code, both checked before the
//! code is loaded, from memory, so what was checked is what runs. A damaged entry is
//! compiled again with a warning. See [`cache`](crate::ensure_private_dir) for the rules.
//!
//! Caches are bounded: the in-memory cache keeps at most
//! [`Config::memory_cache_entries`] kernels and the disk cache at most
//! [`Config::disk_cache_bytes`], least recently used first out.

mod cache;
mod codegen;
mod host;
mod loader;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inkwell::OptimizationLevel;
use ir_packager::{KernelSpec, LoadError, Package};

pub use cache::ensure_private_dir;
pub use codegen::{
    c_prototype, compile_phases, link_needs, listing, CompilePhases, LinkNeeds, ListingKind,
    CAN_PANIC_SYMBOL, ENTRY_SYMBOL, PANIC_HOOK_SYMBOL,
};
pub use host::{available_threads, describe_bytes, memory_limit, CpuIdentity, HostTarget};

/// Errors of compiling and loading kernels.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JitError {
    /// The package cannot be loaded on this node.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The kernel is not in the package.
    #[error("the package has no kernel `{kernel}` (it has: {available})")]
    NoSuchKernel {
        /// The requested name.
        kernel: String,
        /// The package's kernels.
        available: String,
    },
    /// A target triple LLVM or target-lexicon does not know.
    #[error("unknown target `{triple}`: {reason}")]
    UnknownTarget {
        /// The triple.
        triple: String,
        /// Why it was refused.
        reason: String,
    },
    /// LLVM failed to build, optimize or emit code.
    #[error("code generation failed: {0}")]
    Codegen(String),
    /// The system linker failed to make a shared library.
    #[error("linking the kernel library failed: {0}")]
    Link(String),
    /// The compiled library could not be loaded.
    #[error("loading the compiled kernel {path} failed: {reason}")]
    LoadLibrary {
        /// The library.
        path: String,
        /// The loader's message.
        reason: String,
    },
    /// The cache directory could be used by someone else to plant code: refused.
    #[error("refusing the code cache {path}: {reason}")]
    UnsafeCache {
        /// The directory.
        path: String,
        /// What is wrong with it and how to fix it.
        reason: String,
    },
    /// The process that compiles kernels for this one ([`ObjectCompiler`]) failed or
    /// crashed; the message says how.
    #[error("{0}")]
    Compiler(String),
    /// The cache directory is unusable.
    #[error("code cache {path}: {source}")]
    Cache {
        /// The directory or file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A kernel panicked (index out of bounds, `unwrap` on `None`, ...) while running a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel panicked: {reason}")]
pub struct KernelPanic {
    /// The code passed to `offload_panic`.
    pub code: i32,
    /// What the code means.
    pub reason: &'static str,
}

/// LLVM optimization level for kernels (of the [`Pipeline`] in [`Tuning::pipeline`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptLevel {
    /// No optimization (debugging the lowering).
    O0,
    /// Level 1 (`lto<O1>`, or `default<O1>` with [`Pipeline::PerModule`]).
    O1,
    /// Level 2 (`lto<O2>` or `default<O2>`).
    O2,
    /// Level 3 (`lto<O3>` or `default<O3>`), the default.
    O3,
}

impl OptLevel {
    fn pipeline(self, pipeline: Pipeline) -> &'static str {
        match (self, pipeline) {
            (OptLevel::O0, _) => "default<O0>",
            (OptLevel::O1, Pipeline::PerModule) => "default<O1>",
            (OptLevel::O2, Pipeline::PerModule) => "default<O2>",
            (OptLevel::O3, Pipeline::PerModule) => "default<O3>",
            (OptLevel::O1, Pipeline::PostLink) => "lto<O1>",
            (OptLevel::O2, Pipeline::PostLink) => "lto<O2>",
            (OptLevel::O3, Pipeline::PostLink) => "lto<O3>",
        }
    }

    fn llvm(self) -> OptimizationLevel {
        match self {
            OptLevel::O0 => OptimizationLevel::None,
            OptLevel::O1 => OptimizationLevel::Less,
            OptLevel::O2 => OptimizationLevel::Default,
            OptLevel::O3 => OptimizationLevel::Aggressive,
        }
    }

    /// Parses `0`..`3` or `O0`..`O3`.
    pub fn parse(text: &str) -> Option<OptLevel> {
        match text.trim_start_matches(['O', 'o']) {
            "0" => Some(OptLevel::O0),
            "1" => Some(OptLevel::O1),
            "2" => Some(OptLevel::O2),
            "3" => Some(OptLevel::O3),
            _ => None,
        }
    }
}

/// The LLVM optimization pipeline node-jit runs on a kernel's module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pipeline {
    /// LLVM's post-link pipeline for modules that were already optimized one by one
    /// (`lto<O3>`, what a linker runs on LTO bitcode): the package's bitcode was
    /// optimized by its front end, so the node inlines across the entry wrapper and
    /// optimizes and vectorizes for its CPU without redoing the whole per-module
    /// simplification. The default since issue 17: about half the optimization time,
    /// and code as fast or faster (`docs/jit-benchmarks.md`).
    PostLink,
    /// LLVM's per-module pipeline (`default<O3>`), as before issue 17.
    PerModule,
}

/// Code-generation knobs chosen by per-node tuning. `None` leaves LLVM's own choice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuning {
    /// Preferred vector width in bits (`prefer-vector-width`), e.g. 256 or 512.
    pub prefer_vector_width: Option<u32>,
    /// Whether loop unrolling is enabled (default: on at O1 and above).
    pub unroll: Option<bool>,
    /// Whether byte-search loops get a fast path through the C library's `memchr` /
    /// `memrchr` (default: on at O1 and above; off shows the plain loops).
    pub library_search: Option<bool>,
    /// Which LLVM pipeline optimizes the module (default: [`Pipeline::PostLink`]).
    pub pipeline: Option<Pipeline>,
}

/// What turns a kernel into an object file on a cache miss: LLVM's front half of a
/// compile (parse the bitcode, optimize for `target`, emit), without linking. The engine
/// does it in its own process unless [`Config::object_compiler`] hands it elsewhere,
/// e.g. to a helper process, so that LLVM failing on hostile bitcode ends the helper,
/// not the caller. [`compile_entry_object`] is what an implementation runs.
pub trait ObjectCompiler: Send + Sync {
    /// The relocatable object of `kernel` of `package`, as [`compile_entry_object`]
    /// makes it.
    fn compile_object(
        &self,
        package: &Package,
        kernel: &str,
        target: &HostTarget,
        opt: OptLevel,
        tuning: &Tuning,
    ) -> Result<KernelObject, JitError>;
}

/// The default [`ObjectCompiler`]: LLVM in this process.
struct InProcess;

impl ObjectCompiler for InProcess {
    fn compile_object(
        &self,
        package: &Package,
        kernel: &str,
        target: &HostTarget,
        opt: OptLevel,
        tuning: &Tuning,
    ) -> Result<KernelObject, JitError> {
        compile_entry_object(package, kernel, target, opt, tuning)
    }
}

/// A compiled kernel before linking: the relocatable object and what linking it needs
/// ([`link_needs`], read where LLVM is loaded anyway, so that linking needs none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelObject {
    /// The object file's bytes.
    pub bytes: Vec<u8>,
    /// The libraries it calls into.
    pub needs: LinkNeeds,
}

/// The object file of `kernel` of `package` for `target` (the entry wrapper, optimized
/// and emitted), as a cache miss compiles it before linking: what an [`ObjectCompiler`]
/// runs wherever it runs.
pub fn compile_entry_object(
    package: &Package,
    kernel: &str,
    target: &HostTarget,
    opt: OptLevel,
    tuning: &Tuning,
) -> Result<KernelObject, JitError> {
    let spec = codegen::kernel_spec(package, kernel)?;
    let bytes = codegen::compile_entry_object(package, spec, target, opt, tuning)?;
    let needs = codegen::link_needs(&bytes);
    Ok(KernelObject { bytes, needs })
}

/// Engine settings. Every setter documents its default.
#[derive(Clone)]
pub struct Config {
    opt_level: OptLevel,
    cache_dir: Option<PathBuf>,
    disk_cache: bool,
    disk_cache_bytes: u64,
    memory_cache_entries: usize,
    linker: Option<PathBuf>,
    target: Option<HostTarget>,
    object_compiler: Option<Arc<dyn ObjectCompiler>>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("opt_level", &self.opt_level)
            .field("cache_dir", &self.cache_dir)
            .field("disk_cache", &self.disk_cache)
            .field("disk_cache_bytes", &self.disk_cache_bytes)
            .field("memory_cache_entries", &self.memory_cache_entries)
            .field("linker", &self.linker)
            .field("target", &self.target)
            .field("object_compiler", &self.object_compiler.is_some())
            .finish()
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            opt_level: OptLevel::O3,
            cache_dir: default_cache_dir(),
            disk_cache: true,
            disk_cache_bytes: 1 << 30,
            memory_cache_entries: 256,
            linker: std::env::var_os("CC").map(PathBuf::from),
            target: None,
            object_compiler: None,
        }
    }
}

/// The default cache directory: `$OFFLOAD_CACHE_DIR`, else the user's cache directory
/// (`$XDG_CACHE_HOME/offload` or `$HOME/.cache/offload`). `None` when none of these is
/// set: there is no shared fallback (a directory under `/tmp` could be another user's),
/// so such a process keeps no disk cache.
pub fn default_cache_dir() -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|d| !d.is_empty());
    if let Some(dir) = set("OFFLOAD_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = set("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("offload"));
    }
    set("HOME").map(|home| PathBuf::from(home).join(".cache").join("offload"))
}

impl Config {
    /// Optimization level. Default: [`OptLevel::O3`].
    pub fn opt_level(mut self, level: OptLevel) -> Config {
        self.opt_level = level;
        self
    }

    /// Root of the on-disk cache; compiled kernels go to `DIR/jit`. It must belong to this
    /// user and be writable by nobody else. Default: [`default_cache_dir`].
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Config {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Whether compiled kernels are kept on disk and reused by later processes.
    /// Default: true (when there is a cache directory). Without it libraries live in a
    /// private temporary folder until the engine is dropped.
    pub fn disk_cache(mut self, enabled: bool) -> Config {
        self.disk_cache = enabled;
        self
    }

    /// Cap on the bytes of compiled kernels kept on disk; the least recently used go
    /// first. Default: 1 GiB.
    pub fn disk_cache_bytes(mut self, bytes: u64) -> Config {
        self.disk_cache_bytes = bytes;
        self
    }

    /// Cap on the kernels kept loaded in memory; the least recently used are unloaded
    /// once nothing runs them. Default: 256.
    pub fn memory_cache_entries(mut self, entries: usize) -> Config {
        self.memory_cache_entries = entries.max(1);
        self
    }

    /// A C compiler driver to link objects into shared libraries with
    /// (`DRIVER -shared -o LIB OBJ`, plus `-lm` if the kernel calls libm). Default: `$CC`
    /// if set, else `ld` called directly, with libgcc only if the object calls it (about
    /// 30 ms faster per cold compile than going through the driver, which adds start-up
    /// files a kernel library does not need; see [`link_needs`]).
    pub fn linker(mut self, linker: impl Into<PathBuf>) -> Config {
        self.linker = Some(linker.into());
        self
    }

    /// The optimization level kernels are compiled at.
    pub fn level(&self) -> OptLevel {
        self.opt_level
    }

    /// Compiles kernels on a cache miss with `compiler` (see [`ObjectCompiler`]) instead
    /// of in this process; linking, caching and loading stay here. Default: in process.
    pub fn object_compiler(mut self, compiler: Arc<dyn ObjectCompiler>) -> Config {
        self.object_compiler = Some(compiler);
        self
    }

    /// The CPU to generate code for. Default: this machine's ([`HostTarget::detect`]).
    /// Another CPU of the same triple (e.g. [`HostTarget::named_cpu`]`(triple, "znver3")`)
    /// compiles what a node with that CPU would run, for comparisons on one machine;
    /// running it needs a CPU with at least those ISA extensions.
    pub fn target(mut self, target: HostTarget) -> Config {
        self.target = Some(target);
        self
    }

    /// The configured cache root, if there is one.
    pub fn cache_root(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }
}

/// Where a compiled kernel came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeOrigin {
    /// Compiled now.
    Compiled,
    /// Loaded from the disk cache (compiled by an earlier process).
    DiskCache,
    /// Already loaded in this process.
    MemoryCache,
}

impl CodeOrigin {
    /// What happened, for messages: `compiled`, `loaded from the disk cache`,
    /// `already loaded` (followed well by "in 1.2 ms").
    pub fn describe(self) -> &'static str {
        match self {
            CodeOrigin::Compiled => "compiled",
            CodeOrigin::DiskCache => "loaded from the disk cache",
            CodeOrigin::MemoryCache => "already loaded",
        }
    }
}

/// Native code for one kernel, ready to run packets.
pub struct CompiledKernel {
    // Keeps the code mapped; `entry` points into it.
    _library: loader::Loaded,
    entry: EntryFn,
    /// Whether the code can reach the panic handler ([`CAN_PANIC_SYMBOL`]).
    can_panic: bool,
    spec: KernelSpec,
    library_path: PathBuf,
    key: String,
}

type EntryFn = unsafe extern "C-unwind" fn(u64, u64, *const u64);

impl std::fmt::Debug for CompiledKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledKernel")
            .field("kernel", &self.spec.name)
            .field("library", &self.library_path)
            .finish()
    }
}

/// The payload a kernel panic unwinds with.
struct PanicPayload(i32);

extern "C-unwind" fn kernel_panic_handler(code: i32) {
    // `resume_unwind` skips the panic hook: the runner reports the panic, not std.
    std::panic::resume_unwind(Box::new(PanicPayload(code)))
}

impl CompiledKernel {
    /// The kernel's manifest entry.
    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    /// The cache entry the code was loaded from (a shared library followed by offload's
    /// trailer; `objdump -d` reads it as it is).
    pub fn library_path(&self) -> &Path {
        &self.library_path
    }

    /// Whether the code can reach the panic handler: false when no panic path is left
    /// after optimization, and [`CompiledKernel::run_packet`] then calls it without
    /// catching an unwind.
    pub fn can_panic(&self) -> bool {
        self.can_panic
    }

    /// The cache key (hex) of this code.
    pub fn cache_key(&self) -> &str {
        &self.key
    }

    /// Runs items `start..end` (item kernel) or the packet `start..end` (range kernel).
    /// `args` holds one 8-byte slot per manifest argument, in order: scalars as their
    /// bits zero-extended ([`ir_packager::ScalarValue::to_bits`]), buffers as addresses.
    /// A kernel panic is returned as [`KernelPanic`]; the process is unharmed.
    ///
    /// # Safety
    /// Every buffer address must point to memory valid for the kernel's accesses with
    /// global indices of this packet: element `k*i .. k*(i+1)` for `[k]` buffers of every
    /// item `i` in `start..end`, the whole buffer for `[]`, the fixed length for `sum`.
    /// Output regions of concurrently running packets must not overlap.
    pub unsafe fn run_packet(&self, start: u64, end: u64, args: &[u64]) -> Result<(), KernelPanic> {
        assert_eq!(
            args.len(),
            self.spec.args.len(),
            "argument block does not match kernel `{}`",
            self.spec.name
        );
        let entry = self.entry;
        if !self.can_panic {
            // Nothing in the code reads the panic hook, so nothing can unwind out of it:
            // no catching (a few ns of a short packet).
            // SAFETY: as below.
            unsafe { entry(start, end, args.as_ptr()) };
            return Ok(());
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: upheld by the caller (buffer validity); the block length is checked.
            unsafe { entry(start, end, args.as_ptr()) }
        }));
        match outcome {
            Ok(()) => Ok(()),
            Err(payload) => match payload.downcast::<PanicPayload>() {
                Ok(p) => Err(KernelPanic {
                    code: p.0,
                    reason: ir_packager::panic_reason(p.0),
                }),
                // Not ours: a bug in the host, keep unwinding.
                Err(other) => std::panic::resume_unwind(other),
            },
        }
    }
}

/// Loads the code an engine stored at `path` (a [`CompiledKernel::library_path`]) under
/// `key` for kernel `spec`, after checking the entry as a cache lookup does (this user's,
/// private, the key and digest its trailer names). This is how the local engine's worker
/// processes get the code their coordinator compiled without compiling it again, even
/// from a private scratch cache.
pub fn load_cache_entry(
    path: &Path,
    spec: KernelSpec,
    key: &str,
) -> Result<CompiledKernel, JitError> {
    let library = cache::read_entry(path, key).map_err(|reason| JitError::LoadLibrary {
        path: path.display().to_string(),
        reason,
    })?;
    load_library(&library, path, spec, key.to_string())
}

/// Result of [`Engine::compile`] with timing, for `-v` output and benchmarks.
#[derive(Clone, Debug)]
pub struct CompileReport {
    /// The code.
    pub kernel: Arc<CompiledKernel>,
    /// Where it came from.
    pub origin: CodeOrigin,
    /// How long getting it took.
    pub elapsed: Duration,
}

struct EngineInner {
    config: Config,
    host: HostTarget,
    loaded: Mutex<MemoryCache>,
    // Used instead of the disk cache when it is off or there is no cache directory: a
    // private folder that lives as long as the engine.
    scratch: Option<tempfile::TempDir>,
}

/// The kernels loaded in this process, with a use counter for least-recently-used
/// eviction.
#[derive(Default)]
struct MemoryCache {
    kernels: HashMap<String, (Arc<CompiledKernel>, u64)>,
    uses: u64,
}

impl MemoryCache {
    fn get(&mut self, key: &str) -> Option<Arc<CompiledKernel>> {
        self.uses += 1;
        let uses = self.uses;
        self.kernels.get_mut(key).map(|(kernel, last)| {
            *last = uses;
            Arc::clone(kernel)
        })
    }

    /// Inserts `kernel`, then unloads least recently used kernels above `cap` (a kernel
    /// still running somewhere stays mapped until its last `Arc` goes).
    fn insert(&mut self, key: String, kernel: Arc<CompiledKernel>, cap: usize) {
        self.uses += 1;
        self.kernels.insert(key, (kernel, self.uses));
        while self.kernels.len() > cap {
            let Some(oldest) = self
                .kernels
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            self.kernels.remove(&oldest);
        }
    }
}

/// The JIT: host target, settings and the code cache. Cheap to clone; share one per
/// process.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("host", &self.inner.host)
            .field("cache", &self.inner.config.cache_dir)
            .finish()
    }
}

/// Bumped whenever the generated code changes for the same inputs (entry ABI, passes).
const CODEGEN_REVISION: u32 = 4;

impl Engine {
    /// Creates an engine for this machine. The cache directory is checked when the first
    /// kernel is compiled or loaded.
    pub fn new(config: Config) -> Result<Engine, JitError> {
        let private = !config.disk_cache || config.cache_dir.is_none();
        if config.disk_cache && config.cache_dir.is_none() {
            tracing::warn!(
                "no cache directory (none of OFFLOAD_CACHE_DIR, XDG_CACHE_HOME and HOME is set): compiled kernels are not kept for later runs; set one or pass --cache-dir"
            );
        }
        let scratch = if private {
            Some(
                tempfile::Builder::new()
                    .prefix("offload-jit-")
                    .tempdir()
                    .map_err(|source| JitError::Cache {
                        path: std::env::temp_dir().display().to_string(),
                        source,
                    })?,
            )
        } else {
            None
        };
        Ok(Engine {
            inner: Arc::new(EngineInner {
                // From the cache directory's record when there is one: a run whose
                // kernels all hit the code cache then never loads LLVM.
                host: config.target.clone().unwrap_or_else(|| {
                    HostTarget::detect_cached(if private {
                        None
                    } else {
                        config.cache_dir.as_deref()
                    })
                }),
                config,
                loaded: Mutex::new(MemoryCache::default()),
                scratch,
            }),
        })
    }

    /// The target this engine compiles for.
    pub fn host(&self) -> &HostTarget {
        &self.inner.host
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The code cache: the private scratch folder, or `CACHE/jit` after checking that
    /// it (and the cache root) is this user's alone.
    fn disk_cache(&self) -> Result<cache::DiskCache, JitError> {
        match (&self.inner.scratch, &self.inner.config.cache_dir) {
            (Some(dir), _) => cache::DiskCache::open(dir.path(), u64::MAX),
            (None, Some(root)) => {
                cache::ensure_private_dir(root)?;
                cache::DiskCache::open(&root.join("jit"), self.inner.config.disk_cache_bytes)
            }
            // Unreachable in practice: `new` makes a scratch folder whenever there is no
            // cache root.
            (None, None) => Err(JitError::Cache {
                path: "(no cache directory)".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
        }
    }

    /// The cache key of `kernel` of `package` with `tuning` on this engine: a blake3 hash
    /// of everything that changes the machine code, and nothing else.
    pub fn cache_key(&self, package: &Package, kernel: &str, tuning: &Tuning) -> String {
        let host = &self.inner.host;
        let mut h = blake3::Hasher::new();
        let parts: [&str; 9] = [
            "offload node-jit",
            env!("CARGO_PKG_VERSION"),
            &CODEGEN_REVISION.to_string(),
            &package.hash().to_hex(),
            kernel,
            &host.triple,
            &host.cpu,
            &host.features,
            &host.llvm_version.to_string(),
        ];
        for part in parts {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        h.update(format!("{:?}|{:?}", self.inner.config.opt_level, tuning).as_bytes());
        h.finalize().to_hex().to_string()
    }

    /// Compiles `kernel` of `package` with default tuning, or returns cached code.
    pub fn compile(
        &self,
        package: &Package,
        kernel: &str,
    ) -> Result<Arc<CompiledKernel>, JitError> {
        self.compile_tuned(package, kernel, &Tuning::default())
            .map(|r| r.kernel)
    }

    /// Compiles `kernel` with `tuning`, or returns cached code; reports where the code
    /// came from and how long it took.
    pub fn compile_tuned(
        &self,
        package: &Package,
        kernel: &str,
        tuning: &Tuning,
    ) -> Result<CompileReport, JitError> {
        let started = Instant::now();
        let spec = codegen::kernel_spec(package, kernel)?.clone();
        let key = self.cache_key(package, kernel, tuning);
        // One lock for lookup and compile: two threads asking for the same kernel must
        // not both compile it, and compiles are rare.
        let mut loaded = self
            .inner
            .loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(kernel) = loaded.get(&key) {
            return Ok(CompileReport {
                kernel,
                origin: CodeOrigin::MemoryCache,
                elapsed: started.elapsed(),
            });
        }
        let cache = self.disk_cache()?;
        let library_path = cache.entry_path(&key);
        let found = match cache.lookup(&key) {
            cache::Lookup::Hit(library) => Some(library),
            cache::Lookup::Miss => None,
            cache::Lookup::Damaged(reason) => {
                tracing::warn!(
                    "code cache entry {} is damaged ({reason}): compiling kernel `{kernel}` again",
                    library_path.display()
                );
                None
            }
        };
        let (library, origin) = match found {
            Some(library) => (library, CodeOrigin::DiskCache),
            None => {
                let compiler: &dyn ObjectCompiler = match &self.inner.config.object_compiler {
                    Some(compiler) => compiler.as_ref(),
                    None => &InProcess,
                };
                let object = compiler.compile_object(
                    package,
                    kernel,
                    &self.inner.host,
                    self.inner.config.opt_level,
                    tuning,
                )?;
                let library = self.link_library(&object, cache.dir())?;
                cache.store(&key, &library)?;
                (library, CodeOrigin::Compiled)
            }
        };
        let kernel = Arc::new(load_library(&library, &library_path, spec, key.clone())?);
        loaded.insert(
            key,
            Arc::clone(&kernel),
            self.inner.config.memory_cache_entries,
        );
        tracing::debug!(kernel = %kernel.spec.name, origin = origin.describe(), "kernel ready");
        Ok(CompileReport {
            kernel,
            origin,
            elapsed: started.elapsed(),
        })
    }

    /// Links `object` into a shared library in a temporary folder under `dir` and
    /// returns the library's bytes.
    fn link_library(&self, object: &KernelObject, dir: &Path) -> Result<Vec<u8>, JitError> {
        let needs = object.needs;
        let object = &object.bytes[..];
        let cache_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| JitError::Cache { path, source }
        };
        let work = tempfile::Builder::new()
            .prefix(".link-")
            .tempdir_in(dir)
            .map_err(cache_err(dir))?;
        let object_path = work.path().join("kernel.o");
        std::fs::write(&object_path, object).map_err(cache_err(&object_path))?;
        let staged = work.path().join("kernel.so");
        let mut command = match &self.inner.config.linker {
            Some(driver) => {
                let mut c = Command::new(driver);
                c.arg("-shared");
                c
            }
            None => {
                // `--eh-frame-hdr` lets a kernel panic unwind through the library;
                // libgcc provides what codegen may call (`__powidf2`, 128-bit division).
                let mut c = Command::new("ld");
                c.args(["-shared", "--eh-frame-hdr", "-z", "noexecstack"]);
                c
            }
        };
        command.arg("-o").arg(&staged).arg(&object_path);
        // Only what the object calls: reading libm and libgcc is half of a small link.
        if needs.libm {
            command.arg("-lm");
        }
        if self.inner.config.linker.is_none() && needs.libgcc {
            if let Some(libgcc) = libgcc_archive() {
                command.arg(libgcc);
            }
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let output = command.output().map_err(|e| {
            JitError::Link(format!(
                "cannot run `{program}` ({e}); install binutils and gcc, or set CC"
            ))
        })?;
        if !output.status.success() {
            return Err(JitError::Link(format!(
                "`{program}` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        std::fs::read(&staged).map_err(cache_err(&staged))
    }

    /// Compiles every kernel of `package` ahead of time for `target` (a generic CPU of
    /// that triple), returning a relocatable object in which each kernel is exported
    /// under its own name with the C ABI of its signature ([`c_prototype`]). If the
    /// package has panic paths the object calls `void offload_panic(int32_t code)`,
    /// which the program linking it must define (and never return from).
    pub fn compile_object_for(&self, package: &Package, target: &str) -> Result<Vec<u8>, JitError> {
        let target = if target == "native" || target == self.inner.host.triple {
            self.inner.host.clone()
        } else {
            HostTarget::generic(target)?
        };
        codegen::compile_kernels_object(package, &target, self.inner.config.opt_level)
    }
}

/// The static libgcc of the system C compiler, asked once per process.
fn libgcc_archive() -> Option<&'static Path> {
    static LIBGCC: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    LIBGCC
        .get_or_init(|| {
            let output = Command::new("cc")
                .arg("-print-libgcc-file-name")
                .output()
                .ok()?;
            let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            path.is_file().then_some(path)
        })
        .as_deref()
}

fn load_library(
    library: &[u8],
    path: &Path,
    spec: KernelSpec,
    key: String,
) -> Result<CompiledKernel, JitError> {
    let load_err = |reason: String| JitError::LoadLibrary {
        path: path.display().to_string(),
        reason,
    };
    // SAFETY: the bytes were produced by this engine's code generator (now, or by an
    // earlier process under a key naming its inputs, with a digest checked just now);
    // such libraries have no initializers (packages may not have global constructors).
    let loaded = unsafe { loader::load(library) }.map_err(load_err)?;
    let library = &loaded.library;
    // SAFETY: the symbol is the entry point generated by `codegen::build_entry` with
    // exactly this signature.
    let entry: EntryFn = unsafe {
        *library
            .get::<EntryFn>(ENTRY_SYMBOL.as_bytes())
            .map_err(|e| load_err(e.to_string()))?
    };
    // SAFETY: the flag, where the library has it, is a byte generated by codegen.
    let can_panic = unsafe {
        library
            .get::<*const u8>(CAN_PANIC_SYMBOL.as_bytes())
            .map_or(true, |flag| (*flag).read() != 0)
    };
    // SAFETY: the hook is a pointer-sized global generated by codegen; writing our
    // handler there before any packet runs is the protocol.
    unsafe {
        let hook = library
            .get::<*mut Option<extern "C-unwind" fn(i32)>>(PANIC_HOOK_SYMBOL.as_bytes())
            .map_err(|e| load_err(e.to_string()))?;
        (*hook).write(Some(kernel_panic_handler));
    }
    Ok(CompiledKernel {
        _library: loaded,
        entry,
        can_panic,
        spec,
        library_path: path.to_path_buf(),
        key,
    })
}
