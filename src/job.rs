//! The one job API: a [`Job`] (a program of steps over named buffers), its [`Options`]
//! and its [`Report`], the same wherever the job runs.
//!
//! A job is a [`Program`] (the kernel model's description: buffers, scalars, steps,
//! outputs), the packages its steps use, and the memory of its buffers: owned by the job
//! (read from files, zero-filled, or handed over) or borrowed from the caller and worked
//! on in place. A single kernel launch is a one-step job ([`Job::kernel`], [`Job::launch`]
//! through [`crate::Cluster::launch`]); `offload run program.toml` is
//! [`Job::from_program_file`]. [`crate::Cluster::run`] runs a job on this machine or on a
//! cluster's nodes; afterwards [`Job::buffer`] reads any buffer and
//! [`Job::write_outputs`] writes the program's outputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ir_packager::kernel_model::program::{package_names, Binding, BufferDecl, Init, Plan};
pub use ir_packager::kernel_model::program::{Number, Program, ProgramError, Step, StepItem};
use ir_packager::{check, ArgKind, Given, KernelSpec, Package, ScalarType, ScalarValue};
use node_jit::{CodeOrigin, Tuning};
use opencl_backend::OpenCl;
use scheduler::DeviceChoice;

use crate::buffer::Buffer;
use crate::engine::RunError;
use crate::files::{commit_outputs, StagedOutput};

/// One argument's value for a one-step job, owned by the job: a scalar, or a buffer
/// whose contents are the input and, for `out`/`inout`/`sum` parameters, receive the
/// results.
#[derive(Debug, Clone)]
pub enum ArgValue {
    /// A scalar.
    Scalar(ScalarValue),
    /// A buffer.
    Buffer(Buffer),
}

/// The memory of one of a job's buffers.
pub(crate) enum Storage<'a> {
    /// Owned by the job.
    Owned(Buffer),
    /// The caller's, read only (bound only to `in` parameters).
    Read(&'a [u8]),
    /// The caller's, read and written in place.
    Write(&'a mut [u8]),
}

impl Storage<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(b) => b.as_bytes(),
            Storage::Read(b) => b,
            Storage::Write(b) => b,
        }
    }

    /// The address handed to kernels. A read-only buffer's address is only ever given
    /// to parameters that read (the plan checks accesses).
    pub(crate) fn address(&mut self) -> u64 {
        match self {
            Storage::Owned(b) => b.address(),
            Storage::Read(b) => b.as_ptr() as u64,
            Storage::Write(b) => b.as_mut_ptr() as u64,
        }
    }

    pub(crate) fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Storage::Owned(b) => Some(b.as_bytes_mut()),
            Storage::Read(_) => None,
            Storage::Write(b) => Some(b),
        }
    }
}

/// Why a job cannot be made or run (before any kernel ran).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The program is wrong: the message names where and what.
    #[error(transparent)]
    Program(#[from] ir_packager::kernel_model::program::ProgramError),
    /// A file of the program (itself, a package, a buffer) cannot be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A package cannot be used.
    #[error("package {path}: {source}")]
    Package {
        /// The package file.
        path: PathBuf,
        /// Why.
        source: ir_packager::FormatError,
    },
    /// A buffer file cannot be read, or an output cannot be staged or written.
    #[error(transparent)]
    Files(#[from] crate::files::FileError),
    /// A buffer is larger than this machine can hold, or cannot be allocated.
    #[error(transparent)]
    Memory(#[from] crate::engine::RunError),
}

/// The stack of a worker thread on this machine, per item (a thread runs one item at a
/// time): 8 MiB, what a Linux process's main thread gets by default.
pub const DEFAULT_STACK: usize = 8 << 20;

/// A job: a program of steps over named buffers, with its packages and memory.
pub struct Job<'a> {
    pub(crate) program: Program,
    /// Aligned with `package_names(&program)`.
    pub(crate) packages: Vec<Arc<Package>>,
    /// One per program buffer.
    pub(crate) storage: Vec<Storage<'a>>,
    /// The folder relative paths of outputs are taken from.
    pub(crate) base: PathBuf,
    /// For a one-step job, its arguments in the order they were given: a scalar as given
    /// or the index of its buffer in `storage`. Empty for programs.
    pub(crate) given: Vec<GivenSlot>,
}

/// One argument of a one-step job as it was given.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GivenSlot {
    Scalar(ScalarValue),
    Buffer(usize),
}

