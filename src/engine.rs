//! The local node's engine: runs a job's checked plan on this machine's CPU and OpenCL
//! devices.
//!
//! The plan ([`Plan`], from the kernel model) has checked every step run before the
//! engine starts. The engine compiles each kernel once, starts one pool of CPU workers
//! for the whole job (isolated worker processes over shared memory with
//! [`Options::isolated`], see [`crate::isolated`]; else threads of this process), and
//! runs the steps one after another with a barrier between them: the scheduler core cuts
//! each step into packets and places them on the CPU workers (and,
//! with [`DeviceChoice::OpenCl`]/[`DeviceChoice::Auto`], the OpenCL devices, prepared per
//! step). Buffers stay where they are: kernels work on the job's memory directly, packets
//! of a step write disjoint slices, and `sum` partials are private per packet and added
//! into their buffer in item order (packets of a step with `sum` buffers have a fixed
//! size), so a job gives bit-identical results run after run on the same devices.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use ir_packager::kernel_model::program::{
    BufferDecl, Init, Instance, Number, Plan, Program, ProgramError,
};
use ir_packager::{ArgLayout, Layout, Package, ScalarType};
use node_jit::{CompileReport, CompiledKernel, Engine, JitError};
use opencl_backend::{DeviceError, LowerError, OpenCl, PacketTiming, PreparedKernel};
use scheduler::{
    Decision, DeviceChoice, DeviceId, DeviceSpec, Event, JobSpec, Link, Packet, Scheduler,
};

use crate::buffer::Buffer;
use crate::files::{read_input, Expected};
use crate::job::{Job, JobError, Options, Report, Storage};

