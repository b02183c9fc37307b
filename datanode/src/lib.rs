//! The data node: registers with the head node, appends every message it is
//! sent to `data.txt`, and answers `recibido <id>` once the line is written
//! (and synced, per the fsync policy).
//!
//! - [`storage`]: `data.txt`, written in batches (group commit), one
//!   checksummed record per message, in a data directory that one process
//!   at a time may use; and `epoch`, the newest head node seen, so an
//!   older (stale) one is refused;
//! - [`store`]: the directory as a whole: `data.txt` rolled into numbered
//!   segments, old segments removed by retention, and the message index
//!   over all of them, rebuilt at start;
//! - [`reads`]: `get`, `getkey` and `scan` from the head node, served by a
//!   read thread beside the data path, so reads never hold up writes;
//! - [`keys`]: the client keys held here, rebuilt from the data files at start,
//!   reported to each head node after `welcome`, so a resent key is
//!   answered with its original id and never written twice;
//! - [`metrics`]: what `/metrics` shows, on the HTTP port of
//!   [`run_with_http`], and the fsync latency reported to the head node;
//! - `registration`: connect and register with the head node (async): the
//!   cluster token's challenge both ways, and a stale head node refused;
//! - `data_path`: the *data-path thread* each session hands its connection
//!   to, which reads what the head node sends, appends it to `data.txt`,
//!   syncs, and writes the acknowledgements (group commit, and when to
//!   commit as a plain state machine);
//! - [`run`]: the loop around them. When the head node goes away the node
//!   reconnects with jittered backoff, forever. On shutdown it tells the
//!   head node `bye`, keeps acknowledging until the head node has drained
//!   it, then exits.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use protocol::auth::ClusterToken;
use protocol::backoff::Backoff;
use protocol::message::{NodeId, Zone};
use protocol::shutdown::Latch;
use tracing::{info, warn};

pub mod audit;
mod data_path;
pub mod keys;
pub mod metrics;
pub mod reads;
mod registration;
pub mod storage;
pub mod store;

use data_path::{NodeState, SessionEnd};
use registration::ConnectError;
pub use storage::FsyncPolicy;
use storage::StorageError;
use store::StoreConfig;

/// Settings of a data node.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the head node; resolved on every attempt.
    pub headnode: String,
    /// This node's name.
    pub node_id: NodeId,
    /// This node's failure domain, sent in its hello: the head node puts
    /// copies of one message in distinct zones. `None` sends none.
    pub zone: Option<Zone>,
    /// Client keys remembered, at most (`--dedup-keys`).
    pub dedup_keys: usize,
    /// How long after its record is written a key is remembered, at least
    /// while `dedup_keys` allows, at most about twice this
    /// (`--dedup-window`).
    pub dedup_window: Duration,
    /// Changes on every process start.
    pub incarnation: u64,
    /// Directory of `data.txt`.
    pub data_dir: PathBuf,
    /// Durability of acknowledged messages.
    pub fsync: FsyncPolicy,
    /// What `data.txt` is written through: the file itself, or one that
    /// injects disk faults (to test how the node handles them).
    pub storage: storage::Backend,
    /// Segment size and retention (`--segment-bytes`, `--retention-age`,
    /// `--retention-bytes`).
    pub store: StoreConfig,
    /// Under `--fsync batch`: how long a batch smaller than the one before
    /// may wait for the rest of its burst before it is committed (zero:
    /// never wait).
    pub commit_linger: Duration,
    /// The cluster's shared secret: this node proves it knows it, and
    /// accepts only a head node that proves it knows it too.
    pub cluster_token: Option<ClusterToken>,
    /// Without a token: join a head node that accepts data nodes without
    /// one (the head node is then not authenticated either).
    pub open_registration: bool,
    /// Longest accepted client text.
    pub max_line: usize,
    /// Reconnect when the head node has sent nothing (not even a heartbeat) for this long.
    pub head_timeout: Duration,
    /// First reconnect delay.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// On shutdown, how long to wait for the head node to drain this node.
    pub leave_timeout: Duration,
    /// How often this node reports its fsync latency to the head node (an
    /// `fsync` line after a `pong`), over the last two such periods.
    pub fsync_report_every: Duration,
    /// Local address to connect from (multi-homed hosts); `None` lets the OS choose.
    pub source_ip: Option<std::net::IpAddr>,
}

/// Default of [`Config::commit_linger`].
pub const DEFAULT_COMMIT_LINGER: Duration = Duration::from_micros(400);

impl Config {
    /// Defaults for a node with this id: data in `logs/datanode-<id>`.
    pub fn new(headnode: impl Into<String>, node_id: NodeId) -> Self {
        Config {
            headnode: headnode.into(),
            data_dir: PathBuf::from(format!("logs/datanode-{node_id}")),
            node_id,
            zone: None,
            dedup_keys: keys::DEFAULT_DEDUP_KEYS,
            dedup_window: keys::DEFAULT_DEDUP_WINDOW,
            incarnation: new_incarnation(),
            fsync: FsyncPolicy::Batch,
            storage: storage::Backend::File,
            store: StoreConfig::default(),
            commit_linger: DEFAULT_COMMIT_LINGER,
            cluster_token: None,
            open_registration: false,
            max_line: protocol::DEFAULT_MAX_LINE,
            head_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            leave_timeout: Duration::from_secs(5),
            fsync_report_every: protocol::message::FSYNC_REPORT_EVERY,
            source_ip: None,
        }
    }
}