impl std::fmt::Debug for Job<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("buffers", &self.program.buffers.len())
            .field("steps", &self.program.steps.len())
            .finish()
    }
}

/// One argument of a one-step job: a scalar, or a buffer's memory.
pub(crate) enum StepValue<'a> {
    Scalar(ScalarValue),
    Buffer(Storage<'a>),
}

/// A one-step job running `spec` of `package` over `items`, every parameter bound to a
/// same-named program buffer or scalar. `given` (what the checker is told) and `values`
/// hold one entry per manifest argument, or per argument but the lengths the runtime
/// fills in. The one checker runs first, so a wrong count, type or size (or a wrong
/// runtime-filled length, when those are given) gets its message before anything else.
pub(crate) fn one_step_job<'a>(
    package: Arc<Package>,
    spec: &KernelSpec,
    items: u64,
    given: &[Given],
    values: Vec<StepValue<'a>>,
) -> Result<Job<'a>, JobError> {
    check(spec, items, given).map_err(|source| ProgramError::Args {
        at: String::new(),
        source: Box::new(source),
    })?;
    let params: Vec<_> = if values.len() == spec.args.len() {
        spec.args.iter().collect()
    } else {
        spec.args.iter().filter(|a| a.derived.is_none()).collect()
    };
    let mut scalars = Vec::new();
    let mut buffers = Vec::new();
    let mut storage = Vec::new();
    let mut args = Vec::new();
    let mut given_slots = Vec::new();
    for (param, value) in params.into_iter().zip(values) {
        if let StepValue::Scalar(v) = &value {
            given_slots.push(GivenSlot::Scalar(*v));
        }
        // The plan derives lengths itself (the checker has compared any given).
        if param.derived.is_some() {
            continue;
        }
        let name = param.name.clone();
        match (value, &param.kind) {
            (StepValue::Scalar(v), _) => {
                scalars.push((name.clone(), number_of(v)));
                args.push((name.clone(), Binding::Expr(ir_packager::Expr::Var(name))));
            }
            (StepValue::Buffer(memory), kind) => {
                let elem = match kind {
                    ArgKind::Buffer { elem, .. } => *elem,
                    // The checker refused a buffer for a scalar already.
                    ArgKind::Scalar(_) => ScalarType::U8,
                };
                buffers.push(BufferDecl {
                    name: name.clone(),
                    elem,
                    init: Init::Provided,
                });
                given_slots.push(GivenSlot::Buffer(storage.len()));
                storage.push(memory);
                args.push((name.clone(), Binding::Buffers(vec![name])));
            }
        }
    }
    let program = Program {
        package: Some(String::new()),
        packages: Vec::new(),
        scalars,
        buffers,
        steps: vec![StepItem::Step(Step {
            package: None,
            kernel: spec.name.clone(),
            items: ir_packager::Expr::Num(items),
            args,
        })],
        outputs: Vec::new(),
    };
    Ok(Job {
        program,
        packages: vec![package],
        storage,
        base: PathBuf::from("."),
        given: given_slots,
    })
}

/// A scalar value as a program number (lossless: f32 widens exactly).
fn number_of(value: ScalarValue) -> Number {
    match value {
        ScalarValue::F32(v) => Number::Float(f64::from(v)),
        ScalarValue::F64(v) => Number::Float(v),
        other => Number::Int(other.as_integer().unwrap_or(0)),
    }
}

