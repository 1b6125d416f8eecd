//! Baselines for the `cluster` benchmark: the same bytes copied over loopback by a plain
//! TCP socket and by TLS 1.3 over TCP (rustls, ring, the cluster's own certificates),
//! so the QUIC figures are compared with the strongest honest alternatives in one run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::credentials::{Credentials, CredentialsError, SERVER_NAME};

/// A baseline that could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaselineError {
    /// Socket trouble.
    #[error("baseline socket: {0}")]
    Io(#[from] std::io::Error),
    /// TLS set-up.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// TLS handshake or record error.
    #[error("baseline TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The receiving thread failed.
    #[error("baseline receiver failed")]
    Receiver,
}

const CHUNK: usize = 1 << 20;

fn sink(mut stream: impl Read) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buffer)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

fn pour(mut stream: impl Write, total: u64) -> std::io::Result<()> {
    let chunk = vec![0x5au8; CHUNK];
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    stream.flush()
}

/// Copies `total` bytes over a loopback TCP connection; returns the time until the
/// receiver has read them all.
pub fn tcp_copy(total: u64) -> Result<Duration, BaselineError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let (stream, _) = listener.accept()?;
        sink(stream)
    });
    let started = Instant::now();
    let stream = TcpStream::connect(addr)?;
    pour(&stream, total)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let received = receiver.join().map_err(|_| BaselineError::Receiver)??;
    let elapsed = started.elapsed();
    if received != total {
        return Err(BaselineError::Receiver);
    }
    Ok(elapsed)
}

/// Copies `total` bytes over TLS 1.3 on loopback TCP with mutual authentication by
/// `credentials`; returns the time until the receiver has decrypted them all (the
/// handshake included, as QUIC's is in its figures).
pub fn tls_copy(credentials: &Credentials, total: u64) -> Result<Duration, BaselineError> {
    let mut server_config = credentials.server_config()?;
    server_config.alpn_protocols.clear();
    let mut client_config = credentials.client_config()?;
    client_config.alpn_protocols.clear();
    let server_config = Arc::new(server_config);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> Result<u64, BaselineError> {
        let (stream, _) = listener.accept()?;
        let connection = rustls::ServerConnection::new(server_config)?;
        let tls = rustls::StreamOwned::new(connection, stream);
        Ok(sink(tls)?)
    });
    let started = Instant::now();
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
        .map_err(|e| BaselineError::Io(std::io::Error::other(e.to_string())))?;
    let connection = rustls::ClientConnection::new(Arc::new(client_config), name)?;
    let stream = TcpStream::connect(addr)?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    pour(&mut tls, total)?;
    tls.conn.send_close_notify();
    tls.flush()?;
    let received = receiver.join().map_err(|_| BaselineError::Receiver)??;
    let elapsed = started.elapsed();
    if received != total {
        return Err(BaselineError::Receiver);
    }
    Ok(elapsed)
}
