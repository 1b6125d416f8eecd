//! offload's cluster, without LLVM: the client that spreads a job's packets over the
//! nodes, the QUIC transport with mutual TLS that it shares with the node agent (the
//! `cluster-node` crate, which serves a machine's cores and runs the kernels), zeroconf
//! and DNS discovery, and the cluster's credentials.
//!
//! Entry points: [`credentials::init`] and [`credentials::issue`] make a cluster CA and
//! member certificates; `cluster_node::node::run` serves a node; [`client::ClusterClient::connect`]
//! and [`client::ClusterClient::run_job`] run a job on the nodes; [`discovery::browse`]
//! lists the nodes on the LAN. The `offload` binary wraps these as `offload cluster`,
//! `offload node`, `offload nodes` and `offload run --cluster`.
//!
//! ```no_run
//! use cluster::client::{ClientConfig, ClusterClient, JobArg};
//! use cluster::credentials::Credentials;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let package = offload_package::Package::read("saxpy.okp".as_ref())?;
//! let credentials = Credentials::load("cluster".as_ref())?;
//! let config = ClientConfig::new(credentials).peers(["127.0.0.1:7878".parse()?]);
//! let mut client = ClusterClient::connect(config)?;
//! let (x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
//! let mut args = [
//!     JobArg::Scalar(kernel_model::ScalarValue::F32(2.0)),
//!     JobArg::Input(&x),
//!     JobArg::Output(&mut y),
//! ];
//! let report = client.run_job(&package, "saxpy", 1024, &mut args)?;
//! println!("{} packets", report.packets);
//! # Ok(()) }
//! ```
//!
//! Concepts:
//! - **Membership** is a certificate signed by the cluster CA; both ends verify it
//!   (mutual TLS, rustls with ring). A peer without one is refused during the handshake,
//!   before it can send a request, and the node logs the refusal.
//! - **Protocol** ([`protocol`], the `offload-protocol` crate re-exported): versioned,
//!   size-limited bincode frames, one QUIC stream per request, content-addressed caches
//!   for packages and whole buffers.
//! - **Scheduling**: every remote core is a scheduler device with several slots, so
//!   packets are pipelined; a lost node's devices leave the job
//!   (`Event::DeviceLost`) and their packets run elsewhere.
//! - **Containment**: kernels run in the node's worker processes (`cluster-node`); a
//!   crash or a hang fails the job with the reason and the node restarts the worker.
//! - **The client's job loop** (`job_loop.rs`) is a pure state machine around the
//!   scheduler core: a packet's answer, a closed connection, a node back or serving
//!   again go in as events, the packets to send, results to commit and nodes to
//!   reconnect come out as actions; it is tested without sockets, and `client.rs` is
//!   the tokio shell that does the I/O.
//! - **Jobs** are one kernel launch each: the client keeps the buffers and ships each
//!   packet's slices (with halos) to the nodes; the `offload` crate runs a program of
//!   many steps as one such job per step.
//!
//! This crate has no feature flags.

pub mod baseline;
pub mod certs;
pub mod client;
pub mod credentials;
pub mod discovery;
pub mod dns;
mod driver;
mod job_loop;
mod link_meter;
pub mod revocation;
pub mod status;
pub mod wire;

/// The cluster protocol (the `offload-protocol` crate): messages, framing, limits.
pub use offload_protocol as protocol;

pub use wire::{EndpointError, WireError, DEFAULT_IDLE};
