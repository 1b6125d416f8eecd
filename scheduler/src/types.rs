//! The vocabulary shared by the scheduler, its callers and the simulator: identifiers,
//! packets, events in, decisions out, and the job and device descriptions.

use std::fmt;

/// A device's identifier, chosen by the caller (unique among the devices of one job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

/// A node (machine) identifier. Devices of one node share one network link, and
/// [`JobSpec::redundancy`](crate::JobSpec::redundancy) places the copies of a packet on *different* nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u32);

/// A packet's identifier, assigned by the scheduler in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId(pub u64);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "packet {}", self.0)
    }
}

/// A range of work items `start..end` with its identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Packet {
    /// Identifier; duplicates of a packet (speculation, redundancy) share it.
    pub id: PacketId,
    /// First item of the packet.
    pub start: u64,
    /// One past the last item of the packet.
    pub end: u64,
}

impl Packet {
    /// Number of items in the packet.
    pub fn items(&self) -> u64 {
        self.end - self.start
    }
}

/// What kind of device executes packets; sets default start-up costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A CPU worker (JIT-compiled native code).
    Cpu,
    /// An OpenCL device (GPU, or PoCL on a CPU).
    OpenCl,
}

/// Which kinds of device take a job's packets: on this machine, or on a cluster's nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    /// CPU cores only (the JIT-compiled kernel). The default of local runs.
    #[default]
    Cpu,
    /// OpenCL devices only.
    OpenCl,
    /// CPU cores and OpenCL devices together, packets split by measured speed; a kernel
    /// that cannot be lowered, or a machine without OpenCL, runs on the CPU alone. What a
    /// cluster run uses when nothing is chosen: every device the nodes serve.
    Auto,
}

impl DeviceChoice {
    /// Whether CPU workers take part.
    pub fn uses_cpu(self) -> bool {
        self != DeviceChoice::OpenCl
    }

    /// Whether OpenCL devices take part.
    pub fn uses_opencl(self) -> bool {
        self != DeviceChoice::Cpu
    }
}

/// A network link between the scheduling process and a remote node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way latency in µs (a packet pays it going out and its result coming back).
    pub latency_us: f64,
    /// Bandwidth in bytes per µs (1 Gbit/s is about 125, 10 Gbit/s about 1250).
    pub bytes_per_us: f64,
}

impl Link {
    /// A link with the given one-way latency (µs) and bandwidth (bytes per µs).
    pub fn new(latency_us: f64, bytes_per_us: f64) -> Self {
        Link {
            latency_us,
            bytes_per_us,
        }
    }

    /// Gigabit Ethernet in a LAN: 150 µs one way, 117 bytes/µs of payload.
    pub fn gigabit() -> Self {
        Link::new(150.0, 117.0)
    }

    /// 10 Gbit Ethernet: 50 µs one way, 1170 bytes/µs of payload.
    pub fn ten_gigabit() -> Self {
        Link::new(50.0, 1170.0)
    }

    /// A discrete GPU's PCI Express link as `clEnqueueWrite/ReadBuffer` from pageable
    /// host memory sees it: 10 µs per transfer, 12 000 bytes/µs (12 GB/s; PCIe 4.0 x16
    /// gives about 25 from pinned memory, pageable copies about half). A prior only:
    /// measured transfers ([`Event::BusTransferMeasured`]) replace it.
    pub fn pcie() -> Self {
        Link::new(10.0, 12_000.0)
    }
}

/// How a device is described when it joins a job.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// Human-readable name, reported back in [`crate::DeviceEstimate`].
    pub name: String,
    /// The node the device belongs to. Default: `NodeId(0)`, the local node.
    pub node: NodeId,
    /// CPU or OpenCL. Default: [`DeviceKind::Cpu`].
    pub kind: DeviceKind,
    /// Initial rate estimate in items per second (from a tuning profile), or `None` to
    /// calibrate with a small first packet. Default: `None`.
    pub rate_items_per_s: Option<f64>,
    /// Initial estimate of the fixed cost of one packet on the device (kernel launch,
    /// thread wake-up), in µs. Default: 2 for CPU, 30 for OpenCL.
    pub startup_us: f64,
    /// Network link to the device's node, or `None` for an in-process device.
    pub link: Option<Link>,
    /// Packets the device may hold at once (pipelining hides link latency). Default: 1
    /// for local devices, 2 for remote ones.
    pub slots: u32,
    /// The device's own link to the memory of the host that drives it (PCI Express for a
    /// discrete GPU), or `None` for a device that computes in host memory (CPU threads,
    /// PoCL). A packet's input slices cross it before its kernel runs and its results
    /// after, in line with the packet (the device is busy meanwhile), so a device's cost
    /// per packet is `startup + bus in + items / rate + bus out`. Default: `None`.
    pub bus: Option<Link>,
    /// The largest packet this device takes, in items (the job's `max_packet` bounds it
    /// too), or `None` for the job's bound alone. Default: `None`.
    pub max_packet: Option<u64>,
}

impl DeviceSpec {
    /// A CPU worker thread in this process: node 0, no link, one slot.
    pub fn local_cpu(name: impl Into<String>) -> Self {
        DeviceSpec {
            name: name.into(),
            node: NodeId(0),
            kind: DeviceKind::Cpu,
            rate_items_per_s: None,
            startup_us: 2.0,
            link: None,
            slots: 1,
            bus: None,
            max_packet: None,
        }
    }

