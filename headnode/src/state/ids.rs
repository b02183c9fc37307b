//! Message ids, unique across the cluster's life, and the head node's
//! epoch: a counter, never a clock.
//!
//! An id is `<epoch>-<seq>`. The head node keeps nothing on disk, so it
//! learns the epochs in use from its data nodes: each one's hello names the
//! newest epoch it has accepted, and the head node takes an epoch above it
//! before it welcomes the node ([`IdGenerator::welcome_epoch`]). Every id
//! it gives is then newer than any id an earlier head node gave those
//! nodes, whatever the clocks say. A node that refuses the welcome (its
//! epoch belongs to another head node) names its newest epoch, and the
//! head node goes above that too ([`IdGenerator::raise_above`]); the node
//! tries again.
//!
//! Going above an epoch restarts the sequence at 1: ids keep their
//! order, epoch first. The epoch and the sequence number change together,
//! under one lock, so no id of the older epoch is given after one of the
//! newer.
//!
//! It also knows which of the ids it gave are still *unsettled*: given to
//! a message that has not ended yet (written where it will be written, or
//! failed). A message holds a [`Ticket`] for its id and lets go of it when
//! it ends; [`IdGenerator::peek`] names the lowest id still unsettled, the
//! floor below which a tail may print everything (see `tail`). Giving an
//! id and settling it cost O(1) each (a bit in a ring, under the lock the
//! id is taken under anyway).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use protocol::ids::MessageId;

/// The epoch a head node starts from, before any data node reports one.
pub(crate) const FIRST_EPOCH: u64 = 1;

/// Ids tracked one by one from the lowest unsettled one: one bit each, so
/// at most 2 MiB. Ids given beyond this span while the lowest is still
/// unsettled are counted together instead (see [`Unsettled`]): the floor
/// then stays at the first of them until every one of them has settled.
pub(crate) const UNSETTLED_SPAN: u64 = 1 << 24;

/// Epochs the unsettled ids may span, remembered at most; an id under an
/// epoch beyond them is named by the last one remembered, which puts the
/// floor lower than it is, never higher.
pub(crate) const UNSETTLED_EPOCHS: usize = 64;

/// Hands out message ids; see the module documentation.
#[derive(Debug)]
pub struct IdGenerator {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    epoch: u64,
    next: u64,
    /// Some data node was welcomed at `epoch`, or given an id under it
    /// (which takes its fence there): a node that reports it again most
    /// likely holds this head node's own fence.
    claimed: bool,
    /// The first epoch this run gave ids under, once it has given one.
    first_used: Option<u64>,
    /// The ids given and not yet settled.
    unsettled: Unsettled,
}

