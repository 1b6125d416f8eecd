//! The kernel worker process: runs packets for a node, so that a kernel that crashes
//! (an out-of-bounds write is a SIGSEGV) or hangs takes down only this process.
//!
//! The node starts it as `offload __worker` (see [`crate::node::NodeConfig::new`])
//! and talks to it over stdin/stdout with [`ToWorker`]/[`FromWorker`] frames. The
//! worker lowers its own priority first when asked to (nice 19: the machine's owner
//! comes first).
//!
//! A worker runs packets either with the CPU JIT ([`serve`]) or on one OpenCL device
//! ([`serve_opencl`], `offload __worker --opencl-device N`): the same frames, the same
//! packet storage (split slices shifted by the packet's start, zeroed `sum` partials),
//! so the node and the client treat both alike. An OpenCL worker lowers and builds the
//! kernel at [`ToWorker::Load`] (a kernel it cannot take fails the load, and the node
//! leaves the device out of the job) and uploads a job's whole buffers to the device
//! once, on the job's first packet.
//!
//! # The sandbox
//!
//! A worker loads kernel code first and confines itself afterwards ([`sandbox::apply`]):
//! compiling runs a linker and reads the code cache, which no sandbox profile allows.
//! So a sandboxed worker serves **one package**: at the first [`ToWorker::Load`] a CPU
//! worker compiles (or loads from the cache) every kernel of that package, then closes
//! every descriptor but its pipes, the report pipe (fd 3) and the memfds its code lives
//! in, and applies the CPU profile; from then on a `Load` of a kernel of that package
//! answers from memory, and a `Load` of another package is refused (the node starts a
//! fresh worker for it). An OpenCL worker serves **one kernel**: PoCL links a kernel's
//! work-group function at its first enqueue by running `ld`, so the OpenCL profile is
//! applied right after the first packet ran (before its answer is sent). A worker that
//! cannot apply its sandbox answers the error and exits: it never serves unconfined,
//! unless started with `--unsandboxed` ([`Confinement::Unsandboxed`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use ir_packager::Package;
use node_jit::{CompiledKernel, Engine};
use opencl_backend::{Device, DeviceError, Lowered, PreparedKernel};

use cluster::protocol::{self, FromWorker, Hash, ToWorker, WireArg, MAX_DATA};

/// Storage aligned for every element type (8 bytes), as kernels need.
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        Aligned {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    fn from_bytes(bytes: &[u8]) -> Aligned {
        let mut a = Aligned::zeroed(bytes.len());
        a.bytes_mut().copy_from_slice(bytes);
        a
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes; u8 needs no alignment.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }

    fn address(&mut self) -> u64 {
        self.words.as_mut_ptr() as u64
    }
}

/// How a worker confines itself, as its node decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confinement {
    /// Apply the sandbox once the kernel code is loaded (see the module doc); `node` is
    /// the node's pid: the worker must die with it.
    Sandboxed {
        /// The node's process id.
        node: u32,
    },
    /// Run kernels without a sandbox (`offload node --unsandboxed`).
    Unsandboxed,
}

/// How a worker runs, from its command line.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Lower this process's priority to nice 19 first.
    pub nice: bool,
    /// Sandboxed or not.
    pub confinement: Confinement,
    /// Faults to inject (test builds only).
    pub faults: crate::fault::Faults,
}

/// The descriptor a node gives its workers for the sandbox's fault reports.
pub const REPORT_FD: i32 = 3;

