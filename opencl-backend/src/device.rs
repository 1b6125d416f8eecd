//! GPU devices: OpenCL through `ocl`'s core API (discovery, program cache, packet
//! execution) and, for NVIDIA GPUs, the PTX routes of `ptx-backend`, as one device each.
//!
//! Everything `ocl` is confined to this module, so the rest of offload sees only
//! [`DeviceInfo`], [`Device`], [`Program`] and [`PreparedKernel`]. A device has one or more
//! [`Route`]s: OpenCL C (every OpenCL device), PTX as an OpenCL program binary (NVIDIA's
//! OpenCL platform), PTX through the CUDA driver (a CUDA device; the same GPU as an
//! NVIDIA OpenCL device when their PCI addresses match, else a device of its own).

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ir_packager::{Access, ArgLayout, KernelSpec, Layout, ScalarType};
use ocl::core::{self, ArgVal, DeviceInfo as Query, DeviceInfoResult as Answer};
pub use ptx_backend::cuda::PacketTiming;
use ptx_backend::cuda::{self as cuda, CudaDevice, CudaDeviceInfo, CudaKernel, PciAddress};
use ptx_backend::Ptx;

use crate::lower::Lowered;

/// How a device receives a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The kernel lowered to OpenCL C, built by the device's OpenCL compiler.
    OpenClC,
    /// PTX from LLVM's NVPTX back end as an OpenCL program binary (NVIDIA's OpenCL).
    PtxOpenCl,
    /// PTX from LLVM's NVPTX back end through the CUDA driver (`cuModuleLoadData`).
    PtxCuda,
}

impl Route {
    /// Every route, in the default order of preference: OpenCL C first, the route
    /// verified on a device (PoCL); the PTX routes are chosen with `OFFLOAD_GPU_ROUTE`
    /// until a GPU run has measured them (`docs/opencl.md`).
    pub const ALL: [Route; 3] = [Route::OpenClC, Route::PtxCuda, Route::PtxOpenCl];

    /// The name `OFFLOAD_GPU_ROUTE` takes: `opencl-c`, `ptx-cuda` or `ptx-opencl`.
    pub fn name(self) -> &'static str {
        match self {
            Route::OpenClC => "opencl-c",
            Route::PtxOpenCl => "ptx-opencl",
            Route::PtxCuda => "ptx-cuda",
        }
    }

    /// The route called `name` ([`Route::name`]).
    pub fn parse(name: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::OpenClC => "opencl-c",
            Route::PtxOpenCl => "ptx (opencl binary)",
            Route::PtxCuda => "ptx (cuda)",
        })
    }
}

/// An OpenCL operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The OpenCL runtime refused a call.
    #[error("OpenCL device `{device}`: {operation} failed: {message}")]
    Runtime {
        /// The device.
        device: String,
        /// What was attempted.
        operation: &'static str,
        /// The runtime's message.
        message: String,
    },
    /// The device's compiler rejected the generated program.
    #[error("OpenCL device `{device}` could not build the program for kernel `{kernel}`:\n{log}")]
    Build {
        /// The device.
        device: String,
        /// The kernel.
        kernel: String,
        /// The compiler's build log.
        log: String,
    },
    /// The kernel uses `double` and the device lacks `cl_khr_fp64`.
    #[error("kernel `{kernel}` uses f64 but OpenCL device `{device}` has no cl_khr_fp64 support")]
    NoFp64 {
        /// The device.
        device: String,
        /// The kernel.
        kernel: String,
    },
    /// The device has no such route (see [`DeviceInfo::routes`]).
    #[error("device `{device}` has no {route} route")]
    NoRoute {
        /// The device.
        device: String,
        /// The route asked for.
        route: Route,
    },
    /// The PTX route refused the kernel.
    #[error(transparent)]
    Ptx(#[from] ptx_backend::PtxError),
    /// The CUDA driver failed.
    #[error(transparent)]
    Cuda(#[from] cuda::CudaError),
    /// The device is big-endian; buffers are little-endian arrays.
    #[error("OpenCL device `{device}` is big-endian; offload buffers are little-endian")]
    BigEndian {
        /// The device.
        device: String,
    },
    /// The kernel called `offload_panic`.
    #[error("kernel `{kernel}` panicked on items {start}..{end}: {reason}")]
    Panicked {
        /// The kernel.
        kernel: String,
        /// First item of the packet.
        start: u64,
        /// End of the packet.
        end: u64,
        /// The panic code passed to `offload_panic`.
        code: i32,
        /// What it means (`ir_packager::panic_reason`).
        reason: &'static str,
    },
    /// Arguments do not match the kernel.
    #[error("kernel `{kernel}`: {detail}")]
    Arguments {
        /// The kernel.
        kernel: String,
        /// What is wrong.
        detail: String,
    },
}

/// `clGetPlatformIDs`' answer when the ICD loader knows no platform.
const CL_PLATFORM_NOT_FOUND_KHR: i32 = -1001;

/// What kind of processor a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A graphics processor.
    Gpu,
    /// A CPU exposed through OpenCL (PoCL, for instance).
    Cpu,
    /// An accelerator card.
    Accelerator,
    /// Anything else.
    Other,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Gpu => "gpu",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Accelerator => "accelerator",
            DeviceKind::Other => "other",
        })
    }
}

