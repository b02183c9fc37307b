//! The data node's decisions, without I/O: what to do with each line the
//! head node sends, and when to commit. No sockets, no files and no clocks
//! in here: every input carries the time it happened, the batch's records
//! are staged through [`Staging`], and what is to be done is recorded for
//! the driver, which drains it (foca's accumulating runtime).
//!
//! - [`Node`]: what a data node keeps across its sessions with head nodes:
//!   the key index, the newest head node accepted ([`Fence`]), the member
//!   set the head node last sent, and the report after `welcome` made from
//!   them ([`Kept`] is what of it lives in files beside the data);
//! - [`Session`]: one session with a head node. [`Session::handle_line`]
//!   takes one head-node line (a message is staged, or answered from the
//!   key index; a withdraw, a ping, a read, `members`, `bye`) and says
//!   whether the driver may go on ([`Handled`]). Every message is fenced:
//!   a session with a head node older than the newest the node has
//!   accepted stores nothing, and a message whose id has a newer epoch
//!   (the head node went above one another node reported) raises the
//!   node's fence, which the driver records durably before the batch is
//!   written ([`Session::fence_to_record`]); a new member set is recorded
//!   too ([`Session::members_to_record`]);
//!   [`Session::when_to_commit`] is the group-commit rule
//!   ([`GroupCommit`]); after the driver's commit,
//!   [`Session::committed`] releases the batch's answers
//!   ([`Session::answers`]) and its reads ([`Session::reads`]), and
//!   [`Session::next`] says what comes next ([`Next`]). The end of a
//!   session carries its reason ([`SessionEnd`]);
//! - [`Staging`]: what the decisions need of storage: stage a record,
//!   drop one or all staged records unwritten, the batch's time;
//! - [`ReadJob`] and [`ReadSlots`]: a read handed to whoever serves reads
//!   once the batch before it is committed, and the bound on reads
//!   outstanding.
//!
//! Two drivers run it: the data-path thread against the data directory
//! (`data_path`), and the simulation's data node against a simulated disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use node_kit::telemetry::MESSAGES_TARGET;
use protocol::datanode::register::STALE_INCARNATION;
use protocol::datanode::{
    Fence, FromDataNode, IdRange, MAX_SCAN_RECORDS, REMOVED_PER_LINE, ToDataNode,
};
use protocol::error::truncate_for_log;
use protocol::ids::{KeyRef, MessageId, NodeId};
use tracing::{debug, info, warn};

use crate::keys::{Decision, KeyIndex, commit_decision};
use crate::metrics::{FsyncWindow, NodeMetrics};
use crate::storage::StorageError;

mod batch;
mod group_commit;

use batch::Batch;
pub use group_commit::{Commit, GroupCommit};

/// Read requests one connection may have outstanding (accepted and not yet
/// answered); one more is answered `readerror` at once.
pub const MAX_READS_IN_FLIGHT: usize = 16;

/// Ranges of ids retention removed that wait for the next `pong` to be
/// told to the head node, at most (one per epoch). Beyond them the newest
/// are kept: the next head node's report names every range anyway.
pub const MAX_UNSENT_REMOVED: usize = 4096;

