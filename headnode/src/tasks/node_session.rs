//! One task per data node: writes the copies routed to it in batches,
//! matches its answers, sends the application heartbeat and the member set
//! (when it changes), moves to other nodes every copy it cannot get
//! acknowledged, and sends the reads other tasks hand it (see `reads`),
//! after the writes waiting in the same turn.
//!
//! The session is a [`NodeSession`]: `serve` waits for the next thing to
//! do and hands it to one `on_*` method; `finish` moves whatever the node
//! still held to the others.

use std::sync::Arc;

use node_kit::telemetry::MESSAGES_TARGET;
use protocol::connection::Connection;
use protocol::datanode::{FromDataNode, ToDataNode};
use protocol::error::truncate_for_log;
use protocol::ids::{MessageId, NodeId};
use protocol::net::Stream;
use protocol::{Line, ReadError};
use rand::rngs::SmallRng;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::forward::{CopyStored, Forward};
use crate::state::in_flight::{Acked, InFlight};
use crate::state::membership::MemberInfo;
use crate::state::reads::{PendingReads, ReadJob};
use crate::state::repair::MemberChange;
use crate::state::router::NodeLoad;
use crate::state::status::NodeCounters;
use crate::tasks::Shared;
use crate::tasks::cluster::Input;

/// A data node that has been accepted into the cluster.
pub(crate) struct Registered<S: Stream> {
    pub(crate) conn: Connection<S>,
    pub(crate) info: MemberInfo,
    pub(crate) queue: mpsc::UnboundedReceiver<Forward>,
    /// The reads other tasks hand it; `None` for a node that serves none.
    pub(crate) reads: Option<mpsc::Receiver<ReadJob>>,
    /// What the router counts as held by this session.
    pub(crate) load: Arc<NodeLoad>,
    /// Cancelled by the membership task when it evicts this node.
    pub(crate) evicted: CancellationToken,
    pub(crate) shared: Arc<Shared>,
    /// This node's place among the reserved data-node connections.
    pub(crate) _slot: OwnedSemaphorePermit,
}

/// At most this many messages are taken from the queue per write.
const WRITE_BATCH: usize = 1024;

/// Why a session ends.
enum End {
    /// The membership task knows already: it evicted the node, the head
    /// node is stopping, or the node left after draining.
    Known,
    /// The connection is lost, for this reason; the membership task is
    /// told.
    Lost(String),
}

/// What one step of the session leads to: on, or the end.
type Step = Result<(), End>;

/// Runs a registered data node's session until it is evicted, lost, or the
/// head node stops.
pub(crate) async fn run<S: Stream>(
    registered: Registered<S>,
    rng: SmallRng,
    nodes_stop: CancellationToken,
) {
    let (mut session, evicted) = NodeSession::new(registered, rng);
    let end = session.serve(evicted, nodes_stop).await;
    session.finish(end).await;
}

/// One data node's session: its connection, what it holds, and where it is
/// in the conversation.
struct NodeSession<S: Stream> {
    conn: Connection<S>,
    info: MemberInfo,
    /// Copies the router hands this node.
    queue: mpsc::UnboundedReceiver<Forward>,
    /// Reads other tasks hand it; `None` once closed, or for a node that
    /// serves none.
    reads_rx: Option<mpsc::Receiver<ReadJob>>,
    /// The reads sent and not answered yet.
    reads: PendingReads,
    /// Copies sent and not acknowledged yet.
    in_flight: InFlight,
    /// What the router counts as held here; the session counts what it is
    /// done with.
    load: Arc<NodeLoad>,
    counters: Arc<NodeCounters>,
    shared: Arc<Shared>,
    rng: SmallRng,
    /// Copies sent at once, at most: 1 for an original-system node.
    max_in_flight: usize,
    /// When to send the next `ping`.
    heartbeat: Interval,
    ping_seq: u64,
    /// The version of the routes last looked at; from 0, so the current
    /// ones are looked at first.
    routes_seen: u64,
    /// The member set last sent as `members`.
    members_sent: Option<Arc<[NodeId]>>,
    /// The key table's horizon moves when its horizon was last sent.
    horizon_seen: u64,
    /// The node said it is leaving: it gets nothing new.
    leaving: bool,
    /// An original-system node's ack timeout was reported: it is being
    /// evicted, and the deadline is not watched again.
    ack_timeout_reported: bool,
    /// Copies an acknowledgement went past, reused between lines.
    skipped: Vec<Forward>,
    _slot: OwnedSemaphorePermit,
}