impl<'a> Job<'a> {
    /// A one-step job: `kernel` of `package` over items `0..items`, with one value per
    /// manifest argument (or per argument but the lengths the runtime fills in). The
    /// job owns the buffers; after a run, [`Job::buffer`] (by parameter name) or
    /// [`Job::into_values`] gives the results.
    pub fn kernel(
        package: Arc<Package>,
        kernel: &str,
        items: u64,
        args: Vec<ArgValue>,
    ) -> Result<Job<'static>, JobError> {
        let spec = find_kernel(&package, kernel)?;
        let given: Vec<Given> = args
            .iter()
            .map(|a| match a {
                ArgValue::Scalar(v) => Given::Scalar(*v),
                ArgValue::Buffer(b) => Given::bytes(b.len() as u64),
            })
            .collect();
        let values = args
            .into_iter()
            .map(|a| match a {
                ArgValue::Scalar(v) => StepValue::Scalar(v),
                ArgValue::Buffer(b) => StepValue::Buffer(Storage::Owned(b)),
            })
            .collect();
        one_step_job(package, &spec, items, &given, values)
    }

    /// A builder for a job of many steps on `package` (the default package of its
    /// steps), with buffers made or lent in Rust: the same program as a file.
    ///
    /// ```no_run
    /// # fn f(package: std::sync::Arc<offload::Package>) -> Result<(), offload::LaunchError> {
    /// use offload::job::{Step, StepItem};
    /// use offload::{Cluster, Job, Options};
    /// let n = 1300u64;
    /// let mut grid = vec![0.0f64; (n * n) as usize];
    /// let mut job = Job::builder(package)
    ///     .scalar("n", n)
    ///     .buffer("a", &mut grid)
    ///     .zeros("b", offload::ScalarType::F64, n * n)
    ///     .step(StepItem::repeat(500u64, Some("t"), vec![
    ///         Step::new("jacobi", "n").value("n", "n").buffers("src", &["a", "b"]).buffers("dst", &["b", "a"]).into(),
    ///     ]))
    ///     .build()?;
    /// Cluster::local()?.run(&mut job, &Options::default())?;
    /// # Ok(()) }
    /// ```
    pub fn builder(package: Arc<Package>) -> JobBuilder<'a> {
        JobBuilder {
            program: Program {
                package: Some(String::new()),
                ..Program::default()
            },
            packages: vec![package],
            storage: Vec::new(),
            error: None,
        }
    }

    /// Reads a program file: its packages (paths relative to the file), its buffers
    /// (files read, no further than this machine can hold; zero-filled and filled
    /// buffers allocated), checked as a whole before anything is allocated for it.
    pub fn from_program_file(path: &Path) -> Result<Job<'static>, JobError> {
        Job::from_program_file_with(path, &[])
    }

    /// [`Job::from_program_file`] with new values for some of the program's `[scalars]`
    /// (before any buffer is sized by them); a name the program does not declare is
    /// refused.
    pub fn from_program_file_with(
        path: &Path,
        scalars: &[(String, Number)],
    ) -> Result<Job<'static>, JobError> {
        let file_error = |path: &Path, reason: String| JobError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e.to_string()))?;
        let mut program = Program::parse(&text)?;
        for (name, value) in scalars {
            match program.scalars.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => *v = *value,
                None => {
                    let known: Vec<&str> =
                        program.scalars.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(JobError::Program(ProgramError::Invalid {
                        at: format!("scalar `{name}`"),
                        reason: format!(
                            "the program has no such scalar (it has: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    }));
                }
            }
        }
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let mut packages = Vec::new();
        for name in package_names(&program) {
            let file = if name.is_empty() {
                program.package.clone()
            } else {
                program
                    .packages
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, p)| p.clone())
            };
            if let Some(file) = file {
                let path = base.join(file);
                let package = Package::read(&path).map_err(|source| JobError::Package {
                    path: path.clone(),
                    source,
                })?;
                packages.push(Arc::new(package));
            }
        }
        let storage = crate::engine::allocate_buffers(&program, &base)?;
        Ok(Job {
            program,
            packages,
            storage,
            base,
            given: Vec::new(),
        })
    }

    /// The program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The contents of buffer `name` (after a run: its results).
    pub fn buffer(&self, name: &str) -> Option<&[u8]> {
        let index = self.program.buffers.iter().position(|b| b.name == name)?;
        Some(self.storage[index].bytes())
    }

    /// The scalars and buffers of a one-step job made by [`Job::kernel`], in the order
    /// its arguments were given (buffers with their results). Empty for a program.
    pub fn into_values(self) -> Vec<ArgValue> {
        let mut storage: Vec<Option<Storage<'a>>> = self.storage.into_iter().map(Some).collect();
        self.given
            .iter()
            .filter_map(|slot| match *slot {
                GivenSlot::Scalar(v) => Some(ArgValue::Scalar(v)),
                GivenSlot::Buffer(index) => match storage.get_mut(index).and_then(Option::take) {
                    Some(Storage::Owned(b)) => Some(ArgValue::Buffer(b)),
                    // Lent memory already holds its results.
                    _ => None,
                },
            })
            .collect()
    }

    /// Checks the program against its packages' manifests and buffers' sizes.
    pub(crate) fn plan(&self) -> Result<Plan, JobError> {
        let manifests: Vec<_> = self.packages.iter().map(|p| p.manifest()).collect();
        let lengths = self
            .program
            .buffers
            .iter()
            .zip(&self.storage)
            .map(|(decl, storage)| storage.bytes().len() as u64 / decl.elem.size() as u64)
            .collect();
        let plan = Plan::new(self.program.clone(), &manifests, lengths)?;
        // Buffers lent read-only must not be written by any step.
        if self.storage.iter().any(|s| matches!(s, Storage::Read(_))) {
            let mut step = 0usize;
            plan.for_each(&manifests, &mut |instance| {
                step += 1;
                for (index, storage) in self.storage.iter().enumerate() {
                    if matches!(storage, Storage::Read(_)) && instance.writes(index) {
                        return Err(ProgramError::Invalid {
                            at: format!("step {step} ({})", instance.kernel),
                            reason: format!(
                                "writes buffer `{}`, which was lent read-only",
                                self.program.buffers[index].name
                            ),
                        });
                    }
                }
                Ok(())
            })?;
        }
        Ok(plan)
    }

    /// Stages the program's outputs (`[outputs]`, paths relative to the program file):
    /// a temporary file beside each destination, so that a missing or read-only folder
    /// is found before anything runs. Pass the result to [`Job::write_outputs`].
    pub fn stage_outputs(&self) -> Result<Vec<(usize, StagedOutput)>, JobError> {
        let mut staged: Vec<(usize, StagedOutput)> = Vec::new();
        for (buffer, file) in &self.program.outputs {
            let index = self
                .program
                .buffers
                .iter()
                .position(|b| &b.name == buffer)
                .ok_or_else(|| JobError::File {
                    path: PathBuf::from(file),
                    reason: format!("there is no buffer `{buffer}` to write to it"),
                })?;
            let path = self.base.join(file);
            let output = StagedOutput::new(&path, &format!("buffer `{buffer}`"))?;
            if let Some((other, _)) = staged
                .iter()
                .find(|(_, o)| o.destination() == output.destination())
            {
                return Err(JobError::File {
                    // As written in the program or on the command line.
                    path: if self.base == Path::new(".") {
                        PathBuf::from(file)
                    } else {
                        path
                    },
                    reason: format!(
                        "buffer `{}` is written to this file too ({}): two outputs cannot share a file",
                        self.program.buffers[*other].name,
                        output.destination().display()
                    ),
                });
            }
            staged.push((index, output));
        }
        Ok(staged)
    }

    /// Writes staged outputs, all or nothing: every file is written and flushed, then
    /// all are renamed into place. Returns the files written.
    pub fn write_outputs(
        &self,
        staged: Vec<(usize, StagedOutput)>,
    ) -> Result<Vec<PathBuf>, JobError> {
        let paths: Vec<PathBuf> = staged
            .iter()
            .map(|(_, o)| o.destination().to_path_buf())
            .collect();
        let outputs = staged
            .into_iter()
            .map(|(index, output)| (output, self.storage[index].bytes()))
            .collect();
        commit_outputs(outputs)?;
        Ok(paths)
    }
}

