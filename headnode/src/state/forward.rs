//! One client message on its way through the head node, and how it ends.
//!
//! A message is an [`Envelope`] shared by every copy of it: the head node
//! makes `replicas` copies on distinct data nodes and answers the client
//! once `min_replicas` of them are written and synced; the rest complete in
//! the background. A copy whose node fails is moved to another node; a copy
//! no node can take is given up, and the message is then counted as
//! under-replicated (or, if too few copies were made to answer, the client
//! is told why). An envelope answers exactly once, and if it is dropped
//! unanswered it still answers, so no client is ever left waiting.
//!
//! A failure is told apart from an unknown fate: once a copy has been
//! handed to a data node that then failed without acknowledging it, nobody
//! knows whether that node wrote it, and the client is told so
//! ([`Outcome::Unknown`]) rather than `not stored`.
//!
//! Several clients' requests may wait on one envelope: a resend of a key
//! whose message is still on its way waits for the same answer (see
//! `keys`).
//!
//! An answer names only nodes that hold the answered id. A data node that
//! already holds a message's key under another id answers `recibido <id>
//! <held>` and writes nothing: that is no copy of `<id>`. A client's new
//! keyed message then *adopts* `<held>` (once, before it is answered): the
//! client is answered with it, the key table records it, and every copy
//! made from then on is sent under it. A node that wrote `<id>` before the
//! adoption, or answers under any id but the adopted one, holds no copy of
//! it: it gets no new copy, and another node gets one in its place until
//! the message has its copies under the one id ([`CopyStored::OtherId`]).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::{Bytes, BytesMut};
use protocol::datanode::ToDataNode;
use protocol::ids::{MessageId, MessageKey, NodeId};
use smallvec::SmallVec;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tracing::warn;

use crate::state::ids::Ticket;
use crate::state::membership::ConnId;

/// The data nodes holding a message, in the order they wrote it; on the
/// stack up to 3 (the usual number of copies).
pub(crate) type Holders = SmallVec<[NodeId; 3]>;

/// Where a keyed message's key is settled when the message ends: the key
/// table implements it. A trait, so an envelope needs nothing of the table
/// but this one call.
pub(crate) trait SettleKey: Send + Sync + std::fmt::Debug {
    /// The message of `key`, `ended`, given id `given`, ended under `id`
    /// (`given`, or the id it adopted) with these holders. `ended` is
    /// compared, never dereferenced: the envelope is being dropped when
    /// this is called.
    fn settle(
        &self,
        key: &MessageKey,
        ended: *const Envelope,
        given: MessageId,
        id: MessageId,
        holders: &[NodeId],
    );
}

/// How a client message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written and synced by these data nodes, under this id.
    Stored {
        /// The nodes whose `data.txt` holds it, in the order they wrote it.
        holders: Holders,
        /// Its id there.
        id: MessageId,
    },
    /// Certainly not stored; the reason goes to the client after `ERROR `.
    NotStored(Arc<str>),
    /// Perhaps stored: a data node that was sent it failed before it
    /// acknowledged. The reason goes to the client after
    /// `ERROR outcome unknown: `.
    Unknown(Arc<str>),
}

/// An ended message, on its way back to a client's task.
#[derive(Debug)]
pub(crate) struct Completion {
    /// Position of the message in its client's stream.
    pub(crate) slot: u64,
    /// What happened.
    pub(crate) outcome: Outcome,
}

/// A client request waiting for a message's answer.
#[derive(Debug)]
pub(crate) struct Waiter {
    /// Its position in that client's stream.
    pub(crate) slot: u64,
    /// That client's task.
    pub(crate) reply_to: mpsc::UnboundedSender<Completion>,
}

impl Waiter {
    fn send(&self, outcome: Outcome) {
        // The client task may be gone; then nobody waits for the answer.
        let _ = self.reply_to.send(Completion {
            slot: self.slot,
            outcome,
        });
    }
}

/// Requests waiting on one message at most: resends beyond this many while
/// it is still on its way are answered at once with an error.
const MAX_WAITERS: usize = 64;

/// How many copies to make, and how many before the client is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replication {
    /// Copies wanted (R).
    pub(crate) replicas: usize,
    /// Copies written before the answer (W).
    pub(crate) needed: usize,
}

