//! The Rust API: a [`Cluster`] handle that runs [`Job`]s, [`Kernel`]s, and typed
//! launches whose results land in the caller's slices.
//!
//! [`Cluster::run`] runs a job (a program of steps on named buffers, see [`crate::job`])
//! with [`Options`] and returns a [`Report`], on this machine ([`Cluster::local`]) or on
//! the nodes of a cluster ([`Cluster::connect`]); an option the place cannot honour is
//! refused, never dropped. [`Cluster::launch`] is the one-step job on the caller's
//! slices: scalars by value, input slices by shared reference, output, read-write and
//! sum slices by `&mut`, checked against the kernel's manifest by the kernel model's one
//! checker before anything runs. On success the `out`/`inout` slices hold the kernel's
//! results and `sum` slices have the job's totals added to them. Errors are one enum,
//! [`LaunchError`]. Launches are blocking ([`Cluster::launch`]) or async
//! ([`Cluster::launch_async`], on tokio's blocking pool).
//!
//! `#[offload::kernel]` generates a typed launcher on top of this (`saxpy::launch(&cluster,
//! n, a, &x, &mut y)`); see `docs/macros.md`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use offload::{package_source, Cluster, Kernel, KernelArg, Manifest, Options};
//!
//! let manifest = Manifest::parse(&std::fs::read_to_string("examples/saxpy/manifest.toml")?)?;
//! let package = Arc::new(package_source("examples/saxpy/kernel.rs".as_ref(), &manifest)?);
//! let saxpy = Kernel::new(package, "saxpy")?;
//! let cluster = Cluster::local()?;
//! let x = vec![1.0f32; 1000];
//! let mut y = vec![2.0f32; 1000];
//! let options = Options::default().progress(|done, total| eprintln!("{done}/{total}"));
//! let args = &mut [KernelArg::scalar(3.0f32), KernelArg::input(&x), KernelArg::inout(&mut y)];
//! cluster.launch(&saxpy, 1000, args, &options)?;
//! assert_eq!(y[0], 5.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Two back ends sit behind the same handle: [`Cluster::local`] runs jobs on this machine's
//! cores (and OpenCL devices) with a node-jit [`Engine`], the kernels working on the
//! job's memory in place; [`Cluster::connect`] runs them on the nodes of a cluster
//! (explicit peers and/or mDNS discovery, mutual TLS with the cluster's credentials)
//! through the cluster crate's client, which keeps the buffers here and ships each
//! step's slices (with halos) to the nodes. Results are the same either way.

use std::sync::{Arc, Mutex, OnceLock};

pub use cluster::client::{ClientConfig, ClientError};
use cluster::client::{ClusterClient, JobArg, JobReport, JobSettings};
pub use cluster::credentials::{Credentials, CredentialsError};

use ir_packager::kernel_model::program::{Instance, ProgramError};
use ir_packager::{
    check, Access, ArgError, FormatError, Given, KernelSpec, Package, ScalarType, ScalarValue,
};
use node_jit::{Config, Engine, JitError};

use crate::buffer::Buffer;
use crate::engine::{self, Resume, RunError};
use crate::job::{
    one_step_job, ArgValue, ClusterReport, Job, JobError, Options, Report, StepValue, Storage,
};

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

pub(crate) fn bytes_of<T: Element>(slice: &[T]) -> &[u8] {
    // SAFETY: `Element` types have no padding and no invalid bit patterns; u8 has no
    // alignment requirement; the length is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(slice.as_ptr().cast::<u8>(), std::mem::size_of_val(slice)) }
}

pub(crate) fn bytes_of_mut<T: Element>(slice: &mut [T]) -> &mut [u8] {
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

    /// What the checker is told about this argument.
    fn given(&self) -> Given {
        match &self.0 {
            ArgInner::Scalar(v) => Given::Scalar(*v),
            ArgInner::Input { elem, bytes } => Given::Buffer {
                bytes: bytes.len() as u64,
                elem: Some(*elem),
                access: Some(Access::In),
            },
            ArgInner::Output {
                access,
                elem,
                bytes,
            } => Given::Buffer {
                bytes: bytes.len() as u64,
                elem: Some(*elem),
                access: Some(*access),
            },
        }
    }
}

