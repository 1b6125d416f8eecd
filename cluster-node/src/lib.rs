//! offload's node agent and its kernel workers: what `offload node` runs on every
//! machine of a cluster. The agent ([`node::run`]) accepts members' QUIC connections
//! (the transport, credentials and discovery come from the `cluster` crate), keeps the
//! packages and whole buffers they upload in bounded caches, and hands packets to worker
//! processes ([`worker`]) that JIT-compile the kernel for this CPU (or run it on an
//! OpenCL device), then apply the sandbox before running anything; a crash or hang fails
//! the packet, not the node. [`fault`] is test-only misbehaviour (the `fault-injection`
//! feature); the metrics endpoint is `offload node --metrics`. This crate pulls in LLVM
//! (through the JIT); the client (`cluster`) does not.

mod buffer_cache;
pub mod fault;
mod metrics;
pub mod node;
pub mod worker;