impl IdGenerator {
    /// Ids of a head node that starts at `epoch` (at least 1) and goes
    /// above what its data nodes report.
    pub fn starting_at(epoch: u64) -> Self {
        IdGenerator {
            state: Mutex::new(State {
                epoch: epoch.max(FIRST_EPOCH),
                next: 1,
                claimed: false,
                first_used: None,
                unsettled: Unsettled::default(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under this lock leaves it consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch ids are given under now.
    pub fn epoch(&self) -> u64 {
        self.state().epoch
    }

    /// The epoch now and the sequence number the next id will get (a read
    /// only, for the tail's floor), the first epoch this run gave ids
    /// under (the epoch now if none yet), and the lowest id given and not
    /// yet settled.
    pub fn peek(&self) -> Peek {
        let mut state = self.state();
        let lowest_unsettled = state.unsettled.lowest();
        Peek {
            epoch: state.epoch,
            next_seq: state.next,
            first_used: state.first_used.unwrap_or(state.epoch),
            lowest_unsettled,
        }
    }

    /// Every id below this one has settled: the lowest id given and not
    /// yet settled, or the next id to be given when there is none.
    pub fn floor(&self) -> MessageId {
        let peek = self.peek();
        peek.lowest_unsettled.unwrap_or(MessageId {
            epoch: peek.epoch,
            seq: peek.next_seq,
        })
    }

    /// The next id, settled at once: for what needs an id but is no
    /// message on its way (tests, tools).
    pub fn next_id(&self) -> MessageId {
        self.take(false).0
    }

    /// The next id, unsettled until the returned ticket is dropped: the
    /// message it is given to holds the ticket until it ends.
    pub fn next_ticket(self: &Arc<Self>) -> Ticket {
        let (id, ticket) = self.take(true);
        Ticket {
            id,
            ticket,
            ids: self.clone(),
        }
    }

    fn take(&self, track: bool) -> (MessageId, Option<TicketNo>) {
        let mut state = self.state();
        let id = MessageId {
            epoch: state.epoch,
            seq: state.next,
        };
        state.next += 1;
        state.claimed = true;
        state.first_used.get_or_insert(id.epoch);
        let ticket = track.then(|| state.unsettled.give(id));
        (id, ticket)
    }

    /// The epoch to welcome a data node with, whose newest accepted epoch
    /// is `reported`: above it if it is newer than this head node's, or
    /// equal before this head node has claimed its epoch (welcomed a node
    /// or given an id under it: the epoch can then only be another head
    /// node's). An equal one afterwards is most likely this head node's own
    /// (a node reconnecting): going above it on every reconnection would
    /// change the epoch again and again, so it is welcomed as it is, and a
    /// node that holds another head node's refuses it
    /// ([`IdGenerator::raise_above`]).
    pub fn welcome_epoch(&self, reported: u64) -> u64 {
        let mut state = self.state();
        if reported > state.epoch || (reported == state.epoch && !state.claimed) {
            Self::go_above(&mut state, reported);
        }
        state.claimed = true;
        state.epoch
    }

    /// A data node refused this head node, naming `newest` as the newest
    /// epoch it has accepted: the next welcome goes above it. True if the
    /// epoch changed.
    pub fn raise_above(&self, newest: u64) -> bool {
        let mut state = self.state();
        if newest < state.epoch {
            return false;
        }
        Self::go_above(&mut state, newest);
        true
    }

    fn go_above(state: &mut State, epoch: u64) {
        state.epoch = epoch.saturating_add(1);
        state.next = 1;
        state.claimed = false;
    }
}

/// What [`IdGenerator::peek`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    /// The epoch ids are given under now.
    pub epoch: u64,
    /// The sequence number the next id gets.
    pub next_seq: u64,
    /// The first epoch this run gave ids under.
    pub first_used: u64,
    /// The lowest id given to a message that has not ended yet (or a
    /// lower one, see [`UNSETTLED_EPOCHS`]); `None`: every id given has
    /// settled.
    pub lowest_unsettled: Option<MessageId>,
}

/// An id given to a message, unsettled until this is dropped (when the
/// message ends: written where it will be written, or failed).
pub struct Ticket {
    id: MessageId,
    ticket: Option<TicketNo>,
    ids: Arc<IdGenerator>,
}

impl Ticket {
    /// The id.
    pub fn id(&self) -> MessageId {
        self.id
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.ids.state().unsettled.settle(ticket);
        }
    }
}

/// Where a ticket is kept: its number, and whether it was given past
/// [`UNSETTLED_SPAN`] (counted, not tracked one by one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TicketNo {
    no: u64,
    counted: bool,
}

/// The ids given and not yet settled.
///
/// Tickets are numbered in the order ids are given, which is id order.
/// One bit per ticket from `base` (set while unsettled), in words that
/// are dropped from the front once wholly settled, so the lowest
/// unsettled ticket is in the front word. While the span from `base` to
/// the next ticket reaches [`UNSETTLED_SPAN`], new tickets are only
/// counted (`counted_from`, `counted_open`): the floor stays at the first
/// of them until all have settled. `epochs` names the id of each ticket:
/// where each epoch's tickets begin.
#[derive(Default)]
struct Unsettled {
    /// The ticket of bit 0 of `words[0]`.
    base: u64,
    words: VecDeque<u64>,
    /// The next ticket's number.
    next: u64,
    /// The first counted ticket, while any counted one is unsettled.
    counted_from: Option<u64>,
    /// Counted tickets not yet settled.
    counted_open: u64,
    /// `(first ticket, its id)` of each epoch tickets were given under,
    /// oldest first, at most [`UNSETTLED_EPOCHS`].
    epochs: VecDeque<(u64, MessageId)>,
}

impl std::fmt::Debug for Unsettled {
    /// A summary: the words themselves may be 2 MiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsettled")
            .field("base", &self.base)
            .field("next", &self.next)
            .field("words", &self.words.len())
            .field("counted_from", &self.counted_from)
            .field("counted_open", &self.counted_open)
            .field("epochs", &self.epochs.len())
            .finish()
    }
}

impl Unsettled {
    /// A ticket for `id`, the next id given (greater than every earlier one).
    fn give(&mut self, id: MessageId) -> TicketNo {
        let no = self.next;
        if self
            .epochs
            .back()
            .is_none_or(|(_, first)| first.epoch != id.epoch)
        {
            // Rare (an epoch change): room for it first.
            self.trim_epochs();
            if self.epochs.len() < UNSETTLED_EPOCHS {
                self.epochs.push_back((no, id));
            }
        }
        self.next += 1;
        if self.counted_from.is_none() && no - self.base >= UNSETTLED_SPAN {
            self.counted_from = Some(no);
        }
        if self.counted_from.is_some() {
            self.counted_open += 1;
            return TicketNo { no, counted: true };
        }
        let at = no - self.base;
        let word = (at / 64) as usize;
        if word == self.words.len() {
            self.words.push_back(0);
        }
        self.words[word] |= 1 << (at % 64);
        TicketNo { no, counted: false }
    }