/// The facts about one OpenCL device that users and the scheduler need.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Platform name (e.g. "Portable Computing Language").
    pub platform: String,
    /// Device name.
    pub name: String,
    /// Vendor.
    pub vendor: String,
    /// GPU, CPU, ...
    pub kind: DeviceKind,
    /// Compute units.
    pub compute_units: u32,
    /// Global memory in bytes.
    pub global_mem_bytes: u64,
    /// Largest work-group.
    pub max_work_group_size: usize,
    /// Whether `cl_khr_fp64` is supported.
    pub fp64: bool,
    /// OpenCL C version string.
    pub opencl_c: String,
    /// Whether the device stores little-endian.
    pub little_endian: bool,
    /// Whether f32 division and sqrt can be correctly rounded.
    pub correctly_rounded_sqrt: bool,
    /// Whether the device computes in host memory (a CPU device, an integrated GPU):
    /// then its buffers cross no bus of their own.
    pub host_unified_memory: bool,
    /// Compute capability (major, minor) of an NVIDIA device.
    pub compute_capability: Option<(u32, u32)>,
    /// PCI address, where the platform reports one (NVIDIA's does).
    pub pci: Option<PciAddress>,
    /// The routes kernels can take to this device, in the order they are tried.
    pub routes: Vec<Route>,
    /// Why a PTX route is missing, if one is.
    pub routes_note: Option<String>,
    /// The CUDA device that is the same GPU (the PTX (cuda) route).
    pub cuda: Option<CudaDeviceInfo>,
    id: Option<core::DeviceId>,
}

impl DeviceInfo {
    /// The routes as `offload devices` lists them: `opencl-c, ptx (cuda)`.
    pub fn routes_text(&self) -> String {
        self.routes
            .iter()
            .map(Route::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A CUDA device that no OpenCL platform lists: the PTX (cuda) route alone.
    fn cuda_only(info: CudaDeviceInfo) -> DeviceInfo {
        DeviceInfo {
            platform: "CUDA driver".into(),
            name: info.name.clone(),
            vendor: "NVIDIA Corporation".into(),
            kind: DeviceKind::Gpu,
            compute_units: info.multiprocessors,
            global_mem_bytes: info.global_mem_bytes,
            max_work_group_size: cuda::BLOCK as usize,
            fp64: true,
            opencl_c: "no OpenCL (NVIDIA's OpenCL ICD is not registered)".into(),
            little_endian: true,
            correctly_rounded_sqrt: true,
            host_unified_memory: false,
            compute_capability: Some(info.compute_capability),
            pci: Some(info.pci),
            routes: vec![Route::PtxCuda],
            routes_note: Some("no OpenCL C route: no OpenCL platform lists this GPU".into()),
            cuda: Some(info),
            id: None,
        }
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {}): {} compute units, {} MiB global memory, work-groups up to {}, fp64 {}, {}",
            self.name,
            self.kind,
            self.platform,
            self.compute_units,
            self.global_mem_bytes >> 20,
            self.max_work_group_size,
            if self.fp64 { "yes" } else { "no" },
            self.opencl_c
        )
    }
}

/// The OpenCL devices of this machine, or why there are none.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// Every device of every platform.
    pub devices: Vec<DeviceInfo>,
    /// Why no device was found, or a platform that failed, in one line.
    pub note: Option<String>,
}

/// Finds every device of every platform the ICD loader knows, and every CUDA device
/// (an NVIDIA OpenCL device and a CUDA device at the same PCI address are one device
/// with both routes). Never fails: a machine without OpenCL or CUDA gets an empty list
/// and a note saying so.
pub fn discover() -> Discovery {
    // Serialized: PoCL's first device query is not safe to run from two threads at
    // once (one of them gets CL_DEVICE_NOT_FOUND), and a process may discover from
    // several (tests, concurrent launches).
    static DISCOVERING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = DISCOVERING.lock().unwrap_or_else(|e| e.into_inner());
    let mut found = discover_opencl();
    let cuda = cuda::discover();
    let mut unpaired = Vec::new();
    for c in cuda.devices {
        let twin = found.devices.iter_mut().find(|d| {
            d.cuda.is_none()
                && d.routes.contains(&Route::PtxOpenCl)
                && d.pci.is_some_and(|p| p == c.pci)
        });
        match twin {
            Some(d) => {
                d.routes.insert(1, Route::PtxCuda);
                d.routes_note = None;
                d.cuda = Some(c);
            }
            None => unpaired.push(c),
        }
    }
    let cuda_note = cuda.note.map(|n| format!("ptx (cuda) unavailable: {n}"));
    for d in &mut found.devices {
        if d.routes.contains(&Route::PtxOpenCl) && d.cuda.is_none() {
            d.routes_note = cuda_note.clone().or_else(|| {
                Some("ptx (cuda) unavailable: no CUDA device at this PCI address".into())
            });
        }
    }
    let had_opencl = !found.devices.is_empty();
    found
        .devices
        .extend(unpaired.into_iter().map(DeviceInfo::cuda_only));
    if had_opencl || found.devices.is_empty() {
        return found;
    }
    // CUDA devices only: the OpenCL note would say "none found" about a machine that
    // has GPUs.
    found.note = found
        .note
        .map(|n| format!("OpenCL: {n}; CUDA devices found"));
    found
}

