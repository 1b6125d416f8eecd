//! Packet sizing, device choice, speculation, failures and stalls.

use scheduler::{
    Decision, DeviceId, DeviceSpec, Event, EventError, JobSpec, JobSpecError, NodeId, Scheduler,
};

use crate::driver::Driver;

fn cpu(d: u32, rate: f64) -> Event {
    Event::DeviceJoined {
        device: DeviceId(d),
        spec: DeviceSpec::local_cpu(format!("cpu{d}")).rate(rate),
    }
}

/// With one device the scheduler is a plain loop: packets in order, each starting where
/// the previous ended, one at a time, no copies.
#[test]
fn with_one_device_the_scheduler_is_a_plain_loop() {
    let items = 1_000_003;
    let mut drv = Driver::new(Scheduler::new(JobSpec::new(items)));
    drv.handle(cpu(0, 1e6));
    let mut expected_start = 0;
    while let Some((&(d, _), &p)) = drv.running.iter().next() {
        assert_eq!(drv.running.len(), 1, "one packet in flight at a time");
        assert_eq!(p.start, expected_start);
        expected_start = p.end;
        drv.finish(d, p, p.items(), None);
    }
    assert_eq!(expected_start, items);
    assert!(drv.sched.is_done() && drv.sched.is_complete());
    assert_eq!(drv.runs.len(), drv.commits.len());
    assert!(drv.cancels.is_empty() && drv.discards.is_empty());
    assert_eq!(drv.sched.progress().duplicates_issued, 0);
    // Guided self-scheduling: packets shrink toward the end.
    let sizes: Vec<u64> = drv.runs.iter().map(|(_, p)| p.items()).collect();
    assert!(sizes[0] > 4 * sizes[sizes.len() - 2], "{sizes:?}");
    assert!(drv.runs.len() < 60, "{} packets", drv.runs.len());
}

/// A faster device gets proportionally larger packets.
#[test]
fn packets_are_sized_by_device_speed() {
    // Devices known at the start are reported before the first poll.
    let mut drv = Driver::new(Scheduler::new(JobSpec::new(10_000_000)));
    drv.sched.handle(0, cpu(0, 1e6));
    drv.sched.handle(0, cpu(1, 8e6));
    drv.drain();
    let slow = drv.first_run_on(DeviceId(0));
    let fast = drv.first_run_on(DeviceId(1));
    let ratio = fast.items() as f64 / slow.items() as f64;
    assert!((6.0..10.0).contains(&ratio), "{ratio}");
}

/// Near the end, an idle device duplicates a straggler; the first result wins, the other
/// copy is cancelled and its late result discarded.
#[test]
fn stragglers_are_duplicated_and_the_first_result_wins() {
    let items = 100_000;
    let mut drv = Driver::new(Scheduler::new(JobSpec::new(items)));
    drv.handle(cpu(0, 1e6));
    drv.handle(cpu(1, 1e6));
    // Device 1 hangs on its first packet; device 0 works through the rest.
    let stuck = drv.first_run_on(DeviceId(1));
    drv.finish_all_on(DeviceId(0));
    let dup = drv
        .runs
        .iter()
        .find(|(d, p)| *d == DeviceId(0) && p.id == stuck.id)
        .copied();
    assert!(dup.is_some(), "the straggler was not duplicated");
    assert_eq!(drv.sched.progress().duplicates_issued, 1);
    assert!(drv.sched.is_done());
    assert!(drv.commits.contains(&(DeviceId(0), stuck)));
    assert!(drv.cancels.contains(&(DeviceId(1), stuck)));
    // The hung device answers after all.
    drv.finish(DeviceId(1), stuck, 1_000_000, None);
    assert_eq!(drv.discards, vec![(DeviceId(1), stuck)]);
    assert!(drv.covered_exactly_once(items));
}

/// With speculation off (runners that write in place), a packet never runs twice.
#[test]
fn without_speculation_no_packet_runs_twice() {
    let items = 100_000;
    let mut drv = Driver::new(Scheduler::new(JobSpec::new(items).speculation(false)));
    drv.handle(cpu(0, 1e6));
    drv.handle(cpu(1, 1e6));
    let stuck = drv.first_run_on(DeviceId(1));
    drv.finish_all_on(DeviceId(0));
    assert!(!drv.sched.is_done());
    assert_eq!(drv.sched.progress().duplicates_issued, 0);
    drv.finish(DeviceId(1), stuck, 1_000_000, None);
    assert!(drv.sched.is_done());
    assert!(drv.covered_exactly_once(items));
}

/// A kernel that fails deterministically ends the job: the failure is reported, running
/// copies are cancelled, and nothing else is issued.
#[test]
fn a_non_retryable_failure_ends_the_job() {
    let mut drv = Driver::new(Scheduler::new(JobSpec::new(1_000_000)));
    drv.handle(cpu(0, 1e6));
    drv.handle(cpu(1, 1e6));
    let (d, p) = drv.runs[0];
    drv.running.remove(&(d, p.id.0));
    let runs_before = drv.runs.len();
    drv.handle(Event::PacketFailed {
        device: d,
        packet: p.id,
        retryable: false,
    });
    let failure = drv.sched.failed().expect("failed");
    assert_eq!((failure.device, failure.packet), (d, p));
    assert!(drv.sched.is_done() && !drv.sched.is_complete());
    assert_eq!(
        drv.cancels.len(),
        1,
        "the other device's packet is cancelled"
    );
    assert!(drv.running.is_empty());
    assert_eq!(drv.runs.len(), runs_before);
    assert_eq!(drv.sched.poll(drv.now), None);
}

