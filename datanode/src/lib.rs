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
//! - [`run`]: connect and register (async), then hand the connection to a
//!   dedicated *data-path thread* that reads what the head node sends,
//!   appends it to `data.txt`, syncs, and writes the acknowledgements: file
//!   I/O never runs on the async runtime, and a message crosses no thread
//!   hand-off on its way. When the head node goes away the node reconnects
//!   with jittered backoff, forever. On shutdown it tells the head node
//!   `bye`, keeps acknowledging until the head node has drained it, then exits.

use std::future::Future;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use protocol::HandshakeError;
use protocol::auth::{ClusterToken, Exchange, Nonce};
use protocol::backoff::Backoff;
use protocol::codec::LineDecoder;
use protocol::connection::Connection;
use protocol::handshake;
use protocol::key_window::KeyWindow;
use protocol::message::{
    DataNodeHello, FromDataNode, MAX_SCAN_RECORDS, MessageId, NodeId, STALE_HEAD, ToDataNode, Zone,
    truncate_for_log,
};
use protocol::shutdown::Latch;
use protocol::telemetry::MESSAGES_TARGET;
use tokio::net::TcpStream;
use tracing::{debug, error, info, warn};

pub mod audit;
pub mod keys;
pub mod metrics;
pub mod reads;
pub mod storage;
pub mod store;

