//! A data node of the simulation: the real data node's decisions
//! ([`::datanode::node`]) driven over a simulated network and a simulated
//! disk.
//!
//! The real data node keeps its data path on a blocking std thread with
//! std sockets, which a simulated network cannot drive; this driver does
//! here what that thread does there, with the same core deciding:
//!
//! - registers through the protocol's registration
//!   ([`protocol::datanode::register`]): the hello with its incarnation and
//!   store id, the head node's proof checked before its own is given, a head
//!   node the newest fence on its [`Disk`] does not admit refused;
//! - after `welcome`, records the head node's fence on the disk and sends
//!   the core's report: the keys its index holds, the member set, `ready`;
//! - hands every line to the session, waits out the group commit's linger
//!   for the rest of a burst, writes the staged batch to the [`Disk`] and
//!   syncs it (a crash loses what was not synced), then answers;
//! - serves the batch's reads (`get`, `getkey`, `scan`) from the disk's
//!   durable records with the real node's read answers
//!   ([`::datanode::reads::answer`]);
//! - asked to stop, says `bye` after its next batch and exits once the head
//!   node has drained it (or its time to drain is up), as the real node
//!   does on SIGTERM;
//! - on `bye` closes its side; reconnects with jittered backoff after
//!   losing the head node, keeps its key index across sessions, rebuilds it
//!   from the disk on every start, and takes a higher incarnation then.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use datanode::keys::{DEFAULT_DEDUP_KEYS, DEFAULT_DEDUP_WINDOW, KeyIndex};
use datanode::metrics::NodeMetrics;
use datanode::node::{
    Commit, Handled, Next, Node, ReadSlots, Session, SessionConfig, SessionEnd, Staging,
};
use protocol::Line;
use protocol::auth::{ClusterToken, Nonce};
use protocol::connection::Connection;
use protocol::datanode::FromDataNode;
use protocol::datanode::register::{Registration, register};
use protocol::handshake;
use protocol::ids::{KeyRef, MessageId, NodeId};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::disk::{Disk, DiskRecords, Record};
use crate::net::SimStream;
use crate::trace::Trace;

/// Longest line read from the head node: the longest text and room for
/// the `mensaje <id> <key>: ` before it, as the real node allows.
const MAX_LINE: usize = protocol::DEFAULT_MAX_LINE + 256;
/// How long a read waits before the session looks at the clock (the real
/// data path's poll).
const POLL: Duration = Duration::from_millis(100);
/// First and longest pause between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

/// One data node of the simulation.
pub struct SimDataNode {
    /// Its id, `dn1` and so on.
    pub id: NodeId,
    /// Where the head node listens (`head:7000`).
    pub head: String,
    /// The cluster token.
    pub token: ClusterToken,
    /// Its disk, shared with the scenario.
    pub disk: Disk,
    /// Starts so far; the incarnation of the running process.
    pub starts: Arc<AtomicU64>,
    /// Seed of its jitter and nonces.
    pub seed: u64,
    /// Reads it has answered, by kind: `get` (and `getkey`), `scan`.
    pub reads: Arc<[AtomicU64; 2]>,
    /// Set to ask the process to stop, as SIGTERM asks the real one: it
    /// says `bye`, is drained by the head node, and exits.
    pub leave: Arc<AtomicBool>,
    /// Where it records what it sees.
    pub trace: Trace,
}

/// The simulated clock: a monotonic instant for the core's decisions.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The simulated wall clock, in Unix ms (the simulation starts at the
/// epoch).
fn now_ms() -> u64 {
    turmoil::since_epoch().map_or(0, |d| d.as_millis() as u64)
}

/// The times the real data node keeps to, with its defaults.
fn session_config(id: &NodeId) -> SessionConfig {
    datanode::Config::new("head", id.clone()).session()
}

