//! offload's cluster protocol: the messages between clients, nodes and kernel workers,
//! their framing and size limits, and the checks a node makes on what a client sends
//! ([`check_hello`], [`check_wire`], [`request_limit`]), with no I/O. The `cluster`
//! crate's QUIC shell and worker pipes send and receive these frames; it re-exports this
//! crate as `cluster::protocol`.
//!
//! This crate must stay pure: it depends on serde, bincode, serde_bytes, thiserror and
//! the LLVM-free `kernel-model`, and on nothing that brings an async runtime, a network
//! stack or LLVM (no tokio, quinn, rustls, inkwell, llvm-sys, `ir-packager`,
//! `node-jit`). That keeps its fuzz target (`protocol/fuzz`, `scripts/fuzz.sh`) quick to
//! build with sanitizers and lets anything that only speaks the protocol link it alone;
//! `cargo tree -p offload-protocol -e normal` shows what it pulls in, and
//! the workspace's `tests/all/layering.rs` fails when `Cargo.lock` lets any of those
//! crates be reached.
//!
//! Every message is a frame: a 4-byte little-endian length, then the message encoded
//! with bincode 2 (serde). Each kind of frame has a size limit that is checked on the
//! length *before* anything is allocated, and bincode decodes under the same limit, so a
//! peer cannot make the receiver allocate more than the limit.
//!
//! A connection starts with a [`Hello`] on its first stream, answered with a
//! [`HelloReply`]; a node refuses other versions with a message naming both. Then every
//! request travels on its own QUIC bidirectional stream and gets exactly one
//! [`Response`] on that stream, so several packets are in flight at once and a result
//! is delivered once (a re-run of a packet elsewhere is a different stream whose result
//! the scheduler commits or discards).
//!
//! Caching: the client asks [`Request::HavePackage`] / [`Request::HaveBuffer`] with a
//! blake3 hash first and uploads only what the node lacks; whole `in` buffers are thus
//! sent once per node, and a [`Request::Run`] carries only the packet's slices of split
//! buffers. A whole buffer's bytes do not go through bincode: [`Request::Buffer`] announces
//! their length and hash and they follow raw on the same stream, so neither side copies
//! them into or out of a frame; the node checks the hash only before another connection
//! uses the buffer (`docs/cluster.md`, "Buffer cache"). The worker pipe between a
//! node and its kernel process uses the same framing with [`ToWorker`] and [`FromWorker`].

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The protocol version this build speaks.
/// Version 2: [`NodeInfo`] carries the node's tuned rates ([`TunedRate`]) and OpenCL
/// devices ([`OpenClDevice`]), whole buffers follow [`Request::Buffer`] raw instead of
/// inside the frame, and [`Request::Run`] names the node device that runs the packet.
/// Version 3: [`Request::Buffer`] carries the uploader's hash of the bytes.
/// Version 4: [`Response::Failed`] lost its `retryable` flag (the client decides whose
/// fault a failure was by running the packet elsewhere), and each request kind has its
/// own size limit ([`request_limit`]).
/// Version 5: [`Request::Status`] answered by [`Response::Status`] (what `offload
/// status` shows), and [`Response::Paused`]: a node paused by its owner (or draining)
/// answers a packet at once instead of holding it, so the client runs it elsewhere.
/// Version 6: split buffers may have halos ([`WireArg::Split`]'s `halo`): kernel model v2.
pub const VERSION: u32 = 6;

/// The ALPN protocol name of offload's QUIC connections.
pub const ALPN: &[u8] = b"offload/1";

/// The UDP port a node listens on by default.
pub const DEFAULT_PORT: u16 = 7878;

/// Magic bytes opening a [`Hello`], so a stray client of another protocol is told apart.
pub const MAGIC: [u8; 4] = *b"OFLD";

/// Largest hello, hello reply or small control message, in bytes.
pub const MAX_CONTROL: usize = 64 << 10;

/// Largest data-carrying message (package upload, whole buffer, packet slices or
/// results), in bytes. Jobs whose single buffers exceed it are refused by the client.
pub const MAX_DATA: usize = 1 << 30;

