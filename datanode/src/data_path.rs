//! The data path: one thread per session with a head node, which drives
//! the node's decisions ([`crate::node`]) against the data directory: it
//! reads what the head node sends and hands each line to the session, waits
//! out the group commit's linger, commits the batch (one `write`, one
//! `fdatasync` under `--fsync batch`), then writes every answer at once,
//! hands the batch's reads to the read thread, and rolls or prunes the
//! files between batches. Blocking I/O, so file I/O never runs on the async
//! runtime and a message crosses no thread hand-off on its way.
//!
//! - [`NodeState`]: what the node keeps across sessions (the data file,
//!   the store, the node's decisions and key index, the epoch and members
//!   files), moved into each session's thread and back out of it;
//! - [`serve`]: runs one session's thread until it ends ([`SessionEnd`]).

use std::future::Future;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use node_kit::shutdown::Latch;
use protocol::codec::{Line, LineDecoder};
use protocol::connection::Connection;
use protocol::datanode::{Fence, FromDataNode, IdRange};
use protocol::ids::NodeId;
use tracing::{error, info, warn};

use crate::config::{Config, FORWARD_OVERHEAD};
use crate::error::DataNodeError;
use crate::keys::{KeyIndex, now_millis};
use crate::node::{Commit, Handled, Kept, Next, Node, Session, SessionConfig, SessionEnd};
use crate::reads::{ReadServer, SharedWriter};
use crate::storage::retention::RetentionClock;
use crate::storage::store::{self, Store};
use crate::storage::{self, DataFile, EpochFile, MembersFile, StorageError};

/// Extra room for a record's timestamp, id, key and checksum around a
/// `mensaje` line's text, when it is read back.
const RECORD_OVERHEAD: usize = 256;

/// What a data node keeps across its sessions with head nodes: moved into
/// each session's data-path thread and back out of it.
pub(crate) struct NodeState {
    pub(crate) data: DataFile,
    pub(crate) store: Store,
    /// The decisions' state: the key index, the newest head node accepted
    /// and the member set.
    pub(crate) node: Node,
    pub(crate) epoch: EpochFile,
    pub(crate) members: MembersFile,
    /// Names this data directory (see `storage::load_or_create_store_id`).
    pub(crate) store_id: u64,
    /// This process's incarnation: the directory's counter, raised at this
    /// start (or the configuration's).
    pub(crate) incarnation: u64,
    /// The time age retention goes by.
    pub(crate) retention_clock: RetentionClock,
}

impl NodeState {
    /// Opens the data directory, raises its incarnation counter, reads the
    /// epoch and members files and rebuilds the message index and the key
    /// index from every segment and `data.txt`. Blocking file I/O, once,
    /// before any session.
    pub(crate) fn open(config: &Config) -> Result<NodeState, StorageError> {
        let started = Instant::now();
        let data = DataFile::open_with(&config.data_dir, config.fsync, config.storage)?;
        // After the lock (taken by the data file): one process raises it.
        let incarnation = match config.incarnation {
            Some(incarnation) => incarnation,
            None => storage::raise_incarnation(&config.data_dir)?,
        };
        let epoch = EpochFile::load(&config.data_dir)?;
        let members = MembersFile::load(&config.data_dir)?;
        let store_id = storage::load_or_create_store_id(&config.data_dir)?;
        let mut keys = KeyIndex::new(config.dedup_keys, config.dedup_window);
        let now = SystemTime::now();
        let store = Store::open(&data, config.store, &mut keys, now)?;
        let retention_clock = RetentionClock::new(store.newest_record_ms(), now, Instant::now());
        let opened = store.open_stats();
        info!(
            node = %config.node_id,
            files = opened.files, records = opened.records, indexed = store.indexed(),
            index_bytes = store.index_bytes(), keys = opened.keys, skipped = opened.skipped,
            took = ?started.elapsed(),
            "read {} data files: {} records indexed, {} keys within the window",
            opened.files, store.indexed(), opened.keys
        );
        if opened.damaged > 0 {
            warn!(
                node = %config.node_id, damaged = opened.damaged,
                "{} damaged records in the data files (`datanode verify {}` lists them): \
                 left out of reads, and reported to the head node so that a repair pass \
                 gives their messages their copies",
                opened.damaged,
                config.data_dir.display()
            );
        }
        data.metrics().found_damaged(opened.damaged);
        let kept = Kept {
            newest: epoch.newest(),
            members: members.members().map(<[NodeId]>::to_vec),
        };
        let node = Node::new(keys, kept, data.metrics());
        Ok(NodeState {
            data,
            store,
            node,
            epoch,
            members,
            store_id,
            incarnation,
            retention_clock,
        })
    }
}

