//! The kernel worker process: runs packets for a node, so that a kernel that crashes
//! (an out-of-bounds write is a SIGSEGV) or hangs takes down only this process.
//!
//! The node starts it as `offload __worker` (see [`crate::node::NodeConfig::worker`])
//! and talks to it over stdin/stdout with [`ToWorker`]/[`FromWorker`] frames. The
//! worker lowers its own priority first when asked to (nice 19: the machine's owner
//! comes first).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use ir_packager::Package;
use node_jit::{CompiledKernel, Engine};

use crate::protocol::{self, FromWorker, Hash, ToWorker, WireArg, MAX_DATA};

/// Storage aligned for every element type (8 bytes), as kernels need.
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        Aligned {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    fn from_bytes(bytes: &[u8]) -> Aligned {
        let mut a = Aligned::zeroed(bytes.len());
        a.bytes_mut().copy_from_slice(bytes);
        a
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes; u8 needs no alignment.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }

    fn address(&mut self) -> u64 {
        self.words.as_mut_ptr() as u64
    }
}

/// Errors that end the worker (the node restarts it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The pipe to the node broke.
    #[error("worker pipe: {0}")]
    Io(#[from] std::io::Error),
    /// The node sent something that is not a message.
    #[error(transparent)]
    Decode(#[from] protocol::DecodeError),
    /// An answer could not be encoded.
    #[error(transparent)]
    Encode(#[from] protocol::EncodeError),
    /// The JIT could not start.
    #[error(transparent)]
    Jit(#[from] node_jit::JitError),
}

struct State {
    engine: Engine,
    kernels: HashMap<(Hash, String), Arc<CompiledKernel>>,
    buffers: HashMap<Hash, Aligned>,
}

/// Serves one node over stdin/stdout until stdin closes. `nice`: lower this process's
/// priority to 19 first.
pub fn serve(engine_config: node_jit::Config, nice: bool) -> Result<(), WorkerError> {
    if nice {
        // SAFETY: plain libc call on this process; failure only leaves the priority.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        if rc != 0 {
            tracing::warn!(
                "cannot lower the worker's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let mut state = State {
        engine: Engine::new(engine_config)?,
        kernels: HashMap::new(),
        buffers: HashMap::new(),
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut input = stdin.lock();
    let mut output = stdout.lock();
    loop {
        let mut prefix = [0u8; 4];
        match input.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let len = protocol::frame_len(prefix, MAX_DATA)?;
        let mut body = vec![0u8; len];
        input.read_exact(&mut body)?;
        let request: ToWorker = protocol::decode(&body, MAX_DATA)?;
        drop(body);
        let reply = state.handle(request);
        output.write_all(&protocol::encode(&reply, MAX_DATA)?)?;
        output.flush()?;
    }
}

impl State {
    fn handle(&mut self, request: ToWorker) -> FromWorker {
        match request {
            ToWorker::Load { package, kernel } => match self.load(&package, &kernel) {
                Ok(()) => FromWorker::Ready,
                Err(e) => FromWorker::Error(e),
            },
            ToWorker::Buffer { hash, bytes } => {
                self.buffers.insert(hash, Aligned::from_bytes(&bytes));
                FromWorker::Ready
            }
            ToWorker::Forget(hash) => {
                self.buffers.remove(&hash);
                FromWorker::Ready
            }
            ToWorker::Run {
                package,
                kernel,
                start,
                end,
                args,
                slices,
            } => self.run(package, kernel, start, end, &args, slices),
        }
    }

    fn load(&mut self, package: &[u8], kernel: &str) -> Result<(), String> {
        let package = Package::from_bytes(package).map_err(|e| format!("package refused: {e}"))?;
        let compiled = self
            .engine
            .compile(&package, kernel)
            .map_err(|e| format!("cannot compile kernel `{kernel}`: {e}"))?;
        self.kernels
            .insert((package.hash().0, kernel.to_string()), compiled);
        Ok(())
    }

    fn run(
        &mut self,
        package: Hash,
        kernel: String,
        start: u64,
        end: u64,
        args: &[WireArg],
        slices: Vec<Vec<u8>>,
    ) -> FromWorker {
        let Some(compiled) = self.kernels.get(&(package, kernel.clone())).cloned() else {
            return FromWorker::Error(format!("kernel `{kernel}` is not loaded in the worker"));
        };
        if args.len() != compiled.spec().args.len() || end < start {
            return FromWorker::Error(format!(
                "packet {start}..{end} does not match kernel `{kernel}` ({} arguments)",
                compiled.spec().args.len()
            ));
        }
        let items = end - start;
        let mut slices = slices.into_iter();
        // Private storage for this packet: split slices (inputs copied in, outputs
        // zeroed) and sum partials.
        let mut owned: Vec<(usize, Aligned)> = Vec::new();
        let mut block = vec![0u64; args.len()];
        for (slot, arg) in args.iter().enumerate() {
            match arg {
                WireArg::Scalar(bits) => block[slot] = *bits,
                WireArg::Whole(hash) => match self.buffers.get_mut(hash) {
                    Some(buffer) => block[slot] = buffer.address(),
                    None => {
                        return FromWorker::Error("a whole buffer is missing in the worker".into())
                    }
                },
                WireArg::Split {
                    bytes_per_item,
                    input,
                    ..
                } => {
                    let Some(len) = items
                        .checked_mul(*bytes_per_item)
                        .and_then(|n| usize::try_from(n).ok())
                    else {
                        return FromWorker::Error("packet slice size overflows".into());
                    };
                    let mut storage = if *input {
                        match slices.next() {
                            Some(bytes) if bytes.len() == len => Aligned::from_bytes(&bytes),
                            Some(bytes) => {
                                return FromWorker::Error(format!(
                                    "slice of {} bytes for a packet of {items} items needs {len}",
                                    bytes.len()
                                ))
                            }
                            None => return FromWorker::Error("a packet slice is missing".into()),
                        }
                    } else {
                        Aligned::zeroed(len)
                    };
                    // Kernels index with global item numbers: shift the pointer so that
                    // item `start`'s elements land at the slice's beginning.
                    block[slot] = storage
                        .address()
                        .wrapping_sub(start.wrapping_mul(*bytes_per_item));
                    owned.push((slot, storage));
                }
                WireArg::Sum(bytes) => {
                    let Ok(len) = usize::try_from(*bytes) else {
                        return FromWorker::Error("sum buffer too large".into());
                    };
                    let mut storage = Aligned::zeroed(len);
                    block[slot] = storage.address();
                    owned.push((slot, storage));
                }
            }
        }
        let started = Instant::now();
        // SAFETY: every buffer address covers the packet's global indices: split slices
        // hold exactly `items × bytes_per_item` bytes, shifted by `start`; whole buffers
        // and sum partials are complete. A kernel that writes outside them is exactly
        // what this process exists to contain.
        let outcome = unsafe { compiled.run_packet(start, end, &block) };
        let compute_us = started.elapsed().as_micros() as u64;
        if let Err(panic) = outcome {
            return FromWorker::Panicked(panic.reason.to_string());
        }
        let outputs = owned
            .into_iter()
            .filter(|(slot, _)| match &args[*slot] {
                WireArg::Split { output, .. } => *output,
                _ => true,
            })
            .map(|(_, storage)| storage.bytes().to_vec())
            .collect();
        FromWorker::Done {
            compute_us,
            outputs,
        }
    }
}