impl SimDataNode {
    /// One life of the node's process: runs until the host is crashed, or
    /// the node must stop for good (as the real one exits).
    pub async fn run(self: Arc<Self>) -> turmoil::Result {
        let incarnation = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        let mut rng = SmallRng::seed_from_u64(self.seed ^ incarnation.rotate_left(32));
        self.trace
            .record(format!("{} starts, incarnation {incarnation}", self.id));
        let metrics = Arc::new(NodeMetrics::default());
        let mut node = Node::new(self.keys_on_disk(), self.disk.kept(), metrics.clone());
        let mut backoff = BACKOFF.0;
        loop {
            if self.leave.load(Ordering::Relaxed) {
                // Not registered: nothing to drain.
                self.trace
                    .record(format!("{} stops: asked to, between sessions", self.id));
                return Ok(());
            }
            match self
                .session(incarnation, &mut rng, &mut node, &metrics)
                .await
            {
                Ok(SessionEnd::Reconnect(why) | SessionEnd::StaleHead(why)) => {
                    self.trace
                        .record(format!("{} lost the head node: {why}", self.id));
                    backoff = BACKOFF.0;
                }
                Ok(end) => {
                    self.trace.record(format!("{} stops: {end:?}", self.id));
                    return Ok(());
                }
                Err(e) if e.is_fatal() => {
                    self.trace
                        .record(format!("{} stops: registration refused: {e}", self.id));
                    return Ok(());
                }
                Err(e) => self.trace.record(format!("{}: {e}", self.id)),
            }
            let pause = backoff / 2 + backoff.mul_f64(rng.random::<f64>() / 2.0);
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// The key index a starting node rebuilds from its data: the keyed
    /// records within the window, the first of a key winning.
    fn keys_on_disk(&self) -> KeyIndex {
        let mut keys = KeyIndex::new(DEFAULT_DEDUP_KEYS, DEFAULT_DEDUP_WINDOW);
        let now_ms = now_ms();
        for record in self.disk.durable() {
            if let (Some(id), Some(key)) = (record.id, &record.key) {
                keys.insert(key.as_ref(), id, record.stored_ms, now_ms);
            }
        }
        keys
    }

    /// One connection to the head node: registered, then served until the
    /// session ends.
    async fn session(
        &self,
        incarnation: u64,
        rng: &mut SmallRng,
        node: &mut Node,
        metrics: &NodeMetrics,
    ) -> Result<SessionEnd, SessionError> {
        let stream = SimStream::connect(&self.head)
            .await
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        let mut conn = Connection::connect(stream, MAX_LINE)
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        let registration = Registration {
            node_id: self.id.clone(),
            incarnation,
            zone: None,
            store: Some(self.disk.store_id()),
            token: Some((&self.token, Nonce::from_rng(rng))),
            newest: node.newest(),
            step_timeout: handshake::DEFAULT_HANDSHAKE_TIMEOUT,
        };
        let welcomed = register(&mut conn, &registration)
            .await
            .map_err(SessionError::Register)?;
        self.disk.record_fence(welcomed.fence);
        self.trace.record(format!("{} welcomed", self.id));
        // The simulated disk has no retention: nothing removed to report.
        let _ = node.report(now_ms(), &[], |line| {
            conn.writer.queue_lines(|buf| line.encode_line(buf));
            Ok::<_, Infallible>(())
        });
        if let Err(e) = conn.writer.flush().await {
            return Ok(SessionEnd::Reconnect(format!(
                "write failed during the report: {e}"
            )));
        }
        let slots = ReadSlots::default();
        let mut session = node.session(
            session_config(&self.id),
            slots.clone(),
            welcomed.fence,
            now(),
        );
        let mut path = SimDataPath {
            conn,
            first: None,
            staging: SimStaging::default(),
            out: BytesMut::new(),
            slots,
        };
        let end = path.run(&mut session, self, metrics).await;
        session.abandon(&mut path.staging);
        Ok(end)
    }
}

/// Why a session never got going.
#[derive(Debug)]
enum SessionError {
    Connect(String),
    Register(protocol::datanode::register::RegisterError),
}

impl SessionError {
    fn is_fatal(&self) -> bool {
        matches!(self, SessionError::Register(e) if e.is_fatal())
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Connect(e) => write!(f, "connect failed: {e}"),
            SessionError::Register(e) => write!(f, "registration failed: {e}"),
        }
    }
}

/// The batch being staged, in the process's memory: lost with it.
#[derive(Default)]
struct SimStaging {
    records: Vec<Record>,
    stamp_ms: u64,
}

impl Staging for SimStaging {
    fn stage(&mut self, id: Option<MessageId>, key: Option<KeyRef<'_>>, text: &[u8]) {
        if self.records.is_empty() {
            // One timestamp per batch, as the real data file writes it.
            self.stamp_ms = now_ms();
        }
        self.records.push(Record {
            id,
            key: key.map(|k| k.to_key()),
            text: String::from_utf8_lossy(text).into_owned(),
            stored_ms: self.stamp_ms,
        });
    }

    fn stage_copy(&mut self, id: MessageId, key: Option<KeyRef<'_>>, text: &[u8], stored_ms: u64) {
        self.stage(Some(id), key, text);
        if let Some(record) = self.records.last_mut() {
            record.stored_ms = stored_ms;
        }
    }

    fn staged(&self) -> usize {
        self.records.len()
    }

    fn last_stamp_ms(&self) -> u64 {
        self.stamp_ms
    }

