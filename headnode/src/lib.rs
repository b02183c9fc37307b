//! The head node: accepts clients and data nodes on one port, forwards each
//! client message to a live data node chosen at random, and answers the
//! client once that node has written it.
//!
//! Parts:
//! - [`membership`]: who is in the cluster and who has failed (state machine, no I/O);
//! - [`prober`]: ICMP echo behind a trait;
//! - [`router`]: random choice of a node, and the parking lot for messages no node can take;
//! - `cluster`: the task that owns the membership and writes the heartbeat log;
//! - `client_session` / `node_session`: one task per connection.
//!
//! [`run`] is the only entry point; the binary and the tests both call it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::connection::{Connection, ReaderConfig};
use protocol::handshake::{self, RoleStep};
use protocol::message::{DataNodeHello, NodeId, PETICION, Role};
use protocol::server::Admission;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

mod client_session;
mod cluster;
mod in_flight;
pub mod membership;
mod node_session;
pub mod prober;
pub mod router;

pub use membership::DetectorConfig;
pub use prober::{IcmpProber, Prober};

use cluster::{ClusterConfig, Input};
use router::{IdGenerator, NodeLoad, Router, Routes};

/// Settings of the head node. `Default` gives the documented defaults.
#[derive(Clone)]
pub struct Config {
    /// Framing limits for every connection.
    pub reader: ReaderConfig,
    /// Time a peer has to complete the handshake.
    pub handshake_timeout: Duration,
    /// When set, data nodes must present this token.
    pub cluster_token: Option<String>,
    /// Period of the ICMP heartbeat rounds.
    pub ping_interval: Duration,
    /// How long one ICMP echo may take.
    pub ping_timeout: Duration,
    /// Application-heartbeat and ICMP eviction rules.
    pub detector: DetectorConfig,
    /// Period of `ping <n>` on each data-node connection.
    pub heartbeat_interval: Duration,
    /// A message not acknowledged within this time is sent to another node.
    pub ack_timeout: Duration,
    /// How long a message waits for a data node before the client gets
    /// `ERROR no data nodes available`.
    pub no_node_wait: Duration,
    /// Data nodes tried for one message before the client gets an error.
    pub max_attempts: u32,
    /// Unanswered messages per client before the head node stops reading it.
    pub max_client_in_flight: usize,
    /// Unacknowledged messages per data node; more wait in its queue.
    pub max_node_in_flight: usize,
    /// Messages in a row sent to one busy data node before another is
    /// chosen (1: every message is routed on its own). See [`router`].
    pub sticky_run: usize,
    /// Connections served at once (clients and data nodes).
    pub max_connections: usize,
    /// The ICMP prober; `None` opens real ICMP sockets.
    pub prober: Option<Arc<dyn Prober>>,
    /// Epoch of message ids; `None` uses the start time.
    pub id_epoch: Option<u64>,
    /// Receives every membership event, for monitoring and tests.
    pub observer: Option<mpsc::UnboundedSender<membership::Event>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reader: ReaderConfig::default(),
            handshake_timeout: handshake::DEFAULT_HANDSHAKE_TIMEOUT,
            cluster_token: None,
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(1),
            detector: DetectorConfig::default(),
            heartbeat_interval: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(2),
            no_node_wait: Duration::from_secs(1),
            max_attempts: 5,
            max_client_in_flight: 4096,
            max_node_in_flight: 65_536,
            sticky_run: DEFAULT_STICKY_RUN,
            max_connections: 16_384,
            prober: None,
            id_epoch: None,
            observer: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field(
                "cluster_token",
                &self.cluster_token.as_ref().map(|_| "<redacted>"),
            )
            .field("ping_interval", &self.ping_interval)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("detector", &self.detector)
            .field("ack_timeout", &self.ack_timeout)
            .field("no_node_wait", &self.no_node_wait)
            .field("sticky_run", &self.sticky_run)
            .finish_non_exhaustive()
    }
}

/// Default of [`Config::sticky_run`].
pub const DEFAULT_STICKY_RUN: usize = 1024;

/// What every connection task needs.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) router: Router,
    pub(crate) ids: IdGenerator,
    pub(crate) membership: mpsc::UnboundedSender<Input>,
    next_conn: AtomicU64,
}

/// How long client sessions get to deliver answers for messages already in
/// flight when the head node shuts down.
const CLIENT_DRAIN: Duration = Duration::from_secs(2);
/// How long data-node sessions get to close.
const NODE_DRAIN: Duration = Duration::from_millis(500);