    /// The message of `ticket` ended.
    fn settle(&mut self, ticket: TicketNo) {
        if ticket.counted {
            self.counted_open = self.counted_open.saturating_sub(1);
        } else if let Some(at) = ticket.no.checked_sub(self.base)
            && let Some(word) = self.words.get_mut((at / 64) as usize)
        {
            *word &= !(1 << (at % 64));
        }
        // Drop wholly settled words from the front (the last one only once
        // every ticket it can hold has been given).
        while self.words.front() == Some(&0) && self.base + 64 <= self.next {
            self.words.pop_front();
            self.base += 64;
        }
        if self.words.is_empty() && self.counted_open == 0 && self.counted_from.is_some() {
            // Every counted ticket settled too: track one by one again.
            self.counted_from = None;
            self.base = self.next;
        }
    }

    /// The lowest ticket not yet settled.
    fn lowest_ticket(&self) -> Option<u64> {
        let in_words = self
            .words
            .iter()
            .position(|&w| w != 0)
            .map(|i| self.base + i as u64 * 64 + u64::from(self.words[i].trailing_zeros()));
        in_words.or(self.counted_from.filter(|_| self.counted_open > 0))
    }

    /// Forgets the epochs wholly below the lowest unsettled ticket (all of
    /// them when none is unsettled); that ticket, if any.
    fn trim_epochs(&mut self) -> Option<u64> {
        let Some(lowest) = self.lowest_ticket() else {
            self.epochs.clear();
            return None;
        };
        while self
            .epochs
            .get(1)
            .is_some_and(|(first, _)| *first <= lowest)
        {
            self.epochs.pop_front();
        }
        Some(lowest)
    }

