//! Named scenarios, and [`DecisionLoop`], a steady-state driver for measuring the
//! scheduler's own cost per decision.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Noise, Rng, Scenario, SimDevice, SimNode, Workload};
use crate::job::JobSpec;
use crate::types::{Decision, DeviceId, DeviceKind, DeviceSpec, Event, Link, NodeId, Packet};
use crate::Scheduler;

/// Names accepted by [`scenario`].
pub const SCENARIOS: &[&str] = &[
    "uniform-4",
    "hetero-4",
    "hetero-16",
    "hetero-1000",
    "hetero-10000",
    "spiky-16",
    "slowdown-16",
    "failures-16",
    "join-16",
    "gigabit-16",
    "liar-8",
    "gpu-compute",
    "gpu-saxpy",
    "gpu-saxpy-slow-bus",
];

/// Target lower bound of the scenarios, µs: long enough that a packet's overheads are
/// small, short enough to simulate quickly.
const TARGET_US: f64 = 2e6;

/// Options of [`hetero`].
struct Hetero {
    devices: usize,
    per_node: usize,
    link: Link,
    /// Relative error of the advertised rates, or `None` for no profile (calibration).
    profile_error: Option<f64>,
    seed: u64,
}

/// A cluster of devices with speeds from 1 to 16 items/µs: evenly spread for up to 16
/// devices, uniformly random beyond. Node 0 is the scheduler's own (no link, one slot per
/// device); the others are behind `link` with two slots per device. Devices faster than
/// 12 items/µs are OpenCL devices (30 µs start-up). Devices are dealt round-robin to
/// nodes so that every node mixes speeds.
fn hetero(name: &str, h: Hetero) -> Scenario {
    let mut rng = Rng::new(h.seed);
    let nodes_n = h.devices.div_ceil(h.per_node);
    let mut nodes: Vec<SimNode> = (0..nodes_n)
        .map(|n| SimNode {
            link: (n > 0).then_some(h.link),
            devices: Vec::new(),
            joins_at_us: 0,
            fails_at_us: None,
        })
        .collect();
    for i in 0..h.devices {
        let speed = if h.devices <= 16 {
            1.0 + 15.0 * i as f64 / (h.devices.max(2) - 1) as f64
        } else {
            rng.range(1.0, 16.0)
        };
        let n = i % nodes_n;
        let mut dev = SimDevice::new(speed);
        if speed > 12.0 {
            dev.kind = DeviceKind::OpenCl;
            dev.startup_us = 30.0;
        }
        dev.slots = if n == 0 { 1 } else { 2 };
        dev.advertised_items_per_s = h
            .profile_error
            .map(|e| speed * 1e6 * (1.0 + e * (2.0 * rng.uniform() - 1.0)));
        nodes[n].devices.push(dev);
    }
    let speed: f64 = nodes
        .iter()
        .flat_map(|n| &n.devices)
        .map(|d| d.items_per_us)
        .sum();
    Scenario {
        name: name.to_string(),
        nodes,
        workload: Workload {
            items: (speed * TARGET_US) as u64,
            bytes_in_per_item: 4,
            bytes_out_per_item: 8,
            broadcast_bytes: 8 << 20,
            redundancy: 1,
        },
        noise: Noise {
            sigma: 0.05,
            spike_probability: 0.0,
            spike_us: 0.0,
        },
        seed: h.seed ^ 0x5eed,
    }
}

/// One machine: 16 CPU threads of `cpu_speed` items/µs each and a discrete GPU of
/// `gpu_speed` items/µs behind its own `bus`, every device joining without a rate (as
/// `offload run --device auto` does), items sized for a lower bound of about
/// [`TARGET_US`].
fn local_gpu(name: &str, cpu_speed: f64, gpu_speed: f64, bus: Link, bytes: (u64, u64)) -> Scenario {
    let mut devices: Vec<SimDevice> = (0..16)
        .map(|_| SimDevice {
            advertised_items_per_s: None,
            ..SimDevice::new(cpu_speed)
        })
        .collect();
    devices.push(SimDevice {
        kind: DeviceKind::OpenCl,
        startup_us: 30.0,
        advertised_items_per_s: None,
        bus: Some(bus),
        ..SimDevice::new(gpu_speed)
    });
    let mut workload = Workload {
        items: 0,
        bytes_in_per_item: bytes.0,
        bytes_out_per_item: bytes.1,
        broadcast_bytes: 0,
        redundancy: 1,
    };
    let speed: f64 = devices
        .iter()
        .map(|d| d.sustained_items_per_us(&workload))
        .sum();
    workload.items = (speed * TARGET_US) as u64;
    Scenario {
        name: name.to_string(),
        nodes: vec![SimNode {
            link: None,
            devices,
            joins_at_us: 0,
            fails_at_us: None,
        }],
        workload,
        noise: Noise {
            sigma: 0.05,
            spike_probability: 0.0,
            spike_us: 0.0,
        },
        seed: 0x6e5,
    }
}

