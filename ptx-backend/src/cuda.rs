//! PTX through the CUDA driver API: discovery, module cache, packet execution.
//!
//! `libcuda.so.1` is opened with dlopen on first use (cudarc's `dynamic-loading`), never
//! linked: a machine without NVIDIA's driver gets an empty list and a note saying so.
//! Everything cudarc is confined to this module.

use std::collections::HashMap;
use std::fmt;
use std::panic::catch_unwind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::safe::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{result, DevicePtr, PushKernelArg};
use cudarc::nvrtc::Ptx as PtxModule;
use ir_packager::{Access, ArgLayout, KernelKind, Layout, ScalarType};

use crate::emit::Ptx;

/// Threads per block of every launch.
pub const BLOCK: u32 = 256;

/// A CUDA operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// The driver refused a call.
    #[error("CUDA device `{device}`: {operation} failed: {message}")]
    Driver {
        /// The device.
        device: String,
        /// What was attempted.
        operation: &'static str,
        /// The driver's message.
        message: String,
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
        /// The code passed to `offload_panic`.
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

/// A PCI address, to tell which OpenCL device is the same GPU as a CUDA device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PciAddress {
    /// PCI domain.
    pub domain: u32,
    /// Bus.
    pub bus: u32,
    /// Device (slot).
    pub device: u32,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

/// One CUDA device as the driver describes it.
#[derive(Debug, Clone)]
pub struct CudaDeviceInfo {
    /// The driver's ordinal.
    pub ordinal: usize,
    /// Device name.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (u32, u32),
    /// Streaming multiprocessors.
    pub multiprocessors: u32,
    /// Global memory in bytes.
    pub global_mem_bytes: u64,
    /// Where it sits on the PCI bus.
    pub pci: PciAddress,
}

impl CudaDeviceInfo {
    /// The compute capability as `major * 10 + minor` (`sm_90` is 90).
    pub fn sm(&self) -> u32 {
        self.compute_capability.0 * 10 + self.compute_capability.1
    }
}

/// The CUDA devices of this machine, or why there are none.
#[derive(Debug, Clone, Default)]
pub struct CudaDiscovery {
    /// Every device the driver reports.
    pub devices: Vec<CudaDeviceInfo>,
    /// Why there are none (no driver library, no device, an error), in one line.
    pub note: Option<String>,
}

fn driver_message(e: result::DriverError) -> String {
    match e.error_string() {
        Ok(text) => format!("{:?}: {}", e.0, text.to_string_lossy()),
        Err(_) => format!("{:?}", e.0),
    }
}

/// Finds the CUDA devices. Never fails and never panics: without `libcuda.so.1` the list
/// is empty and the note says so.
pub fn discover() -> CudaDiscovery {
    // SAFETY: only tries to open the driver library by its names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return CudaDiscovery {
            devices: Vec::new(),
            note: Some("no CUDA driver (libcuda.so.1 not found)".into()),
        };
    }
    // cudarc panics if a driver symbol is missing (a driver older than its bindings):
    // that is a note here, not a crash.
    match catch_unwind(describe_all) {
        Ok(Ok(devices)) if devices.is_empty() => CudaDiscovery {
            devices,
            note: Some("the CUDA driver reports no device".into()),
        },
        Ok(Ok(devices)) => CudaDiscovery {
            devices,
            note: None,
        },
        Ok(Err(note)) => CudaDiscovery {
            devices: Vec::new(),
            note: Some(note),
        },
        Err(_) => CudaDiscovery {
            devices: Vec::new(),
            note: Some("the CUDA driver library lacks a function offload needs".into()),
        },
    }
}

