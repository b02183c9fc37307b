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
//! record that such a message could still precede; see its doc.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::datanode::ReadRecord;
use protocol::ids::{MessageId, NodeId};

use crate::state::ids::Peek;
use crate::state::reads::{ReadFailed, ScanPage};

/// Which records may be emitted now without risking a gap.
///
/// A record may go out when every id below it is settled, by one of:
/// - its epoch is older than the first this head node gave ids under:
///   older runs assign no new ids (a resent key given more copies under
///   its old id is already visible on the nodes that hold it). An epoch
///   this run went above (to be above one a data node reported) is
///   settled only as its current one is, by the next two rules;
/// - *exact*: when the head node holds no message at all (its in-flight
///   budget is wholly free), every id below the next one it will assign
///   has ended: written where it will be written, or failed. Reading that
///   next id first and the budget second makes it safe against a message
///   taking its id in between (a message takes its share of the budget
///   before its id). This costs the write path nothing: two atomic loads
///   per read request;
/// - *lag*: while messages are in flight, a record stored at least `lag`
///   ago: any message with a smaller id got its id before this record was
///   stored, so it is visible by now unless its write took longer than
///   `lag` (`--tail-lag`, by default the ack timeout plus the wait for a
///   node, well above a normal write). Following under load is therefore
///   behind by `lag`; an idle cluster is followed at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watermark {
    /// This head node's epoch.
    pub(crate) epoch: u64,
    /// The first epoch this run gave ids under: older ones are settled.
    pub(crate) first_used: u64,
    /// Every sequence number of `epoch` below this has ended, if known.
    pub(crate) settled_below: Option<u64>,
    /// Records stored at or before this time (Unix ms) may go out.
    pub(crate) stored_by_ms: u64,
}

impl Watermark {
    /// The watermark from a read of the next id and of whether the head
    /// node holds any message now (in that order), at `now`.
    pub(crate) fn new(ids: Peek, idle: bool, now: SystemTime, lag: Duration) -> Self {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        Watermark {
            epoch: ids.epoch,
            first_used: ids.first_used.min(ids.epoch),
            settled_below: idle.then_some(ids.next_seq),
            stored_by_ms: now_ms.saturating_sub(lag.as_millis() as u64),
        }
    }

    /// Whether `record` may be emitted.
    pub(crate) fn allows(&self, record: &ReadRecord) -> bool {
        let epoch = record.id.epoch;
        epoch < self.first_used
            || (epoch < self.epoch && self.settled_below.is_some())
            || (epoch == self.epoch && self.settled_below.is_some_and(|next| record.id.seq < next))
            || record.stored_ms <= self.stored_by_ms
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
            epoch: 7,
            first_used: 7,
            settled_below: Some(u64::MAX),
            stored_by_ms: 0,
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
    fn the_watermark_holds_back_records_that_may_precede_an_unwritten_one() {
        let busy = Watermark::new(
            peek(7, 10, 7),
            false,
            UNIX_EPOCH + Duration::from_millis(1_003),
            Duration::ZERO,
        );
        let mut merge = Merge::new(nodes(&["a"]), None);
        let out = drain(
            &mut merge,
            vec![VecDeque::from([page(&[1, 2, 3, 4, 5], false)])],
            &busy,
        );
        assert_eq!(out, vec![(1, 1), (2, 1), (3, 1)], "stored by 1003 only");
        assert_eq!(merge.last(), Some(id(3)));

        let idle = Watermark::new(peek(7, 5, 7), true, UNIX_EPOCH, Duration::from_secs(10));
        let mut merge = Merge::new(nodes(&["a"]), None);
        let out = drain(
            &mut merge,
            vec![VecDeque::from([page(&[1, 4, 5, 6], false)])],
            &idle,
        );
        assert_eq!(out, vec![(1, 1), (4, 1)], "below the next id only");

        let older_epoch = ReadRecord {
            id: MessageId { epoch: 6, seq: 99 },
            ..record(1)
        };
        assert!(idle.allows(&older_epoch));
    }

    fn peek(epoch: u64, next_seq: u64, first_used: u64) -> Peek {
        Peek {
            epoch,
            next_seq,
            first_used,
        }
    }

    #[test]
    fn an_epoch_this_run_went_above_is_settled_only_as_the_current_one_is() {
        let record = |epoch, seq, stored_ms| ReadRecord {
            id: MessageId { epoch, seq },
            stored_ms,
            ..record(1)
        };
        // The run gave ids under 5, then went above a reported 6.
        let busy = Watermark::new(peek(7, 3, 5), false, UNIX_EPOCH, Duration::ZERO);
        assert!(busy.allows(&record(4, 9, 10)), "an older run's");
        assert!(!busy.allows(&record(5, 9, 10)), "may still be on its way");
        let idle = Watermark::new(peek(7, 3, 5), true, UNIX_EPOCH, Duration::ZERO);
        assert!(idle.allows(&record(5, 9, 10)));
        assert!(!idle.allows(&record(7, 3, 10)));
    }
}
