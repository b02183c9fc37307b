//! The data node: registers with the head node, appends every message it is
//! sent to `data.txt`, and answers `recibido <id>` once the line is written
//! (and synced, per the fsync policy).
//!
//! - [`storage`]: `data.txt` and its writer thread (group commit);
//! - [`run`]: connect, register, serve, and reconnect with jittered backoff
//!   forever when the head node goes away. On shutdown the node tells the
//!   head node `bye`, keeps acknowledging until the head node has drained
//!   it, then exits.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use protocol::backoff::Backoff;
use protocol::connection::Connection;
use protocol::handshake;
use protocol::message::{DataNodeHello, FromDataNode, NodeId, ToDataNode, truncate_for_log};
use protocol::shutdown::Latch;
use protocol::telemetry::MESSAGES_TARGET;
use protocol::{HandshakeError, Line};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub mod storage;

pub use storage::FsyncPolicy;
use storage::{Done, Item, Job, Storage};

/// Settings of a data node.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the head node; resolved on every attempt.
    pub headnode: String,
    /// This node's name.
    pub node_id: NodeId,
    /// Changes on every process start.
    pub incarnation: u64,
    /// Directory of `data.txt`.
    pub data_dir: PathBuf,
    /// Durability of acknowledged messages.
    pub fsync: FsyncPolicy,
    /// Token the head node requires, if any.
    pub cluster_token: Option<String>,
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
    /// Local address to connect from (multi-homed hosts); `None` lets the OS choose.
    pub source_ip: Option<std::net::IpAddr>,
}

impl Config {
    /// Defaults for a node with this id: data in `logs/datanode-<id>`.
    pub fn new(headnode: impl Into<String>, node_id: NodeId) -> Self {
        Config {
            headnode: headnode.into(),
            data_dir: PathBuf::from(format!("logs/datanode-{node_id}")),
            node_id,
            incarnation: new_incarnation(),
            fsync: FsyncPolicy::Batch,
            cluster_token: None,
            max_line: protocol::DEFAULT_MAX_LINE,
            head_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            leave_timeout: Duration::from_secs(5),
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
    /// `data.txt` could not be opened or written.
    #[error("cannot write {path}: {reason}")]
    Storage {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The head node refused our cluster token.
    #[error("head node {0} refused this node: unauthorized (check the cluster token)")]
    Unauthorized(String),
}

/// Extra room for the `mensaje <id>: ` prefix around a client's text.
const FORWARD_OVERHEAD: usize = 256;

/// Runs the data node until `shutdown`, reconnecting whenever the head node
/// goes away. Returns an error only for conditions retrying cannot fix.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DataNodeError> {
    let storage =
        Storage::open(&config.data_dir, config.fsync).map_err(|e| DataNodeError::Storage {
            path: config.data_dir.join("data.txt"),
            reason: e.to_string(),
        })?;
    info!(
        node = %config.node_id,
        incarnation = config.incarnation,
        data = %storage.path().display(),
        fsync = ?config.fsync,
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
            attempt = connect(&config) => attempt,
        };
        let mut conn = match attempt {
            Ok(conn) => conn,
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
        match serve(&config, &mut conn, &storage, &mut shutdown).await {
            SessionEnd::Reconnect(why) => {
                warn!(headnode = %config.headnode, "lost the head node ({why}); reconnecting")
            }
            SessionEnd::Left => break Ok(()),
            SessionEnd::StorageFailed(reason) => {
                break Err(DataNodeError::Storage {
                    path: storage.path().to_owned(),
                    reason,
                });
            }
        }
    };
    // Whatever was accepted for writing is finished before exit.
    storage.close().await;
    info!(node = %config.node_id, "dataNode stopped");
    result
}

enum ConnectError {
    Retry(String),
    Fatal(DataNodeError),
}

async fn connect(config: &Config) -> Result<Connection, ConnectError> {
    let retry = |e: &dyn std::fmt::Display| ConnectError::Retry(e.to_string());
    let stream = open_stream(config).await.map_err(|e| retry(&e))?;
    let mut conn =
        Connection::connect(stream, config.max_line + FORWARD_OVERHEAD).map_err(|e| retry(&e))?;
    let hello = DataNodeHello {
        node_id: Some(config.node_id.clone()),
        incarnation: Some(config.incarnation),
        token: config.cluster_token.clone(),
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
        Err(HandshakeError::Refused(reason)) if reason == "unauthorized" => {
            return Err(ConnectError::Fatal(DataNodeError::Unauthorized(
                config.headnode.clone(),
            )));
        }
        Err(e) => return Err(retry(&e)),
    }
    let answer = tokio::time::timeout(
        handshake::DEFAULT_HANDSHAKE_TIMEOUT,
        conn.reader.read_frame(),
    )
    .await;
    let answer = match answer {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => {
            return Err(retry(
                &"head node closed the connection after the handshake",
            ));
        }
        Ok(Err(e)) => return Err(retry(&e)),
        Err(_) => return Err(retry(&"no registration answer from the head node")),
    };
    match ToDataNode::parse(answer.as_str()) {
        Ok(ToDataNode::Welcome(id)) => {
            info!(
                node = %id,
                "Conexion establecida con {} y {}; registered as {id}",
                conn.local, conn.peer
            );
            Ok(conn)
        }
        Ok(ToDataNode::Error("unauthorized")) => Err(ConnectError::Fatal(
            DataNodeError::Unauthorized(config.headnode.clone()),
        )),
        Ok(ToDataNode::Error(reason)) => Err(ConnectError::Retry(format!("refused: {reason}"))),
        _ => Err(ConnectError::Retry(format!(
            "unexpected registration answer {:?}",
            truncate_for_log(answer.as_str())
        ))),
    }
}

async fn open_stream(config: &Config) -> std::io::Result<TcpStream> {
    let Some(source) = config.source_ip else {
        return TcpStream::connect(&config.headnode).await;
    };
    let target = tokio::net::lookup_host(&config.headnode)
        .await?
        .find(|addr| addr.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "{} has no address of the source's family",
                config.headnode
            ))
        })?;
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