fn describe_all() -> Result<Vec<CudaDeviceInfo>, String> {
    result::init().map_err(|e| format!("cuInit failed: {}", driver_message(e)))?;
    let count = result::device::get_count()
        .map_err(|e| format!("cuDeviceGetCount failed: {}", driver_message(e)))?;
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let fail = |what: &str, e| format!("CUDA device {ordinal}: {what}: {}", driver_message(e));
        let dev = result::device::get(ordinal).map_err(|e| fail("cuDeviceGet", e))?;
        let attr = |a: Attr| {
            // SAFETY: `dev` is a device handle the driver just returned.
            unsafe { result::device::get_attribute(dev, a) }
                .map(|v| v.max(0) as u32)
                .map_err(|e| fail("cuDeviceGetAttribute", e))
        };
        devices.push(CudaDeviceInfo {
            ordinal: ordinal as usize,
            name: result::device::get_name(dev).map_err(|e| fail("cuDeviceGetName", e))?,
            compute_capability: (
                attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            multiprocessors: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            // SAFETY: as above.
            global_mem_bytes: unsafe { result::device::total_mem(dev) }
                .map_err(|e| fail("cuDeviceTotalMem", e))? as u64,
            pci: PciAddress {
                domain: attr(Attr::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
                bus: attr(Attr::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
                device: attr(Attr::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?,
            },
        });
    }
    Ok(devices)
}

/// An opened CUDA device: its primary context, one stream and the loaded modules.
pub struct CudaDevice {
    info: CudaDeviceInfo,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<[u8; 32], Loaded>>,
}

/// A loaded module (kept alive) and its entry function.
type Loaded = (Arc<CudaModule>, CudaFunction);

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaDevice")
            .field("info", &self.info)
            .finish()
    }
}

/// Time spent moving bytes over the bus and running the kernel, for one packet.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PacketTiming {
    /// Bytes copied to the device (the packet's input slices, zeroed partial sums).
    pub bytes_in: u64,
    /// Time those copies took.
    pub transfer_in: Duration,
    /// Bytes copied back (output slices, partial sums, the status word).
    pub bytes_out: u64,
    /// Time those copies took.
    pub transfer_out: Duration,
    /// The kernel, from launch to completion.
    pub kernel: Duration,
}

impl CudaDevice {
    /// Opens `info`'s device (its primary context).
    pub fn open(info: &CudaDeviceInfo) -> Result<CudaDevice, CudaError> {
        let fail = |operation: &'static str| {
            let device = info.name.clone();
            move |e: result::DriverError| CudaError::Driver {
                device,
                operation,
                message: driver_message(e),
            }
        };
        let opened = catch_unwind(|| CudaContext::new(info.ordinal));
        let ctx = match opened {
            Ok(ctx) => ctx.map_err(fail("creating the context"))?,
            Err(_) => {
                return Err(CudaError::Driver {
                    device: info.name.clone(),
                    operation: "creating the context",
                    message: "the driver library lacks a function offload needs".into(),
                })
            }
        };
        // One stream used synchronously: cudarc's per-buffer events are not needed.
        // SAFETY: nothing has been allocated on this context yet.
        unsafe { ctx.disable_event_tracking() };
        Ok(CudaDevice {
            info: info.clone(),
            stream: ctx.default_stream(),
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The device's description.
    pub fn info(&self) -> &CudaDeviceInfo {
        &self.info
    }

    fn fail(&self, operation: &'static str) -> impl Fn(result::DriverError) -> CudaError + '_ {
        move |e| CudaError::Driver {
            device: self.info.name.clone(),
            operation,
            message: driver_message(e),
        }
    }

    /// The loaded module for `ptx` (cached by text hash) and its entry function; the
    /// flag says whether it came from the cache.
    pub fn function(&self, ptx: &Ptx) -> Result<(CudaFunction, bool), CudaError> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, f)) = modules.get(&ptx.hash) {
            return Ok((f.clone(), true));
        }
        let module = self
            .stream
            .context()
            .load_module(PtxModule::from_src(ptx.text.clone()))
            .map_err(self.fail("loading the PTX module (cuModuleLoadData)"))?;
        let function = module
            .load_function(&ptx.entry)
            .map_err(self.fail("finding the entry function"))?;
        modules.insert(ptx.hash, (module, function.clone()));
        Ok((function, false))
    }

