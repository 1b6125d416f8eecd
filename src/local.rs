//! Running a job on this machine's cores: the embedded local node.
//!
//! The scheduler core decides packet sizes and which worker thread runs what; this module
//! is the thin shell that executes its decisions with real threads and a real clock.
//!
//! A packet runs on a *device*: one of the CPU worker threads (the JIT-compiled kernel)
//! or an OpenCL device (the kernel lowered to OpenCL C, see `opencl-backend`), each
//! driven by its own thread. [`LocalOptions::device`] picks which kinds take part; with
//! [`DeviceChoice::Auto`] the scheduler splits packets between them by measured speed.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ir_packager::{Access, Arg, ArgKind, KernelSpec, Package, ScalarType, ScalarValue, Shape};
use node_jit::{CodeOrigin, CompiledKernel, Engine, Tuning};
use opencl_backend::{DeviceError, LowerError, OpenCl, PacketTiming, PreparedKernel};
use scheduler::{Decision, DeviceId, DeviceSpec, Event, JobSpec, Link, Packet, Scheduler};

use crate::buffer::Buffer;

/// One argument's value for a job, in manifest order.
#[derive(Debug, Clone)]
pub enum ArgValue {
    /// A scalar.
    Scalar(ScalarValue),
    /// A buffer: inputs hold data; `out`/`inout`/`sum` buffers receive the results.
    Buffer(Buffer),
}

/// A job that cannot run or did not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The kernel could not be compiled or loaded.
    #[error(transparent)]
    Jit(#[from] node_jit::JitError),
    /// Wrong number of arguments.
    #[error("kernel `{kernel}` takes {expected} arguments ({signature}) but {given} were given")]
    ArgCount {
        /// The kernel.
        kernel: String,
        /// Its signature.
        signature: String,
        /// Arguments it takes.
        expected: usize,
        /// Arguments given.
        given: usize,
    },
    /// A scalar where a buffer belongs, or the reverse, or a scalar of another type.
    #[error("argument `{arg}` of kernel `{kernel}` is `{spec}`, but {given} was given")]
    ArgType {
        /// The kernel.
        kernel: String,
        /// The argument.
        arg: String,
        /// Its manifest spelling.
        spec: String,
        /// What was given.
        given: String,
    },
    /// A buffer of the wrong size.
    #[error(
        "buffer `{arg}` (`{spec}`) must be {expected} for {items} items, but it has {actual} bytes"
    )]
    BufferSize {
        /// The argument.
        arg: String,
        /// Its manifest spelling.
        spec: String,
        /// Items of the job.
        items: u64,
        /// What it must be, in words.
        expected: String,
        /// Its length.
        actual: usize,
    },
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
    /// A worker thread died.
    #[error("a worker thread stopped unexpectedly")]
    WorkerLost,
    /// Worker threads could not be started.
    #[error("cannot start {requested} worker threads (only {started} started): {source}; ask for fewer with --threads")]
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
        /// What needs the memory, e.g. "buffer `y` (`y: out f32[1]`) for 1000 items".
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

pub use scheduler::DeviceChoice;

/// Settings of a local run. Every setter documents its default.
#[derive(Default)]
pub struct LocalOptions {
    threads: Option<usize>,
    tuning: Tuning,
    progress: Option<Box<ProgressFn>>,
    device: DeviceChoice,
    opencl: Option<Arc<OpenCl>>,
    packet_items: Option<u64>,
}

/// Called with `(items done, items total)` as packets complete.
pub type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

impl LocalOptions {
    /// Worker threads. Default: every core (`std::thread::available_parallelism`).
    pub fn threads(mut self, threads: usize) -> LocalOptions {
        self.threads = Some(threads.max(1));
        self
    }

    /// Code-generation tuning. Default: LLVM's own choices.
    pub fn tuning(mut self, tuning: Tuning) -> LocalOptions {
        self.tuning = tuning;
        self
    }

    /// Items per packet (the last packet may be smaller), as `offload tune` measures.
    /// Default: chosen by the scheduler (large first, smaller toward the end).
    pub fn packet_items(mut self, items: u64) -> LocalOptions {
        self.packet_items = Some(items.max(1));
        self
    }