/// What `offload devices` says about the CUDA driver when no device has a CUDA route.
pub fn cuda_note() -> Option<String> {
    cuda::discover().note
}

fn discover_opencl() -> Discovery {
    // ocl's `get_platform_ids` waits 10 s for an ICD loader that reports no platform
    // (a workaround for slow ICD start-up); a machine without OpenCL must not wait, so
    // ask once first.
    let mut count: u32 = 0;
    // SAFETY: a count query: no output array, one writable integer.
    let status = unsafe { core::ffi::clGetPlatformIDs(0, std::ptr::null_mut(), &mut count) };
    if status != 0 || count == 0 {
        return Discovery {
            devices: Vec::new(),
            note: Some(if status == CL_PLATFORM_NOT_FOUND_KHR || status == 0 {
                "no OpenCL platform found (the ICD loader lists none)".to_string()
            } else {
                format!("no OpenCL platform found (clGetPlatformIDs returned {status})")
            }),
        };
    }
    let platforms = match core::get_platform_ids() {
        Ok(p) => p,
        Err(e) => {
            return Discovery {
                devices: Vec::new(),
                note: Some(format!(
                    "no OpenCL platform found ({})",
                    ocl_error_gist(&e.to_string())
                )),
            }
        }
    };
    let mut devices = Vec::new();
    let mut notes = Vec::new();
    for platform in platforms {
        let platform_name = core::get_platform_info(platform, core::PlatformInfo::Name)
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "unknown platform".into());
        match core::get_device_ids(platform, Some(core::DeviceType::ALL), None) {
            Ok(ids) => {
                for id in ids {
                    match describe(id, &platform_name) {
                        Ok(info) => devices.push(info),
                        Err(e) => notes.push(format!("{platform_name}: {e}")),
                    }
                }
            }
            Err(e) => notes.push(format!(
                "{platform_name}: no devices ({})",
                ocl_error_gist(&e.to_string())
            )),
        }
    }
    if devices.is_empty() && notes.is_empty() {
        notes.push("OpenCL platforms present but no devices".into());
    }
    Discovery {
        devices,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// The gist of an `ocl` error, whose text is a banner of `#`s followed by lines such
/// as `Error executing function: clGetDeviceIDs` and `Status error code:
/// CL_DEVICE_NOT_FOUND (-1)`: `clGetDeviceIDs: CL_DEVICE_NOT_FOUND (-1)`, or the first
/// line of any other text.
fn ocl_error_gist(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    match (
        field("Error executing function:"),
        field("Status error code:"),
    ) {
        (Some(function), Some(status)) => format!("{function}: {status}"),
        _ => lines
            .first()
            .copied()
            .unwrap_or("unknown error")
            .to_string(),
    }
}

fn describe(id: core::DeviceId, platform: &str) -> Result<DeviceInfo, String> {
    let ask = |q: Query| core::get_device_info(id, q).map_err(|e| ocl_error_gist(&e.to_string()));
    let name = ask(Query::Name)?.to_string();
    let kind = match ask(Query::Type)? {
        Answer::Type(t) if t.contains(core::DeviceType::GPU) => DeviceKind::Gpu,
        Answer::Type(t) if t.contains(core::DeviceType::CPU) => DeviceKind::Cpu,
        Answer::Type(t) if t.contains(core::DeviceType::ACCELERATOR) => DeviceKind::Accelerator,
        _ => DeviceKind::Other,
    };
    let compute_units = match ask(Query::MaxComputeUnits)? {
        Answer::MaxComputeUnits(n) => n,
        _ => 1,
    };
    let global_mem_bytes = match ask(Query::GlobalMemSize)? {
        Answer::GlobalMemSize(n) => n,
        _ => 0,
    };
    let max_work_group_size = match ask(Query::MaxWorkGroupSize)? {
        Answer::MaxWorkGroupSize(n) => n,
        _ => 1,
    };
    let extensions = ask(Query::Extensions)?.to_string();
    let little_endian = !matches!(ask(Query::EndianLittle)?, Answer::EndianLittle(false));
    let correctly_rounded_sqrt = match ask(Query::SingleFpConfig)? {
        Answer::SingleFpConfig(c) => {
            c.contains(core::DeviceFpConfig::CORRECTLY_ROUNDED_DIVIDE_SQRT)
        }
        _ => false,
    };
    let host_unified_memory = kind == DeviceKind::Cpu
        || matches!(
            ask(Query::HostUnifiedMemory),
            Ok(Answer::HostUnifiedMemory(true))
        );
    let nvidia = platform.contains("NVIDIA") && kind == DeviceKind::Gpu;
    let ext = extensions
        .split_whitespace()
        .any(|e| e == "cl_nv_device_attribute_query");
    let (compute_capability, pci) = if nvidia && ext {
        let cc = nv_query(id, NV_COMPUTE_CAPABILITY_MAJOR)
            .zip(nv_query(id, NV_COMPUTE_CAPABILITY_MINOR));
        let pci = nv_query(id, NV_PCI_BUS_ID)
            .zip(nv_query(id, NV_PCI_SLOT_ID))
            .map(|(bus, slot)| PciAddress {
                domain: nv_query(id, NV_PCI_DOMAIN_ID).unwrap_or(0),
                bus,
                // The slot id packs device << 3 | function.
                device: slot >> 3,
            });
        (cc, pci)
    } else {
        (None, None)
    };
    let (routes, routes_note) = if nvidia {
        (vec![Route::OpenClC, Route::PtxOpenCl], None)
    } else {
        (
            vec![Route::OpenClC],
            Some("no PTX route: not an NVIDIA GPU".to_string()),
        )
    };
    Ok(DeviceInfo {
        host_unified_memory,
        compute_capability,
        pci,
        routes,
        routes_note,
        cuda: None,
        platform: platform.to_string(),
        vendor: ask(Query::Vendor)?.to_string(),
        opencl_c: ask(Query::OpenclCVersion)?.to_string(),
        fp64: extensions.split_whitespace().any(|e| e == "cl_khr_fp64"),
        name,
        kind,
        compute_units,
        global_mem_bytes,
        max_work_group_size,
        little_endian,
        correctly_rounded_sqrt,
        id: Some(id),
    })
}

/// `cl_nv_device_attribute_query` parameters.
const NV_COMPUTE_CAPABILITY_MAJOR: u32 = 0x4000;
const NV_COMPUTE_CAPABILITY_MINOR: u32 = 0x4001;
const NV_PCI_BUS_ID: u32 = 0x4008;
const NV_PCI_SLOT_ID: u32 = 0x4009;
const NV_PCI_DOMAIN_ID: u32 = 0x400A;

/// A `cl_uint` device query of NVIDIA's extension (not in ocl's enum).
fn nv_query(id: core::DeviceId, param: u32) -> Option<u32> {
    let mut value: u32 = 0;
    // SAFETY: a query of a 4-byte value into a local of that size.
    let status = unsafe {
        core::ffi::clGetDeviceInfo(
            id.as_raw(),
            param,
            std::mem::size_of::<u32>(),
            (&mut value as *mut u32).cast(),
            std::ptr::null_mut(),
        )
    };
    (status == 0).then_some(value)
}

/// A program built for one device.
pub struct Program {
    program: core::Program,
    /// Time the device's compiler took.
    pub build_time: Duration,
}

/// An opened device: for OpenCL a context, an in-order queue and a cache of built
/// programs; for the PTX (cuda) route the CUDA device, opened on first use.
pub struct Device {
    info: DeviceInfo,
    cl: Option<ClState>,
    cuda: std::sync::OnceLock<Result<Arc<CudaDevice>, DeviceError>>,
}

struct ClState {
    id: core::DeviceId,
    context: core::Context,
    queue: core::CommandQueue,
    programs: Mutex<HashMap<[u8; 32], Arc<Program>>>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device").field("info", &self.info).finish()
    }
}

