//! The messages one data node holds, oldest first.
//!
//! A data node acknowledges in the order it was sent messages, so a FIFO is
//! enough: an ack matches the front. A message whose ack timed out is handed
//! back for resending but leaves a *tombstone* in its place: the node still
//! has it and will acknowledge it in turn. That late ack answers the client
//! if no other node has stored it yet (the first acknowledgement of any
//! attempt wins); otherwise the message is now stored twice.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use crate::forward::{Envelope, Forward};

struct Entry {
    seq: u64,
    deadline: Instant,
    message: Forward,
    /// Handed back for resending after a timeout: a tombstone.
    resent: bool,
}

/// What an acknowledgement matched.
pub(crate) enum Acked {
    /// The message, now stored.
    Message(Forward),
    /// A message already resent after a timeout: this node stored it after
    /// all. The envelope answers its client if no other node has yet.
    Late(Arc<Envelope>),
    /// Nothing this node holds.
    Unknown,
}

#[derive(Default)]
pub(crate) struct InFlight {
    entries: VecDeque<Entry>,
    /// Leading entries whose deadline has already been handled.
    expired: usize,
    /// Entries still holding their message (not tombstones).
    waiting: usize,
    /// Bytes of text of every entry, tombstones included: the node may
    /// still be writing all of them.
    bytes: usize,
}

impl InFlight {
    /// Messages sent and not yet acknowledged nor handed back.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Bytes of text sent to the node and not yet acknowledged.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn push(&mut self, message: Forward, deadline: Instant) {
        self.bytes += message.envelope.text.len();
        self.entries.push_back(Entry {
            seq: message.id().seq,
            deadline,
            message,
            resent: false,
        });
        self.waiting += 1;
    }

    /// Matches the acknowledgement of `seq` (or, for an original-system node
    /// that names no id, of the oldest message). Entries older than `seq`
    /// that still wait will never be acknowledged: they are returned in
    /// `skipped` to be resent.
    pub(crate) fn ack(&mut self, seq: Option<u64>, skipped: &mut Vec<Forward>) -> Acked {
        let seq = match seq {
            Some(seq) => seq,
            None => match self.entries.front() {
                Some(front) => front.seq,
                None => return Acked::Unknown,
            },
        };
        while self.entries.front().is_some_and(|front| front.seq < seq) {
            if let Some(message) = self.pop_front() {
                skipped.push(message);
            }
        }
        if self.entries.front().is_none_or(|front| front.seq != seq) {
            return Acked::Unknown;
        }
        let resent = self.entries.front().is_some_and(|front| front.resent);
        if resent {
            let entry = self.entries.pop_front().expect("checked above");
            self.expired = self.expired.saturating_sub(1);
            self.bytes -= entry.message.envelope.text.len();
            return Acked::Late(entry.message.envelope);
        }
        match self.pop_front() {
            Some(message) => Acked::Message(message),
            None => Acked::Unknown,
        }
    }

    /// When the oldest message not yet timed out times out.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.entries.get(self.expired).map(|entry| entry.deadline)
    }

    /// Hands back every message whose deadline is past, leaving tombstones.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Forward> {
        let mut expired = Vec::new();
        while let Some(entry) = self.entries.get_mut(self.expired) {
            if entry.deadline > now {
                break;
            }
            if !entry.resent {
                entry.resent = true;
                self.waiting -= 1;
                expired.push(Forward {
                    envelope: entry.message.envelope.clone(),
                    attempts: entry.message.attempts,
                });
            }
            self.expired += 1;
        }
        expired
    }

    /// Everything still waiting, oldest first; tombstones are dropped.
    pub(crate) fn drain(&mut self) -> Vec<Forward> {
        self.expired = 0;
        self.waiting = 0;
        self.bytes = 0;
        self.entries
            .drain(..)
            .filter(|entry| !entry.resent)
            .map(|entry| entry.message)
            .collect()
    }

    /// Removes the front entry; its message if it was not a tombstone.
    fn pop_front(&mut self) -> Option<Forward> {
        let entry = self.entries.pop_front()?;
        self.expired = self.expired.saturating_sub(1);
        self.bytes -= entry.message.envelope.text.len();
        if entry.resent {
            return None;
        }
        self.waiting -= 1;
        Some(entry.message)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::forward::tests::envelope;

    fn message(seq: u64) -> Forward {
        let (envelope, _) = envelope(seq);
        Forward {
            envelope,
            attempts: 1,
        }
    }

    fn seqs(messages: &[Forward]) -> Vec<u64> {
        messages.iter().map(|m| m.id().seq).collect()
    }

    #[test]
    fn acks_in_order_match_the_front() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::default();
        for seq in 1..=3 {
            in_flight.push(message(seq), t0);
        }
        assert_eq!(in_flight.bytes(), 3 * 16);
        let mut skipped = Vec::new();
        assert!(
            matches!(in_flight.ack(Some(1), &mut skipped), Acked::Message(m) if m.id().seq == 1)
        );
        assert!(matches!(in_flight.ack(None, &mut skipped), Acked::Message(m) if m.id().seq == 2));
        assert_eq!(in_flight.waiting(), 1);
        assert!(matches!(
            in_flight.ack(Some(9), &mut skipped),
            Acked::Unknown
        ));
        assert_eq!(
            seqs(&skipped),
            [3],
            "an ack past a message means that one was lost"
        );
        assert_eq!(in_flight.waiting(), 0);
        assert_eq!(in_flight.bytes(), 0);
    }

    #[test]
    fn timed_out_messages_leave_tombstones_whose_late_ack_still_counts() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut in_flight = InFlight::default();
        in_flight.push(message(1), t0 + second);
        in_flight.push(message(2), t0 + 2 * second);
        assert_eq!(in_flight.next_deadline(), Some(t0 + second));
        assert!(in_flight.expire(t0).is_empty());
        let resent = in_flight.expire(t0 + second);
        assert_eq!(seqs(&resent), [1]);
        assert_eq!(in_flight.next_deadline(), Some(t0 + 2 * second));
        assert_eq!(in_flight.waiting(), 1);
        assert_eq!(
            in_flight.bytes(),
            2 * 16,
            "the node may still write the resent one"
        );

        let mut skipped = Vec::new();
        let Acked::Late(late) = in_flight.ack(Some(1), &mut skipped) else {
            panic!("expected a late acknowledgement");
        };
        assert!(
            Arc::ptr_eq(&late, &resent[0].envelope),
            "the late ack reaches the same message as its resend"
        );
        assert_eq!(in_flight.next_deadline(), Some(t0 + 2 * second));
        assert!(
            matches!(in_flight.ack(Some(2), &mut skipped), Acked::Message(m) if m.id().seq == 2)
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
            in_flight.push(message(seq), t0 + Duration::from_secs(seq));
        }
        in_flight.expire(t0 + Duration::from_secs(2));
        assert_eq!(seqs(&in_flight.drain()), [3, 4]);
        assert_eq!(in_flight.waiting(), 0);
        assert_eq!(in_flight.bytes(), 0);
        assert_eq!(in_flight.next_deadline(), None);
    }
}