fn hetero16(name: &str) -> Scenario {
    hetero(
        name,
        Hetero {
            devices: 16,
            per_node: 4,
            link: Link::ten_gigabit(),
            profile_error: Some(0.3),
            seed: 16,
        },
    )
}

/// The scenario called `name` (see [`SCENARIOS`]), or `None`.
///
/// - `uniform-4`: four equal local CPU threads.
/// - `hetero-4`, `hetero-16`: speeds 1..16 over 2 and 4 nodes on 10 GbE, tuning
///   profiles off by up to ±30%.
/// - `hetero-1000`: 1000 devices of random speeds 1..16 on 250 nodes on 10 GbE, no
///   profiles (every device is calibrated).
/// - `hetero-10000`: the same with 10 000 devices on 2500 nodes.
/// - `spiky-16`: `hetero-16` where 1% of packets take 100 ms longer.
/// - `slowdown-16`: `hetero-16` where the fastest device becomes 4× slower at 0.5 s.
/// - `failures-16`: `hetero-16` where node 1 fails at 0.6 s and node 3 at 1.2 s.
/// - `join-16`: `hetero-16` where nodes 2 and 3 join at 0.5 s.
/// - `gigabit-16`: `hetero-16` on 1 GbE links (the links bound the remote nodes).
/// - `liar-8`: eight single-device nodes, one returning wrong results, redundancy 3.
/// - `gpu-compute`: one machine, 16 CPU threads of 1 item/µs and a GPU of 400 items/µs
///   behind PCI Express ([`Link::pcie`]), a compute-bound kernel (4 bytes out per item,
///   mandelbrot-like): the GPU should take most of the work.
/// - `gpu-saxpy`: the same machine on a transfer-bound kernel (8 bytes in, 4 out per
///   item; CPU threads 100 items/µs each, the GPU 20 000): the bus bounds the GPU at
///   about 1000 items/µs, so it takes a share near that.
/// - `gpu-saxpy-slow-bus`: `gpu-saxpy` with a bus ten times slower (1.2 GB/s): the GPU
///   computes fastest but should get little or nothing.
pub fn scenario(name: &str) -> Option<Scenario> {
    let s = match name {
        "uniform-4" => {
            let mut s = hetero(
                name,
                Hetero {
                    devices: 4,
                    per_node: 4,
                    link: Link::ten_gigabit(),
                    profile_error: Some(0.0),
                    seed: 4,
                },
            );
            for d in &mut s.nodes[0].devices {
                *d = SimDevice::new(4.0);
            }
            s.workload.items = (16.0 * TARGET_US) as u64;
            s
        }
        "hetero-4" => hetero(
            name,
            Hetero {
                devices: 4,
                per_node: 2,
                link: Link::ten_gigabit(),
                profile_error: Some(0.3),
                seed: 44,
            },
        ),
        "hetero-16" => hetero16(name),
        "hetero-1000" => hetero(
            name,
            Hetero {
                devices: 1000,
                per_node: 4,
                link: Link::ten_gigabit(),
                profile_error: None,
                seed: 1000,
            },
        ),
        "hetero-10000" => hetero(
            name,
            Hetero {
                devices: 10_000,
                per_node: 4,
                link: Link::ten_gigabit(),
                profile_error: None,
                seed: 10_000,
            },
        ),
        "spiky-16" => {
            let mut s = hetero16(name);
            s.noise.spike_probability = 0.01;
            s.noise.spike_us = 100_000.0;
            s
        }
        "slowdown-16" => {
            let mut s = hetero16(name);
            let fastest = s
                .nodes
                .iter_mut()
                .flat_map(|n| n.devices.iter_mut())
                .max_by(|a, b| a.items_per_us.total_cmp(&b.items_per_us))?;
            fastest.slowdown = Some((500_000, 4.0));
            s
        }
        "failures-16" => {
            let mut s = hetero16(name);
            s.nodes[1].fails_at_us = Some(600_000);
            s.nodes[3].fails_at_us = Some(1_200_000);
            s
        }
        "join-16" => {
            let mut s = hetero16(name);
            s.nodes[2].joins_at_us = 500_000;
            s.nodes[3].joins_at_us = 500_000;
            s
        }
        "gigabit-16" => hetero(
            name,
            Hetero {
                devices: 16,
                per_node: 4,
                link: Link::gigabit(),
                profile_error: Some(0.3),
                seed: 16,
            },
        ),
        "liar-8" => {
            let mut s = hetero(
                name,
                Hetero {
                    devices: 8,
                    per_node: 1,
                    link: Link::ten_gigabit(),
                    profile_error: Some(0.3),
                    seed: 8,
                },
            );
            s.nodes[3].devices[0].lies = true;
            s.workload.redundancy = 3;
            s.workload.items /= 3;
            s
        }
        "gpu-compute" => local_gpu(name, 1.0, 400.0, Link::pcie(), (0, 4)),
        "gpu-saxpy" => local_gpu(name, 100.0, 20_000.0, Link::pcie(), (8, 4)),
        "gpu-saxpy-slow-bus" => local_gpu(name, 100.0, 20_000.0, Link::new(10.0, 1_200.0), (8, 4)),
        _ => return None,
    };
    Some(s)
}