impl<S: Stream> NodeSession<S> {
    /// The session of `registered`, and the token its eviction cancels.
    fn new(registered: Registered<S>, rng: SmallRng) -> (Self, CancellationToken) {
        let Registered {
            mut conn,
            info,
            queue,
            reads,
            load,
            evicted,
            shared,
            _slot,
        } = registered;
        let config = &shared.config;
        let max_in_flight = if info.legacy {
            1
        } else {
            config.max_node_in_flight.max(1)
        };
        // Its answers to reads carry a message's text and a little more.
        conn.reader.set_max_line(
            config
                .reader
                .max_line
                .saturating_add(protocol::datanode::READ_LINE_OVERHEAD),
        );
        let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let session = NodeSession {
            counters: shared.status.node_counters(&info.node),
            conn,
            info,
            queue,
            reads_rx: reads,
            reads: PendingReads::default(),
            in_flight: InFlight::default(),
            load,
            shared,
            rng,
            max_in_flight,
            heartbeat,
            ping_seq: 0,
            routes_seen: 0,
            members_sent: None,
            horizon_seen: 0,
            leaving: false,
            ack_timeout_reported: false,
            skipped: Vec::new(),
            _slot,
        };
        (session, evicted)
    }

    /// Serves the node until the session ends; why it ended.
    async fn serve(&mut self, evicted: CancellationToken, stop: CancellationToken) -> End {
        // Created once: a fresh `cancelled()` per loop turn costs a lock each time.
        let evicted = evicted.cancelled_owned();
        let stopping = stop.cancelled_owned();
        tokio::pin!(evicted, stopping);
        let route_changes = self.shared.router.changes();
        let legacy = self.info.legacy;
        let write_timeout = self.shared.config.write_timeout;
        loop {
            let next_deadline = self
                .in_flight
                .next_deadline()
                .filter(|_| !self.ack_timeout_reported);
            let stall_deadline = self.conn.writer.stall_deadline(write_timeout);
            let step = tokio::select! {
                biased;
                _ = &mut evicted => Err(End::Known),
                _ = &mut stopping => Err(End::Known),
                flushed = self.conn.writer.flush(), if self.conn.writer.pending() > 0 => {
                    flushed.map_err(|e| End::Lost(format!("write failed: {e}")))
                }
                _ = node_kit::server::sleep_until(stall_deadline) => {
                    Err(End::Lost(format!("it took none of our bytes for {write_timeout:?}")))
                }
                frame = self.conn.reader.read_frame() => self.on_frames(frame).await,
                message = self.queue.recv(), if self.may_send() => self.on_queued(message),
                job = next_read(&mut self.reads_rx), if self.reads.has_room() => {
                    self.on_read_job(job);
                    Ok(())
                }
                seen = route_changes.changed_since(self.routes_seen), if !legacy => {
                    self.on_routes_changed(seen);
                    Ok(())
                }
                _ = self.heartbeat.tick(), if !legacy => {
                    self.on_heartbeat();
                    Ok(())
                }
                _ = node_kit::server::sleep_until(next_deadline) => self.on_ack_deadline().await,
            };
            if let Err(end) = step {
                return end;
            }
            if self.leaving && self.in_flight.waiting() == 0 {
                self.say_bye().await;
                return End::Known;
            }
        }
    }

    /// Whether another copy may be sent now.
    fn may_send(&self) -> bool {
        self.in_flight.waiting() < self.max_in_flight
            && self.in_flight.bytes() < self.shared.config.max_node_unacked_bytes
    }

