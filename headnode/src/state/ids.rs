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
//! Until it has welcomed a data node, a head node has learned no epoch and
//! gives no id ([`IdGenerator::learned`]): an id given then, under the
//! epoch it started from, could be one an earlier head node gave to
//! another message (a message waiting for a first data node was written,
//! once nodes came, under such an id beside that message).
//!
//! Going above an epoch restarts the sequence at 1: ids keep their
//! order, epoch first. The epoch and the sequence number change together,
//! under one lock, so no id of the older epoch is given after one of the
//! newer.

use std::sync::{Mutex, MutexGuard};

use protocol::ids::MessageId;

/// The epoch a head node starts from, before any data node reports one.
pub(crate) const FIRST_EPOCH: u64 = 1;

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
    /// A data node has been welcomed: the epoch is above what the cluster
    /// reported.
    learned: bool,
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
                learned: false,
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
    /// only, for the tail's watermark), and the first epoch this run gave
    /// ids under (the epoch now if none yet).
    pub fn peek(&self) -> Peek {
        let state = self.state();
        Peek {
            epoch: state.epoch,
            next_seq: state.next,
            first_used: state.first_used.unwrap_or(state.epoch),
        }
    }

    /// Whether a data node has been welcomed, so this head node's epoch is
    /// above the ones its data nodes reported: ids may be given only then.
    pub fn learned(&self) -> bool {
        self.state().learned
    }

    /// An original-system data node was welcomed: it reports no epoch, so
    /// there is none to learn; ids may be given from now on.
    pub fn welcomed_without_epoch(&self) {
        self.state().learned = true;
    }

    /// The next id; for after [`IdGenerator::learned`].
    pub fn next_id(&self) -> MessageId {
        let mut state = self.state();
        let id = MessageId {
            epoch: state.epoch,
            seq: state.next,
        };
        state.next += 1;
        state.claimed = true;
        state.first_used.get_or_insert(id.epoch);
        id
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
        state.learned = true;
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

    #[test]
    fn ids_may_be_given_only_once_a_data_node_is_welcomed() {
        let ids = IdGenerator::starting_at(FIRST_EPOCH);
        assert!(!ids.learned(), "no epoch learned before a welcome");
        assert_eq!(ids.welcome_epoch(7), 8);
        assert!(ids.learned());
        assert_eq!(ids.next_id().epoch, 8, "above the reported epoch");
    }
}