/// Items per device of [`DecisionLoop`]'s job (at least [`LOOP_ITEMS_MIN`] in all):
/// about 20 s of simulated time, so that a timed run rarely reaches the end of a job
/// (the loop then starts a new one, whose joins and first round are not steady state).
const LOOP_ITEMS_PER_DEVICE: u64 = 200_000_000;
/// Items of [`DecisionLoop`]'s job at least.
const LOOP_ITEMS_MIN: u64 = 200_000_000_000;

/// A steady-state driver for measuring the scheduler's cost per decision at a given
/// number of devices: remote devices of speeds 1..16 on 10 GbE nodes of 4, a job too
/// large to end, and each [`DecisionLoop::step`] finishing the in-flight packet predicted
/// to end first and polling the scheduler's answers.
#[derive(Debug, Clone)]
pub struct DecisionLoop {
    sched: Scheduler,
    speeds: Vec<f64>,
    in_flight: BinaryHeap<Reverse<(u64, u32, Packet)>>,
    now: u64,
}

impl DecisionLoop {
    /// A loop over `devices` devices, already past the first round of decisions.
    pub fn new(devices: usize) -> Self {
        let mut rng = Rng::new(devices as u64);
        let mut sched = Scheduler::new(
            JobSpec::new((LOOP_ITEMS_PER_DEVICE * devices as u64).max(LOOP_ITEMS_MIN))
                .bytes_in_per_item(4)
                .bytes_out_per_item(8),
        );
        let mut speeds = Vec::with_capacity(devices);
        for d in 0..devices {
            let speed = rng.range(1.0, 16.0);
            speeds.push(speed);
            let spec =
                DeviceSpec::remote(format!("d{d}"), NodeId(d as u32 / 4), Link::ten_gigabit())
                    .rate(speed * 1e6);
            sched.handle(
                0,
                Event::DeviceJoined {
                    device: DeviceId(d as u32),
                    spec,
                },
            );
        }
        let mut this = DecisionLoop {
            sched,
            speeds,
            in_flight: BinaryHeap::new(),
            now: 0,
        };
        this.drain();
        this
    }

    fn drain(&mut self) -> u64 {
        let mut n = 0;
        while let Some(d) = self.sched.poll(self.now) {
            n += 1;
            if let Decision::Run { device, packet } = d {
                let us = (packet.items() as f64 / self.speeds[device.0 as usize]) as u64;
                self.in_flight
                    .push(Reverse((self.now + us.max(1), device.0, packet)));
            }
        }
        n
    }

    /// Finishes one packet and polls; returns the number of decisions made (a `Commit`
    /// and usually a `Run`).
    pub fn step(&mut self) -> u64 {
        let Some(Reverse((t, device, packet))) = self.in_flight.pop() else {
            // The job ended: start another one on the same devices.
            *self = DecisionLoop::new(self.speeds.len());
            return 0;
        };
        self.now = self.now.max(t);
        let us = (packet.items() as f64 / self.speeds[device as usize]) as u64;
        self.sched.handle(
            self.now,
            Event::PacketFinished {
                device: DeviceId(device),
                packet: packet.id,
                compute_us: us,
                digest: None,
            },
        );
        self.drain()
    }
}
