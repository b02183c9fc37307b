//! The data path: one thread per session with a head node, which reads
//! what the head node sends, stages each message, commits the batch (one
//! `write`, one `fdatasync` under `--fsync batch`), then writes every
//! answer at once. Blocking I/O, so file I/O never runs on the async
//! runtime and a message crosses no thread hand-off on its way.
//!
//! - [`NodeState`]: what the node keeps across sessions (the data file,
//!   the store, the key index, the epoch file), moved into each session's
//!   thread and back out of it;
//! - [`serve`]: runs one session's thread until it ends ([`SessionEnd`]);
//! - [`GroupCommit`]: when to commit, as a plain state machine over the
//!   batch sizes and fabricated instants.

use std::future::Future;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use node_kit::shutdown::Latch;
use node_kit::telemetry::MESSAGES_TARGET;
use protocol::codec::LineDecoder;
use protocol::connection::Connection;
use protocol::datanode::{FromDataNode, MAX_SCAN_RECORDS, ToDataNode};
use protocol::error::truncate_for_log;
use protocol::ids::{MessageId, NodeId};
use tracing::{debug, error, info, warn};

use crate::config::{Config, FORWARD_OVERHEAD};
use crate::error::DataNodeError;
use crate::keys::{Decision, KeyIndex, commit_decision, now_millis};
use crate::metrics::{FsyncWindow, NodeMetrics};
use crate::reads::{MAX_READS_IN_FLIGHT, ReadJob, ReadServer, SharedWriter};
use crate::storage::{self, DataFile, EpochFile, FsyncPolicy, StorageError};
use crate::store::{self, Store};

/// Extra room for a record's timestamp, id, key and checksum around a
/// `mensaje` line's text, when it is read back.
const RECORD_OVERHEAD: usize = 256;

/// What a data node keeps across its sessions with head nodes: moved into
/// each session's data-path thread and back out of it.
pub(crate) struct NodeState {
    pub(crate) data: DataFile,
    pub(crate) store: Store,
    pub(crate) keys: KeyIndex,
    pub(crate) epoch: EpochFile,
    /// Names this data directory (see `storage::load_or_create_store_id`).
    pub(crate) store_id: u64,
    /// The nodes the last head node named in `members`, for the next
    /// report; `None` until a head node has sent one.
    peers: Option<Vec<NodeId>>,
}