    fn unstage_record(
        &mut self,
        index: usize,
        dropped: impl FnOnce(Option<MessageId>, Option<KeyRef<'_>>),
    ) -> bool {
        if index >= self.records.len() {
            return false;
        }
        let record = self.records.remove(index);
        dropped(record.id, record.key.as_ref().map(|k| k.as_ref()));
        true
    }

    fn discard_staged_records(
        &mut self,
        mut dropped: impl FnMut(Option<MessageId>, Option<KeyRef<'_>>),
    ) {
        for record in self.records.drain(..) {
            dropped(record.id, record.key.as_ref().map(|k| k.as_ref()));
        }
    }
}

/// One session's driver: the connection, the batch being staged, and the
/// reads' places.
struct SimDataPath {
    conn: Connection<SimStream>,
    /// The line to hand in first: one read while lingering, or one that
    /// waits behind a repeated key.
    first: Option<Line>,
    staging: SimStaging,
    /// Read answers, encoded.
    out: BytesMut,
    slots: ReadSlots,
}

impl SimDataPath {
    /// Hands in, commits and answers, batch after batch, until the session
    /// ends.
    async fn run(
        &mut self,
        session: &mut Session<'_>,
        node: &SimDataNode,
        metrics: &NodeMetrics,
    ) -> SessionEnd {
        loop {
            if let Some(end) = self.hand_lines(session) {
                if matches!(end, SessionEnd::StaleHead(_)) {
                    // Its refusal, best effort.
                    let _ = self.conn.writer.flush().await;
                }
                return end;
            }
            if let Commit::WaitUntil(until) = session.when_to_commit(self.staging.staged(), now())
                && self.read_before(until).await
            {
                continue;
            }
            if let Err(end) = self.commit(session, node, metrics).await {
                return end;
            }
            match session.next(now()) {
                Next::Read => {
                    if let Some(end) = self.read(session).await {
                        return end;
                    }
                }
                Next::HandBack => {}
                Next::Drained => {
                    let _ = self.conn.writer.shutdown().await;
                    return SessionEnd::Left;
                }
                Next::End(end) => return end,
            }
        }
    }

    /// Hands every line read so far to the session, until one must wait
    /// for a commit; the end of the session if a line ends it.
    fn hand_lines(&mut self, session: &mut Session<'_>) -> Option<SessionEnd> {
        let now = now();
        loop {
            let line = match self.first.take() {
                Some(line) => line,
                None => match self.conn.reader.next_buffered() {
                    Ok(Some(line)) => line,
                    Ok(None) => return None,
                    Err(e) => return Some(SessionEnd::Reconnect(format!("protocol error: {e}"))),
                },
            };
            match session.handle_line(line.as_str(), now, &mut self.staging) {
                Handled::Taken => {}
                Handled::AfterCommit => {
                    self.first = Some(line);
                    return None;
                }
                Handled::End(SessionEnd::StaleHead(refusal)) => {
                    let error = FromDataNode::Error(refusal.clone());
                    self.conn.writer.queue_lines(|buf| error.encode_line(buf));
                    return Some(SessionEnd::StaleHead(refusal));
                }
                Handled::End(end) => return Some(end),
            }
        }
    }

    /// Writes and syncs the staged batch, then sends its answers and serves
    /// its reads.
    async fn commit(
        &mut self,
        session: &mut Session<'_>,
        node: &SimDataNode,
        metrics: &NodeMetrics,
    ) -> Result<(), SessionEnd> {
        // Before the batch is written, as the real data path does.
        if let Some(fence) = session.fence_to_record() {
            node.disk.record_fence(fence);
        }
        if let Some(members) = session.members_to_record() {
            node.disk.record_members(members);
        }
        let staged = self.staging.staged();
        if staged > 0 {
            for record in self.staging.records.drain(..) {
                node.disk.write(record);
            }
            node.disk.fsync().await;
        }
        if node.leave.load(Ordering::Relaxed) {
            session.request_leave();
        }
        session.committed(staged, now());
        self.conn
            .writer
            .queue_lines(|buf| FromDataNode::encode_answers(session.answers(), buf));
        let jobs: Vec<_> = session.reads().collect();
        if !jobs.is_empty() {
            let records = DiskRecords::of(&node.disk);
            for job in jobs {
                let kind = match job {
                    datanode::node::ReadJob::Get { .. } => 0,
                    datanode::node::ReadJob::Scan { .. } => 1,
                };
                node.reads[kind].fetch_add(1, Ordering::Relaxed);
                let writer = &mut self.conn.writer;
                let _ = datanode::reads::answer(&records, job, metrics, &mut self.out, |piece| {
                    writer.queue_lines(|buf| buf.extend_from_slice(piece));
                    Ok(())
                });
                self.slots.release();
            }
        }
        self.conn
            .writer
            .flush()
            .await
            .map_err(|e| SessionEnd::Reconnect(format!("write failed: {e}")))
    }

    /// Waits until `until` for another line (the rest of a burst); false
    /// if none came in time, or the connection has nothing more to give
    /// (left to [`SimDataPath::read`]).
    async fn read_before(&mut self, until: Instant) -> bool {
        let until = tokio::time::Instant::from_std(until);
        match tokio::time::timeout_at(until, self.conn.reader.read_frame()).await {
            Ok(Ok(Some(line))) => {
                self.first = Some(line);
                true
            }
            _ => false,
        }
    }

    /// Waits up to [`POLL`] for a line from the head node; the end of the
    /// session if it closed, failed, or has been silent too long.
    async fn read(&mut self, session: &mut Session<'_>) -> Option<SessionEnd> {
        match tokio::time::timeout(POLL, self.conn.reader.read_frame()).await {
            Ok(Ok(Some(line))) => {
                session.heard(now());
                self.first = Some(line);
                None
            }
            Ok(Ok(None)) => Some(session.closed()),
            Ok(Err(e)) => Some(SessionEnd::Reconnect(e.to_string())),
            Err(_) => session.silent(now()),
        }
    }
}