    /// The id of the lowest ticket not yet settled (see
    /// [`UNSETTLED_EPOCHS`] for when it is a lower one).
    fn lowest(&mut self) -> Option<MessageId> {
        let lowest = self.trim_epochs()?;
        let (first, id) = *self.epochs.front()?;
        Some(MessageId {
            epoch: id.epoch,
            seq: id.seq + (lowest - first),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_carry_the_epoch() {
        let ids = IdGenerator::starting_at(42);
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_eq!((a.epoch, a.seq, b.seq), (42, 1, 2));
    }

    #[test]
    fn a_fresh_cluster_is_welcomed_at_the_first_epoch() {
        let ids = IdGenerator::starting_at(0);
        assert_eq!(ids.welcome_epoch(0), FIRST_EPOCH);
        assert_eq!(ids.welcome_epoch(0), FIRST_EPOCH);
    }

    #[test]
    fn a_restarted_head_node_goes_above_every_epoch_reported_before_it_welcomes() {
        let ids = IdGenerator::starting_at(FIRST_EPOCH);
        // The previous head node ran at epoch 1: its nodes report it.
        assert_eq!(ids.welcome_epoch(1), 2);
        assert_eq!(ids.welcome_epoch(1), 2);
        // A node that had accepted a later head node.
        assert_eq!(ids.welcome_epoch(7), 8);
        assert_eq!(ids.welcome_epoch(2), 8);
        let id = ids.next_id();
        assert_eq!((id.epoch, id.seq), (8, 1));
    }

    #[test]
    fn a_clock_based_epoch_of_an_older_version_is_gone_above_too() {
        let ids = IdGenerator::starting_at(FIRST_EPOCH);
        let year_ahead = 1_828_212_451_811;
        assert_eq!(ids.welcome_epoch(year_ahead), year_ahead + 1);
    }

    #[test]
    fn a_node_reconnecting_with_this_head_nodes_epoch_does_not_move_it() {
        let ids = IdGenerator::starting_at(FIRST_EPOCH);
        assert_eq!(ids.welcome_epoch(4), 5);
        ids.next_id();
        assert_eq!(ids.welcome_epoch(5), 5, "its own epoch, reported back");
        assert_eq!(ids.next_id().seq, 2, "ids go on");
    }

    #[test]
    fn a_refusal_naming_the_epoch_takes_the_next_welcome_above_it() {
        let ids = IdGenerator::starting_at(FIRST_EPOCH);
        assert_eq!(ids.welcome_epoch(4), 5);
        // A node that holds epoch 5 of another head node refuses.
        assert!(ids.raise_above(5));
        assert_eq!(ids.welcome_epoch(5), 6);
        assert!(!ids.raise_above(3), "an older epoch changes nothing");
        assert_eq!(ids.epoch(), 6);
    }

    #[test]
    fn going_above_restarts_the_sequence_and_keeps_the_order() {
        let ids = IdGenerator::starting_at(3);
        let before = ids.next_id();
        ids.next_id();
        ids.raise_above(3);
        let after = ids.next_id();
        assert_eq!((after.epoch, after.seq), (4, 1));
        assert!(after > before);
        let peek = ids.peek();
        assert_eq!((peek.epoch, peek.next_seq, peek.first_used), (4, 2, 3));
    }

    fn id(epoch: u64, seq: u64) -> MessageId {
        MessageId { epoch, seq }
    }

    #[test]
    fn the_floor_is_the_lowest_id_still_unsettled() {
        let ids = Arc::new(IdGenerator::starting_at(7));
        assert_eq!(ids.floor(), id(7, 1), "nothing given: the next id");
        let a = ids.next_ticket();
        let b = ids.next_ticket();
        let c = ids.next_ticket();
        assert_eq!((a.id(), c.id()), (id(7, 1), id(7, 3)));
        assert_eq!(ids.floor(), id(7, 1));
        drop(b);
        assert_eq!(ids.floor(), id(7, 1), "a slow first message holds it");
        drop(a);
        assert_eq!(ids.floor(), id(7, 3));
        drop(c);
        assert_eq!(ids.floor(), id(7, 4), "all settled: the next id");
        assert_eq!(ids.peek().lowest_unsettled, None);
        // An id given settled at once holds nothing back.
        ids.next_id();
        assert_eq!(ids.floor(), id(7, 5));
    }

    #[test]
    fn the_floor_follows_ids_across_an_epoch_change() {
        let ids = Arc::new(IdGenerator::starting_at(3));
        let old = ids.next_ticket();
        ids.raise_above(5);
        let new = ids.next_ticket();
        assert_eq!(new.id(), id(6, 1));
        assert_eq!(ids.floor(), id(3, 1));
        drop(old);
        assert_eq!(ids.floor(), id(6, 1));
        drop(new);
        assert_eq!(ids.floor(), id(6, 2));
    }

    #[test]
    fn a_slow_message_holds_the_floor_over_many_words_and_past_the_span() {
        let mut unsettled = Unsettled::default();
        let slow = unsettled.give(id(1, 1));
        for seq in 2..=1_000 {
            let t = unsettled.give(id(1, seq));
            unsettled.settle(t);
        }
        assert_eq!(unsettled.lowest(), Some(id(1, 1)));
        assert_eq!(unsettled.words.len(), 16, "one bit each");
        unsettled.settle(slow);
        assert_eq!(unsettled.lowest(), None);
        assert!(unsettled.words.len() <= 1, "settled words are dropped");

        // Past the span, tickets are counted: the floor waits for them all.
        let mut unsettled = Unsettled {
            base: 0,
            next: UNSETTLED_SPAN - 1,
            ..Unsettled::default()
        };
        unsettled.words = vec![0; (UNSETTLED_SPAN / 64) as usize].into();
        let first_seq = UNSETTLED_SPAN;
        unsettled
            .epochs
            .push_back((UNSETTLED_SPAN - 1, id(2, first_seq)));
        let last_tracked = unsettled.give(id(2, first_seq));
        unsettled.words[0] = 1;
        let counted: Vec<TicketNo> = (1..=3)
            .map(|i| unsettled.give(id(2, first_seq + i)))
            .collect();
        assert!(counted.iter().all(|t| t.counted));
        unsettled.settle(TicketNo {
            no: 0,
            counted: false,
        });
        unsettled.settle(last_tracked);
        assert_eq!(
            unsettled.lowest(),
            Some(id(2, first_seq + 1)),
            "the first counted one"
        );
        unsettled.settle(counted[2]);
        unsettled.settle(counted[0]);
        assert_eq!(unsettled.lowest(), Some(id(2, first_seq + 1)));
        unsettled.settle(counted[1]);
        assert_eq!(unsettled.lowest(), None);
        assert!(unsettled.words.is_empty());
        let again = unsettled.give(id(2, first_seq + 4));
        assert!(!again.counted, "tracked one by one again");
        assert_eq!(unsettled.lowest(), Some(id(2, first_seq + 4)));
    }
}
