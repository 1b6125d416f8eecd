//! OpenCL conformance: every kernel of `tests/conformance/` and every example item kernel
//! runs on the CPU JIT and on every OpenCL device found, and the results are compared:
//! integers bit-exact, floats within the case's ULP bound.
//!
//! Why floats may differ at all: the lowering turns `llvm.fmuladd` (C's `a*b+c` under
//! clang's default `-ffp-contract=on`) into `fma`, while the CPU JIT fuses it only where
//! the CPU has FMA; OpenCL's `sin`, `exp`, `pow`, ... are allowed 4-16 ULP where the CPU
//! libm is within 1; and `sum` buffers of floats are added in a different order
//! (per-work-item partials). Cases without those constructs use a bound of 0, and
//! `-cl-fp32-correctly-rounded-divide-sqrt` keeps `/` and `sqrt` exact.
//!
//! Under CI (`CI=true`) an OpenCL device (PoCL) must be present: the tests fail without
//! one. Elsewhere they skip with a printed reason.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use offload::DeviceChoice;
use offload::{
    package_source, Access, ArgKind, ArgValue, Buffer, Config, Engine, KernelSpec, Manifest,
    Options, Package, ScalarType, ScalarValue, Shape,
};
use opencl_backend::{LowerError, OpenCl};

use crate::common::{offload, offload_ok, repo_path, run_values};

use crate::references::logcrunch_ref;

/// The OpenCL devices, or `None` (with a printed reason) outside CI when there are none.
fn opencl() -> Option<Arc<OpenCl>> {
    static OPENCL: OnceLock<Arc<OpenCl>> = OnceLock::new();
    let opencl = OPENCL.get_or_init(|| Arc::new(OpenCl::new()));
    if !opencl.devices().is_empty() {
        return Some(Arc::clone(opencl));
    }
    let note = opencl.note().unwrap_or("no OpenCL device");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true requires an OpenCL device (install pocl-opencl-icd): {note}");
    }
    eprintln!("skipping OpenCL conformance: {note}");
    None
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("offload-conformance-{}", std::process::id()));
        Engine::new(Config::default().cache_dir(dir)).expect("engine")
    })
}

/// How a case is run: `tests/conformance/<name>/case.toml`.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    source: PathBuf,
    manifest: PathBuf,
    items: u64,
    /// Float tolerance in units in the last place.
    ulp: u64,
    /// `edges` (NaN, infinities, zeros, bounds mixed in) or `plain` (moderate values).
    floats: String,
    /// Length in elements of whole (`[]`) buffers.
    whole_len: usize,
    scalars: Vec<(String, String)>,
}

fn read_case(dir: &Path) -> Case {
    let name = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let source = ["kernel.rs", "kernel.c"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{} has no kernel.rs or kernel.c", dir.display()));
    let mut case = Case {
        name,
        source,
        manifest: dir.join("manifest.toml"),
        items: 1000,
        ulp: 0,
        floats: "edges".into(),
        whole_len: 64,
        scalars: Vec::new(),
    };
    let text = std::fs::read_to_string(dir.join("case.toml")).unwrap_or_default();
    let mut in_scalars = false;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if line.starts_with('[') {
            in_scalars = line == "[scalars]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
        if in_scalars {
            case.scalars.push((key.to_string(), value.to_string()));
            continue;
        }
        match key {
            "items" => case.items = value.parse().expect("items"),
            "ulp" => case.ulp = value.parse().expect("ulp"),
            "floats" => case.floats = value.to_string(),
            "whole_len" => case.whole_len = value.parse().expect("whole_len"),
            other => panic!("{}: unknown case key `{other}`", case.name),
        }
    }
    case
}

fn corpus() -> Vec<Case> {
    let root = repo_path("tests/conformance");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/conformance")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.toml").exists())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| read_case(d)).collect()
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const F64_EDGES: &[f64] = &[
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    -0.5,
    1.5,
    2.5,
    -2.5,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    5e-324,
    2147483647.0,
    2147483648.0,
    -2147483648.0,
    -2147483649.0,
    4294967295.0,
    4294967296.0,
    9.223372036854776e18,
    -9.223372036854776e18,
    1.8446744073709552e19,
    255.0,
    256.0,
    -1e30,
    1e30,
    3.4028235e38,
];

