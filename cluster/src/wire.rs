//! The thin I/O shell around [`crate::protocol`]: frames on QUIC streams, and the QUIC
//! endpoints with their transport settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::credentials::{Credentials, CredentialsError};
use crate::protocol::{self, DecodeError, EncodeError};

/// Errors of moving one message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing failed.
    #[error("sending failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading failed.
    #[error("receiving failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Reading a raw payload failed.
    #[error("receiving failed: {0}")]
    ReadPayload(#[from] quinn::ReadError),
    /// The stream was closed.
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    /// The peer sent bytes that are not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Writes one frame and finishes the stream.
pub async fn send<T: Serialize>(
    stream: &mut quinn::SendStream,
    message: &T,
    limit: usize,
) -> Result<(), WireError> {
    let frame = protocol::encode(message, limit)?;
    stream.write_all(&frame).await?;
    stream.finish()?;
    Ok(())
}

/// Writes an already encoded frame and finishes the stream.
pub async fn send_frame(stream: &mut quinn::SendStream, frame: &[u8]) -> Result<(), WireError> {
    stream.write_all(frame).await?;
    stream.finish()?;
    Ok(())
}

/// Writes one frame followed by `payload` raw, and finishes the stream. The payload is
/// handed to quinn as it is (no copy into a frame): bulk buffers go out as fast as
/// QUIC can packetize them.
pub async fn send_with_payload<T: Serialize>(
    stream: &mut quinn::SendStream,
    message: &T,
    payload: bytes::Bytes,
) -> Result<(), WireError> {
    let frame = bytes::Bytes::from(protocol::encode(message, MAX_HEADER)?);
    stream.write_all_chunks(&mut [frame, payload]).await?;
    stream.finish()?;
    Ok(())
}

/// Frames announcing a raw payload are small.
const MAX_HEADER: usize = protocol::MAX_CONTROL;

/// Reads the `len` raw bytes announced by a frame, into `reuse` if it is given and
/// large enough. `len` must be within `limit`, and the stream must end right after them.
pub async fn recv_payload(
    stream: &mut quinn::RecvStream,
    len: u64,
    limit: usize,
    reuse: Option<Vec<u8>>,
) -> Result<Vec<u8>, WireError> {
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= limit)
        .ok_or(DecodeError::TooLarge {
            size: usize::try_from(len).unwrap_or(usize::MAX),
            limit,
        })?;
    let mut bytes = match reuse {
        Some(mut spare) if spare.capacity() >= len => {
            spare.clear();
            spare
        }
        _ => {
            let fresh = Vec::with_capacity(len);
            advise_huge_pages(&fresh);
            fresh
        }
    };
    while let Some(chunk) = stream.read_chunk(len - bytes.len(), true).await? {
        bytes.extend_from_slice(&chunk.bytes);
        if bytes.len() == len {
            break;
        }
    }
    if bytes.len() < len {
        return Err(DecodeError::Malformed(format!(
            "the stream ended after {} of the {len} announced bytes",
            bytes.len()
        ))
        .into());
    }
    // Anything after the announced bytes is a protocol violation, not data to drop.
    if let Some(extra) = stream.read_chunk(1, true).await? {
        if !extra.bytes.is_empty() {
            return Err(DecodeError::Trailing(extra.bytes.len()).into());
        }
    }
    Ok(bytes)
}

