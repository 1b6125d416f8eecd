//! PTX emission without a GPU: the module's entry points, parameter layout, address
//! spaces and panic handling, read from the PTX text LLVM's NVPTX back end prints. No
//! `ptxas` runs here (none is installed): these checks are structural, and the driver's
//! own PTX compiler is first met on a GPU machine (`scripts/gpu-check.sh`).

use std::path::{Path, PathBuf};

use ir_packager::{Manifest, Package};
use ptx_backend::{emit, Flavor, Ptx, PtxError, PtxTarget};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn package(dir: &str) -> Package {
    let dir = repo(dir);
    let source = ["kernel.rs", "kernel.c"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no kernel source in {}", dir.display()));
    let manifest =
        Manifest::parse(&std::fs::read_to_string(dir.join("manifest.toml")).expect("manifest"))
            .expect("manifest parses");
    ir_packager::package_source(&source, &manifest).expect("package")
}

const CUDA_90: PtxTarget = PtxTarget {
    flavor: Flavor::Cuda,
    sm: 90,
};

fn ptx(dir: &str, kernel: &str, target: PtxTarget) -> Ptx {
    emit(&package(dir), kernel, target, None).unwrap_or_else(|e| panic!("{dir} `{kernel}`: {e}"))
}

/// The parameter declarations of the entry, in order.
fn params(ptx: &Ptx) -> Vec<String> {
    let start = ptx
        .text
        .find(&format!(".entry {}(", ptx.entry))
        .unwrap_or_else(|| panic!("no .entry {} in\n{}", ptx.entry, ptx.text));
    let rest = &ptx.text[start..];
    let end = rest.find(')').expect("parameter list ends");
    rest[..end]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(".param"))
        .map(|l| l.trim_end_matches(',').to_string())
        .collect()
}

#[test]
fn saxpy_has_the_packet_entry_and_global_loads_and_stores() {
    let p = ptx("examples/saxpy", "saxpy", CUDA_90);
    assert!(p.text.contains(".target sm_90"), "{}", p.text);
    assert!(p.text.contains(".address_size 64"), "{}", p.text);
    assert!(
        p.text.contains(".visible .entry offload_saxpy("),
        "{}",
        p.text
    );
    assert_eq!(
        params(&p),
        [
            ".param .u64 offload_saxpy_param_0", // start
            ".param .u64 offload_saxpy_param_1", // end
            ".param .u64 .ptr .global .align 1 offload_saxpy_param_2", // status
            ".param .f32 offload_saxpy_param_3", // a
            ".param .u64 .ptr .global .align 1 offload_saxpy_param_4", // x
            ".param .u64 .ptr .global .align 1 offload_saxpy_param_5", // y
        ],
        "{}",
        p.text
    );
    // The buffers are read and written in the global state space, not through generic
    // addresses: the address spaces were inferred after inlining.
    assert!(p.text.contains("ld.global"), "{}", p.text);
    assert!(
        p.text.contains("st.global.f32") || p.text.contains("st.global.b32"),
        "{}",
        p.text
    );
    assert!(
        !p.text.contains("ld.f32") && !p.text.contains("st.f32"),
        "{}",
        p.text
    );
    // Item index from the grid, bounded by the packet's end; nothing is called.
    for sreg in ["%tid.x", "%ntid.x", "%ctaid.x"] {
        assert!(p.text.contains(sreg), "{sreg} missing:\n{}", p.text);
    }
    assert!(!p.text.contains("call"), "{}", p.text);
    assert!(!p.libdevice);
}

#[test]
fn the_opencl_flavor_spells_pointer_parameters_with_their_state_space() {
    let p = ptx(
        "examples/saxpy",
        "saxpy",
        PtxTarget {
            flavor: Flavor::OpenCl,
            sm: 90,
        },
    );
    // NVIDIA's OpenCL takes PTX in the independent texture mode, entries not `.visible`.
    assert!(
        p.text.contains(".target sm_90, texmode_independent"),
        "{}",
        p.text
    );
    assert!(p.text.contains("\n.entry offload_saxpy("), "{}", p.text);
    let params = params(&p);
    assert_eq!(params.len(), 6, "{params:?}");
    for k in [2, 4, 5] {
        assert!(params[k].contains(".ptr .global"), "{params:?}");
    }
}