/// The copies of one message.
#[derive(Debug, Default)]
struct Copies {
    /// Who waits for the answer: the first request, and resends of its key.
    waiter: Option<Waiter>,
    more_waiters: Vec<Waiter>,
    answered: bool,
    /// Answered with a failure.
    failed: bool,
    /// Nodes that wrote it.
    holders: Holders,
    /// Nodes a copy is queued for or sent to, not yet acknowledged.
    placed: SmallVec<[(ConnId, NodeId); 3]>,
    /// Copies still on their way: placed, or waiting for a node.
    open: usize,
    /// Nodes that were sent a copy and failed without acknowledging it
    /// (they may hold it), or that hold its key under another id: no new
    /// copy goes there.
    maybe_at: Vec<NodeId>,
    under_replicated: bool,
    /// A client's new keyed message, which may adopt the id a data node
    /// holds its key under (see the module documentation). A repair's
    /// copy, or more copies of a key already stored, keep their id.
    adoptable: bool,
}

/// A client message and where its answer goes, shared by every copy.
#[derive(Debug)]
pub(crate) struct Envelope {
    /// Cluster-unique id, as given; the message may adopt another
    /// ([`Envelope::answer_id`]).
    pub(crate) id: MessageId,
    /// The id a data node held the key under, adopted in place of `id`:
    /// set once, under the copies' lock, before the message is answered.
    adopted: OnceLock<MessageId>,
    /// The client's key, if it sent one.
    pub(crate) key: Option<MessageKey>,
    /// The client's text.
    pub(crate) text: Bytes,
    /// The client's address, for logs.
    pub(crate) client: Arc<str>,
    /// A repair's copy: when the copies it is made from were stored (Unix
    /// ms), the time its new records carry. `None`: a client's message,
    /// stamped by the data node that writes it.
    pub(crate) stored_ms: Option<u64>,
    replication: Replication,
    copies: Mutex<Copies>,
    /// Where the key's entry is settled when the message ends.
    keys: Option<Arc<dyn SettleKey>>,
    /// The message's share of the in-flight budget, returned on drop.
    _charge: Option<OwnedSemaphorePermit>,
    /// Its id's ticket, when the id was given to it: the id is settled
    /// (a tail may pass it) when the message ends, on drop.
    _ticket: Option<Ticket>,
}

/// What became of an acknowledged copy.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CopyStored {
    /// It answered the client, with these holders.
    Answered,
    /// Counted; the client was answered before or will be later.
    Counted,
    /// The node already held it (a second acknowledgement of one copy).
    Again,
    /// One more copy than wanted: a late acknowledgement after the copy
    /// had been moved elsewhere.
    OverReplicated,
    /// The node wrote, or already held, its key under another id than the
    /// one the message is answered with: no copy of it. `more` copies are
    /// to be made elsewhere to reach `replicas` (reserved already: hand
    /// each to the router).
    OtherId {
        /// Copies to make now.
        more: usize,
    },
    /// The node already held the key under another id, which the message
    /// adopted (the client is answered with it once `needed` nodes hold
    /// it); the nodes that wrote the id given before hold no copy of it.
    /// `more` copies are to be made elsewhere, as for
    /// [`CopyStored::OtherId`].
    Adopted {
        /// Copies to make now.
        more: usize,
        /// Whether this answered the client.
        answered: bool,
    },
}

/// Everything an [`Envelope`] starts with, given at once: it is built in
/// place in its allocation instead of moving through builder calls.
pub(crate) struct NewEnvelope {
    /// Cluster-unique id.
    pub(crate) id: MessageId,
    /// The client's text.
    pub(crate) text: Bytes,
    /// The client's address, for logs.
    pub(crate) client: Arc<str>,
    /// Who waits for the answer.
    pub(crate) waiter: Waiter,
    /// How many copies to make, and to wait for.
    pub(crate) replication: Replication,
    /// The client's key, if it sent one.
    pub(crate) key: Option<MessageKey>,
    /// Where the key's entry is settled when the message ends.
    pub(crate) keys: Option<Arc<dyn SettleKey>>,
    /// The nodes already holding it (a resend of a key stored with too
    /// few copies, a repair).
    pub(crate) held_by: Holders,
    /// Its share of the in-flight budget, returned when it ends.
    pub(crate) charge: Option<OwnedSemaphorePermit>,
    /// A repair's copy: the time its records carry (see
    /// [`Envelope::stored_ms`]).
    pub(crate) stored_ms: Option<u64>,
    /// The ticket of `id` when it was given to this message: held until
    /// the message ends.
    pub(crate) ticket: Option<Ticket>,
}