impl Device {
    /// Opens `info`'s device.
    pub fn open(info: &DeviceInfo) -> Result<Device, DeviceError> {
        let fail = |operation: &'static str| {
            let device = info.name.clone();
            move |e: core::Error| DeviceError::Runtime {
                device,
                operation,
                message: ocl_error_gist(&e.to_string()),
            }
        };
        if !info.little_endian {
            return Err(DeviceError::BigEndian {
                device: info.name.clone(),
            });
        }
        let cl = match info.id {
            Some(id) => {
                let context = core::create_context(None, &[id], None, None)
                    .map_err(fail("creating a context"))?;
                let queue = core::create_command_queue(&context, id, None)
                    .map_err(fail("creating a command queue"))?;
                Some(ClState {
                    id,
                    context,
                    queue,
                    programs: Mutex::new(HashMap::new()),
                })
            }
            None => None,
        };
        Ok(Device {
            info: info.clone(),
            cl,
            cuda: std::sync::OnceLock::new(),
        })
    }

    fn cl(&self, route: Route) -> Result<&ClState, DeviceError> {
        self.cl.as_ref().ok_or_else(|| DeviceError::NoRoute {
            device: self.info.name.clone(),
            route,
        })
    }

    /// The CUDA device of the PTX (cuda) route, opened on first use.
    pub fn cuda(&self) -> Result<Arc<CudaDevice>, DeviceError> {
        self.cuda
            .get_or_init(|| {
                let info = self
                    .info
                    .cuda
                    .as_ref()
                    .ok_or_else(|| DeviceError::NoRoute {
                        device: self.info.name.clone(),
                        route: Route::PtxCuda,
                    })?;
                Ok(Arc::new(CudaDevice::open(info)?))
            })
            .clone()
    }

    /// The device's description.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn runtime(&self, operation: &'static str) -> impl Fn(core::Error) -> DeviceError + '_ {
        move |e| DeviceError::Runtime {
            device: self.info.name.clone(),
            operation,
            message: ocl_error_gist(&e.to_string()),
        }
    }

    /// The program for `lowered`, built on first use and cached by source hash. The flag
    /// says whether it came from the cache.
    pub fn program(&self, lowered: &Lowered) -> Result<(Arc<Program>, bool), DeviceError> {
        if lowered.fp64 && !self.info.fp64 {
            return Err(DeviceError::NoFp64 {
                device: self.info.name.clone(),
                kernel: lowered.spec.name.clone(),
            });
        }
        let source = CString::new(lowered.source.as_str()).map_err(|_| DeviceError::Build {
            device: self.info.name.clone(),
            kernel: lowered.spec.name.clone(),
            log: "generated source contains a NUL byte".into(),
        })?;
        self.build(
            Route::OpenClC,
            &lowered.spec.name,
            lowered.source_hash,
            |cl| core::create_program_with_source(&cl.context, &[source]),
        )
    }

    /// The program for PTX emitted for NVIDIA's OpenCL (`clCreateProgramWithBinary`),
    /// built on first use and cached by text hash.
    pub fn ptx_program(&self, ptx: &Ptx) -> Result<(Arc<Program>, bool), DeviceError> {
        // The driver reads the PTX as a C string.
        let mut binary = ptx.text.clone().into_bytes();
        binary.push(0);
        self.build(Route::PtxOpenCl, &ptx.spec.name, ptx.hash, |cl| {
            core::create_program_with_binary(&cl.context, &[cl.id], &[&binary])
        })
    }

    fn build(
        &self,
        route: Route,
        kernel: &str,
        key: [u8; 32],
        create: impl FnOnce(&ClState) -> Result<core::Program, core::Error>,
    ) -> Result<(Arc<Program>, bool), DeviceError> {
        let cl = self.cl(route)?;
        let mut cache = cl.programs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok((Arc::clone(p), true));
        }
        let started = Instant::now();
        let program = create(cl).map_err(self.runtime("creating a program"))?;
        let mut options = String::new();
        if route == Route::OpenClC {
            options.push_str("-cl-std=CL1.2");
            if self.info.correctly_rounded_sqrt {
                // Without it f32 division and sqrt may be off by up to 3 ULP.
                options.push_str(" -cl-fp32-correctly-rounded-divide-sqrt");
            }
        }
        let options = CString::new(options).unwrap_or_default();
        if let Err(e) = core::build_program(&program, Some(&[cl.id]), &options, None, None) {
            let log = match core::get_program_build_info(
                &program,
                cl.id,
                core::ProgramBuildInfo::BuildLog,
            ) {
                Ok(core::ProgramBuildInfoResult::BuildLog(log)) if !log.trim().is_empty() => log,
                _ => e.to_string(),
            };
            return Err(DeviceError::Build {
                device: self.info.name.clone(),
                kernel: kernel.to_string(),
                log,
            });
        }
        let built = Arc::new(Program {
            program,
            build_time: started.elapsed(),
        });
        cache.insert(key, Arc::clone(&built));
        Ok((built, false))
    }

    /// Drops every cached program (for measuring cold builds).
    pub fn clear_programs(&self) {
        if let Some(cl) = &self.cl {
            cl.programs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    /// Prepares `lowered` for one job: builds (or reuses) its program, creates the
    /// kernel and uploads the job's whole `in` buffers.
    ///
    /// `layout` is the job's checked layout (`kernel_model::check`), which says every
    /// buffer's size; `block` has one slot per manifest argument, as for node-jit's
    /// `run_packet`: scalar bits or a buffer's address.
    ///
    /// # Safety
    /// Every whole buffer's address in `block` must be valid for reads of its size in
    /// `layout` for the duration of this call.
    pub unsafe fn prepare(
        self: &Arc<Self>,
        lowered: Arc<Lowered>,
        layout: &Layout,
        block: &[u64],
    ) -> Result<PreparedKernel, DeviceError> {
        check_slots(&lowered.spec, layout, block)?;
        let (program, _) = self.program(&lowered)?;
        // SAFETY: forwarded from the caller.
        unsafe {
            self.prepare_cl(
                Route::OpenClC,
                &program,
                &lowered.spec,
                &lowered.entry,
                lowered.has_sums,
                layout,
                block,
            )
        }
    }

    /// Prepares `ptx` for one job through the route its flavor names: a program binary
    /// on this device's OpenCL, or a module on its CUDA device.
    ///
    /// # Safety
    /// As for [`Device::prepare`].
    pub unsafe fn prepare_ptx(
        self: &Arc<Self>,
        ptx: Arc<Ptx>,
        layout: &Layout,
        block: &[u64],
    ) -> Result<PreparedKernel, DeviceError> {
        check_slots(&ptx.spec, layout, block)?;
        match ptx.target.flavor {
            ptx_backend::Flavor::OpenCl => {
                let (program, _) = self.ptx_program(&ptx)?;
                // SAFETY: forwarded from the caller.
                unsafe {
                    self.prepare_cl(
                        Route::PtxOpenCl,
                        &program,
                        &ptx.spec,
                        &ptx.entry,
                        ptx.has_sums,
                        layout,
                        block,
                    )
                }
            }
            ptx_backend::Flavor::Cuda => {
                let device = self.cuda()?;
                // SAFETY: forwarded from the caller.
                let kernel = unsafe { device.prepare(ptx, layout, block) }?;
                Ok(PreparedKernel {
                    device: Arc::clone(self),
                    route: Route::PtxCuda,
                    inner: Inner::Cuda(kernel),
                })
            }
        }
    }

    /// A kernel of a built OpenCL program, with the job's whole buffers uploaded.
    ///
    /// # Safety
    /// As for [`Device::prepare`].
    #[allow(clippy::too_many_arguments)] // one call per route, each naming every part
    unsafe fn prepare_cl(
        self: &Arc<Self>,
        route: Route,
        program: &Program,
        spec: &KernelSpec,
        entry: &str,
        has_sums: bool,
        layout: &Layout,
        block: &[u64],
    ) -> Result<PreparedKernel, DeviceError> {
        let cl = self.cl(route)?;
        let kernel = core::create_kernel(&program.program, entry)
            .map_err(self.runtime("creating the kernel"))?;
        let mut slots = Vec::with_capacity(block.len());
        for (slot, arg) in layout.args.iter().enumerate() {
            let plan = match *arg {
                ArgLayout::Scalar(v) => Slot::Scalar(v.scalar_type()),
                ArgLayout::Split {
                    access,
                    elem,
                    per_item,
                    ..
                } => Slot::Split {
                    per_item: usize::try_from(per_item * elem.size() as u64)
                        .map_err(|_| too_large(spec))?,
                    // `out` slices are uploaded too: elements a kernel leaves unwritten
                    // then keep their value, exactly as on the CPU.
                    download: access != Access::In,
                    mem: None,
                },
                ArgLayout::Whole { elem, len } => {
                    let bytes =
                        usize::try_from(len * elem.size() as u64).map_err(|_| too_large(spec))?;
                    // SAFETY: the caller guarantees the address is valid for the layout's
                    // size of this buffer.
                    let data =
                        unsafe { std::slice::from_raw_parts(block[slot] as *const u8, bytes) };
                    Slot::Whole(self.upload(data)?)
                }
                ArgLayout::Sum { elem, len } => Slot::Sum {
                    elem,
                    bytes: usize::try_from(len * elem.size() as u64)
                        .map_err(|_| too_large(spec))?,
                    mem: None,
                },
            };
            slots.push(plan);
        }
        // SAFETY: a fresh 4-byte buffer; no host pointer is kept.
        let status = unsafe {
            core::create_buffer::<_, u8>(&cl.context, core::MemFlags::READ_WRITE, 4, None)
        }
        .map_err(self.runtime("creating the status buffer"))?;
        let groups = (self.info.compute_units.max(1) as usize * 64).max(64);
        Ok(PreparedKernel {
            device: Arc::clone(self),
            route,
            inner: Inner::Cl(ClKernel {
                queue: cl.queue.clone(),
                spec: spec.clone(),
                has_sums,
                kernel,
                slots,
                status,
                sum_work_items: groups,
                local_size: self.info.max_work_group_size.clamp(1, LOCAL_SIZE),
                timing: PacketTiming::default(),
            }),
        })
    }

    fn upload(&self, data: &[u8]) -> Result<core::Mem, DeviceError> {
        let cl = self.cl(Route::OpenClC)?;
        // A zero-sized buffer is invalid in OpenCL; one byte stands in for it.
        let len = data.len().max(1);
        // SAFETY: a fresh buffer of `len` bytes; the data is copied before returning.
        let mem = unsafe {
            core::create_buffer::<_, u8>(&cl.context, core::MemFlags::READ_WRITE, len, None)
        }
        .map_err(self.runtime("creating a buffer"))?;
        if !data.is_empty() {
            // SAFETY: blocking write of `data`, which outlives the call.
            unsafe {
                core::enqueue_write_buffer(
                    &cl.queue,
                    &mem,
                    true,
                    0,
                    data,
                    None::<core::Event>,
                    None::<&mut core::Event>,
                )
            }
            .map_err(self.runtime("writing a buffer"))?;
        }
        Ok(mem)
    }

    fn buffer(&self, len: usize) -> Result<core::Mem, DeviceError> {
        let cl = self.cl(Route::OpenClC)?;
        // SAFETY: a fresh buffer; no host pointer is kept.
        unsafe {
            core::create_buffer::<_, u8>(&cl.context, core::MemFlags::READ_WRITE, len.max(1), None)
        }
        .map_err(self.runtime("creating a buffer"))
    }
}

enum Slot {
    Scalar(ScalarType),
    Split {
        per_item: usize,
        download: bool,
        mem: Option<(core::Mem, usize)>,
    },
    Whole(core::Mem),
    Sum {
        elem: ScalarType,
        bytes: usize,
        mem: Option<(core::Mem, usize)>,
    },
}

/// A buffer larger than this machine's address space.
fn too_large(spec: &KernelSpec) -> DeviceError {
    DeviceError::Arguments {
        kernel: spec.name.clone(),
        detail: "a buffer is larger than this machine can address".into(),
    }
}

/// The argument slots must match the kernel's arguments.
fn check_slots(spec: &KernelSpec, layout: &Layout, block: &[u64]) -> Result<(), DeviceError> {
    if block.len() != spec.args.len() || layout.args.len() != block.len() {
        return Err(DeviceError::Arguments {
            kernel: spec.name.clone(),
            detail: format!(
                "{} argument slots given for {} arguments",
                block.len(),
                spec.args.len()
            ),
        });
    }
    Ok(())
}

/// A kernel ready to run packets of one job on one device, through one route. Not
/// shared between threads.
pub struct PreparedKernel {
    device: Arc<Device>,
    route: Route,
    inner: Inner,
}

enum Inner {
    Cl(ClKernel),
    Cuda(CudaKernel),
}

/// An OpenCL kernel object (from OpenCL C or a PTX binary) and its buffers.
struct ClKernel {
    queue: core::CommandQueue,
    spec: KernelSpec,
    has_sums: bool,
    kernel: core::Kernel,
    slots: Vec<Slot>,
    status: core::Mem,
    sum_work_items: usize,
    local_size: usize,
    timing: PacketTiming,
}

/// Work-group size used for every launch (or the device's maximum, if smaller).
const LOCAL_SIZE: usize = 64;

impl PreparedKernel {
    /// The device this kernel runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The route the kernel took to the device.
    pub fn route(&self) -> Route {
        self.route
    }

    /// The bus transfers and kernel time of the last packet that ran.
    pub fn last_timing(&self) -> PacketTiming {
        match &self.inner {
            Inner::Cl(k) => k.timing,
            Inner::Cuda(k) => k.last_timing(),
        }
    }

    /// Runs items `start..end` and copies the results back into the host buffers.
    ///
    /// # Safety
    /// `block` follows [`Device::prepare`]'s layout: split buffers valid for the job's
    /// items (the packet's slice is read and, for `out`/`inout`, written; only that
    /// slice is touched, so an address shifted back by `start` items in front of
    /// packet-private storage, as cluster workers pass, is valid too), sum buffers
    /// pointing at a zeroed packet-private array of the manifest length (the packet's
    /// total is added into it). No other thread may touch the packet's slices meanwhile.
    pub unsafe fn run_packet(
        &mut self,
        start: u64,
        end: u64,
        block: &[u64],
    ) -> Result<(), DeviceError> {
        let device = Arc::clone(&self.device);
        match &mut self.inner {
            // SAFETY: forwarded from the caller.
            Inner::Cl(k) => unsafe { k.run_packet(&device, start, end, block) },
            // SAFETY: forwarded from the caller.
            Inner::Cuda(k) => unsafe { k.run_packet(start, end, block) }.map_err(|e| match e {
                cuda::CudaError::Panicked {
                    kernel,
                    start,
                    end,
                    code,
                    reason,
                } => DeviceError::Panicked {
                    kernel,
                    start,
                    end,
                    code,
                    reason,
                },
                other => DeviceError::Cuda(other),
            }),
        }
    }
}

impl ClKernel {
    /// [`PreparedKernel::run_packet`] for an OpenCL kernel object.
    ///
    /// # Safety
    /// As there.
    unsafe fn run_packet(
        &mut self,
        device: &Arc<Device>,
        start: u64,
        end: u64,
        block: &[u64],
    ) -> Result<(), DeviceError> {
        self.timing = PacketTiming::default();
        if end <= start {
            return Ok(());
        }
        let queue = &self.queue;
        let up = Instant::now();
        let mut bytes_in = 4u64;
        let items = (end - start) as usize;
        let set = |k: &core::Kernel, idx: u32, v: ArgVal<'_>| {
            core::set_kernel_arg(k, idx, v).map_err(device.runtime("setting a kernel argument"))
        };
        let zero = [0u8; 4];
        // SAFETY: blocking write of a local array.
        unsafe {
            core::enqueue_write_buffer(
                queue,
                &self.status,
                true,
                0,
                &zero,
                None::<core::Event>,
                None::<&mut core::Event>,
            )
        }
        .map_err(device.runtime("clearing the status"))?;
        set(&self.kernel, 0, ArgVal::scalar(&start))?;
        set(&self.kernel, 1, ArgVal::scalar(&end))?;
        set(&self.kernel, 2, ArgVal::mem(&self.status))?;
        // A fixed work-group size, and a global size rounded up to a multiple of it (the
        // entry function skips items past the end): PoCL compiles one work-group
        // function per local size, so letting it choose per packet size recompiles.
        let local = self.local_size;
        let wanted = if self.spec.kind == ir_packager::KernelKind::Range {
            1
        } else if self.has_sums {
            items.min(self.sum_work_items)
        } else {
            items
        };
        let work_items = wanted.div_ceil(local) * local;
        for (slot, plan) in self.slots.iter_mut().enumerate() {
            let idx = 3 + slot as u32;
            let bits = block[slot];
            match plan {
                Slot::Scalar(t) => match t {
                    ScalarType::I32 | ScalarType::U32 | ScalarType::U8 => {
                        set(&self.kernel, idx, ArgVal::scalar(&(bits as u32)))?
                    }
                    ScalarType::I64 | ScalarType::U64 => {
                        set(&self.kernel, idx, ArgVal::scalar(&bits))?
                    }
                    ScalarType::F32 => set(
                        &self.kernel,
                        idx,
                        ArgVal::scalar(&f32::from_bits(bits as u32)),
                    )?,
                    ScalarType::F64 => {
                        set(&self.kernel, idx, ArgVal::scalar(&f64::from_bits(bits)))?
                    }
                },
                Slot::Split { per_item, mem, .. } => {
                    let len = *per_item * items;
                    let m = ensure(device, mem, len)?;
                    // SAFETY: the caller guarantees the packet's slice is valid.
                    let data = unsafe {
                        std::slice::from_raw_parts(
                            (bits as *const u8).wrapping_add(*per_item * start as usize),
                            len,
                        )
                    };
                    // SAFETY: blocking write of host memory valid for the call.
                    unsafe {
                        core::enqueue_write_buffer(
                            queue,
                            m,
                            true,
                            0,
                            data,
                            None::<core::Event>,
                            None::<&mut core::Event>,
                        )
                    }
                    .map_err(device.runtime("uploading a buffer slice"))?;
                    bytes_in += len as u64;
                    set(&self.kernel, idx, ArgVal::mem(m))?;
                }
                Slot::Whole(m) => set(&self.kernel, idx, ArgVal::mem(m))?,
                Slot::Sum { bytes, mem, .. } => {
                    let len = *bytes * work_items;
                    let m = ensure(device, mem, len)?;
                    let zeros = vec![0u8; len];
                    // SAFETY: blocking write of a local vector.
                    unsafe {
                        core::enqueue_write_buffer(
                            queue,
                            m,
                            true,
                            0,
                            &zeros,
                            None::<core::Event>,
                            None::<&mut core::Event>,
                        )
                    }
                    .map_err(device.runtime("clearing partial sums"))?;
                    bytes_in += len as u64;
                    set(&self.kernel, idx, ArgVal::mem(m))?;
                }
            }
        }
        // Blocking writes: the uploads are done here.
        let transfer_in = up.elapsed();
        let run = Instant::now();
        // SAFETY: every argument is set to a live buffer or scalar above.
        unsafe {
            core::enqueue_kernel(
                queue,
                &self.kernel,
                1,
                None,
                &[work_items, 1, 1],
                Some([local, 1, 1]),
                None::<core::Event>,
                None::<&mut core::Event>,
            )
        }
        .map_err(device.runtime("running the kernel"))?;
        let mut status = [0u8; 4];
        // SAFETY: blocking read into a local array.
        unsafe {
            core::enqueue_read_buffer(
                queue,
                &self.status,
                true,
                0,
                &mut status,
                None::<core::Event>,
                None::<&mut core::Event>,
            )
        }
        .map_err(device.runtime("reading the status"))?;
        // The blocking status read waited for the kernel.
        let kernel_time = run.elapsed();
        let down = Instant::now();
        let mut bytes_out = 4u64;
        let status = i32::from_le_bytes(status);
        if status != 0 {
            let code = status - 1;
            return Err(DeviceError::Panicked {
                kernel: self.spec.name.clone(),
                start,
                end,
                code,
                reason: ir_packager::panic_reason(code),
            });
        }
        for (slot, plan) in self.slots.iter().enumerate() {
            let bits = block[slot];
            match plan {
                Slot::Split {
                    per_item,
                    download: true,
                    mem: Some((m, _)),
                } => {
                    let len = *per_item * items;
                    // SAFETY: the caller guarantees the packet's slice is valid and ours.
                    let data = unsafe {
                        std::slice::from_raw_parts_mut(
                            (bits as *mut u8).wrapping_add(*per_item * start as usize),
                            len,
                        )
                    };
                    // SAFETY: blocking read into that slice.
                    unsafe {
                        core::enqueue_read_buffer(
                            queue,
                            m,
                            true,
                            0,
                            data,
                            None::<core::Event>,
                            None::<&mut core::Event>,
                        )
                    }
                    .map_err(device.runtime("downloading a buffer slice"))?;
                    bytes_out += len as u64;
                }
                Slot::Sum {
                    elem,
                    bytes,
                    mem: Some((m, _)),
                } => {
                    let mut partials = vec![0u8; *bytes * work_items];
                    // SAFETY: blocking read into a local vector.
                    unsafe {
                        core::enqueue_read_buffer(
                            queue,
                            m,
                            true,
                            0,
                            &mut partials,
                            None::<core::Event>,
                            None::<&mut core::Event>,
                        )
                    }
                    .map_err(device.runtime("reading partial sums"))?;
                    bytes_out += partials.len() as u64;
                    // SAFETY: the caller guarantees a packet-private array of `bytes`.
                    let total = unsafe { std::slice::from_raw_parts_mut(bits as *mut u8, *bytes) };
                    for part in partials.chunks_exact(*bytes) {
                        elem.add_into(total, part);
                    }
                }
                _ => {}
            }
        }
        self.timing = PacketTiming {
            bytes_in,
            transfer_in,
            bytes_out,
            transfer_out: down.elapsed(),
            kernel: kernel_time,
        };
        Ok(())
    }
}

