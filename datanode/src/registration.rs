//! Registering with the head node: connect (by name, resolved on every
//! attempt, bounded in time), then the protocol's registration
//! ([`protocol::datanode::register`]): `peticion` / `confirmacion`, the hello line
//! (node id, incarnation, zone, store id), the cluster token's challenge in
//! both directions, and `welcome` with the head node's epoch and head-id. A
//! head node the newest fence this directory has accepted does not admit
//! is refused (it goes above the epoch the refusal names). What
//! retrying can fix is retried; a wrong token on either side, or a newer
//! process with this id, stops the node.

use protocol::auth::Nonce;
use protocol::connection::Connection;
use protocol::datanode::Fence;
use protocol::datanode::register::{RegisterError, Registration, Welcomed, register};
use protocol::handshake;
use tokio::net::TcpStream;
use tracing::{error, info};

use crate::config::{Config, FORWARD_OVERHEAD};
use crate::error::DataNodeError;

/// What this data node says of itself when it registers, besides its
/// configuration.
pub(crate) struct Me {
    /// This process's incarnation.
    pub(crate) incarnation: u64,
    /// The name of its data directory.
    pub(crate) store_id: u64,
    /// The newest head node it has accepted.
    pub(crate) newest: Fence,
}

/// Why a registration attempt failed.
pub(crate) enum ConnectError {
    /// Try again after the backoff.
    Retry(String),
    /// Retrying cannot help: the node stops.
    Fatal(DataNodeError),
}

/// Connects, registers and is welcomed; the connection and the head node's
/// fence. A head node `newest` does not admit is refused with a `stale head
/// node` error and retried later: it goes above the epoch the refusal
/// names, or a newer one takes its address.
pub(crate) async fn connect(config: &Config, me: &Me) -> Result<(Connection, Fence), ConnectError> {
    let retry = |e: &dyn std::fmt::Display| ConnectError::Retry(e.to_string());
    let stream = open_stream(config).await.map_err(|e| retry(&e))?;
    let mut conn = Connection::connect(stream, config.max_line.saturating_add(FORWARD_OVERHEAD))
        .map_err(|e| retry(&e))?;
    let registration = Registration {
        node_id: config.node_id.clone(),
        incarnation: me.incarnation,
        zone: config.zone.clone(),
        store: Some(me.store_id),
        token: config
            .cluster_token
            .as_ref()
            .map(|token| (token, Nonce::random())),
        newest: me.newest,
        step_timeout: handshake::DEFAULT_HANDSHAKE_TIMEOUT,
    };
    match register(&mut conn, &registration).await {
        Ok(Welcomed { node: id, fence }) => {
            info!(
                node = %id, epoch = fence.epoch, head = %fence.head,
                "Conexion establecida con {} y {}; registered as {id}",
                conn.local, conn.peer
            );
            Ok((conn, fence))
        }
        Err(RegisterError::Unauthorized(reason)) => Err(ConnectError::Fatal(
            DataNodeError::Unauthorized(config.headnode.clone(), reason),
        )),
        Err(RegisterError::HeadNotAuthenticated) => Err(ConnectError::Fatal(
            DataNodeError::HeadNotAuthenticated(config.headnode.clone()),
        )),
        // A newer process with this id has registered: this one is the
        // stale one and must not come back.
        Err(RegisterError::Superseded(reason)) => {
            Err(ConnectError::Fatal(DataNodeError::Superseded(reason)))
        }
        Err(e @ RegisterError::StaleHead { offered, newest }) => {
            error!(
                headnode = %config.headnode, offered = %offered, newest = %newest,
                "refusing a stale head node: {e} (will retry: the head node goes above the \
                 newest epoch, or a newer one takes its address)"
            );
            Err(retry(&e))
        }
        Err(e) => Err(retry(&e)),
    }
}

async fn open_stream(config: &Config) -> std::io::Result<TcpStream> {
    protocol::net::dial(
        &config.headnode,
        config.source_ip,
        protocol::net::CONNECT_TIMEOUT,
    )
    .await
}