/// A job that could not run or did not finish. Nothing written by a failed job reaches a
/// file: outputs are written only after success.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The program or a step's arguments are wrong (found before anything ran).
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// A kernel could not be compiled or loaded.
    #[error(transparent)]
    Jit(#[from] JitError),
    /// An option the place the job runs cannot honour.
    #[error("{0}")]
    Refused(String),
    /// The kernel panicked on some packet.
    #[error("kernel `{kernel}` panicked on items {start}..{end}: {reason}")]
    KernelPanicked {
        /// The kernel.
        kernel: String,
        /// First item of the packet.
        start: u64,
        /// End of the packet.
        end: u64,
        /// What went wrong.
        reason: &'static str,
    },
    /// A kernel ended its isolated worker process: a trap, a stack overflow, a forbidden
    /// system call (or the worker was killed from outside).
    #[error("{}", crash_sentence(kernel, *start, *end, ending))]
    KernelCrashed {
        /// The kernel.
        kernel: String,
        /// First item of the packet.
        start: u64,
        /// End of the packet.
        end: u64,
        /// How its worker ended.
        ending: sandbox::WorkerEnd,
    },
    /// A packet ran longer than [`Options::packet_timeout`]; its worker was stopped.
    #[error("kernel `{kernel}` ran longer than the packet timeout ({} s) on items {start}..{end}; its worker was stopped", timeout.as_secs_f64())]
    PacketTimedOut {
        /// The kernel.
        kernel: String,
        /// First item of the packet.
        start: u64,
        /// End of the packet.
        end: u64,
        /// The timeout.
        timeout: std::time::Duration,
    },
    /// The isolated workers could not be started.
    #[error(transparent)]
    Workers(#[from] crate::isolated::WorkerStartError),
    /// Check mode found a kernel touching memory outside what the kernel model gives
    /// its item (the message names the kernel, the buffer and the item).
    #[error("{0} (check mode)")]
    OutsideMemory(String),
    /// A worker thread died.
    #[error("a worker thread stopped unexpectedly")]
    WorkerLost,
    /// The engine's own bookkeeping disagrees with itself (a bug of offload, not of the
    /// job).
    #[error("internal error of offload: {0}; please report it")]
    Internal(&'static str),
    /// Worker threads could not be started.
    #[error("cannot start {requested} worker threads (only {started} started): {source}; ask for fewer with --threads, or for a smaller --stack-size")]
    Threads {
        /// Threads asked for.
        requested: usize,
        /// Threads that started before the failure.
        started: usize,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// Something the job needs is larger than this machine's memory.
    #[error("{what} needs {} ({bytes} bytes), more than this machine can hold ({})", node_jit::describe_bytes(*.bytes), node_jit::describe_bytes(*.limit))]
    TooLarge {
        /// What needs the memory.
        what: String,
        /// How much.
        bytes: u64,
        /// What the machine can hold.
        limit: u64,
    },
    /// An allocation the size check allowed failed anyway (memory is in use elsewhere).
    #[error("cannot allocate {} for {what}: out of memory", node_jit::describe_bytes(*.bytes))]
    OutOfMemory {
        /// What the memory was for.
        what: String,
        /// How much.
        bytes: u64,
    },
    /// The process may open no more files, and a buffer needs one (shared memory for
    /// the isolated workers is an anonymous file).
    #[error("cannot put {what} in shared memory for the kernel workers: {advice}")]
    OutOfDescriptors {
        /// The buffer.
        what: String,
        /// What to do ([`crate::files::out_of_descriptors_advice`]).
        advice: String,
    },
    /// `--device opencl` on a machine without a usable OpenCL device.
    #[error("no OpenCL device is available: {note}")]
    NoOpenClDevice {
        /// Why (no platform, no device, ...).
        note: String,
    },
    /// The kernel cannot be lowered to OpenCL C (it still runs on the CPU).
    #[error(transparent)]
    Lower(#[from] Box<LowerError>),
    /// An OpenCL device failed.
    #[error(transparent)]
    OpenCl(#[from] Box<DeviceError>),
}

impl From<JobError> for RunError {
    /// A job's mistake found while it is being checked to run.
    fn from(e: JobError) -> RunError {
        match e {
            JobError::Program(p) => RunError::Program(p),
            JobError::Memory(m) => m,
            other => RunError::Refused(other.to_string()),
        }
    }
}

/// The sentence for a packet whose worker ended: `kernel `K` crashed on items 0..8:
/// SIGSEGV (invalid memory access)`, `kernel `K` made a forbidden system call (openat) on
/// items 0..8`.
fn crash_sentence(kernel: &str, start: u64, end: u64, ending: &sandbox::WorkerEnd) -> String {
    match ending {
        sandbox::WorkerEnd::ForbiddenSyscall { .. } => {
            format!("kernel `{kernel}` made {ending} on items {start}..{end}")
        }
        sandbox::WorkerEnd::Exited(_) => {
            format!("the worker running kernel `{kernel}` on items {start}..{end} {ending}")
        }
        _ => format!("kernel `{kernel}` crashed on items {start}..{end}: {ending}"),
    }
}

/// Checks that each of `needs` (what, bytes) and all of them together fit in this
/// machine's memory ([`node_jit::memory_limit`]) before anything is allocated.
pub fn check_memory(needs: &[(String, u64)]) -> Result<(), RunError> {
    let Some(limit) = node_jit::memory_limit() else {
        return Ok(());
    };
    for (what, bytes) in needs {
        if *bytes > limit {
            return Err(RunError::TooLarge {
                what: what.clone(),
                bytes: *bytes,
                limit,
            });
        }
    }
    let total = needs
        .iter()
        .fold(0u64, |total, (_, bytes)| total.saturating_add(*bytes));
    if total > limit {
        let parts: Vec<String> = needs
            .iter()
            .filter(|(_, bytes)| *bytes > 0)
            .map(|(what, bytes)| format!("{what}: {}", node_jit::describe_bytes(*bytes)))
            .collect();
        return Err(RunError::TooLarge {
            what: format!("the job's buffers together ({})", parts.join(", ")),
            bytes: total,
            limit,
        });
    }
    Ok(())
}

/// Memory a step takes beyond the job's buffers: a private, zeroed copy of every `sum`
/// buffer per device at work, plus those waiting to be added in item order.
pub fn sum_workspace(layout: &Layout, devices: usize) -> Vec<(String, u64)> {
    let bytes = layout.sum_bytes();
    if bytes == 0 {
        return Vec::new();
    }
    vec![(
        format!(
            "the per-device copies of kernel `{}`'s sum buffers ({devices} devices)",
            layout.kernel
        ),
        bytes.saturating_mul(2 * devices as u64 + 1),
    )]
}

/// Allocates a program's buffers: files read (no further than this machine can hold),
/// zero-filled and filled ones made, all checked against memory first.
pub(crate) fn allocate_buffers(
    program: &Program,
    base: &Path,
) -> Result<Vec<Storage<'static>>, JobError> {
    let mut needs = Vec::new();
    for decl in &program.buffers {
        let bytes = match &decl.init {
            Init::File(file) => std::fs::metadata(base.join(file)).map_or(0, |m| m.len()),
            Init::Zeros(_) | Init::Fill(..) => program
                .declared_len(decl)?
                .unwrap_or(0)
                .saturating_mul(decl.elem.size() as u64),
            Init::Provided => {
                return Err(JobError::File {
                    path: base.to_path_buf(),
                    reason: format!(
                        "buffer `{}` has no contents: give it `file = PATH`, `zeros = LEN` or `fill = VALUE, len = LEN`",
                        decl.name
                    ),
                })
            }
        };
        needs.push((format!("buffer `{}`", decl.name), bytes));
    }
    check_memory(&needs)?;
    let limit = node_jit::memory_limit().unwrap_or(u64::MAX);
    let mut storage = Vec::with_capacity(program.buffers.len());
    for decl in &program.buffers {
        let buffer = match &decl.init {
            Init::File(file) => {
                let path = base.join(file);
                read_input(
                    &path,
                    &decl.name,
                    &format!("{} {}", decl.name, decl.elem),
                    Expected::Elements {
                        size: decl.elem.size() as u64,
                        limit,
                    },
                    0,
                )?
            }
            Init::Zeros(_) | Init::Fill(..) => {
                let len = program.declared_len(decl)?.unwrap_or(0);
                let bytes = len.saturating_mul(decl.elem.size() as u64);
                let mut buffer = usize::try_from(bytes)
                    .ok()
                    .and_then(Buffer::try_zeroed_shared)
                    .ok_or(RunError::OutOfMemory {
                        what: format!("buffer `{}`", decl.name),
                        bytes,
                    })?;
                if let Init::Fill(value, _) = &decl.init {
                    let element =
                        element_bytes(*value, decl.elem).map_err(|reason| JobError::File {
                            path: base.to_path_buf(),
                            reason: format!("buffer `{}`: {reason}", decl.name),
                        })?;
                    for chunk in buffer.as_bytes_mut().chunks_exact_mut(element.len()) {
                        chunk.copy_from_slice(&element);
                    }
                }
                buffer
            }
            Init::Provided => Buffer::zeroed(0),
        };
        storage.push(Storage::Owned(buffer));
    }
    Ok(storage)
}

/// One element of type `elem` holding `value`, little-endian.
fn element_bytes(value: Number, elem: ScalarType) -> Result<Vec<u8>, String> {
    Ok(match (value, elem) {
        (Number::Float(v), ScalarType::F32) => (v as f32).to_le_bytes().to_vec(),
        (Number::Float(v), ScalarType::F64) => v.to_le_bytes().to_vec(),
        (Number::Int(v), ScalarType::F32) => (v as f32).to_le_bytes().to_vec(),
        (Number::Int(v), ScalarType::F64) => (v as f64).to_le_bytes().to_vec(),
        (Number::Float(v), _) => return Err(format!("{v:?} is not a whole number for {elem}")),
        (Number::Int(v), ScalarType::U8) => {
            vec![u8::try_from(v).map_err(|_| format!("{v} does not fit in u8"))?]
        }
        (Number::Int(v), _) => {
            let value = ir_packager::ScalarValue::from_integer(v, elem)?;
            value.to_bits().to_le_bytes()[..elem.size()].to_vec()
        }
    })
}

/// The fewest packets each device gets in a step when no tuning profile sets a packet
/// size: item costs vary (a Mandelbrot row inside the set costs 100x one outside), and a
/// packet here costs microseconds, so several per device keep them finishing together.
const PACKETS_PER_DEVICE: u64 = 32;

/// A step shorter than this (by its kernel's known rate) runs part of its packets on the
/// coordinating thread.
const SHORT_STEP: std::time::Duration = std::time::Duration::from_millis(1);

/// A step whose kernel's rate is known and whose share per CPU thread is shorter than
/// this is cut into one contiguous range per thread, range `t` always on thread `t`
/// (OpenMP's static schedule): the same rows stay in the same core's caches step after
/// step (a stencil or Floyd-Warshall reads what it wrote), and no scheduling decision is
/// made per packet. A longer step, whose items may cost very different amounts, is
/// scheduled packet by packet; what a static step can lose to uneven items is bounded
/// by this.
const STATIC_STEP: std::time::Duration = std::time::Duration::from_millis(4);

/// The least work a CPU packet gets once its kernel's rate is known: a packet costs a
/// few µs of dispatch, so this keeps that under a tenth.
const MIN_PACKET_TIME: std::time::Duration = std::time::Duration::from_micros(50);

/// Where a job resumes (a cluster job finished here after its nodes were lost): step run
/// `instance` (counting from 0), only its item `ranges`, then every later one.
pub(crate) struct Resume {
    pub instance: usize,
    pub ranges: Vec<Range<u64>>,
}

/// Runs `job` on this machine.
pub(crate) fn run(
    engine: &Engine,
    job: &mut Job<'_>,
    options: &Options,
) -> Result<Report, RunError> {
    let plan = job.plan()?;
    run_plan(engine, job, &plan, options, None)
}

/// Runs `plan` of `job` on this machine, from the start or from `resume`.
pub(crate) fn run_plan(
    engine: &Engine,
    job: &mut Job<'_>,
    plan: &Plan,
    options: &Options,
    resume: Option<Resume>,
) -> Result<Report, RunError> {
    if options.redundancy > 1 {
        return Err(RunError::Refused(format!(
            "redundancy {} runs every packet on {} different nodes: it needs a cluster (this job runs on this machine)",
            options.redundancy, options.redundancy
        )));
    }
    let manifests: Vec<_> = job.packages.iter().map(|p| p.manifest()).collect();
    let packages: Vec<Arc<Package>> = job.packages.clone();
    // A first walk: totals, the kernels to compile, the largest step.
    let first = resume.as_ref().map_or(0, |r| r.instance);
    let mut kernels: Vec<(usize, String)> = Vec::new();
    let mut total_items = 0u64;
    let mut largest = 0u64;
    let mut sum_needs: Vec<(String, u64)> = Vec::new();
    // The most `sum` accumulator bytes one packet needs (an isolated worker's scratch).
    let mut scratch = 0usize;
    let mut index = 0usize;
    plan.for_each(&manifests, &mut |instance| {
        if index >= first {
            let key = (instance.package, instance.kernel.clone());
            if !kernels.contains(&key) {
                kernels.push(key);
            }
            let items = match (&resume, index == first) {
                (Some(r), true) => r.ranges.iter().map(|r| r.end - r.start).sum(),
                _ => instance.layout.items,
            };
            total_items = total_items.saturating_add(items);
            largest = largest.max(items);
            scratch = scratch.max(
                sum_slots(&instance.layout)
                    .iter()
                    .map(|&(_, _, len)| len.div_ceil(64) * 64)
                    .sum(),
            );
            let need = instance.layout.sum_bytes();
            if need > sum_needs.first().map_or(0, |(_, b)| *b) {
                sum_needs = sum_workspace(&instance.layout, 1);
            }
        }
        index += 1;
        Ok(())
    })?;
    if options.check && options.device.is_some_and(DeviceChoice::uses_opencl) {
        return Err(RunError::Refused(
            "check mode (--check) runs every item on this machine's CPU; leave out --device to check the kernel".to_string(),
        ));
    }
    // Check mode runs items on a thread of its own per step: no pool.
    let threads = if options.device == Some(DeviceChoice::OpenCl) || options.check {
        0
    } else {
        options
            .threads
            .unwrap_or_else(node_jit::available_threads)
            .clamp(1, largest.clamp(1, 4096) as usize)
    };
    // The per-device sum copies of the largest step, with every device at work.
    let devices = threads.max(1) + 1;
    let scaled: Vec<(String, u64)> = sum_needs
        .into_iter()
        .map(|(what, bytes)| (what, bytes.saturating_mul(devices as u64)))
        .collect();
    check_memory(&scaled)?;
    // A stack is reserved whole for each worker thread (and pages come as they are
    // used): one larger than the machine's memory cannot be had.
    if let Some(bytes) = options.stack_size {
        check_memory(&[(
            "the stack of each worker thread (--stack-size)".to_string(),
            bytes as u64,
        )])?;
    }
    let tuning = options.tuning.clone().unwrap_or_default();
    let mut compiled: HashMap<(usize, String), Arc<CompiledKernel>> = HashMap::new();
    let mut report = Report {
        threads,
        ..Report::default()
    };
    for (package, kernel) in &kernels {
        let CompileReport {
            kernel: code,
            origin,
            elapsed,
        } = engine.compile_tuned(&packages[*package], kernel, &tuning)?;
        if report.code_origin.is_none() {
            report.code_origin = Some(origin);
            report.cache_key = Some(code.cache_key().to_string());
        }
        report.compile_time += elapsed;
        compiled.insert((*package, kernel.clone()), code);
    }
    let opencl = OpenClSide::open(options)?;
    // CPU packets run in isolated workers when asked (check mode runs items alone here).
    let isolation = options
        .isolation
        .as_ref()
        .filter(|_| threads > 0 && !options.check);
    let mut worker_kernels = Vec::new();
    let mut kernel_index: HashMap<String, usize> = HashMap::new();
    for code in compiled.values() {
        if !kernel_index.contains_key(code.cache_key()) {
            kernel_index.insert(code.cache_key().to_string(), worker_kernels.len());
            worker_kernels.push(crate::isolated::WorkerKernel {
                library: code.library_path().to_path_buf(),
                key: code.cache_key().to_string(),
                spec: code.spec().clone(),
            });
        }
    }
    // Declared after `compiled`, so dropped before it: the watchdog reads kernel names.
    // Isolated workers are stopped by their pool instead.
    let _watchdog =
        match options.packet_timeout.filter(|_| isolation.is_none()) {
            Some(timeout) => Some(crate::crash::Watchdog::start(timeout).map_err(|source| {
                RunError::Threads {
                    requested: threads + 1,
                    started: threads,
                    source,
                }
            })?),
            None => None,
        };
    let mut started = Instant::now();
    let mut done_items = 0u64;
    let mut learned: HashMap<(usize, String), f64> = HashMap::new();
    let storage = &mut job.storage;
    let lent = match isolation {
        Some(_) => share_storage(storage, &job.program.buffers)?,
        None => Vec::new(),
    };
    let ran = std::thread::scope(|scope| -> Result<(), RunError> {
        let stack = options.stack_size.unwrap_or(crate::job::DEFAULT_STACK);
        let mut pool = match isolation {
            Some(program) => {
                let shared: Vec<&crate::shared::SharedMemory> = storage
                    .iter()
                    .map(|s| match s {
                        Storage::Owned(buffer) => buffer.shared(),
                        _ => None,
                    })
                    .collect::<Option<_>>()
                    .ok_or(RunError::Internal(
                        "a job buffer was not moved into shared memory for the isolated workers",
                    ))?;
                let workers = crate::isolated::Workers::start(
                    program,
                    threads,
                    &shared,
                    &worker_kernels,
                    scratch,
                    stack,
                    options.packet_timeout,
                )?;
                Pool::Processes {
                    workers,
                    kernels: kernel_index.clone(),
                }
            }
            None => Pool::start(scope, threads, stack)?,
        };
        report.isolated_workers = match &pool {
            Pool::Processes { workers, .. } => workers.len(),
            Pool::Threads(_) => 0,
        };
        // The run's time counts from here: starting the workers is set-up, as compiling is.
        started = Instant::now();
        let mut failure: Option<RunError> = None;
        let mut index = 0usize;
        let walk = plan.for_each(&manifests, &mut |instance| {
            let this = index;
            index += 1;
            if this < first {
                return Ok(());
            }
            let ranges = match &resume {
                Some(r) if this == first => r.ranges.clone(),
                _ => std::iter::once(0..instance.layout.items).collect(),
            };
            let key = (instance.package, instance.kernel.clone());
            let kernel = &compiled[&key];
            let step = StepRun {
                instance: &instance,
                kernel,
                package: &packages[instance.package],
                ranges,
                options,
                threads,
                cpu_rate: learned.get(&key).copied(),
            };
            match step.run(
                scope,
                &mut pool,
                &opencl,
                storage,
                &mut done_items,
                total_items,
            ) {
                Ok(counts) => {
                    // What this kernel's items cost, for the next step that runs it.
                    let busy = counts.cpu_busy.as_secs_f64();
                    if counts.cpu_items > 0 && busy > 0.0 {
                        learned.insert(key, counts.cpu_items as f64 / busy);
                    }
                    report.steps += 1;
                    report.items += counts.items;
                    report.packets += counts.cpu + counts.opencl;
                    report.cpu_packets += counts.cpu;
                    report.opencl_packets += counts.opencl;
                    for name in counts.opencl_devices {
                        if !report.opencl_devices.contains(&name) {
                            report.opencl_devices.push(name);
                        }
                    }
                    if report.opencl_note.is_none() {
                        report.opencl_note = counts.opencl_note;
                    }
                    Ok(())
                }
                Err(e) => {
                    failure = Some(e);
                    // Stops the walk; the real error is `failure`.
                    Err(ProgramError::Invalid {
                        at: String::new(),
                        reason: String::new(),
                    })
                }
            }
        });
        match (failure, walk) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e.into()),
            (None, Ok(())) => Ok(()),
        }
    });
    restore_storage(storage, lent, ran.is_ok());
    ran?;
    report.run_time = started.elapsed();
    report.workers = threads;
    if options.check {
        report.threads = 1;
        report.workers = 1;
    }
    if report.opencl_devices.is_empty() && report.opencl_note.is_none() {
        report.opencl_note = opencl.note.clone();
    }
    Ok(report)
}

/// Puts every buffer of `storage` in shared memory, for isolated workers: one that is not
/// (a slice the caller lent, a heap buffer) is replaced by a shared copy (`buffers`, the
/// program's declarations in the same order, name it if memory runs out). Returns what
/// was replaced of the caller's, for [`restore_storage`].
fn share_storage<'a>(
    storage: &mut [Storage<'a>],
    buffers: &[BufferDecl],
) -> Result<Vec<Option<Storage<'a>>>, RunError> {
    let mut replaced = Vec::with_capacity(storage.len());
    for (index, slot) in storage.iter_mut().enumerate() {
        if let Storage::Owned(buffer) = slot {
            if buffer.shared().is_some() {
                replaced.push(None);
                continue;
            }
        }
        let bytes = slot.bytes();
        let what = match buffers.get(index) {
            Some(buffer) => format!("buffer `{}`", buffer.name),
            None => format!("the job's buffer {index}"),
        };
        let mut copy = Buffer::try_shared(bytes.len()).map_err(|e| {
            if crate::files::is_out_of_descriptors(&e) {
                RunError::OutOfDescriptors {
                    what,
                    advice: crate::files::out_of_descriptors_advice(),
                }
            } else {
                RunError::OutOfMemory {
                    what: format!("the shared copy of {what}"),
                    bytes: bytes.len() as u64,
                }
            }
        })?;
        copy.as_bytes_mut().copy_from_slice(bytes);
        replaced.push(match std::mem::replace(slot, Storage::Owned(copy)) {
            Storage::Owned(_) => None,
            lent => Some(lent),
        });
    }
    Ok(replaced)
}

/// Gives back the caller's lent buffers that [`share_storage`] replaced; after a run
/// that succeeded, the writable ones first get what the kernels wrote.
fn restore_storage<'a>(
    storage: &mut [Storage<'a>],
    replaced: Vec<Option<Storage<'a>>>,
    succeeded: bool,
) {
    for (slot, original) in storage.iter_mut().zip(replaced) {
        let Some(mut original) = original else {
            continue;
        };
        if let (true, Storage::Write(lent), Storage::Owned(copy)) =
            (succeeded, &mut original, &*slot)
        {
            lent.copy_from_slice(copy.as_bytes());
        }
        *slot = original;
    }
}

/// The OpenCL devices a job may use, opened once.
struct OpenClSide {
    opencl: Option<Arc<OpenCl>>,
    strict: bool,
    note: Option<String>,
}

impl OpenClSide {
    fn open(options: &Options) -> Result<OpenClSide, RunError> {
        let choice = options.device.unwrap_or(DeviceChoice::Cpu);
        if !choice.uses_opencl() {
            return Ok(OpenClSide {
                opencl: None,
                strict: false,
                note: None,
            });
        }
        let strict = choice == DeviceChoice::OpenCl;
        let opencl = options
            .opencl
            .clone()
            .unwrap_or_else(|| Arc::new(OpenCl::new()));
        if opencl.devices().is_empty() {
            let note = opencl
                .note()
                .unwrap_or("no OpenCL device found")
                .to_string();
            if strict {
                return Err(RunError::NoOpenClDevice { note });
            }
            return Ok(OpenClSide {
                opencl: None,
                strict,
                note: Some(note),
            });
        }
        Ok(OpenClSide {
            opencl: Some(opencl),
            strict,
            note: None,
        })
    }

    /// Prepares `instance` on every device that takes it; notes why others do not.
    ///
    /// # Safety
    /// `block`'s whole-buffer addresses must be valid for their layout sizes for the
    /// call.
    unsafe fn prepare(
        &self,
        package: &Package,
        instance: &Instance,
        block: &[u64],
    ) -> Result<(Vec<PreparedKernel>, Option<String>), RunError> {
        let Some(opencl) = &self.opencl else {
            return Ok((Vec::new(), None));
        };
        let lowered = match opencl.lower(package, &instance.kernel) {
            Ok(l) => l,
            Err(e) if !self.strict => return Ok((Vec::new(), Some(e.to_string()))),
            Err(e) => return Err(Box::new(e).into()),
        };
        let mut kernels = Vec::new();
        let mut notes = Vec::new();
        for device in opencl.devices() {
            // SAFETY: forwarded from the caller.
            match unsafe {
                opencl.prepare(
                    device,
                    package,
                    Arc::clone(&lowered),
                    &instance.layout,
                    block,
                )
            } {
                Ok(k) => kernels.push(k),
                Err(e) if !self.strict => notes.push(e.to_string()),
                Err(e) => return Err(Box::new(e).into()),
            }
        }
        Ok((kernels, (!notes.is_empty()).then(|| notes.join("; "))))
    }
}

/// A `sum` argument: its slot, element type and length in bytes.
type SumSlot = (usize, ScalarType, usize);

/// What every packet of a step gets besides its items: a private zeroed copy of each
/// `sum` buffer. `out` slices are not cleared: a kernel writes every element of its
/// slice (clearing them first cost a stencil a quarter of its time in memory traffic).
struct PacketSlots {
    sums: Vec<SumSlot>,
}

/// A packet for a CPU worker thread.
struct CpuTask {
    kernel: Arc<CompiledKernel>,
    block: Arc<Vec<u64>>,
    slots: Arc<PacketSlots>,
    device: DeviceId,
    packet: Packet,
    done: mpsc::Sender<Finished>,
}

/// The job's CPU devices, started once: worker threads of this process, or isolated
/// worker processes ([`crate::isolated`]).
/// A step's request to isolated workers, the same for each of its packets.
struct WorkerRequest {
    /// The kernel's index in the workers' set-up.
    kernel: usize,
    /// The argument slots.
    slots: Vec<crate::isolated::Slot>,
}

enum Pool {
    Threads(Vec<mpsc::Sender<CpuTask>>),
    Processes {
        workers: crate::isolated::Workers,
        /// Each compiled kernel's index in the workers' set-up, by cache key.
        kernels: HashMap<String, usize>,
    },
}

impl Pool {
    fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        threads: usize,
        stack: usize,
    ) -> Result<Pool, RunError> {
        let mut workers = Vec::with_capacity(threads);
        for w in 0..threads {
            let (tx, rx) = mpsc::channel::<CpuTask>();
            std::thread::Builder::new()
                .name(format!("offload-cpu{w}"))
                .stack_size(stack)
                .spawn_scoped(scope, move || cpu_worker(rx))
                .map_err(|source| RunError::Threads {
                    requested: threads,
                    started: w,
                    source,
                })?;
            workers.push(tx);
        }
        Ok(Pool::Threads(workers))
    }

    /// Whether this thread may run packets itself (never with isolated workers: the
    /// kernels' code runs only in them).
    fn runs_inline(&self) -> bool {
        matches!(self, Pool::Threads(_))
    }

    /// Hands `packet` of `range`'s step to CPU device `device`.
    fn dispatch(
        &mut self,
        range: &RangeRun<'_>,
        device: DeviceId,
        packet: Packet,
        done: &mpsc::Sender<Finished>,
    ) -> Result<(), RunError> {
        let step = range.step;
        match self {
            Pool::Threads(senders) => senders[device.0 as usize]
                .send(CpuTask {
                    kernel: Arc::clone(step.kernel),
                    block: Arc::clone(range.block),
                    slots: Arc::clone(range.slots),
                    device,
                    packet,
                    done: done.clone(),
                })
                .map_err(|_| RunError::WorkerLost),
            Pool::Processes { workers, .. } => {
                let request = range.worker_request.ok_or(RunError::Internal(
                    "a step meant for isolated workers was not prepared for them",
                ))?;
                if workers.send(
                    device.0 as usize,
                    request.kernel,
                    device,
                    packet,
                    &request.slots,
                ) {
                    Ok(())
                } else {
                    Err(RunError::Internal(
                        "a packet went to an isolated worker that was busy or never started",
                    ))
                }
            }
        }
    }

    /// What isolated workers are sent for every packet of `step` (the kernel's index in
    /// their set-up and the argument slots), made once per step: only the items change
    /// from packet to packet. `None` for worker threads.
    fn worker_request(
        &self,
        step: &StepRun<'_>,
        block: &[u64],
        sums: &[SumSlot],
    ) -> Result<Option<WorkerRequest>, RunError> {
        let Pool::Processes { workers, kernels } = self else {
            return Ok(None);
        };
        let kernel = *kernels
            .get(step.kernel.cache_key())
            .ok_or(RunError::Internal(
                "a step's kernel is not among the isolated workers' kernels",
            ))?;
        let mut scratch = 0usize;
        let slots = block
            .iter()
            .enumerate()
            .map(|(slot, &word)| {
                if let Some(&(_, _, len)) = sums.iter().find(|(s, _, _)| *s == slot) {
                    let offset = scratch;
                    // 64-byte aligned accumulators, as the heap's are.
                    scratch += len.div_ceil(64) * 64;
                    return crate::isolated::Slot::Sum { offset, len };
                }
                match step.instance.buffers[slot] {
                    Some(index) => crate::isolated::Slot::Buffer {
                        index,
                        offset: word.wrapping_sub(workers.base(index)),
                    },
                    None => crate::isolated::Slot::Scalar(word),
                }
            })
            .collect();
        Ok(Some(WorkerRequest { kernel, slots }))
    }

    /// The next finished packet, waiting for it.
    fn next(&mut self, done_rx: &mpsc::Receiver<Finished>) -> Result<Finished, RunError> {
        match self {
            Pool::Threads(_) => recv_soon(done_rx).map_err(|_| RunError::WorkerLost),
            Pool::Processes { workers, .. } => {
                match workers.wait(&mut || done_rx.try_recv().ok()) {
                    Ok(answer) => Ok(finished_of(answer)),
                    Err(finished) => Ok(finished),
                }
            }
        }
    }

    /// A finished packet if one is there.
    fn try_next(
        &mut self,
        done_rx: &mpsc::Receiver<Finished>,
    ) -> Result<Option<Finished>, RunError> {
        if let Pool::Processes { workers, .. } = self {
            if let Some(answer) = workers.try_answer() {
                return Ok(Some(finished_of(answer)));
            }
        }
        match done_rx.try_recv() {
            Ok(finished) => Ok(Some(finished)),
            Err(mpsc::TryRecvError::Disconnected) => Err(RunError::WorkerLost),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
        }
    }
}

