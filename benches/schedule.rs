//! `schedule` benchmark: simulated clusters of 4, 16 and 1000 devices (speeds 1..16,
//! 10 GbE links): makespan over the lower bound for offload's scheduler, the static equal
//! split and fixed-chunk self-scheduling (printed), and the scheduler's own cost per
//! decision (measured by criterion on a steady-state loop).
//!
//! `cargo bench -p offload --bench schedule`

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use scheduler::sim::{run_equal_split, run_fixed_chunks, run_scheduler, scenario, DecisionLoop};

fn makespans() {
    println!(
        "{:<12} {:>7} {:>12} {:>9} {:>9} {:>9}",
        "scenario", "devices", "lower bound", "offload", "equal", "chunks16"
    );
    for name in [
        "hetero-4",
        "hetero-16",
        "hetero-1000",
        "failures-16",
        "join-16",
    ] {
        let Some(s) = scenario(name) else { continue };
        let ours = run_scheduler(&s);
        println!(
            "{:<12} {:>7} {:>10.1}ms {:>9.3} {:>9.3} {:>9.3}",
            name,
            s.devices(),
            ours.lower_bound_us as f64 / 1e3,
            ours.ratio(),
            run_equal_split(&s).ratio(),
            run_fixed_chunks(&s, 16).ratio()
        );
    }
}

fn decision_cost(c: &mut Criterion) {
    makespans();
    let mut group = c.benchmark_group("decision");
    for devices in [4usize, 16, 1000] {
        let mut lp = DecisionLoop::new(devices);
        group.bench_function(format!("{devices}-devices"), |b| {
            // Time per decision: a step is one finished packet and the decisions it causes.
            b.iter_custom(|iters| {
                let mut decisions = 0u64;
                let start = Instant::now();
                while decisions < iters {
                    decisions += lp.step();
                }
                let elapsed = start.elapsed();
                Duration::from_secs_f64(elapsed.as_secs_f64() * iters as f64 / decisions as f64)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decision_cost);
criterion_main!(benches);