fn gen_bytes(rng: &mut Rng, elem: ScalarType, count: usize, floats: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * elem.size());
    for _ in 0..count {
        let r = rng.next();
        let pick = r % 8;
        let int = match pick {
            0 | 1 => {
                const EDGES: &[u64] = &[
                    0,
                    1,
                    u64::MAX,
                    0x7fff_ffff,
                    0x8000_0000,
                    0xffff_ffff,
                    0x8000_0000_0000_0000,
                    0x7fff_ffff_ffff_ffff,
                    0xff,
                    0x80,
                    0x7f,
                    0xffff,
                    0x8000,
                    31,
                    32,
                    33,
                    63,
                    64,
                ];
                EDGES[(r >> 8) as usize % EDGES.len()]
            }
            2 | 3 => ((r >> 8) % 41).wrapping_sub(20),
            _ => rng.next(),
        };
        let float = if floats == "plain" {
            ((r >> 11) as f64 / (1u64 << 53) as f64) * 20.0 - 10.0
        } else {
            match pick {
                0 | 1 => F64_EDGES[(r >> 8) as usize % F64_EDGES.len()],
                2 => ((r >> 8) % 41) as f64 - 20.0,
                _ => ((r >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2000.0,
            }
        };
        match elem {
            ScalarType::U8 => out.push(int as u8),
            ScalarType::I32 | ScalarType::U32 => out.extend_from_slice(&(int as u32).to_le_bytes()),
            ScalarType::I64 | ScalarType::U64 => out.extend_from_slice(&int.to_le_bytes()),
            ScalarType::F32 => out.extend_from_slice(&(float as f32).to_le_bytes()),
            ScalarType::F64 => out.extend_from_slice(&float.to_le_bytes()),
        }
    }
    out
}

/// The job's argument values: scalars from the case, buffers generated.
fn make_args(case: &Case, spec: &KernelSpec) -> Vec<ArgValue> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ case.items);
    spec.args
        .iter()
        .map(|arg| match arg.kind {
            ArgKind::Scalar(ty) => {
                let text = case
                    .scalars
                    .iter()
                    .find(|(n, _)| *n == arg.name)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_else(|| panic!("{}: no value for scalar `{}`", case.name, arg.name));
                ArgValue::Scalar(ScalarValue::parse(text, ty).expect("scalar"))
            }
            ArgKind::Buffer {
                access,
                elem,
                ref shape,
                ..
            } => {
                // The conformance kernels' shapes are constants.
                let constant = |e: &offload::Expr| e.constant().expect("a constant shape");
                let count = match shape {
                    Shape::PerItem(k) => (constant(k) * case.items) as usize,
                    Shape::Whole => case.whole_len,
                    Shape::Fixed(n) => constant(n) as usize,
                };
                if access == Access::Sum {
                    ArgValue::Buffer(Buffer::zeroed(count * elem.size()))
                } else {
                    ArgValue::Buffer(Buffer::from_bytes(&gen_bytes(
                        &mut rng,
                        elem,
                        count,
                        &case.floats,
                    )))
                }
            }
        })
        .collect()
}

fn run_cpu(package: &Package, spec: &KernelSpec, items: u64, args: &[ArgValue]) -> Vec<ArgValue> {
    let mut args = args.to_vec();
    run_values(
        engine(),
        package,
        &spec.name,
        items,
        &mut args,
        &Options::default().threads(2),
    )
    .unwrap_or_else(|e| panic!("CPU run of `{}` failed: {e}", spec.name));
    args
}

