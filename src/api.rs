//! The Rust API: a [`Cluster`] handle, [`Kernel`]s, typed arguments and launches whose
//! results land in the caller's slices.
//!
//! A launch takes a kernel, a number of items and one [`KernelArg`] per manifest argument:
//! scalars by value, input slices by shared reference, output, read-write and sum slices by
//! `&mut`. Types and lengths are checked against the kernel's manifest before anything
//! runs; on success the `out`/`inout` slices hold the kernel's results and `sum` slices
//! have the job's totals added to them. Errors are one enum, [`LaunchError`]. Launches are
//! blocking ([`Cluster::launch`]) or async ([`Cluster::launch_async`], on tokio's blocking
//! pool); [`LaunchOptions::progress`] reports items done as packets complete.
//!
//! `#[offload::kernel]` generates a typed launcher on top of this (`saxpy::launch(&cluster,
//! n, a, &x, &mut y)`); see `docs/macros.md`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use offload::{package_source, Cluster, Kernel, KernelArg, LaunchOptions, Manifest};
//!
//! let manifest = Manifest::parse(&std::fs::read_to_string("examples/saxpy/manifest.toml")?)?;
//! let package = Arc::new(package_source("examples/saxpy/kernel.rs".as_ref(), &manifest)?);
//! let saxpy = Kernel::new(package, "saxpy")?;
//! let cluster = Cluster::local()?;
//! let x = vec![1.0f32; 1000];
//! let mut y = vec![2.0f32; 1000];
//! let options = LaunchOptions::default().progress(|done, total| eprintln!("{done}/{total}"));
//! let args = &mut [KernelArg::scalar(3.0f32), KernelArg::input(&x), KernelArg::inout(&mut y)];
//! cluster.launch(&saxpy, 1000, args, options)?;
//! assert_eq!(y[0], 5.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Two back ends sit behind the same handle: [`Cluster::local`] runs jobs on this machine's
//! cores with `run_local` and a node-jit [`Engine`]; [`Cluster::connect`] runs them on the
//! nodes of a cluster (explicit peers and/or mDNS discovery, mutual TLS with the cluster's
//! credentials) through the cluster crate's client. Results are the same either way.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use cluster::client::{ClientConfig, ClientError};
use cluster::client::{ClusterClient, JobArg};
pub use cluster::credentials::{Credentials, CredentialsError};

use ir_packager::{
    Access, ArgKind, FormatError, KernelSpec, Package, ScalarType, ScalarValue, Shape,
};
use node_jit::{CodeOrigin, Config, Engine, JitError, Tuning};

use crate::buffer::Buffer;
use crate::local::{run_local, ArgValue, LocalOptions, RunError};

mod sealed {
    pub trait Sealed {}
}

/// An element type of kernel buffers: `u8 i32 u32 i64 u64 f32 f64`. Sealed: these are
/// plain old data, every bit pattern valid, which makes the byte views below sound.
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The kernel-model type.
    const TYPE: ScalarType;
}

/// A scalar argument type: `i32 u32 i64 u64 f32 f64`.
pub trait Scalar: sealed::Sealed + Copy {
    /// The value as the kernel model holds it.
    fn value(self) -> ScalarValue;
}

macro_rules! elements {
    ($($t:ty => $st:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const TYPE: ScalarType = ScalarType::$st;
        }
    )*};
}
elements!(u8 => U8, i32 => I32, u32 => U32, i64 => I64, u64 => U64, f32 => F32, f64 => F64);

macro_rules! scalars {
    ($($t:ty => $sv:ident),*) => {$(
        impl Scalar for $t {
            fn value(self) -> ScalarValue {
                ScalarValue::$sv(self)
            }
        }
    )*};
}
scalars!(i32 => I32, u32 => U32, i64 => I64, u64 => U64, f32 => F32, f64 => F64);

fn bytes_of<T: Element>(slice: &[T]) -> &[u8] {
    // SAFETY: `Element` types have no padding and no invalid bit patterns; u8 has no
    // alignment requirement; the length is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(slice.as_ptr().cast::<u8>(), std::mem::size_of_val(slice)) }
}

fn bytes_of_mut<T: Element>(slice: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; any bytes written are a valid `T`, and the borrow is
    // exclusive.
    unsafe {
        std::slice::from_raw_parts_mut(
            slice.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(slice),
        )
    }
}

/// One argument of a launch, in manifest order.
#[derive(Debug)]
pub struct KernelArg<'a>(ArgInner<'a>);