    /// A line read, and every line already buffered behind it: a data node
    /// answers a whole group commit at once.
    async fn on_frames(&mut self, mut frame: Result<Option<Line>, ReadError>) -> Step {
        let mut acked = false;
        loop {
            let line = match frame {
                Ok(Some(line)) => line,
                Ok(None) => return Err(End::Lost("closed by the data node".to_owned())),
                Err(e) => return Err(End::Lost(e.to_string())),
            };
            acked |= self.on_line(&line).await?;
            frame = match self.conn.reader.next_buffered() {
                Ok(None) => break,
                next => next,
            };
        }
        if acked {
            self.load.acked(Instant::now());
        }
        Ok(())
    }

    /// One line from the node; true if it acknowledged a copy in flight.
    async fn on_line(&mut self, line: &Line) -> Result<bool, End> {
        match FromDataNode::parse(line.as_str()) {
            Ok(FromDataNode::Stored(id)) => Ok(self.on_stored(id, None)),
            Ok(FromDataNode::StoredRun { first, count }) => Ok(self.on_stored_run(first, count)),
            Ok(FromDataNode::AlreadyHeld { id, held }) => Ok(self.on_stored(Some(id), Some(held))),
            Ok(FromDataNode::Withdrawn(id)) => {
                self.on_withdrawn(id);
                Ok(false)
            }
            Ok(FromDataNode::Pong(_)) => {
                // When the membership task is behind, a heartbeat may
                // be dropped: the next one comes within a second.
                let conn = self.info.conn;
                let _ = self
                    .shared
                    .membership_tx
                    .try_send(Input::Heartbeat { conn });
                Ok(false)
            }
            Ok(FromDataNode::Fsync(report)) => {
                let (node, incarnation) = (&self.info.node, self.info.incarnation);
                let status = &self.shared.status;
                status.fsync_reported(node, incarnation, report, Instant::now());
                Ok(false)
            }
            Ok(FromDataNode::Leaving) => {
                self.on_leaving().await;
                Ok(false)
            }
            Ok(FromDataNode::Removed(ranges)) => {
                // Rare (once per segment retention removes): may wait for
                // room in the repair task's queue.
                self.shared
                    .tell_repair(MemberChange::Retention {
                        node: self.info.node.clone(),
                        ranges,
                        whole: false,
                    })
                    .await;
                Ok(false)
            }
            Ok(FromDataNode::Error(reason)) => {
                self.conn
                    .close_with_error(&"closing after your error")
                    .await;
                Err(End::Lost(format!("data node reported an error: {reason}")))
            }
            Ok(
                answer @ (FromDataNode::Found { .. }
                | FromDataNode::NotFound { .. }
                | FromDataNode::Scanned { .. }
                | FromDataNode::ReadError { .. }),
            ) => {
                self.reads.answer(&self.info.node, answer);
                Ok(false)
            }
            Ok(
                FromDataNode::Proof(_)
                | FromDataNode::Held { .. }
                | FromDataNode::Peers(_)
                | FromDataNode::Damaged(_)
                | FromDataNode::Ready,
            ) => {
                self.conn
                    .close_with_error(&"unexpected registration line after registration")
                    .await;
                let line = truncate_for_log(line.as_str());
                Err(End::Lost(format!(
                    "protocol error: {line} after registration"
                )))
            }
            Err(e) => {
                warn!(node = %self.info.node, error = %e, "bad line from dataNode: {}", truncate_for_log(line.as_str()));
                self.conn.close_with_error(&e).await;
                Err(End::Lost(format!("protocol error: {e}")))
            }
        }
    }

    /// `recibido` or `yatenia`: one copy written (`held_as`: under this id,
    /// already); true if it matched a copy in flight.
    fn on_stored(&mut self, id: Option<MessageId>, held_as: Option<MessageId>) -> bool {
        let matched = self.acknowledge(id, held_as);
        self.hand_back_skipped("acknowledged a later message but not this one");
        matched
    }

