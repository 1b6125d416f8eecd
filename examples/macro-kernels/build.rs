//! Compiles `src/kernels.rs` to an offload package in OUT_DIR; `#[offload::kernel]` embeds it.

fn main() -> Result<(), offload_build::BuildError> {
    offload_build::package("src/kernels.rs")?;
    Ok(())
}