/// Errors that end the worker (the node restarts it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The pipe to the node broke.
    #[error("worker pipe: {0}")]
    Io(#[from] std::io::Error),
    /// The node sent something that is not a message.
    #[error(transparent)]
    Decode(#[from] protocol::DecodeError),
    /// An answer could not be encoded.
    #[error(transparent)]
    Encode(#[from] protocol::EncodeError),
    /// The JIT could not start.
    #[error(transparent)]
    Jit(#[from] node_jit::JitError),
    /// The OpenCL device this worker was started for does not exist (any more).
    #[error("OpenCL device {index} not found ({found} found){}", note.as_ref().map(|n| format!(": {n}")).unwrap_or_default())]
    NoOpenClDevice {
        /// The index asked for.
        index: usize,
        /// How many devices there are.
        found: usize,
        /// Why there are fewer, if known.
        note: Option<String>,
    },
    /// The OpenCL device could not be opened.
    #[error(transparent)]
    OpenCl(#[from] DeviceError),
}

/// What runs the packets.
/// A node's tuned settings for a kernel of a package (an `offload tune` profile), if
/// it has any: the code generation choices and the optimization level to compile with.
/// The worker gets it from whoever starts it (the CLI reads the profiles), so that a
/// node runs the settings whose rate it advertises.
pub type TuningLookup =
    Box<dyn Fn(&Engine, &Package, &str) -> Option<(node_jit::Tuning, node_jit::OptLevel)>>;

enum Runner {
    /// The CPU JIT: compiled kernels by (package, kernel).
    Jit {
        engine: Engine,
        /// Engines of other optimization levels that tuned kernels asked for.
        tuned_engines: HashMap<node_jit::OptLevel, Engine>,
        tuning: TuningLookup,
        kernels: HashMap<(Hash, String), Arc<CompiledKernel>>,
    },
    /// One OpenCL device: lowered kernels by (package, kernel), and kernels prepared
    /// with their whole buffers on the device by (package, kernel, whole buffers).
    OpenCl {
        device: Arc<Device>,
        lowered: HashMap<(Hash, String), Arc<Lowered>>,
        prepared: HashMap<(Hash, String, Vec<Hash>), PreparedKernel>,
    },
}

struct State {
    runner: Runner,
    buffers: HashMap<Hash, Aligned>,
    confinement: Confinement,
    /// `Some` once the sandbox is applied (or failed to be).
    serves: Option<Serves>,
    /// Kernels of the served package that could not be compiled, and why.
    load_errors: HashMap<String, String>,
    faults: crate::fault::Faults,
}

fn lower_priority() {
    // SAFETY: plain libc call on this process; failure only leaves the priority.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if rc != 0 {
        tracing::warn!(
            "cannot lower the worker's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Prints a panic's message only: std's default hook may walk the stack and open the
/// executable to name it, which the sandbox forbids.
/// Names the process `offload-worker` (`top`, `ps -o comm`): started through
/// `/proc/self/exe`, it would be called `exe`.
fn name_this_process() {
    // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"offload-worker".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
}

fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| eprintln!("offload worker: {info}")));
}

/// Serves one node over stdin/stdout until stdin closes, compiling each kernel with the
/// settings `tuning` finds for it (or the engine's defaults).
pub fn serve(
    engine_config: node_jit::Config,
    options: &WorkerOptions,
    tuning: TuningLookup,
) -> Result<(), WorkerError> {
    quiet_panics();
    name_this_process();
    if options.nice {
        lower_priority();
    }
    let runner = Runner::Jit {
        engine: Engine::new(engine_config)?,
        tuned_engines: HashMap::new(),
        tuning,
        kernels: HashMap::new(),
    };
    serve_with(runner, options)
}

/// Serves one node over stdin/stdout until stdin closes, running packets on OpenCL
/// device `index` (in [`opencl_backend::discover`]'s order, which the node used to
/// number its devices). The node starts it with [`sandbox::OPENCL_WORKER_ENV`] set.
pub fn serve_opencl(index: usize, options: &WorkerOptions) -> Result<(), WorkerError> {
    quiet_panics();
    name_this_process();
    if options.nice {
        lower_priority();
    }
    let found = opencl_backend::discover();
    let Some(info) = found.devices.get(index) else {
        return Err(WorkerError::NoOpenClDevice {
            index,
            found: found.devices.len(),
            note: found.note,
        });
    };
    let runner = Runner::OpenCl {
        device: Arc::new(Device::open(info)?),
        lowered: HashMap::new(),
        prepared: HashMap::new(),
    };
    serve_with(runner, options)
}

fn serve_with(runner: Runner, options: &WorkerOptions) -> Result<(), WorkerError> {
    let mut state = State {
        runner,
        buffers: HashMap::new(),
        confinement: options.confinement,
        serves: None,
        load_errors: HashMap::new(),
        faults: options.faults.clone(),
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut input = stdin.lock();
    let mut output = stdout.lock();
    loop {
        let mut prefix = [0u8; 4];
        match input.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                state.leave();
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let len = protocol::frame_len(prefix, MAX_DATA)?;
        let mut body = vec![0u8; len];
        input.read_exact(&mut body)?;
        let request: ToWorker = protocol::decode(&body, MAX_DATA)?;
        drop(body);
        let reply = state.handle(request);
        output.write_all(&protocol::encode(&reply, MAX_DATA)?)?;
        output.flush()?;
        if state.serves == Some(Serves::Nothing) {
            // The sandbox could not be applied: the error is answered, and this process
            // serves nothing more.
            std::process::exit(1);
        }
    }
}

/// What a sandboxed worker serves, once its sandbox is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Serves {
    /// The kernels of this package (a CPU worker).
    Package(Hash),
    /// This kernel of this package (an OpenCL worker).
    Kernel(Hash, String),
    /// Nothing: applying the sandbox failed.
    Nothing,
}

/// Closes every descriptor but stdin, stdout, stderr, the report pipe and the memfds that
/// hold loaded kernel code, so that a kernel can reach nothing else (the sandbox cannot
/// tell one descriptor from another). Descriptors of other kinds would be ours only by
/// accident (inherited from the node's parent); nothing in the worker owns them. The
/// local engine's workers close theirs the same way (their buffers are memfds too),
/// keeping their report pipe (`keep`), which is not at [`REPORT_FD`].
pub fn close_stray_descriptors(keep: &[i32]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let listed: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in listed {
        if fd <= REPORT_FD || keep.contains(&fd) {
            continue;
        }
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue; // the listing's own descriptor, closed by now
        };
        if target.to_string_lossy().starts_with("/memfd:") {
            continue;
        }
        tracing::debug!(
            "worker: closing descriptor {fd} ({}) before the sandbox",
            target.display()
        );
        // SAFETY: a descriptor nothing in this process owns (see above).
        unsafe { libc::close(fd) };
    }
}

impl State {
    /// Drops the kernels prepared on the device with the whole buffer `hash`.
    fn forget_device_copies(&mut self, hash: &Hash) {
        if let Runner::OpenCl { prepared, .. } = &mut self.runner {
            prepared.retain(|(_, _, wholes), _| !wholes.contains(hash));
        }
    }

    fn handle(&mut self, request: ToWorker) -> FromWorker {
        match request {
            ToWorker::Load { package, kernel } => {
                let started = std::time::Instant::now();
                match self.load_request(&package, &kernel) {
                    Ok(origin) => FromWorker::Loaded {
                        origin: origin.into(),
                        micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    },
                    Err(e) => FromWorker::Error(e),
                }
            }
            ToWorker::Buffer { hash, bytes } => {
                // New bytes under a hash we hold replace the old ones (the node's cache
                // dropped a buffer that did not match its hash): device copies go too.
                if self
                    .buffers
                    .insert(hash, Aligned::from_bytes(&bytes))
                    .is_some()
                {
                    self.forget_device_copies(&hash);
                }
                FromWorker::Ready
            }
            ToWorker::Forget(hash) => {
                self.buffers.remove(&hash);
                self.forget_device_copies(&hash);
                FromWorker::Ready
            }
            ToWorker::Run {
                package,
                kernel,
                items,
                start,
                end,
                args,
                slices,
            } => self.run(package, kernel, items, start..end, &args, slices),
        }
    }

    /// A [`ToWorker::Load`]: loads the kernel, and in a sandboxed CPU worker the rest of
    /// its package, then applies the sandbox; once sandboxed, answers from what is loaded.
    fn load_request(&mut self, package: &[u8], kernel: &str) -> Result<&'static str, String> {
        let package = Package::from_bytes(package).map_err(|e| format!("package refused: {e}"))?;
        let hash = package.hash().0;
        match &self.serves {
            None => {}
            Some(Serves::Package(served)) if *served == hash => {
                if let Some(error) = self.load_errors.get(kernel) {
                    return Err(error.clone());
                }
                return match &self.runner {
                    Runner::Jit { kernels, .. }
                        if kernels.contains_key(&(hash, kernel.to_string())) =>
                    {
                        Ok("memory-cache")
                    }
                    _ => Err(format!("package has no kernel `{kernel}`")),
                };
            }
            Some(Serves::Kernel(served, name)) if *served == hash && name == kernel => {
                return Ok("opencl");
            }
            Some(_) => {
                return Err(format!(
                    "kernel `{kernel}`: this worker is sandboxed for another kernel or package and can load no more code (the node starts a fresh worker for it)"
                ))
            }
        }
        let origin = self.load(&package, kernel)?;
        if let (Confinement::Sandboxed { node }, Runner::Jit { .. }) =
            (self.confinement, &self.runner)
        {
            for other in &package.manifest().kernels {
                if other.name != kernel {
                    if let Err(error) = self.load(&package, &other.name) {
                        tracing::warn!("worker: {error}");
                        self.load_errors.insert(other.name.clone(), error);
                    }
                }
            }
            self.enter_sandbox(node, Serves::Package(hash))?;
        }
        Ok(origin)
    }

    /// Applies the sandbox (the CPU profile for the JIT, the OpenCL profile for a device);
    /// from then on the worker serves only `serves`. On failure the worker serves nothing
    /// (it answers the error and exits).
    fn enter_sandbox(&mut self, node: u32, serves: Serves) -> Result<(), String> {
        close_stray_descriptors(&[]);
        let config = match self.runner {
            Runner::Jit { .. } => sandbox::Config::cpu(),
            Runner::OpenCl { .. } => sandbox::Config::opencl(),
        };
        match sandbox::apply(&config.expected_parent(node).report_fd(REPORT_FD)) {
            Ok(report) => {
                tracing::info!("worker {}: {report}", std::process::id());
                self.serves = Some(serves);
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "worker {}: cannot apply the sandbox: {e}",
                    std::process::id()
                );
                self.serves = Some(Serves::Nothing);
                Err(format!("the worker cannot apply its sandbox: {e}"))
            }
        }
    }

    /// Ends serving: a sandboxed worker exits at once, without running destructors (a
    /// private code cache's removal, the JIT's own clean-up) that make calls the
    /// sandbox forbids.
    fn leave(&self) {
        if matches!(self.serves, Some(Serves::Package(_) | Serves::Kernel(..))) {
            // SAFETY: ends this process; everything it holds dies with it.
            unsafe { libc::_exit(0) };
        }
    }

    /// Loads a kernel; returns where its code came from (`compiled`, `disk-cache`,
    /// `memory-cache`, `opencl`), for the node's metrics.
    fn load(&mut self, package: &Package, kernel: &str) -> Result<&'static str, String> {
        let key = (package.hash().0, kernel.to_string());
        match &mut self.runner {
            Runner::Jit {
                engine,
                tuned_engines,
                tuning,
                kernels,
            } => {
                let report = match tuning(engine, package, kernel) {
                    Some((settings, level)) => {
                        tracing::info!(
                            "kernel `{kernel}`: compiling with its tuned settings ({level:?}, {settings:?})"
                        );
                        let engine = if level == engine.config().level() {
                            &*engine
                        } else {
                            match tuned_engines.entry(level) {
                                std::collections::hash_map::Entry::Occupied(e) => &*e.into_mut(),
                                std::collections::hash_map::Entry::Vacant(e) => {
                                    let other = Engine::new(engine.config().clone().opt_level(level))
                                        .map_err(|e| format!("cannot start a JIT at {level:?}: {e}"))?;
                                    &*e.insert(other)
                                }
                            }
                        };
                        engine.compile_tuned(package, kernel, &settings)
                    }
                    None => engine.compile_tuned(package, kernel, &node_jit::Tuning::default()),
                }
                .map_err(|e| format!("cannot compile kernel `{kernel}`: {e}"))?;
                kernels.insert(key, report.kernel);
                Ok(match report.origin {
                    node_jit::CodeOrigin::Compiled => "compiled",
                    node_jit::CodeOrigin::DiskCache => "disk-cache",
                    node_jit::CodeOrigin::MemoryCache => "memory-cache",
                })
            }
            Runner::OpenCl {
                device, lowered, ..
            } => {
                let lowering = opencl_backend::lower(package, kernel)
                    .map_err(|e| format!("cannot lower kernel `{kernel}` to OpenCL: {e}"))?;
                // Build now, so that a program the device refuses is known at prepare
                // time (the node then leaves this device out of the job).
                device.program(&lowering).map_err(|e| e.to_string())?;
                lowered.insert(key, Arc::new(lowering));
                Ok("opencl")
            }
        }
    }

    fn run(
        &mut self,
        package: Hash,
        kernel: String,
        job_items: u64,
        packet: std::ops::Range<u64>,
        args: &[WireArg],
        slices: Vec<Vec<u8>>,
    ) -> FromWorker {
        let (start, end) = (packet.start, packet.end);
        if let Some(Serves::Kernel(served, name)) = &self.serves {
            if *served != package || *name != kernel {
                // Its first enqueue would make the driver run `ld`: not in the sandbox.
                return FromWorker::Error(format!(
                    "kernel `{kernel}`: this OpenCL worker is sandboxed for kernel `{name}` only"
                ));
            }
        }
        let key = (package, kernel.clone());
        let arity = match &self.runner {
            Runner::Jit { kernels, .. } => kernels.get(&key).map(|k| k.spec().args.len()),
            Runner::OpenCl { lowered, .. } => lowered.get(&key).map(|l| l.spec.args.len()),
        };
        let Some(arity) = arity else {
            return FromWorker::Error(format!("kernel `{kernel}` is not loaded in the worker"));
        };
        if args.len() != arity || end < start || end > job_items {
            return FromWorker::Error(format!(
                "packet {start}..{end} does not match kernel `{kernel}` ({arity} arguments)"
            ));
        }
        let items = end - start;
        let mut slices = slices.into_iter();
        // Private storage for this packet: split slices (inputs copied in, outputs
        // zeroed) and sum partials.
        let mut owned: Vec<(usize, Aligned)> = Vec::new();
        let mut block = vec![0u64; args.len()];
        for (slot, arg) in args.iter().enumerate() {
            match arg {
                WireArg::Scalar(bits) => block[slot] = *bits,
                WireArg::Whole(hash) => match self.buffers.get_mut(hash) {
                    Some(buffer) => block[slot] = buffer.address(),
                    None => {
                        return FromWorker::Error("a whole buffer is missing in the worker".into())
                    }
                },
                WireArg::Split {
                    bytes_per_item,
                    input,
                    halo,
                    ..
                } => {
                    // An input arrives with its halo; an output is the packet's own items.
                    let held = if *input {
                        ir_packager::halo_range(start, end, *halo, job_items)
                    } else {
                        start..end
                    };
                    let Some(len) = (held.end - held.start)
                        .checked_mul(*bytes_per_item)
                        .and_then(|n| usize::try_from(n).ok())
                    else {
                        return FromWorker::Error("packet slice size overflows".into());
                    };
                    let mut storage = if *input {
                        match slices.next() {
                            Some(bytes) if bytes.len() == len => Aligned::from_bytes(&bytes),
                            Some(bytes) => {
                                return FromWorker::Error(format!(
                                    "slice of {} bytes for a packet of {items} items needs {len}",
                                    bytes.len()
                                ))
                            }
                            None => return FromWorker::Error("a packet slice is missing".into()),
                        }
                    } else {
                        Aligned::zeroed(len)
                    };
                    // Kernels index with global item numbers: shift the pointer so that
                    // the first held item's elements land at the slice's beginning.
                    block[slot] = storage
                        .address()
                        .wrapping_sub(held.start.wrapping_mul(*bytes_per_item));
                    owned.push((slot, storage));
                }
                WireArg::Sum(bytes) => {
                    let Ok(len) = usize::try_from(*bytes) else {
                        return FromWorker::Error("sum buffer too large".into());
                    };
                    let mut storage = Aligned::zeroed(len);
                    block[slot] = storage.address();
                    owned.push((slot, storage));
                }
            }
        }
        self.faults.before_kernel();
        let started = Instant::now();
        match &mut self.runner {
            Runner::Jit { kernels, .. } => {
                let Some(compiled) = kernels.get(&key) else {
                    return FromWorker::Error(format!("kernel `{kernel}` is not loaded"));
                };
                // SAFETY: every buffer address covers the packet's global indices: split
                // slices hold exactly `items × bytes_per_item` bytes, shifted by `start`;
                // whole buffers and sum partials are complete. A kernel that writes
                // outside them is exactly what this process exists to contain.
                let outcome = unsafe { compiled.run_packet(start, end, &block) };
                if let Err(panic) = outcome {
                    return FromWorker::Panicked(panic.reason.to_string());
                }
            }
            Runner::OpenCl {
                device,
                lowered,
                prepared,
            } => {
                let wholes: Vec<Hash> = args
                    .iter()
                    .filter_map(|a| match a {
                        WireArg::Whole(hash) => Some(*hash),
                        _ => None,
                    })
                    .collect();
                let prepared_key = (package, kernel.clone(), wholes);
                if !prepared.contains_key(&prepared_key) {
                    let Some(lowering) = lowered.get(&key) else {
                        return FromWorker::Error(format!("kernel `{kernel}` is not loaded"));
                    };
                    // The job's layout (every size) as the node checked it; only whole
                    // buffers are read by `prepare` (uploaded to the device once).
                    let whole_len = |hash: &Hash| self.buffers.get(hash).map(|b| b.len as u64);
                    let layout =
                        match protocol::check_wire(&lowering.spec, job_items, args, &whole_len) {
                            Ok(layout) => layout,
                            Err(e) => return FromWorker::Error(e),
                        };
                    // SAFETY: the whole buffers' addresses in `block` point at
                    // `self.buffers` entries of exactly the layout's sizes, alive for the call.
                    match unsafe { device.prepare(Arc::clone(lowering), &layout, &block) } {
                        Ok(kernel) => {
                            prepared.insert(prepared_key.clone(), kernel);
                        }
                        Err(e) => return FromWorker::Error(e.to_string()),
                    }
                }
                let Some(prepared_kernel) = prepared.get_mut(&prepared_key) else {
                    return FromWorker::Error(format!("kernel `{kernel}` is not prepared"));
                };
                // SAFETY: as for the JIT: split slots point `start × bytes_per_item`
                // before packet-private storage of exactly the packet's slice, sum slots
                // at zeroed packet-private arrays of the manifest length.
                match unsafe { prepared_kernel.run_packet(start, end, &block) } {
                    Ok(()) => {}
                    Err(DeviceError::Panicked { reason, .. }) => {
                        return FromWorker::Panicked(reason.to_string())
                    }
                    Err(e) => {
                        // A device in trouble: forget its prepared state, so that a
                        // later packet starts afresh.
                        prepared.remove(&prepared_key);
                        return FromWorker::Error(e.to_string());
                    }
                }
            }
        }
        let compute_us = started.elapsed().as_micros() as u64;
        if let (Confinement::Sandboxed { node }, Runner::OpenCl { .. }, None) =
            (self.confinement, &self.runner, &self.serves)
        {
            // The driver has built and linked everything this kernel needs now.
            if let Err(e) = self.enter_sandbox(node, Serves::Kernel(package, kernel.clone())) {
                return FromWorker::Error(e);
            }
        }
        let outputs = owned
            .into_iter()
            .filter(|(slot, _)| match &args[*slot] {
                WireArg::Split { output, .. } => *output,
                _ => true,
            })
            .map(|(_, storage)| storage.bytes().to_vec())
            .collect();
        FromWorker::Done {
            compute_us,
            outputs,
        }
    }
}