/// A blake3 content hash.
pub type Hash = [u8; 32];

/// The first message of a connection, from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// The client's [`VERSION`].
    pub version: u32,
    /// A name for logs.
    pub client: String,
}

/// What a node says about itself in its hello reply (and, abbreviated, in mDNS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name (host name unless configured).
    pub name: String,
    /// Target triple, e.g. `x86_64-unknown-linux-gnu`.
    pub arch: String,
    /// LLVM's CPU name.
    pub cpu: String,
    /// ISA features, abbreviated (`avx2 avx512f ...`).
    pub features: String,
    /// Worker processes serving packets.
    pub cores: u32,
    /// Rates `offload tune` measured on this node, for the client's first estimate.
    pub rates: Vec<TunedRate>,
    /// The OpenCL devices the node serves besides its CPU workers (`offload node
    /// --opencl`), in the order [`Request::Run`]'s `device` numbers them.
    pub opencl: Vec<OpenClDevice>,
    /// Whether its kernel workers run sandboxed (`false`: started with `--unsandboxed`,
    /// or a node from before the sandbox).
    #[serde(default)]
    pub sandboxed: bool,
}

/// An OpenCL device a node serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenClDevice {
    /// The device's name (e.g. `cpu-cascadelake-AVX512`).
    pub name: String,
    /// `gpu`, `cpu`, `accelerator` or `other`.
    pub kind: String,
    /// Compute units.
    pub compute_units: u32,
}

impl NodeInfo {
    /// The tuned rate of `kernel` of the package hashed `package` on `device` (one
    /// worker), if the node advertised one.
    pub fn rate_for(&self, package: &Hash, kernel: &str, device: &str) -> Option<f64> {
        self.rates
            .iter()
            .find(|r| &r.package == package && r.kernel == kernel && r.device == device)
            .map(|r| r.items_per_s)
    }
}

/// A rate `offload tune` measured on a node: what one scheduler device of the node (one
/// worker) does per second on one kernel. Clients take it as the device's initial
/// estimate instead of calibrating with a first small packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunedRate {
    /// The package's blake3 hash.
    pub package: Hash,
    /// The kernel's name.
    pub kernel: String,
    /// The device kind the rate is for (`cpu`).
    pub device: String,
    /// Items per second of one worker.
    pub items_per_s: f64,
}

/// The node's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Accepted: the node's version and description.
    Welcome {
        /// The node's [`VERSION`].
        version: u32,
        /// The node.
        node: NodeInfo,
    },
    /// Refused, with a reason meant for the user.
    Refused {
        /// The node's [`VERSION`].
        version: u32,
        /// Why.
        reason: String,
    },
}

/// How one kernel argument travels, in manifest order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireArg {
    /// A scalar's bits (`ScalarValue::to_bits`).
    Scalar(u64),
    /// A whole `in` buffer, uploaded earlier with [`Request::Buffer`].
    Whole(Hash),
    /// A split buffer (`[k]`): `in`/`inout` slices come with each packet, `out`/`inout`
    /// slices go back with each result. `bytes_per_item` is `k × element size`.
    Split {
        /// Bytes of the buffer per item.
        bytes_per_item: u64,
        /// Whether the kernel reads it (`in`, `inout`): slices travel with packets.
        input: bool,
        /// Whether the kernel writes it (`out`, `inout`): slices come back.
        output: bool,
        /// Items on each side of a packet's own that come with its input slice
        /// (`kernel_model::halo_range`); 0 without a halo.
        halo: u64,
    },
    /// A `sum` buffer of this many bytes, zeroed per packet; partials come back.
    Sum(u64),
}