    fn upload(&self, data: &[u8]) -> Result<CudaSlice<u8>, CudaError> {
        // A zero-sized allocation is refused by the driver; one byte stands in for it.
        let mut mem = self.alloc(data.len())?;
        if !data.is_empty() {
            self.stream
                .memcpy_htod(data, &mut mem)
                .map_err(self.fail("copying to the device"))?;
        }
        Ok(mem)
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<u8>, CudaError> {
        self.stream
            .alloc_zeros::<u8>(len.max(1))
            .map_err(self.fail("allocating device memory"))
    }

    /// Prepares `ptx` for one job: loads (or reuses) its module and uploads the job's
    /// whole `in` buffers.
    ///
    /// `layout` is the job's checked layout (every buffer's size), `block` has one slot
    /// per manifest argument (scalar bits or a buffer's address), as for the OpenCL route.
    ///
    /// # Safety
    /// Every whole buffer's address in `block` must be valid for reads of its size in
    /// `layout` for the duration of this call.
    pub unsafe fn prepare(
        self: &Arc<Self>,
        ptx: Arc<Ptx>,
        layout: &Layout,
        block: &[u64],
    ) -> Result<CudaKernel, CudaError> {
        let spec = &ptx.spec;
        if block.len() != spec.args.len() || layout.args.len() != block.len() {
            return Err(CudaError::Arguments {
                kernel: spec.name.clone(),
                detail: format!(
                    "{} argument slots given for {} arguments",
                    block.len(),
                    spec.args.len()
                ),
            });
        }
        let (function, _) = self.function(&ptx)?;
        let mut slots = Vec::with_capacity(block.len());
        let too_large = || CudaError::Arguments {
            kernel: spec.name.clone(),
            detail: "a buffer is larger than this machine can address".into(),
        };
        for (slot, arg) in layout.args.iter().enumerate() {
            slots.push(match *arg {
                ArgLayout::Scalar(v) => Slot::Scalar(v.scalar_type()),
                ArgLayout::Split {
                    access,
                    elem,
                    per_item,
                    ..
                } => Slot::Split {
                    per_item: usize::try_from(per_item * elem.size() as u64)
                        .map_err(|_| too_large())?,
                    // `out` slices go up too, so unwritten elements keep their value.
                    download: access != Access::In,
                    mem: None,
                },
                ArgLayout::Whole { elem, len } => {
                    let bytes =
                        usize::try_from(len * elem.size() as u64).map_err(|_| too_large())?;
                    // SAFETY: the caller guarantees the address is valid for the layout's
                    // size of this buffer.
                    let data =
                        unsafe { std::slice::from_raw_parts(block[slot] as *const u8, bytes) };
                    Slot::Whole(self.upload(data)?)
                }
                ArgLayout::Sum { elem, len } => Slot::Sum {
                    elem,
                    bytes: usize::try_from(len * elem.size() as u64).map_err(|_| too_large())?,
                    mem: None,
                },
            });
        }
        let status = self.alloc(4)?;
        Ok(CudaKernel {
            device: Arc::clone(self),
            sum_work_items: self.info.multiprocessors.max(1) as usize * 2048,
            ptx,
            function,
            slots,
            status,
            timing: PacketTiming::default(),
        })
    }
}

enum Slot {
    Scalar(ScalarType),
    Split {
        per_item: usize,
        download: bool,
        mem: Option<CudaSlice<u8>>,
    },
    Whole(CudaSlice<u8>),
    Sum {
        elem: ScalarType,
        bytes: usize,
        mem: Option<CudaSlice<u8>>,
    },
}

/// A kernel parameter as the entry takes it.
#[derive(Clone, Copy)]
enum Param {
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
}

/// A kernel ready to run packets of one job on one CUDA device.
pub struct CudaKernel {
    device: Arc<CudaDevice>,
    ptx: Arc<Ptx>,
    function: CudaFunction,
    slots: Vec<Slot>,
    status: CudaSlice<u8>,
    sum_work_items: usize,
    timing: PacketTiming,
}

// SAFETY: the kernel's handles belong to one context; every call binds that context to
// the calling thread first (cudarc does), and a `CudaKernel` is used by one thread at a
// time (`&mut self`).
unsafe impl Send for CudaKernel {}

/// Makes sure `mem` holds at least `len` bytes of device memory.
fn ensure<'m>(
    device: &CudaDevice,
    mem: &'m mut Option<CudaSlice<u8>>,
    len: usize,
) -> Result<&'m mut CudaSlice<u8>, CudaError> {
    if mem.as_ref().is_none_or(|m| m.len() < len.max(1)) {
        *mem = Some(device.alloc(len)?);
    }
    Ok(mem.get_or_insert_with(|| unreachable!("just filled")))
}

impl CudaKernel {
    /// The device it runs on.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// The bus transfers and kernel time of the last packet that ran.
    pub fn last_timing(&self) -> PacketTiming {
        self.timing
    }

