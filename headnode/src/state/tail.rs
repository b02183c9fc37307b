//! Every stored message once, in id order: a k-way merge of the live data
//! nodes' scans, and the watermark that keeps it from skipping a message
//! still on its way.
//!
//! Each node's scan returns its ids sorted. [`Merge`] emits the smallest
//! id at the front of the nodes' pages only when no node still owes a page
//! (a node whose page ran out and that has more is scanned again first),
//! so no id is skipped; an id at the front of several pages is emitted
//! once, with those nodes as its holders. A node whose read fails leaves
//! the merge (its messages have copies elsewhere); a node that joins is
//! included by the next request, which scans every live node from the
//! request's cursor.
//!
//! Ids are assigned before writes complete, so a message with a smaller id
//! can become visible after a greater one. [`Watermark`] holds back any
//! record that such a message could still precede; see its doc. Which
//! members a merge could not hear from, and whether the others still
//! prove it whole, is [`Coverage`](crate::state::reads::Coverage)'s.

use std::collections::VecDeque;

use protocol::datanode::ReadRecord;
use protocol::ids::{MessageId, NodeId};

use crate::state::reads::{ReadFailed, ScanPage};

/// Which records may be emitted now without risking a gap: those below
/// the *floor*, the lowest id this head node has given to a message that
/// has not ended yet (written where it will be written, or failed), or
/// the next id it will give when every message has ended (see
/// [`IdGenerator::floor`](crate::IdGenerator::floor)).
///
/// Every id below the floor has ended, so no record with a smaller id can
/// still appear, however slow a write or wrong a clock: no clock is read.
/// A slow write holds back the records above it until it ends (its ack
/// timeout, then the failure detector, bound that). Ids of earlier head
/// nodes are all below the floor: they were written before this head
/// node's readers were let in (readers wait for recovery, when the member
/// set has reported), and a member that has not reported, or fails its
/// part of a read, is [`Coverage`](crate::state::reads::Coverage)'s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watermark {
    /// Every id below this has ended.
    pub(crate) floor: MessageId,
}

impl Watermark {
    /// Whether `record` may be emitted.
    pub(crate) fn allows(&self, record: &ReadRecord) -> bool {
        record.id < self.floor
    }
}

struct Cursor {
    node: NodeId,
    page: VecDeque<ReadRecord>,
    /// Scan from after this id next.
    after: Option<MessageId>,
    /// The node said it holds no greater id (for now).
    done: bool,
    /// A read failed: out of this merge.
    failed: bool,
}

/// What the merge needs or gives next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Scan these nodes (indices into the merge's nodes) from
    /// [`Merge::scan_from`], and hand the pages to [`Merge::page`].
    Refill(Vec<usize>),
    /// The next record in id order, and the nodes that hold it.
    Next(ReadRecord, Vec<NodeId>),
    /// Nothing more now: every node is done, or the next record is held
    /// back by the watermark.
    Done,
}

/// A k-way merge of the nodes' scans, from after one id.
pub(crate) struct Merge {
    cursors: Vec<Cursor>,
    /// The greatest id emitted.
    last: Option<MessageId>,
}

impl Merge {
    /// A merge over `nodes`, of ids greater than `after`.
    pub(crate) fn new(nodes: Vec<NodeId>, after: Option<MessageId>) -> Self {
        Merge {
            cursors: nodes
                .into_iter()
                .map(|node| Cursor {
                    node,
                    page: VecDeque::new(),
                    after,
                    done: false,
                    failed: false,
                })
                .collect(),
            last: after,
        }
    }

    /// The node at `i`.
    pub(crate) fn node(&self, i: usize) -> &NodeId {
        &self.cursors[i].node
    }

    /// Where the node at `i` is to be scanned from.
    pub(crate) fn scan_from(&self, i: usize) -> Option<MessageId> {
        self.cursors[i].after
    }

    /// Nodes still in the merge.
    pub(crate) fn live(&self) -> usize {
        self.cursors.iter().filter(|c| !c.failed).count()
    }

    /// Whether every node still in the merge has sent all it holds, and
    /// all of it was emitted (nothing held back by the watermark).
    pub(crate) fn exhausted(&self) -> bool {
        self.cursors
            .iter()
            .all(|c| c.failed || (c.done && c.page.is_empty()))
    }

    /// The greatest id emitted (or the starting point).
    pub(crate) fn last(&self) -> Option<MessageId> {
        self.last
    }

    /// The answer to a scan of the node at `i`.
    pub(crate) fn page(&mut self, i: usize, page: Result<ScanPage, ReadFailed>) {
        let cursor = &mut self.cursors[i];
        match page {
            Ok(page) => {
                if let Some(last) = page.last {
                    cursor.after = Some(last);
                }
                cursor.done = !page.more;
                cursor.page.extend(page.records);
            }
            Err(_) => {
                cursor.failed = true;
                cursor.page.clear();
            }
        }
    }

