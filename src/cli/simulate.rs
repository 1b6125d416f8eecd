//! `offload simulate`: runs named cluster scenarios of `scheduler::sim` through the
//! scheduler core and the two baseline policies, and prints their makespans.

use anyhow::bail;
use clap::Args;
use scheduler::sim::{
    run_equal_split, run_fixed_chunks, run_scheduler, scenario, SimReport, SCENARIOS,
};

/// Chunks per device of the fixed-chunk work-stealing baseline, as in the `schedule`
/// benchmark.
const CHUNKS_PER_DEVICE: u64 = 16;

#[derive(Args)]
pub struct SimulateArgs {
    /// Scenarios to run [default: all]; `--list` names them.
    scenarios: Vec<String>,
    /// List the scenario names and exit.
    #[arg(long)]
    list: bool,
}

pub fn simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    if args.list {
        for name in SCENARIOS {
            println!("{name}");
        }
        return Ok(());
    }
    // Check every name before simulating anything, so a typo fails at once.
    let mut scenarios = Vec::new();
    let names: Vec<&str> = if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        args.scenarios.iter().map(String::as_str).collect()
    };
    for name in names {
        match scenario(name) {
            Some(s) => scenarios.push(s),
            None => bail!(
                "unknown scenario `{name}` (known scenarios: {})",
                SCENARIOS.join(", ")
            ),
        }
    }
    for s in &scenarios {
        let ours = run_scheduler(s);
        let equal = run_equal_split(s);
        let fixed = run_fixed_chunks(s, CHUNKS_PER_DEVICE);
        println!("scenario {}", s.name);
        println!(
            "  devices: {} on {} nodes, {} items",
            s.devices(),
            s.nodes.len(),
            s.workload.items
        );
        println!("  lower bound: {}", ms(ours.lower_bound_us));
        println!("  scheduler: {}", line(&ours));
        println!("  equal split: {}", line(&equal));
        println!(
            "  fixed chunks ({CHUNKS_PER_DEVICE}/device): {}",
            line(&fixed)
        );
    }
    Ok(())
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1e3)
}

/// Makespan, ratio to the lower bound, and anything that went wrong.
fn line(report: &SimReport) -> String {
    let mut text = format!(
        "makespan {}, ratio {:.3}, {} packets ({} duplicates)",
        ms(report.makespan_us),
        report.ratio(),
        report.packets,
        report.duplicates
    );
    if !report.complete {
        text.push_str(if report.stalled {
            ", INCOMPLETE (stalled)"
        } else {
            ", INCOMPLETE"
        });
    } else if !report.exactly_once() {
        text.push_str(", WRONG (items not covered exactly once)");
    }
    if report.wrong_commits > 0 {
        text.push_str(&format!(
            ", {} wrong results committed",
            report.wrong_commits
        ));
    }
    text
}
