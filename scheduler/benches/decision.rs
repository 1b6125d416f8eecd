//! `decision` benchmark: the scheduler's own cost per decision at 4, 16, 1000 and
//! 10 000 devices, on [`DecisionLoop`]'s steady state (remote devices of speeds 1..16 on
//! 10 GbE nodes of 4; each step finishes the packet predicted to end first and polls the
//! decisions it causes, a `Commit` and usually a `Run`). Criterion reports time per
//! decision; the goal is under 2 µs at 10 000 devices. The device counts run side by
//! side in one process, so their ratios hold on a noisy machine where absolute times
//! drift.
//!
//! `cargo bench -p scheduler --bench decision`

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use scheduler::sim::DecisionLoop;

/// Decisions run before timing, to be past the first round of packets.
const WARM_UP_DECISIONS: u64 = 200_000;

fn decision_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    for devices in [4usize, 16, 1000, 10_000] {
        let mut lp = DecisionLoop::new(devices);
        let mut warm = 0;
        while warm < WARM_UP_DECISIONS {
            warm += lp.step();
        }
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
