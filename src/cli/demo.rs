//! `offload demo`: the main job. Renders the Mandelbrot set through the whole engine
//! (package, JIT, scheduler, local node) and writes a PNG.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use offload::{ArgValue, Buffer, Cluster, Job, Manifest, Options, ScalarValue};

use super::{describe_duration, plural, Cli};
use offload::files::{commit_outputs, StagedOutput};

/// The demo kernel, the same file as `examples/mandelbrot`, built into the binary.
const KERNEL_SOURCE: &str = include_str!("../../examples/mandelbrot/kernel.rs");
const KERNEL_MANIFEST: &str = include_str!("../../examples/mandelbrot/manifest.toml");

#[derive(Args)]
pub struct DemoArgs {
    /// Where to write the image.
    #[arg(short, long, default_value = "mandelbrot.png")]
    output: PathBuf,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1920)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 1080)]
    height: u32,
    /// Iteration limit per pixel.
    #[arg(long, default_value_t = 2000)]
    max_iter: u32,
}

pub fn demo(cli: &Cli, args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.width > 0 && args.height > 0,
        "the image needs a width and height of at least 1 pixel"
    );
    // PNG images are at most 2^31 - 1 pixels wide and high.
    const PNG_MAX: u32 = i32::MAX as u32;
    anyhow::ensure!(
        args.width <= PNG_MAX && args.height <= PNG_MAX,
        "a PNG image is at most {PNG_MAX} pixels wide and high"
    );
    let items = u64::from(args.width) * u64::from(args.height);
    let counts_bytes = items
        .checked_mul(4)
        .context("the image is too large to count its pixels' iterations")?;
    offload::check_memory(&[
        ("the image's iteration counts".to_string(), counts_bytes),
        ("the image's pixels".to_string(), items.saturating_mul(3)),
    ])?;
    // Found missing or read-only before the render, not after.
    let output = StagedOutput::new(&args.output, "the image")?;
    // The demo's kernel is offload's own source, packaged by this process (LLVM is loaded
    // already): it compiles here, without the helper that package files get.
    let engine = cli.engine()?;
    let cores = node_jit::available_threads();
    println!(
        "offload demo: Mandelbrot {}x{}, {} iterations max",
        args.width, args.height, args.max_iter
    );
    println!(
        "devices: local node, cpu {} with {cores} cores",
        engine.host()
    );

    let started = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix("offload-demo-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let source = scratch.path().join("mandelbrot.rs");
    std::fs::write(&source, KERNEL_SOURCE).context("cannot write the demo kernel")?;
    let manifest = Manifest::parse(KERNEL_MANIFEST).context("demo manifest")?;
    let package = offload::package_source(&source, &manifest)?;
    println!(
        "package: {} ({} bytes of bitcode) in {:.0} ms",
        &package.hash().to_hex()[..16],
        package.bitcode().len(),
        started.elapsed().as_secs_f64() * 1e3
    );

    // Frame the classic view: the whole set, centred, with square pixels.
    let step = 3.2
        / (u64::from(args.width)
            .min(u64::from(args.height) * 16 / 9)
            .max(1) as f64);
    let x0 = -2.2;
    let y0 = -step * f64::from(args.height) / 2.0;
    let values = vec![
        ArgValue::Scalar(ScalarValue::U32(args.width)),
        ArgValue::Scalar(ScalarValue::U32(args.max_iter)),
        ArgValue::Scalar(ScalarValue::F64(x0)),
        ArgValue::Scalar(ScalarValue::F64(y0)),
        ArgValue::Scalar(ScalarValue::F64(step)),
        ArgValue::Buffer(
            usize::try_from(counts_bytes)
                .ok()
                .and_then(Buffer::try_zeroed_shared)
                .context("cannot allocate the image's iteration counts: out of memory")?,
        ),
    ];
    let mut job = Job::kernel(std::sync::Arc::new(package), "mandelbrot", items, values)?;
    // In isolated workers, as `offload run` runs kernels.
    let options = Options::default().isolated(super::offload_program()?);
    let report = Cluster::from_engine(engine).run(&mut job, &options)?;
    if let Some(origin) = &report.code_origin {
        println!(
            "kernel: {} in {}",
            origin.describe(),
            describe_duration(report.compile_time)
        );
    }
    println!(
        "run: {} in {} on {}, {} ({:.1} Mpixel/s)",
        plural(items, "pixel"),
        plural(report.packets, "packet"),
        super::describe_workers(&report),
        describe_duration(report.run_time),
        items as f64 / report.run_time.as_secs_f64().max(1e-9) / 1e6
    );
    let iters = job
        .buffer("iters")
        .context("the kernel's output buffer is missing")?;
    let png = encode_png(args.width, args.height, args.max_iter, iters)?;
    commit_outputs(vec![(output, png.as_slice())])?;
    println!("wrote {}", args.output.display());
    Ok(())
}

/// Colours escape counts with a smooth palette (points inside the set are black) and
/// encodes the picture as PNG.
fn encode_png(width: u32, height: u32, max_iter: u32, iters: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut rgb = Vec::with_capacity(iters.len() / 4 * 3);
    for chunk in iters.chunks_exact(4) {
        let n = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if n >= max_iter {
            rgb.extend_from_slice(&[0, 0, 0]);
            continue;
        }
        let t = (f64::from(n) / 64.0).fract();
        let channel =
            |phase: f64| (127.5 * (1.0 + (std::f64::consts::TAU * (t + phase)).cos())) as u8;
        rgb.extend_from_slice(&[channel(0.0), channel(0.33), channel(0.67)]);
    }
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("cannot encode the image")?;
    writer
        .write_image_data(&rgb)
        .context("cannot encode the image")?;
    writer.finish().context("cannot encode the image")?;
    Ok(png)
}