    /// An OpenCL device in this process: node 0, no link, one slot.
    pub fn local_opencl(name: impl Into<String>) -> Self {
        DeviceSpec {
            kind: DeviceKind::OpenCl,
            startup_us: 30.0,
            ..DeviceSpec::local_cpu(name)
        }
    }

    /// A CPU device of a remote node behind `link`, with two slots.
    pub fn remote(name: impl Into<String>, node: NodeId, link: Link) -> Self {
        DeviceSpec {
            node,
            link: Some(link),
            slots: 2,
            ..DeviceSpec::local_cpu(name)
        }
    }

    /// Sets the node. Default: `NodeId(0)`.
    pub fn node(mut self, node: NodeId) -> Self {
        self.node = node;
        self
    }

    /// Sets the kind, and the default start-up cost that goes with it.
    pub fn kind(mut self, kind: DeviceKind) -> Self {
        self.kind = kind;
        self.startup_us = match kind {
            DeviceKind::Cpu => 2.0,
            DeviceKind::OpenCl => 30.0,
        };
        self
    }

    /// Sets the initial rate estimate in items per second. Default: none (calibrate).
    pub fn rate(mut self, items_per_s: f64) -> Self {
        self.rate_items_per_s = Some(items_per_s);
        self
    }

    /// Sets the initial per-packet start-up estimate in µs. Default: 2 (CPU), 30 (OpenCL).
    pub fn startup_us(mut self, startup_us: f64) -> Self {
        self.startup_us = startup_us;
        self
    }

    /// Sets the link. Default: none for local devices.
    pub fn link(mut self, link: Option<Link>) -> Self {
        self.link = link;
        self
    }

    /// Sets the number of packets the device may hold at once (at least 1).
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots.max(1);
        self
    }

    /// Sets the device's own host link (PCI Express for a discrete GPU, see
    /// [`DeviceSpec::bus`]). Default: none.
    pub fn bus(mut self, bus: Option<Link>) -> Self {
        self.bus = bus;
        self
    }

    /// Sets the largest packet this device takes, in items (at least 1). Default: the
    /// job's bound alone.
    pub fn max_packet(mut self, items: u64) -> Self {
        self.max_packet = Some(items.max(1));
        self
    }
}

/// Something that happened, fed to [`crate::Scheduler::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A device became available to this job.
    DeviceJoined {
        /// Its identifier (a lost device may join again under the same identifier).
        device: DeviceId,
        /// What it is and how it is reached.
        spec: DeviceSpec,
    },
    /// A device finished a packet that it was told to run.
    PacketFinished {
        /// The device.
        device: DeviceId,
        /// The packet.
        packet: PacketId,
        /// Time the kernel itself took on the device, in µs (without queueing or transfer).
        compute_us: u64,
        /// Hash of the packet's result, compared between copies under redundancy.
        digest: Option<[u8; 32]>,
    },
    /// A device could not finish a packet.
    PacketFailed {
        /// The device.
        device: DeviceId,
        /// The packet.
        packet: PacketId,
        /// `true` for a transient failure (the packet is run again, elsewhere if need be);
        /// `false` when the kernel itself failed (it panicked): the job fails.
        retryable: bool,
    },
    /// A device (or its node) is gone; its packets in flight are run elsewhere.
    DeviceLost {
        /// The device.
        device: DeviceId,
    },
    /// A measured transfer over the network link of a device's node: `bytes` went one
    /// way, in either direction, in `micros`, counted from when the link could start on
    /// it (not the time queued behind other transfers) until the last byte arrived, so
    /// `micros` is one latency plus `bytes / bandwidth`. `bytes: 0` measures the latency
    /// alone (half the round trip of a small message: a ping, a heartbeat). The samples
    /// of a node, from any of its devices, refine its one link model (`latency +
    /// bytes / bandwidth`, full duplex, fitted robustly: a spike changes nothing) in
    /// place of the prior in [`DeviceSpec::link`]; [`crate::Scheduler::estimates`]
    /// reports the result. Ignored for a device without a link.
    TransferMeasured {
        /// A device of the node whose link was used.
        device: DeviceId,
        /// Bytes moved.
        bytes: u64,
        /// Wall time of the transfer, in µs.
        micros: u64,
    },
    /// A transfer over a device's own [`DeviceSpec::bus`] (host memory to the device's
    /// memory or back) took `micros` for `bytes`; refines that bus model. The runner of
    /// such a device times its bus transfers apart from its kernel and reports only the
    /// kernel's time in [`Event::PacketFinished`]. Ignored for devices without a bus.
    BusTransferMeasured {
        /// The device.
        device: DeviceId,
        /// Bytes moved (one direction).
        bytes: u64,
        /// Wall time of the transfer, in µs.
        micros: u64,
    },
}

/// What the caller must do, returned by [`crate::Scheduler::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run `packet` on `device`, then report [`Event::PacketFinished`] or
    /// [`Event::PacketFailed`].
    Run {
        /// The device.
        device: DeviceId,
        /// The packet.
        packet: Packet,
    },
    /// Best effort: stop running `packet` on `device`, another copy already won. The slot
    /// counts as free from now on; a result that still arrives is answered with
    /// [`Decision::Discard`].
    Cancel {
        /// The device.
        device: DeviceId,
        /// The packet.
        packet: Packet,
    },
    /// `device`'s result for `packet` is the one: copy it into the job's output.
    Commit {
        /// The device whose result wins.
        device: DeviceId,
        /// The packet.
        packet: Packet,
    },
    /// Drop `device`'s result for `packet` (a duplicate that lost, or a disagreeing one).
    Discard {
        /// The device.
        device: DeviceId,
        /// The packet.
        packet: Packet,
    },
}