impl NewEnvelope {
    /// A message to be stored under `id`, answered to `waiter`: no key, no
    /// holders yet, no share of the budget.
    pub(crate) fn plain(
        id: MessageId,
        text: Bytes,
        client: Arc<str>,
        waiter: Waiter,
        replication: Replication,
    ) -> Self {
        NewEnvelope {
            id,
            text,
            client,
            waiter,
            replication,
            key: None,
            keys: None,
            held_by: Holders::new(),
            charge: None,
            stored_ms: None,
            ticket: None,
        }
    }
}

impl Envelope {
    /// The envelope of a message, shared by its copies.
    pub(crate) fn new(parts: NewEnvelope) -> Arc<Envelope> {
        let NewEnvelope {
            id,
            text,
            client,
            waiter,
            replication,
            key,
            keys,
            held_by,
            charge,
            stored_ms,
            ticket,
        } = parts;
        let adoptable = key.is_some() && held_by.is_empty() && stored_ms.is_none();
        Arc::new(Envelope {
            id,
            adopted: OnceLock::new(),
            key,
            text,
            client,
            stored_ms,
            replication,
            copies: Mutex::new(Copies {
                waiter: Some(waiter),
                holders: held_by,
                adoptable,
                ..Copies::default()
            }),
            keys,
            _charge: charge,
            _ticket: ticket,
        })
    }

    /// The id the message is answered with and its copies are sent under:
    /// the one it was given, or the one it adopted.
    pub(crate) fn answer_id(&self) -> MessageId {
        self.adopted.get().copied().unwrap_or(self.id)
    }

    /// Appends the line that asks a data node to store a copy under `id`
    /// (its [`Envelope::answer_id`], read once by the caller): `mensaje
    /// <id> [<key>]: <text>`, with ` @<stored-ms>` before the colon for a
    /// repair's copy; `mensaje: <text>` for an original-system node
    /// (`legacy`), which knows neither.
    pub(crate) fn encode_store(&self, id: MessageId, legacy: bool, buf: &mut BytesMut) {
        if legacy {
            return ToDataNode::encode_store(None, None, &self.text, buf);
        }
        let key = self.key.as_ref().map(MessageKey::as_ref);
        match self.stored_ms {
            Some(stored_ms) => ToDataNode::encode_copy(id, key, stored_ms, &self.text, buf),
            None => ToDataNode::encode_store(Some(id), key, &self.text, buf),
        }
    }

    fn copies(&self) -> MutexGuard<'_, Copies> {
        // Every change under this lock leaves it consistent.
        self.copies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many copies to make and wait for.
    pub(crate) fn replication(&self) -> Replication {
        self.replication
    }

    /// Whether the client was answered with a failure.
    pub(crate) fn has_failed(&self) -> bool {
        self.copies().failed
    }

    /// The nodes that wrote it so far.
    pub(crate) fn holders(&self) -> Holders {
        self.copies().holders.clone()
    }

    /// Copies still to be made to reach `replicas`, counting those on
    /// their way; and copies written so far.
    pub(crate) fn wanted(&self) -> (usize, usize) {
        let copies = self.copies();
        let have = copies.holders.len() + copies.open;
        (
            self.replication.replicas.saturating_sub(have),
            copies.holders.len(),
        )
    }

    /// Whether `node` holds, may hold or is about to get a copy: no new
    /// copy goes there.
    pub(crate) fn excludes(&self, node: &NodeId) -> bool {
        let copies = self.copies();
        copies.holders.contains(node)
            || copies.placed.iter().any(|(_, n)| n == node)
            || copies.maybe_at.contains(node)
    }