    /// Which devices run packets. Default: [`DeviceChoice::Cpu`].
    pub fn device(mut self, device: DeviceChoice) -> LocalOptions {
        self.device = device;
        self
    }

    /// The OpenCL devices to use (opened once, shared between runs so that built
    /// programs stay cached). Default: discovered on each run that needs them.
    pub fn opencl(mut self, opencl: Arc<OpenCl>) -> LocalOptions {
        self.opencl = Some(opencl);
        self
    }

    /// A progress callback. Default: none.
    pub fn progress(mut self, progress: impl Fn(u64, u64) + Send + Sync + 'static) -> LocalOptions {
        self.progress = Some(Box::new(progress));
        self
    }
}

/// What a finished local run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Items run.
    pub items: u64,
    /// Packets committed.
    pub packets: u64,
    /// Worker threads used.
    pub threads: usize,
    /// Where the kernel's code came from.
    pub code_origin: CodeOrigin,
    /// Time to compile or load the kernel.
    pub compile_time: Duration,
    /// Time running packets.
    pub run_time: Duration,
    /// The compiled kernel's cache key.
    pub cache_key: String,
    /// Packets committed from CPU worker threads.
    pub cpu_packets: u64,
    /// Packets committed from OpenCL devices.
    pub opencl_packets: u64,
    /// The OpenCL devices that took part.
    pub opencl_devices: Vec<String>,
    /// Why OpenCL did not take part in an `Auto` run, if it did not.
    pub opencl_note: Option<String>,
}

