//! offload's packet scheduler: a pure state machine that decides which device runs which
//! range of a job's items, with a cost model per device and a cluster simulator.
//!
//! A job is `items` work items `0..items`. The [`Scheduler`] cuts it into [`Packet`]s and
//! sends each to the device predicted to finish it first, counting the device's queue and
//! the transfers over its node's link. It has no clock, no threads and no I/O, in the
//! manner of quinn-proto: the caller feeds it [`Event`]s stamped with its own `now` (µs)
//! through [`Scheduler::handle`] and executes the [`Decision`]s that
//! [`Scheduler::poll`] returns. The local runner, the cluster client and the
//! discrete-event simulator in [`sim`] all drive this same code, and identical event
//! sequences give identical decisions.
//!
//! # Example
//!
//! ```
//! use scheduler::{Decision, DeviceId, DeviceSpec, Event, JobSpec, Scheduler};
//!
//! let mut sched = Scheduler::new(JobSpec::new(10_000).speculation(false));
//! sched.handle(0, Event::DeviceJoined { device: DeviceId(0), spec: DeviceSpec::local_cpu("cpu0") });
//! let mut now = 0;
//! let mut covered = 0;
//! loop {
//!     let mut runs = Vec::new();
//!     while let Some(decision) = sched.poll(now) {
//!         match decision {
//!             Decision::Run { device, packet } => runs.push((device, packet)),
//!             Decision::Commit { packet, .. } => covered += packet.items(),
//!             Decision::Cancel { .. } | Decision::Discard { .. } => {}
//!         }
//!     }
//!     if sched.is_done() {
//!         break;
//!     }
//!     for (device, packet) in runs {
//!         // Pretend the kernel takes 1 µs per item.
//!         now += packet.items();
//!         sched.handle(now, Event::PacketFinished { device, packet: packet.id, compute_us: packet.items(), digest: None });
//!     }
//! }
//! assert_eq!(covered, 10_000);
//! assert!(sched.estimates()[0].rate_items_per_s.is_some());
//! ```
//!
//! # Concepts
//!
//! - [`JobSpec`]: items, bytes per item, packet bounds, redundancy, speculation.
//! - [`DeviceSpec`]: a device's node, kind, initial rate estimate, link and slots.
//! - Cost model: per device, `start-up + items / rate` fitted robustly online from every
//!   finished packet (medians over a window; one timing spike changes nothing, a real
//!   change of speed is followed within a few packets); per node link,
//!   `latency + bytes / bandwidth`, refined by [`Event::TransferMeasured`].
//! - Policy: guided self-scheduling scaled by each device's share of the total speed;
//!   near the end packets shrink so that devices finish together, a device that would
//!   finish after a faster one waits, and stragglers are duplicated on idle devices.
//! - [`sim`]: a discrete-event cluster simulator with named scenarios and two baseline
//!   policies, used by the tests and the `schedule` benchmark.
//!
//! This crate has no feature flags.

mod core;
mod job;
mod link;
mod model;
pub mod sim;
mod table;
mod types;

pub use crate::core::{DeviceEstimate, Disagreement, EventError, Failure, Progress, Scheduler};
pub use crate::job::{JobSpec, JobSpecError};
pub use crate::types::{
    Decision, DeviceChoice, DeviceId, DeviceKind, DeviceSpec, Event, Link, NodeId, Packet, PacketId,
};