    /// The node's next `count` messages from `first`, in order: each is the
    /// front of the queue. An id it was not sent ends the run, so a forged
    /// run costs one scan, not `count`.
    fn on_stored_run(&mut self, first: MessageId, count: u32) -> bool {
        let mut acked = false;
        for id in (FromDataNode::StoredRun { first, count }).stored_ids() {
            let matched = self.on_stored(Some(id), None);
            acked |= matched;
            if !matched {
                warn!(node = %self.info.node, %first, count, unknown = %id, "a run of acknowledgements names a message not in flight on this node; the rest of the run is ignored");
                break;
            }
        }
        acked
    }

    /// `withdrawn`: the node did not write this copy, which moves now.
    fn on_withdrawn(&mut self, id: MessageId) {
        match self.in_flight.ack(Some(id), &mut self.skipped) {
            Acked::Message(message, _) => {
                self.hand_back(message, false, "withdrawn after its ack timeout");
            }
            Acked::Unknown => {}
        }
        self.hand_back_skipped("answered a later message but not this one");
    }

    /// The node is leaving: it gets nothing new, and goes once it has
    /// answered what it holds.
    async fn on_leaving(&mut self) {
        info!(node = %self.info.node, in_flight = self.in_flight.waiting(), "dataNode says it is leaving");
        self.leaving = true;
        let conn = self.info.conn;
        let _ = self
            .shared
            .membership_tx
            .send(Input::Leaving { conn })
            .await;
    }

    /// Copies from the router: sent, up to a batch, or moved on while the
    /// node is leaving. `None`: the membership task dropped this node.
    fn on_queued(&mut self, message: Option<Forward>) -> Step {
        let Some(message) = message else {
            return Err(End::Known);
        };
        if self.leaving {
            self.hand_back(message, false, "it is leaving");
            return Ok(());
        }
        self.send_horizon();
        let deadline = Instant::now() + self.shared.config.ack_timeout;
        self.send(message, deadline);
        let mut taken = 1;
        while taken < WRITE_BATCH && self.may_send() {
            let Ok(message) = self.queue.try_recv() else {
                break;
            };
            self.send(message, deadline);
            taken += 1;
        }
        Ok(())
    }

    /// A read handed to this node: sent, numbered. `None`: nobody can hand
    /// it more.
    fn on_read_job(&mut self, job: Option<ReadJob>) {
        match job {
            Some(job) => {
                let writer = &mut self.conn.writer;
                self.reads
                    .send(job, |frame| writer.queue_with(|buf| frame.encode(buf)));
            }
            None => self.reads_rx = None,
        }
    }

    /// The routes changed (version `seen`): the node is told the member
    /// set if that changed (it keeps it on disk, and reports it to the next
    /// head node).
    fn on_routes_changed(&mut self, seen: u64) {
        self.routes_seen = seen;
        let routes = self.shared.router.snapshot();
        let Some(members) = &routes.member_set else {
            return;
        };
        if self.members_sent.as_ref() == Some(members) {
            return;
        }
        self.members_sent = Some(members.clone());
        let members = members.to_vec();
        self.conn
            .writer
            .queue_with(|buf| ToDataNode::Members(members).encode(buf));
    }

    /// Before copies go out: `horizon <id>` if the key table's horizon
    /// moved since it was last sent, so the node forgets every key the head
    /// node has forgotten before it is sent one of them again (see
    /// `state::keys`). An original-system node keeps no keys.
    fn send_horizon(&mut self) {
        if self.info.legacy {
            return;
        }
        let keys = &self.shared.keys;
        let moves = keys.horizon_moves();
        if moves == self.horizon_seen {
            return;
        }
        self.horizon_seen = moves;
        if let Some(horizon) = keys.horizon() {
            debug!(node = %self.info.node, %horizon, "the key window moved on: the node forgets keys up to it");
            self.conn
                .writer
                .queue_with(|buf| ToDataNode::Horizon(horizon).encode(buf));
        }
    }

    fn on_heartbeat(&mut self) {
        self.ping_seq += 1;
        let seq = self.ping_seq;
        self.conn
            .writer
            .queue_with(|buf| ToDataNode::Ping(seq).encode(buf));
    }