    /// Runs items `start..end` and copies the results back into the host buffers.
    ///
    /// # Safety
    /// As for the OpenCL route's `PreparedKernel::run_packet`: `block` follows
    /// [`CudaDevice::prepare`]'s layout, split buffers valid for the packet's slice (read,
    /// and written for `out`/`inout`), sum buffers pointing at a zeroed packet-private
    /// array of the manifest length (the packet's total is added into it), no other
    /// thread touching those meanwhile.
    pub unsafe fn run_packet(
        &mut self,
        start: u64,
        end: u64,
        block: &[u64],
    ) -> Result<(), CudaError> {
        self.timing = PacketTiming::default();
        if end <= start {
            return Ok(());
        }
        let device = Arc::clone(&self.device);
        let stream = Arc::clone(&device.stream);
        let fail = |operation| device.fail(operation);
        let items = (end - start) as usize;
        let spec = &self.ptx.spec;
        let work_items = if spec.kind == KernelKind::Range {
            1
        } else if self.ptx.has_sums {
            items.min(self.sum_work_items)
        } else {
            items
        };
        let blocks = work_items.div_ceil(BLOCK as usize);
        let work_items = blocks * BLOCK as usize;
        let up = Instant::now();
        let mut bytes_in = 4u64;
        stream
            .memset_zeros(&mut self.status)
            .map_err(fail("clearing the status"))?;
        let mut params = vec![
            Param::U64(start),
            Param::U64(end),
            Param::U64(self.status.device_ptr(&stream).0),
        ];
        for (slot, plan) in self.slots.iter_mut().enumerate() {
            let bits = block[slot];
            match plan {
                Slot::Scalar(t) => params.push(match t {
                    ScalarType::I32 | ScalarType::U32 | ScalarType::U8 => Param::U32(bits as u32),
                    ScalarType::I64 | ScalarType::U64 => Param::U64(bits),
                    ScalarType::F32 => Param::F32(f32::from_bits(bits as u32)),
                    ScalarType::F64 => Param::F64(f64::from_bits(bits)),
                }),
                Slot::Split { per_item, mem, .. } => {
                    let len = *per_item * items;
                    let m = ensure(&device, mem, len)?;
                    // SAFETY: the caller guarantees the packet's slice is valid.
                    let data = unsafe {
                        std::slice::from_raw_parts(
                            (bits as *const u8).wrapping_add(*per_item * start as usize),
                            len,
                        )
                    };
                    if len > 0 {
                        let mut view = m.slice_mut(0..len);
                        stream
                            .memcpy_htod(data, &mut view)
                            .map_err(fail("uploading a buffer slice"))?;
                    }
                    bytes_in += len as u64;
                    params.push(Param::U64(m.device_ptr(&stream).0));
                }
                Slot::Whole(m) => params.push(Param::U64(m.device_ptr(&stream).0)),
                Slot::Sum { bytes, mem, .. } => {
                    let len = *bytes * work_items;
                    let m = ensure(&device, mem, len)?;
                    stream
                        .memset_zeros(m)
                        .map_err(fail("clearing partial sums"))?;
                    params.push(Param::U64(m.device_ptr(&stream).0));
                }
            }
        }
        stream.synchronize().map_err(fail("uploading"))?;
        let transfer_in = up.elapsed();
        let run = Instant::now();
        let mut builder = stream.launch_builder(&self.function);
        for p in &params {
            match p {
                Param::U32(v) => builder.arg(v),
                Param::U64(v) => builder.arg(v),
                Param::F32(v) => builder.arg(v),
                Param::F64(v) => builder.arg(v),
            };
        }
        let config = cudarc::driver::LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the parameters match the entry's: start, end, the status word, then
        // one per argument of the manifest (scalars by value, buffers as device
        // pointers to allocations of the sizes the entry indexes).
        unsafe { builder.launch(config) }.map_err(fail("launching the kernel"))?;
        stream.synchronize().map_err(fail("running the kernel"))?;
        let kernel = run.elapsed();
        let down = Instant::now();
        let mut status = [0u8; 4];
        stream
            .memcpy_dtoh(&self.status.slice(0..4), &mut status)
            .map_err(fail("reading the status"))?;
        let mut bytes_out = 4u64;
        let status = i32::from_le_bytes(status);
        if status != 0 {
            let code = status - 1;
            return Err(CudaError::Panicked {
                kernel: spec.name.clone(),
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
                    mem: Some(m),
                } => {
                    let len = *per_item * items;
                    if len == 0 {
                        continue;
                    }
                    // SAFETY: the caller guarantees the packet's slice is valid and ours.
                    let data = unsafe {
                        std::slice::from_raw_parts_mut(
                            (bits as *mut u8).wrapping_add(*per_item * start as usize),
                            len,
                        )
                    };
                    stream
                        .memcpy_dtoh(&m.slice(0..len), data)
                        .map_err(fail("downloading a buffer slice"))?;
                    bytes_out += len as u64;
                }
                Slot::Sum {
                    elem,
                    bytes,
                    mem: Some(m),
                } => {
                    let mut partials = vec![0u8; *bytes * work_items];
                    stream
                        .memcpy_dtoh(&m.slice(0..partials.len()), &mut partials)
                        .map_err(fail("reading partial sums"))?;
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
        stream.synchronize().map_err(fail("downloading"))?;
        self.timing = PacketTiming {
            bytes_in,
            transfer_in,
            bytes_out,
            transfer_out: down.elapsed(),
            kernel,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_print_like_lspci() {
        let a = PciAddress {
            domain: 0,
            bus: 0x1b,
            device: 0,
        };
        assert_eq!(a.to_string(), "0000:1b:00");
    }

    #[test]
    fn prepared_kernels_can_move_to_a_device_thread() {
        fn is_send<T: Send>() {}
        is_send::<CudaKernel>();
    }
}