/// What the decisions need of storage: the staging of one batch. Nothing
/// staged is written until the driver commits the batch; a staged record
/// may be dropped unwritten before that.
pub trait Staging {
    /// Stages a record of `text` under `id` and `key`.
    fn stage(&mut self, id: Option<MessageId>, key: Option<KeyRef<'_>>, text: &[u8]);
    /// Stages a repair's copy: as [`Staging::stage`], with `stored_ms`
    /// (Unix ms) as its record's time instead of the batch's.
    fn stage_copy(&mut self, id: MessageId, key: Option<KeyRef<'_>>, text: &[u8], stored_ms: u64);
    /// Records staged and not yet committed.
    fn staged(&self) -> usize;
    /// The time written in the records of the batch being staged, Unix ms
    /// (a staged key is kept in the key index from then).
    fn last_stamp_ms(&self) -> u64;
    /// Drops the `index`-th staged record (from 0) unwritten; the later ones
    /// move down by one. Hands its id and key to `dropped`. False if there
    /// is no such record.
    fn unstage_record(
        &mut self,
        index: usize,
        dropped: impl FnOnce(Option<MessageId>, Option<KeyRef<'_>>),
    ) -> bool;
    /// Drops every staged record unwritten, handing each one's id and key
    /// to `dropped`.
    fn discard_staged_records(
        &mut self,
        dropped: impl FnMut(Option<MessageId>, Option<KeyRef<'_>>),
    );
}

/// A read for whoever serves reads, handed over once the batch it came in
/// is committed (so a read sees the writes before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadJob {
    /// `get <req> <id>` (and `getkey`, once its key is looked up).
    Get {
        /// The request.
        req: u64,
        /// The id.
        id: MessageId,
    },
    /// `scan <req> <after> <limit>`.
    Scan {
        /// The request.
        req: u64,
        /// Ids greater than this.
        after: Option<MessageId>,
        /// Records at most (already checked against the bound).
        limit: u32,
    },
}

/// The places for one connection's outstanding reads: one is taken when a
/// read is admitted, and given back by whoever answers it (the read thread
/// runs beside the data path, so the count is shared). At most
/// [`MAX_READS_IN_FLIGHT`].
#[derive(Debug, Clone, Default)]
pub struct ReadSlots(Arc<AtomicUsize>);

impl ReadSlots {
    /// Takes a place for one more read: false if [`MAX_READS_IN_FLIGHT`]
    /// are outstanding.
    pub fn admit(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_READS_IN_FLIGHT).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back the place of a read that was answered (or dropped).
    pub fn release(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    /// Reads outstanding.
    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Why a session with a head node ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The head node went away or broke the protocol: register again.
    Reconnect(String),
    /// A newer process with this node id has registered: stop for good.
    Superseded(String),
    /// The head node is older than the newest this node has accepted: the
    /// driver tells it `ERROR <reason>` and registers again (a newer head
    /// node may be at the address).
    StaleHead(String),
    /// Drained after `bye`, or out of time to drain: the node stops.
    Left,
    /// A write or sync of the data directory failed: the node stops.
    StorageFailed(StorageError),
}

/// What of a node's state lives in small files beside its data, read when
/// it starts: the `epoch` and `members` files.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    /// The newest head node it has accepted.
    pub newest: Fence,
    /// The member set a head node last sent; `None` if none has.
    pub members: Option<Vec<NodeId>>,
}

/// What a data node keeps across its sessions with head nodes.
#[derive(Debug)]
pub struct Node {
    /// The client keys held here (and those of the batch being staged).
    keys: KeyIndex,
    /// The newest head node accepted: its sessions only may store.
    newest: Fence,
    /// The member set the last head node sent, for the next report; `None`
    /// until a head node has sent one.
    members: Option<Vec<NodeId>>,
    /// The newest `horizon` a head node sent: keys held under ids up to it
    /// have been forgotten.
    horizon: Option<MessageId>,
    /// Ranges of what retention removed since the head node was last told
    /// (one per epoch, at most [`MAX_UNSENT_REMOVED`]): sent after the
    /// next `pong`.
    removed_unsent: Vec<IdRange>,
    metrics: Arc<NodeMetrics>,
}

impl Node {
    /// A node holding `keys` (rebuilt from its data files) and what it
    /// keeps beside them, counting what it does in `metrics`.
    pub fn new(keys: KeyIndex, kept: Kept, metrics: Arc<NodeMetrics>) -> Self {
        metrics.set_keys(keys.len());
        Node {
            keys,
            newest: kept.newest,
            members: kept.members,
            horizon: None,
            removed_unsent: Vec::new(),
            metrics,
        }
    }

    /// The newest head node accepted.
    pub fn newest(&self) -> Fence {
        self.newest
    }

    /// The client keys held here.
    pub fn keys(&self) -> &KeyIndex {
        &self.keys
    }

    /// The member set a head node last sent, if any did.
    pub fn members(&self) -> Option<&[NodeId]> {
        self.members.as_deref()
    }

    /// The report after `welcome`, one line at a time to `line`: the keys
    /// held within the window at `now_ms` (`held` lines), the member set
    /// (`peers`, if a head node ever sent one), the ranges of what
    /// retention `removed` here (`removed` lines, if it removed anything),
    /// the records found damaged since the node started (`damaged`, if any
    /// were), then `ready`. Stops at `line`'s first error.
    pub fn report<E>(
        &mut self,
        now_ms: u64,
        removed: &[IdRange],
        mut line: impl FnMut(FromDataNode) -> Result<(), E>,
    ) -> Result<(), E> {
        self.keys.expire(now_ms);
        self.keys.for_each_held_line(&mut line)?;
        if let Some(members) = &self.members {
            line(FromDataNode::Peers(members.clone()))?;
        }
        // The report names them all: nothing waits to be told.
        self.removed_unsent.clear();
        for chunk in removed.chunks(REMOVED_PER_LINE) {
            line(FromDataNode::Removed(chunk.to_vec()))?;
        }
        let damaged = self.metrics.damaged();
        if damaged > 0 {
            line(FromDataNode::Damaged(damaged))?;
        }
        line(FromDataNode::Ready)
    }

    /// Starts a session at `now` with the head node that welcomed this one
    /// under `fence` (recorded by the driver if the node admits it), its
    /// reads bounded by `reads`. A head node the node does not admit gets
    /// nothing stored: its first message ends the session.
    pub fn session(
        &mut self,
        config: SessionConfig,
        reads: ReadSlots,
        fence: Fence,
        now: Instant,
    ) -> Session<'_> {
        if self.newest.admits(&fence) {
            self.newest = fence;
        }
        let fsyncs = FsyncWindow::new(config.fsync_report_every, now, &self.metrics);
        Session {
            node: self,
            fence,
            fence_raised: false,
            members_changed: false,
            batch: Batch::default(),
            group: GroupCommit::new(config.commit_linger),
            fsyncs,
            reads,
            config,
            drained: false,
            split: false,
            leave_requested: false,
            leave_by: None,
            last_heard: now,
        }
    }
}

/// The times a session keeps to.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// How long a batch smaller than the one before may wait for the rest
    /// of its burst (zero: never wait; see [`GroupCommit`]).
    pub commit_linger: Duration,
    /// How often an `fsync` report follows a `pong`.
    pub fsync_report_every: Duration,
    /// The session ends when the head node has sent nothing for this long.
    pub head_timeout: Duration,
    /// After saying `bye`, how long the head node has to drain this node.
    pub leave_timeout: Duration,
}

/// What became of one line handed to [`Session::handle_line`].
#[derive(Debug)]
pub enum Handled {
    /// Done with: hand in the next line.
    Taken,
    /// A message whose key was staged earlier in this batch: commit the
    /// batch first, then hand this line in again (it is then decided
    /// against the written key). Hand in nothing else before it.
    AfterCommit,
    /// The session ends.
    End(SessionEnd),
}

/// What the driver does after a batch's answers and reads are out.
#[derive(Debug)]
pub enum Next {
    /// Read more from the head node, and hand the lines in.
    Read,
    /// A line waits behind a repeated key: hand it (and what was read
    /// after it) in before reading more.
    HandBack,
    /// The head node has drained this node after it said `bye`: close the
    /// writing side; the session is over ([`SessionEnd::Left`]).
    Drained,
    /// The session ends.
    End(SessionEnd),
}

/// One session with a head node; see the module documentation.
#[derive(Debug)]
pub struct Session<'n> {
    node: &'n mut Node,
    /// The head node's fence: its epoch, raised by a message under a newer
    /// one.
    fence: Fence,
    /// The fence was raised and is not yet recorded.
    fence_raised: bool,
    /// A new member set came and is not yet recorded.
    members_changed: bool,
    batch: Batch,
    group: GroupCommit,
    fsyncs: FsyncWindow,
    reads: ReadSlots,
    config: SessionConfig,
    /// `bye` was read: this batch is the session's last.
    drained: bool,
    /// A line waits behind a repeated key: this batch is committed at once.
    split: bool,
    /// The node is shutting down: it says `bye` after the next commit.
    leave_requested: bool,
    /// When the head node must have drained this node by, once it said `bye`.
    leave_by: Option<Instant>,
    last_heard: Instant,
}