impl NodeState {
    /// Opens the data directory, reads the epoch file and rebuilds the
    /// message index and the key index from every segment and `data.txt`.
    /// Blocking file I/O, once, before any session.
    pub(crate) fn open(config: &Config) -> Result<NodeState, StorageError> {
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

/// Why a session with a head node ended.
pub(crate) enum SessionEnd {
    /// The head node went away or broke the protocol: register again.
    Reconnect(String),
    /// A newer process with this node id has registered: stop for good.
    Superseded(String),
    /// Drained after `bye`, or out of time to drain: the node stops.
    Left,
    /// A write or sync of the data directory failed: the node stops.
    StorageFailed(StorageError),
}

/// How often the data-path thread looks up from a quiet socket to check
/// for shutdown and for a silent head node.
const POLL: Duration = Duration::from_millis(100);

/// Serves one connection on a data-path thread; returns the data file (for
/// the next session) and why the session ended, or an error if the thread
/// could not run. If this future is dropped (the task aborted), the socket
/// is shut down so the thread ends too.
pub(crate) async fn serve<F: Future<Output = ()>>(
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
/// withdrawn first. Its key, if any, is in the node's key index from its
/// staging on.
struct Staged {
    id: Option<MessageId>,
    /// Its place in [`Batch::answers`].
    answer: usize,
}

/// What the data path has read since its last commit. Bounded by what the
/// head node may have unacknowledged at this node (its per-node window).
#[derive(Default)]
struct Batch {
    /// One answer per message and ping, in the order they came.
    answers: Vec<FromDataNode>,
    /// The messages to write, in the order they were staged in the data
    /// file (the same index).
    staged: Vec<Staged>,
    /// The lowest and highest id in `staged`, if any: most ids a key is
    /// held under are older, and need no search of `staged`.
    staged_ids: Option<(MessageId, MessageId)>,
    /// Reads admitted in this batch, handed to the read thread once the
    /// batch is committed (so a read sees the writes before it). At most
    /// [`MAX_READS_IN_FLIGHT`].
    reads: Vec<ReadJob>,
}

impl Batch {
    /// Stages message `id` (answered `recibido` once it is written).
    fn stage(&mut self, id: Option<MessageId>) {
        if let Some(id) = id {
            let (low, high) = self.staged_ids.get_or_insert((id, id));
            *low = (*low).min(id);
            *high = (*high).max(id);
        }
        self.staged.push(Staged {
            id,
            answer: self.answers.len(),
        });
        self.answers.push(FromDataNode::Stored(id));
    }

    /// Whether message `id` is staged in this batch, not yet written.
    fn has_staged(&self, id: MessageId) -> bool {
        self.staged_ids
            .is_some_and(|(low, high)| (low..=high).contains(&id))
            && self.staged.iter().any(|s| s.id == Some(id))
    }

    /// The staged messages are written: forgets them.
    fn written(&mut self) {
        self.staged.clear();
        self.staged_ids = None;
    }

    /// The session ends before this batch's commit: its records are never
    /// written (nor acknowledged), and their keys leave the index.
    fn abandon(&mut self, data: &mut DataFile, keys: &mut KeyIndex) {
        data.discard_staged(|line| forget_key(line, keys));
        self.written();
        self.answers.clear();
    }

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
    fn withdraw(&mut self, id: MessageId, data: &mut DataFile, keys: &mut KeyIndex) -> bool {
        let Some(at) = self.staged.iter().rposition(|s| s.id == Some(id)) else {
            return false;
        };
        let Some(line) = data.unstage(at) else {
            return false;
        };
        forget_key(&line, keys);
        let staged = self.staged.remove(at);
        self.answers[staged.answer] = FromDataNode::Withdrawn(id);
        true
    }
}

/// Takes the key of a staged record that will not be written out of the
/// index (it went in when the record was staged).
fn forget_key(line: &[u8], keys: &mut KeyIndex) {
    if let Ok(record) = storage::parse_line(line)
        && let (Some(key), Some(id)) = (record.key, record.id)
        && keys.get(key) == Some(id)
    {
        keys.remove(key);
    }
}

/// Handles one `mensaje`: stages it, or answers it from the key index, or
/// (its key is staged already in this batch) asks for the batch to be
/// committed first. False in that last case: nothing was done with it.
fn handle_store(
    id: Option<MessageId>,
    key: Option<protocol::ids::KeyRef<'_>>,
    text: &str,
    state: &mut NodeState,
    batch: &mut Batch,
) -> bool {
    // One lookup per keyed message: a key staged earlier in this batch is
    // in the index already, under an id this batch holds.
    let looked_up = key.map(|k| state.keys.look_up(k));
    let held = looked_up.and_then(|k| k.held);
    let staged = held.is_some_and(|held| batch.has_staged(held));
    match commit_decision(id, held, staged) {
        Decision::Write => {
            debug!(target: MESSAGES_TARGET, id = ?id.map(|id| id.to_string()), key = ?key.map(|k| k.to_string()), "storing mensaje: {}", truncate_for_log(text));
            state.data.stage(id, key, text.as_bytes());
            if let (Some(looked_up), Some(id)) = (looked_up, id) {
                state
                    .keys
                    .insert_looked_up(looked_up, id, state.data.last_stamp_ms());
            }
            batch.stage(id);
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
    let mut group = GroupCommit::new(config.commit_linger);
    // A message whose key is staged in the batch before it: handled first
    // in the next batch, once that key is written and synced.
    let mut carried: Option<protocol::codec::Line> = None;
    let end = 'session: loop {
        // Everything complete in the buffer is one batch, up to a repeated key.
        let mut drained = false;
        let mut split = false;
        loop {
            let line = match carried.take() {
                Some(line) => line,
                None => match decoder.decode(&mut inbuf) {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => break 'session SessionEnd::Reconnect(format!("protocol error: {e}")),
                },
            };
            let handled = match ToDataNode::parse(line.as_str()) {
                Ok(ToDataNode::Store { id, key, text }) => {
                    handle_store(id, key, text, state, &mut batch)
                }
                Ok(ToDataNode::Withdraw(id)) => {
                    if batch.withdraw(id, &mut state.data, &mut state.keys) {
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
                    break 'session SessionEnd::Reconnect(
                        "protocol error: challenge after registration".into(),
                    );
                }
                Ok(ToDataNode::Error(reason)) if reason.starts_with("stale incarnation") => {
                    // The membership decides after the report: a newer
                    // process with this id has registered, so this one stops.
                    break 'session SessionEnd::Superseded(reason.to_owned());
                }
                Ok(ToDataNode::Error(reason)) => {
                    break 'session SessionEnd::Reconnect(format!("head node error: {reason}"));
                }
                Err(e) => break 'session SessionEnd::Reconnect(format!("protocol error: {e}")),
            };
            if !handled {
                carried = Some(line);
                split = true;
                break;
            }
        }
        // A batch ends the session's reading (bye), waits behind a repeated
        // key, or is the last before leaving: none of those may wait.
        let staged = state.data.staged();
        let may_wait = !drained && !split && leave_by.is_none();
        if let Commit::WaitUntil(until) = group.decide(staged, may_wait, Instant::now())
            && read_more_before(&mut stream, &mut inbuf, &mut scratch, until)
        {
            continue;
        }
        group.committed(staged);
        if let Err(e) = state.data.commit() {
            // No acknowledgement of this batch may leave: the head node
            // sends its messages to another node instead.
            error!("{e}; nothing in this batch was acknowledged; stopping");
            let _ = writer.write_all(format!("ERROR storage failure: {e}\n").as_bytes());
            break 'session SessionEnd::StorageFailed(e);
        }
        state.store.committed(&state.data);
        // Written and synced: from now on a resend of these keys is
        // answered from the index at once.
        batch.written();
        state.data.metrics.set_keys(state.keys.len());
        FromDataNode::encode_answers(batch.answers.drain(..), &mut out);
        if leave.load(Ordering::Relaxed) && leave_by.is_none() {
            FromDataNode::Leaving.encode(&mut out);
            out.extend_from_slice(b"\n");
            leave_by = Some(Instant::now() + config.leave_timeout);
        }
        if !out.is_empty() {
            if let Err(e) = writer.write_all(&out) {
                break 'session SessionEnd::Reconnect(format!("write failed: {e}"));
            }
            out.clear();
        }
        for job in batch.reads.drain(..) {
            if !reads.submit(job) {
                break 'session SessionEnd::Reconnect(
                    "the read thread stopped: its writes failed".into(),
                );
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
                break 'session SessionEnd::StorageFailed(e);
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
            break 'session SessionEnd::Left;
        }
        if leave_by.is_some_and(|by| Instant::now() >= by) {
            warn!("head node did not finish draining this node in time; leaving anyway");
            break 'session SessionEnd::Left;
        }
        if split {
            // Lines already read wait behind the repeated key: no read yet.
            continue;
        }
        match stream.read(&mut scratch) {
            Ok(0) if leave_by.is_some() => break 'session SessionEnd::Left,
            Ok(0) => break 'session SessionEnd::Reconnect("connection closed".into()),
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
                    break 'session SessionEnd::Reconnect(format!(
                        "no word from the head node for {:?}",
                        config.head_timeout
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break 'session SessionEnd::Reconnect(e.to_string()),
        }
    };
    // Whatever is staged was not written: a failed commit has dropped its
    // records already (and the node then stops); any other end drops them
    // here, with their keys.
    batch.abandon(&mut state.data, &mut state.keys);
    end
}

/// What the data path does with the batch it has staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// Write and sync it now.
    Now,
    /// Read what else arrives until then, and decide again.
    WaitUntil(Instant),
}

/// Group commit's linger rule. Right after an acknowledged batch, the
/// clients it answered send again, and their messages arrive over the next
/// few hundred µs. A batch smaller than the last one is the head of that
/// burst: it waits up to `linger` (counted from its first look) for the
/// rest, rather than pay a whole `fdatasync` for a few messages while the
/// others queue behind it. A batch at least as large as the last one, an
/// empty one, and one that may not wait are committed at once.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    linger: Duration,
    /// Messages in the last batch that had any.
    last_batch: usize,
    /// When the batch being gathered stops waiting.
    linger_until: Option<Instant>,
}

impl GroupCommit {
    /// A rule with this linger; zero never waits.
    pub(crate) fn new(linger: Duration) -> Self {
        GroupCommit {
            linger,
            last_batch: 0,
            linger_until: None,
        }
    }

    /// What to do with `staged` messages at `now`; `may_wait` is false when
    /// the batch must go at once (see the data path).
    pub(crate) fn decide(&mut self, staged: usize, may_wait: bool, now: Instant) -> Commit {
        if may_wait && !self.linger.is_zero() && staged > 0 && staged < self.last_batch {
            let until = *self.linger_until.get_or_insert(now + self.linger);
            if now < until {
                return Commit::WaitUntil(until);
            }
        }
        Commit::Now
    }

    /// A batch of `staged` messages is being committed.
    pub(crate) fn committed(&mut self, staged: usize) {
        self.linger_until = None;
        if staged > 0 {
            self.last_batch = staged;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_micros(400);

    fn after(batch: usize) -> GroupCommit {
        let mut group = GroupCommit::new(LINGER);
        group.committed(batch);
        group
    }

    #[test]
    fn the_first_batch_is_committed_at_once() {
        let mut group = GroupCommit::new(LINGER);
        assert_eq!(group.decide(1, true, Instant::now()), Commit::Now);
    }

    #[test]
    fn a_batch_as_large_as_the_last_is_committed_at_once() {
        let now = Instant::now();
        assert_eq!(after(40).decide(40, true, now), Commit::Now);
        assert_eq!(after(40).decide(41, true, now), Commit::Now);
    }

    #[test]
    fn a_smaller_batch_waits_for_the_rest_of_its_burst_until_the_linger_from_its_first_look() {
        let start = Instant::now();
        let mut group = after(40);
        let until = start + LINGER;
        assert_eq!(group.decide(3, true, start), Commit::WaitUntil(until));
        // More arrived: the deadline stays where the first look put it.
        let later = start + Duration::from_micros(250);
        assert_eq!(group.decide(25, true, later), Commit::WaitUntil(until));
        assert_eq!(group.decide(25, true, until), Commit::Now);
    }

    #[test]
    fn the_rest_of_the_burst_ends_the_wait() {
        let start = Instant::now();
        let mut group = after(40);
        assert!(matches!(group.decide(3, true, start), Commit::WaitUntil(_)));
        let later = start + Duration::from_micros(100);
        assert_eq!(group.decide(40, true, later), Commit::Now);
    }

    #[test]
    fn an_empty_batch_a_batch_that_may_not_wait_and_a_zero_linger_never_wait() {
        let now = Instant::now();
        assert_eq!(after(40).decide(0, true, now), Commit::Now);
        assert_eq!(after(40).decide(3, false, now), Commit::Now);
        let mut never = GroupCommit::new(Duration::ZERO);
        never.committed(40);
        assert_eq!(never.decide(3, true, now), Commit::Now);
    }

    #[test]
    fn a_commit_starts_a_new_wait_and_an_empty_one_keeps_the_last_size() {
        let start = Instant::now();
        let mut group = after(40);
        assert!(matches!(group.decide(3, true, start), Commit::WaitUntil(_)));
        group.committed(30);
        // Pings alone: nothing staged, the size to wait for stays 30.
        group.committed(0);
        let later = start + Duration::from_millis(5);
        assert_eq!(
            group.decide(10, true, later),
            Commit::WaitUntil(later + LINGER),
            "a new batch gets a linger of its own"
        );
        assert_eq!(group.decide(30, true, later), Commit::Now);
    }
}
