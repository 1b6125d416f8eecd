//! The OpenCL back end of offload: lowers kernels from a package's LLVM IR to
//! OpenCL C 1.2 and runs packets of a job on OpenCL devices (GPUs; PoCL's CPU device in
//! tests).
//!
//! The entry point is [`OpenCl::new`], which finds every device through the ICD loader
//! and never fails: a machine without OpenCL gets no devices and a
//! [`note`](OpenCl::note) saying why. [`OpenCl::lower`] turns a kernel into OpenCL C
//! (cached per package and kernel); [`Device::prepare`] builds the program (cached per
//! device by source hash) and uploads a job's whole `in` buffers once;
//! [`PreparedKernel::run_packet`] runs items `start..end`, transferring only the
//! packet's slices of split buffers and reducing `sum` buffers (one private slice per
//! work-item on the device, added up on the host).
//!
//! ```no_run
//! use opencl_backend::OpenCl;
//! # fn demo(package: &ir_packager::Package) -> Result<(), Box<dyn std::error::Error>> {
//! let opencl = OpenCl::new();
//! let lowered = opencl.lower(package, "saxpy")?;
//! println!("{}", lowered.source);
//! for device in opencl.devices() {
//!     println!("{}", device.info());
//! }
//! # Ok(()) }
//! ```
//!
//! What is lowered, and what is refused (then the kernel is CPU-only): see the [`lower`](mod@lower) module.
//! Range kernels run as one work-item per packet. Not in this version: run-time vector
//! lane indices and most vector reductions, integers wider than 64 bits, pointers stored
//! in memory, mutable globals, a SPIR-V path. Devices must be little-endian.
//!
//! NVIDIA GPUs have two more [`Route`]s, through `ptx-backend`: PTX as an OpenCL program
//! binary and PTX through the CUDA driver. [`OpenCl::prepare`] picks a device's route:
//! `$OFFLOAD_GPU_ROUTE` (`opencl-c`, `ptx-cuda`, `ptx-opencl`) when the device has it,
//! else the first of its [`DeviceInfo::routes`]; a route that refuses the kernel or
//! fails to build it hands over to the next one. PTX routes take only kernels the OpenCL
//! C lowering accepts.

mod device;
mod ir;
pub mod lower;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ir_packager::{Layout, Package, PackageHash};

pub use device::{
    cuda_note, discover, Device, DeviceError, DeviceInfo, DeviceKind, Discovery, PacketTiming,
    PreparedKernel, Program, Route,
};
pub use lower::{LowerError, Lowered};
pub use ptx_backend;

/// This machine's OpenCL devices plus the cache of lowered kernels.
pub struct OpenCl {
    devices: Vec<Arc<Device>>,
    note: Option<String>,
    lowered: Mutex<HashMap<(PackageHash, String), LowerResult>>,
    ptx: Mutex<HashMap<(PackageHash, String, ptx_backend::PtxTarget), PtxResult>>,
    preferred: Option<Route>,
}

/// A cached PTX emission, or why the PTX route refused the kernel.
type PtxResult = Result<Arc<ptx_backend::Ptx>, ptx_backend::PtxError>;

/// A cached lowering: the OpenCL C, or why the kernel is CPU-only.
type LowerResult = Result<Arc<Lowered>, LowerError>;

impl std::fmt::Debug for OpenCl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCl")
            .field("devices", &self.devices)
            .field("note", &self.note)
            .finish()
    }
}

impl OpenCl {
    /// Finds and opens every OpenCL device. Devices that fail to open are left out and
    /// named in the note.
    pub fn new() -> OpenCl {
        let found = discover();
        let mut notes: Vec<String> = found.note.into_iter().collect();
        let mut devices = Vec::new();
        for info in &found.devices {
            match Device::open(info) {
                Ok(d) => devices.push(Arc::new(d)),
                Err(e) => notes.push(e.to_string()),
            }
        }
        let preferred = std::env::var("OFFLOAD_GPU_ROUTE")
            .ok()
            .and_then(|r| Route::parse(r.trim()));
        OpenCl {
            devices,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            lowered: Mutex::new(HashMap::new()),
            ptx: Mutex::new(HashMap::new()),
            preferred,
        }
    }