/// An isolated worker's answer as the engine's packet result.
fn finished_of(answer: crate::isolated::Answer) -> Finished {
    use crate::isolated::WorkerFailure;
    Finished {
        device: answer.device,
        packet: answer.packet,
        compute_us: answer.compute.as_micros() as u64,
        elapsed: answer.compute,
        bus: None,
        outcome: answer.outcome.map_err(|failure| match failure {
            WorkerFailure::Panicked(code) => Failure::Panic(ir_packager::panic_reason(code)),
            WorkerFailure::Ended(ending) => Failure::Crashed(ending),
            WorkerFailure::TimedOut(timeout) => Failure::TimedOut(timeout),
        }),
    }
}

/// How long a thread that expects a message soon polls for it before it sleeps: waking
/// a sleeping thread costs tens of µs on a virtual machine (an inter-processor interrupt
/// the host must deliver), as much as a short step's work. OpenMP's barriers spin for
/// the same reason.
const SPIN_BEFORE_SLEEP: std::time::Duration = std::time::Duration::from_micros(1000);

/// `rx.recv()`, polling for up to [`SPIN_BEFORE_SLEEP`] before sleeping. The poll
/// yields the core between rounds: the thread it waits for may be queued on this very
/// core (a worker thread just started is often placed beside its parent), and without
/// yielding it would wait the whole poll before it ran (2 ms of a 1-packet job here).
fn recv_soon<T>(rx: &mpsc::Receiver<T>) -> Result<T, mpsc::RecvError> {
    let started = Instant::now();
    loop {
        for _ in 0..64 {
            match rx.try_recv() {
                Ok(message) => return Ok(message),
                Err(mpsc::TryRecvError::Disconnected) => return Err(mpsc::RecvError),
                Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        if started.elapsed() > SPIN_BEFORE_SLEEP {
            return rx.recv();
        }
        std::thread::yield_now();
    }
}

fn cpu_worker(tasks: mpsc::Receiver<CpuTask>) {
    // The first task may be far off; after each one the next is likely close.
    let Ok(first) = tasks.recv() else { return };
    let mut next = Some(first);
    while let Some(task) = next.take() {
        let CpuTask {
            kernel,
            block,
            slots,
            device,
            packet,
            done,
        } = task;
        // A kernel's panic is caught inside `run_packet`; anything else that unwinds here
        // (a bug) fails the packet instead of ending this thread while the coordinator
        // waits for its answer.
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_cpu_packet(&kernel, device, packet, &block, &slots)
        }))
        .unwrap_or(Finished {
            device,
            packet,
            compute_us: 0,
            elapsed: std::time::Duration::ZERO,
            bus: None,
            outcome: Err(Failure::Panic("the worker thread failed while running it")),
        });
        if done.send(finished).is_err() {
            return;
        }
        next = recv_soon(&tasks).ok();
    }
}

