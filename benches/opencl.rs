//! `opencl`: the OpenCL back end against the CPU JIT, in one run.
//!
//! - `throughput/<kernel>/cpu_jit`: a local job on every core (node-jit, CPU only);
//! - `throughput/<kernel>/opencl:<device>`: one packet of the whole job on that device
//!   through `PreparedKernel::run_packet`, buffer transfers included (upload of the
//!   inputs, download of the outputs), which is what a packet costs there;
//! - `build/<kernel>/cold`: lowering to OpenCL C plus the device compiler, with the
//!   in-memory caches cleared and PoCL's own disk cache disabled (`POCL_KERNEL_CACHE=0`);
//! - `build/<kernel>/cached`: the same request answered by the caches.
//!
//! Every example item kernel is measured; range kernels (one work-item per packet on
//! OpenCL) are left out: that route is for correctness, not throughput.
//! Without an OpenCL device only the CPU figures are produced, and a line says so.
//! A table of items/s is printed at the end.
//!
//! Run: `cargo bench --bench opencl`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use criterion::{Criterion, SamplingMode, Throughput};
use ir_packager::{Package, ScalarValue};
use node_jit::{Config, Engine};
use offload::{ArgValue, Buffer, Cluster, DeviceChoice, Job, Options};
use opencl_backend::OpenCl;

#[path = "support/examples.rs"]
#[allow(dead_code)] // shared with the JIT benches, which use all of it
mod examples;

const ITEM_KERNELS: [&str; 4] = ["saxpy", "mandelbrot", "nbody", "dot"];

/// Items per job and the job's arguments.
fn job(kernel: &str) -> (u64, Vec<ArgValue>) {
    let floats = |n: usize, f: &dyn Fn(usize) -> f32| -> Buffer {
        Buffer::from_bytes(&(0..n).flat_map(|i| f(i).to_le_bytes()).collect::<Vec<u8>>())
    };
    let doubles = |n: usize, f: &dyn Fn(usize) -> f64| -> Buffer {
        Buffer::from_bytes(&(0..n).flat_map(|i| f(i).to_le_bytes()).collect::<Vec<u8>>())
    };
    match kernel {
        "saxpy" => {
            let n = 1 << 22;
            (
                n as u64,
                vec![
                    ArgValue::Scalar(ScalarValue::F32(2.5)),
                    ArgValue::Buffer(floats(n, &|i| i as f32 * 0.001)),
                    ArgValue::Buffer(floats(n, &|i| 1.0 - i as f32 * 0.002)),
                ],
            )
        }
        "mandelbrot" => {
            let (w, h) = (1024u32, 768u64);
            (
                w as u64 * h,
                vec![
                    ArgValue::Scalar(ScalarValue::U32(w)),
                    ArgValue::Scalar(ScalarValue::U32(256)),
                    ArgValue::Scalar(ScalarValue::F64(-2.2)),
                    ArgValue::Scalar(ScalarValue::F64(-1.2)),
                    ArgValue::Scalar(ScalarValue::F64(3.2 / w as f64)),
                    ArgValue::Buffer(Buffer::zeroed(4 * (w as u64 * h) as usize)),
                ],
            )
        }
        "nbody" => {
            let n = 4096usize;
            (
                n as u64,
                vec![
                    ArgValue::Scalar(ScalarValue::U32(n as u32)),
                    ArgValue::Scalar(ScalarValue::F32(0.01)),
                    ArgValue::Scalar(ScalarValue::F32(0.1)),
                    ArgValue::Buffer(floats(4 * n, &|i| ((i * 7919) % 1000) as f32 * 0.01)),
                    ArgValue::Buffer(floats(3 * n, &|_| 0.0)),
                    ArgValue::Buffer(Buffer::zeroed(16 * n)),
                ],
            )
        }
        _ => {
            let n = 1 << 22;
            (
                n as u64,
                vec![
                    ArgValue::Buffer(doubles(n, &|i| (i % 100) as f64 * 0.5)),
                    ArgValue::Buffer(doubles(n, &|i| (i % 7) as f64)),
                    ArgValue::Buffer(Buffer::zeroed(8)),
                ],
            )
        }
    }
}

struct Row {
    kernel: &'static str,
    cpu_items_per_s: f64,
    devices: Vec<(String, f64)>,
    cold_build: Vec<(String, Duration)>,
    cached_build: Vec<(String, Duration)>,
}

fn time_it(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    examples::median(&mut times).context("no repetitions")
}