/// Asks the kernel to back a large fresh allocation with transparent huge pages: a
/// buffer arriving at network speed otherwise spends a tenth of the node's time in
/// 4 KiB page faults. Only advice: where THP is off, nothing changes.
fn advise_huge_pages(bytes: &Vec<u8>) {
    const PAGE: usize = 4096;
    if bytes.capacity() < (4 << 20) {
        return;
    }
    let start = (bytes.as_ptr() as usize).next_multiple_of(PAGE);
    let end = (bytes.as_ptr() as usize + bytes.capacity()) & !(PAGE - 1);
    if end > start {
        // SAFETY: the range lies inside this vector's own allocation and is page
        // aligned; MADV_HUGEPAGE changes no contents, only how pages are backed.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// Memory a node sets aside for one request's body, returned to the budget when
/// dropped.
pub type Reserved<'a> = tokio::sync::SemaphorePermit<'a>;

/// Sets `bytes` aside in `budget` (counted in MiB), waiting while other requests hold
/// it; one request may take the whole budget but no more.
pub async fn reserve(
    budget: &tokio::sync::Semaphore,
    bytes: u64,
) -> Result<Reserved<'_>, WireError> {
    let mib = u32::try_from(bytes.div_ceil(1 << 20).max(1)).unwrap_or(u32::MAX);
    let whole = u32::try_from(budget.available_permits()).unwrap_or(u32::MAX);
    budget
        .acquire_many(mib.min(whole.max(1)))
        .await
        .map_err(|_| WireError::Decode(DecodeError::Malformed("the node is shutting down".into())))
}

/// Reads one request: its length prefix, then the first byte of its body, which names
/// its kind and so its size limit ([`protocol::request_limit`]), before the body is
/// allocated within `budget`. Returns the request and its share of the budget.
pub async fn recv_request<'a, T: DeserializeOwned>(
    stream: &mut quinn::RecvStream,
    budget: &'a tokio::sync::Semaphore,
) -> Result<(T, Reserved<'a>), WireError> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await?;
    let len = protocol::frame_len(prefix, protocol::MAX_DATA)?;
    if len == 0 {
        return Err(DecodeError::Malformed("an empty message".into()).into());
    }
    let mut tag = [0u8; 1];
    stream.read_exact(&mut tag).await?;
    let limit = protocol::request_limit(tag[0]);
    if len > limit {
        return Err(DecodeError::TooLarge { size: len, limit }.into());
    }
    let reserved = reserve(budget, len as u64).await?;
    let mut body = vec![0u8; len];
    body[0] = tag[0];
    stream.read_exact(&mut body[1..]).await?;
    Ok((protocol::decode(&body, limit)?, reserved))
}

/// Reads one frame, refusing it before allocation if its length exceeds `limit`.
pub async fn recv<T: DeserializeOwned>(
    stream: &mut quinn::RecvStream,
    limit: usize,
) -> Result<T, WireError> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await?;
    let len = protocol::frame_len(prefix, limit)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(protocol::decode(&body, limit)?)
}

/// Transport settings shared by nodes and clients: keep-alives and an idle timeout so a
/// paused or vanished peer is noticed within `idle`, flow-control windows, and MTU
/// discovery up to what loopback and jumbo frames allow.
///
/// The windows (8 MiB a stream, 16 MiB a connection) are many times a LAN's
/// bandwidth-delay product yet smaller than what the UDP socket buffer holds, so a
/// receiver that falls behind slows the sender by flow control instead of by dropped
/// datagrams: with 64/256 MiB windows up to 4 % of bulk datagrams were lost on loopback,
/// each a retransmission and a congestion-window cut (docs/cluster.md).
fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Often enough that a node takes a second of silence from a client with packets
    // running for the client's death (node.rs `CLIENT_SILENCE`); a keep-alive is one
    // small datagram.
    t.keep_alive_interval(Some((idle / 4).min(KEEP_ALIVE)));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    t.receive_window(quinn::VarInt::from_u32(16 << 20));
    t.send_window(256 << 20);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // With segmentation offload (GSO) on, MTU probes never arrived on the loopback of
    // the machine this was measured on (every probe lost, the path pinned at 1200 bytes
    // by black-hole detection); without it the path reaches 65 495 bytes and bulk
    // throughput doubles. See docs/cluster.md.
    t.enable_segmentation_offload(false);
    Arc::new(t)
}

/// The longest a connection goes without sending a datagram.
const KEEP_ALIVE: Duration = Duration::from_millis(200);

/// Largest UDP payload we send or accept (loopback and jumbo frames).
const MAX_UDP_PAYLOAD: u16 = 65_527;

/// The default time after which a silent peer counts as gone.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3);

fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // Within quinn's accepted range by construction, so the result is always Ok.
    let _ = config.max_udp_payload_size(MAX_UDP_PAYLOAD);
    config
}

/// Binds a UDP socket with large kernel buffers, so bursts of big datagrams are not
/// dropped before quinn reads them.
fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, EndpointError> {
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| EndpointError::Bind { addr, source })?;
    {
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 16 << 20;
        // The *FORCE options pass net.core.rmem_max when we may (root); otherwise the
        // plain ones give what the system allows.
        for (forced, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            for option in [forced, plain] {
                // SAFETY: setsockopt on a socket we own with a valid c_int option
                // value; failure only leaves the default buffer size.
                let rc = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        libc::SOL_SOCKET,
                        option,
                        (&size as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if rc == 0 {
                    break;
                }
            }
        }
    }
    Ok(socket)
}

/// A QUIC server configuration that accepts only cluster members (not revoked): made
/// again when the revocation list changes ([`quinn::Endpoint::set_server_config`]).
pub fn server_config(
    credentials: &Credentials,
    idle: Duration,
) -> Result<quinn::ServerConfig, EndpointError> {
    let tls = credentials.server_config()?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(idle));
    Ok(config)
}

