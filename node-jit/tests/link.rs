//! node-jit links a kernel library with only the libraries its object calls into, and
//! kernels that need libm or libgcc still load and run.

use ir_packager::Manifest;
use node_jit::{Config, Engine, HostTarget, LinkNeeds, OptLevel, Tuning};

/// `out[i] = f(x[i])` for three bodies of `f`: plain arithmetic, a libm call, and
/// `powi`, which x86 code generation turns into libgcc's `__powidf2`.
const KERNELS: [(&str, &str, LinkNeeds); 3] = [
    (
        "plain",
        "%y = fmul double %x, 2.0",
        LinkNeeds {
            libm: false,
            libgcc: false,
        },
    ),
    (
        "libm",
        "%y = call double @sin(double %x)",
        LinkNeeds {
            libm: true,
            libgcc: false,
        },
    ),
    (
        "libgcc",
        "%y = call double @llvm.powi.f64.i32(double %x, i32 %n)",
        LinkNeeds {
            libm: false,
            libgcc: true,
        },
    ),
];

fn kernel_ir(name: &str, body: &str) -> String {
    format!(
        r#"
define void @{name}(i64 %i, i32 %n, ptr %in, ptr %out) {{
  %src = getelementptr inbounds double, ptr %in, i64 %i
  %x = load double, ptr %src, align 8
  {body}
  %dst = getelementptr inbounds double, ptr %out, i64 %i
  store double %y, ptr %dst, align 8
  ret void
}}
declare double @sin(double)
declare double @llvm.powi.f64.i32(double, i32)
"#
    )
}

#[test]
fn libraries_are_linked_only_when_the_object_calls_them() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine =
        Engine::new(Config::default().cache_dir(dir.path().join("cache"))).expect("engine");
    let x: Vec<f64> = (0..64).map(|k| 0.25 + f64::from(k) / 16.0).collect();
    for (name, body, wanted) in KERNELS {
        let source = dir.path().join(format!("{name}.ll"));
        std::fs::write(&source, kernel_ir(name, body)).expect("write the kernel");
        let manifest = Manifest::parse(&format!(
            "[[kernel]]\nname = \"{name}\"\nkind = \"item\"\nargs = [\"n: i32\", \"in: in f64[1]\", \"out: out f64[1]\"]\n"
        ))
        .expect("manifest");
        let package = ir_packager::package_source(&source, &manifest).expect("package");
        let phases = node_jit::compile_phases(
            &package,
            name,
            &HostTarget::detect(),
            OptLevel::O3,
            &Tuning::default(),
        )
        .expect("code generation");
        assert_eq!(node_jit::link_needs(&phases.object), wanted, "{name}");

        let kernel = engine.compile(&package, name).expect("compile and link");
        let mut out = vec![0.0f64; x.len()];
        let args = [3u64, x.as_ptr() as u64, out.as_mut_ptr() as u64];
        // SAFETY: one f64 in and out per item.
        unsafe { kernel.run_packet(0, x.len() as u64, &args) }.expect("no panic");
        for (k, (&xi, &yi)) in x.iter().zip(&out).enumerate() {
            let want = match name {
                "plain" => xi * 2.0,
                "libm" => xi.sin(),
                _ => xi * xi * xi,
            };
            assert!(
                (yi - want).abs() <= 1e-12 * want.abs(),
                "{name}[{k}]: {yi} vs {want}"
            );
        }
    }
}

#[test]
fn an_unreadable_object_needs_everything() {
    assert_eq!(
        node_jit::link_needs(b"not an object"),
        LinkNeeds {
            libm: true,
            libgcc: true,
        }
    );
}