/// A job or launch that cannot run or did not finish.
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
    /// The job is wrong (its program, its arguments, a file), found before anything ran.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The job failed while running (compilation, a kernel panic, a lost worker), or an
    /// option the place it runs cannot honour.
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

impl From<ProgramError> for LaunchError {
    fn from(e: ProgramError) -> LaunchError {
        LaunchError::Job(JobError::Program(e))
    }
}

impl LaunchError {
    /// The argument mistake behind this error, if it is one (a wrong count, type or
    /// size): what the kernel model's checker found.
    pub fn arg_error(&self) -> Option<&ArgError> {
        match self {
            LaunchError::Job(JobError::Program(ProgramError::Args { source, .. }))
            | LaunchError::Run(RunError::Program(ProgramError::Args { source, .. })) => {
                Some(source.as_ref())
            }
            _ => None,
        }
    }
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

impl<'a> Job<'a> {
    /// A one-step job of `kernel` over items `0..items` on the caller's slices, worked on
    /// in place: `args` (one per manifest argument, or per argument but the lengths the
    /// runtime fills in) are checked against the manifest first. What
    /// [`Cluster::launch`] runs.
    pub fn launch(
        kernel: &Kernel,
        items: u64,
        args: &'a mut [KernelArg<'_>],
    ) -> Result<Job<'a>, LaunchError> {
        let given: Vec<Given> = args.iter().map(KernelArg::given).collect();
        let values = args
            .iter_mut()
            .map(|arg| match &mut arg.0 {
                ArgInner::Scalar(v) => StepValue::Scalar(*v),
                ArgInner::Input { bytes, .. } => StepValue::Buffer(Storage::Read(bytes)),
                ArgInner::Output { bytes, .. } => StepValue::Buffer(Storage::Write(bytes)),
            })
            .collect();
        Ok(one_step_job(
            Arc::clone(&kernel.package),
            &kernel.spec,
            items,
            &given,
            values,
        )?)
    }
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
    /// The embedded local node: this machine's cores and OpenCL devices.
    Local { engine: Engine },
    /// The nodes of a cluster. The client runs one job at a time (`run_job` takes
    /// `&mut self`), so jobs on one handle take turns.
    Remote {
        // Boxed: the client is large and the local variant is the common one.
        client: Box<Mutex<ClusterClient>>,
        nodes: Vec<String>,
        /// `node_details` lines.
        details: Vec<String>,
        /// For finishing a job here when every node is lost; made on first need.
        fallback: OnceLock<Engine>,
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
        let details = client
            .nodes()
            .into_iter()
            .flat_map(|(addr, info)| {
                let mut lines = vec![format!(
                    "node {} at {addr}: {} cores, {} {} [{}]",
                    info.name, info.cores, info.arch, info.cpu, info.features
                )];
                lines.extend(info.opencl.iter().enumerate().map(|(index, device)| {
                    format!(
                        "node {} at {addr}: opencl{index} {} ({}, {} compute units)",
                        info.name, device.name, device.kind, device.compute_units
                    )
                }));
                lines
            })
            .collect();
        Ok(Cluster {
            backend: Arc::new(Backend::Remote {
                client: Box::new(Mutex::new(client)),
                nodes,
                details,
                fallback: OnceLock::new(),
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

    /// One line per connected node and per OpenCL device it serves (cores, CPU, ISA
    /// features, devices), as `offload run -v` prints them; empty on the local node.
    pub fn node_details(&self) -> Vec<String> {
        match &*self.backend {
            Backend::Local { .. } => Vec::new(),
            Backend::Remote { details, .. } => details.clone(),
        }
    }

    /// Runs `job`: every step in order, a barrier between steps, each step's packets on
    /// every device at hand. Afterwards the job's buffers hold the results
    /// ([`Job::buffer`], [`Job::write_outputs`]). The job is checked as a whole (every
    /// step's arguments, sizes and bindings) before anything runs.
    pub fn run(&self, job: &mut Job<'_>, options: &Options) -> Result<Report, LaunchError> {
        match &*self.backend {
            Backend::Local { engine } => Ok(engine::run(engine, job, options)?),
            Backend::Remote {
                client, fallback, ..
            } => run_remote(client, fallback, job, options),
        }
    }

    /// Like [`run`](Cluster::run), as a future on tokio's blocking pool, for a job that
    /// owns its buffers; the job comes back with its results. Needs a tokio runtime.
    pub async fn run_async(
        &self,
        mut job: Job<'static>,
        options: Options,
    ) -> Result<(Job<'static>, Report), LaunchError> {
        let cluster = self.clone();
        tokio::task::spawn_blocking(move || {
            cluster.run(&mut job, &options).map(|report| (job, report))
        })
        .await
        .map_err(|e| LaunchError::TaskFailed {
            what: "running a job".into(),
            reason: e.to_string(),
        })?
    }

    /// Runs `kernel` over items `0..items` with `args` (one per manifest argument, or
    /// per argument but the lengths the runtime fills in) and blocks until the results
    /// are in the `&mut` slices: a one-step [`Job::launch`]. On the local node the kernel
    /// works in the caller's slices directly (no copies); on a cluster the slices travel
    /// to the nodes and the results back.
    pub fn launch(
        &self,
        kernel: &Kernel,
        items: u64,
        args: &mut [KernelArg<'_>],
        options: &Options,
    ) -> Result<Report, LaunchError> {
        let mut job = Job::launch(kernel, items, args)?;
        self.run(&mut job, options)
    }

    /// Like [`launch`](Cluster::launch), as a future: the job runs on tokio's blocking
    /// pool (the arguments are copied in before and out after), so the runtime's threads
    /// stay free. Needs a tokio runtime. Dropping the future before it completes lets the
    /// job finish in the background and discards its results.
    ///
    /// ```no_run
    /// # async fn f(cluster: offload::Cluster, kernel: offload::Kernel) -> Result<(), offload::LaunchError> {
    /// use offload::{KernelArg, Options};
    /// let x = vec![1.0f32; 64];
    /// let mut y = vec![0.0f32; 64];
    /// let args = &mut [KernelArg::scalar(2.0f32), KernelArg::input(&x), KernelArg::inout(&mut y)];
    /// cluster.launch_async(&kernel, 64, args, &offload::Options::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn launch_async(
        &self,
        kernel: &Kernel,
        items: u64,
        args: &mut [KernelArg<'_>],
        options: &Options,
    ) -> Result<Report, LaunchError> {
        let values = args
            .iter()
            .map(|arg| match &arg.0 {
                ArgInner::Scalar(v) => ArgValue::Scalar(*v),
                ArgInner::Input { bytes, .. } => ArgValue::Buffer(Buffer::from_bytes(bytes)),
                // `sum` adds into its buffer, so the copy starts from the caller's values.
                ArgInner::Output { bytes, .. } => ArgValue::Buffer(Buffer::from_bytes(bytes)),
            })
            .collect();
        let given: Vec<Given> = args.iter().map(KernelArg::given).collect();
        check(&kernel.spec, items, &given).map_err(|source| ProgramError::Args {
            at: String::new(),
            source: Box::new(source),
        })?;
        let job = Job::kernel(Arc::clone(&kernel.package), kernel.name(), items, values)?;
        let (job, report) = self.run_async(job, options.clone()).await?;
        for (arg, value) in args.iter_mut().zip(job.into_values()) {
            if let (ArgInner::Output { bytes, .. }, ArgValue::Buffer(result)) = (&mut arg.0, value)
            {
                bytes.copy_from_slice(result.as_bytes());
            }
        }
        Ok(report)
    }
}

/// Refuses the options a cluster cannot honour: they are about this machine.
fn refuse_local_options(options: &Options) -> Result<(), RunError> {
    let refused = |what: &str| {
        Err(RunError::Refused(format!(
            "{what} is about this machine's engine; on a cluster each node runs with its own settings (`offload node --cores N`, its `offload tune` profile)"
        )))
    };
    if options.threads.is_some() {
        return refused("a thread count (--threads)");
    }
    if options.tuning.is_some() {
        return refused("code-generation tuning");
    }
    if options.packet_items.is_some() {
        return refused("a fixed packet size");
    }
    if options.opencl.is_some() {
        return refused("a set of this machine's OpenCL devices");
    }
    if options.stack_size.is_some() {
        return refused("a worker stack size (--stack-size)");
    }
    if options.packet_timeout.is_some() {
        return Err(RunError::Refused(
            "a packet timeout (--packet-timeout) is this machine's; each node stops hung packets at its own (`offload node --packet-timeout S`)".to_string(),
        ));
    }
    if options.check {
        return Err(RunError::Refused(
            "check mode (--check) runs every item on this machine's CPU; run the job without a cluster to check it".to_string(),
        ));
    }
    Ok(())
}

/// Runs `job` on a cluster's nodes, one step after another: the buffers stay here and
/// each step's slices travel. If every node is lost (and `local_fallback` is on), the
/// step that was cut short finishes here from its uncommitted ranges, and so do the
/// steps after it.
fn run_remote(
    client: &Mutex<ClusterClient>,
    fallback: &OnceLock<Engine>,
    job: &mut Job<'_>,
    options: &Options,
) -> Result<Report, LaunchError> {
    refuse_local_options(options)?;
    let plan = job.plan()?;
    let packages = job.packages.clone();
    let manifests: Vec<_> = packages.iter().map(|p| p.manifest()).collect();
    let mut total = 0u64;
    plan.for_each(&manifests, &mut |instance| {
        total = total.saturating_add(instance.layout.items);
        Ok(())
    })?;
    // A panic while another job held the client leaves nothing half-done that the next
    // job depends on (each job reconnects and re-plans).
    let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
    let settings = JobSettings {
        redundancy: Some(options.redundancy),
        devices: options.device,
    };
    let mut report = Report::default();
    let mut cluster = ClusterReport::default();
    let mut done = 0u64;
    let mut index = 0usize;
    let mut stop: Option<Result<cluster::client::Unfinished, LaunchError>> = None;
    let storage = &mut job.storage;
    let walk = plan.for_each(&manifests, &mut |instance| {
        let mut args = match step_args(&instance, storage) {
            Ok(args) => args,
            Err(e) => {
                stop = Some(Err(e.into()));
                return Err(stop_walk());
            }
        };
        let progress = options.progress.clone();
        let step_progress = move |step: &cluster::client::JobProgress| {
            if let Some(progress) = &progress {
                progress(done + step.items_done, total);
            }
        };
        let outcome = client.run_job_with(
            &packages[instance.package],
            &instance.kernel,
            instance.layout.items,
            &mut args,
            &settings,
            Some(&step_progress),
        );
        match outcome {
            Ok(step) => {
                add_step(&mut report, &mut cluster, &step);
                done = done.saturating_add(instance.layout.items);
                index += 1;
                Ok(())
            }
            Err(ClientError::Unfinished(unfinished)) if options.local_fallback => {
                let left: u64 = unfinished.remaining.iter().map(|r| r.end - r.start).sum();
                report.items += instance.layout.items.saturating_sub(left);
                report.packets += unfinished.committed_packets;
                stop = Some(Ok(*unfinished));
                Err(stop_walk())
            }
            Err(e) => {
                stop = Some(Err(e.into()));
                Err(stop_walk())
            }
        }
    });
    match (stop, walk) {
        (None, Err(e)) => return Err(e.into()),
        (None, Ok(())) => {}
        (Some(Err(e)), _) => return Err(e),
        (Some(Ok(unfinished)), _) => {
            tracing::warn!("{unfinished}; finishing the job on this machine");
            let engine = match fallback.get() {
                Some(engine) => engine,
                None => {
                    let engine = Engine::new(Config::default()).map_err(LaunchError::Engine)?;
                    fallback.get_or_init(|| engine)
                }
            };
            let mut here = options.clone();
            here.redundancy = 1;
            here.device = None;
            let resume = Resume {
                instance: index,
                ranges: unfinished.remaining.clone(),
            };
            let local = engine::run_plan(engine, job, &plan, &here, Some(resume))?;
            report.items += local.items;
            report.packets += local.packets;
            report.steps += local.steps;
            report.run_time += local.run_time;
            report.compile_time += local.compile_time;
            report.code_origin = local.code_origin;
            report.cache_key = local.cache_key;
            report.threads = local.threads;
            cluster.lost.extend(unfinished.why);
            cluster.finished_here = Some((local.items, local.packets));
        }
    }
    report.workers = cluster
        .packets_per_node
        .iter()
        .filter(|(_, n)| *n > 0)
        .count();
    report.cluster = Some(cluster);
    Ok(report)
}

/// The error that stops a plan's walk; the real outcome is kept beside it.
fn stop_walk() -> ProgramError {
    ProgramError::Invalid {
        at: String::new(),
        reason: "stopped".into(),
    }
}

/// Adds a step's cluster report to the job's.
fn add_step(report: &mut Report, cluster: &mut ClusterReport, step: &JobReport) {
    report.items += step.items;
    report.steps += 1;
    report.packets += step.packets;
    report.compile_time += step.prepare_time;
    report.run_time += step.run_time;
    let add = |list: &mut Vec<(String, u64)>, name: &str, n: u64| match list
        .iter_mut()
        .find(|(k, _)| k == name)
    {
        Some((_, total)) => *total += n,
        None => list.push((name.to_string(), n)),
    };
    for (node, n) in &step.packets_per_node {
        add(&mut cluster.packets_per_node, node, *n);
    }
    for (device, n) in &step.packets_per_device {
        add(&mut cluster.packets_per_device, device, *n);
    }
    for (node, n) in &step.rejoined {
        add(&mut cluster.rejoined, node, *n);
    }
    for (lines, list) in [
        (&step.lost, &mut cluster.lost),
        (&step.disagreements, &mut cluster.disagreements),
        (&step.paused, &mut cluster.paused),
    ] {
        for line in lines {
            if !list.contains(line) {
                list.push(line.clone());
            }
        }
    }
    for (node, rate) in &step.tuned_rates {
        if !cluster.tuned_rates.iter().any(|(n, _)| n == node) {
            cluster.tuned_rates.push((node.clone(), *rate));
        }
    }
    // The latest measurement of each node's link stands for the run.
    for link in &step.links {
        match cluster.links.iter_mut().find(|l| l.node == link.node) {
            Some(known) if link.transfers > 0 || known.transfers == 0 => *known = link.clone(),
            Some(_) => {}
            None => cluster.links.push(link.clone()),
        }
    }
}

/// A step run's arguments for the cluster client, on the job's memory: a buffer the
/// step writes is bound to one parameter only (the plan checks), so the mutable borrows
/// are disjoint; buffers it only reads may be bound to several.
fn step_args<'s>(
    instance: &Instance,
    storage: &'s mut [Storage<'_>],
) -> Result<Vec<JobArg<'s>>, RunError> {
    let written: Vec<bool> = (0..storage.len()).map(|b| instance.writes(b)).collect();
    let mut writable: Vec<Option<&'s mut [u8]>> = Vec::with_capacity(storage.len());
    let mut readable: Vec<Option<&'s [u8]>> = Vec::with_capacity(storage.len());
    for (memory, writes) in storage.iter_mut().zip(&written) {
        if *writes {
            writable.push(memory.bytes_mut());
            readable.push(None);
        } else {
            let memory: &'s Storage<'_> = memory;
            writable.push(None);
            readable.push(Some(memory.bytes()));
        }
    }
    let mut args = Vec::with_capacity(instance.layout.args.len());
    for (slot, layout) in instance.layout.args.iter().enumerate() {
        let arg = match (layout, instance.buffers[slot]) {
            (ir_packager::ArgLayout::Scalar(v), _) => JobArg::Scalar(*v),
            (_, Some(b)) if written[b] => match writable[b].take() {
                Some(bytes) => JobArg::Output(bytes),
                None => {
                    return Err(RunError::Refused(format!(
                        "kernel `{}` writes a buffer lent read-only",
                        instance.kernel
                    )))
                }
            },
            (_, Some(b)) => JobArg::Input(readable[b].unwrap_or(&[])),
            (_, None) => JobArg::Input(&[]),
        };
        args.push(arg);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_refuses_every_option_about_this_machine_with_its_flag() {
        let refused = |options: Options, flag: &str| {
            let message = refuse_local_options(&options)
                .expect_err("refused")
                .to_string();
            assert!(message.contains(flag), "{message}");
        };
        refused(Options::default().threads(2), "--threads");
        refused(Options::default().stack_size(1 << 20), "--stack-size");
        refused(Options::default().check(true), "--check");
        refused(
            Options::default().packet_timeout(std::time::Duration::from_secs(1)),
            "--packet-timeout",
        );
        assert!(refuse_local_options(&Options::default()).is_ok());
    }
}