impl NodeState {
    /// What the node says of itself when it registers.
    pub(crate) fn me(&self) -> crate::registration::Me {
        crate::registration::Me {
            incarnation: self.incarnation,
            store_id: self.store_id,
            newest: self.epoch.newest(),
        }
    }
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
    fence: Fence,
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
        session: config.session(),
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
                fence,
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

/// Shuts the socket down when dropped, which ends the data-path thread's
/// blocking read: an aborted session must not leave a live connection behind.
struct CloseOnDrop(std::net::TcpStream);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// What the data-path thread needs of the node's settings.
struct DataPathConfig {
    max_line: usize,
    head_timeout: Duration,
    session: SessionConfig,
}

/// The report after `welcome` (see [`Node::report`]), written in pieces of
/// about 64 KiB.
fn send_report(
    stream: &mut std::net::TcpStream,
    node: &mut Node,
    removed: &[IdRange],
) -> std::io::Result<()> {
    const PIECE: usize = 64 * 1024;
    let mut buf = BytesMut::with_capacity(PIECE + 4096);
    node.report(now_millis(), removed, |line| {
        line.encode_line(&mut buf);
        if buf.len() >= PIECE {
            stream.write_all(&buf)?;
            buf.clear();
        }
        Ok::<_, std::io::Error>(())
    })?;
    stream.write_all(&buf)?;
    info!(
        keys = node.keys().len(),
        members = ?node.members().map(|p| p.iter().map(NodeId::as_str).collect::<Vec<_>>()),
        "reported what this node holds to the head node"
    );
    Ok(())
}

/// `ERROR storage failure: <e>`, the last line a node whose storage failed
/// sends (best effort: it stops anyway).
fn storage_failure_line(e: &StorageError) -> BytesMut {
    let mut line = BytesMut::new();
    FromDataNode::Error(format!("storage failure: {e}")).encode_line(&mut line);
    line
}

/// The data path: record the head node's fence in the epoch file and send
/// the report; then drive a session of the node's decisions until it ends.
/// Blocking I/O on its own thread.
fn data_path(
    mut stream: std::net::TcpStream,
    inbuf: BytesMut,
    state: &mut NodeState,
    fence: Fence,
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
    // back later must find this fence on disk.
    if let Err(e) = state.epoch.record(fence) {
        error!("{e}; cannot record the head node's epoch; stopping");
        let _ = stream.write_all(&storage_failure_line(&e));
        return SessionEnd::StorageFailed(e);
    }
    let removed = state.store.removed_ranges();
    if let Err(e) = send_report(&mut stream, &mut state.node, &removed) {
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
    let NodeState {
        data,
        store,
        node,
        epoch,
        members,
        retention_clock,
        ..
    } = state;
    let mut session = node.session(config.session, reads.slots(), fence, Instant::now());
    let mut path = DataPath {
        stream,
        inbuf,
        decoder: LineDecoder::new(config.max_line),
        carried: None,
        out: BytesMut::new(),
        scratch: vec![0u8; 64 * 1024],
        writer,
        reads,
        data,
        store,
        epoch,
        members,
        retention_clock: *retention_clock,
    };
    let end = path.run(&mut session, leave);
    // Whatever is staged was not written: a failed commit has dropped its
    // records already (and the node then stops); any other end drops them
    // here, with their keys.
    session.abandon(path.data);
    end
}

/// One session's data path: the connection, its buffers, the read thread,
/// and the data directory it writes.
struct DataPath<'s> {
    stream: std::net::TcpStream,
    /// Bytes read from the head node and not yet decoded.
    inbuf: BytesMut,
    decoder: LineDecoder,
    /// A message whose key is staged in the batch before it: handed in
    /// first in the next batch, once that key is written and synced.
    carried: Option<Line>,
    /// The answers of one batch, encoded.
    out: BytesMut,
    scratch: Vec<u8>,
    writer: SharedWriter,
    reads: ReadServer,
    data: &'s mut DataFile,
    store: &'s mut Store,
    epoch: &'s mut EpochFile,
    members: &'s mut MembersFile,
    retention_clock: RetentionClock,
}

impl DataPath<'_> {
    /// Reads, decides, commits and answers, batch after batch, until the
    /// session ends.
    fn run(&mut self, session: &mut Session<'_>, leave: &AtomicBool) -> SessionEnd {
        loop {
            // Everything complete in the buffer is one batch, up to a
            // repeated key.
            if let Some(end) = self.hand_lines(session) {
                return end;
            }
            let staged = self.data.staged();
            if let Commit::WaitUntil(until) = session.when_to_commit(staged, Instant::now())
                && self.read_more_before(until)
            {
                continue;
            }
            if let Err(end) = self.commit(session, staged, leave) {
                return end;
            }
            if let Err(end) = self.between_batches() {
                return end;
            }
            for removed in self.store.take_removed_sets() {
                session.forget_removed(|id| removed.contains(id));
                session.removed_by_retention(removed.ranges());
            }
            match session.next(Instant::now()) {
                Next::Read => {
                    if let Some(end) = self.read(session) {
                        return end;
                    }
                }
                Next::HandBack => {}
                Next::Drained => {
                    let _ = self.stream.shutdown(std::net::Shutdown::Write);
                    return SessionEnd::Left;
                }
                Next::End(end) => return end,
            }
        }
    }

