//! Every item is committed exactly once, whatever happens: speculation, redundancy,
//! retryable failures, devices lost and joining.

use proptest::prelude::*;
use scheduler::sim::{simulate, Noise, Scenario, SimDevice, SimNode, Workload};
use scheduler::{DeviceId, DeviceSpec, Event, JobSpec, Link, NodeId, Scheduler};

use crate::driver::Driver;

#[derive(Debug, Clone)]
enum Step {
    Finish(usize),
    Fail(usize),
    Lose(usize),
    Join,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => any::<usize>().prop_map(Step::Finish),
        1 => any::<usize>().prop_map(Step::Fail),
        1 => any::<usize>().prop_map(Step::Lose),
        1 => Just(Step::Join),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random interleavings of results, failures, losses and joins, in any order the
    /// runner reports them.
    #[test]
    fn every_item_is_committed_exactly_once(
        items in 1u64..5_000,
        devices in 1u32..6,
        redundancy in 1u32..4,
        speculation in any::<bool>(),
        steps in proptest::collection::vec(step(), 0..300),
    ) {
        let job = JobSpec::new(items).redundancy(redundancy).speculation(speculation).min_packet(7);
        let mut drv = Driver::new(Scheduler::new(job));
        let mut next_device = 0u32;
        let mut join = |drv: &mut Driver| {
            let id = next_device;
            next_device += 1;
            // One device per node, so that redundancy can find distinct nodes.
            drv.handle(Event::DeviceJoined {
                device: DeviceId(id),
                spec: DeviceSpec::local_cpu(format!("d{id}")).node(NodeId(id)).rate(1e6 * (1 + id % 4) as f64),
            });
        };
        for _ in 0..devices.max(redundancy) {
            join(&mut drv);
        }
        let digest = |p: &scheduler::Packet| Some([p.start as u8; 32]);
        for s in steps {
            if drv.sched.is_done() {
                break;
            }
            let running: Vec<_> = drv.running.iter().map(|(&(d, _), &p)| (d, p)).collect();
            match s {
                Step::Finish(i) if !running.is_empty() => {
                    let (d, p) = running[i % running.len()];
                    drv.finish(d, p, p.items(), digest(&p));
                }
                Step::Fail(i) if !running.is_empty() => {
                    let (d, p) = running[i % running.len()];
                    drv.running.remove(&(d, p.id.0));
                    drv.handle(Event::PacketFailed { device: d, packet: p.id, retryable: true });
                }
                Step::Lose(i) if !running.is_empty() => {
                    let (d, _) = running[i % running.len()];
                    drv.running.retain(|&(x, _), _| x != d);
                    drv.handle(Event::DeviceLost { device: d });
                }
                Step::Join => join(&mut drv),
                _ => {}
            }
        }
        // Then fresh, reliable devices finish the job.
        for _ in 0..redundancy {
            join(&mut drv);
        }
        let mut guard = 0;
        while !drv.sched.is_done() {
            guard += 1;
            prop_assert!(guard < 100_000, "no progress");
            if drv.running.is_empty() {
                prop_assert!(drv.sched.stalled());
                join(&mut drv);
                continue;
            }
            let (&(d, _), &p) = drv.running.iter().next().expect("running");
            drv.finish(d, p, p.items(), digest(&p));
        }
        prop_assert!(drv.sched.failed().is_none());
        prop_assert!(drv.covered_exactly_once(items), "commits {:?}", drv.commits);
        let progress = drv.sched.progress();
        prop_assert_eq!(progress.items_committed, items);
        prop_assert_eq!(progress.packets_committed, drv.commits.len() as u64);
    }

    /// Random simulated clusters with noise, spikes, failing and joining nodes.
    #[test]
    fn simulated_clusters_commit_every_item_once(
        nodes in proptest::collection::vec(
            (proptest::collection::vec(1.0f64..16.0, 1..4), any::<bool>(), 0u64..200_000, proptest::option::of(1u64..400_000)),
            1..6),
        items in 1u64..2_000_000,
        seed in any::<u64>(),
        redundancy in 1u32..3,
    ) {
        let mut sim_nodes: Vec<SimNode> = nodes.iter().enumerate().map(|(i, (speeds, remote, join, fail))| SimNode {
            link: (*remote && i > 0).then(Link::ten_gigabit),
            devices: speeds.iter().map(|&s| SimDevice { slots: if *remote { 2 } else { 1 }, ..SimDevice::new(s) }).collect(),
            joins_at_us: if i == 0 { 0 } else { *join },
            fails_at_us: if i == 0 { None } else { *fail },
        }).collect();
        // Keep one node alive so that the job can finish.
        sim_nodes[0].fails_at_us = None;
        let redundancy = redundancy.min(sim_nodes.iter().filter(|n| n.fails_at_us.is_none()).count() as u32);
        let scenario = Scenario {
            name: "random".into(),
            nodes: sim_nodes,
            workload: Workload { items, bytes_in_per_item: 4, bytes_out_per_item: 8, broadcast_bytes: 1 << 20, redundancy },
            noise: Noise { sigma: 0.2, spike_probability: 0.05, spike_us: 50_000.0 },
            seed,
        };
        let mut sched = Scheduler::new(scenario.job_spec());
        let report = simulate(&scenario, &mut sched);
        prop_assert!(report.complete, "{:?}", report.makespan_us);
        prop_assert!(report.exactly_once());
        prop_assert!(report.makespan_us >= report.lower_bound_us / 2);
    }
}
