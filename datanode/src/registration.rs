//! Registering with the head node: connect (by name, resolved on every
//! attempt, bounded in time), then the protocol's registration
//! ([`protocol::datanode::register`]): `peticion` / `confirmacion`, the hello line
//! (node id, incarnation, zone, store id), the cluster token's challenge in
//! both directions, and `welcome` with the head node's epoch. A head node
//! older than the newest epoch this directory has seen is refused. What
//! retrying can fix is retried; a wrong token on either side, or a newer
//! process with this id, stops the node.

use protocol::auth::Nonce;
use protocol::connection::Connection;
use protocol::datanode::register::{RegisterError, Registration, Welcomed, register};
use protocol::handshake;
use tokio::net::TcpStream;
use tracing::{error, info};

use crate::config::{Config, FORWARD_OVERHEAD};
use crate::error::DataNodeError;

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
    let stream = open_stream(config).await.map_err(|e| retry(&e))?;
    let mut conn = Connection::connect(stream, config.max_line.saturating_add(FORWARD_OVERHEAD))
        .map_err(|e| retry(&e))?;
    let registration = Registration {
        node_id: config.node_id.clone(),
        incarnation: config.incarnation,
        zone: config.zone.clone(),
        store: Some(store_id),
        token: config
            .cluster_token
            .as_ref()
            .map(|token| (token, Nonce::random())),
        newest_epoch,
        step_timeout: handshake::DEFAULT_HANDSHAKE_TIMEOUT,
    };
    match register(&mut conn, &registration).await {
        Ok(Welcomed { node: id, epoch }) => {
            info!(
                node = %id, epoch,
                "Conexion establecida con {} y {}; registered as {id}",
                conn.local, conn.peer
            );
            Ok((conn, epoch))
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
        Err(e @ RegisterError::StaleHead { epoch, newest }) => {
            error!(
                headnode = %config.headnode, epoch, newest,
                "refusing a stale head node: its epoch {epoch} is older than {newest}, \
                 which a newer head node had; it may not store anything here (will retry: \
                 a newer head node may come back at this address)"
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