use keys::{Decision, KeyIndex, commit_decision, now_millis};
use metrics::{FsyncWindow, NodeMetrics};
use reads::{MAX_READS_IN_FLIGHT, ReadJob, ReadServer, SharedWriter};
pub use storage::FsyncPolicy;
use storage::{DataFile, EpochCheck, EpochFile, StorageError, check_epoch};
use store::{Store, StoreConfig};

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
/// Extra room for a record's timestamp, id, key and checksum around a
/// `mensaje` line's text, when it is read back.
const RECORD_OVERHEAD: usize = 256;

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
            attempt = connect(&config, state.epoch.newest(), state.store_id) => attempt,
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
        let end = match serve(&config, conn, epoch, state, &mut shutdown).await {
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

/// What a data node keeps across its sessions with head nodes: moved into
/// each session's data-path thread and back out of it.
struct NodeState {
    data: DataFile,
    store: Store,
    keys: KeyIndex,
    epoch: EpochFile,
    /// Names this data directory (see `storage::load_or_create_store_id`).
    store_id: u64,
    /// The nodes the last head node named in `members`, for the next
    /// report; `None` until a head node has sent one.
    peers: Option<Vec<NodeId>>,
}

impl NodeState {
    /// Opens the data directory, reads the epoch file and rebuilds the
    /// message index and the key index from every segment and `data.txt`.
    /// Blocking file I/O, once, before any session.
    fn open(config: &Config) -> Result<NodeState, StorageError> {
        let started = Instant::now();
        let data = DataFile::open_with(&config.data_dir, config.fsync, config.storage)?;
        let epoch = EpochFile::load(&config.data_dir)?;
        let store_id = storage::load_or_create_store_id(&config.data_dir)?;
        let mut keys = KeyIndex::new(config.dedup_keys, config.dedup_window);
        let store = Store::open(&data, config.store, &mut keys, std::time::SystemTime::now())?;
        let opened = store.open_stats();
        info!(
            node = %config.node_id,
            files = opened.files, records = opened.records, indexed = store.indexed(),
            index_bytes = store.index_bytes(), keys = opened.keys, skipped = opened.skipped,
            took = ?started.elapsed(),
            "read {} data files: {} records indexed, {} keys within the window",
            opened.files, store.indexed(), opened.keys
        );
        Ok(NodeState {
            data,
            store,
            keys,
            epoch,
            store_id,
            peers: None,
        })
    }
}

enum ConnectError {
    Retry(String),
    Fatal(DataNodeError),
}

/// Connects, registers and is welcomed; the connection and the head node's
/// epoch. A head node whose epoch is older than `newest_epoch` is refused
/// with a `stale head node` error and retried later: a newer one may take
/// its address.
async fn connect(
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

enum SessionEnd {
    Reconnect(String),
    Superseded(String),
    Left,
    StorageFailed(StorageError),
}

/// How often the data-path thread looks up from a quiet socket to check
/// for shutdown and for a silent head node.
const POLL: Duration = Duration::from_millis(100);

/// Serves one connection on a data-path thread; returns the data file (for
/// the next session) and why the session ended, or an error if the thread
/// could not run. If this future is dropped (the task aborted), the socket
/// is shut down so the thread ends too.
async fn serve<F: Future<Output = ()>>(
    config: &Config,
    conn: Connection,
    epoch: u64,
    state: NodeState,
    shutdown: &mut Latch<F>,
) -> Result<(NodeState, SessionEnd), DataNodeError> {
    let (stream, leftover) = conn.into_stream();
    let stream = match stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
    {
        Ok(stream) => stream,
        Err(e) => return Ok((state, SessionEnd::Reconnect(e.to_string()))),
    };
    let closer = match stream.try_clone() {
        Ok(closer) => CloseOnDrop(closer),
        Err(e) => return Ok((state, SessionEnd::Reconnect(e.to_string()))),
    };
    let leave = Arc::new(AtomicBool::new(false));
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let thread_config = DataPathConfig {
        max_line: config.max_line.saturating_add(FORWARD_OVERHEAD),
        head_timeout: config.head_timeout,
        leave_timeout: config.leave_timeout,
        fsync_report_every: config.fsync_report_every,
        // Only a batch commit has an fdatasync worth sharing.
        commit_linger: match config.fsync {
            FsyncPolicy::Batch => config.commit_linger,
            FsyncPolicy::Always | FsyncPolicy::Never => Duration::ZERO,
        },
    };
    let thread_leave = leave.clone();
    let span = tracing::Span::current();
    let spawned = std::thread::Builder::new()
        .name("data path".into())
        .spawn(move || {
            let _span = span.enter();
            let mut state = state;
            let end = data_path(
                stream,
                leftover,
                &mut state,
                epoch,
                &thread_config,
                &thread_leave,
            );
            let _ = done_tx.send((state, end));
        });
    if let Err(e) = spawned {
        return Err(DataNodeError::DataPathThread(format!(
            "cannot start it: {e}"
        )));
    }
    let result = tokio::select! {
        done = &mut done_rx => done,
        _ = shutdown.wait() => {
            info!("shutting down: telling the head node this node is leaving");
            leave.store(true, Ordering::Relaxed);
            done_rx.await
        }
    };
    // The thread has finished with the socket; closing it again is harmless.
    drop(closer);
    result.map_err(|_| DataNodeError::DataPathThread("it stopped unexpectedly".into()))
}

/// Waits until `until` for more bytes from the head node and appends what
/// arrives to `inbuf`; false if none came in time (or the socket has
/// nothing more to give: end of stream and errors are left to the
/// data path's own read).
fn read_more_before(
    stream: &mut std::net::TcpStream,
    inbuf: &mut BytesMut,
    scratch: &mut [u8],
    until: Instant,
) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let Some(left) = until.checked_duration_since(Instant::now()) else {
        return false;
    };
    let timeout = Timespec {
        tv_sec: left.as_secs() as _,
        tv_nsec: left.subsec_nanos() as _,
    };
    let mut fds = [PollFd::new(&*stream, PollFlags::IN)];
    match poll(&mut fds, Some(&timeout)) {
        Ok(ready) if ready > 0 => match stream.read(scratch) {
            Ok(n) if n > 0 => {
                inbuf.extend_from_slice(&scratch[..n]);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Shuts the socket down when dropped, which ends the data-path thread's
/// blocking read: an aborted session must not leave a live connection behind.
struct CloseOnDrop(std::net::TcpStream);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

struct DataPathConfig {
    max_line: usize,
    head_timeout: Duration,
    leave_timeout: Duration,
    commit_linger: Duration,
    fsync_report_every: Duration,
}

/// One message staged in the current batch: written at its commit unless
/// withdrawn first.
struct Staged {
    id: Option<MessageId>,
    /// Its key: the client's name shared with [`Batch::keys`], and the
    /// sequence number.
    key: Option<(Arc<str>, u64)>,
    /// Its place in [`Batch::answers`].
    answer: usize,
}

/// What the data path has read since its last commit. Bounded by what the
/// head node may have unacknowledged at this node (its per-node window).
struct Batch {
    /// One answer per message and ping, in the order they came.
    answers: Vec<FromDataNode>,
    /// The messages to write, in the order they were staged in the data
    /// file (the same index).
    staged: Vec<Staged>,
    /// The keys of `staged`, so a key repeated before the commit is seen.
    /// Never forgets one: unbounded here, bounded by the batch.
    keys: KeyWindow<Option<MessageId>>,
    /// Reads admitted in this batch, handed to the read thread once the
    /// batch is committed (so a read sees the writes before it). At most
    /// [`MAX_READS_IN_FLIGHT`].
    reads: Vec<ReadJob>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            answers: Vec::new(),
            staged: Vec::new(),
            keys: KeyWindow::new(usize::MAX, Duration::MAX),
            reads: Vec::new(),
        }
    }
}

impl Batch {
    /// Admits a read for after the commit, or answers it `readerror` at
    /// once when [`MAX_READS_IN_FLIGHT`] are outstanding.
    fn read(&mut self, reads: &ReadServer, metrics: &NodeMetrics, req: u64, job: ReadJob) {
        if reads.admit() {
            self.reads.push(job);
        } else {
            metrics.read_failed();
            debug!(
                req,
                "read refused: {MAX_READS_IN_FLIGHT} reads already outstanding"
            );
            self.answers.push(FromDataNode::ReadError {
                req,
                reason: format!(
                    "too many reads in flight (at most {MAX_READS_IN_FLIGHT}); send it again once answers come"
                ),
            });
        }
    }

    /// `withdraw <id>`: drops the latest staged message with this id (only
    /// lines read before the withdraw are searched, so a later line that
    /// reuses the id is never cancelled) and answers `withdrawn` in its
    /// place. False if none is staged: it was written already (its
    /// `recibido` stands) or never came.
    fn withdraw(&mut self, id: MessageId, data: &mut DataFile) -> bool {
        let Some(at) = self.staged.iter().rposition(|s| s.id == Some(id)) else {
            return false;
        };
        if !data.unstage(at) {
            return false;
        }
        let staged = self.staged.remove(at);
        self.answers[staged.answer] = FromDataNode::Withdrawn(id);
        if let Some((client, seq)) = staged.key {
            self.keys.remove(&client, seq);
        }
        true
    }
}

/// Handles one `mensaje`: stages it, or answers it from the key index, or
/// (its key is staged already in this batch) asks for the batch to be
/// committed first. False in that last case: nothing was done with it.
fn handle_store(
    id: Option<MessageId>,
    key: Option<protocol::message::KeyRef<'_>>,
    text: &str,
    state: &mut NodeState,
    batch: &mut Batch,
) -> bool {
    let held = key.and_then(|k| state.keys.get(k));
    let staged = key.is_some_and(|k| batch.keys.get(k.client, k.seq).is_some());
    match commit_decision(id, held, staged) {
        Decision::Write => {
            debug!(target: MESSAGES_TARGET, id = ?id.map(|id| id.to_string()), key = ?key.map(|k| k.to_string()), "storing mensaje: {}", truncate_for_log(text));
            state.data.stage(id, key, text.as_bytes());
            let key = key.and_then(|k| {
                // The batch's clock stands still: it never forgets a key.
                batch.keys.insert_new(k.client, k.seq, id, 0);
                Some((batch.keys.client_name(k.client)?.clone(), k.seq))
            });
            batch.staged.push(Staged {
                id,
                key,
                answer: batch.answers.len(),
            });
            batch.answers.push(FromDataNode::Stored(id));
        }
        Decision::AlreadyStored => {
            debug!(target: MESSAGES_TARGET, id = ?id.map(|id| id.to_string()), key = ?key.map(|k| k.to_string()), "already held under this id; not written again");
            batch.answers.push(FromDataNode::Stored(id));
        }
        Decision::HeldAs(held) => {
            info!(
                id = ?id.map(|id| id.to_string()), %held, key = ?key.map(|k| k.to_string()),
                "key already held here under another id; answered with it, not written again"
            );
            batch.answers.push(match id {
                Some(id) => FromDataNode::AlreadyHeld { id, held },
                // A key always comes with an id; answered as stored if not.
                None => FromDataNode::Stored(None),
            });
        }
        Decision::AfterCommit => return false,
    }
    true
}

/// The report after `welcome`: the keys held within the window (`held`
/// lines), the nodes the last head node listed (`peers`, if any did), then
/// `ready`. Written in pieces of about 64 KiB.
fn send_report(stream: &mut std::net::TcpStream, state: &mut NodeState) -> std::io::Result<()> {
    const PIECE: usize = 64 * 1024;
    state.keys.expire(now_millis());
    let mut buf = BytesMut::with_capacity(PIECE + 4096);
    state.keys.for_each_held_line(|line| {
        line.encode(&mut buf);
        buf.extend_from_slice(b"\n");
        if buf.len() >= PIECE {
            stream.write_all(&buf)?;
            buf.clear();
        }
        Ok::<_, std::io::Error>(())
    })?;
    if let Some(peers) = &state.peers {
        FromDataNode::Peers(peers.clone()).encode(&mut buf);
        buf.extend_from_slice(b"\n");
    }
    FromDataNode::Ready.encode(&mut buf);
    buf.extend_from_slice(b"\n");
    stream.write_all(&buf)?;
    info!(
        keys = state.keys.len(),
        peers = ?state.peers.as_ref().map(|p| p.iter().map(NodeId::as_str).collect::<Vec<_>>()),
        "reported what this node holds to the head node"
    );
    Ok(())
}

/// The data path: raise the epoch file to the head node's epoch and send
/// the report; then read everything the head node sent, stage each
/// message, commit the batch (one write, one fdatasync under `batch`),
/// then write all the answers and heartbeat answers at once. Blocking I/O
/// on its own thread.
fn data_path(
    mut stream: std::net::TcpStream,
    mut inbuf: BytesMut,
    state: &mut NodeState,
    epoch: u64,
    config: &DataPathConfig,
    leave: &AtomicBool,
) -> SessionEnd {
    // Reads wake up often to look at the clock; a write that cannot proceed
    // for as long as the head node may stay silent means it is gone.
    let timeouts = stream
        .set_read_timeout(Some(POLL))
        .and_then(|()| stream.set_write_timeout(Some(config.head_timeout)));
    if let Err(e) = timeouts {
        return SessionEnd::Reconnect(e.to_string());
    }
    // Before the head node hears anything: an older head node that comes
    // back later must find this epoch on disk.
    if let Err(e) = state.epoch.raise(epoch) {
        error!("{e}; cannot record the head node's epoch; stopping");
        let _ = stream.write_all(format!("ERROR storage failure: {e}\n").as_bytes());
        return SessionEnd::StorageFailed(e);
    }
    if let Err(e) = send_report(&mut stream, state) {
        return SessionEnd::Reconnect(format!("write failed during the report: {e}"));
    }
    // From here on the read thread writes to the connection too: every
    // write goes through the shared writer, whole lines at a time.
    let writer = match stream.try_clone() {
        Ok(clone) => SharedWriter::new(clone),
        Err(e) => return SessionEnd::Reconnect(e.to_string()),
    };
    let reads = match ReadServer::start(
        state
            .store
            .reader(config.max_line.saturating_add(RECORD_OVERHEAD)),
        writer.clone(),
        state.data.metrics(),
    ) {
        Ok(reads) => reads,
        Err(e) => return SessionEnd::Reconnect(format!("cannot start the read thread: {e}")),
    };
    let mut decoder = LineDecoder::new(config.max_line);
    let mut batch = Batch::default();
    let mut out = BytesMut::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut last_heard = Instant::now();
    let mut fsyncs = FsyncWindow::new(config.fsync_report_every, last_heard, &state.data.metrics);
    let mut leave_by: Option<Instant> = None;
    let mut last_batch = 0;
    let mut linger_until: Option<Instant> = None;
    // A message whose key is staged in the batch before it: handled first
    // in the next batch, once that key is written and synced.
    let mut carried: Option<protocol::codec::Line> = None;
    loop {
        // Everything complete in the buffer is one batch, up to a repeated key.
        let mut drained = false;
        let mut split = false;
        loop {
            let line = match carried.take() {
                Some(line) => line,
                None => match decoder.decode(&mut inbuf) {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => return SessionEnd::Reconnect(format!("protocol error: {e}")),
                },
            };
            let handled = match ToDataNode::parse(line.as_str()) {
                Ok(ToDataNode::Store { id, key, text }) => {
                    handle_store(id, key, text, state, &mut batch)
                }
                Ok(ToDataNode::Withdraw(id)) => {
                    if batch.withdraw(id, &mut state.data) {
                        info!(%id, "withdrawn before it was written: not stored here");
                    } else {
                        debug!(%id, "withdraw of a message already written (or never received); its recibido stands");
                    }
                    true
                }
                Ok(ToDataNode::Ping(n)) => {
                    // Answered with this batch, after its messages are written.
                    batch.answers.push(FromDataNode::Pong(n));
                    // Per ping (a second apart by default): a look at the
                    // clock and, every few seconds, a copy of the fsync
                    // histogram's buckets.
                    if let Some(report) = fsyncs.report(Instant::now(), &state.data.metrics) {
                        batch.answers.push(FromDataNode::Fsync(report));
                    }
                    true
                }
                Ok(ToDataNode::Members(nodes)) => {
                    debug!(members = nodes.len(), "the head node's routable data nodes");
                    state.peers = Some(nodes);
                    true
                }
                Ok(ToDataNode::Bye) => {
                    drained = true;
                    true
                }
                Ok(ToDataNode::Get { req, id }) => {
                    batch.read(&reads, &state.data.metrics, req, ReadJob::Get { req, id });
                    true
                }
                Ok(ToDataNode::GetKey { req, key }) => {
                    // The key index lives on this thread: look the key up
                    // here, read the record there.
                    match state.keys.get(key) {
                        Some(id) => {
                            batch.read(&reads, &state.data.metrics, req, ReadJob::Get { req, id })
                        }
                        None => {
                            state.data.metrics.get_served();
                            batch.answers.push(FromDataNode::NotFound {
                                req,
                                removed: false,
                            });
                        }
                    }
                    true
                }
                Ok(ToDataNode::Scan { req, after, limit }) => {
                    if limit > MAX_SCAN_RECORDS {
                        state.data.metrics.read_failed();
                        batch.answers.push(FromDataNode::ReadError {
                            req,
                            reason: format!(
                                "scan limit {limit} is over the most one scan may ask, {MAX_SCAN_RECORDS}"
                            ),
                        });
                    } else {
                        batch.read(
                            &reads,
                            &state.data.metrics,
                            req,
                            ReadJob::Scan { req, after, limit },
                        );
                    }
                    true
                }
                Ok(ToDataNode::Welcome { .. }) => true,
                Ok(ToDataNode::Challenge { .. }) => {
                    return SessionEnd::Reconnect(
                        "protocol error: challenge after registration".into(),
                    );
                }
                Ok(ToDataNode::Error(reason)) if reason.starts_with("stale incarnation") => {
                    // The membership decides after the report: a newer
                    // process with this id has registered, so this one stops.
                    return SessionEnd::Superseded(reason.to_owned());
                }
                Ok(ToDataNode::Error(reason)) => {
                    return SessionEnd::Reconnect(format!("head node error: {reason}"));
                }
                Err(e) => return SessionEnd::Reconnect(format!("protocol error: {e}")),
            };
            if !handled {
                carried = Some(line);
                split = true;
                break;
            }
        }
        // Group commit: right after an acknowledged batch, the clients it
        // answered send again, and their messages arrive over the next few
        // hundred µs. A batch smaller than the last is the head of that
        // burst: wait a little for the rest rather than pay a whole
        // fdatasync for a few messages while the others queue behind it.
        let staged = state.data.staged();
        let lingering = !drained && !split && leave_by.is_none() && !config.commit_linger.is_zero();
        if lingering && staged > 0 && staged < last_batch {
            let until = *linger_until.get_or_insert_with(|| Instant::now() + config.commit_linger);
            if read_more_before(&mut stream, &mut inbuf, &mut scratch, until) {
                continue;
            }
        }
        linger_until = None;
        if staged > 0 {
            last_batch = staged;
        }
        if let Err(e) = state.data.commit() {
            // No acknowledgement of this batch may leave: the head node
            // sends its messages to another node instead.
            error!("{e}; nothing in this batch was acknowledged; stopping");
            let _ = writer.write_all(format!("ERROR storage failure: {e}\n").as_bytes());
            return SessionEnd::StorageFailed(e);
        }
        state.store.committed(&state.data);
        // Written and synced: from now on a resend of these keys is
        // answered from the index.
        let now = now_millis();
        for staged in batch.staged.drain(..) {
            if let (Some((client, seq)), Some(id)) = (staged.key, staged.id) {
                let key = protocol::message::KeyRef {
                    client: &client,
                    seq,
                };
                state.keys.insert(key, id, now, now);
            }
        }
        batch.keys.clear();
        state.data.metrics.set_keys(state.keys.len());
        FromDataNode::encode_answers(batch.answers.drain(..), &mut out);
        if leave.load(Ordering::Relaxed) && leave_by.is_none() {
            FromDataNode::Leaving.encode(&mut out);
            out.extend_from_slice(b"\n");
            leave_by = Some(Instant::now() + config.leave_timeout);
        }
        if !out.is_empty() {
            if let Err(e) = writer.write_all(&out) {
                return SessionEnd::Reconnect(format!("write failed: {e}"));
            }
            out.clear();
        }
        for job in batch.reads.drain(..) {
            if !reads.submit(job) {
                return SessionEnd::Reconnect("the read thread stopped: its writes failed".into());
            }
        }
        // Between batches: roll data.txt into a segment once it is full,
        // and remove what retention says to.
        let now = std::time::SystemTime::now();
        match state.store.maybe_roll(&mut state.data, now) {
            Ok(true) => {}
            Ok(false) if state.store.retention_due(now) => {
                if let Err(e) = state.store.apply_retention(now) {
                    error!(
                        "{e}; retention will try again in {:?}",
                        store::RETENTION_CHECK_EVERY
                    );
                }
            }
            Ok(false) => {}
            Err(e @ StorageError::Roll { .. }) | Err(e @ StorageError::Failed { .. }) => {
                error!("{e}; stopping (a restart recovers the directory)");
                let _ = writer.write_all(format!("ERROR storage failure: {e}\n").as_bytes());
                return SessionEnd::StorageFailed(e);
            }
            Err(e) => {
                error!(
                    "{e}; retention will try again in {:?}",
                    store::RETENTION_CHECK_EVERY
                );
            }
        }
        if drained {
            // The head node has everything it sent us acknowledged.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return SessionEnd::Left;
        }
        if leave_by.is_some_and(|by| Instant::now() >= by) {
            warn!("head node did not finish draining this node in time; leaving anyway");
            return SessionEnd::Left;
        }
        if split {
            // Lines already read wait behind the repeated key: no read yet.
            continue;
        }
        match stream.read(&mut scratch) {
            Ok(0) if leave_by.is_some() => return SessionEnd::Left,
            Ok(0) => return SessionEnd::Reconnect("connection closed".into()),
            Ok(n) => {
                inbuf.extend_from_slice(&scratch[..n]);
                last_heard = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if last_heard.elapsed() >= config.head_timeout {
                    return SessionEnd::Reconnect(format!(
                        "no word from the head node for {:?}",
                        config.head_timeout
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return SessionEnd::Reconnect(e.to_string()),
        }
    }
}