/// A client's request; each has its own stream and gets one [`Response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Does the node hold the package with this hash?
    HavePackage(Hash),
    /// A package file's bytes; the node hashes and validates them itself.
    Package(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Does the node hold the buffer with this hash?
    HaveBuffer(Hash),
    /// A whole buffer of `len` bytes, which follow this frame raw on the same stream
    /// (and then the stream ends). `len` is at most [`MAX_DATA`]. The node takes
    /// `hash` on trust for this connection's own jobs and checks it before any other
    /// connection may use the buffer (see `docs/cluster.md`, "Buffer cache").
    Buffer {
        /// The number of raw bytes after the frame.
        len: u64,
        /// The uploader's blake3 hash of those bytes.
        hash: Hash,
    },
    /// Sets up a job: the kernel of a cached package and how its arguments travel.
    Prepare {
        /// The client's job number (unique per connection).
        job: u64,
        /// The package's hash.
        package: Hash,
        /// The kernel.
        kernel: String,
        /// Items of the job.
        items: u64,
        /// One entry per manifest argument.
        args: Vec<WireArg>,
    },
    /// Runs one packet of a prepared job.
    Run {
        /// The job.
        job: u64,
        /// The packet's id, echoed in the response.
        packet: u64,
        /// First item.
        start: u64,
        /// One past the last item.
        end: u64,
        /// Where it runs: `None` on the CPU workers, `Some(i)` on OpenCL device `i` of
        /// [`NodeInfo::opencl`] (one the job's [`Response::Prepared`] listed).
        device: Option<u32>,
        /// The packet's slices of the `input` split buffers, in argument order.
        #[serde(with = "byte_lists")]
        slices: Vec<Vec<u8>>,
    },
    /// The job is over: the node may forget it.
    EndJob(u64),
    /// An empty round trip (benchmarks, latency estimates).
    Ping,
    /// What the node is doing ([`NodeStatus`]). New kinds go last: a request's first
    /// byte names its kind ([`request_limit`]).
    Status,
}

/// The node's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `HavePackage` / `HaveBuffer`.
    Has(bool),
    /// The upload is stored (under the hash the node computed).
    Stored(Hash),
    /// The job is prepared (its kernel compiled on this node's CPU workers); `opencl`
    /// lists the node's OpenCL devices (indices into [`NodeInfo::opencl`]) that took it
    /// too. A kernel that cannot be lowered or built for OpenCL runs on the CPU workers
    /// only. Also the answer to [`Request::EndJob`] (with no devices).
    Prepared {
        /// The OpenCL devices that run this job's packets as well.
        opencl: Vec<u32>,
    },
    /// A packet's results.
    Done {
        /// The packet.
        packet: u64,
        /// Kernel time on the node, in µs.
        compute_us: u64,
        /// Slices of the `output` split buffers and `sum` partials, in argument order.
        #[serde(with = "byte_lists")]
        outputs: Vec<Vec<u8>>,
    },
    /// A packet failed (the kernel panicked or crashed, ran too long, or the node could
    /// not run it). The client decides whose fault it was by running the packet on
    /// another node.
    Failed {
        /// The packet.
        packet: u64,
        /// What happened.
        reason: String,
    },
    /// A request that could not be served.
    Error(String),
    /// Answer to `Ping`.
    Pong,
    /// Answer to `Status`.
    Status(Box<NodeStatus>),
    /// The node takes no packets now: its owner keeps the machine busy (`offload node
    /// --idle-only`), or it is shutting down. The packet was not run; the client runs it
    /// elsewhere and asks [`Request::Status`] until the node serves again.
    Paused {
        /// The packet.
        packet: u64,
        /// Why, in words (the owner's load and the threshold, or the shutdown).
        reason: String,
    },
}

/// What a node is doing, for `offload status` ([`Request::Status`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's description, as in its hello.
    pub info: NodeInfo,
    /// The offload version the node runs.
    pub version: String,
    /// Whether it takes packets.
    pub state: NodeState,
    /// Whether kernels run in a sandbox (`false`: the node was started with
    /// `--unsandboxed`; see docs/sandbox.md).
    pub sandboxed: bool,
    /// The machine's 1-minute load average.
    pub load: f64,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// CPU workers running a packet now.
    pub busy_workers: u32,
    /// Packets waiting for a worker.
    pub queued: u32,
    /// Packets answered with results since the start.
    pub packets_done: u64,
    /// Packets that failed since the start.
    pub packets_failed: u64,
    /// Items of the packets answered with results.
    pub items_done: u64,
    /// Bytes received in requests.
    pub bytes_in: u64,
    /// Bytes sent in responses.
    pub bytes_out: u64,
    /// The members connected now.
    pub clients: Vec<ClientActivity>,
}