    /// Another request for the same key waits for this message's answer;
    /// it gets it at once if the message is already acknowledged.
    pub(crate) fn add_waiter(&self, waiter: Waiter) {
        let mut copies = self.copies();
        if copies.answered {
            let outcome = if copies.failed {
                Outcome::NotStored("resent while the first attempt was failing".into())
            } else {
                Outcome::Stored {
                    holders: copies.holders.clone(),
                    id: self.answer_id(),
                }
            };
            drop(copies);
            waiter.send(outcome);
        } else if copies.more_waiters.len() + 1 >= MAX_WAITERS {
            drop(copies);
            waiter.send(Outcome::NotStored(
                format!("more than {MAX_WAITERS} resends of this key are waiting").into(),
            ));
        } else if copies.waiter.is_none() {
            copies.waiter = Some(waiter);
        } else {
            copies.more_waiters.push(waiter);
        }
    }

    /// A new copy for `node` (connection `conn`) is about to be queued.
    pub(crate) fn place(&self, conn: ConnId, node: &NodeId) {
        let mut copies = self.copies();
        copies.placed.push((conn, node.clone()));
        copies.open += 1;
    }

    /// A copy will be made once a node can take it.
    pub(crate) fn reserve(&self) {
        self.copies().open += 1;
    }

    /// A copy that was placed on `conn` was not taken (its queue had just
    /// closed) and goes elsewhere.
    pub(crate) fn unplace(&self, conn: ConnId) {
        let mut copies = self.copies();
        copies.placed.retain(|(c, _)| *c != conn);
        copies.open = copies.open.saturating_sub(1);
    }

    /// A copy that was placed on `conn` must go elsewhere; `sent` if that
    /// node may have written it (it may then hold it).
    pub(crate) fn move_copy(&self, conn: ConnId, sent: bool) {
        let mut copies = self.copies();
        if let Some(at) = copies.placed.iter().position(|(c, _)| *c == conn) {
            let (_, node) = copies.placed.swap_remove(at);
            if sent && !copies.maybe_at.contains(&node) {
                copies.maybe_at.push(node);
            }
        }
    }

    /// A moved copy is placed again on `node`.
    pub(crate) fn replace(&self, conn: ConnId, node: &NodeId) {
        self.copies().placed.push((conn, node.clone()));
    }

    /// `node` (on `conn`) has written and synced a copy under
    /// `written_as`: the id it was sent under, or the one it answered it
    /// already held the key under.
    pub(crate) fn copy_stored(
        &self,
        conn: ConnId,
        node: &NodeId,
        written_as: MessageId,
    ) -> CopyStored {
        let mut copies = self.copies();
        let placed = copies.placed.iter().position(|(c, _)| *c == conn);
        if let Some(at) = placed {
            copies.placed.swap_remove(at);
            copies.open = copies.open.saturating_sub(1);
        }
        copies.maybe_at.retain(|n| n != node);
        if written_as != self.answer_id() {
            return self.other_id(&mut copies, node, written_as);
        }
        if copies.holders.contains(node) {
            return CopyStored::Again;
        }
        copies.holders.push(node.clone());
        if copies.holders.len() > self.replication.replicas {
            return CopyStored::OverReplicated;
        }
        if !copies.answered && copies.holders.len() >= self.replication.needed {
            let outcome = Outcome::Stored {
                holders: copies.holders.clone(),
                id: self.answer_id(),
            };
            Self::answer(&mut copies, outcome);
            return CopyStored::Answered;
        }
        CopyStored::Counted
    }