/// Runs one packet on this thread.
fn run_cpu_packet(
    kernel: &CompiledKernel,
    device: DeviceId,
    packet: Packet,
    block: &[u64],
    slots: &PacketSlots,
) -> Finished {
    serve_packet(device, packet, block, slots, |start, end, block| {
        // A trap in the kernel is reported naming it and these items (`crash`).
        let _running = crate::crash::Running::new(&kernel.spec().name, start, end);
        // SAFETY: the plan checked every buffer of this step against the manifest,
        // packets of one step cover disjoint items, and sum buffers are private to
        // this packet; the job's memory outlives the step (the coordinator waits).
        unsafe { kernel.run_packet(start, end, block) }
            .map(|()| None)
            .map_err(|panic| Failure::Panic(panic.reason))
    })
}

/// A packet's result.
struct Finished {
    device: DeviceId,
    packet: Packet,
    compute_us: u64,
    /// The packet's wall time on its device.
    elapsed: std::time::Duration,
    /// Bus transfers of a device with its own memory, timed apart from its kernel.
    bus: Option<PacketTiming>,
    outcome: Result<Vec<Buffer>, Failure>,
}

/// Why a packet did not finish.
enum Failure {
    /// The kernel panicked (on any device): the job fails.
    Panic(&'static str),
    /// A packet's private sum buffers could not be allocated: the job fails.
    Memory(u64),
    /// An OpenCL device failed: it leaves the step and its packets go elsewhere.
    Device(DeviceError),
    /// The packet's isolated worker ended: the job fails.
    Crashed(sandbox::WorkerEnd),
    /// The packet ran past the packet timeout; its worker was killed: the job fails.
    TimedOut(std::time::Duration),
}

impl Failure {
    /// The job's error for this failure of `packet` of `kernel` (a device failure only
    /// when the step has no other device to send its packets to).
    fn into_error(self, kernel: &str, packet: &Packet) -> RunError {
        match self {
            Failure::Panic(reason) => RunError::KernelPanicked {
                kernel: kernel.to_string(),
                start: packet.start,
                end: packet.end,
                reason,
            },
            Failure::Memory(bytes) => RunError::OutOfMemory {
                what: format!("the sum buffers of items {}..{}", packet.start, packet.end),
                bytes,
            },
            Failure::Device(error) => RunError::OpenCl(Box::new(error)),
            Failure::Crashed(ending) => RunError::KernelCrashed {
                kernel: kernel.to_string(),
                start: packet.start,
                end: packet.end,
                ending,
            },
            Failure::TimedOut(timeout) => RunError::PacketTimedOut {
                kernel: kernel.to_string(),
                start: packet.start,
                end: packet.end,
                timeout,
            },
        }
    }
}

/// Runs one packet with fresh zeroed sum buffers and times it.
fn serve_packet(
    device: DeviceId,
    packet: Packet,
    block: &[u64],
    slots: &PacketSlots,
    run: impl FnOnce(u64, u64, &[u64]) -> Result<Option<PacketTiming>, Failure>,
) -> Finished {
    let sums = &slots.sums;
    let partials: Option<Vec<Buffer>> = sums
        .iter()
        .map(|&(_, _, len)| Buffer::try_zeroed(len))
        .collect();
    let Some(mut partials) = partials else {
        return Finished {
            device,
            packet,
            compute_us: 0,
            elapsed: std::time::Duration::ZERO,
            bus: None,
            outcome: Err(Failure::Memory(
                sums.iter().map(|&(_, _, len)| len as u64).sum(),
            )),
        };
    };
    let mut block = block.to_vec();
    for (partial, &(slot, _, _)) in partials.iter_mut().zip(sums) {
        block[slot] = partial.address();
    }
    let started = Instant::now();
    let outcome = run(packet.start, packet.end, &block);
    let elapsed = started.elapsed();
    let mut compute_us = elapsed.as_micros() as u64;
    let bus = outcome.as_ref().ok().copied().flatten();
    if let Some(t) = bus {
        compute_us = t.kernel.as_micros() as u64;
    }
    Finished {
        device,
        packet,
        compute_us,
        elapsed,
        bus,
        outcome: outcome.map(|_| partials),
    }
}

/// What a step did.
#[derive(Default)]
struct StepCounts {
    items: u64,
    /// Items the CPU threads ran, and the time they spent on them.
    cpu_items: u64,
    cpu_busy: std::time::Duration,
    cpu: u64,
    opencl: u64,
    opencl_devices: Vec<String>,
    opencl_note: Option<String>,
}

/// A step's `sum` arguments: slot, element type and bytes.
fn sum_slots(layout: &Layout) -> Vec<SumSlot> {
    layout
        .args
        .iter()
        .enumerate()
        .filter_map(|(slot, a)| match a {
            ArgLayout::Sum { elem, len } => Some((slot, *elem, (*len as usize) * elem.size())),
            _ => None,
        })
        .collect()
}

/// One step run on this machine.
struct StepRun<'a> {
    instance: &'a Instance,
    kernel: &'a Arc<CompiledKernel>,
    package: &'a Package,
    ranges: Vec<Range<u64>>,
    options: &'a Options,
    threads: usize,
    /// Items per second of one CPU thread on this kernel, as an earlier step of the job
    /// measured it.
    cpu_rate: Option<f64>,
}