/// Whether a node takes packets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeState {
    /// It takes packets.
    Serving,
    /// Its owner keeps the machine busy (`--idle-only`): new packets are answered
    /// [`Response::Paused`].
    PausedByOwner {
        /// The owner's load against the threshold, in words.
        reason: String,
    },
    /// It is shutting down: running packets finish, new ones are answered
    /// [`Response::Paused`].
    Draining,
}

impl NodeState {
    /// `serving`, `paused-by-owner` or `draining`.
    pub fn name(&self) -> &'static str {
        match self {
            NodeState::Serving => "serving",
            NodeState::PausedByOwner { .. } => "paused-by-owner",
            NodeState::Draining => "draining",
        }
    }
}

/// A member connected to a node, and what it runs there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientActivity {
    /// Its identity: the common name of its certificate.
    pub identity: String,
    /// Where it connects from.
    pub addr: String,
    /// Seconds since it connected.
    pub connected_s: u64,
    /// The kernels of its prepared jobs.
    pub jobs: Vec<String>,
    /// Its packets on the node now (waiting or running).
    pub packets: u32,
    /// Its packets answered with results since it connected.
    pub packets_done: u64,
}

/// A request from the node to its kernel worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Compile (or load from the code cache) `kernel` of this package.
    Load {
        /// The package file's bytes.
        #[serde(with = "serde_bytes")]
        package: Vec<u8>,
        /// The kernel.
        kernel: String,
    },
    /// Keep this whole buffer under its hash.
    Buffer {
        /// The hash.
        hash: Hash,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Forget the whole buffer with this hash.
    Forget(Hash),
    /// Run a packet of the kernel loaded last under this package hash and kernel name.
    Run {
        /// The package's hash.
        package: Hash,
        /// The kernel.
        kernel: String,
        /// Items of the job (where halos stop).
        items: u64,
        /// First item.
        start: u64,
        /// One past the last item.
        end: u64,
        /// Arguments in manifest order.
        args: Vec<WireArg>,
        /// Slices of the input split buffers (with their halos), in argument order.
        #[serde(with = "byte_lists")]
        slices: Vec<Vec<u8>>,
    },
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Loaded, or stored, or forgotten.
    Ready,
    /// The packet ran.
    Done {
        /// Kernel time in µs.
        compute_us: u64,
        /// As in [`Response::Done`].
        #[serde(with = "byte_lists")]
        outputs: Vec<Vec<u8>>,
    },
    /// The kernel panicked (a Rust panic, caught).
    Panicked(String),
    /// The request could not be served (compile error, unknown buffer, ...).
    Error(String),
    /// A kernel was loaded: where its code came from and how long that took.
    Loaded {
        /// `compiled`, `disk-cache`, `memory-cache`, or `opencl` (lowered and built).
        origin: String,
        /// Time taken, in µs.
        micros: u64,
    },
}

impl FromWorker {
    /// The answer's kind in words, for messages about unexpected answers.
    pub fn describe(&self) -> &'static str {
        match self {
            FromWorker::Ready => "ready",
            FromWorker::Done { .. } => "a packet's results",
            FromWorker::Panicked(_) => "a kernel panic",
            FromWorker::Error(_) => "an error",
            FromWorker::Loaded { .. } => "a loaded kernel",
        }
    }
}

impl Response {
    /// The answer's kind in words, for messages about unexpected answers.
    pub fn describe(&self) -> String {
        match self {
            Response::Has(true) => "\"I have it\"".into(),
            Response::Has(false) => "\"I do not have it\"".into(),
            Response::Stored(_) => "\"stored\"".into(),
            Response::Prepared { .. } => "\"prepared\"".into(),
            Response::Done { packet, .. } => format!("the results of packet {packet}"),
            Response::Failed { reason, .. } => format!("a failure ({reason})"),
            Response::Error(reason) => format!("an error ({reason})"),
            Response::Pong => "a pong".into(),
            Response::Status(_) => "a status".into(),
            Response::Paused { reason, .. } => format!("a pause ({reason})"),
        }
    }
}