/// Serves clients and data nodes on `listener` until `shutdown` completes.
///
/// Only a failure of the listener itself ends `run` with an error; errors of
/// one connection are logged and end that connection only.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let prober: Arc<dyn Prober> = match &config.prober {
        Some(prober) => prober.clone(),
        None => Arc::new(IcmpProber::new()),
    };
    let ids = match config.id_epoch {
        Some(epoch) => IdGenerator::with_epoch(epoch),
        None => IdGenerator::new(),
    };
    let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
    let (parking_tx, parking_rx) = mpsc::unbounded_channel();
    let (inputs_tx, inputs_rx) = mpsc::unbounded_channel();
    let router = Router::new(
        routes_rx,
        parking_tx,
        config.max_attempts,
        config.sticky_run,
    );

    let clients_stop = CancellationToken::new();
    let nodes_stop = CancellationToken::new();
    let client_tasks = TaskTracker::new();
    let node_tasks = TaskTracker::new();
    let background = TaskTracker::new();

    background.spawn(cluster::run_membership(
        ClusterConfig {
            detector: config.detector.clone(),
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            observer: config.observer.clone(),
        },
        prober,
        inputs_tx.clone(),
        inputs_rx,
        routes_tx,
        nodes_stop.clone(),
    ));
    background.spawn(router::run_parking_lot(
        parking_rx,
        router.clone(),
        config.no_node_wait,
        nodes_stop.clone(),
    ));

    let admission = Admission::new(config.max_connections);
    let shared = Arc::new(Shared {
        config,
        router,
        ids,
        membership: inputs_tx,
        next_conn: AtomicU64::new(1),
    });
    info!(
        addr = %listener.local_addr()?,
        message_id_epoch = shared.ids.epoch(),
        token_required = shared.config.cluster_token.is_some(),
        "head node listening"
    );

    tokio::pin!(shutdown);
    let result = loop {
        let (stream, peer, permit) = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            accepted = admission.accept(&listener) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => break Err(e),
            },
        };
        let shared = shared.clone();
        let (clients_stop, nodes_stop) = (clients_stop.clone(), nodes_stop.clone());
        let node_tasks_inner = node_tasks.clone();
        let task = async move {
            // Boxed: the handshake's state is freed once it is done, so
            // an idle client's task stays small.
            let session = Box::pin(accept_peer(stream, peer, shared, &clients_stop)).await;
            match session {
                Some(Peer::Client(conn, shared)) => {
                    client_session::run(conn, shared, clients_stop).await;
                }
                Some(Peer::DataNode(registered)) => {
                    // Data-node sessions outlive client sessions at shutdown,
                    // so answers in flight can still arrive.
                    node_tasks_inner.spawn(
                        async move {
                            node_session::run(registered, nodes_stop).await;
                            drop(permit);
                        }
                        .in_current_span(),
                    );
                    return;
                }
                None => {}
            }
            drop(permit);
        };
        client_tasks.spawn(task.instrument(info_span!("conn", %peer)));
    };

    info!("head node shutting down: answering messages in flight, then closing connections");
    clients_stop.cancel();
    client_tasks.close();
    if tokio::time::timeout(CLIENT_DRAIN, client_tasks.wait())
        .await
        .is_err()
    {
        warn!("some client connections did not finish in time");
    }
    nodes_stop.cancel();
    node_tasks.close();
    background.close();
    if tokio::time::timeout(NODE_DRAIN, async {
        node_tasks.wait().await;
        background.wait().await;
    })
    .await
    .is_err()
    {
        warn!("some data-node connections did not close in time");
    }
    info!("head node stopped");
    result
}

enum Peer {
    Client(Connection, Arc<Shared>),
    DataNode(node_session::Registered),
}

/// Handshake, role, token and registration. `None` when the peer was
/// refused or went away (already logged).
async fn accept_peer(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: &CancellationToken,
) -> Option<Peer> {
    let mut conn = match Connection::accept(stream, shared.config.reader, PETICION.as_bytes()) {
        Ok(conn) => conn,
        Err(e) => {
            debug!(error = %e, "connection closed before it could be served");
            return None;
        }
    };
    let role = tokio::select! {
        _ = stop.cancelled() => return None,
        role = handshake::accept(&mut conn.reader, &mut conn.writer, RoleStep::Required, shared.config.handshake_timeout) => role,
    };
    match role {
        Ok(Some(Role::Client)) => {
            info!(framing = ?conn.reader.framing(), "cliente connected");
            Some(Peer::Client(conn, shared))
        }
        Ok(Some(Role::DataNode(hello))) => register_data_node(conn, peer, hello, shared)
            .await
            .map(Peer::DataNode),
        Ok(None) => None,
        Err(protocol::HandshakeError::Closed) => {
            // Health checks connect, read `confirmacion` and leave.
            debug!("peer left during the handshake");
            None
        }
        Err(e) => {
            warn!(error = %e, "handshake failed, connection closed");
            None
        }
    }
}

async fn register_data_node(
    mut conn: Connection,
    peer: SocketAddr,
    hello: DataNodeHello,
    shared: Arc<Shared>,
) -> Option<node_session::Registered> {
    if let Some(expected) = &shared.config.cluster_token {
        let presented = hello.token.as_deref().unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            let why = if hello.token.is_none() {
                "no cluster token"
            } else {
                "wrong cluster token"
            };
            warn!(node = ?hello.node_id.as_ref().map(NodeId::as_str), "dataNode refused: {why}");
            conn.close_with_error(&"unauthorized").await;
            return None;
        }
    }
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let legacy = hello.is_legacy();
    let node = match hello.node_id {
        Some(node) => node,
        // Original-system nodes have no name; name them by address.
        None => match format!("dn-{}-{}", peer.ip(), peer.port())
            .replace(':', ".")
            .parse()
        {
            Ok(node) => node,
            Err(e) => {
                conn.close_with_error(&e).await;
                return None;
            }
        },
    };
    let info = membership::MemberInfo {
        node,
        incarnation: hello.incarnation.unwrap_or(conn_id),
        conn: conn_id,
        addr: prober::canonical_ip(peer.ip()),
        legacy,
    };
    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    let load = Arc::new(NodeLoad::default());
    let evicted = CancellationToken::new();
    let (respond, response) = tokio::sync::oneshot::channel();
    let registration = Input::Register {
        info: info.clone(),
        queue: queue_tx,
        load: load.clone(),
        evicted: evicted.clone(),
        respond,
    };
    if shared.membership.send(registration).is_err() {
        return None;
    }
    match response.await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => {
            conn.close_with_error(&refusal).await;
            return None;
        }
        Err(_) => return None,
    }
    info!(node = %info.node, legacy, "dataNode connected");
    Some(node_session::Registered {
        conn,
        info,
        queue: queue_rx,
        load,
        evicted,
        shared,
    })
}

/// Compares secrets without leaking, through timing, how much of them matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