fn main() -> Result<()> {
    // PoCL caches compiled programs on disk; a cold build must not hit that cache.
    // SAFETY: set before any thread exists.
    unsafe { std::env::set_var("POCL_KERNEL_CACHE", "0") };
    let cache = tempfile::tempdir()?;
    let engine = Engine::new(Config::default().cache_dir(cache.path()))?;
    let opencl = Arc::new(OpenCl::new());
    println!("machine: {}", examples::describe_machine(engine.host()));
    if opencl.devices().is_empty() {
        println!(
            "no OpenCL device: {}; only CPU figures",
            opencl.note().unwrap_or("none found")
        );
    }
    for d in opencl.devices() {
        println!("opencl device: {}", d.info());
    }
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut rows = Vec::new();
    for kernel in ITEM_KERNELS {
        let package: Package = examples::package(kernel)?;
        let (items, args) = job(kernel);
        let mut row = Row {
            kernel,
            cpu_items_per_s: 0.0,
            devices: Vec::new(),
            cold_build: Vec::new(),
            cached_build: Vec::new(),
        };
        let options = Options::default().device(DeviceChoice::Cpu);
        let local_node = Cluster::from_engine(engine.clone());
        let shared = std::sync::Arc::new(package.clone());
        // A fresh job of the same inputs per run, as `inout` kernels change theirs.
        let run = |args: &[ArgValue]| -> Result<()> {
            let mut job = Job::kernel(shared.clone(), kernel, items, args.to_vec())?;
            local_node.run(&mut job, &options)?;
            Ok(())
        };
        let mut group = criterion.benchmark_group(format!("throughput/{kernel}"));
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements(items));
        group.bench_function("cpu_jit", |b| b.iter(|| run(&args).expect("cpu run")));
        let secs = time_it(5, || run(&args))?;
        row.cpu_items_per_s = items as f64 / secs;
        let lowered = opencl.lower(&package, kernel)?;
        for device in opencl.devices() {
            let name = device.info().name.clone();
            let mut a = args.clone();
            let (block, lens): (Vec<u64>, Vec<usize>) = a
                .iter_mut()
                .map(|v| match v {
                    ArgValue::Scalar(s) => (s.to_bits(), 0),
                    ArgValue::Buffer(b) => (b.address(), b.len()),
                })
                .unzip();
            let given: Vec<offload::Given> = a
                .iter()
                .map(|v| match v {
                    ArgValue::Scalar(s) => offload::Given::Scalar(*s),
                    ArgValue::Buffer(b) => offload::Given::bytes(b.len() as u64),
                })
                .collect();
            let layout = offload::check(&lowered.spec, items, &given)?;
            // SAFETY: `a` lives for the whole benchmark of this device.
            let mut prepared = unsafe { device.prepare(Arc::clone(&lowered), &layout, &block)? };
            let mut run = || -> Result<()> {
                let mut block = block.clone();
                let mut sums = Vec::new();
                for (slot, arg) in lowered.spec.args.iter().enumerate() {
                    if let ir_packager::ArgKind::Buffer {
                        access: ir_packager::Access::Sum,
                        ..
                    } = arg.kind
                    {
                        let mut private = Buffer::zeroed(lens[slot]);
                        block[slot] = private.address();
                        sums.push(private);
                    }
                }
                // SAFETY: as above; sum slots point at private zeroed buffers.
                unsafe { prepared.run_packet(0, items, &block)? };
                Ok(())
            };
            group.bench_function(format!("opencl:{name}"), |b| {
                b.iter(|| run().expect("opencl run"))
            });
            let secs = time_it(5, &mut run)?;
            row.devices.push((name, items as f64 / secs));
        }
        group.finish();
        let mut group = criterion.benchmark_group(format!("build/{kernel}"));
        group.sampling_mode(SamplingMode::Flat);
        for device in opencl.devices() {
            let name = device.info().name.clone();
            let mut cold = || -> Result<()> {
                device.clear_programs();
                let lowered = opencl_backend::lower(&package, kernel)?;
                device.program(&lowered)?;
                Ok(())
            };
            group.bench_function(format!("cold:{name}"), |b| b.iter(|| cold().expect("cold")));
            let cold_secs = time_it(3, &mut cold)?;
            let warm = || -> Result<()> {
                let lowered = opencl.lower(&package, kernel)?;
                let (_, hit) = device.program(&lowered)?;
                anyhow::ensure!(hit, "program cache missed");
                Ok(())
            };
            warm()?; // fill the caches
            group.bench_function(format!("cached:{name}"), |b| {
                b.iter(|| warm().expect("warm"))
            });
            let warm_secs = time_it(101, warm)?;
            row.cold_build
                .push((name.clone(), Duration::from_secs_f64(cold_secs)));
            row.cached_build
                .push((name, Duration::from_secs_f64(warm_secs)));
        }
        group.finish();
        rows.push(row);
    }
    println!();
    println!("| kernel | items | CPU JIT (all cores) items/s | OpenCL device items/s | device/CPU | lower+build cold | cached |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        let (items, _) = job(row.kernel);
        if row.devices.is_empty() {
            println!(
                "| {} | {items} | {:.3e} | (no device) | | | |",
                row.kernel, row.cpu_items_per_s
            );
        }
        for (k, (name, rate)) in row.devices.iter().enumerate() {
            println!(
                "| {} | {items} | {:.3e} | {:.3e} ({name}) | {:.2} | {:.0} ms | {:.1} µs |",
                row.kernel,
                row.cpu_items_per_s,
                rate,
                rate / row.cpu_items_per_s,
                row.cold_build[k].1.as_secs_f64() * 1e3,
                row.cached_build[k].1.as_secs_f64() * 1e6,
            );
        }
    }
    criterion.final_summary();
    Ok(())
}