/// Lists of byte buffers encoded as byte strings (one length, then a memcpy), not as
/// sequences of single bytes: what keeps bulk slices at memory speed.
mod byte_lists {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(lists: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        let borrowed: Vec<&Bytes> = lists.iter().map(|l| Bytes::new(l)).collect();
        borrowed.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        let owned = Vec::<ByteBuf>::deserialize(deserializer)?;
        Ok(owned.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is larger than this kind of message may be.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced or actual size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a message of the expected kind.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but bytes were left over.
    #[error("malformed message: {0} bytes after its end")]
    Trailing(usize),
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Larger than this kind of message may be.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// bincode failed.
    #[error("cannot encode message: {0}")]
    Bincode(String),
}

// bincode's limit is a const generic: one configuration per limit we use.
fn control_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CONTROL>()
}

fn data_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DATA>()
}

/// Encodes `message` as a frame (length prefix + body), refusing bodies over `limit`
/// ([`MAX_CONTROL`] or [`MAX_DATA`]).
pub fn encode<T: Serialize>(message: &T, limit: usize) -> Result<Vec<u8>, EncodeError> {
    let mut frame = vec![0u8; 4];
    let encoded = if limit <= MAX_CONTROL {
        bincode::serde::encode_into_std_write(message, &mut frame, control_config())
    } else {
        bincode::serde::encode_into_std_write(message, &mut frame, data_config())
    }
    .map_err(|e| EncodeError::Bincode(e.to_string()))?;
    if encoded > limit {
        return Err(EncodeError::TooLarge {
            size: encoded,
            limit,
        });
    }
    frame[..4].copy_from_slice(&(encoded as u32).to_le_bytes());
    Ok(frame)
}

/// Checks a frame's 4-byte length prefix against `limit`; returns the body length.
pub fn frame_len(prefix: [u8; 4], limit: usize) -> Result<usize, DecodeError> {
    let size = u32::from_le_bytes(prefix) as usize;
    if size > limit {
        return Err(DecodeError::TooLarge { size, limit });
    }
    Ok(size)
}

/// Decodes a frame's body (without the length prefix) under `limit`. Never panics,
/// whatever the bytes.
pub fn decode<T: DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, DecodeError> {
    if body.len() > limit {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            limit,
        });
    }
    let decoded = if limit <= MAX_CONTROL {
        bincode::serde::decode_from_slice(body, control_config())
    } else {
        bincode::serde::decode_from_slice(body, data_config())
    };
    let (message, used) = decoded.map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Trailing(body.len() - used));
    }
    Ok(message)
}

/// Decodes a whole frame (length prefix + body), as received in one piece.
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, DecodeError> {
    let Some((prefix, body)) = frame.split_first_chunk::<4>() else {
        return Err(DecodeError::Malformed(format!(
            "{} bytes cannot hold a frame header",
            frame.len()
        )));
    };
    let size = frame_len(*prefix, limit)?;
    if size != body.len() {
        return Err(DecodeError::Malformed(format!(
            "frame announces {size} bytes but carries {}",
            body.len()
        )));
    }
    decode(body, limit)
}