    /// The next step, under `watermark`.
    pub(crate) fn step(&mut self, watermark: &Watermark) -> Step {
        loop {
            let refill: Vec<usize> = (0..self.cursors.len())
                .filter(|&i| {
                    let c = &self.cursors[i];
                    !c.failed && !c.done && c.page.is_empty()
                })
                .collect();
            if !refill.is_empty() {
                return Step::Refill(refill);
            }
            let Some(next) = self
                .cursors
                .iter()
                .filter(|c| !c.failed)
                .filter_map(|c| c.page.front().map(|r| r.id))
                .min()
            else {
                return Step::Done;
            };
            let mut record: Option<ReadRecord> = None;
            let mut holders = Vec::new();
            for cursor in &mut self.cursors {
                if !cursor.failed && cursor.page.front().is_some_and(|r| r.id == next) {
                    holders.push(cursor.node.clone());
                    // Each copy has its own record time: the first one counts.
                    if let Some(front) = cursor.page.pop_front()
                        && record
                            .as_ref()
                            .is_none_or(|r| front.stored_ms < r.stored_ms)
                    {
                        record = Some(front);
                    }
                }
            }
            let Some(record) = record else {
                return Step::Done;
            };
            if self.last.is_some_and(|last| next <= last) {
                // Not after the starting point: a node ignored `after`.
                continue;
            }
            if !watermark.allows(&record) {
                // Put it back: the next request starts from `last`.
                for cursor in &mut self.cursors {
                    if holders.contains(&cursor.node) {
                        cursor.page.push_front(record.clone());
                    }
                }
                return Step::Done;
            }
            self.last = Some(next);
            return Step::Next(record, holders);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MessageId {
        MessageId { epoch: 7, seq }
    }

    fn record(seq: u64) -> ReadRecord {
        ReadRecord {
            id: id(seq),
            key: None,
            stored_ms: 1_000 + seq,
            text: format!("m{seq}"),
        }
    }

    fn page(seqs: &[u64], more: bool) -> Result<ScanPage, ReadFailed> {
        Ok(ScanPage {
            records: seqs.iter().map(|&s| record(s)).collect(),
            last: seqs.last().map(|&s| id(s)),
            more,
        })
    }

    fn open() -> Watermark {
        Watermark {
            floor: MessageId {
                epoch: u64::MAX,
                seq: 0,
            },
        }
    }

    fn nodes(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    /// Runs a merge to the end over scripted pages per node.
    fn drain(
        merge: &mut Merge,
        mut pages: Vec<VecDeque<Result<ScanPage, ReadFailed>>>,
        watermark: &Watermark,
    ) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        loop {
            match merge.step(watermark) {
                Step::Refill(which) => {
                    for i in which {
                        let next = pages[i].pop_front().unwrap_or_else(|| page(&[], false));
                        merge.page(i, next);
                    }
                }
                Step::Next(record, holders) => out.push((record.id.seq, holders.len())),
                Step::Done => return out,
            }
        }
    }

    #[test]
    fn merges_in_id_order_once_each_with_holders() {
        let mut merge = Merge::new(nodes(&["a", "b", "c"]), None);
        let pages = vec![
            VecDeque::from([page(&[1, 2], true), page(&[4, 6], false)]),
            VecDeque::from([page(&[2, 3], true), page(&[5], false)]),
            VecDeque::from([page(&[1, 3, 4, 5, 6], false)]),
        ];
        let out = drain(&mut merge, pages, &open());
        assert_eq!(out, vec![(1, 2), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2)]);
        assert_eq!(merge.last(), Some(id(6)));
    }

    #[test]
    fn a_node_that_fails_leaves_the_merge_without_a_gap() {
        let mut merge = Merge::new(nodes(&["a", "b"]), Some(id(0)));
        let gone = ReadFailed::NodeGone("b".parse().unwrap());
        let pages = vec![
            VecDeque::from([page(&[1, 2], true), page(&[3, 4], false)]),
            VecDeque::from([page(&[1], true), Err(gone)]),
        ];
        let out = drain(&mut merge, pages, &open());
        assert_eq!(out, vec![(1, 2), (2, 1), (3, 1), (4, 1)]);
        assert_eq!(merge.live(), 1);
    }

    #[test]
    fn the_watermark_holds_back_records_at_and_above_the_floor() {
        // Messages 4 and 5 took their ids and are still on their way.
        let ids = std::sync::Arc::new(crate::IdGenerator::starting_at(7));
        let tickets: Vec<_> = (1..=5).map(|_| ids.next_ticket()).collect();
        let mut tickets = tickets.into_iter();
        for done in tickets.by_ref().take(3) {
            drop(done);
        }
        let busy = Watermark { floor: ids.floor() };
        let mut merge = Merge::new(nodes(&["a"]), None);
        let out = drain(
            &mut merge,
            vec![VecDeque::from([page(&[1, 2, 3, 5], false)])],
            &busy,
        );
        assert_eq!(out, vec![(1, 1), (2, 1), (3, 1)], "5 waits for 4");
        assert_eq!(merge.last(), Some(id(3)));

        // However old its record time: no clock is read.
        let slow = ReadRecord {
            stored_ms: 0,
            ..record(4)
        };
        assert!(!busy.allows(&slow));
        let older_epoch = ReadRecord {
            id: MessageId { epoch: 6, seq: 99 },
            ..record(1)
        };
        assert!(busy.allows(&older_epoch), "an earlier head node's");

        drop(tickets);
        let idle = Watermark { floor: ids.floor() };
        assert_eq!(idle.floor, id(6));
        let mut merge = Merge::new(nodes(&["a"]), Some(id(3)));
        let out = drain(
            &mut merge,
            vec![VecDeque::from([page(&[4, 5, 6], false)])],
            &idle,
        );
        assert_eq!(out, vec![(4, 1), (5, 1)], "below the next id only");
    }
}
