//! The member set: the data nodes the cluster is made of, live or not, and
//! the majority the head node needs of them to answer `recibido`.
//!
//! - A node joins when it registers. Until recovery is done, the sets the
//!   data nodes report (kept in their `members` files) join too: a
//!   restarted head node learns the set from them. Afterwards it is the
//!   only writer of the set, and a late node's report changes nothing.
//!   A member still absent when recovery ends counts as absent from then.
//! - A node leaves only by a graceful leave (drained after `bye`), or once
//!   it has been absent for `remove_after` while a majority of the current
//!   set is live: one node at a time, so each smaller set is decided by a
//!   majority of the one before. An eviction alone removes no one: a
//!   partition or a crash keeps the node's vote.
//! - The majority is `floor(n/2) + 1` of the set. Original-system nodes
//!   (no stable name, no file to keep a set in) count as members while
//!   they are connected, and are never sent or kept in the set.
//! - At most [`MAX_MEMBERS`] members, as many as one `members` line names:
//!   a node that registers beyond them is served but is no member (it
//!   counts toward no majority), and a reported set adds none beyond them.
//!
//! No clocks: every change carries the time it happened.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use protocol::datanode::MAX_NAMES_PER_LINE;
use protocol::ids::NodeId;

/// Most members of the set: as many as one `members` line may name.
pub const MAX_MEMBERS: usize = MAX_NAMES_PER_LINE;

/// Live members against the member set: whether a majority is live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quorum {
    /// Members with a live session (original-system ones included).
    pub live: usize,
    /// Members in all.
    pub members: usize,
}

impl Quorum {
    /// Members needed live for a majority: `floor(members/2) + 1`.
    pub fn needed(&self) -> usize {
        self.members / 2 + 1
    }

    /// Whether a majority of the members is live (never for no members).
    pub fn holds(&self) -> bool {
        self.members > 0 && self.live >= self.needed()
    }
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} members live, {} needed",
            self.live,
            self.members,
            self.needed()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Live,
    /// Without a live session since then.
    AbsentSince(Instant),
}

/// The set of data nodes the cluster is made of; see the module docs.
#[derive(Debug)]
pub(crate) struct MemberSet {
    members: BTreeMap<NodeId, Presence>,
    /// How long a member must be absent before it may be removed.
    remove_after: Duration,
    /// Recovery is not done yet: reported sets join.
    learning: bool,
    /// Bumped on every change of the set (not of who is live).
    version: u64,
}

impl MemberSet {
    /// An empty set, learning from reports until [`MemberSet::learned`];
    /// an absent member may be removed after `remove_after`.
    pub(crate) fn new(remove_after: Duration) -> Self {
        MemberSet {
            members: BTreeMap::new(),
            remove_after,
            learning: true,
            version: 0,
        }
    }

    /// `node` has a live session (it joins if it was not a member and
    /// there is room).
    pub(crate) fn live(&mut self, node: &NodeId) {
        if let Some(presence) = self.members.get_mut(node) {
            *presence = Presence::Live;
        } else if self.members.len() < MAX_MEMBERS {
            self.members.insert(node.clone(), Presence::Live);
            self.version += 1;
        }
    }

    /// `node` lost its session at `now`; it stays a member.
    pub(crate) fn absent(&mut self, node: &NodeId, now: Instant) {
        if let Some(presence) = self.members.get_mut(node)
            && *presence == Presence::Live
        {
            *presence = Presence::AbsentSince(now);
        }
    }

    /// `node` left gracefully: it is no longer a member.
    pub(crate) fn left(&mut self, node: &NodeId) {
        if self.members.remove(node).is_some() {
            self.version += 1;
        }
    }

    /// A registering node reported `set`, at `now`: while recovery is not
    /// done, its members join (absent until they register).
    pub(crate) fn reported(&mut self, set: &[NodeId], now: Instant) {
        if !self.learning {
            return;
        }
        for node in set {
            if !self.members.contains_key(node) && self.members.len() < MAX_MEMBERS {
                self.members
                    .insert(node.clone(), Presence::AbsentSince(now));
                self.version += 1;
            }
        }
    }

    /// Recovery is done at `now`: from now on only registrations, leaves
    /// and removals change the set. A member absent now counts as absent
    /// from now: a node a report named may have been down, or reading its
    /// files, since before this head node started, and it is waited for
    /// the whole `remove_after` from the moment the head node could first
    /// serve without it.
    pub(crate) fn learned(&mut self, now: Instant) {
        self.learning = false;
        for presence in self.members.values_mut() {
            if let Presence::AbsentSince(since) = presence {
                *since = (*since).max(now);
            }
        }
    }

    /// Live members against the set, `legacy` original-system nodes
    /// connected besides.
    pub(crate) fn quorum(&self, legacy: usize) -> Quorum {
        let live = self
            .members
            .values()
            .filter(|p| **p == Presence::Live)
            .count();
        Quorum {
            live: live + legacy,
            members: self.members.len() + legacy,
        }
    }

    /// At `now`, removes the member absent longest if it has been absent
    /// for `remove_after` and a majority of the set is live (`legacy`
    /// original-system nodes besides); the node and how long it was absent.
    /// One at a time: the next removal is decided on the smaller set.
    pub(crate) fn remove_due(&mut self, now: Instant, legacy: usize) -> Option<(NodeId, Duration)> {
        if self.learning || !self.quorum(legacy).holds() {
            return None;
        }
        let (node, since) = self
            .members
            .iter()
            .filter_map(|(node, presence)| match presence {
                Presence::AbsentSince(since) => Some((node, *since)),
                Presence::Live => None,
            })
            .min_by_key(|(_, since)| *since)?;
        let absent_for = now.saturating_duration_since(since);
        if absent_for < self.remove_after {
            return None;
        }
        let node = node.clone();
        self.members.remove(&node);
        self.version += 1;
        Some((node, absent_for))
    }

    /// The members, in node order.
    pub(crate) fn names(&self) -> Vec<NodeId> {
        self.members.keys().cloned().collect()
    }

    /// Whether `node` is a member.
    #[cfg(test)]
    pub(crate) fn contains(&self, node: &NodeId) -> bool {
        self.members.contains_key(node)
    }

    /// Changes so far: differs after every change of the set.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests;