impl StepRun<'_> {
    fn run<'scope>(
        &self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        pool: &mut Pool,
        opencl: &OpenClSide,
        storage: &mut [Storage<'_>],
        done_items: &mut u64,
        total_items: u64,
    ) -> Result<StepCounts, RunError> {
        let layout = &self.instance.layout;
        let block = layout.block(|slot| match self.instance.buffers[slot] {
            Some(buffer) => storage[buffer].address(),
            None => 0,
        });
        if self.options.check {
            return self.run_checked(&block, storage, done_items, total_items);
        }
        let slots = PacketSlots {
            sums: sum_slots(layout),
        };
        // SAFETY: `block` points into `storage`, which outlives the call.
        let (prepared, note) = unsafe { opencl.prepare(self.package, self.instance, &block) }?;
        let mut counts = StepCounts {
            opencl_devices: prepared
                .iter()
                .map(|k| format!("{} [{}]", k.device().info().name, k.route()))
                .collect(),
            opencl_note: note,
            ..StepCounts::default()
        };
        let block = Arc::new(block);
        let slots = Arc::new(slots);
        let (done_tx, done_rx) = mpsc::channel::<Finished>();
        // OpenCL devices get a thread each for this step.
        let mut device_senders = Vec::new();
        for (k, kernel) in prepared.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Packet>();
            let done = done_tx.clone();
            let block = Arc::clone(&block);
            let slots = Arc::clone(&slots);
            let device = DeviceId((self.threads + k) as u32);
            let name = format!("{} [{}]", kernel.device().info().name, kernel.route());
            let bus = !kernel.device().info().host_unified_memory;
            std::thread::Builder::new()
                .name(format!("offload-opencl{k}"))
                .spawn_scoped(scope, move || {
                    opencl_worker(kernel, device, &block, &slots, rx, done)
                })
                .map_err(|source| RunError::Threads {
                    requested: self.threads + k + 1,
                    started: self.threads + k,
                    source,
                })?;
            device_senders.push((tx, name, bus));
        }
        // Partials waiting to be added in item order, by their packet's start.
        let mut totals: Vec<Buffer> = slots
            .sums
            .iter()
            .map(|&(_, _, len)| {
                Buffer::try_zeroed(len).ok_or(RunError::OutOfMemory {
                    what: format!("the totals of kernel `{}`'s sum buffers", layout.kernel),
                    bytes: len as u64,
                })
            })
            .collect::<Result<_, _>>()?;
        let worker_request = pool.worker_request(self, &block, &slots.sums)?;
        for range in &self.ranges {
            let ctx = RangeRun {
                step: self,
                block: &block,
                slots: &slots,
                worker_request: worker_request.as_ref(),
                range: range.clone(),
                device_senders: &device_senders,
            };
            ctx.run(
                pool,
                &done_tx,
                &done_rx,
                &mut totals,
                &mut counts,
                done_items,
                total_items,
            )?;
        }
        drop(device_senders);
        self.add_totals(storage, &slots.sums, &totals);
        Ok(counts)
    }

    /// Adds the step's `sum` totals (one per entry of `sums`) into their buffers.
    fn add_totals(&self, storage: &mut [Storage<'_>], sums: &[SumSlot], totals: &[Buffer]) {
        for (&(slot, elem, _), total) in sums.iter().zip(totals) {
            if let Some(buffer) = self.instance.buffers[slot] {
                if let Some(bytes) = storage[buffer].bytes_mut() {
                    elem.add_into(bytes, total.as_bytes());
                }
            }
        }
    }

    /// The step in check mode (`check`): every item alone on fenced copies.
    fn run_checked(
        &self,
        block: &[u64],
        storage: &mut [Storage<'_>],
        done_items: &mut u64,
        total_items: u64,
    ) -> Result<StepCounts, RunError> {
        let layout = &self.instance.layout;
        let before = *done_items;
        let progress = |done: u64| {
            if let Some(progress) = &self.options.progress {
                progress(before + done, total_items);
            }
        };
        let totals = crate::check::run_step(
            &crate::check::CheckStep {
                layout,
                kernel: self.kernel,
                block,
                ranges: &self.ranges,
                stack: self.options.stack_size.unwrap_or(crate::job::DEFAULT_STACK),
            },
            &progress,
        )?;
        self.add_totals(storage, &sum_slots(layout), &totals);
        let items: u64 = self.ranges.iter().map(|r| r.end - r.start).sum();
        *done_items += items;
        Ok(StepCounts {
            items,
            cpu_items: items,
            cpu: items,
            ..StepCounts::default()
        })
    }
}

/// One item range of a step (the whole step, or what was left of it).
struct RangeRun<'a> {
    step: &'a StepRun<'a>,
    block: &'a Arc<Vec<u64>>,
    slots: &'a Arc<PacketSlots>,
    /// What isolated workers get for each packet (`None` with worker threads).
    worker_request: Option<&'a WorkerRequest>,
    range: Range<u64>,
    device_senders: &'a [(mpsc::Sender<Packet>, String, bool)],
}