/// Checks a job as it travels (its kernel's manifest entry, items and wire arguments,
/// with the lengths of its whole buffers from `whole_len`) with the one argument checker,
/// and that the wire says exactly what the checked layout says. Nodes and workers check
/// what a client sends this way.
pub fn check_wire(
    spec: &kernel_model::KernelSpec,
    items: u64,
    args: &[WireArg],
    whole_len: &dyn Fn(&Hash) -> Option<u64>,
) -> Result<kernel_model::Layout, String> {
    use kernel_model::{ArgKind, ArgLayout, Given, ScalarValue};
    if args.len() != spec.args.len() {
        return Err(format!(
            "kernel `{}` takes {} arguments, the job gives {}",
            spec.name,
            spec.args.len(),
            args.len()
        ));
    }
    let mut given = Vec::with_capacity(args.len());
    for (arg, wire) in spec.args.iter().zip(args) {
        given.push(match (wire, &arg.kind) {
            (WireArg::Scalar(bits), ArgKind::Scalar(ty)) => {
                Given::Scalar(ScalarValue::from_bits(*bits, *ty))
            }
            (WireArg::Scalar(bits), ArgKind::Buffer { .. }) => {
                Given::Scalar(ScalarValue::U64(*bits))
            }
            (WireArg::Whole(hash), _) => Given::bytes(
                whole_len(hash).ok_or_else(|| format!("buffer `{}` is missing", arg.name))?,
            ),
            (WireArg::Split { bytes_per_item, .. }, _) => {
                Given::bytes(items.checked_mul(*bytes_per_item).ok_or_else(|| {
                    format!("buffer `{}` is larger than a 64-bit count", arg.name)
                })?)
            }
            (WireArg::Sum(bytes), _) => Given::bytes(*bytes),
        });
    }
    let layout = kernel_model::check(spec, items, &given).map_err(|e| e.to_string())?;
    for ((arg, wire), checked) in spec.args.iter().zip(args).zip(&layout.args) {
        let fits = match (wire, checked) {
            (WireArg::Scalar(_), ArgLayout::Scalar(_))
            | (WireArg::Whole(_), ArgLayout::Whole { .. })
            | (WireArg::Sum(_), ArgLayout::Sum { .. }) => true,
            (
                WireArg::Split {
                    bytes_per_item,
                    input,
                    output,
                    halo,
                },
                split @ ArgLayout::Split {
                    access, halo: h, ..
                },
            ) => {
                *bytes_per_item == split.bytes_per_item()
                    && *input == access.reads_input()
                    && *output == access.writes_output()
                    && halo == h
            }
            _ => false,
        };
        if !fits {
            return Err(format!(
                "argument `{arg}` of kernel `{}` does not match how the job sends it",
                spec.name
            ));
        }
    }
    Ok(layout)
}

/// The node's verdict on a client's hello: `Ok` to go on, or the refusal to send.
pub fn check_hello(hello: &Hello) -> Result<(), String> {
    if hello.magic != MAGIC {
        return Err("not an offload client (bad magic in hello)".into());
    }
    if hello.version != VERSION {
        return Err(format!(
            "protocol version {} is not supported: this node speaks version {VERSION}",
            hello.version
        ));
    }
    Ok(())
}