/// Runs the job on one OpenCL device in three packets of uneven size, so the packet
/// offset of split buffers is exercised.
fn run_device(
    opencl: &OpenCl,
    device: &Arc<opencl_backend::Device>,
    package: &Package,
    spec: &KernelSpec,
    items: u64,
    args: &[ArgValue],
) -> Result<Vec<ArgValue>, String> {
    let mut args = args.to_vec();
    let lowered = opencl
        .lower(package, &spec.name)
        .map_err(|e| e.to_string())?;
    let (mut block, lens): (Vec<u64>, Vec<usize>) = args
        .iter_mut()
        .map(|a| match a {
            ArgValue::Scalar(v) => (v.to_bits(), 0),
            ArgValue::Buffer(b) => (b.address(), b.len()),
        })
        .unzip();
    let given: Vec<offload::Given> = args
        .iter()
        .map(|a| match a {
            ArgValue::Scalar(v) => offload::Given::Scalar(*v),
            ArgValue::Buffer(b) => offload::Given::bytes(b.len() as u64),
        })
        .collect();
    let layout = offload::check(spec, items, &given).map_err(|e| e.to_string())?;
    // SAFETY: the buffers are live and sized by the manifest for `items`.
    let mut kernel =
        unsafe { device.prepare(lowered, &layout, &block) }.map_err(|e| e.to_string())?;
    let cut1 = items / 3;
    let cut2 = (cut1 + 1).min(items);
    for (start, end) in [(0, cut1), (cut1, cut2), (cut2, items)] {
        let mut partials = Vec::new();
        for (slot, arg) in spec.args.iter().enumerate() {
            if let ArgKind::Buffer {
                access: Access::Sum,
                ..
            } = arg.kind
            {
                let mut private = Buffer::zeroed(lens[slot]);
                block[slot] = private.address();
                partials.push((slot, private));
            }
        }
        // SAFETY: as above; sum slots point at packet-private zeroed buffers.
        unsafe { kernel.run_packet(start, end, &block) }.map_err(|e| e.to_string())?;
        for (slot, partial) in partials {
            if let (ArgValue::Buffer(total), ArgKind::Buffer { elem, .. }) =
                (&mut args[slot], &spec.args[slot].kind)
            {
                let mut bytes = total.as_bytes().to_vec();
                elem.add_into(&mut bytes, partial.as_bytes());
                *total = Buffer::from_bytes(&bytes);
            }
        }
    }
    Ok(args)
}

fn ulp_distance_f32(a: f32, b: f32) -> u64 {
    if a.is_nan() && b.is_nan() || a == b {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u64::MAX;
    }
    let key = |x: f32| {
        let bits = x.to_bits() as i32;
        if bits < 0 {
            i64::from(i32::MIN) - i64::from(bits)
        } else {
            i64::from(bits)
        }
    };
    key(a).abs_diff(key(b))
}

fn ulp_distance_f64(a: f64, b: f64) -> u64 {
    if a.is_nan() && b.is_nan() || a == b {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u64::MAX;
    }
    let key = |x: f64| {
        let bits = x.to_bits() as i64;
        if bits < 0 {
            i128::from(i64::MIN) - i128::from(bits)
        } else {
            i128::from(bits)
        }
    };
    u64::try_from(key(a).abs_diff(key(b))).unwrap_or(u64::MAX)
}

/// Compares the output buffers; returns the first few mismatches in words.
fn compare(spec: &KernelSpec, cpu: &[ArgValue], dev: &[ArgValue], ulp: u64) -> Vec<String> {
    let mut problems = Vec::new();
    for (slot, arg) in spec.args.iter().enumerate() {
        let ArgKind::Buffer { access, elem, .. } = arg.kind.clone() else {
            continue;
        };
        if access == Access::In {
            continue;
        }
        let (ArgValue::Buffer(c), ArgValue::Buffer(d)) = (&cpu[slot], &dev[slot]) else {
            continue;
        };
        let size = elem.size();
        for (k, (x, y)) in c
            .as_bytes()
            .chunks_exact(size)
            .zip(d.as_bytes().chunks_exact(size))
            .enumerate()
        {
            let bad = match elem {
                ScalarType::F32 => {
                    let (x, y) = (
                        f32::from_le_bytes(x.try_into().unwrap_or_default()),
                        f32::from_le_bytes(y.try_into().unwrap_or_default()),
                    );
                    (ulp_distance_f32(x, y) > ulp).then(|| format!("{x:e} (cpu) vs {y:e} (opencl)"))
                }
                ScalarType::F64 => {
                    let (x, y) = (
                        f64::from_le_bytes(x.try_into().unwrap_or_default()),
                        f64::from_le_bytes(y.try_into().unwrap_or_default()),
                    );
                    (ulp_distance_f64(x, y) > ulp).then(|| format!("{x:e} (cpu) vs {y:e} (opencl)"))
                }
                _ => (x != y).then(|| format!("{x:02x?} (cpu) vs {y:02x?} (opencl)")),
            };
            if let Some(what) = bad {
                problems.push(format!("`{}`[{k}]: {what}", arg.name));
                if problems.len() >= 5 {
                    return problems;
                }
            }
        }
    }
    problems
}