impl RangeRun<'_> {
    #[allow(clippy::too_many_arguments)] // the step's shared state, passed down once
    fn run(
        &self,
        pool: &mut Pool,
        done_tx: &mpsc::Sender<Finished>,
        done_rx: &mpsc::Receiver<Finished>,
        totals: &mut [Buffer],
        counts: &mut StepCounts,
        done_items: &mut u64,
        total_items: u64,
    ) -> Result<(), RunError> {
        let step = self.step;
        let layout = &step.instance.layout;
        let first = self.range.start;
        let items = self.range.end - self.range.start;
        if items == 0 {
            return Ok(());
        }
        let threads = step.threads;
        let static_step = threads > 0
            && self.device_senders.is_empty()
            && step.options.packet_items.is_none()
            && layout.sum_packet_items().is_none()
            && step.cpu_rate.is_some_and(|rate| {
                items as f64 / (rate * threads as f64) < STATIC_STEP.as_secs_f64()
            });
        if static_step {
            return self.run_static(pool, done_tx, done_rx, counts, done_items, total_items);
        }
        let devices = (threads + self.device_senders.len()).max(1) as u64;
        // Bytes a packet moves per item over a GPU's own bus (split slices; `out` slices
        // go up too, so unwritten elements keep their value).
        let (bytes_in, bytes_out) = layout.args.iter().fold((0, 0), |(i, o), a| match a {
            ArgLayout::Split { access, .. } => {
                let b = a.bytes_per_item();
                (
                    i + b,
                    if access.reads_input() && !access.writes_output() {
                        o
                    } else {
                        o + b
                    },
                )
            }
            _ => (i, o),
        });
        let mut job = JobSpec::new(items)
            .speculation(false)
            .bytes_in_per_item(bytes_in)
            .bytes_out_per_item(bytes_out);
        let mut cpu_cap = None;
        let has_sums = !self.slots.sums.is_empty();
        match step.options.packet_items {
            Some(size) => job = job.min_packet(size).max_packet(size),
            // Steps with sums cut fixed packets, so the partials (added in item order)
            // are the same run after run whatever the timing.
            None if has_sums => {
                let granule = layout.sum_packet_items().unwrap_or(1);
                job = job.min_packet(granule).max_packet(granule);
            }
            // A GPU behind its own bus is not capped: it needs packets of millions of
            // items, and the scheduler sizes them from its measured rate. With the
            // kernel's rate known from an earlier step, a packet is never cut below
            // MIN_PACKET_TIME of work: a cheap step runs as one packet per device.
            None => {
                let cap = items.div_ceil(devices * PACKETS_PER_DEVICE).max(1);
                let floor = step.cpu_rate.map_or(1, |rate| {
                    let floor = (rate * MIN_PACKET_TIME.as_secs_f64()).ceil() as u64;
                    floor.clamp(1, items.div_ceil(devices).max(1))
                });
                cpu_cap = Some(cap.max(floor));
            }
        }
        let capped = |spec: DeviceSpec| {
            let spec = match step.cpu_rate {
                Some(rate) => spec.rate(rate),
                None => spec,
            };
            match cpu_cap {
                Some(cap) => spec.max_packet(cap),
                None => spec,
            }
        };
        let mut sched = Scheduler::new(job);
        let clock = Instant::now();
        let now = || clock.elapsed().as_micros() as u64;
        for w in 0..threads {
            sched.handle(
                now(),
                Event::DeviceJoined {
                    device: DeviceId(w as u32),
                    spec: capped(DeviceSpec::local_cpu(format!("cpu{w}"))),
                },
            );
        }
        for (k, (_, name, bus)) in self.device_senders.iter().enumerate() {
            let spec = DeviceSpec::local_opencl(name.clone());
            let spec = if *bus {
                spec.bus(Some(Link::pcie()))
            } else {
                capped(spec)
            };
            sched.handle(
                now(),
                Event::DeviceJoined {
                    device: DeviceId((threads + k) as u32),
                    spec,
                },
            );
        }
        let mut pending: HashMap<(DeviceId, u64), Vec<Buffer>> = HashMap::new();
        // Committed partials by start, folded into `totals` in item order.
        let mut ordered: BTreeMap<u64, (u64, Vec<Buffer>)> = BTreeMap::new();
        let mut next = first;
        let mut last_device_error: Option<DeviceError> = None;
        let kernel_name = &layout.kernel;
        // A step known (from an earlier one of the same kernel) to be short runs CPU
        // device 0's packets on this thread: waking a worker and being woken by it is
        // most of such a step's cost. A long step keeps this thread free to hand out
        // packets the moment a device finishes one.
        let run_inline = threads > 0
            && pool.runs_inline()
            && step.cpu_rate.is_some_and(|rate| {
                items as f64 / (rate * threads as f64) < SHORT_STEP.as_secs_f64()
            });
        let mut inline: std::collections::VecDeque<Packet> = std::collections::VecDeque::new();
        loop {
            while let Some(decision) = sched.poll(now()) {
                match decision {
                    // The scheduler counts from 0; the kernel sees global items.
                    Decision::Run { device, packet } => {
                        let packet = Packet {
                            start: first + packet.start,
                            end: first + packet.end,
                            ..packet
                        };
                        let d = device.0 as usize;
                        if d == 0 && run_inline {
                            inline.push_back(packet);
                        } else if d < threads {
                            pool.dispatch(self, device, packet, done_tx)?;
                        } else if self.device_senders[d - threads].0.send(packet).is_err() {
                            return Err(RunError::WorkerLost);
                        }
                    }
                    Decision::Commit { device, packet } => {
                        if (device.0 as usize) < threads {
                            counts.cpu += 1;
                            counts.cpu_items += packet.items();
                        } else {
                            counts.opencl += 1;
                        }
                        counts.items += packet.items();
                        *done_items += packet.items();
                        if let Some(partials) = pending.remove(&(device, packet.id.0)) {
                            if has_sums {
                                let start = first + packet.start;
                                ordered.insert(start, (first + packet.end, partials));
                                while let Some((end, partials)) = ordered.remove(&next) {
                                    for (total, (partial, &(_, elem, _))) in totals
                                        .iter_mut()
                                        .zip(partials.iter().zip(self.slots.sums.iter()))
                                    {
                                        total.add_assign(partial, elem);
                                    }
                                    next = end;
                                }
                            }
                        }
                        if let Some(progress) = &step.options.progress {
                            progress(*done_items, total_items);
                        }
                    }
                    Decision::Discard { device, packet } => {
                        pending.remove(&(device, packet.id.0));
                    }
                    Decision::Cancel { .. } => {}
                }
            }
            if sched.is_done() || sched.failed().is_some() || sched.stalled() {
                break;
            }
            // Results first (their devices get their next packet sooner), then this
            // thread's own packet, then wait.
            let finished = match pool.try_next(done_rx)? {
                Some(finished) => finished,
                None => match inline.pop_front() {
                    Some(packet) => {
                        run_cpu_packet(step.kernel, DeviceId(0), packet, self.block, self.slots)
                    }
                    None => pool.next(done_rx)?,
                },
            };
            match finished.outcome {
                Ok(partials) => {
                    if let Some(t) = finished.bus {
                        for (bytes, took) in
                            [(t.bytes_in, t.transfer_in), (t.bytes_out, t.transfer_out)]
                        {
                            sched.handle(
                                now(),
                                Event::BusTransferMeasured {
                                    device: finished.device,
                                    bytes,
                                    micros: took.as_micros() as u64,
                                },
                            );
                        }
                    }
                    if (finished.device.0 as usize) < threads {
                        counts.cpu_busy += finished.elapsed;
                    }
                    pending.insert((finished.device, finished.packet.id.0), partials);
                    sched.handle(
                        now(),
                        Event::PacketFinished {
                            device: finished.device,
                            packet: finished.packet.id,
                            compute_us: finished.compute_us,
                            digest: None,
                        },
                    );
                }
                Err(Failure::Device(error)) => {
                    tracing::warn!("{error}; its packets go to the other devices");
                    pending.retain(|(d, _), _| *d != finished.device);
                    sched.handle(
                        now(),
                        Event::DeviceLost {
                            device: finished.device,
                        },
                    );
                    last_device_error = Some(error);
                }
                Err(failure) => return Err(failure.into_error(kernel_name, &finished.packet)),
            }
        }
        if sched.is_done() {
            Ok(())
        } else if let Some(error) = last_device_error {
            Err(RunError::OpenCl(Box::new(error)))
        } else {
            Err(RunError::WorkerLost)
        }
    }
}

