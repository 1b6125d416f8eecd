//! Lowers a kernel source file and builds it on every OpenCL device:
//! `cargo run -p opencl-backend --example lower_source -- SOURCE MANIFEST KERNEL`.

use std::path::Path;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, source, manifest, kernel] = args.as_slice() else {
        return Err("usage: lower_source SOURCE MANIFEST KERNEL".into());
    };
    let manifest = ir_packager::Manifest::parse(&std::fs::read_to_string(manifest)?)?;
    let package = ir_packager::package_source(Path::new(source), &manifest)?;
    let opencl = opencl_backend::OpenCl::new();
    let lowered = opencl.lower(&package, kernel)?;
    println!("{}", lowered.source);
    for device in opencl.devices() {
        let (program, _) = device.program(&Arc::clone(&lowered))?;
        eprintln!(
            "built on {} in {:?}",
            device.info().name,
            program.build_time
        );
    }
    Ok(())
}