/// Builds a [`Job`] of many steps in Rust ([`Job::builder`]): buffers lent in place
/// (read-write or read-only), made zeroed or handed over, scalars, steps. The job is
/// checked as a whole by [`JobBuilder::build`], as a program file is.
pub struct JobBuilder<'a> {
    program: Program,
    packages: Vec<Arc<Package>>,
    storage: Vec<Storage<'a>>,
    error: Option<JobError>,
}

impl std::fmt::Debug for JobBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBuilder")
            .field("program", &self.program)
            .finish()
    }
}

impl<'a> JobBuilder<'a> {
    /// Another package, for steps that name it (`Step::from_package`).
    pub fn package(mut self, name: &str, package: Arc<Package>) -> JobBuilder<'a> {
        self.program
            .packages
            .push((name.to_string(), format!("<package {}>", package.hash())));
        self.packages.push(package);
        self
    }

    /// A named scalar, for steps' bindings and sizes.
    pub fn scalar(mut self, name: &str, value: impl Into<Number>) -> JobBuilder<'a> {
        self.program.scalars.push((name.to_string(), value.into()));
        self
    }

    fn add(mut self, name: &str, elem: ScalarType, storage: Storage<'a>) -> JobBuilder<'a> {
        self.program.buffers.push(BufferDecl {
            name: name.to_string(),
            elem,
            init: Init::Provided,
        });
        self.storage.push(storage);
        self
    }

    /// The caller's slice as buffer `name`, read and written in place.
    pub fn buffer<T: crate::api::Element>(self, name: &str, data: &'a mut [T]) -> JobBuilder<'a> {
        self.add(
            name,
            T::TYPE,
            Storage::Write(crate::api::bytes_of_mut(data)),
        )
    }

    /// The caller's slice as buffer `name`, read only: a step that writes it is refused
    /// when the job is built.
    pub fn input<T: crate::api::Element>(self, name: &str, data: &'a [T]) -> JobBuilder<'a> {
        self.add(name, T::TYPE, Storage::Read(crate::api::bytes_of(data)))
    }

    /// A buffer of `len` zeroed elements of `elem`, owned by the job.
    pub fn zeros(mut self, name: &str, elem: ScalarType, len: u64) -> JobBuilder<'a> {
        let bytes = len.saturating_mul(elem.size() as u64);
        let made =
            crate::engine::check_memory(&[(format!("buffer `{name}`"), bytes)]).and_then(|()| {
                usize::try_from(bytes)
                    .ok()
                    .and_then(Buffer::try_zeroed_shared)
                    .ok_or(RunError::OutOfMemory {
                        what: format!("buffer `{name}`"),
                        bytes,
                    })
            });
        match made {
            Ok(buffer) => self.add(name, elem, Storage::Owned(buffer)),
            Err(e) => {
                self.error.get_or_insert(JobError::Memory(e));
                self.add(name, elem, Storage::Owned(Buffer::zeroed(0)))
            }
        }
    }

    /// `buffer` (raw little-endian elements of `elem`) as buffer `name`, owned by the job.
    pub fn owned(self, name: &str, elem: ScalarType, buffer: Buffer) -> JobBuilder<'a> {
        self.add(name, elem, Storage::Owned(buffer))
    }

    /// A step, a `repeat` group or a `together` group, after the ones before.
    pub fn step(mut self, item: impl Into<StepItem>) -> JobBuilder<'a> {
        self.program.steps.push(item.into());
        self
    }

    /// Checks the job as a whole (every step's bindings, sizes and accesses) and
    /// returns it.
    pub fn build(self) -> Result<Job<'a>, JobError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let job = Job {
            program: self.program,
            packages: self.packages,
            storage: self.storage,
            base: PathBuf::from("."),
            given: Vec::new(),
        };
        job.plan()?;
        Ok(job)
    }
}

