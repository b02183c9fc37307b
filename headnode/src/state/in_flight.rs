//! The messages one data node holds, oldest first.
//!
//! A data node answers in the order it was sent messages, so a FIFO is
//! enough: an answer matches the front (ids are compared whole, since a
//! resent key keeps the id an earlier head node run gave it). A message
//! whose ack times out stays here: the node is asked to withdraw it and
//! answers either `withdrawn` (then, and only then, the copy goes to another
//! node) or `recibido` (it was written after all). Moving the copy before
//! that answer could leave one copy too many; a node that never answers is
//! evicted by the failure detector, and its messages move then.

use std::collections::VecDeque;

use protocol::ids::MessageId;
use tokio::time::Instant;

use crate::state::forward::Forward;

struct Entry {
    id: MessageId,
    deadline: Instant,
    message: Forward,
}

/// What an acknowledgement matched.
pub(crate) enum Acked {
    /// The message, now answered, and the id it was sent under.
    Message(Forward, MessageId),
    /// Nothing this node holds.
    Unknown,
}

#[derive(Default)]
pub(crate) struct InFlight {
    entries: VecDeque<Entry>,
    /// Leading entries whose deadline has already passed (withdraw sent).
    expired: usize,
    /// Bytes of text of every entry: the node may be writing all of them.
    bytes: usize,
}

impl InFlight {
    /// Messages sent and not yet answered.
    pub(crate) fn waiting(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of text sent to the node and not yet answered.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// A message sent under `id` (its [`Forward::id`] when it was
    /// encoded), answered by `deadline`.
    pub(crate) fn push(&mut self, message: Forward, id: MessageId, deadline: Instant) {
        self.bytes += message.envelope.text.len();
        self.entries.push_back(Entry {
            id,
            deadline,
            message,
        });
    }

    /// Matches the answer for `id` (or, for an original-system node that
    /// names no id, for the oldest message). Entries sent before it will
    /// never be answered: they are returned in `skipped` to be resent. An
    /// id this node does not hold changes nothing.
    pub(crate) fn ack(&mut self, id: Option<MessageId>, skipped: &mut Vec<Forward>) -> Acked {
        let position = match id {
            None if self.entries.is_empty() => return Acked::Unknown,
            None => 0,
            // Almost always the front.
            Some(id) => match self.entries.iter().position(|entry| entry.id == id) {
                Some(position) => position,
                None => return Acked::Unknown,
            },
        };
        for _ in 0..position {
            if let Some((message, _)) = self.pop_front() {
                skipped.push(message);
            }
        }
        match self.pop_front() {
            Some((message, id)) => Acked::Message(message, id),
            None => Acked::Unknown,
        }
    }

    /// When the oldest message not yet timed out times out.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.entries.get(self.expired).map(|entry| entry.deadline)
    }

    /// The ids of the messages whose deadline has just passed, once each:
    /// they stay, waiting for the node's answer to a withdraw.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<MessageId> {
        let mut expired = Vec::new();
        while let Some(entry) = self.entries.get(self.expired) {
            if entry.deadline > now {
                break;
            }
            expired.push(entry.id);
            self.expired += 1;
        }
        expired
    }

    /// Everything still waiting, oldest first.
    pub(crate) fn drain(&mut self) -> Vec<Forward> {
        self.expired = 0;
        self.bytes = 0;
        self.entries.drain(..).map(|entry| entry.message).collect()
    }

    fn pop_front(&mut self) -> Option<(Forward, MessageId)> {
        let entry = self.entries.pop_front()?;
        self.expired = self.expired.saturating_sub(1);
        self.bytes -= entry.message.envelope.text.len();
        Some((entry.message, entry.id))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::state::forward::tests::envelope;

    fn message(seq: u64) -> Forward {
        let (envelope, _) = envelope(seq);
        Forward {
            envelope,
            attempts: 1,
            waiting_since: None,
        }
    }

    fn id(seq: u64) -> Option<MessageId> {
        Some(MessageId { epoch: 1, seq })
    }

    fn seqs(messages: &[Forward]) -> Vec<u64> {
        messages.iter().map(|m| m.id().seq).collect()
    }

    #[test]
    fn acks_in_order_match_the_front() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::default();
        for seq in 1..=3 {
            in_flight.push(message(seq), id(seq).unwrap(), t0);
        }
        assert_eq!(in_flight.bytes(), 3 * 16);
        let mut skipped = Vec::new();
        assert!(
            matches!(in_flight.ack(id(1), &mut skipped), Acked::Message(m, _) if m.id().seq == 1)
        );
        assert!(
            matches!(in_flight.ack(None, &mut skipped), Acked::Message(m, _) if m.id().seq == 2)
        );
        assert_eq!(in_flight.waiting(), 1);
        assert!(matches!(in_flight.ack(id(9), &mut skipped), Acked::Unknown));
        assert!(skipped.is_empty(), "an id it does not hold changes nothing");
        in_flight.push(message(4), id(4).unwrap(), t0);
        assert!(
            matches!(in_flight.ack(id(4), &mut skipped), Acked::Message(m, _) if m.id().seq == 4)
        );
        assert_eq!(
            seqs(&skipped),
            [3],
            "an ack past a message means that one was lost"
        );
        assert_eq!(in_flight.waiting(), 0);
        assert_eq!(in_flight.bytes(), 0);
    }

    #[test]
    fn timed_out_messages_stay_until_the_node_answers() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut in_flight = InFlight::default();
        in_flight.push(message(1), id(1).unwrap(), t0 + second);
        in_flight.push(message(2), id(2).unwrap(), t0 + 2 * second);
        assert_eq!(in_flight.next_deadline(), Some(t0 + second));
        assert!(in_flight.expire(t0).is_empty());
        let expired = in_flight.expire(t0 + second);
        assert_eq!(expired, [MessageId { epoch: 1, seq: 1 }]);
        assert!(
            in_flight.expire(t0 + second).is_empty(),
            "each message expires once"
        );
        assert_eq!(in_flight.next_deadline(), Some(t0 + 2 * second));
        assert_eq!(in_flight.waiting(), 2, "still the node's until it answers");
        assert_eq!(in_flight.bytes(), 2 * 16);

        let mut skipped = Vec::new();
        assert!(
            matches!(in_flight.ack(id(1), &mut skipped), Acked::Message(m, _) if m.id().seq == 1),
            "a late answer (recibido or withdrawn) matches the message itself"
        );
        assert_eq!(in_flight.next_deadline(), Some(t0 + 2 * second));
        assert!(
            matches!(in_flight.ack(id(2), &mut skipped), Acked::Message(m, _) if m.id().seq == 2)
        );
        assert_eq!(in_flight.next_deadline(), None);
        assert!(skipped.is_empty());
        assert_eq!(in_flight.bytes(), 0);
    }

    #[test]
    fn drain_returns_what_still_waits() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::default();
        for seq in 1..=4 {
            in_flight.push(
                message(seq),
                id(seq).unwrap(),
                t0 + Duration::from_secs(seq),
            );
        }
        in_flight.expire(t0 + Duration::from_secs(2));
        assert_eq!(seqs(&in_flight.drain()), [1, 2, 3, 4]);
        assert_eq!(in_flight.waiting(), 0);
        assert_eq!(in_flight.bytes(), 0);
        assert_eq!(in_flight.next_deadline(), None);
    }
}