/// The bytes buffer `arg` must hold for a job of `items` items, or `None` for whole
/// buffers (any whole number of elements).
pub fn required_bytes(arg: &Arg, items: u64) -> Option<u64> {
    match arg.kind {
        ArgKind::Buffer {
            elem,
            shape: Shape::PerItem(k),
            ..
        } => items
            .checked_mul(k)
            .and_then(|n| n.checked_mul(elem.size() as u64)),
        ArgKind::Buffer {
            elem,
            shape: Shape::Fixed(n),
            ..
        } => n.checked_mul(elem.size() as u64),
        _ => None,
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

/// Memory a run takes beyond the job's buffers: a private, zeroed copy of every `sum`
/// buffer per device at work, plus the totals.
pub fn sum_workspace(spec: &KernelSpec, devices: usize) -> Vec<(String, u64)> {
    sum_slots(spec)
        .iter()
        .map(|&(slot, _, len)| {
            (
                format!(
                    "the per-device copies of sum buffer `{}` ({} devices)",
                    spec.args[slot].name, devices
                ),
                (len as u64).saturating_mul(devices as u64 + 1),
            )
        })
        .collect()
}

/// A zeroed buffer of `len` bytes for `what`, or an error instead of an abort.
pub(crate) fn zeroed_buffer(len: usize, what: impl FnOnce() -> String) -> Result<Buffer, RunError> {
    Buffer::try_zeroed(len).ok_or_else(|| RunError::OutOfMemory {
        what: what(),
        bytes: len as u64,
    })
}

/// Checks `args` against the kernel's manifest before anything runs.
pub fn check_args(spec: &KernelSpec, items: u64, args: &[ArgValue]) -> Result<(), RunError> {
    if args.len() != spec.args.len() {
        return Err(RunError::ArgCount {
            kernel: spec.name.clone(),
            signature: spec.signature(),
            expected: spec.args.len(),
            given: args.len(),
        });
    }
    for (arg, value) in spec.args.iter().zip(args) {
        let type_error = |given: String| RunError::ArgType {
            kernel: spec.name.clone(),
            arg: arg.name.clone(),
            spec: arg.to_string(),
            given,
        };
        match (arg.kind, value) {
            (ArgKind::Scalar(ty), ArgValue::Scalar(v)) if v.scalar_type() == ty => {}
            (ArgKind::Scalar(_), ArgValue::Scalar(v)) => {
                return Err(type_error(format!("a {} scalar", v.scalar_type())))
            }
            (ArgKind::Scalar(_), ArgValue::Buffer(_)) => return Err(type_error("a buffer".into())),
            (ArgKind::Buffer { .. }, ArgValue::Scalar(v)) => {
                return Err(type_error(format!("the scalar {v}")))
            }
            (ArgKind::Buffer { elem, .. }, ArgValue::Buffer(b)) => {
                check_buffer_size(arg, elem, items, b.len())?
            }
        }
    }
    Ok(())
}

fn check_buffer_size(
    arg: &Arg,
    elem: ScalarType,
    items: u64,
    actual: usize,
) -> Result<(), RunError> {
    let size_error = |expected: String| RunError::BufferSize {
        arg: arg.name.clone(),
        spec: arg.to_string(),
        items,
        expected,
        actual,
    };
    let whole = matches!(
        arg.kind,
        ArgKind::Buffer {
            shape: Shape::Whole,
            ..
        }
    );
    if whole {
        return if actual % elem.size() == 0 {
            Ok(())
        } else {
            Err(size_error(format!(
                "a whole number of {}-byte {} elements",
                elem.size(),
                elem
            )))
        };
    }
    match required_bytes(arg, items) {
        Some(bytes) if bytes == actual as u64 => Ok(()),
        Some(bytes) => Err(size_error(format!("{bytes} bytes"))),
        None => Err(size_error("more bytes than a 64-bit count holds".into())),
    }
}

/// The fewest packets each local thread gets when no tuning profile sets a packet size.
const PACKETS_PER_THREAD: u64 = 32;

struct Finished {
    device: DeviceId,
    packet: Packet,
    compute_us: u64,
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
    /// An OpenCL device failed: it leaves the job and its packets go elsewhere.
    Device(DeviceError),
}

/// The OpenCL side of a run: devices prepared for this job, or why there are none.
struct OpenClPlan {
    kernels: Vec<PreparedKernel>,
    note: Option<String>,
}

/// Opens (if needed), lowers and prepares the OpenCL devices for `choice`.
fn plan_opencl(
    package: &Package,
    spec: &KernelSpec,
    args: &mut [ArgValue],
    options: &LocalOptions,
) -> Result<OpenClPlan, RunError> {
    if options.device == DeviceChoice::Cpu {
        return Ok(OpenClPlan {
            kernels: Vec::new(),
            note: None,
        });
    }
    let strict = options.device == DeviceChoice::OpenCl;
    let opencl = options
        .opencl
        .clone()
        .unwrap_or_else(|| Arc::new(OpenCl::new()));
    if opencl.devices().is_empty() {
        let note = opencl
            .note()
            .unwrap_or("no OpenCL device found")
            .to_string();
        return if strict {
            Err(RunError::NoOpenClDevice { note })
        } else {
            Ok(OpenClPlan {
                kernels: Vec::new(),
                note: Some(note),
            })
        };
    }
    let lowered = match opencl.lower(package, &spec.name) {
        Ok(l) => l,
        Err(e) if !strict => {
            return Ok(OpenClPlan {
                kernels: Vec::new(),
                note: Some(e.to_string()),
            })
        }
        Err(e) => return Err(Box::new(e).into()),
    };
    let (block, lens): (Vec<u64>, Vec<usize>) = args
        .iter_mut()
        .map(|a| match a {
            ArgValue::Scalar(v) => (v.to_bits(), 0),
            ArgValue::Buffer(b) => (b.address(), b.len()),
        })
        .unzip();
    let mut kernels = Vec::new();
    let mut notes = Vec::new();
    for device in opencl.devices() {
        // SAFETY: `check_args` verified every buffer; they outlive the call.
        match unsafe { opencl.prepare(device, package, Arc::clone(&lowered), &block, &lens) } {
            Ok(k) => kernels.push(k),
            Err(e) if !strict => notes.push(e.to_string()),
            Err(e) => return Err(Box::new(e).into()),
        }
    }
    Ok(OpenClPlan {
        kernels,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}

/// Runs `kernel` of `package` over items `0..items` on this machine's cores. Buffers in
/// `args` are checked against the manifest first; on success `out`, `inout` and `sum`
/// buffers hold the results.
pub fn run_local(
    engine: &Engine,
    package: &Package,
    kernel: &str,
    items: u64,
    args: &mut [ArgValue],
    options: &LocalOptions,
) -> Result<RunReport, RunError> {
    let (spec, compiled) = checked_and_compiled(engine, package, kernel, items, args, options)?;
    let plan = plan_opencl(package, &spec, args, options)?;
    let opencl_devices: Vec<String> = plan
        .kernels
        .iter()
        .map(|k| format!("{} [{}]", k.device().info().name, k.route()))
        .collect();
    let threads = if options.device == DeviceChoice::OpenCl {
        0
    } else {
        options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, items.max(1) as usize)
    };
    check_memory(&sum_workspace(&spec, threads + plan.kernels.len()))?;
    let started = Instant::now();
    let counts = if items == 0 {
        Counts::default()
    } else {
        execute(
            &compiled.kernel,
            plan.kernels,
            &spec,
            items,
            args,
            threads,
            options,
        )?
    };
    Ok(RunReport {
        items,
        packets: counts.cpu + counts.opencl,
        threads,
        code_origin: compiled.origin,
        compile_time: compiled.elapsed,
        run_time: started.elapsed(),
        cache_key: compiled.kernel.cache_key().to_string(),
        cpu_packets: counts.cpu,
        opencl_packets: counts.opencl,
        opencl_devices,
        opencl_note: plan.note,
    })
}

/// The kernel's manifest entry, after checking `args` against it, and its code.
fn checked_and_compiled(
    engine: &Engine,
    package: &Package,
    kernel: &str,
    items: u64,
    args: &[ArgValue],
    options: &LocalOptions,
) -> Result<(KernelSpec, node_jit::CompileReport), RunError> {
    let spec = package
        .manifest()
        .kernel(kernel)
        .ok_or_else(|| node_jit::JitError::NoSuchKernel {
            kernel: kernel.to_string(),
            available: package.manifest().kernel_names(),
        })?
        .clone();
    check_args(&spec, items, args)?;
    let compiled = engine.compile_tuned(package, kernel, &options.tuning)?;
    Ok((spec, compiled))
}

/// Runs only the items `ranges` of a job of `items` items whose buffers in `args` hold the
/// results of the other items already (a cluster job finished on this machine after its
/// nodes were lost): the kernel writes these items' `out`/`inout` slices, and their `sum`
/// totals are *added* to the sum buffers. CPU threads only.
pub fn run_ranges_local(
    engine: &Engine,
    package: &Package,
    kernel: &str,
    items: u64,
    ranges: &[std::ops::Range<u64>],
    args: &mut [ArgValue],
    options: &LocalOptions,
) -> Result<RunReport, RunError> {
    let (spec, compiled) = checked_and_compiled(engine, package, kernel, items, args, options)?;
    let left: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, left.max(1) as usize);
    check_memory(&sum_workspace(&spec, threads))?;
    let sums = sum_slots(&spec);
    let block: Vec<u64> = args
        .iter_mut()
        .map(|a| match a {
            ArgValue::Scalar(v) => v.to_bits(),
            ArgValue::Buffer(b) => b.address(),
        })
        .collect();
    let started = Instant::now();
    let mut packets = 0;
    let mut totals_per_range = Vec::new();
    for range in ranges.iter().filter(|r| r.end > r.start && r.end <= items) {
        let job = BlockJob {
            kernel: &compiled.kernel,
            opencl: Vec::new(),
            name: &spec.name,
            first: range.start,
            items: range.end - range.start,
            block: block.clone(),
            sums: &sums,
            threads,
            packet_items: options.packet_items,
            progress: options.progress.as_deref(),
        };
        // SAFETY: `check_args` verified every buffer for the whole job of `items` items,
        // and these ranges lie inside it; the buffers live in `args` until we return.
        let (counts, totals) = unsafe { job.run() }?;
        packets += counts.cpu;
        totals_per_range.push(totals);
    }
    for totals in totals_per_range {
        for (&(slot, elem, _), total) in sums.iter().zip(&totals) {
            if let ArgValue::Buffer(buffer) = &mut args[slot] {
                buffer.add_assign(total, elem);
            }
        }
    }
    Ok(RunReport {
        items: left,
        packets,
        threads,
        code_origin: compiled.origin,
        compile_time: compiled.elapsed,
        run_time: started.elapsed(),
        cache_key: compiled.kernel.cache_key().to_string(),
        cpu_packets: packets,
        opencl_packets: 0,
        opencl_devices: Vec::new(),
        opencl_note: None,
    })
}

/// Sum-buffer positions and element types of a kernel's arguments.
pub(crate) fn sum_slots(spec: &KernelSpec) -> Vec<SumSlot> {
    spec.args
        .iter()
        .enumerate()
        .filter_map(|(slot, arg)| match arg.kind {
            ArgKind::Buffer {
                access: Access::Sum,
                elem,
                shape: Shape::Fixed(n),
            } => Some((slot, elem, n as usize * elem.size())),
            _ => None,
        })
        .collect()
}

/// Committed packets per device kind.
#[derive(Default)]
pub(crate) struct Counts {
    pub cpu: u64,
    pub opencl: u64,
}

fn execute(
    kernel: &CompiledKernel,
    opencl: Vec<PreparedKernel>,
    spec: &KernelSpec,
    items: u64,
    args: &mut [ArgValue],
    threads: usize,
    options: &LocalOptions,
) -> Result<Counts, RunError> {
    let block: Vec<u64> = args
        .iter_mut()
        .map(|a| match a {
            ArgValue::Scalar(v) => v.to_bits(),
            ArgValue::Buffer(b) => b.address(),
        })
        .collect();
    let sums = sum_slots(spec);
    let job = BlockJob {
        kernel,
        opencl,
        name: &spec.name,
        first: 0,
        items,
        block,
        sums: &sums,
        threads,
        packet_items: options.packet_items,
        progress: options.progress.as_deref(),
    };
    // SAFETY: `run_local` checked every buffer against the manifest (`check_args`), and
    // the buffers live in `args` until this call returns.
    let (counts, totals) = unsafe { job.run() }?;
    for ((slot, _, _), total) in sums.iter().zip(totals) {
        args[*slot] = ArgValue::Buffer(total);
    }
    Ok(counts)
}

/// A job whose arguments are already an argument block (scalar bits and buffer
/// addresses), ready to run on the local CPU threads and OpenCL devices. Shared by
/// [`run_local`] (owned buffers) and the Rust API's in-place launches (caller's slices).
pub(crate) struct BlockJob<'a> {
    pub kernel: &'a CompiledKernel,
    pub opencl: Vec<PreparedKernel>,
    pub name: &'a str,
    /// The first item: the job runs items `first..first + items`.
    pub first: u64,
    pub items: u64,
    pub block: Vec<u64>,
    pub sums: &'a [SumSlot],
    pub threads: usize,
    pub packet_items: Option<u64>,
    pub progress: Option<&'a ProgressFn>,
}

/// A `sum` argument: its slot, element type and length in bytes.
pub(crate) type SumSlot = (usize, ScalarType, usize);

impl BlockJob<'_> {
    /// Runs every packet and returns the committed packets per device kind and the
    /// totals of the sum buffers (the block's sum slots are replaced per packet).
    ///
    /// # Safety
    /// Every buffer address in the block must be valid for the kernel's accesses over
    /// items `0..items` (what `check_args` establishes), for the whole call.
    pub(crate) unsafe fn run(self) -> Result<(Counts, Vec<Buffer>), RunError> {
        let BlockJob {
            kernel,
            opencl,
            name,
            first,
            items,
            block,
            sums,
            threads,
            packet_items,
            progress,
        } = self;
        // The job's buffers are shared by the workers: packets write disjoint slices of
        // split buffers and private copies of sum buffers.
        // Bytes a packet moves per item over a GPU's own bus (split slices; `out` slices
        // go up too, so unwritten elements keep their value).
        let (bytes_in, bytes_out) = kernel.spec().args.iter().fold((0, 0), |(i, o), a| {
            match (a.kind, required_bytes(a, 1)) {
                (
                    ArgKind::Buffer {
                        access,
                        shape: Shape::PerItem(_),
                        ..
                    },
                    Some(b),
                ) => (i + b, if access == Access::In { o } else { o + b }),
                _ => (i, o),
            }
        });
        let mut job = JobSpec::new(items)
            .speculation(false)
            .bytes_in_per_item(bytes_in)
            .bytes_out_per_item(bytes_out);
        let mut cpu_cap = None;
        if let Some(size) = packet_items {
            job = job.min_packet(size).max_packet(size);
        } else {
            // Item costs vary (a Mandelbrot row inside the set costs 100x one outside), and
            // a packet here costs microseconds, so at least PACKETS_PER_THREAD packets per
            // thread keep the threads finishing together whatever the calibration saw.
            // Counting the OpenCL devices too: with `--device opencl` there are no threads.
            // A GPU behind its own bus is not capped: it needs packets of millions of
            // items, and the scheduler sizes them from its measured rate.
            let devices = (threads + opencl.len()).max(1) as u64;
            cpu_cap = Some(items.div_ceil(devices * PACKETS_PER_THREAD).max(1));
        }
        let capped = |spec: DeviceSpec| match cpu_cap {
            Some(cap) => spec.max_packet(cap),
            None => spec,
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
        for (k, prepared) in opencl.iter().enumerate() {
            sched.handle(
                now(),
                Event::DeviceJoined {
                    device: DeviceId((threads + k) as u32),
                    spec: gpu_spec(prepared, &capped),
                },
            );
        }
        let mut last_device_error: Option<DeviceError> = None;
        let (done_tx, done_rx) = mpsc::channel::<Finished>();
        let mut totals: Vec<Buffer> = sums
            .iter()
            .map(|&(_, _, len)| zeroed_buffer(len, || "the totals of the sum buffers".into()))
            .collect::<Result<_, _>>()?;
        let mut pending: HashMap<(DeviceId, u64), Vec<Buffer>> = HashMap::new();
        let mut counts = Counts::default();
        let result = std::thread::scope(|scope| -> Result<(), RunError> {
            let mut workers = Vec::with_capacity(threads);
            for w in 0..threads {
                let (tx, rx) = mpsc::channel::<Packet>();
                let done = done_tx.clone();
                let block = block.clone();
                std::thread::Builder::new()
                    .name(format!("offload-cpu{w}"))
                    .spawn_scoped(scope, move || {
                        worker(kernel, DeviceId(w as u32), block, sums, rx, done)
                    })
                    .map_err(|source| RunError::Threads {
                        requested: threads,
                        started: w,
                        source,
                    })?;
                workers.push(tx);
            }
            for (k, prepared) in opencl.into_iter().enumerate() {
                let (tx, rx) = mpsc::channel::<Packet>();
                let done = done_tx.clone();
                let block = block.clone();
                let device = DeviceId((threads + k) as u32);
                std::thread::Builder::new()
                    .name(format!("offload-opencl{k}"))
                    .spawn_scoped(scope, move || {
                        opencl_worker(prepared, device, block, sums, rx, done)
                    })
                    .map_err(|source| RunError::Threads {
                        requested: threads + k + 1,
                        started: threads + k,
                        source,
                    })?;
                workers.push(tx);
            }
            drop(done_tx);
            loop {
                while let Some(decision) = sched.poll(now()) {
                    match decision {
                        // The scheduler counts from 0; the kernel sees global items.
                        Decision::Run { device, packet } => workers[device.0 as usize]
                            .send(Packet {
                                start: first + packet.start,
                                end: first + packet.end,
                                ..packet
                            })
                            .map_err(|_| RunError::WorkerLost)?,
                        Decision::Commit { device, packet } => {
                            if (device.0 as usize) < threads {
                                counts.cpu += 1;
                            } else {
                                counts.opencl += 1;
                            }
                            if let Some(partials) = pending.remove(&(device, packet.id.0)) {
                                for (total, (partial, &(_, elem, _))) in
                                    totals.iter_mut().zip(partials.iter().zip(sums))
                                {
                                    total.add_assign(partial, elem);
                                }
                            }
                            if let Some(progress) = progress {
                                progress(sched.progress().items_committed, items);
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
                let finished = done_rx.recv().map_err(|_| RunError::WorkerLost)?;
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
                    Err(Failure::Panic(reason)) => {
                        return Err(RunError::KernelPanicked {
                            kernel: name.to_string(),
                            start: finished.packet.start,
                            end: finished.packet.end,
                            reason,
                        });
                    }
                    Err(Failure::Memory(bytes)) => {
                        return Err(RunError::OutOfMemory {
                            what: format!(
                                "the sum buffers of items {}..{}",
                                finished.packet.start, finished.packet.end
                            ),
                            bytes,
                        });
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
                }
            }
            // Dropping the senders ends the workers.
            drop(workers);
            if sched.is_done() {
                Ok(())
            } else if let Some(error) = last_device_error.take() {
                Err(RunError::OpenCl(Box::new(error)))
            } else {
                Err(RunError::WorkerLost)
            }
        });
        result?;
        Ok((counts, totals))
    }
}

/// The scheduler's view of a prepared GPU device: a discrete GPU (its own memory) has a
/// PCI Express bus whose transfers are timed apart from its kernel; a device computing in
/// host memory (PoCL) has none and keeps the CPU threads' packet bound.
fn gpu_spec(prepared: &PreparedKernel, capped: &dyn Fn(DeviceSpec) -> DeviceSpec) -> DeviceSpec {
    let info = prepared.device().info();
    let spec = DeviceSpec::local_opencl(format!("{} [{}]", info.name, prepared.route()));
    if info.host_unified_memory {
        capped(spec)
    } else {
        spec.bus(Some(Link::pcie()))
    }
}

/// Runs the packets sent to one OpenCL device; it stops after a failure (the device
/// leaves the job).
fn opencl_worker(
    mut kernel: PreparedKernel,
    device: DeviceId,
    block: Vec<u64>,
    sums: &[SumSlot],
    packets: mpsc::Receiver<Packet>,
    done: mpsc::Sender<Finished>,
) {
    let bus = !kernel.device().info().host_unified_memory;
    serve_packets(device, block, sums, packets, done, |start, end, block| {
        // SAFETY: as for the CPU workers: buffers checked against the manifest, packets
        // disjoint, sum buffers private to this packet.
        match unsafe { kernel.run_packet(start, end, block) } {
            Ok(()) => Ok(bus.then(|| kernel.last_timing())),
            Err(DeviceError::Panicked { reason, .. }) => Err(Failure::Panic(reason)),
            Err(e) => Err(Failure::Device(e)),
        }
    });
}

/// Runs the packets sent to one CPU worker thread.
fn worker(
    kernel: &CompiledKernel,
    device: DeviceId,
    block: Vec<u64>,
    sums: &[SumSlot],
    packets: mpsc::Receiver<Packet>,
    done: mpsc::Sender<Finished>,
) {
    serve_packets(device, block, sums, packets, done, |start, end, block| {
        // SAFETY: `check_args` verified every buffer against the manifest for the whole
        // job, packets of one job cover disjoint item ranges, and sum buffers are private
        // to this packet.
        unsafe { kernel.run_packet(start, end, block) }
            .map(|()| None)
            .map_err(|panic| Failure::Panic(panic.reason))
    });
}

/// The loop every device thread runs: give each packet fresh zeroed sum buffers, run it,
/// time it and report it (a device with its own bus reports its kernel's time and its
/// transfers apart). Ends when the coordinator hangs up or after a failure.
fn serve_packets(
    device: DeviceId,
    mut block: Vec<u64>,
    sums: &[SumSlot],
    packets: mpsc::Receiver<Packet>,
    done: mpsc::Sender<Finished>,
    mut run: impl FnMut(u64, u64, &[u64]) -> Result<Option<PacketTiming>, Failure>,
) {
    for packet in packets {
        let partials: Option<Vec<Buffer>> = sums
            .iter()
            .map(|&(_, _, len)| Buffer::try_zeroed(len))
            .collect();
        let Some(mut partials) = partials else {
            let bytes = sums.iter().map(|&(_, _, len)| len as u64).sum();
            let _ = done.send(Finished {
                device,
                packet,
                compute_us: 0,
                bus: None,
                outcome: Err(Failure::Memory(bytes)),
            });
            return;
        };
        for (partial, &(slot, _, _)) in partials.iter_mut().zip(sums) {
            block[slot] = partial.address();
        }
        let started = Instant::now();
        let outcome = run(packet.start, packet.end, &block);
        let mut compute_us = started.elapsed().as_micros() as u64;
        let bus = outcome.as_ref().ok().copied().flatten();
        if let Some(t) = bus {
            compute_us = t.kernel.as_micros() as u64;
        }
        let failed = outcome.is_err();
        let finished = Finished {
            device,
            packet,
            compute_us,
            bus,
            outcome: outcome.map(|_| partials),
        };
        if done.send(finished).is_err() || failed {
            return;
        }
    }
}
