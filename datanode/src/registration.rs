//! Registering with the head node: connect (by name, resolved on every
//! attempt, bounded in time), `peticion` / `confirmacion`, the hello line
//! (node id, incarnation, zone, store id), the cluster token's challenge in
//! both directions, and `welcome` with the head node's epoch. A head node
//! older than the newest epoch this directory has seen is refused.

use protocol::HandshakeError;
use protocol::auth::{Exchange, Nonce};
use protocol::connection::Connection;
use protocol::datanode::{DataNodeHello, FromDataNode, STALE_HEAD, ToDataNode};
use protocol::error::truncate_for_log;
use protocol::handshake;
use tokio::net::TcpStream;
use tracing::{error, info};

use crate::config::{Config, FORWARD_OVERHEAD};
use crate::error::DataNodeError;
use crate::storage::{EpochCheck, check_epoch};

/// Why a registration attempt failed.
pub(crate) enum ConnectError {
    /// Try again after the backoff.
    Retry(String),
    /// Retrying cannot help: the node stops.
    Fatal(DataNodeError),
}

/// Connects, registers and is welcomed; the connection and the head node's
/// epoch. A head node whose epoch is older than `newest_epoch` is refused
/// with a `stale head node` error and retried later: a newer one may take
/// its address.
pub(crate) async fn connect(
    config: &Config,
    newest_epoch: u64,
    store_id: u64,
) -> Result<(Connection, u64), ConnectError> {
    let retry = |e: &dyn std::fmt::Display| ConnectError::Retry(e.to_string());
    let unauthorized = |why: &str| {
        ConnectError::Fatal(DataNodeError::Unauthorized(
            config.headnode.clone(),
            why.to_owned(),
        ))
    };
    let head_not_authenticated =
        || ConnectError::Fatal(DataNodeError::HeadNotAuthenticated(config.headnode.clone()));
    let stream = open_stream(config).await.map_err(|e| retry(&e))?;
    let mut conn = Connection::connect(stream, config.max_line.saturating_add(FORWARD_OVERHEAD))
        .map_err(|e| retry(&e))?;
    let node_nonce = config.cluster_token.as_ref().map(|_| Nonce::random());
    let hello = DataNodeHello {
        node_id: Some(config.node_id.clone()),
        incarnation: Some(config.incarnation),
        nonce: node_nonce,
        zone: config.zone.clone(),
        store: Some(store_id),
    };
    let role = hello.to_line();
    match handshake::initiate(
        &mut conn.reader,
        &mut conn.writer,
        Some(&role),
        handshake::DEFAULT_HANDSHAKE_TIMEOUT,
    )
    .await
    {
        Ok(_) => {}
        Err(HandshakeError::Refused(reason)) if reason.starts_with("unauthorized") => {
            return Err(unauthorized(&reason));
        }
        Err(e) => return Err(retry(&e)),
    }
    let mut authenticated = false;
    loop {
        let answer = tokio::time::timeout(
            handshake::DEFAULT_HANDSHAKE_TIMEOUT,
            conn.reader.read_frame(),
        )
        .await;
        let answer = match answer {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                return Err(retry(
                    &"head node closed the connection during registration",
                ));
            }
            Ok(Err(e)) => return Err(retry(&e)),
            Err(_) => return Err(retry(&"no registration answer from the head node")),
        };
        match ToDataNode::parse(answer.as_str()) {
            Ok(ToDataNode::Challenge { nonce, proof }) if !authenticated => {
                let (Some(token), Some(node_nonce)) = (&config.cluster_token, &node_nonce) else {
                    return Err(unauthorized("the head node requires a cluster token"));
                };
                let exchange = Exchange {
                    node_id: config.node_id.as_str(),
                    incarnation: config.incarnation,
                    node_nonce,
                    head_nonce: &nonce,
                };
                let Some(ours) = token.answer_challenge(&exchange, &proof) else {
                    return Err(head_not_authenticated());
                };
                authenticated = true;
                conn.writer
                    .queue_with(|buf| FromDataNode::Proof(ours).encode(buf));
                conn.writer.flush().await.map_err(|e| retry(&e))?;
            }
            Ok(ToDataNode::Welcome { node: id, epoch }) => {
                if config.cluster_token.is_some() && !authenticated {
                    return Err(head_not_authenticated());
                }
                if let EpochCheck::Stale { newest } = check_epoch(newest_epoch, epoch) {
                    let reason = stale_head_reason(epoch, newest);
                    error!(
                        headnode = %config.headnode, epoch, newest,
                        "refusing a stale head node: its epoch {epoch} is older than {newest}, \
                         which a newer head node had; it may not store anything here (will retry: \
                         a newer head node may come back at this address)"
                    );
                    conn.writer
                        .queue_with(|buf| FromDataNode::Error(reason.clone()).encode(buf));
                    let _ = conn.writer.flush().await;
                    return Err(ConnectError::Retry(reason));
                }
                info!(
                    node = %id, epoch,
                    "Conexion establecida con {} y {}; registered as {id}",
                    conn.local, conn.peer
                );
                return Ok((conn, epoch));
            }
            Ok(ToDataNode::Error(reason)) if reason.starts_with("unauthorized") => {
                return Err(unauthorized(reason));
            }
            Ok(ToDataNode::Error(reason)) if reason.starts_with("stale incarnation") => {
                // A newer process with this id has registered: this one is
                // the stale one and must not come back.
                return Err(ConnectError::Fatal(DataNodeError::Superseded(
                    reason.to_owned(),
                )));
            }
            Ok(ToDataNode::Error(reason)) => {
                return Err(ConnectError::Retry(format!("refused: {reason}")));
            }
            _ => {
                return Err(ConnectError::Retry(format!(
                    "unexpected registration answer {:?}",
                    truncate_for_log(answer.as_str())
                )));
            }
        }
    }
}

/// The reason of the error line that refuses a stale head node.
fn stale_head_reason(epoch: u64, newest: u64) -> String {
    format!(
        "{STALE_HEAD}: epoch {epoch} is older than {newest}, the newest this data node has seen; \
         a newer head node has run since, so this one may not store anything"
    )
}

async fn open_stream(config: &Config) -> std::io::Result<TcpStream> {
    protocol::net::dial(
        &config.headnode,
        config.source_ip,
        protocol::net::CONNECT_TIMEOUT,
    )
    .await
}