    /// Hands every complete line in the buffer to the session (the carried
    /// one first), until one must wait for a commit; the end of the session
    /// if a line ends it.
    fn hand_lines(&mut self, session: &mut Session<'_>) -> Option<SessionEnd> {
        // One look at the clock per batch: the time the lines are handed in.
        let now = Instant::now();
        loop {
            let line = match self.carried.take() {
                Some(line) => line,
                None => match self.decoder.decode(&mut self.inbuf) {
                    Ok(Some(line)) => line,
                    Ok(None) => return None,
                    Err(e) => return Some(SessionEnd::Reconnect(format!("protocol error: {e}"))),
                },
            };
            match session.handle_line(line.as_str(), now, &mut *self.data) {
                Handled::Taken => {}
                Handled::AfterCommit => {
                    self.carried = Some(line);
                    return None;
                }
                Handled::End(SessionEnd::StaleHead(refusal)) => {
                    // Best effort: the session ends either way.
                    let mut line = BytesMut::new();
                    FromDataNode::Error(refusal.clone()).encode_line(&mut line);
                    let _ = self.writer.write_all(&line);
                    return Some(SessionEnd::StaleHead(refusal));
                }
                Handled::End(end) => return Some(end),
            }
        }
    }

    /// Records what the batch's lines changed of the node's fence and
    /// member set, before the batch is written: a message under a newer
    /// epoch is on disk only once the fence that admits it is.
    fn record_kept(&mut self, session: &mut Session<'_>) -> Result<(), StorageError> {
        if let Some(fence) = session.fence_to_record() {
            self.epoch.record(fence)?;
        }
        if let Some(members) = session.members_to_record() {
            self.members.record(&members)?;
        }
        Ok(())
    }