#[derive(Debug)]
enum ArgInner<'a> {
    Scalar(ScalarValue),
    Input {
        elem: ScalarType,
        bytes: &'a [u8],
    },
    Output {
        access: Access,
        elem: ScalarType,
        bytes: &'a mut [u8],
    },
}

impl<'a> KernelArg<'a> {
    /// A scalar (`i32 u32 i64 u64 f32 f64`).
    pub fn scalar(value: impl Scalar) -> KernelArg<'a> {
        KernelArg(ArgInner::Scalar(value.value()))
    }

    /// An `in` buffer (whole or split).
    pub fn input<T: Element>(slice: &'a [T]) -> KernelArg<'a> {
        KernelArg(ArgInner::Input {
            elem: T::TYPE,
            bytes: bytes_of(slice),
        })
    }

    /// An `inout` buffer: read by the kernel and overwritten with its results.
    pub fn inout<T: Element>(slice: &'a mut [T]) -> KernelArg<'a> {
        Self::writable(Access::InOut, slice)
    }

    /// An `out` buffer: overwritten with the kernel's results; its contents are not read.
    pub fn output<T: Element>(slice: &'a mut [T]) -> KernelArg<'a> {
        Self::writable(Access::Out, slice)
    }

    /// A `sum` buffer: the job's element-wise totals are added to it (integers wrap).
    pub fn sum<T: Element>(slice: &'a mut [T]) -> KernelArg<'a> {
        Self::writable(Access::Sum, slice)
    }

    fn writable<T: Element>(access: Access, slice: &'a mut [T]) -> KernelArg<'a> {
        KernelArg(ArgInner::Output {
            access,
            elem: T::TYPE,
            bytes: bytes_of_mut(slice),
        })
    }

    fn describe(&self) -> String {
        match &self.0 {
            ArgInner::Scalar(v) => format!("the {} scalar {v}", v.scalar_type()),
            ArgInner::Input { elem, .. } => format!("an input slice of {elem}"),
            ArgInner::Output { access, elem, .. } => {
                format!("an `{}` slice of {elem}", access.name())
            }
        }
    }
}

/// A launch that cannot run or did not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The local node's JIT engine could not be created.
    #[error("cannot start the local node: {0}")]
    Engine(#[source] JitError),
    /// The kernel's crate has no embedded package.
    #[error("kernel `{kernel}` has no embedded package: add a build script that calls `offload_build::package(\"src/<your kernel file>.rs\")` (build-dependency `offload-build`), or load the package yourself and use `{kernel}::launch_with`")]
    NotEmbedded {
        /// The kernel.
        kernel: String,
    },
    /// The embedded package's bytes do not decode.
    #[error("the package embedded for kernel `{kernel}` is unreadable: {source}")]
    Package {
        /// The kernel.
        kernel: String,
        /// Why.
        source: FormatError,
    },
    /// The package has no such kernel.
    #[error("the package has no kernel `{kernel}` (it has: {available})")]
    NoSuchKernel {
        /// The kernel asked for.
        kernel: String,
        /// The package's kernels.
        available: String,
    },
    /// The package's kernel has another signature than the launcher expects.
    #[error("kernel `{kernel}` in the package is `{found}` but the launcher was generated for `{expected}`: the package was built from other source; rebuild the crate")]
    SignatureMismatch {
        /// The kernel.
        kernel: String,
        /// The launcher's signature.
        expected: String,
        /// The package's signature.
        found: String,
    },
    /// A slice of the wrong length.
    #[error("slice `{arg}` (`{spec}`) must hold {expected} elements for {items} items, but it holds {actual}")]
    SliceLength {
        /// The argument.
        arg: String,
        /// Its manifest spelling.
        spec: String,
        /// Items of the job.
        items: u64,
        /// Elements it must hold.
        expected: u64,
        /// Elements it holds.
        actual: u64,
    },
    /// Arguments that do not match the kernel (count or types), or the job failed while
    /// running (compilation, a kernel panic, a lost worker).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The cluster credentials could not be loaded.
    #[error("cluster credentials: {0}")]
    Credentials(#[from] CredentialsError),
    /// Connecting to the cluster failed, or the job failed on it.
    #[error("cluster: {0}")]
    Cluster(#[from] ClientError),
    /// The async task running a job (or a connection) was cancelled or panicked.
    #[error("the task {what} did not complete: {reason}")]
    TaskFailed {
        /// What the task was doing: "running kernel `saxpy`", "connecting to the cluster".
        what: String,
        /// tokio's words.
        reason: String,
    },
}

/// A package embedded in a binary by `offload-build` (what `#[offload::kernel]` emits),
/// decoded on first use.
pub struct EmbeddedPackage {
    bytes: Option<&'static [u8]>,
    decoded: OnceLock<Arc<Package>>,
}

impl EmbeddedPackage {
    /// A package whose file was included with `include_bytes!`.
    pub const fn new(bytes: &'static [u8]) -> EmbeddedPackage {
        EmbeddedPackage {
            bytes: Some(bytes),
            decoded: OnceLock::new(),
        }
    }

    /// No package: the crate has no `offload-build` step.
    pub const fn missing() -> EmbeddedPackage {
        EmbeddedPackage {
            bytes: None,
            decoded: OnceLock::new(),
        }
    }

    /// The decoded package; `kernel` names the asking kernel in errors.
    pub fn package(&self, kernel: &str) -> Result<Arc<Package>, LaunchError> {
        if let Some(p) = self.decoded.get() {
            return Ok(p.clone());
        }
        let bytes = self.bytes.ok_or_else(|| LaunchError::NotEmbedded {
            kernel: kernel.to_string(),
        })?;
        let package = Package::from_bytes(bytes).map_err(|source| LaunchError::Package {
            kernel: kernel.to_string(),
            source,
        })?;
        // Another thread may have won the race; either decoded value is the same package.
        Ok(self.decoded.get_or_init(|| Arc::new(package)).clone())
    }
}

/// A kernel of a package, ready to launch. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Kernel {
    package: Arc<Package>,
    spec: KernelSpec,
}

impl Kernel {
    /// Kernel `name` of `package`.
    pub fn new(package: Arc<Package>, name: &str) -> Result<Kernel, LaunchError> {
        let spec =
            package
                .manifest()
                .kernel(name)
                .cloned()
                .ok_or_else(|| LaunchError::NoSuchKernel {
                    kernel: name.to_string(),
                    available: package.manifest().kernel_names(),
                })?;
        Ok(Kernel { package, spec })
    }

    /// Kernel `name` of an embedded package, which must have exactly `signature`
    /// ([`KernelSpec::signature`]): what `#[offload::kernel]` launchers call.
    pub fn embedded(
        package: &EmbeddedPackage,
        name: &str,
        signature: &str,
    ) -> Result<Kernel, LaunchError> {
        let kernel = Kernel::new(package.package(name)?, name)?;
        kernel.expect_signature(signature)?;
        Ok(kernel)
    }

    /// Checks that the kernel has `signature` ([`KernelSpec::signature`]).
    pub fn expect_signature(&self, signature: &str) -> Result<(), LaunchError> {
        let found = self.spec.signature();
        if found == signature {
            Ok(())
        } else {
            Err(LaunchError::SignatureMismatch {
                kernel: self.spec.name.clone(),
                expected: signature.to_string(),
                found,
            })
        }
    }

    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its manifest entry.
    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    /// The package holding it.
    pub fn package(&self) -> &Arc<Package> {
        &self.package
    }
}

/// Settings of one launch. Every setter documents its default.
pub struct LaunchOptions {
    threads: Option<usize>,
    tuning: Tuning,
    progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
    local_fallback: bool,
}

impl Default for LaunchOptions {
    fn default() -> LaunchOptions {
        LaunchOptions {
            threads: None,
            tuning: Tuning::default(),
            progress: None,
            local_fallback: true,
        }
    }
}

impl std::fmt::Debug for LaunchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchOptions")
            .field("threads", &self.threads)
            .field("tuning", &self.tuning)
            .field("progress", &self.progress.is_some())
            .field("local_fallback", &self.local_fallback)
            .finish()
    }
}

impl LaunchOptions {
    /// Worker threads on the local node. Default: every core.
    pub fn threads(mut self, threads: usize) -> LaunchOptions {
        self.threads = Some(threads.max(1));
        self
    }

    /// Code-generation tuning. Default: LLVM's own choices.
    pub fn tuning(mut self, tuning: Tuning) -> LaunchOptions {
        self.tuning = tuning;
        self
    }

    /// Called with `(items done, items total)` each time a packet's results are committed,
    /// on this machine and on a cluster. Default: none.
    pub fn progress(
        mut self,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> LaunchOptions {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Whether a cluster launch whose every node is lost finishes on this machine (the
    /// committed packets are kept; the rest runs on this machine's cores). Default: true.
    pub fn local_fallback(mut self, on: bool) -> LaunchOptions {
        self.local_fallback = on;
        self
    }

    fn into_local(self) -> LocalOptions {
        let mut local = LocalOptions::default().tuning(self.tuning);
        if let Some(threads) = self.threads {
            local = local.threads(threads);
        }
        if let Some(progress) = self.progress {
            local = local.progress(move |done, total| progress(done, total));
        }
        local
    }
}

/// What a finished launch did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LaunchReport {
    /// Items run.
    pub items: u64,
    /// Packets committed.
    pub packets: u64,
    /// Workers that ran packets: local threads, or cluster nodes.
    pub workers: usize,
    /// Where the kernel's machine code came from (local node only: on a cluster each node
    /// compiles or loads it itself).
    pub code_origin: Option<CodeOrigin>,
    /// Time to compile or load the kernel (local), or to upload and prepare the job on
    /// the nodes (cluster).
    pub compile_time: Duration,
    /// Time running packets.
    pub run_time: Duration,
}

/// Where jobs run. Cheap to clone; share one per process (it holds the JIT engine and its
/// code cache, or the connections to the cluster's nodes).
#[derive(Clone)]
pub struct Cluster {
    backend: Arc<Backend>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.backend {
            Backend::Local { engine } => f
                .debug_struct("Cluster::Local")
                .field("engine", engine)
                .finish(),
            Backend::Remote { nodes, .. } => f
                .debug_struct("Cluster::Remote")
                .field("nodes", nodes)
                .finish(),
        }
    }
}

enum Backend {
    /// The embedded local node: this machine's cores (`in_place::run`, and `run_local`
    /// for async launches).
    Local { engine: Engine },
    /// The nodes of a cluster. The client runs one job at a time (`run_job` takes
    /// `&mut self`), so launches on one handle take turns.
    Remote {
        // Boxed: the client is large and the local variant is the common one.
        client: Box<Mutex<ClusterClient>>,
        nodes: Vec<String>,
    },
}

impl Cluster {
    /// The local node: this machine's cores, with a JIT engine of default
    /// [`Config`] (code cache in the user's cache directory).
    ///
    /// ```no_run
    /// let cluster = offload::Cluster::local()?;
    /// # Ok::<(), offload::LaunchError>(())
    /// ```
    pub fn local() -> Result<Cluster, LaunchError> {
        Cluster::local_with(Config::default())
    }

    /// The local node with an engine of `config`.
    pub fn local_with(config: Config) -> Result<Cluster, LaunchError> {
        Ok(Cluster::from_engine(
            Engine::new(config).map_err(LaunchError::Engine)?,
        ))
    }

    /// The local node with an existing engine (sharing its code cache).
    pub fn from_engine(engine: Engine) -> Cluster {
        Cluster {
            backend: Arc::new(Backend::Local { engine }),
        }
    }

    /// The nodes of a cluster: `config` names explicit peers (`ClientConfig::peers`)
    /// and/or turns on mDNS discovery (`ClientConfig::discover`), and carries the
    /// credentials this client presents. At least one node must accept.
    ///
    /// ```no_run
    /// use offload::{ClientConfig, Cluster, Credentials};
    /// let credentials = Credentials::load("cluster".as_ref())?;
    /// let config = ClientConfig::new(credentials).peers(["127.0.0.1:7878".parse()?]);
    /// let cluster = Cluster::connect(config)?;
    /// println!("{:?}", cluster.nodes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(config: ClientConfig) -> Result<Cluster, LaunchError> {
        Cluster::connect_blocking(config)
    }

    /// Like [`connect`](Cluster::connect), as a future: connecting runs on tokio's
    /// blocking pool. (`connect` also works inside a runtime, blocking its thread while
    /// the nodes answer.)
    pub async fn connect_async(config: ClientConfig) -> Result<Cluster, LaunchError> {
        tokio::task::spawn_blocking(move || Cluster::connect_blocking(config))
            .await
            .map_err(|e| LaunchError::TaskFailed {
                what: "connecting to the cluster".into(),
                reason: e.to_string(),
            })?
    }

    fn connect_blocking(config: ClientConfig) -> Result<Cluster, LaunchError> {
        let client = ClusterClient::connect(config)?;
        let nodes = client
            .nodes()
            .into_iter()
            .map(|(addr, info)| format!("{} ({addr})", info.name))
            .collect();
        Ok(Cluster {
            backend: Arc::new(Backend::Remote {
                client: Box::new(Mutex::new(client)),
                nodes,
            }),
        })
    }

    /// The local node's engine, if this cluster runs jobs locally.
    pub fn local_engine(&self) -> Option<&Engine> {
        match &*self.backend {
            Backend::Local { engine } => Some(engine),
            Backend::Remote { .. } => None,
        }
    }

    /// The nodes jobs run on: `["local"]`, or the connected nodes' names and addresses.
    pub fn nodes(&self) -> Vec<String> {
        match &*self.backend {
            Backend::Local { .. } => vec!["local".to_string()],
            Backend::Remote { nodes, .. } => nodes.clone(),
        }
    }

    /// Runs `kernel` over items `0..items` with `args` (one per manifest argument) and
    /// blocks until the results are in the `&mut` slices. On the local node the kernel
    /// works in the caller's slices directly (no copies; `out` slices are zeroed first);
    /// on a cluster the slices are copied into the job's buffers and the results back.
    pub fn launch(
        &self,
        kernel: &Kernel,
        items: u64,
        args: &mut [KernelArg<'_>],
        options: LaunchOptions,
    ) -> Result<LaunchReport, LaunchError> {
        if let Backend::Local { engine } = &*self.backend {
            check(kernel, items, args)?;
            return in_place::run(engine, kernel, items, args, options);
        }
        let mut values = prepare(kernel, items, args)?;
        let report = self.backend.run(kernel, items, &mut values, options)?;
        write_back(args, &values);
        Ok(report)
    }

    /// Like [`launch`](Cluster::launch), as a future: the job runs on tokio's blocking
    /// pool (the arguments are copied in before and out after), so the runtime's threads
    /// stay free. Needs a tokio runtime. Dropping the future before it completes lets the
    /// job finish in the background and discards its results.
    ///
    /// ```no_run
    /// # async fn f(cluster: offload::Cluster, kernel: offload::Kernel) -> Result<(), offload::LaunchError> {
    /// use offload::{KernelArg, LaunchOptions};
    /// let x = vec![1.0f32; 64];
    /// let mut y = vec![0.0f32; 64];
    /// let args = &mut [KernelArg::scalar(2.0f32), KernelArg::input(&x), KernelArg::inout(&mut y)];
    /// cluster.launch_async(&kernel, 64, args, LaunchOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn launch_async(
        &self,
        kernel: &Kernel,
        items: u64,
        args: &mut [KernelArg<'_>],
        options: LaunchOptions,
    ) -> Result<LaunchReport, LaunchError> {
        let mut values = prepare(kernel, items, args)?;
        let backend = self.backend.clone();
        let job_kernel = kernel.clone();
        let joined = tokio::task::spawn_blocking(move || {
            backend
                .run(&job_kernel, items, &mut values, options)
                .map(|report| (report, values))
        })
        .await
        .map_err(|e| LaunchError::TaskFailed {
            what: format!("running kernel `{}`", kernel.name()),
            reason: e.to_string(),
        })?;
        let (report, values) = joined?;
        write_back(args, &values);
        Ok(report)
    }
}

impl Backend {
    fn run(
        &self,
        kernel: &Kernel,
        items: u64,
        values: &mut [ArgValue],
        options: LaunchOptions,
    ) -> Result<LaunchReport, LaunchError> {
        match self {
            Backend::Local { engine } => {
                let report = run_local(
                    engine,
                    &kernel.package,
                    kernel.name(),
                    items,
                    values,
                    &options.into_local(),
                )?;
                Ok(LaunchReport {
                    items: report.items,
                    packets: report.packets,
                    workers: report.threads,
                    code_origin: Some(report.code_origin),
                    compile_time: report.compile_time,
                    run_time: report.run_time,
                })
            }
            Backend::Remote { client, .. } => {
                // A panic while another launch held the client leaves nothing half-done
                // that the next job depends on (each job reconnects and re-plans).
                let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
                let mut job_args: Vec<JobArg<'_>> = values
                    .iter_mut()
                    .map(|v| match v {
                        ArgValue::Scalar(s) => JobArg::Scalar(*s),
                        ArgValue::Buffer(b) => JobArg::Buffer(b.as_bytes_mut()),
                    })
                    .collect();
                client.set_progress(options.progress.clone().map(|progress| {
                    Arc::new(move |job: &cluster::client::JobProgress| {
                        progress(job.items_done, job.items)
                    }) as Arc<cluster::client::ProgressFn>
                }));
                let ran = client.run_job(&kernel.package, kernel.name(), items, &mut job_args);
                client.set_progress(None);
                let report = match ran {
                    Ok(report) => report,
                    Err(ClientError::Unfinished(unfinished)) if options.local_fallback => {
                        drop(job_args);
                        return finish_here(kernel, items, values, &unfinished, &options);
                    }
                    Err(e) => return Err(e.into()),
                };
                Ok(LaunchReport {
                    items: report.items,
                    packets: report.packets,
                    workers: report
                        .packets_per_node
                        .iter()
                        .filter(|(_, n)| *n > 0)
                        .count(),
                    code_origin: None,
                    compile_time: report.prepare_time,
                    run_time: report.run_time,
                })
            }
        }
    }
}

/// Finishes a cluster job whose every node was lost on this machine's cores: the
/// committed packets' results are in `values` already.
fn finish_here(
    kernel: &Kernel,
    items: u64,
    values: &mut [ArgValue],
    unfinished: &cluster::client::Unfinished,
    options: &LaunchOptions,
) -> Result<LaunchReport, LaunchError> {
    tracing::warn!("{unfinished}; finishing the remaining items on this machine");
    let engine = Engine::new(Config::default()).map_err(LaunchError::Engine)?;
    let mut local = LocalOptions::default().tuning(options.tuning.clone());
    if let Some(threads) = options.threads {
        local = local.threads(threads);
    }
    let report = crate::local::run_ranges_local(
        &engine,
        &kernel.package,
        kernel.name(),
        items,
        &unfinished.remaining,
        values,
        &local,
    )?;
    if let Some(progress) = &options.progress {
        progress(items, items);
    }
    Ok(LaunchReport {
        items,
        packets: unfinished.committed_packets + report.packets,
        workers: report.threads,
        code_origin: Some(report.code_origin),
        compile_time: report.compile_time,
        run_time: report.run_time,
    })
}

/// Checks `args` against the kernel's manifest: count, types and slice lengths.
fn check(kernel: &Kernel, items: u64, args: &[KernelArg<'_>]) -> Result<(), LaunchError> {
    let spec = kernel.spec();
    if args.len() != spec.args.len() {
        return Err(RunError::ArgCount {
            kernel: spec.name.clone(),
            signature: spec.signature(),
            expected: spec.args.len(),
            given: args.len(),
        }
        .into());
    }
    for (arg, given) in spec.args.iter().zip(args) {
        let type_error = || {
            LaunchError::from(RunError::ArgType {
                kernel: spec.name.clone(),
                arg: arg.name.clone(),
                spec: arg.to_string(),
                given: given.describe(),
            })
        };
        match (arg.kind, &given.0) {
            (ArgKind::Scalar(ty), ArgInner::Scalar(v)) if v.scalar_type() == ty => {}
            (
                ArgKind::Buffer {
                    access: Access::In,
                    elem,
                    shape,
                },
                ArgInner::Input { elem: e, bytes },
            ) if *e == elem => check_length(spec, arg, items, shape, elem, bytes.len())?,
            (
                ArgKind::Buffer {
                    access,
                    elem,
                    shape,
                },
                ArgInner::Output {
                    access: a,
                    elem: e,
                    bytes,
                },
            ) if *a == access && *e == elem => {
                check_length(spec, arg, items, shape, elem, bytes.len())?
            }
            _ => return Err(type_error()),
        }
    }
    Ok(())
}

/// Checks `args` against the kernel's manifest and copies them into job buffers (for
/// back ends that cannot work in the caller's memory: the cluster, and async launches).
fn prepare(
    kernel: &Kernel,
    items: u64,
    args: &[KernelArg<'_>],
) -> Result<Vec<ArgValue>, LaunchError> {
    check(kernel, items, args)?;
    Ok(args
        .iter()
        .map(|given| match &given.0 {
            ArgInner::Scalar(v) => ArgValue::Scalar(*v),
            ArgInner::Input { bytes, .. } => ArgValue::Buffer(Buffer::from_bytes(bytes)),
            ArgInner::Output { access, bytes, .. } => ArgValue::Buffer(match access {
                Access::InOut => Buffer::from_bytes(bytes),
                // `out` contents are not read and `sum` buffers start from zero.
                _ => Buffer::zeroed(bytes.len()),
            }),
        })
        .collect())
}

fn check_length(
    spec: &KernelSpec,
    arg: &ir_packager::Arg,
    items: u64,
    shape: Shape,
    elem: ScalarType,
    bytes: usize,
) -> Result<(), LaunchError> {
    let actual = (bytes / elem.size()) as u64;
    let expected = match shape {
        Shape::Whole => return Ok(()),
        Shape::PerItem(k) => items.checked_mul(k),
        Shape::Fixed(n) => Some(n),
    };
    match expected {
        Some(expected) if expected == actual => Ok(()),
        _ => Err(LaunchError::SliceLength {
            arg: arg.name.clone(),
            spec: format!("{} of kernel {}", arg, spec.name),
            items,
            expected: expected.unwrap_or(u64::MAX),
            actual,
        }),
    }
}

/// Copies results back into the caller's slices: `out`/`inout` overwritten, `sum` added.
fn write_back(args: &mut [KernelArg<'_>], values: &[ArgValue]) {
    for (arg, value) in args.iter_mut().zip(values) {
        let (
            ArgInner::Output {
                access,
                elem,
                bytes,
            },
            ArgValue::Buffer(result),
        ) = (&mut arg.0, value)
        else {
            continue;
        };
        if *access == Access::Sum {
            elem.add_into(bytes, result.as_bytes());
        } else {
            bytes.copy_from_slice(result.as_bytes());
        }
    }
}

/// The local node's launch without copies: packets run on this machine's cores, scheduled
/// by the same scheduler core as `run_local`, with the kernel reading and writing the
/// caller's slices directly. `run_local` takes owned `ArgValue` buffers, so a launch
/// through it pays a copy of every input and output (measured in `benches/launch.rs`:
/// most of the time of a memory-bound launch); this path does not.
mod in_place {
    use std::time::Instant;

    use ir_packager::Access;
    use node_jit::Engine;

    use super::{ArgInner, Kernel, KernelArg, LaunchError, LaunchOptions, LaunchReport};
    use crate::local::{sum_slots, BlockJob, RunError};

    /// Runs the job; `args` were checked against the manifest by the caller.
    pub(super) fn run(
        engine: &Engine,
        kernel: &Kernel,
        items: u64,
        args: &mut [KernelArg<'_>],
        options: LaunchOptions,
    ) -> Result<LaunchReport, LaunchError> {
        let compiled = engine
            .compile_tuned(&kernel.package, kernel.name(), &options.tuning)
            .map_err(RunError::Jit)?;
        let threads = options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, items.max(1) as usize);
        let sums = sum_slots(kernel.spec());
        // One word per argument: scalar bits or the address of the caller's slice.
        let block: Vec<u64> = args
            .iter_mut()
            .map(|a| match &mut a.0 {
                ArgInner::Scalar(v) => v.to_bits(),
                ArgInner::Input { bytes, .. } => bytes.as_ptr() as u64,
                ArgInner::Output { access, bytes, .. } => {
                    if *access == Access::Out {
                        // What the kernel does not write reads as zero, as on a cluster.
                        bytes.fill(0);
                    }
                    bytes.as_mut_ptr() as u64
                }
            })
            .collect();
        let started = Instant::now();
        let (packets, totals) = if items == 0 {
            (0, Vec::new())
        } else {
            let job = BlockJob {
                kernel: &compiled.kernel,
                opencl: Vec::new(),
                name: kernel.name(),
                first: 0,
                items,
                block,
                sums: &sums,
                threads,
                packet_items: None,
                progress: options.progress.as_deref(),
            };
            // SAFETY: the caller checked every slice against the manifest for `items`,
            // and `args` borrows the slices until this call returns.
            let (counts, totals) = unsafe { job.run() }?;
            (counts.cpu, totals)
        };
        // Sum slices get the job's totals added, as a direct call adds into them.
        for (&(slot, elem, _), total) in sums.iter().zip(&totals) {
            if let ArgInner::Output { bytes, .. } = &mut args[slot].0 {
                elem.add_into(bytes, total.as_bytes());
            }
        }
        Ok(LaunchReport {
            items,
            packets,
            workers: threads,
            code_origin: Some(compiled.origin),
            compile_time: compiled.elapsed,
            run_time: started.elapsed(),
        })
    }
}
