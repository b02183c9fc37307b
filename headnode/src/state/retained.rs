//! What the data nodes' retention removed, as far as repair must know it.
//!
//! A data node answers `notfound <req> removed` only for an id its
//! retention removed, and repair then leaves that message alone: it never
//! brings back what retention removed. But a node that is down cannot
//! answer. So each node tells the head node the ranges of ids its
//! retention removed (`removed` lines: all of them in its report after
//! `welcome`, and those of each later removal after its next `pong`), and
//! [`Retained`] keeps them per node, for as long as the head node runs
//! (nothing is persisted: each registration tells them again). A message
//! with too few copies whose id lies in the ranges of a node that cannot
//! answer now (down, or no longer a member) may have been removed there:
//! repair leaves it at the copies it has.
//!
//! The ranges cover every id the node removed, and may cover ids it never
//! held (a range runs from a segment's lowest id of an epoch to its
//! highest, and one range per epoch covers all of them): what they cover
//! is never copied back while the node cannot say. That errs toward
//! leaving a message at fewer copies, never toward bringing one back.
//!
//! Bounds: [`MAX_NODES`] nodes, [`MAX_RANGES`] ranges per node (one per
//! epoch; beyond them the lowest ranges fold into a floor below which every
//! id counts as possibly removed). A node beyond [`MAX_NODES`] is not
//! remembered (its removals are then not known when it is down).

use std::collections::HashMap;

use protocol::datanode::IdRange;
use protocol::ids::{MessageId, NodeId};

/// Nodes whose removed ranges are kept, at most.
pub(crate) const MAX_NODES: usize = 4096;
/// Ranges kept per node, at most (one per epoch).
pub(crate) const MAX_RANGES: usize = 1024;

/// What one node's retention removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NodeRemoved {
    /// Sorted, one per epoch.
    ranges: Vec<IdRange>,
    /// Every id up to this one may have been removed (ranges folded past
    /// [`MAX_RANGES`]).
    floor: Option<MessageId>,
}

impl NodeRemoved {
    fn add(&mut self, range: IdRange) {
        if self.floor.is_some_and(|floor| range.last <= floor) {
            return;
        }
        IdRange::merge_into(&mut self.ranges, range);
        while self.ranges.len() > MAX_RANGES {
            let lowest = self.ranges.remove(0);
            self.floor = Some(self.floor.map_or(lowest.last, |f| f.max(lowest.last)));
        }
    }

    fn covers(&self, id: MessageId) -> bool {
        self.floor.is_some_and(|floor| id <= floor)
            || self
                .ranges
                .binary_search_by_key(&id.epoch, |r| r.first.epoch)
                .is_ok_and(|at| self.ranges[at].contains(id))
    }
}

/// The removed ranges each node reported; see the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Retained {
    nodes: HashMap<NodeId, NodeRemoved>,
}

impl Retained {
    /// `node` reported `ranges`: the whole of what it removed when `whole`
    /// (its report after `welcome`: what was known of it before is
    /// replaced, so a node back with a new data directory removed
    /// nothing), else what it removed since.
    pub(crate) fn note(&mut self, node: &NodeId, ranges: &[IdRange], whole: bool) {
        if whole && ranges.is_empty() {
            self.nodes.remove(node);
            return;
        }
        if !self.nodes.contains_key(node) && self.nodes.len() >= MAX_NODES {
            return;
        }
        let removed = self.nodes.entry(node.clone()).or_default();
        if whole {
            *removed = NodeRemoved::default();
        }
        for range in ranges {
            removed.add(*range);
        }
    }

    /// A node other than those in `answering` whose retention may have
    /// removed `id`, if there is one: such a node cannot say whether it
    /// did, so the message must not be copied back.
    pub(crate) fn removed_elsewhere<'a>(
        &'a self,
        id: MessageId,
        answering: &[NodeId],
    ) -> Option<&'a NodeId> {
        self.nodes
            .iter()
            .filter(|(node, _)| !answering.contains(node))
            .find(|(_, removed)| removed.covers(id))
            .map(|(node, _)| node)
    }

    /// Nodes with removed ranges kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u64, seq: u64) -> MessageId {
        MessageId { epoch, seq }
    }

    fn range(epoch: u64, first: u64, last: u64) -> IdRange {
        IdRange::new(id(epoch, first), id(epoch, last)).unwrap()
    }

    fn node(name: &str) -> NodeId {
        name.parse().unwrap()
    }

    #[test]
    fn a_node_that_cannot_answer_keeps_what_it_removed_from_being_copied() {
        let mut retained = Retained::default();
        retained.note(&node("dn1"), &[range(4, 1, 100)], true);
        retained.note(&node("dn1"), &[range(4, 101, 200), range(5, 1, 10)], false);
        for at in [id(4, 1), id(4, 150), id(5, 10)] {
            assert_eq!(retained.removed_elsewhere(at, &[]), Some(&node("dn1")));
            assert_eq!(
                retained.removed_elsewhere(at, &[node("dn1")]),
                None,
                "it answers"
            );
        }
        for beyond in [id(4, 201), id(5, 11), id(3, 50), id(6, 1)] {
            assert_eq!(retained.removed_elsewhere(beyond, &[]), None);
        }
    }

    #[test]
    fn a_report_replaces_what_was_known_of_the_node() {
        let mut retained = Retained::default();
        retained.note(&node("dn1"), &[range(4, 1, 100)], true);
        // Back with a new data directory: it removed nothing.
        retained.note(&node("dn1"), &[], true);
        assert_eq!(retained.removed_elsewhere(id(4, 50), &[]), None);
        assert_eq!(retained.len(), 0);
        retained.note(&node("dn1"), &[range(4, 1, 10)], false);
        retained.note(&node("dn1"), &[range(7, 1, 10)], true);
        assert_eq!(retained.removed_elsewhere(id(4, 5), &[]), None);
        assert!(retained.removed_elsewhere(id(7, 5), &[]).is_some());
    }

    #[test]
    fn ranges_beyond_the_bound_fold_into_a_floor_that_covers_more_never_less() {
        let mut retained = Retained::default();
        let ranges: Vec<IdRange> = (1..=MAX_RANGES as u64 + 10)
            .map(|epoch| range(epoch, 5, 9))
            .collect();
        retained.note(&node("dn1"), &ranges, true);
        let kept = &retained.nodes[&node("dn1")];
        assert_eq!(kept.ranges.len(), MAX_RANGES);
        for r in &ranges {
            assert!(kept.covers(r.first) && kept.covers(r.last), "{r}");
        }
        assert!(
            kept.covers(id(3, 1)),
            "below the floor: may have been removed"
        );
    }

    #[test]
    fn nodes_beyond_the_bound_are_not_remembered() {
        let mut retained = Retained::default();
        for n in 0..MAX_NODES + 5 {
            retained.note(&node(&format!("dn{n}")), &[range(1, 1, 2)], true);
        }
        assert_eq!(retained.len(), MAX_NODES);
    }
}