impl RangeRun<'_> {
    /// The step as one contiguous range per CPU thread (see [`STATIC_STEP`]): range 0 on
    /// this thread, range `t` on worker `t`; every range runs, then the step is done.
    fn run_static(
        &self,
        pool: &mut Pool,
        done_tx: &mpsc::Sender<Finished>,
        done_rx: &mpsc::Receiver<Finished>,
        counts: &mut StepCounts,
        done_items: &mut u64,
        total_items: u64,
    ) -> Result<(), RunError> {
        let step = self.step;
        let first = self.range.start;
        let items = self.range.end - first;
        let threads = (step.threads as u64).min(items).max(1);
        let packet = |t: u64| Packet {
            id: scheduler::PacketId(t),
            start: first + items * t / threads,
            end: first + items * (t + 1) / threads,
        };
        // Range 0 runs on this thread, unless kernels run only in isolated workers.
        let here = u64::from(pool.runs_inline());
        for t in here..threads {
            pool.dispatch(self, DeviceId(t as u32), packet(t), done_tx)?;
        }
        let mut results = Vec::with_capacity(threads as usize);
        if here == 1 {
            results.push(run_cpu_packet(
                step.kernel,
                DeviceId(0),
                packet(0),
                self.block,
                self.slots,
            ));
        }
        for _ in here..threads {
            results.push(pool.next(done_rx)?);
        }
        // The first failure by item order is the one reported.
        results.sort_by_key(|f| f.packet.start);
        for finished in results {
            match finished.outcome {
                Ok(_) => {
                    counts.cpu += 1;
                    counts.cpu_items += finished.packet.items();
                    counts.cpu_busy += finished.elapsed;
                    counts.items += finished.packet.items();
                    *done_items += finished.packet.items();
                }
                Err(failure) => {
                    return Err(failure.into_error(&step.instance.layout.kernel, &finished.packet))
                }
            }
        }
        if let Some(progress) = &step.options.progress {
            progress(*done_items, total_items);
        }
        Ok(())
    }
}

/// Runs the packets sent to one OpenCL device during a step; it stops after a failure
/// (the device leaves the step).
fn opencl_worker(
    mut kernel: PreparedKernel,
    device: DeviceId,
    block: &[u64],
    slots: &PacketSlots,
    packets: mpsc::Receiver<Packet>,
    done: mpsc::Sender<Finished>,
) {
    let bus = !kernel.device().info().host_unified_memory;
    for packet in packets {
        let finished = serve_packet(device, packet, block, slots, |start, end, block| {
            // SAFETY: as for the CPU workers: buffers checked against the manifest,
            // packets disjoint, sum buffers private to this packet.
            match unsafe { kernel.run_packet(start, end, block) } {
                Ok(()) => Ok(bus.then(|| kernel.last_timing())),
                Err(DeviceError::Panicked { reason, .. }) => Err(Failure::Panic(reason)),
                Err(e) => Err(Failure::Device(e)),
            }
        });
        let failed = finished.outcome.is_err();
        if done.send(finished).is_err() || failed {
            return;
        }
    }
}
