//! `offload status`: asks each node what it is doing ([`Request::Status`]) over the
//! cluster's authenticated channel, so only members see it.
//!
//! A [`Survey`] keeps its connections between refreshes (`offload status --watch`
//! asks the same nodes every few seconds without a new handshake each time), and
//! reports an unreachable or refusing node with the reason instead of leaving it out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::client::{connect_one, request, ClientError};
use crate::credentials::Credentials;
use crate::protocol::{NodeStatus, Request, Response};

/// What one node said, or why it said nothing.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// Where it was asked.
    pub addr: SocketAddr,
    /// Its status, or why there is none (unreachable, refused us, older protocol).
    pub status: Result<NodeStatus, String>,
}

/// Connections to a set of nodes, asked for their status on each [`Survey::refresh`].
pub struct Survey {
    runtime: crate::driver::Driver,
    endpoint: quinn::Endpoint,
    addrs: Vec<SocketAddr>,
    connections: HashMap<SocketAddr, quinn::Connection>,
    timeout: Duration,
}

impl Survey {
    /// A survey of `addrs` as the member `credentials`; each node gets `timeout` to
    /// connect and answer.
    pub fn new(
        credentials: &Credentials,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<Survey, ClientError> {
        let runtime = crate::driver::Driver::new().map_err(ClientError::Runtime)?;
        let endpoint = {
            let _guard = runtime.enter();
            crate::wire::client_endpoint(credentials, crate::wire::DEFAULT_IDLE)?
        };
        Ok(Survey {
            runtime,
            endpoint,
            addrs,
            connections: HashMap::new(),
            timeout,
        })
    }

    /// Asks every node, at once, for its status (connecting to those not connected).
    pub fn refresh(&mut self) -> Result<Vec<NodeReport>, ClientError> {
        let endpoint = self.endpoint.clone();
        let timeout = self.timeout;
        let asks: Vec<(SocketAddr, Option<quinn::Connection>)> = self
            .addrs
            .iter()
            .map(|addr| {
                let open = self
                    .connections
                    .get(addr)
                    .filter(|c| c.close_reason().is_none())
                    .cloned();
                (*addr, open)
            })
            .collect();
        let answers = self
            .runtime
            .block_on(async move {
                let tasks: Vec<_> = asks
                    .into_iter()
                    .map(|(addr, open)| {
                        let endpoint = endpoint.clone();
                        tokio::spawn(async move {
                            let asked = tokio::time::timeout(timeout, ask(&endpoint, addr, open))
                                .await
                                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                            (addr, asked)
                        })
                    })
                    .collect();
                let mut answers = Vec::new();
                for task in tasks {
                    if let Ok(answer) = task.await {
                        answers.push(answer);
                    }
                }
                answers
            })
            .map_err(ClientError::Runtime)?;
        let mut reports = Vec::new();
        for (addr, asked) in answers {
            match asked {
                Ok((status, connection)) => {
                    self.connections.insert(addr, connection);
                    reports.push(NodeReport {
                        addr,
                        status: Ok(status),
                    });
                }
                Err(reason) => {
                    self.connections.remove(&addr);
                    reports.push(NodeReport {
                        addr,
                        status: Err(reason),
                    });
                }
            }
        }
        reports.sort_by_key(|r| r.addr);
        Ok(reports)
    }
}

impl Drop for Survey {
    fn drop(&mut self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"status done");
        let endpoint = self.endpoint.clone();
        let _ = self.runtime.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_millis(250), endpoint.wait_idle()).await;
        });
    }
}

/// One node's status over `open` (or a new connection).
async fn ask(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    open: Option<quinn::Connection>,
) -> Result<(NodeStatus, quinn::Connection), String> {
    let connection = match open {
        Some(connection) => connection,
        None => connect_one(endpoint, addr).await?.connection,
    };
    match request(&connection, &Request::Status).await {
        Ok(Response::Status(status)) => Ok((*status, connection)),
        Ok(other) => Err(format!(
            "answered the status request with {} (an older node?)",
            other.describe()
        )),
        Err(e) => Err(e.to_string()),
    }
}