impl Session<'_> {
    /// Decides on one line from the head node, read by `now`: a message is
    /// staged through `staging` (its `recibido` waits for the commit), or
    /// answered from the key index; a ping is answered after the batch's
    /// writes; a read is admitted for after the commit.
    pub fn handle_line(&mut self, line: &str, now: Instant, staging: &mut impl Staging) -> Handled {
        match ToDataNode::parse(line) {
            Ok(ToDataNode::Store { id, key, text }) => {
                if let Some(refusal) = self.fence_message(id) {
                    return Handled::End(SessionEnd::StaleHead(refusal));
                }
                if !self.store(id, key, text, None, staging) {
                    self.split = true;
                    return Handled::AfterCommit;
                }
            }
            Ok(ToDataNode::StoreCopy {
                id,
                key,
                stored_ms,
                text,
            }) => {
                // A copy's id is the message's, not this head node's own:
                // fenced, but it raises nothing.
                if let Some(refusal) = self.fence_message(None) {
                    return Handled::End(SessionEnd::StaleHead(refusal));
                }
                if !self.store(Some(id), key, text, Some(stored_ms), staging) {
                    self.split = true;
                    return Handled::AfterCommit;
                }
            }
            Ok(ToDataNode::Withdraw(id)) => {
                if self.batch.withdraw(id, staging, &mut self.node.keys) {
                    info!(%id, "withdrawn before it was written: not stored here");
                } else {
                    debug!(%id, "withdraw of a message already written (or never received); its recibido stands");
                }
            }
            Ok(ToDataNode::Ping(n)) => {
                // Answered with this batch, after its messages are written.
                self.batch.answers.push(FromDataNode::Pong(n));
                // Per ping (a second apart by default): every few seconds,
                // a copy of the fsync histogram's buckets.
                if let Some(report) = self.fsyncs.report(now, &self.node.metrics) {
                    self.batch.answers.push(FromDataNode::Fsync(report));
                }
                // What retention removed since the head node was told.
                let unsent = std::mem::take(&mut self.node.removed_unsent);
                for chunk in unsent.chunks(REMOVED_PER_LINE) {
                    self.batch
                        .answers
                        .push(FromDataNode::Removed(chunk.to_vec()));
                }
            }
            Ok(ToDataNode::Members(nodes)) => {
                if self.node.members.as_ref() != Some(&nodes) {
                    info!(
                        members = ?nodes.iter().map(NodeId::as_str).collect::<Vec<_>>(),
                        "the cluster's member set changed"
                    );
                    self.node.members = Some(nodes);
                    self.members_changed = true;
                }
            }
            Ok(ToDataNode::Horizon(horizon)) => self.forget_through(horizon),
            Ok(ToDataNode::Bye) => self.drained = true,
            Ok(ToDataNode::Get { req, id }) => self.read(req, ReadJob::Get { req, id }),
            Ok(ToDataNode::GetKey { req, key }) => self.read_key(req, key),
            Ok(ToDataNode::Scan { req, after, limit }) => self.scan(req, after, limit),
            Ok(ToDataNode::Welcome { .. }) => {}
            Ok(ToDataNode::Challenge { .. }) => {
                return Handled::End(SessionEnd::Reconnect(
                    "protocol error: challenge after registration".into(),
                ));
            }
            Ok(ToDataNode::Error(reason)) if reason.starts_with(STALE_INCARNATION) => {
                // The membership decides after the report: a newer
                // process with this id has registered, so this one stops.
                return Handled::End(SessionEnd::Superseded(reason.to_owned()));
            }
            Ok(ToDataNode::Error(reason)) => {
                return Handled::End(SessionEnd::Reconnect(format!("head node error: {reason}")));
            }
            Err(e) => return Handled::End(SessionEnd::Reconnect(format!("protocol error: {e}"))),
        }
        Handled::Taken
    }

    /// The fence to record durably before this batch is written, if a
    /// message raised it (once per raise).
    pub fn fence_to_record(&mut self) -> Option<Fence> {
        std::mem::take(&mut self.fence_raised).then_some(self.fence)
    }

    /// The member set to record durably, if a new one came (once per
    /// change).
    pub fn members_to_record(&mut self) -> Option<Vec<NodeId>> {
        if !std::mem::take(&mut self.members_changed) {
            return None;
        }
        self.node.members.clone()
    }

    /// Whether to commit the `staged` records now, or read what else
    /// arrives until a given time first. A batch that ends the session's
    /// reading (`bye`), waits behind a repeated key, or is the last before
    /// leaving never waits.
    pub fn when_to_commit(&mut self, staged: usize, now: Instant) -> Commit {
        let may_wait = !self.drained && !self.split && self.leave_by.is_none();
        self.group.decide(staged, may_wait, now)
    }

    /// Retention removed the records of these ids: their keys leave the
    /// index, so a resend of one is not answered as stored with nothing
    /// on disk (nor reported to the next head node). Call between
    /// batches.
    pub fn forget_removed(&mut self, gone: impl Fn(MessageId) -> bool) {
        let forgotten = self.node.keys.forget_ids(gone);
        if forgotten > 0 {
            debug!(
                forgotten,
                "keys whose records retention removed left the key index"
            );
            self.node.metrics.set_keys(self.node.keys.len());
        }
    }

    /// `horizon <id>`: the head node has forgotten the keys of every id up
    /// to `horizon`; so does this node (one pass over the key index, once
    /// per move of the head node's window), but for the keys of records
    /// staged in this batch, which are kept until they are written. A
    /// horizon no newer than the last one changes nothing.
    fn forget_through(&mut self, horizon: MessageId) {
        if self.node.horizon.is_some_and(|seen| seen >= horizon) {
            return;
        }
        self.node.horizon = Some(horizon);
        let batch = &self.batch;
        let forgotten = self
            .node
            .keys
            .forget_ids(|id| id <= horizon && !batch.has_staged(id));
        if forgotten > 0 {
            debug!(
                forgotten, %horizon,
                "keys the head node has forgotten left the key index"
            );
            self.node.metrics.set_keys(self.node.keys.len());
        }
    }

    /// Retention removed segments whose ids lie in `ranges`: the head node
    /// is told after the next `pong` (a repair must not copy them back
    /// should this node go away). Call between batches.
    pub fn removed_by_retention(&mut self, ranges: impl IntoIterator<Item = IdRange>) {
        let unsent = &mut self.node.removed_unsent;
        for range in ranges {
            IdRange::merge_into(unsent, range);
        }
        if unsent.len() > MAX_UNSENT_REMOVED {
            // The oldest epochs go first; a new head node's report names
            // them.
            let over = unsent.len() - MAX_UNSENT_REMOVED;
            unsent.drain(..over);
        }
    }

    /// The node is shutting down: it says `bye` after the next commit and
    /// gives the head node [`SessionConfig::leave_timeout`] to drain it.
    pub fn request_leave(&mut self) {
        self.leave_requested = true;
    }

    /// The batch of `staged` records is written and synced, at `now`: its
    /// answers ([`Session::answers`]) and reads ([`Session::reads`]) may
    /// go, and a resend of its keys is answered from the index from now on.
    pub fn committed(&mut self, staged: usize, now: Instant) {
        self.group.committed(staged);
        self.batch.written();
        self.node.metrics.set_keys(self.node.keys.len());
        if self.leave_requested && self.leave_by.is_none() {
            self.batch.answers.push(FromDataNode::Leaving);
            self.leave_by = Some(now + self.config.leave_timeout);
        }
    }

    /// The committed batch's answers, in the order their lines came (and
    /// `bye` after them when the node is leaving); for after
    /// [`Session::committed`].
    pub fn answers(&mut self) -> std::vec::Drain<'_, FromDataNode> {
        self.batch.answers.drain(..)
    }

    /// The committed batch's reads, each admitted (its place taken in the
    /// [`ReadSlots`]); for after [`Session::committed`].
    pub fn reads(&mut self) -> std::vec::Drain<'_, ReadJob> {
        self.batch.reads.drain(..)
    }

    /// What comes after a committed batch, at `now`.
    pub fn next(&mut self, now: Instant) -> Next {
        if self.drained {
            // The head node has everything it sent us acknowledged.
            return Next::Drained;
        }
        if self.leave_by.is_some_and(|by| now >= by) {
            warn!("head node did not finish draining this node in time; leaving anyway");
            return Next::End(SessionEnd::Left);
        }
        if std::mem::take(&mut self.split) {
            // Lines already read wait behind the repeated key: no read yet.
            return Next::HandBack;
        }
        Next::Read
    }

    /// Bytes came from the head node at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// A read found nothing to read at `now`: the end of the session if the
    /// head node has been silent for [`SessionConfig::head_timeout`].
    pub fn silent(&self, now: Instant) -> Option<SessionEnd> {
        (now.saturating_duration_since(self.last_heard) >= self.config.head_timeout).then(|| {
            SessionEnd::Reconnect(format!(
                "no word from the head node for {:?}",
                self.config.head_timeout
            ))
        })
    }

    /// The head node closed the connection: how the session ends.
    pub fn closed(&self) -> SessionEnd {
        if self.leave_by.is_some() {
            SessionEnd::Left
        } else {
            SessionEnd::Reconnect("connection closed".into())
        }
    }

    /// The session ends with a batch uncommitted: its records are never
    /// written (nor acknowledged), and their keys leave the index. A failed
    /// commit has dropped its records already.
    pub fn abandon(mut self, staging: &mut impl Staging) {
        self.batch.abandon(staging, &mut self.node.keys);
    }

    /// The fencing of one `mensaje`: the refusal if this session's head
    /// node is older than the newest the node has accepted (nothing more
    /// may be stored for it). A message under a newer epoch than the
    /// session's comes from the same head node, which went above an epoch
    /// another node reported: the node's fence follows it (recorded before
    /// the batch is written). One under an older epoch is fine: a repair
    /// copy, or a message given its id before the head node went above.
    fn fence_message(&mut self, id: Option<MessageId>) -> Option<String> {
        if !self.node.newest.admits(&self.fence) {
            let refusal = self.node.newest.refusal(&self.fence);
            warn!(head = %self.fence, newest = %self.node.newest, "refusing a message of a stale head node: {refusal}");
            return Some(refusal);
        }
        if let Some(id) = id
            && id.epoch > self.fence.epoch
        {
            info!(
                from = self.fence.epoch,
                to = id.epoch,
                "the head node raised its epoch"
            );
            self.fence.epoch = id.epoch;
            self.node.newest = self.fence;
            self.fence_raised = true;
        }
        None
    }

    /// Handles one `mensaje`: stages it (a repair's copy with its
    /// original time, `stored_ms`), or answers it from the key index, or
    /// (its key is staged already in this batch) asks for the batch to be
    /// committed first. False in that last case: nothing was done with it.
    fn store(
        &mut self,
        id: Option<MessageId>,
        key: Option<KeyRef<'_>>,
        text: &str,
        stored_ms: Option<u64>,
        staging: &mut impl Staging,
    ) -> bool {
        // One lookup per keyed message: a key staged earlier in this batch is
        // in the index already, under an id this batch holds.
        let looked_up = key.map(|k| self.node.keys.look_up(k));
        let held = looked_up.and_then(|k| k.held);
        let staged = held.is_some_and(|held| self.batch.has_staged(held));
        match commit_decision(id, held, staged) {
            Decision::Write => {
                debug!(target: MESSAGES_TARGET, id = ?id.map(|id| id.to_string()), key = ?key.map(|k| k.to_string()), "storing mensaje: {}", truncate_for_log(text));
                match (id, stored_ms) {
                    (Some(id), Some(stored_ms)) => {
                        staging.stage_copy(id, key, text.as_bytes(), stored_ms);
                    }
                    _ => staging.stage(id, key, text.as_bytes()),
                }
                if let (Some(looked_up), Some(id)) = (looked_up, id) {
                    self.node
                        .keys
                        .insert_looked_up(looked_up, id, staging.last_stamp_ms());
                }
                self.batch.stage(id);
            }
            Decision::AlreadyStored => {
                debug!(target: MESSAGES_TARGET, id = ?id.map(|id| id.to_string()), key = ?key.map(|k| k.to_string()), "already held under this id; not written again");
                self.batch.answers.push(FromDataNode::Stored(id));
            }
            Decision::HeldAs(held) => {
                info!(
                    id = ?id.map(|id| id.to_string()), %held, key = ?key.map(|k| k.to_string()),
                    "key already held here under another id; answered with it, not written again"
                );
                self.batch.answers.push(match id {
                    Some(id) => FromDataNode::AlreadyHeld { id, held },
                    // A key always comes with an id; answered as stored if not.
                    None => FromDataNode::Stored(None),
                });
            }
            Decision::AfterCommit => return false,
        }
        true
    }

    /// Admits a read for after the commit, or answers it `readerror` at
    /// once when [`MAX_READS_IN_FLIGHT`] are outstanding.
    fn read(&mut self, req: u64, job: ReadJob) {
        if self.reads.admit() {
            self.batch.reads.push(job);
        } else {
            self.node.metrics.read_failed();
            debug!(
                req,
                "read refused: {MAX_READS_IN_FLIGHT} reads already outstanding"
            );
            self.batch.answers.push(FromDataNode::ReadError {
                req,
                reason: format!(
                    "too many reads in flight (at most {MAX_READS_IN_FLIGHT}); send it again once answers come"
                ),
            });
        }
    }

    /// `getkey`: the key index lives with the decisions, so the key is
    /// looked up here and the record read where reads are served.
    fn read_key(&mut self, req: u64, key: KeyRef<'_>) {
        match self.node.keys.get(key) {
            Some(id) => self.read(req, ReadJob::Get { req, id }),
            None => {
                self.node.metrics.get_served();
                self.batch.answers.push(FromDataNode::NotFound {
                    req,
                    removed: false,
                });
            }
        }
    }

    /// `scan`: refused at once over [`MAX_SCAN_RECORDS`].
    fn scan(&mut self, req: u64, after: Option<MessageId>, limit: u32) {
        if limit > MAX_SCAN_RECORDS {
            self.node.metrics.read_failed();
            self.batch.answers.push(FromDataNode::ReadError {
                req,
                reason: format!(
                    "scan limit {limit} is over the most one scan may ask, {MAX_SCAN_RECORDS}"
                ),
            });
        } else {
            self.read(req, ReadJob::Scan { req, after, limit });
        }
    }
}

#[cfg(test)]
mod tests;