/// A value that differs on every process start: the start time in microseconds.
pub fn new_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Why a data node stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum DataNodeError {
    /// The data directory could not be used, or a commit to `data.txt`
    /// failed (nothing in that batch was acknowledged).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data-path thread could not be started, or died.
    #[error("the data-path thread failed: {0}")]
    DataPathThread(String),
    /// The head node refused this node's proof of the cluster token.
    #[error("head node {0} refused this node: {1} (check the cluster token)")]
    Unauthorized(String, String),
    /// The head node could not prove it knows the cluster token: it is not
    /// this cluster's head node, or its token differs.
    #[error("head node {0} did not prove it knows the cluster token; not registering with it")]
    HeadNotAuthenticated(String),
    /// A newer process with this node id has registered since this one
    /// started: this one is stale and stops.
    #[error("head node refused this node: {0}")]
    Superseded(String),
    /// Neither a token nor open registration was configured.
    #[error(
        "no cluster token: set CLUSTER_TOKEN or --cluster-token-file (or --open-registration to join a head node without one)"
    )]
    NoToken,
}

/// Extra room for the `mensaje <id>: ` prefix around a client's text.
const FORWARD_OVERHEAD: usize = 256;

/// Runs the data node until `shutdown`, reconnecting whenever the head node
/// goes away. Returns an error only for conditions retrying cannot fix.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DataNodeError> {
    serve_node(config, None, shutdown).await
}

/// [`run`], and `/metrics` and `/healthz` on `http` (see [`metrics`]),
/// under the default bounds of `protocol::http`.
pub async fn run_with_http(
    config: Config,
    http: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DataNodeError> {
    serve_node(config, Some(http), shutdown).await
}

async fn serve_node(
    config: Config,
    http: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DataNodeError> {
    if config.cluster_token.is_none() && !config.open_registration {
        return Err(DataNodeError::NoToken);
    }
    // Moves into each session's data-path thread and back out of it.
    let mut state = NodeState::open(&config)?;
    state.data.metrics.set_keys(state.keys.len());
    // Stops the HTTP port when this function returns, however it does.
    let http_stop = tokio_util::sync::CancellationToken::new();
    let _http_stop = http_stop.clone().drop_guard();
    if let Some(http) = http {
        match http.local_addr() {
            Ok(addr) => info!(%addr, "/metrics served over HTTP"),
            Err(e) => warn!(error = %e, "HTTP port has no address"),
        }
        let metrics = state.data.metrics();
        tokio::spawn(protocol::http::run(
            http,
            protocol::http::HttpConfig::default(),
            move |request: &protocol::http::Request| metrics::handle(&metrics, request),
            http_stop.cancelled_owned(),
        ));
    }
    info!(
        node = %config.node_id,
        zone = ?config.zone.as_ref().map(Zone::as_str),
        incarnation = config.incarnation,
        data = %state.data.path().display(),
        fsync = ?config.fsync,
        keys = state.keys.len(),
        epoch = state.epoch.newest(),
        "dataNode starting"
    );
    let mut shutdown = Latch::new(shutdown);
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let result = loop {
        if shutdown.fired() {
            break Ok(());
        }
        let attempt = tokio::select! {
            _ = shutdown.wait() => break Ok(()),
            attempt = registration::connect(&config, state.epoch.newest(), state.store_id) => attempt,
        };
        let (conn, epoch) = match attempt {
            Ok(welcomed) => welcomed,
            Err(ConnectError::Fatal(e)) => break Err(e),
            Err(ConnectError::Retry(why)) => {
                let delay = backoff.next_delay();
                warn!(
                    headnode = %config.headnode,
                    attempt = backoff.attempts(),
                    retry_in = ?delay,
                    "cannot register with the head node: {why}"
                );
                tokio::select! {
                    _ = shutdown.wait() => break Ok(()),
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        backoff.reset();
        let end = match data_path::serve(&config, conn, epoch, state, &mut shutdown).await {
            Ok((back, end)) => {
                state = back;
                end
            }
            Err(e) => break Err(e),
        };
        match end {
            SessionEnd::Reconnect(why) => {
                warn!(headnode = %config.headnode, "lost the head node ({why}); reconnecting")
            }
            SessionEnd::Left => {
                let stats = state.data.stats();
                let removed = state.store.retention_stats();
                // Its own target, so that a quiet log level can keep it.
                info!(
                    target: "datanode::stats", node = %config.node_id,
                    records = stats.records, commits = stats.commits, fsyncs = stats.syncs,
                    segments_removed = removed.segments, records_removed = removed.records,
                    bytes_removed = removed.bytes,
                    "written by this process"
                );
                break Ok(());
            }
            SessionEnd::Superseded(reason) => break Err(DataNodeError::Superseded(reason)),
            SessionEnd::StorageFailed(e) => break Err(e.into()),
        }
    };
    info!(node = %config.node_id, "dataNode stopped");
    result
}