pub(crate) fn find_kernel(package: &Package, kernel: &str) -> Result<KernelSpec, JobError> {
    package.manifest().kernel(kernel).cloned().ok_or_else(|| {
        JobError::Program(ir_packager::kernel_model::program::ProgramError::Invalid {
            at: format!("kernel `{kernel}`"),
            reason: format!(
                "the package has no kernel `{kernel}` (it has: {})",
                package.manifest().kernel_names()
            ),
        })
    })
}

/// Called with `(items done, items total)` over all of a job's steps.
pub type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

/// How a job runs. Every setter documents its default. An option that the place a job
/// runs cannot honour is refused with a message, never ignored.
#[derive(Clone)]
pub struct Options {
    pub(crate) threads: Option<usize>,
    pub(crate) device: Option<DeviceChoice>,
    pub(crate) tuning: Option<Tuning>,
    pub(crate) packet_items: Option<u64>,
    pub(crate) progress: Option<Arc<ProgressFn>>,
    pub(crate) local_fallback: bool,
    pub(crate) redundancy: u32,
    pub(crate) opencl: Option<Arc<OpenCl>>,
    pub(crate) stack_size: Option<usize>,
    pub(crate) check: bool,
    pub(crate) packet_timeout: Option<std::time::Duration>,
    pub(crate) isolation: Option<crate::isolated::WorkerProgram>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            threads: None,
            device: None,
            tuning: None,
            packet_items: None,
            progress: None,
            local_fallback: true,
            redundancy: 1,
            opencl: None,
            stack_size: None,
            check: false,
            packet_timeout: None,
            isolation: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("threads", &self.threads)
            .field("device", &self.device)
            .field("tuning", &self.tuning)
            .field("packet_items", &self.packet_items)
            .field("progress", &self.progress.is_some())
            .field("local_fallback", &self.local_fallback)
            .field("redundancy", &self.redundancy)
            .field("stack_size", &self.stack_size)
            .field("check", &self.check)
            .field("packet_timeout", &self.packet_timeout)
            .field("isolation", &self.isolation)
            .finish()
    }
}