    /// The same devices with `route` tried first where a device has it (what
    /// `$OFFLOAD_GPU_ROUTE` sets). Default: each device's own order.
    pub fn prefer(mut self, route: Option<Route>) -> OpenCl {
        self.preferred = route;
        self
    }

    /// The routes [`OpenCl::prepare`] tries on `device`, in order.
    pub fn route_order(&self, device: &Device) -> Vec<Route> {
        let mut routes = device.info().routes.clone();
        if let Some(p) = self.preferred {
            if let Some(k) = routes.iter().position(|r| *r == p) {
                let r = routes.remove(k);
                routes.insert(0, r);
            }
        }
        routes
    }

    /// Kernel `kernel` of `package` as PTX for `target`, emitted once per process
    /// (refusals are cached too). CUDA's libdevice is linked when found
    /// ([`ptx_backend::find_libdevice`]).
    pub fn ptx(
        &self,
        package: &Package,
        kernel: &str,
        target: ptx_backend::PtxTarget,
    ) -> PtxResult {
        let key = (package.hash(), kernel.to_string(), target);
        if let Some(hit) = self.ptx.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return hit.clone();
        }
        let libdevice = ptx_backend::find_libdevice();
        let result = ptx_backend::emit(package, kernel, target, libdevice.as_deref()).map(Arc::new);
        self.ptx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, result.clone());
        result
    }

    /// Prepares kernel `lowered` (of `package`) for one job on `device` through the
    /// first of [`OpenCl::route_order`] that takes it; a route that refuses or fails
    /// hands over to the next, and the error of the last one is returned.
    ///
    /// # Safety
    /// As for [`Device::prepare`]: every whole buffer's address in `block` must be valid
    /// for reads of its size in `layout` for the duration of this call.
    pub unsafe fn prepare(
        &self,
        device: &Arc<Device>,
        package: &Package,
        lowered: Arc<Lowered>,
        layout: &Layout,
        block: &[u64],
    ) -> Result<PreparedKernel, DeviceError> {
        let mut last = None;
        for route in self.route_order(device) {
            let attempt = match route {
                // SAFETY: forwarded from the caller.
                Route::OpenClC => unsafe { device.prepare(Arc::clone(&lowered), layout, block) },
                Route::PtxOpenCl | Route::PtxCuda => {
                    let info = device.info();
                    let (flavor, sm) = if route == Route::PtxCuda {
                        let sm = info.cuda.as_ref().map(|c| c.sm());
                        (ptx_backend::Flavor::Cuda, sm)
                    } else {
                        let sm = info.compute_capability.map(|(a, b)| a * 10 + b);
                        (ptx_backend::Flavor::OpenCl, sm)
                    };
                    let target = ptx_backend::PtxTarget {
                        flavor,
                        sm: sm.unwrap_or(ptx_backend::PtxTarget::DEFAULT_SM),
                    };
                    match self.ptx(package, &lowered.spec.name, target) {
                        // SAFETY: forwarded from the caller.
                        Ok(ptx) => unsafe { device.prepare_ptx(ptx, layout, block) },
                        Err(e) => Err(e.into()),
                    }
                }
            };
            match attempt {
                Ok(k) => return Ok(k),
                Err(e) => {
                    tracing::info!(device = %device.info().name, %route, "route not used: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| DeviceError::NoRoute {
            device: device.info().name.clone(),
            route: Route::OpenClC,
        }))
    }

    /// The opened devices (possibly none).
    pub fn devices(&self) -> &[Arc<Device>] {
        &self.devices
    }

    /// Why there are no (or fewer) devices, in one line.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Kernel `kernel` of `package` as OpenCL C, lowered once per process (refusals
    /// are cached too).
    pub fn lower(&self, package: &Package, kernel: &str) -> Result<Arc<Lowered>, LowerError> {
        let key = (package.hash(), kernel.to_string());
        if let Some(hit) = self
            .lowered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return hit.clone();
        }
        let result = lower::lower(package, kernel).map(Arc::new);
        self.lowered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, result.clone());
        result
    }
}

impl Default for OpenCl {
    fn default() -> OpenCl {
        OpenCl::new()
    }
}

/// Lowers kernel `kernel` of `package` to OpenCL C without touching any device.
pub fn lower(package: &Package, kernel: &str) -> Result<Lowered, LowerError> {
    lower::lower(package, kernel)
}