    /// `node` holds the message's key under `held`, not under the id it is
    /// answered with. A client's new keyed message not yet answered adopts
    /// `held` (the nodes that wrote the other id hold no copy of it);
    /// otherwise the node holds no copy. Either way, the copies missing to
    /// reach `replicas` are reserved, to be made elsewhere.
    fn other_id(&self, copies: &mut Copies, node: &NodeId, held: MessageId) -> CopyStored {
        let adopt = copies.adoptable
            && !copies.answered
            && !copies.failed
            && self.adopted.get().is_none()
            && self.adopted.set(held).is_ok();
        let strays = if adopt {
            std::mem::take(&mut copies.holders)
        } else {
            Holders::new()
        };
        // The nodes that hold another id than the answered one get no new
        // copy: those that wrote the given id, or this one if it is no
        // holder.
        let others = strays.iter().chain((!adopt).then_some(node));
        for stray in others {
            if !copies.maybe_at.contains(stray) {
                copies.maybe_at.push(stray.clone());
            }
        }
        if adopt {
            copies.holders.push(node.clone());
        }
        let more = if copies.failed {
            0
        } else {
            let have = copies.holders.len() + copies.open;
            self.replication.replicas.saturating_sub(have)
        };
        copies.open += more;
        if !adopt {
            return CopyStored::OtherId { more };
        }
        let answered = copies.holders.len() >= self.replication.needed;
        if answered {
            let outcome = Outcome::Stored {
                holders: copies.holders.clone(),
                id: held,
            };
            Self::answer(copies, outcome);
        }
        CopyStored::Adopted { more, answered }
    }

    /// A copy on its way is given up: no node could take it. The client is
    /// told `reason` if too few copies are left to answer it; otherwise the
    /// message is under-replicated. True the first time a message turns
    /// out under-replicated.
    pub(crate) fn give_up_copy(&self, reason: Arc<str>) -> bool {
        let mut copies = self.copies();
        copies.open = copies.open.saturating_sub(1);
        self.settle_if_short(&mut copies, reason)
    }

    /// No copy of a new message could be placed in time (too few nodes).
    pub(crate) fn give_up(&self, reason: Arc<str>) {
        let mut copies = self.copies();
        self.settle_if_short(&mut copies, reason);
    }

    fn settle_if_short(&self, copies: &mut Copies, reason: Arc<str>) -> bool {
        let reachable = copies.holders.len() + copies.open;
        if !copies.answered && reachable < self.replication.needed {
            let outcome = if copies.maybe_at.is_empty() {
                Outcome::NotStored(reason)
            } else {
                Outcome::Unknown(reason)
            };
            copies.failed = true;
            Self::answer(copies, outcome);
            return false;
        }
        if copies.answered
            && !copies.failed
            && copies.open == 0
            && copies.holders.len() < self.replication.replicas
            && !copies.under_replicated
        {
            copies.under_replicated = true;
            return true;
        }
        false
    }

    fn answer(copies: &mut Copies, outcome: Outcome) {
        copies.answered = true;
        for waiter in copies.more_waiters.drain(..) {
            waiter.send(outcome.clone());
        }
        if let Some(waiter) = copies.waiter.take() {
            waiter.send(outcome);
        }
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        let this: *const Envelope = self;
        let copies = self
            .copies
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = self.adopted.get().copied().unwrap_or(self.id);
        if let (Some(keys), Some(key)) = (&self.keys, &self.key) {
            keys.settle(key, this, self.id, id, &copies.holders);
        }
        if !copies.answered {
            // Every path answers before it lets go; this is the net under
            // them (and the answer during shutdown, when queues are dropped
            // whole).
            let reason: Arc<str> = "head node shutting down".into();
            let outcome = if copies.maybe_at.is_empty() && copies.placed.is_empty() {
                Outcome::NotStored(reason)
            } else {
                Outcome::Unknown(reason)
            };
            copies.failed = true;
            Envelope::answer(copies, outcome);
        }
    }
}

/// One copy of a message on its way to a data node: the envelope and how
/// many nodes this copy has been tried on.
#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) attempts: u32,
    /// When it first had to wait for a node, so a copy moved between the
    /// waiting room and failing nodes still waits at most once in all.
    pub(crate) waiting_since: Option<Instant>,
}

impl Forward {
    /// A first attempt.
    pub(crate) fn new(envelope: Arc<Envelope>) -> Self {
        Forward {
            envelope,
            attempts: 0,
            waiting_since: None,
        }
    }

    /// The id its copy is sent under (see [`Envelope::answer_id`]).
    pub(crate) fn id(&self) -> MessageId {
        self.envelope.answer_id()
    }
}

