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
pub(crate) async fn send<T: Serialize>(
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
pub(crate) async fn send_frame(
    stream: &mut quinn::SendStream,
    frame: &[u8],
) -> Result<(), WireError> {
    stream.write_all(frame).await?;
    stream.finish()?;
    Ok(())
}

/// Reads one frame, refusing it before allocation if its length exceeds `limit`.
pub(crate) async fn recv<T: DeserializeOwned>(
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
/// paused or vanished peer is noticed within `idle`, large flow-control windows for
/// bulk buffers, and MTU discovery up to what loopback and jumbo frames allow.
///
fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(idle / 4));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.stream_receive_window(quinn::VarInt::from_u32(64 << 20));
    t.receive_window(quinn::VarInt::from_u32(256 << 20));
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

/// A QUIC server endpoint that accepts only cluster members.
pub(crate) fn server_endpoint(
    credentials: &Credentials,
    listen: SocketAddr,
    idle: Duration,
) -> Result<quinn::Endpoint, EndpointError> {
    let tls = credentials.server_config()?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(idle));
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
pub(crate) fn client_endpoint(
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