#[test]
fn a_panic_stores_its_code_in_the_status_word_and_exits_the_thread() {
    let p = ptx("tests/conformance/special/panics", "panics", CUDA_90);
    // The status word is parameter 2; the code is stored there, then `exit`.
    assert!(
        p.text.contains("ld.param.b64") && p.text.contains("offload_panics_param_2"),
        "{}",
        p.text
    );
    assert!(p.text.contains("\texit;"), "{}", p.text);
    let status_store = p.text.lines().any(|l| {
        l.trim_start().starts_with("st.global.b32") || l.trim_start().starts_with("st.global.u32")
    });
    assert!(status_store, "{}", p.text);
    // Nothing of the CPU's unwinding survives.
    assert!(
        !p.text.contains("offload_panic\n") && !p.text.contains("call"),
        "{}",
        p.text
    );
    let safe = ptx("examples/saxpy", "saxpy", CUDA_90);
    assert!(!safe.text.contains("exit;"), "{}", safe.text);
}

#[test]
fn sum_kernels_loop_over_a_grid_stride_with_private_partials() {
    let p = ptx("examples/dot", "dot", CUDA_90);
    assert!(p.has_sums);
    // The stride is the whole grid: %nctaid.x * %ntid.x.
    assert!(p.text.contains("%nctaid.x"), "{}", p.text);
    assert!(
        p.text.contains("ld.global") && p.text.contains("st.global"),
        "{}",
        p.text
    );
    let plain = ptx("examples/saxpy", "saxpy", CUDA_90);
    assert!(!plain.has_sums && !plain.text.contains("%nctaid.x"));
}

#[test]
fn range_kernels_and_f64_kernels_emit() {
    let p = ptx("examples/raytrace", "raytrace", CUDA_90);
    assert!(p.text.contains(".entry offload_raytrace("), "{}", p.text);
    let m = ptx("examples/mandelbrot", "mandelbrot", CUDA_90);
    assert!(m.text.contains(".f64"), "{}", m.text);
}

#[test]
fn the_architecture_is_the_devices() {
    let p = ptx(
        "examples/saxpy",
        "saxpy",
        PtxTarget {
            flavor: Flavor::Cuda,
            sm: PtxTarget::DEFAULT_SM,
        },
    );
    assert!(p.text.contains(".target sm_60"), "{}", p.text);
}

#[test]
fn transcendental_math_without_libdevice_is_refused_by_name() {
    let error = emit(
        &package("tests/conformance/f32_libm"),
        "f32_libm",
        CUDA_90,
        None,
    )
    .expect_err("needs libdevice");
    assert!(matches!(error, PtxError::Unsupported { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("libdevice") && text.contains("f32_libm"),
        "{text}"
    );
}

/// Every kernel of the OpenCL conformance corpus either becomes PTX with the entry, or is
/// refused with an error that names the construct: the NVPTX back end never meets a
/// construct it would abort on (it aborts the process rather than return an error).
#[test]
fn every_corpus_kernel_emits_or_is_refused_by_name() {
    let root = repo("tests/conformance");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.toml").exists())
        .collect();
    dirs.extend(
        std::fs::read_dir(root.join("special"))
            .expect("special")
            .filter_map(|e| e.ok().map(|e| e.path())),
    );
    dirs.sort();
    assert!(dirs.len() >= 30, "{} cases", dirs.len());
    let mut emitted = 0;
    let mut refused = Vec::new();
    for dir in &dirs {
        let rel = dir
            .strip_prefix(repo(""))
            .unwrap_or(dir)
            .to_string_lossy()
            .into_owned();
        let pkg = package(&rel);
        for spec in &pkg.manifest().kernels {
            for flavor in [Flavor::Cuda, Flavor::OpenCl] {
                match emit(&pkg, &spec.name, PtxTarget { flavor, sm: 90 }, None) {
                    Ok(p) => {
                        assert!(p.text.contains(&format!(".entry {}(", p.entry)), "{rel}");
                        emitted += 1;
                    }
                    Err(e @ PtxError::Unsupported { .. }) => {
                        assert!(e.to_string().contains(&spec.name), "{e}");
                        refused.push(format!("{rel}: {e}"));
                    }
                    Err(e) => panic!("{rel} `{}`: {e}", spec.name),
                }
            }
        }
    }
    eprintln!("{emitted} emitted; refused:\n{}", refused.join("\n"));
    // Only math that needs libdevice (absent here) may be refused.
    assert!(
        refused.iter().all(|r| r.contains("libdevice")),
        "{}",
        refused.join("\n")
    );
    assert!(emitted >= 60, "{emitted}");
}
