//! `offload lower` and the GPU part of `offload devices` and `offload run --device`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use offload::DeviceChoice;
use opencl_backend::Discovery;

use super::package::read_package;

#[derive(Args)]
pub struct LowerArgs {
    /// The package.
    package: PathBuf,
    /// The kernel to lower.
    #[arg(long)]
    kernel: String,
    /// Print PTX from LLVM's NVPTX back end instead of OpenCL C: `cuda` (for the CUDA
    /// driver) or `opencl` (a program binary for NVIDIA's OpenCL).
    #[arg(long, value_name = "LOADER")]
    ptx: Option<PtxLoader>,
    /// GPU architecture of the PTX, as `major * 10 + minor` (90 for `sm_90`).
    #[arg(long, default_value_t = opencl_backend::ptx_backend::PtxTarget::DEFAULT_SM)]
    sm: u32,
}

/// The `--ptx` loader of `offload lower`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PtxLoader {
    /// `cuModuleLoadData` (triple nvptx64-nvidia-cuda).
    Cuda,
    /// `clCreateProgramWithBinary` on NVIDIA's OpenCL (triple nvptx64-nvidia-nvcl).
    Opencl,
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

/// Prints the OpenCL C (or with `--ptx` the PTX) that kernel `--kernel` of the package
/// lowers to.
pub fn lower(args: &LowerArgs) -> anyhow::Result<()> {
    let package = read_package(&args.package)?;
    if let Some(loader) = args.ptx {
        use opencl_backend::ptx_backend::{emit, find_libdevice, Flavor, PtxTarget};
        let flavor = match loader {
            PtxLoader::Cuda => Flavor::Cuda,
            PtxLoader::Opencl => Flavor::OpenCl,
        };
        let target = PtxTarget {
            flavor,
            sm: args.sm,
        };
        let libdevice = find_libdevice();
        let ptx =
            emit(&package, &args.kernel, target, libdevice.as_deref()).with_context(|| {
                format!(
                    "cannot compile kernel `{}` of {} to PTX",
                    args.kernel,
                    args.package.display()
                )
            })?;
        print!("{}", ptx.text);
        return Ok(());
    }
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
        if let Some(cuda) = opencl_backend::cuda_note() {
            println!("cuda: none ({cuda}); no PTX route");
        }
        return;
    }
    for (k, d) in devices.iter().enumerate() {
        println!("opencl{k}: {} ({}, {})", d.name, d.kind, d.platform);
        println!("  routes: {}", d.routes_text());
        if let Some(why) = &d.routes_note {
            println!("  {why}");
        }
        if let Some(c) = &d.cuda {
            println!(
                "  cuda: device {}, sm_{}, {} multiprocessors, PCI {}",
                c.ordinal,
                c.sm(),
                c.multiprocessors,
                c.pci
            );
        }
        println!(
            "  memory: {}",
            if d.host_unified_memory {
                "host (no bus of its own)"
            } else {
                "its own (transfers cross PCI Express)"
            }
        );
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
    if devices.iter().all(|d| d.cuda.is_none()) {
        if let Some(cuda) = opencl_backend::cuda_note() {
            println!("cuda: none ({cuda}); no ptx (cuda) route");
        }
    }
}

#[derive(Args)]
pub struct CompareArgs {
    /// Element type of both files (u8 i32 u32 i64 u64 f32 f64).
    #[arg(long, value_parser = parse_elem)]
    elem: offload::ScalarType,
    /// Float tolerance in units in the last place (integers must be equal).
    #[arg(long, default_value_t = 0)]
    ulp: u64,
    /// The reference file.
    expected: PathBuf,
    /// The file to check.
    actual: PathBuf,
}

/// `offload __compare`: whether two raw buffer files agree (integers bit for bit, floats
/// within `--ulp`, NaN equal to NaN), for `scripts/gpu-check.sh`, which runs where no
/// other tool may be installed.
pub fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let (a, b) = (read(&args.expected)?, read(&args.actual)?);
    anyhow::ensure!(
        a.len() == b.len(),
        "{} has {} bytes, {} has {}",
        args.expected.display(),
        a.len(),
        args.actual.display(),
        b.len()
    );
    let size = args.elem.size();
    let mut worst = 0u64;
    let mut bad = 0usize;
    let mut first = None;
    for (k, (x, y)) in a.chunks_exact(size).zip(b.chunks_exact(size)).enumerate() {
        let d = match args.elem {
            offload::ScalarType::F32 => {
                let f = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                ulp_f64(f64::from(f(x)), f64::from(f(y)), true)
            }
            offload::ScalarType::F64 => {
                let f = |c: &[u8]| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(c);
                    f64::from_le_bytes(w)
                };
                ulp_f64(f(x), f(y), false)
            }
            _ => u64::from(x != y) * u64::MAX,
        };
        if d > args.ulp {
            bad += 1;
            first.get_or_insert(k);
        }
        worst = worst.max(d);
    }
    match first {
        None => {
            println!("equal within {} ULP (worst {worst})", args.ulp);
            Ok(())
        }
        Some(k) => anyhow::bail!(
            "{bad} of {} elements differ by more than {} ULP (first at index {k})",
            a.len() / size,
            args.ulp
        ),
    }
}

fn parse_elem(text: &str) -> Result<offload::ScalarType, String> {
    use offload::ScalarType as T;
    [T::U8, T::I32, T::U32, T::I64, T::U64, T::F32, T::F64]
        .into_iter()
        .find(|t| t.name() == text)
        .ok_or_else(|| format!("`{text}` is not an element type (u8 i32 u32 i64 u64 f32 f64)"))
}

/// Distance in units in the last place between two floats (of f32 when `single`); NaN
/// equals NaN and is infinitely far from any number.
fn ulp_f64(a: f64, b: f64, single: bool) -> u64 {
    if a == b || (a.is_nan() && b.is_nan()) {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u64::MAX;
    }
    let key = |x: f64| -> i128 {
        let bits = if single {
            i128::from((x as f32).to_bits() as i32)
        } else {
            i128::from(x.to_bits() as i64)
        };
        let min = if single {
            i128::from(i32::MIN)
        } else {
            i128::from(i64::MIN)
        };
        if bits < 0 {
            min - bits
        } else {
            bits
        }
    };
    u64::try_from(key(a).abs_diff(key(b))).unwrap_or(u64::MAX)
}
