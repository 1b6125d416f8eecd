//! `tune`: items/s of each example item kernel (saxpy, mandelbrot, nbody, dot) with the
//! profile `offload tune` would store on this machine against the untuned default, side
//! by side in one run.
//!
//! Each kernel is tuned first (in a temporary cache, so no stored profile is touched),
//! then criterion times one local run of the job with the default settings and with
//! the tuned ones. `cargo bench --bench tune`; results in `docs/tune.md`.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use offload::tune::{synthetic_args, tune_kernel, Settings, TuneOptions};
use offload::{package_source, Cluster, Config, Engine, Job, Manifest, Options, ScalarValue};

/// Scalar arguments by name.
type Scalars = Vec<(String, ScalarValue)>;

/// (example, items, scalars): the same inputs as `offload tune`'s reference set.
fn cases() -> Vec<(&'static str, u64, Scalars)> {
    let width = 256u32;
    vec![
        ("saxpy", 1 << 20, vec![("a".into(), ScalarValue::F32(2.0))]),
        (
            "mandelbrot",
            u64::from(width * width),
            vec![
                ("width".into(), ScalarValue::U32(width)),
                ("max_iter".into(), ScalarValue::U32(256)),
                ("x0".into(), ScalarValue::F64(-2.0)),
                ("y0".into(), ScalarValue::F64(-1.5)),
                ("step".into(), ScalarValue::F64(3.0 / f64::from(width))),
            ],
        ),
        (
            "nbody",
            2048,
            vec![
                ("n".into(), ScalarValue::U32(2048)),
                ("dt".into(), ScalarValue::F32(0.01)),
                ("softening".into(), ScalarValue::F32(0.01)),
            ],
        ),
        ("dot", 1 << 20, Vec::new()),
    ]
}

fn bench(c: &mut Criterion) {
    let cache = tempfile::tempdir().expect("temporary cache");
    let config = Config::default().cache_dir(cache.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group("tune");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, items, scalars) in cases() {
        let manifest_text =
            std::fs::read_to_string(root.join(name).join("manifest.toml")).expect("manifest");
        let manifest = Manifest::parse(&manifest_text).expect("manifest parses");
        let package =
            package_source(&root.join(name).join("kernel.rs"), &manifest).expect("package");
        let mut options = TuneOptions::new(items);
        options.scalars = scalars.clone();
        options.budget = Some(Duration::from_secs(20));
        let profile = tune_kernel(&config, &package, name, &options, &mut |_| {}).expect("tune");
        eprintln!(
            "tune {name}: {} | tuner measured {:.3e} items/s against default {:.3e}",
            profile.settings, profile.items_per_s, profile.default_items_per_s
        );
        let spec = package.manifest().kernel(name).expect("kernel").clone();
        let args = synthetic_args(&spec, items, &scalars).expect("inputs");
        let shared = std::sync::Arc::new(package.clone());
        group.throughput(Throughput::Elements(items));
        for (label, settings) in [
            ("default", Settings::default_for(cores)),
            ("tuned", profile.settings.clone()),
        ] {
            let engine = Engine::new(config.clone().opt_level(settings.opt())).expect("engine");
            let local = settings.apply(Options::default());
            let node = Cluster::from_engine(engine);
            let mut job = Job::kernel(shared.clone(), name, items, args.clone()).expect("job");
            // Compile (or load) outside the timed loop.
            node.run(&mut job, &local).expect("warm-up run");
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| node.run(&mut job, &local).expect("run"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