/// Runs `case` on the CPU and every device; returns failures in words.
fn check_case(opencl: &OpenCl, case: &Case) -> Vec<String> {
    let manifest = Manifest::parse(&std::fs::read_to_string(&case.manifest).expect("manifest"))
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let package = package_source(&case.source, &manifest)
        .unwrap_or_else(|e| panic!("{}: cannot package: {e}", case.name));
    let mut failures = Vec::new();
    for spec in manifest
        .kernels
        .iter()
        .filter(|k| k.kind == offload::KernelKind::Item)
    {
        let args = make_args(case, spec);
        let cpu = run_cpu(&package, spec, case.items, &args);
        for device in opencl.devices() {
            let who = format!("{} `{}` on {}", case.name, spec.name, device.info().name);
            match run_device(opencl, device, &package, spec, case.items, &args) {
                Ok(out) => {
                    let problems = compare(spec, &cpu, &out, case.ulp);
                    if !problems.is_empty() {
                        failures.push(format!(
                            "{who} (ulp bound {}):\n    {}",
                            case.ulp,
                            problems.join("\n    ")
                        ));
                    }
                }
                Err(e) => failures.push(format!("{who}: {e}")),
            }
        }
    }
    failures
}

#[test]
fn corpus_matches_cpu_on_every_opencl_device() {
    let Some(opencl) = opencl() else { return };
    let cases = corpus();
    assert!(
        cases.len() >= 25,
        "the corpus has only {} cases",
        cases.len()
    );
    let failures: Vec<String> = cases.iter().flat_map(|c| check_case(&opencl, c)).collect();
    assert!(
        failures.is_empty(),
        "{} conformance failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn example_item_kernels_match_cpu_on_every_opencl_device() {
    let Some(opencl) = opencl() else { return };
    let examples: &[(&str, &str, &str, u64)] = &[
        // (example, source, float inputs, ULP bound and why)
        ("saxpy", "kernel.rs", "plain", 0),
        ("saxpy", "kernel.c", "plain", 1), // clang's fmuladd: fused on either side or not
        ("mandelbrot", "kernel.rs", "plain", 0),
        ("nbody", "kernel.rs", "plain", 4),
        ("nbody", "kernel.c", "plain", 64), // fmuladd chains over all bodies
        ("dot", "kernel.rs", "plain", 4096), // per-work-item partial sums: another order
    ];
    let mut failures = Vec::new();
    for &(example, file, floats, ulp) in examples {
        let dir = repo_path(&format!("examples/{example}"));
        let scalars = match example {
            "saxpy" => vec![("a", "2.5")],
            "mandelbrot" => vec![
                ("width", "64"),
                ("max_iter", "200"),
                ("x0", "-2.0"),
                ("y0", "-1.25"),
                ("step", "0.04"),
            ],
            "nbody" => vec![("n", "64"), ("dt", "0.01"), ("softening", "0.1")],
            _ => vec![],
        };
        let case = Case {
            name: format!("examples/{example}/{file}"),
            source: dir.join(file),
            manifest: dir.join("manifest.toml"),
            items: if example == "nbody" { 64 } else { 4000 },
            ulp,
            floats: floats.into(),
            whole_len: 256,
            scalars: scalars
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        failures.extend(check_case(&opencl, &case));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Range kernels run as one work-item per packet: raytrace (generic scene) and logcrunch
/// (a generated access log, so every chunk parses), compared with the CPU JIT.
#[test]
fn range_kernels_match_cpu_on_every_opencl_device() {
    let Some(opencl) = opencl() else { return };
    let dir = repo_path("examples/raytrace");
    let raytrace = Case {
        name: "examples/raytrace/kernel.rs".into(),
        source: dir.join("kernel.rs"),
        manifest: dir.join("manifest.toml"),
        items: 32 * 20,
        ulp: 0,
        floats: "plain".into(),
        whole_len: 4 + 8 * 4,
        scalars: [("width", "32"), ("height", "20"), ("nspheres", "4")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    };
    let mut failures = check_case(&opencl, &raytrace);
    let dir = repo_path("examples/logcrunch");
    let manifest =
        Manifest::parse(&std::fs::read_to_string(dir.join("manifest.toml")).expect("manifest"))
            .expect("manifest");
    let package = package_source(&dir.join("kernel.rs"), &manifest).expect("package");
    let spec = manifest.kernel("logcrunch").expect("spec").clone();
    let log = logcrunch_ref::generate_log(5_000, 3);
    let chunks = 97u64;
    let bounds = logcrunch_ref::chunk_bounds(&log, chunks as usize);
    let bounds_bytes: Vec<u8> = bounds.iter().flat_map(|b| b.to_le_bytes()).collect();
    let args = vec![
        ArgValue::Buffer(Buffer::from_bytes(&log)),
        ArgValue::Scalar(ScalarValue::U64(log.len() as u64)),
        ArgValue::Buffer(Buffer::from_bytes(&bounds_bytes)),
        ArgValue::Scalar(ScalarValue::U64(bounds.len() as u64)),
        ArgValue::Buffer(Buffer::zeroed(6 * 8)),
    ];
    let cpu = run_cpu(&package, &spec, chunks, &args);
    for device in opencl.devices() {
        match run_device(&opencl, device, &package, &spec, chunks, &args) {
            Ok(out) => failures.extend(compare(&spec, &cpu, &out, 0)),
            Err(e) => failures.push(format!("logcrunch on {}: {e}", device.info().name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn special_package(name: &str) -> Package {
    let dir = repo_path(&format!("tests/conformance/special/{name}"));
    let source = ["kernel.rs", "kernel.c"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .expect("source");
    let manifest =
        Manifest::parse(&std::fs::read_to_string(dir.join("manifest.toml")).expect("manifest"))
            .expect("manifest");
    package_source(&source, &manifest).expect("package")
}

#[test]
fn unsupported_construct_is_refused_by_name_and_runs_on_cpu() {
    // Lowering needs no device: this part runs everywhere.
    let package = special_package("mulhi_u128");
    let error = opencl_backend::lower(&package, "mulhi_u128").expect_err("i128 must be refused");
    assert!(matches!(error, LowerError::Unsupported { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("kernel `mulhi_u128`"), "{message}");
    assert!(message.contains("i128"), "{message}");
    assert!(message.contains("runs on the CPU only"), "{message}");
    // The CPU still runs it, and `auto` falls back to the CPU alone.
    let spec = package
        .manifest()
        .kernel("mulhi_u128")
        .expect("spec")
        .clone();
    let a: Vec<u8> = (0..100u64)
        .flat_map(|i| (i << 40 | 0xfff).to_le_bytes())
        .collect();
    let make = || {
        vec![
            ArgValue::Buffer(Buffer::from_bytes(&a)),
            ArgValue::Buffer(Buffer::zeroed(800)),
        ]
    };
    let mut cpu = make();
    run_values(
        engine(),
        &package,
        "mulhi_u128",
        100,
        &mut cpu,
        &Options::default(),
    )
    .expect("cpu");
    let mut auto = make();
    let options = Options::default().device(DeviceChoice::Auto);
    let options = match opencl() {
        Some(o) => options.opencl(o),
        None => options,
    };
    let report =
        run_values(engine(), &package, "mulhi_u128", 100, &mut auto, &options).expect("auto");
    assert_eq!(report.opencl_packets, 0);
    assert!(report.opencl_note.is_some());
    let (ArgValue::Buffer(x), ArgValue::Buffer(y)) = (&cpu[1], &auto[1]) else {
        unreachable!()
    };
    assert_eq!(x.as_bytes(), y.as_bytes());
    let expected: Vec<u8> = (0..100u64)
        .flat_map(|i| {
            ((((i << 40 | 0xfff) as u128 * 0x1234_5678_9abc_def1u128) >> 64) as u64).to_le_bytes()
        })
        .collect();
    assert_eq!(x.as_bytes(), &expected[..]);
    let _ = spec;
}

#[test]
fn device_panic_is_reported_like_the_cpu() {
    let Some(opencl) = opencl() else { return };
    let package = special_package("panics");
    let spec = package.manifest().kernel("panics").expect("spec").clone();
    let table: Vec<u8> = (0..8u32).flat_map(|v| v.to_le_bytes()).collect();
    let args = vec![
        ArgValue::Buffer(Buffer::from_bytes(&table)),
        ArgValue::Buffer(Buffer::zeroed(4 * 100)),
    ];
    let mut cpu = args.clone();
    let cpu_error = run_values(
        engine(),
        &package,
        "panics",
        100,
        &mut cpu,
        &Options::default(),
    )
    .expect_err("cpu panics");
    assert!(
        cpu_error.to_string().contains("index out of bounds"),
        "{cpu_error}"
    );
    for device in opencl.devices() {
        let error =
            run_device(&opencl, device, &package, &spec, 100, &args).expect_err("device panics");
        assert!(
            error.contains("kernel `panics` panicked") && error.contains("index out of bounds"),
            "{error}"
        );
    }
}

#[test]
fn auto_uses_cpu_and_opencl_with_output_identical_to_cpu() {
    let Some(_) = opencl() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let pkg = crate::common::package(
        &repo_path("examples/mandelbrot/kernel.rs"),
        &repo_path("examples/mandelbrot/manifest.toml"),
        dir.path(),
        "mandelbrot",
    );
    let run = |device: &str| {
        let out = dir.path().join(format!("{device}.bin"));
        let output = offload_ok([
            "-v".as_ref(),
            "run".as_ref(),
            pkg.as_os_str(),
            "--kernel".as_ref(),
            "mandelbrot".as_ref(),
            "--items".as_ref(),
            "1000000".as_ref(),
            "--arg".as_ref(),
            "width=1000".as_ref(),
            "--arg".as_ref(),
            "max_iter=300".as_ref(),
            "--arg".as_ref(),
            "x0=-2.0".as_ref(),
            "--arg".as_ref(),
            "y0=-1.0".as_ref(),
            "--arg".as_ref(),
            "step=0.002".as_ref(),
            "--out".as_ref(),
            format!("iters={}", out.display()).as_ref(),
            "--device".as_ref(),
            device.as_ref(),
        ]);
        (
            std::fs::read(&out).expect("output"),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (cpu, _) = run("cpu");
    let (auto, log) = run("auto");
    assert!(cpu == auto, "--device auto changed the output");
    // OpenCL alone: no CPU threads at all (this once divided by zero sizing packets).
    let (opencl_only, _) = run("opencl");
    assert!(cpu == opencl_only, "--device opencl changed the output");
    let line = log
        .lines()
        .find(|l| l.starts_with("packets:"))
        .unwrap_or_else(|| panic!("no packet line in:\n{log}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        numbers.len() == 2 && numbers[0] > 0 && numbers[1] > 0,
        "auto did not use both kinds: {line}"
    );
}

#[test]
fn lower_command_prints_opencl_c_and_names_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pkg = crate::common::package(
        &repo_path("examples/saxpy/kernel.rs"),
        &repo_path("examples/saxpy/manifest.toml"),
        dir.path(),
        "saxpy",
    );
    let out = offload_ok([
        "lower".as_ref(),
        pkg.as_os_str(),
        "--kernel".as_ref(),
        "saxpy".as_ref(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("__kernel void offload_saxpy("), "{text}");
    assert!(text.contains("get_global_id(0)"), "{text}");
    let src = repo_path("tests/conformance/special/mulhi_u128");
    let pkg = crate::common::package(
        &src.join("kernel.c"),
        &src.join("manifest.toml"),
        dir.path(),
        "mulhi",
    );
    let out = offload([
        "lower".as_ref(),
        pkg.as_os_str(),
        "--kernel".as_ref(),
        "mulhi_u128".as_ref(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("i128") && err.contains("mulhi_u128"), "{err}");
}

#[test]
fn devices_lists_opencl_or_says_there_is_none() {
    let out = offload_ok(["devices"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cpu:"), "{text}");
    assert!(
        text.contains("opencl0:") || text.contains("opencl: none"),
        "{text}"
    );
}