    /// Commits the staged batch, then writes its answers (`bye` after them
    /// when the node is leaving) and hands its reads to the read thread.
    fn commit(
        &mut self,
        session: &mut Session<'_>,
        staged: usize,
        leave: &AtomicBool,
    ) -> Result<(), SessionEnd> {
        if let Err(e) = self.record_kept(session) {
            error!("{e}; cannot record the head node's epoch or member set; stopping");
            let _ = self.writer.write_all(&storage_failure_line(&e));
            return Err(SessionEnd::StorageFailed(e));
        }
        if let Err(e) = self.data.commit() {
            // No acknowledgement of this batch may leave: the head node
            // sends its messages to another node instead.
            error!("{e}; nothing in this batch was acknowledged; stopping");
            let _ = self.writer.write_all(&storage_failure_line(&e));
            return Err(SessionEnd::StorageFailed(e));
        }
        self.store.committed(self.data);
        if leave.load(Ordering::Relaxed) {
            session.request_leave();
        }
        // Written and synced: from now on a resend of these keys is
        // answered from the index at once.
        session.committed(staged, Instant::now());
        FromDataNode::encode_answers(session.answers(), &mut self.out);
        if !self.out.is_empty() {
            if let Err(e) = self.writer.write_all(&self.out) {
                return Err(SessionEnd::Reconnect(format!("write failed: {e}")));
            }
            self.out.clear();
        }
        for job in session.reads() {
            if !self.reads.submit(job) {
                return Err(SessionEnd::Reconnect(
                    "the read thread stopped: its writes failed".into(),
                ));
            }
        }
        Ok(())
    }

    /// Between batches: rolls `data.txt` into a segment once it is full,
    /// and removes what retention says to, by the [`RetentionClock`].
    fn between_batches(&mut self) -> Result<(), SessionEnd> {
        let now = self.retention_clock.now(SystemTime::now(), Instant::now());
        match self.store.maybe_roll(self.data, now) {
            Ok(true) => {}
            Ok(false) if self.store.retention_due(now) => {
                if let Err(e) = self.store.apply_retention(now) {
                    error!(
                        "{e}; retention will try again in {:?}",
                        store::RETENTION_CHECK_EVERY
                    );
                }
            }
            Ok(false) => {}
            Err(e @ StorageError::Roll { .. }) | Err(e @ StorageError::Failed { .. }) => {
                error!("{e}; stopping (a restart recovers the directory)");
                let _ = self.writer.write_all(&storage_failure_line(&e));
                return Err(SessionEnd::StorageFailed(e));
            }
            Err(e) => {
                error!(
                    "{e}; retention will try again in {:?}",
                    store::RETENTION_CHECK_EVERY
                );
            }
        }
        Ok(())
    }

    /// Waits up to [`POLL`] for bytes from the head node; the end of the
    /// session if it closed, failed, or has been silent too long.
    fn read(&mut self, session: &mut Session<'_>) -> Option<SessionEnd> {
        match self.stream.read(&mut self.scratch) {
            Ok(0) => Some(session.closed()),
            Ok(n) => {
                self.inbuf.extend_from_slice(&self.scratch[..n]);
                session.heard(Instant::now());
                None
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                session.silent(Instant::now())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
            Err(e) => Some(SessionEnd::Reconnect(e.to_string())),
        }
    }

    /// Waits until `until` for more bytes from the head node and appends
    /// what arrives to the buffer; false if none came in time (or the socket
    /// has nothing more to give: end of stream and errors are left to
    /// [`DataPath::read`]).
    fn read_more_before(&mut self, until: Instant) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return false;
        };
        let timeout = Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.stream, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(ready) if ready > 0 => match self.stream.read(&mut self.scratch) {
                Ok(n) if n > 0 => {
                    self.inbuf.extend_from_slice(&self.scratch[..n]);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }
}
