//! `offload lower` and the OpenCL part of `offload devices` and `offload run --device`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use offload::local::DeviceChoice;
use opencl_backend::Discovery;

use super::package::read_package;

#[derive(Args)]
pub struct LowerArgs {
    /// The package.
    package: PathBuf,
    /// The kernel to lower.
    #[arg(long)]
    kernel: String,
}

/// The `--device` flag of `offload run`.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum DeviceFlag {
    /// The CPU cores (JIT-compiled kernel).
    #[default]
    Cpu,
    /// The OpenCL devices only.
    Opencl,
    /// CPU and OpenCL devices together, packets split by measured speed.
    Auto,
}

impl From<DeviceFlag> for DeviceChoice {
    fn from(flag: DeviceFlag) -> DeviceChoice {
        match flag {
            DeviceFlag::Cpu => DeviceChoice::Cpu,
            DeviceFlag::Opencl => DeviceChoice::OpenCl,
            DeviceFlag::Auto => DeviceChoice::Auto,
        }
    }
}

/// Prints the OpenCL C that kernel `--kernel` of the package lowers to.
pub fn lower(args: &LowerArgs) -> anyhow::Result<()> {
    let package = read_package(&args.package)?;
    let lowered = opencl_backend::lower(&package, &args.kernel).with_context(|| {
        format!(
            "cannot lower kernel `{}` of {}",
            args.kernel,
            args.package.display()
        )
    })?;
    print!("{}", lowered.source);
    Ok(())
}

/// The OpenCL lines of `offload devices`.
pub fn print_devices() {
    let Discovery { devices, note } = opencl_backend::discover();
    if devices.is_empty() {
        println!(
            "opencl: none ({}); kernels run on the CPU only",
            note.as_deref().unwrap_or("no OpenCL device found")
        );
        return;
    }
    for (k, d) in devices.iter().enumerate() {
        println!("opencl{k}: {} ({}, {})", d.name, d.kind, d.platform);
        println!("  vendor: {}", d.vendor);
        println!("  compute units: {}", d.compute_units);
        println!("  global memory: {} MiB", d.global_mem_bytes >> 20);
        println!("  max work-group size: {}", d.max_work_group_size);
        println!(
            "  fp64: {}",
            if d.fp64 { "yes (cl_khr_fp64)" } else { "no" }
        );
        println!("  {}", d.opencl_c);
    }
    if let Some(note) = note {
        println!("opencl note: {note}");
    }
}