    /// The oldest copy in flight is past its ack timeout.
    async fn on_ack_deadline(&mut self) -> Step {
        if self.info.legacy {
            // Its only hang detector: the membership evicts it, and
            // what it held is resent on the way out.
            self.ack_timeout_reported = true;
            let conn = self.info.conn;
            let _ = self
                .shared
                .membership_tx
                .send(Input::AckTimeout { conn })
                .await;
            return Ok(());
        }
        let expired = self.in_flight.expire(Instant::now());
        if let Some(first) = expired.first() {
            warn!(
                node = %self.info.node, first = %first, messages = expired.len(), timeout = ?self.shared.config.ack_timeout,
                "no acknowledgement in time; asking the dataNode to withdraw them: each copy moves once it answers withdrawn, or when it is evicted"
            );
        }
        for id in expired {
            self.conn
                .writer
                .queue_with(|buf| ToDataNode::Withdraw(id).encode(buf));
        }
        Ok(())
    }

    /// A leaving node answered everything: `bye`, and it is gone.
    async fn say_bye(&mut self) {
        self.conn
            .writer
            .queue_with(|buf| ToDataNode::Bye.encode(buf));
        let _ = self.conn.writer.shutdown().await;
        let conn = self.info.conn;
        let _ = self
            .shared
            .membership_tx
            .send(Input::Drained { conn })
            .await;
    }

    fn send(&mut self, message: Forward, deadline: Instant) {
        let legacy = self.info.legacy;
        // Read once: the message may adopt another id meanwhile, and its
        // acknowledgement must match the id it was sent under.
        let id = message.id();
        self.conn
            .writer
            .queue_with(|buf| message.envelope.encode_store(id, legacy, buf));
        self.in_flight.push(message, id, deadline);
    }

    /// Matches an acknowledgement and counts the copy it stands for; true if
    /// it matched a copy in flight. The copies it went past are left in
    /// `skipped`. A node that holds the key under another id (`held_as`)
    /// holds no copy of the id it was sent: the message adopts that id, or
    /// the copy is made elsewhere (see [`CopyStored::OtherId`]).
    fn acknowledge(&mut self, id: Option<MessageId>, held_as: Option<MessageId>) -> bool {
        let info = &self.info;
        let (message, sent_as) = match self.in_flight.ack(id, &mut self.skipped) {
            Acked::Message(message, sent_as) => {
                self.load.resolve();
                (message, sent_as)
            }
            Acked::Unknown => {
                debug!(node = %info.node, ?id, "acknowledgement for no message in flight; ignored");
                return false;
            }
        };
        let envelope = message.envelope.clone();
        let written_as = held_as.unwrap_or(sent_as);
        let stored = envelope.copy_stored(info.conn, &info.node, written_as);
        // What the node wrote (or held, for an adopted id) counts as its
        // work; a copy under another id does not.
        if matches!(
            stored,
            CopyStored::Answered
                | CopyStored::Counted
                | CopyStored::OverReplicated
                | CopyStored::Adopted { .. }
        ) {
            self.counters.count(envelope.text.len());
        }
        let answer_id = envelope.answer_id();
        match stored {
            CopyStored::Answered => {
                self.shared.status.count_stored();
                info!(
                target: MESSAGES_TARGET,
                id = %answer_id, client = %envelope.client,
                "recibido en dataNode {} {}", info.node, info.addr
                )
            }
            CopyStored::Counted => debug!(
                target: MESSAGES_TARGET,
                id = %answer_id, "recibido en dataNode {} {}", info.node, info.addr
            ),
            CopyStored::Again => debug!(id = %answer_id, node = %info.node, "acknowledged again"),
            CopyStored::OverReplicated => {
                self.shared.router.count_over_replicated();
                warn!(
                    id = %answer_id, node = %info.node,
                    "late acknowledgement: this node wrote a copy that had been moved elsewhere; one copy more than wanted"
                );
            }
            CopyStored::Adopted { more, answered } => {
                if answered {
                    self.shared.status.count_stored();
                }
                warn!(
                    sent = %sent_as, held = %written_as, node = %info.node, more,
                    key = ?envelope.key.as_ref().map(ToString::to_string),
                    "this key is already held there under another id: the message takes that id (the client is answered with it, copies are made under it)"
                );
                self.copy_elsewhere(message, more);
            }
            CopyStored::OtherId { more } => {
                warn!(
                    id = %answer_id, written = %written_as, node = %info.node, more,
                    key = ?envelope.key.as_ref().map(ToString::to_string),
                    "this node holds the key under another id: no copy of the answered id; one is made elsewhere"
                );
                self.copy_elsewhere(message, more);
            }
        }
        true
    }