enum SessionEnd {
    Reconnect(String),
    Left,
    StorageFailed(String),
}

/// Serves one connection to the head node.
async fn serve<F: Future<Output = ()>>(
    config: &Config,
    conn: &mut Connection,
    storage: &Storage,
    shutdown: &mut Latch<F>,
) -> SessionEnd {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<Vec<Done>, String>>();
    let mut last_heard = Instant::now();
    let mut leave_by: Option<Instant> = None;
    let mut writing = 0usize;

    loop {
        let silence_deadline = last_heard + config.head_timeout;
        tokio::select! {
            biased;
            _ = shutdown.wait(), if leave_by.is_none() => {
                info!(writing, "shutting down: telling the head node this node is leaving");
                conn.writer.queue_with(|buf| FromDataNode::Leaving.encode(buf));
                leave_by = Some(Instant::now() + config.leave_timeout);
            }
            report = done_rx.recv() => {
                let Some(report) = report else { continue };
                let mut report = Some(report);
                while let Some(result) = report.take().or_else(|| done_rx.try_recv().ok()) {
                    match result {
                        Ok(done) => {
                            writing -= done.len();
                            for item in done {
                                match item {
                                    Done::Stored(id) => conn.writer.queue_with(|buf| FromDataNode::Stored(id).encode(buf)),
                                    Done::Pong(n) => conn.writer.queue_with(|buf| FromDataNode::Pong(n).encode(buf)),
                                }
                            }
                        }
                        Err(reason) => {
                            error!(%reason, "storage failed; leaving the cluster");
                            conn.writer.queue_error(&format!("storage failure: {reason}"));
                            let _ = conn.writer.shutdown().await;
                            return SessionEnd::StorageFailed(reason);
                        }
                    }
                }
            }
            flushed = conn.writer.flush(), if conn.writer.pending() > 0 => {
                if let Err(e) = flushed {
                    return SessionEnd::Reconnect(format!("write failed: {e}"));
                }
            }
            frame = conn.reader.read_frame() => {
                let first = match frame {
                    Ok(Some(line)) => line,
                    Ok(None) if leave_by.is_some() => return SessionEnd::Left,
                    Ok(None) => return SessionEnd::Reconnect("connection closed".into()),
                    Err(e) => return SessionEnd::Reconnect(e.to_string()),
                };
                last_heard = Instant::now();
                let mut items = Vec::new();
                let mut next = Some(first);
                while let Some(line) = next {
                    match handle_line(&line, &mut items) {
                        LineOutcome::Continue => {}
                        LineOutcome::Drained => {
                            // Everything we held is acknowledged; flush and go.
                            let _ = conn.writer.shutdown().await;
                            return SessionEnd::Left;
                        }
                        LineOutcome::Reconnect(why) => return SessionEnd::Reconnect(why),
                    }
                    next = match conn.reader.next_buffered() {
                        Ok(line) => line,
                        Err(e) => return SessionEnd::Reconnect(e.to_string()),
                    };
                }
                if !items.is_empty() {
                    writing += items.len();
                    if !storage.submit(Job { items, done: done_tx.clone() }) {
                        return SessionEnd::StorageFailed("writer thread stopped".into());
                    }
                }
            }
            _ = tokio::time::sleep_until(silence_deadline) => {
                return SessionEnd::Reconnect(format!(
                    "no word from the head node for {:?}",
                    config.head_timeout
                ));
            }
            _ = protocol::server::sleep_until(leave_by) => {
                warn!(writing, "head node did not finish draining this node in time; leaving anyway");
                let _ = conn.writer.flush().await;
                return SessionEnd::Left;
            }
        }
    }
}

enum LineOutcome {
    Continue,
    Drained,
    Reconnect(String),
}

fn handle_line(line: &Line, items: &mut Vec<Item>) -> LineOutcome {
    match ToDataNode::parse(line.as_str()) {
        Ok(ToDataNode::Store { id, text }) => {
            debug!(target: MESSAGES_TARGET, id = ?id.map(|id| id.to_string()), "storing mensaje: {}", truncate_for_log(text));
            // Keep the text as the shared buffer the line arrived in.
            let offset = line.as_str().len() - text.len();
            items.push(Item::Store {
                id,
                text: line.bytes().slice(offset..),
            });
            LineOutcome::Continue
        }
        Ok(ToDataNode::Ping(n)) => {
            items.push(Item::Ping(n));
            LineOutcome::Continue
        }
        Ok(ToDataNode::Bye) => LineOutcome::Drained,
        Ok(ToDataNode::Welcome(_)) => LineOutcome::Continue,
        Ok(ToDataNode::Error(reason)) => {
            LineOutcome::Reconnect(format!("head node error: {reason}"))
        }
        Err(e) => LineOutcome::Reconnect(format!("protocol error: {e}")),
    }
}
