//! The PTX route of offload: kernels from a package's LLVM IR to PTX through LLVM's
//! NVPTX back end, and packets of a job run through the CUDA driver API.
//!
//! [`emit`] compiles one kernel for a [`PtxTarget`] (the loader, [`Flavor::Cuda`] or
//! [`Flavor::OpenCl`] for NVIDIA's `clCreateProgramWithBinary`, and the GPU
//! architecture) with the same packet entry convention as the OpenCL C route of
//! `opencl-backend`: `offload_<kernel>(start, end, status, args...)`, one work-item per
//! item, split buffers holding the packet's slice, private `sum` partials per work-item
//! reduced on the host, and `offload_panic` as a status word. Emission needs no GPU.
//!
//! [`cuda::discover`] finds the CUDA devices through `libcuda.so.1`, opened at run time
//! (cudarc's dynamic loading): nothing links CUDA at build time, and a machine without it
//! gets no devices and a note why. [`cuda::CudaDevice::prepare`] loads the PTX
//! (`cuModuleLoadData`) and uploads whole `in` buffers; [`cuda::CudaKernel::run_packet`]
//! runs a packet and records its bus and kernel times.
//!
//! ```no_run
//! use ptx_backend::{emit, Flavor, PtxTarget};
//! # fn demo(package: &ir_packager::Package) -> Result<(), Box<dyn std::error::Error>> {
//! let ptx = emit(package, "saxpy", PtxTarget { flavor: Flavor::Cuda, sm: 90 }, None)?;
//! println!("{}", ptx.text);
//! # Ok(()) }
//! ```
//!
//! Not in this version: math functions other than those PTX has instructions for when
//! CUDA's libdevice is absent (such kernels are refused by name), integer division and
//! float conversions wider than 64 bits, recursion. This crate has no feature flags.

pub mod cuda;
mod emit;

pub use emit::{
    emit, entry_name, find_libdevice, Flavor, Ptx, PtxError, PtxTarget, EMISSION_VERSION,
};