/// A retryable failure re-runs the items; a device failing three times in a row gets no
/// more work.
#[test]
fn retryable_failures_rerun_the_items_and_exclude_a_flaky_device() {
    let items = 50_000;
    let mut drv = Driver::new(Scheduler::new(JobSpec::new(items)));
    drv.handle(cpu(0, 1e6));
    drv.handle(cpu(1, 1e6));
    for _ in 0..3 {
        let (&(d, _), &p) = drv
            .running
            .iter()
            .find(|(&(d, _), _)| d == DeviceId(1))
            .expect("device 1 has work");
        drv.running.remove(&(d, p.id.0));
        drv.handle(Event::PacketFailed {
            device: d,
            packet: p.id,
            retryable: true,
        });
    }
    assert!(!drv.running.keys().any(|&(d, _)| d == DeviceId(1)));
    while let Some((&(d, _), &p)) = drv.running.iter().next() {
        assert_eq!(d, DeviceId(0));
        drv.finish(d, p, p.items(), None);
    }
    assert!(drv.sched.is_complete());
    assert!(drv.covered_exactly_once(items));
}

/// When every device is lost the scheduler says so instead of waiting; a new device
/// resumes the job, and the lost device's items are run again.
#[test]
fn losing_every_device_stalls_until_one_joins() {
    let items = 10_000;
    let mut drv = Driver::new(Scheduler::new(JobSpec::new(items)));
    drv.handle(cpu(0, 1e6));
    let (d, p) = drv.runs[0];
    drv.finish(d, p, p.items(), None);
    drv.running.clear();
    drv.handle(Event::DeviceLost {
        device: DeviceId(0),
    });
    assert!(drv.sched.stalled());
    assert!(!drv.sched.is_done());
    assert_eq!(drv.sched.poll(drv.now), None);
    drv.handle(cpu(1, 1e6));
    assert!(!drv.sched.stalled());
    while let Some((&(d, _), &p)) = drv.running.iter().next() {
        drv.finish(d, p, p.items(), None);
    }
    assert!(drv.covered_exactly_once(items));
    assert_eq!(drv.sched.progress().items_committed, items);
}

/// Redundancy 2 with a single node cannot place copies on distinct nodes: stalled.
#[test]
fn redundancy_without_enough_nodes_stalls() {
    let mut drv = Driver::new(Scheduler::new(JobSpec::new(1000).redundancy(2)));
    drv.handle(cpu(0, 1e6));
    drv.handle(cpu(1, 1e6));
    assert!(drv.runs.is_empty());
    assert!(drv.sched.stalled());
    drv.handle(Event::DeviceJoined {
        device: DeviceId(2),
        spec: DeviceSpec::local_cpu("other node").node(NodeId(7)),
    });
    assert!(!drv.runs.is_empty());
    assert!(!drv.sched.stalled());
}

/// Identical event sequences give identical decisions.
#[test]
fn decisions_are_deterministic() {
    let s = scheduler::sim::scenario("failures-16").expect("scenario");
    let a = scheduler::sim::run_scheduler(&s);
    let b = scheduler::sim::run_scheduler(&s);
    assert_eq!(a, b);
}

/// Empty jobs are done at once.
#[test]
fn an_empty_job_is_done_at_once() {
    let mut sched = Scheduler::new(JobSpec::new(0));
    sched.handle(0, cpu(0, 1e6));
    assert_eq!(sched.poll(0), None);
    assert!(sched.is_done() && !sched.stalled());
}

#[test]
fn inconsistent_job_specs_are_refused_by_try_new() {
    let err = Scheduler::try_new(JobSpec::new(10).min_packet(10).max_packet(5)).err();
    assert_eq!(err, Some(JobSpecError::PacketBounds { min: 10, max: 5 }));
    assert_eq!(
        Scheduler::try_new(JobSpec::new(10).redundancy(0)).err(),
        Some(JobSpecError::ZeroRedundancy)
    );
    assert!(Scheduler::try_new(JobSpec::new(10)).is_ok());
}

#[test]
fn events_that_do_not_fit_are_refused_by_try_handle() {
    let mut sched = Scheduler::new(JobSpec::new(10));
    assert_eq!(
        sched.try_handle(
            0,
            Event::DeviceLost {
                device: DeviceId(9)
            }
        ),
        Err(EventError::UnknownDevice(DeviceId(9)))
    );
    sched.handle(0, cpu(0, 1e6));
    assert_eq!(
        sched.try_handle(0, cpu(0, 1e6)),
        Err(EventError::AlreadyJoined(DeviceId(0)))
    );
    let Some(Decision::Run { packet, .. }) = sched.poll(0) else {
        panic!("expected a run");
    };
    sched.handle(
        1,
        Event::DeviceLost {
            device: DeviceId(0),
        },
    );
    let late = Event::PacketFinished {
        device: DeviceId(0),
        packet: packet.id,
        compute_us: 1,
        digest: None,
    };
    assert!(matches!(
        sched.try_handle(2, late),
        Err(EventError::NotRunning { .. })
    ));
    assert_eq!(sched.progress().items_committed, 0);
}
