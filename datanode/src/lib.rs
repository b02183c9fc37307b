//! The data node: registers with the head node, appends every message it is
//! sent to `data.txt`, and answers `recibido <id>` once the line is written
//! (and synced, per the fsync policy).
//!
//! - [`storage`]: the data directory: `data.txt`, written in batches
//!   (group commit), one checksummed record per message, in a directory
//!   that one process at a time may use; `data.txt` rolled into numbered
//!   segments, old segments removed by retention, and the message index
//!   over all of them, rebuilt at start ([`storage::store`]); `epoch`, the
//!   newest head node accepted, so an older (stale) one is refused;
//!   `incarnation`, raised at every start; and `members`, the cluster's
//!   member set as the head node last sent it;
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

use node_kit::backoff::Backoff;
use node_kit::shutdown::Latch;
use protocol::ids::Zone;
use tracing::{info, warn};

pub mod audit;
mod config;
mod data_path;
mod error;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod reads;
mod registration;
pub mod storage;

pub use config::{Config, DEFAULT_COMMIT_LINGER};
use data_path::NodeState;
pub use error::DataNodeError;
use node::SessionEnd;
use registration::ConnectError;
pub use storage::FsyncPolicy;

/// Runs the data node until `shutdown`, reconnecting whenever the head node
/// goes away. Returns an error only for conditions retrying cannot fix.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DataNodeError> {
    serve_node(config, None, shutdown).await
}

/// [`run`], and `/metrics` and `/healthz` on `http` (see [`metrics`]),
/// under the default bounds of `node_kit::http`.
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
    // Stops the HTTP port when this function returns, however it does.
    let http_stop = tokio_util::sync::CancellationToken::new();
    let _http_stop = http_stop.clone().drop_guard();
    if let Some(http) = http {
        match http.local_addr() {
            Ok(addr) => info!(%addr, "/metrics served over HTTP"),
            Err(e) => warn!(error = %e, "HTTP port has no address"),
        }
        let metrics = state.data.metrics();
        tokio::spawn(node_kit::http::run(
            http,
            node_kit::http::HttpConfig::default(),
            move |request: &node_kit::http::Request| metrics::handle(&metrics, request),
            http_stop.cancelled_owned(),
        ));
    }
    info!(
        node = %config.node_id,
        zone = ?config.zone.as_ref().map(Zone::as_str),
        incarnation = state.incarnation,
        data = %state.data.path().display(),
        fsync = ?config.fsync,
        keys = state.node.keys().len(),
        epoch = state.epoch.newest().epoch,
        head = %state.epoch.newest().head,
        members = ?state.members.members().map(|m| m.iter().map(|n| n.as_str()).collect::<Vec<_>>()),
        "dataNode starting"
    );
    let mut shutdown = Latch::new(shutdown);
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff, rand::make_rng());
    let result = loop {
        if shutdown.fired() {
            break Ok(());
        }
        let me = state.me();
        let attempt = tokio::select! {
            _ = shutdown.wait() => break Ok(()),
            attempt = registration::connect(&config, &me) => attempt,
        };
        let (conn, fence) = match attempt {
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
        let end = match data_path::serve(&config, conn, fence, state, &mut shutdown).await {
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
            SessionEnd::StaleHead(why) => {
                warn!(headnode = %config.headnode, "refused the head node's messages ({why}); reconnecting")
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