/// Logs a message that has fewer copies than wanted.
pub(crate) fn report_under_replicated(envelope: &Envelope, count: u64) {
    // One line per message would flood the log while a node is down: the
    // first, then one per thousand, with the running count.
    if count == 1 || count.is_multiple_of(1000) {
        warn!(
            id = %envelope.answer_id(),
            holders = ?envelope.holders().iter().map(NodeId::as_str).collect::<Vec<_>>(),
            wanted = envelope.replication.replicas,
            under_replicated_total = count,
            "message stored with fewer copies than wanted (not enough data nodes)"
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An envelope for tests (R=1, W=1), and the receiver of its answer.
    pub(crate) fn envelope(seq: u64) -> (Arc<Envelope>, mpsc::UnboundedReceiver<Completion>) {
        replicated(seq, 1, 1)
    }

    /// An envelope wanting `replicas` copies, answered after `needed`.
    pub(crate) fn replicated(
        seq: u64,
        replicas: usize,
        needed: usize,
    ) -> (Arc<Envelope>, mpsc::UnboundedReceiver<Completion>) {
        let (reply_to, replies) = mpsc::unbounded_channel();
        let envelope = Envelope::new(NewEnvelope::plain(
            MessageId { epoch: 1, seq },
            Bytes::from_static(b"numero random: 1"),
            "test".into(),
            Waiter {
                slot: seq,
                reply_to,
            },
            Replication { replicas, needed },
        ));
        (envelope, replies)
    }

    fn node(name: &str) -> NodeId {
        name.parse().unwrap()
    }

    #[test]
    fn a_repair_copy_asks_for_the_record_time_of_the_copies_it_is_made_from() {
        let (reply_to, _replies) = mpsc::unbounded_channel();
        let waiter = Waiter { slot: 1, reply_to };
        let copy = Envelope::new(NewEnvelope {
            key: Some("c-1/7".parse().unwrap()),
            stored_ms: Some(1_795_413_331_793),
            ..NewEnvelope::plain(
                MessageId { epoch: 9, seq: 4 },
                Bytes::from_static(b"numero random: 1"),
                "repair".into(),
                waiter,
                Replication {
                    replicas: 2,
                    needed: 1,
                },
            )
        });
        let encoded = |envelope: &Envelope, legacy| {
            let mut buf = BytesMut::new();
            envelope.encode_store(envelope.answer_id(), legacy, &mut buf);
            String::from_utf8(buf.to_vec()).unwrap()
        };
        assert_eq!(
            encoded(&copy, false),
            "mensaje 9-4 c-1/7 @1795413331793: numero random: 1"
        );
        assert_eq!(encoded(&copy, true), "mensaje: numero random: 1");
        let (client, _replies) = envelope(5);
        assert_eq!(
            encoded(&client, false),
            "mensaje 1-5: numero random: 1",
            "a client's message carries no time: the node stamps it"
        );
    }

    #[test]
    fn the_client_is_answered_when_the_needed_copies_are_written() {
        let (envelope, mut replies) = replicated(7, 3, 2);
        for (conn, name) in [(1, "a"), (2, "b"), (3, "c")] {
            envelope.place(conn, &node(name));
        }
        assert_eq!(
            envelope.copy_stored(2, &node("b"), envelope.id),
            CopyStored::Counted
        );
        assert!(replies.try_recv().is_err(), "one copy of two needed");
        assert_eq!(
            envelope.copy_stored(1, &node("a"), envelope.id),
            CopyStored::Answered
        );
        let done = replies.try_recv().unwrap();
        assert_eq!(done.slot, 7);
        assert_eq!(
            done.outcome,
            Outcome::Stored {
                holders: smallvec::smallvec![node("b"), node("a")],
                id: MessageId { epoch: 1, seq: 7 }
            }
        );
        assert_eq!(
            envelope.copy_stored(3, &node("c"), envelope.id),
            CopyStored::Counted
        );
        assert_eq!(
            envelope.copy_stored(3, &node("c"), envelope.id),
            CopyStored::Again
        );
        assert!(replies.try_recv().is_err(), "one answer only");
        assert_eq!(envelope.wanted(), (0, 3));
    }

    #[test]
    fn a_moved_copy_that_is_acknowledged_late_is_one_copy_too_many() {
        let (envelope, _replies) = replicated(1, 2, 2);
        envelope.place(1, &node("a"));
        envelope.place(2, &node("b"));
        // b timed out: its copy moves to c, and b may still write it.
        envelope.move_copy(2, true);
        assert!(envelope.excludes(&node("b")));
        envelope.replace(3, &node("c"));
        assert_eq!(
            envelope.copy_stored(1, &node("a"), envelope.id),
            CopyStored::Counted
        );
        assert_eq!(
            envelope.copy_stored(3, &node("c"), envelope.id),
            CopyStored::Answered
        );
        assert_eq!(
            envelope.copy_stored(2, &node("b"), envelope.id),
            CopyStored::OverReplicated
        );
    }

    #[test]
    fn too_few_copies_fail_the_message_and_copies_beyond_the_needed_count_as_under_replicated() {
        let (envelope, mut replies) = replicated(1, 2, 2);
        envelope.place(1, &node("a"));
        envelope.place(2, &node("b"));
        envelope.copy_stored(1, &node("a"), envelope.id);
        envelope.move_copy(2, false);
        assert!(!envelope.give_up_copy("not enough data nodes (1 live, 2 required)".into()));
        assert!(matches!(
            replies.try_recv().unwrap().outcome,
            Outcome::NotStored(reason) if reason.starts_with("not enough data nodes")
        ));
        assert!(envelope.has_failed());

        let (envelope, mut replies) = replicated(2, 2, 1);
        envelope.place(1, &node("a"));
        envelope.place(2, &node("b"));
        envelope.copy_stored(1, &node("a"), envelope.id);
        assert!(matches!(
            replies.try_recv().unwrap().outcome,
            Outcome::Stored { .. }
        ));
        envelope.move_copy(2, true);
        assert!(envelope.give_up_copy("no node".into()), "under-replicated");
        assert!(!envelope.has_failed());
    }

    #[test]
    fn a_message_sent_to_a_node_is_never_answered_not_stored() {
        let (never_sent, mut replies) = envelope(1);
        never_sent.give_up("no data nodes available".into());
        assert!(matches!(
            replies.try_recv().unwrap().outcome,
            Outcome::NotStored(_)
        ));

        let (sent, mut replies) = envelope(2);
        sent.place(1, &node("a"));
        sent.move_copy(1, true);
        sent.give_up_copy("5 data nodes failed to acknowledge it".into());
        assert!(matches!(
            replies.try_recv().unwrap().outcome,
            Outcome::Unknown(_)
        ));
    }

    #[test]
    fn a_resend_waits_for_the_same_answer_or_gets_it_at_once() {
        let (envelope, mut first) = replicated(1, 1, 1);
        let (reply_to, mut second) = mpsc::unbounded_channel();
        envelope.add_waiter(Waiter { slot: 9, reply_to });
        envelope.place(1, &node("a"));
        envelope.copy_stored(1, &node("a"), envelope.id);
        assert!(matches!(
            first.try_recv().unwrap().outcome,
            Outcome::Stored { .. }
        ));
        let done = second.try_recv().unwrap();
        assert_eq!(done.slot, 9);
        assert!(matches!(done.outcome, Outcome::Stored { .. }));
        let (reply_to, mut third) = mpsc::unbounded_channel();
        envelope.add_waiter(Waiter { slot: 10, reply_to });
        assert!(matches!(
            third.try_recv().unwrap().outcome,
            Outcome::Stored { .. }
        ));
    }

    /// A client's keyed message wanting `replicas` copies, answered after
    /// `needed`.
    fn keyed(
        replicas: usize,
        needed: usize,
    ) -> (Arc<Envelope>, mpsc::UnboundedReceiver<Completion>) {
        let (reply_to, replies) = mpsc::unbounded_channel();
        let envelope = Envelope::new(NewEnvelope {
            key: Some("k/1".parse().unwrap()),
            ..NewEnvelope::plain(
                MessageId { epoch: 1, seq: 4 },
                Bytes::from_static(b"numero random: 1"),
                "test".into(),
                Waiter { slot: 1, reply_to },
                Replication { replicas, needed },
            )
        });
        (envelope, replies)
    }

    const HELD: MessageId = MessageId { epoch: 1, seq: 1 };

    #[test]
    fn a_node_that_holds_the_key_under_another_id_gives_the_message_that_id() {
        let (envelope, mut replies) = keyed(1, 1);
        envelope.place(1, &node("a"));
        assert_eq!(
            envelope.copy_stored(1, &node("a"), HELD),
            CopyStored::Adopted {
                more: 0,
                answered: true
            }
        );
        assert_eq!(
            replies.try_recv().unwrap().outcome,
            Outcome::Stored {
                holders: smallvec::smallvec![node("a")],
                id: HELD
            },
            "answered with the id the node holds, never the one it was sent"
        );
        assert_eq!(envelope.answer_id(), HELD);
        assert_eq!(
            Forward::new(envelope.clone()).id(),
            HELD,
            "copies go under it"
        );
    }

    #[test]
    fn after_an_adoption_the_answer_names_only_nodes_that_hold_the_adopted_id() {
        let (envelope, mut replies) = keyed(2, 2);
        envelope.place(1, &node("a"));
        envelope.place(2, &node("b"));
        // a did not know the key: it wrote the id it was sent.
        assert_eq!(
            envelope.copy_stored(1, &node("a"), envelope.id),
            CopyStored::Counted
        );
        // b held it under another id: the message takes that id, a's copy
        // is of another id, and one copy more is to be made elsewhere.
        assert_eq!(
            envelope.copy_stored(2, &node("b"), HELD),
            CopyStored::Adopted {
                more: 1,
                answered: false
            }
        );
        assert!(replies.try_recv().is_err(), "one node holds the adopted id");
        assert!(
            envelope.excludes(&node("a")),
            "a holds the key under another id"
        );
        assert_eq!(envelope.wanted(), (0, 1), "the copy to make is reserved");
        envelope.replace(3, &node("c"));
        assert_eq!(
            envelope.copy_stored(3, &node("c"), HELD),
            CopyStored::Answered
        );
        assert_eq!(
            replies.try_recv().unwrap().outcome,
            Outcome::Stored {
                holders: smallvec::smallvec![node("b"), node("c")],
                id: HELD
            }
        );
    }

    #[test]
    fn a_copy_under_an_id_the_message_is_not_answered_with_is_made_again_elsewhere() {
        // Adopted first: a late copy written under the given id is no copy.
        let (envelope, mut replies) = keyed(2, 1);
        envelope.place(1, &node("a"));
        envelope.place(2, &node("b"));
        assert!(matches!(
            envelope.copy_stored(1, &node("a"), HELD),
            CopyStored::Adopted {
                more: 0,
                answered: true
            }
        ));
        assert!(
            matches!(replies.try_recv().unwrap().outcome, Outcome::Stored { id, .. } if id == HELD)
        );
        assert_eq!(
            envelope.copy_stored(2, &node("b"), envelope.id),
            CopyStored::OtherId { more: 1 }
        );
        assert!(envelope.excludes(&node("b")));
        assert_eq!(envelope.holders().as_slice(), [node("a")]);

        // A repair's copy keeps its id: a node holding the key under
        // another one is no holder, and the copy goes elsewhere.
        let (reply_to, _replies) = mpsc::unbounded_channel();
        let repair = Envelope::new(NewEnvelope {
            key: Some("k/1".parse().unwrap()),
            held_by: smallvec::smallvec![node("x")],
            ..NewEnvelope::plain(
                MessageId { epoch: 1, seq: 4 },
                Bytes::from_static(b"numero random: 1"),
                "repair".into(),
                Waiter { slot: 1, reply_to },
                Replication {
                    replicas: 2,
                    needed: 2,
                },
            )
        });
        repair.place(1, &node("a"));
        assert_eq!(
            repair.copy_stored(1, &node("a"), HELD),
            CopyStored::OtherId { more: 1 }
        );
        assert_eq!(repair.answer_id(), repair.id);
    }

    #[test]
    fn a_dropped_envelope_still_answers_once() {
        let (envelope, mut replies) = envelope(3);
        drop(envelope);
        assert!(matches!(
            replies.try_recv().unwrap().outcome,
            Outcome::NotStored(reason) if &*reason == "head node shutting down"
        ));
        assert!(replies.try_recv().is_err());
    }
}