impl Options {
    /// Worker threads on this machine (local runs only). Default: every core.
    pub fn threads(mut self, threads: usize) -> Options {
        self.threads = Some(threads.max(1));
        self
    }

    /// Which devices run packets. Default: the CPU on this machine; on a cluster, every
    /// device the nodes serve.
    pub fn device(mut self, device: DeviceChoice) -> Options {
        self.device = Some(device);
        self
    }

    /// Code-generation tuning for this machine's JIT (local runs only; nodes use their
    /// own profiles). Default: LLVM's own choices, or this node's `offload tune` profile.
    pub fn tuning(mut self, tuning: Tuning) -> Options {
        self.tuning = Some(tuning);
        self
    }

    /// Items per packet, as `offload tune` measures (local runs only). Default: chosen
    /// by the scheduler.
    pub fn packet_items(mut self, items: u64) -> Options {
        self.packet_items = Some(items.max(1));
        self
    }

    /// Called with `(items done, items total)` over all steps as packets complete (on a
    /// cluster: as steps complete). Default: none.
    pub fn progress(mut self, progress: impl Fn(u64, u64) + Send + Sync + 'static) -> Options {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Whether a cluster job whose every node is lost finishes on this machine (the
    /// committed packets are kept). Default: true.
    pub fn local_fallback(mut self, on: bool) -> Options {
        self.local_fallback = on;
        self
    }

    /// Runs every packet on `copies` different nodes and keeps the majority's result
    /// (cluster runs only). Default: 1.
    pub fn redundancy(mut self, copies: u32) -> Options {
        self.redundancy = copies.max(1);
        self
    }

    /// The stack each of this machine's worker threads runs items on, in bytes (at
    /// least 64 KiB). Default: [`DEFAULT_STACK`]. A kernel that needs more (a large
    /// local array, deep recursion) crashes with SIGSEGV, reported as a crash of its
    /// kernel on its items. Local runs only.
    pub fn stack_size(mut self, bytes: usize) -> Options {
        self.stack_size = Some(bytes.max(64 << 10));
        self
    }

    /// Check mode: every item runs alone on fenced copies of what the kernel model gives
    /// it (its slices, what it may read of its inputs, its `sum` accumulators), so a
    /// kernel that reads or writes outside them fails the job with a message naming the
    /// buffer and the item, the same outcome wherever the job would run. Slow (one
    /// thread, copies and system calls per item): for finding such bugs. On this
    /// machine's CPU only. An access that traps is reported by the crash report the CLI
    /// installs ([`report_kernel_crashes`](crate::report_kernel_crashes)); without it
    /// the process dies of the signal, as in a normal run. Default: off.
    pub fn check(mut self, on: bool) -> Options {
        self.check = on;
        self
    }

    /// The longest one packet may run on this machine's CPU. With isolated workers
    /// ([`Options::isolated`]) the packet's worker is killed and the job fails naming the
    /// kernel and the items ([`RunError::PacketTimedOut`](crate::RunError)); this process
    /// lives on. In process, a kernel cannot be stopped alone, so a packet that runs
    /// longer ends the process: one line names the kernel and the items, the staged
    /// output files are removed and the exit status is 1, as for a kernel that traps.
    /// Local runs only (each node has its own `--packet-timeout`). Default: none.
    pub fn packet_timeout(mut self, timeout: std::time::Duration) -> Options {
        self.packet_timeout = Some(timeout.max(std::time::Duration::from_millis(1)));
        self
    }

    /// Runs this machine's CPU packets in isolated worker processes: `program` (the
    /// `offload` executable) started as `offload __engine-worker`, one per CPU thread,
    /// each sandboxed ([`sandbox`]'s CPU profile) after it loaded the job's kernel code,
    /// over the job's buffers in shared memory (nothing is copied; buffers the caller
    /// lent are copied in once and written back after success). A kernel that traps,
    /// overflows its stack or makes a system call then fails the job with
    /// [`RunError::KernelCrashed`](crate::RunError) and this process lives on; the next
    /// job gets fresh workers. `offload run` always runs this way (`--in-process` opts
    /// out). Default for the Rust API: in process, because the library cannot know where
    /// an `offload` executable of its own version is, and a program's own compiled-in
    /// kernels are as trusted as the program. Check mode and OpenCL devices run in this
    /// process either way. Local runs only.
    pub fn isolated(mut self, program: impl Into<std::path::PathBuf>) -> Options {
        self.isolation = Some(crate::isolated::WorkerProgram {
            program: program.into(),
            args: Vec::new(),
        });
        self
    }

    /// Test builds only: misbehaviour the isolated workers inject (`offload run
    /// --worker-fault`, see the node's `fault` module); ignored in process.
    #[doc(hidden)]
    pub fn worker_faults(mut self, faults: &[String]) -> Options {
        if let Some(program) = &mut self.isolation {
            program.args = faults
                .iter()
                .flat_map(|f| ["--fault".to_string(), f.clone()])
                .collect();
        }
        self
    }

    /// With [`Options::isolated`], starts worker processes now until `count` wait
    /// (spares started earlier count), for the next run in this process with the same
    /// program to take, so that their start (about a
    /// millisecond each: exec, the runtime, building the sandbox's filters) overlaps
    /// whatever the caller does before the run (reading its package and inputs); a run
    /// that needs more starts the rest itself. Only runs on the calling thread take them,
    /// and they die with it (spares a run does not take live until then). Without
    /// isolation: nothing.
    pub fn warm_up(&self, count: usize) {
        if let Some(program) = &self.isolation {
            crate::isolated::warm_up(program, count);
        }
    }

    /// The OpenCL devices to use, opened once and shared between runs so that built
    /// programs stay cached (local runs only). Default: discovered when needed.
    pub fn opencl(mut self, opencl: Arc<OpenCl>) -> Options {
        self.opencl = Some(opencl);
        self
    }
}

/// What a finished job did, wherever it ran.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Report {
    /// Items run, over all steps.
    pub items: u64,
    /// Step runs.
    pub steps: usize,
    /// Packets committed, over all steps.
    pub packets: u64,
    /// Worker threads on this machine (0 for a cluster run).
    pub threads: usize,
    /// Of those, how many ran as isolated worker processes ([`Options::isolated`]).
    pub isolated_workers: usize,
    /// Workers that committed packets: threads here, or nodes of a cluster.
    pub workers: usize,
    /// Where the first kernel's machine code came from (this machine's runs).
    pub code_origin: Option<CodeOrigin>,
    /// Time to compile or load the kernels (here), or to upload and prepare the job on
    /// the nodes (cluster).
    pub compile_time: Duration,
    /// Time running steps.
    pub run_time: Duration,
    /// The first kernel's cache key (this machine's runs).
    pub cache_key: Option<String>,
    /// Packets committed on CPU threads here.
    pub cpu_packets: u64,
    /// Packets committed on OpenCL devices here.
    pub opencl_packets: u64,
    /// This machine's OpenCL devices that took part.
    pub opencl_devices: Vec<String>,
    /// Why OpenCL did not take part in an `Auto` run, if it did not.
    pub opencl_note: Option<String>,
    /// For a cluster run: what happened on the nodes.
    pub cluster: Option<ClusterReport>,
}

/// What a cluster run did on its nodes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClusterReport {
    /// Packets committed per node name.
    pub packets_per_node: Vec<(String, u64)>,
    /// Packets committed per device of a node.
    pub packets_per_device: Vec<(String, u64)>,
    /// Nodes lost, with the reason.
    pub lost: Vec<String>,
    /// Nodes excluded for results that disagreed or packets that failed.
    pub disagreements: Vec<String>,
    /// Nodes that paused during the job (their owner came back, or they were stopped),
    /// with why; their packets ran elsewhere.
    pub paused: Vec<String>,
    /// Nodes that rejoined, with the packets they ran after rejoining.
    pub rejoined: Vec<(String, u64)>,
    /// Nodes whose advertised tuned rate was used.
    pub tuned_rates: Vec<(String, f64)>,
    /// Items (and packets) run on this machine after every node was lost.
    pub finished_here: Option<(u64, u64)>,
    /// Each node's link as the last step that ran on it measured it (bandwidth and
    /// latency, from the step's transfers; `transfers: 0` is the unmeasured prior).
    pub links: Vec<cluster::client::LinkFigure>,
}
