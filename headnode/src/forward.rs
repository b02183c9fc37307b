//! One client message on its way through the head node, and how it ends.
//!
//! A message is an [`Envelope`] shared by every attempt to store it: the
//! first data node that acknowledges it, from any attempt, answers the
//! client; later acknowledgements only tell that it is stored twice. An
//! envelope answers exactly once, and if it is dropped unanswered it still
//! answers, so no client is ever left waiting.
//!
//! A failure is told apart from an unknown fate: once a message has been
//! handed to a data node that then failed without acknowledging it, nobody
//! knows whether that node wrote it, and the client is told so
//! ([`Outcome::Unknown`]) rather than `not stored`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use protocol::message::{MessageId, NodeId};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// How a client message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written by this data node, under this id.
    Stored {
        /// The node whose `data.txt` holds it.
        node: NodeId,
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

/// An ended message, on its way back to its client's task.
#[derive(Debug)]
pub(crate) struct Completion {
    /// Position of the message in its client's stream.
    pub(crate) slot: u64,
    /// What happened.
    pub(crate) outcome: Outcome,
}

/// A client message and where its answer goes, shared by every attempt.
#[derive(Debug)]
pub(crate) struct Envelope {
    /// Cluster-unique id.
    pub(crate) id: MessageId,
    /// The client's text.
    pub(crate) text: Bytes,
    /// The client's address, for logs.
    pub(crate) client: Arc<str>,
    slot: u64,
    reply_to: mpsc::UnboundedSender<Completion>,
    answered: AtomicBool,
    /// Handed to a data node that has not acknowledged it (and may never).
    maybe_stored: AtomicBool,
    /// The message's share of the in-flight budget, returned on drop.
    _charge: Option<OwnedSemaphorePermit>,
}

impl Envelope {
    pub(crate) fn new(
        id: MessageId,
        text: Bytes,
        client: Arc<str>,
        slot: u64,
        reply_to: mpsc::UnboundedSender<Completion>,
        charge: Option<OwnedSemaphorePermit>,
    ) -> Arc<Envelope> {
        Arc::new(Envelope {
            id,
            text,
            client,
            slot,
            reply_to,
            answered: AtomicBool::new(false),
            maybe_stored: AtomicBool::new(false),
            _charge: charge,
        })
    }

    /// Whether the client has had its answer.
    pub(crate) fn is_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// The message is being written to a data node's socket: from now on a
    /// failure of that node leaves its fate unknown.
    pub(crate) fn mark_sent(&self) {
        self.maybe_stored.store(true, Ordering::Relaxed);
    }

    /// `node` has written it. True if this answered the client; false if an
    /// earlier acknowledgement already had (the message is stored twice).
    pub(crate) fn stored(&self, node: &NodeId) -> bool {
        self.answer(Outcome::Stored {
            node: node.clone(),
            id: self.id,
        })
    }

    /// Nothing more will be tried. The client is told `reason`, as a plain
    /// failure if no data node was ever sent the message, as an unknown
    /// outcome otherwise. False if it was already answered.
    pub(crate) fn give_up(&self, reason: Arc<str>) -> bool {
        let outcome = if self.maybe_stored.load(Ordering::Relaxed) {
            Outcome::Unknown(reason)
        } else {
            Outcome::NotStored(reason)
        };
        self.answer(outcome)
    }

    fn answer(&self, outcome: Outcome) -> bool {
        if self.answered.swap(true, Ordering::AcqRel) {
            return false;
        }
        // The client task may be gone; then nobody waits for the answer.
        let _ = self.reply_to.send(Completion {
            slot: self.slot,
            outcome,
        });
        true
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        // Every path answers before it lets go; this is the net under them
        // (and the answer during shutdown, when queues are dropped whole).
        self.give_up("head node shutting down".into());
    }
}

/// One attempt to store a message: the envelope and how many data nodes
/// have been tried.
#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) attempts: u32,
}

impl Forward {
    /// A first attempt.
    pub(crate) fn new(envelope: Arc<Envelope>) -> Self {
        Forward {
            envelope,
            attempts: 0,
        }
    }

    /// The message id.
    pub(crate) fn id(&self) -> MessageId {
        self.envelope.id
    }
}

/// Hands out message ids unique across the cluster's life: the head node's
/// start time in Unix milliseconds, then a counter.
#[derive(Debug)]
pub struct IdGenerator {
    epoch: u64,
    next: AtomicU64,
}

impl IdGenerator {
    /// Ids of a head node run that started now.
    pub fn new() -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        IdGenerator::with_epoch(epoch)
    }

    /// Ids with a given epoch (tests).
    pub fn with_epoch(epoch: u64) -> Self {
        IdGenerator {
            epoch,
            next: AtomicU64::new(1),
        }
    }

    /// The epoch of this run.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next id.
    pub fn next_id(&self) -> MessageId {
        MessageId {
            epoch: self.epoch,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An envelope for tests, and the receiver of its answer.
    pub(crate) fn envelope(seq: u64) -> (Arc<Envelope>, mpsc::UnboundedReceiver<Completion>) {
        let (reply_to, replies) = mpsc::unbounded_channel();
        let envelope = Envelope::new(
            MessageId { epoch: 1, seq },
            Bytes::from_static(b"numero random: 1"),
            "test".into(),
            seq,
            reply_to,
            None,
        );
        (envelope, replies)
    }

    #[test]
    fn ids_are_unique_and_carry_the_epoch() {
        let ids = IdGenerator::with_epoch(42);
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_eq!((a.epoch, a.seq, b.seq), (42, 1, 2));
    }

    #[test]
    fn the_first_acknowledgement_answers_and_later_ones_do_not() {
        let (envelope, mut replies) = envelope(7);
        let (a, b): (NodeId, NodeId) = ("a".parse().unwrap(), "b".parse().unwrap());
        assert!(envelope.stored(&b));
        assert!(!envelope.stored(&a), "stored twice: no second answer");
        assert!(!envelope.give_up("late failure".into()));
        let done = replies.try_recv().unwrap();
        assert_eq!(done.slot, 7);
        assert_eq!(
            done.outcome,
            Outcome::Stored {
                node: b,
                id: MessageId { epoch: 1, seq: 7 }
            }
        );
        assert!(replies.try_recv().is_err());
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
        sent.mark_sent();
        sent.give_up("5 data nodes failed to acknowledge it".into());
        assert!(matches!(
            replies.try_recv().unwrap().outcome,
            Outcome::Unknown(_)
        ));
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
