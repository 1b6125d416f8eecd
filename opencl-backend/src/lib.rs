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
//! in memory, mutable globals, a direct PTX or SPIR-V path. Devices must be
//! little-endian.

mod device;
mod ir;
pub mod lower;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ir_packager::{Package, PackageHash};

pub use device::{
    discover, Device, DeviceError, DeviceInfo, DeviceKind, Discovery, PreparedKernel, Program,
};
pub use lower::{LowerError, Lowered};

/// This machine's OpenCL devices plus the cache of lowered kernels.
pub struct OpenCl {
    devices: Vec<Arc<Device>>,
    note: Option<String>,
    lowered: Mutex<HashMap<(PackageHash, String), LowerResult>>,
}

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
        OpenCl {
            devices,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            lowered: Mutex::new(HashMap::new()),
        }
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