/// A QUIC server endpoint that accepts only cluster members.
pub fn server_endpoint(
    credentials: &Credentials,
    listen: SocketAddr,
    idle: Duration,
) -> Result<quinn::Endpoint, EndpointError> {
    let config = server_config(credentials, idle)?;
    let socket = udp_socket(listen)?;
    quinn::Endpoint::new(
        endpoint_config(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| EndpointError::Bind {
        addr: listen,
        source,
    })
}

/// A QUIC client configuration presenting `credentials`.
fn client_config(
    credentials: &Credentials,
    idle: Duration,
) -> Result<quinn::ClientConfig, EndpointError> {
    let tls = credentials.client_config()?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(idle));
    Ok(config)
}

/// A QUIC client endpoint presenting `credentials`.
pub fn client_endpoint(
    credentials: &Credentials,
    idle: Duration,
) -> Result<quinn::Endpoint, EndpointError> {
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let socket = udp_socket(bind)?;
    let mut endpoint = quinn::Endpoint::new(
        endpoint_config(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| EndpointError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config(credentials, idle)?);
    Ok(endpoint)
}

/// Why an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Credentials could not be loaded or used.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The TLS configuration does not suit QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Request;

    /// Sends `header` and then `raw` on a fresh stream between two loopback endpoints,
    /// and returns what the receiving side's `recv_payload` made of it.
    fn receive(header: Request, raw: Vec<u8>, limit: usize) -> Result<Vec<u8>, WireError> {
        let dir = tempfile::tempdir().expect("temp dir");
        crate::credentials::init(dir.path()).expect("cluster init");
        let credentials = Credentials::load(dir.path()).expect("credentials");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let server = server_endpoint(&credentials, ([127, 0, 0, 1], 0).into(), DEFAULT_IDLE)
                .expect("server");
            let addr = server.local_addr().expect("server address");
            let client = client_endpoint(&credentials, DEFAULT_IDLE).expect("client");
            let sender = tokio::spawn(async move {
                let connection = client
                    .connect(addr, crate::credentials::SERVER_NAME)
                    .expect("connect")
                    .await
                    .expect("handshake");
                let (mut send, _recv) = connection.open_bi().await.expect("stream");
                send_with_payload(&mut send, &header, bytes::Bytes::from(raw))
                    .await
                    .expect("send");
                // Keep the connection until the receiver is done.
                connection.closed().await;
            });
            let connection = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("accept");
            let (_send, mut recv) = connection.accept_bi().await.expect("stream");
            let request: Request = recv_frame(&mut recv).await;
            let Request::Buffer { len, .. } = request else {
                panic!("expected a buffer header, got {request:?}")
            };
            let result = recv_payload(&mut recv, len, limit, None).await;
            connection.close(0u32.into(), b"done");
            let _ = sender.await;
            result
        })
    }

    async fn recv_frame(stream: &mut quinn::RecvStream) -> Request {
        recv(stream, protocol::MAX_CONTROL)
            .await
            .expect("header frame")
    }

    #[test]
    fn a_raw_payload_arrives_whole() {
        for len in [300_000u32, 3 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let got = receive(
                Request::Buffer {
                    len: bytes.len() as u64,
                    hash: *blake3::hash(&bytes).as_bytes(),
                },
                bytes.clone(),
                protocol::MAX_DATA,
            )
            .expect("received");
            assert!(got == bytes, "{len} bytes arrived changed");
        }
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_before_reading() {
        let err = receive(
            Request::Buffer {
                len: 1 << 20,
                hash: [0; 32],
            },
            vec![0; 10],
            1000,
        )
        .expect_err("over the limit");
        assert!(
            matches!(err, WireError::Decode(DecodeError::TooLarge { size, limit: 1000 }) if size == 1 << 20),
            "{err}"
        );
    }

    #[test]
    fn a_short_or_long_payload_is_refused() {
        let err = receive(
            Request::Buffer {
                len: 100,
                hash: [0; 32],
            },
            vec![1; 60],
            protocol::MAX_DATA,
        )
        .expect_err("short");
        assert!(err.to_string().contains("60 of the 100"), "{err}");
        let err = receive(
            Request::Buffer {
                len: 100,
                hash: [0; 32],
            },
            vec![1; 160],
            protocol::MAX_DATA,
        )
        .expect_err("long");
        assert!(
            matches!(err, WireError::Decode(DecodeError::Trailing(_))),
            "{err}"
        );
    }
}