    /// Makes `more` copies of `message`'s envelope on other nodes (reserved
    /// already by the envelope): `message` itself is the first, so its
    /// attempts keep counting, and each node that held the key under
    /// another id is excluded, which bounds the copies made this way.
    fn copy_elsewhere(&mut self, message: Forward, more: usize) {
        if more == 0 {
            return;
        }
        let envelope = message.envelope.clone();
        let now = Instant::now();
        let router = &self.shared.router;
        let mut next = Some(message);
        for _ in 0..more {
            let copy = next
                .take()
                .unwrap_or_else(|| Forward::new(envelope.clone()));
            let id = copy.id();
            if let Some(node) = router.reroute(copy, now, &mut self.rng) {
                info!(%id, from = %self.info.node, to = %node, "copy made on another dataNode (the key was held under another id)");
            }
        }
    }

    /// Moves one copy this session held to another node; `sent` if this
    /// node may have written it. The session is done with it.
    fn hand_back(&mut self, message: Forward, sent: bool, why: &str) {
        self.load.resolve();
        message.envelope.move_copy(self.info.conn, sent);
        let id = message.id();
        let client = message.envelope.client.clone();
        let router = &self.shared.router;
        if let Some(node) = router.reroute(message, Instant::now(), &mut self.rng) {
            info!(%id, %client, from = %self.info.node, to = %node, "copy sent to another dataNode ({why})");
        }
    }

    /// Moves every copy an acknowledgement went past: the node will never
    /// answer them.
    fn hand_back_skipped(&mut self, why: &str) {
        let mut skipped = std::mem::take(&mut self.skipped);
        for message in skipped.drain(..) {
            self.hand_back(message, true, why);
        }
        self.skipped = skipped;
    }

    /// The session ended: the membership task is told if it does not know,
    /// the node's reads fail, and whatever it held goes to the others.
    async fn finish(mut self, end: End) {
        let lost = match end {
            End::Known => None,
            End::Lost(why) => Some(why),
        };
        if let Some(why) = &lost {
            let (conn, why) = (self.info.conn, why.clone());
            let _ = self
                .shared
                .membership_tx
                .send(Input::ConnectionLost { conn, why })
                .await;
        }
        // Its readers see their answer channels close: the read failed.
        if self.reads.len() > 0 {
            info!(node = %self.info.node, reads = self.reads.len(), "dataNode gone with reads unanswered; they fail and their readers go on with the other nodes");
        }
        drop(std::mem::take(&mut self.reads));
        self.reads_rx = None;
        // Whatever this node held goes to the others.
        self.queue.close();
        let why = lost.as_deref().unwrap_or("evicted");
        let sent = self.in_flight.drain();
        let mut queued = Vec::new();
        // `recv` until `None`, not `try_recv`: a send that began before the
        // close may not be visible yet, and a copy dropped here would answer
        // its client `head node shutting down`.
        while let Some(message) = self.queue.recv().await {
            queued.push(message);
        }
        if !sent.is_empty() || !queued.is_empty() {
            warn!(node = %self.info.node, messages = sent.len() + queued.len(), "dataNode gone ({why}); sending the copies it had not acknowledged to other nodes");
        }
        for message in sent {
            self.hand_back(message, true, why);
        }
        for message in queued {
            self.hand_back(message, false, why);
        }
        debug!(node = %self.info.node, "dataNode session ended");
    }
}

/// The next read handed to this session; never, for a node that serves none.
async fn next_read(reads_rx: &mut Option<mpsc::Receiver<ReadJob>>) -> Option<ReadJob> {
    match reads_rx {
        Some(reads_rx) => reads_rx.recv().await,
        None => std::future::pending().await,
    }
}
