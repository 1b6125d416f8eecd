//! Prints the PTX of a kernel: `cargo run -p ptx-backend --example emit_ptx -- DIR KERNEL
//! [cuda|opencl] [SM]`, where DIR holds `kernel.rs` or `kernel.c` and `manifest.toml`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, kernel, rest @ ..] = args.as_slice() else {
        return Err("usage: emit_ptx DIR KERNEL [cuda|opencl] [SM]".into());
    };
    let dir = PathBuf::from(dir);
    let source = ["kernel.rs", "kernel.c"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .ok_or("no kernel.rs or kernel.c")?;
    let manifest =
        ir_packager::Manifest::parse(&std::fs::read_to_string(dir.join("manifest.toml"))?)?;
    let package = ir_packager::package_source(&source, &manifest)?;
    let flavor = match rest.first().map(String::as_str) {
        Some("opencl") => ptx_backend::Flavor::OpenCl,
        _ => ptx_backend::Flavor::Cuda,
    };
    let sm = rest.get(1).map_or(Ok(90), |s| s.parse())?;
    let target = ptx_backend::PtxTarget { flavor, sm };
    let libdevice = ptx_backend::find_libdevice();
    let ptx = ptx_backend::emit(&package, kernel, target, libdevice.as_deref())?;
    print!("{}", ptx.text);
    Ok(())
}