/// The size limit of a request frame whose body starts with `tag`: only the kinds that
/// carry data may be large. bincode writes an enum's variant index first, as a varint
/// that is one byte below 251, so the first byte of the body names the kind before the
/// rest is read or allocated (a test pins the tags to the variants).
pub fn request_limit(tag: u8) -> usize {
    match tag {
        // Request::Package: a package file.
        1 => kernel_model::MAX_PACKAGE_BYTES + 1024,
        // Request::Run: a packet's input slices.
        5 => MAX_DATA,
        // Everything else is control: hashes, a job's description, numbers.
        _ => MAX_CONTROL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip() {
        let request = Request::Run {
            job: 3,
            packet: 9,
            start: 100,
            end: 200,
            device: Some(1),
            slices: vec![vec![1, 2, 3], vec![]],
        };
        let frame = encode(&request, MAX_DATA).expect("encode");
        assert_eq!(decode_frame::<Request>(&frame, MAX_DATA), Ok(request));
    }

    #[test]
    fn malformed_message_is_refused() {
        // A variant index far beyond the enum's.
        let err =
            decode::<Request>(&[0xfb, 0xff, 0xff, 0xff, 0x7f], MAX_DATA).expect_err("bad tag");
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
        // Truncated: a Run with nothing after its tag.
        let frame = encode(&Request::Ping, MAX_CONTROL).expect("encode");
        let mut body = frame[4..].to_vec();
        body[0] = 5; // Run
        assert!(matches!(
            decode::<Request>(&body, MAX_DATA),
            Err(DecodeError::Malformed(_))
        ));
        // Trailing garbage.
        let mut body = frame[4..].to_vec();
        body.push(0);
        assert_eq!(
            decode::<Request>(&body, MAX_DATA),
            Err(DecodeError::Trailing(1))
        );
    }

    #[test]
    fn oversized_message_is_refused_before_allocation() {
        // A length prefix over the limit is refused from the four bytes alone.
        let prefix = ((MAX_CONTROL + 1) as u32).to_le_bytes();
        assert_eq!(
            frame_len(prefix, MAX_CONTROL),
            Err(DecodeError::TooLarge {
                size: MAX_CONTROL + 1,
                limit: MAX_CONTROL
            })
        );
        // A hello claiming a 1 GiB client name inside a small frame is refused by
        // bincode's limit, not allocated.
        let mut body = encode(
            &Hello {
                magic: MAGIC,
                version: VERSION,
                client: String::new(),
            },
            MAX_CONTROL,
        )
        .expect("encode")[4..]
            .to_vec();
        body.truncate(body.len() - 1);
        body.extend_from_slice(&[0xfc, 0, 0, 0, 0x40]);
        assert!(decode::<Hello>(&body, MAX_CONTROL).is_err());
        // Encoding refuses what the peer would refuse.
        let big = Request::Package(vec![0; MAX_CONTROL + 1]);
        assert!(matches!(
            encode(&big, MAX_CONTROL),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn each_request_kind_has_its_own_limit_read_from_its_first_byte() {
        let cases = [
            (Request::HavePackage([0; 32]), MAX_CONTROL),
            (
                Request::Package(vec![1, 2, 3]),
                kernel_model::MAX_PACKAGE_BYTES + 1024,
            ),
            (Request::HaveBuffer([0; 32]), MAX_CONTROL),
            (
                Request::Buffer {
                    len: 1 << 20,
                    hash: [0; 32],
                },
                MAX_CONTROL,
            ),
            (
                Request::Prepare {
                    job: 1,
                    package: [0; 32],
                    kernel: "k".into(),
                    items: 10,
                    args: vec![WireArg::Scalar(1)],
                },
                MAX_CONTROL,
            ),
            (
                Request::Run {
                    job: 1,
                    packet: 2,
                    start: 0,
                    end: 1,
                    device: None,
                    slices: vec![vec![0; 8]],
                },
                MAX_DATA,
            ),
            (Request::EndJob(1), MAX_CONTROL),
            (Request::Ping, MAX_CONTROL),
            (Request::Status, MAX_CONTROL),
        ];
        for (request, limit) in cases {
            let frame = encode(&request, MAX_DATA).expect("encode");
            assert_eq!(request_limit(frame[4]), limit, "{request:?}");
        }
    }

    #[test]
    fn other_versions_are_refused_naming_both() {
        let hello = Hello {
            magic: MAGIC,
            version: VERSION + 1,
            client: "c".into(),
        };
        let reason = check_hello(&hello).expect_err("other version");
        assert!(
            reason.contains(&format!("version {}", VERSION + 1)),
            "{reason}"
        );
        assert!(reason.contains(&format!("version {VERSION}")), "{reason}");
        let ok = Hello {
            version: VERSION,
            ..hello
        };
        assert_eq!(check_hello(&ok), Ok(()));
        let stranger = Hello {
            magic: *b"HTTP",
            ..ok
        };
        assert!(check_hello(&stranger).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<Request>(&bytes, MAX_DATA);
            let _ = decode::<Request>(&bytes, MAX_DATA);
            let _ = decode::<Response>(&bytes, MAX_DATA);
            let _ = decode::<Hello>(&bytes, MAX_CONTROL);
            let _ = decode::<HelloReply>(&bytes, MAX_CONTROL);
            let _ = decode::<ToWorker>(&bytes, MAX_DATA);
            let _ = decode::<FromWorker>(&bytes, MAX_DATA);
        }

        #[test]
        fn run_requests_round_trip(job in any::<u64>(), start in any::<u64>(), len in 0u64..1000,
                                   slices in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4)) {
            let request = Request::Run { job, packet: job ^ 1, start, end: start.wrapping_add(len), device: None, slices };
            let frame = encode(&request, MAX_DATA).expect("encode");
            prop_assert_eq!(decode_frame::<Request>(&frame, MAX_DATA), Ok(request));
        }
    }
}