/// Makes sure `mem` holds a device buffer of at least `len` bytes, reusing it if so.
fn ensure<'m>(
    device: &Device,
    mem: &'m mut Option<(core::Mem, usize)>,
    len: usize,
) -> Result<&'m core::Mem, DeviceError> {
    if mem.as_ref().is_none_or(|(_, cap)| *cap < len) {
        *mem = Some((device.buffer(len)?, len.max(1)));
    }
    Ok(&mem.get_or_insert_with(|| unreachable!("just filled")).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_kernels_can_move_to_a_device_thread() {
        fn is_send<T: Send>() {}
        is_send::<PreparedKernel>();
        fn is_sync<T: Send + Sync>() {}
        is_sync::<Device>();
    }
}

#[cfg(test)]
mod error_text_tests {
    use super::ocl_error_gist;

    #[test]
    fn ocl_errors_are_reduced_to_function_and_status() {
        let text = "\n################################ OPENCL ERROR ############################### \n\nError executing function: clGetDeviceIDs  \n\nStatus error code: CL_DEVICE_NOT_FOUND (-1)  \n\nPlease visit the following url for more information: \n\nhttps://www.khronos.org/\n";
        assert_eq!(
            ocl_error_gist(text),
            "clGetDeviceIDs: CL_DEVICE_NOT_FOUND (-1)"
        );
        assert_eq!(ocl_error_gist("plain words\nmore"), "plain words");
        assert_eq!(ocl_error_gist(""), "unknown error");
    }
}
