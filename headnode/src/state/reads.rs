//! Reads from data nodes: any head-node task may send `get`, `getkey` or
//! `scan` to a live data node and await its answer.
//!
//! Each data node that can serve reads has a [`NodeReader`], carried by the
//! routes the membership task publishes (so the nodes that serve reads are
//! the members, not a second list). A read is a [`ReadJob`] sent over the
//! node's own bounded channel ([`NODE_READ_QUEUE`]), never the forwarding
//! queue, so reads never wait behind writes nor writes behind reads. The
//! session numbers each read, keeps at most [`NODE_READS`] outstanding (the
//! data node's own bound; more stay in the channel), and routes `found`,
//! `notfound`, `scanned` and `readerror` lines to the waiting task through a
//! bounded channel sized for the whole answer, with `try_send` so the
//! session never waits on a reader. When the session ends, every read it
//! holds fails with [`ReadFailed::NodeGone`].
//!
//! What an answer means is decided here ([`GetResult::from_answer`],
//! [`ScanPage::take`]), and what the answers of some members prove when
//! others could not answer ([`Coverage`]); the waiting, with its timeout,
//! is the caller's.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use protocol::datanode::{FromDataNode, ReadRecord, ToDataNode};
use protocol::ids::{MessageId, MessageKey, NodeId};
use tokio::sync::mpsc;
use tracing::debug;

/// Reads outstanding per data-node connection: the data node refuses more
/// (`readerror ... at most 16`), so the session queues beyond it.
pub(crate) const NODE_READS: usize = 16;
/// Reads waiting in one node's channel for the session to send them; one
/// more is refused at once with [`ReadFailed::Busy`].
pub(crate) const NODE_READ_QUEUE: usize = 16;

/// What to read from one node.
#[derive(Debug, Clone)]
pub(crate) enum NodeRead {
    Get(MessageId),
    GetKey(MessageKey),
    Scan {
        after: Option<MessageId>,
        limit: u32,
    },
}

/// One line of a node's answer to a read.
#[derive(Debug)]
pub(crate) enum NodeAnswer {
    Found(ReadRecord),
    NotFound { removed: bool },
    Scanned { last: Option<MessageId>, more: bool },
    Refused(String),
}

/// Why a read got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ReadFailed {
    /// The node's session ended (the node left, died or was evicted)
    /// before the whole answer came.
    #[error("dataNode {0} went away before answering")]
    NodeGone(NodeId),
    /// The node's read channel is full.
    #[error("dataNode {0} has too many reads queued ({NODE_READ_QUEUE})")]
    Busy(NodeId),
    /// The node refused the read (`readerror`).
    #[error("dataNode {node} refused the read: {reason}")]
    Refused { node: NodeId, reason: String },
    /// No whole answer within the read timeout.
    #[error("dataNode {node} did not answer within {after:?}")]
    TimedOut { node: NodeId, after: Duration },
    /// The node sent an answer that does not fit its request.
    #[error("dataNode {node} sent a malformed answer: {why}")]
    Malformed { node: NodeId, why: &'static str },
}

/// A read handed to a node's session, and where its answer goes.
#[derive(Debug)]
pub(crate) struct ReadJob {
    pub(crate) read: NodeRead,
    /// Room for the whole answer: one line for a `get`, `limit + 1` for
    /// a scan.
    pub(crate) answer_tx: mpsc::Sender<NodeAnswer>,
}

/// One live data node, as readers see it.
#[derive(Debug, Clone)]
pub(crate) struct NodeReader {
    pub(crate) node: NodeId,
    jobs_tx: mpsc::Sender<ReadJob>,
}

/// What one `get` or `getkey` found on one node.
#[derive(Debug)]
pub(crate) enum GetResult {
    Found(ReadRecord),
    NotFound { removed: bool },
}

/// One page of a scan.
#[derive(Debug, Default)]
pub(crate) struct ScanPage {
    pub(crate) records: Vec<ReadRecord>,
    /// The greatest id sent.
    pub(crate) last: Option<MessageId>,
    /// Whether greater ids may follow.
    pub(crate) more: bool,
}

/// The channel a data node's session reads its [`ReadJob`]s from, and the
/// end readers send them on: [`NODE_READ_QUEUE`] jobs wait in it at most.
pub(crate) fn read_channel() -> (mpsc::Sender<ReadJob>, mpsc::Receiver<ReadJob>) {
    mpsc::channel(NODE_READ_QUEUE)
}

impl NodeReader {
    /// The reader of `node`, whose session reads `jobs_tx`'s other end.
    pub(crate) fn new(node: NodeId, jobs_tx: mpsc::Sender<ReadJob>) -> Self {
        NodeReader { node, jobs_tx }
    }

    /// Whether its session still takes reads.
    pub(crate) fn is_open(&self) -> bool {
        !self.jobs_tx.is_closed()
    }

    /// Hands `read` to the node's session; the answer arrives on the
    /// returned receiver, which has room for `room` lines. Refused at once
    /// when the node's channel is full or its session ended.
    pub(crate) fn submit(
        &self,
        read: NodeRead,
        room: usize,
    ) -> Result<mpsc::Receiver<NodeAnswer>, ReadFailed> {
        let (answer_tx, answer_rx) = mpsc::channel(room);
        self.jobs_tx
            .try_send(ReadJob { read, answer_tx })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ReadFailed::Busy(self.node.clone()),
                mpsc::error::TrySendError::Closed(_) => ReadFailed::NodeGone(self.node.clone()),
            })?;
        Ok(answer_rx)
    }
}

impl GetResult {
    /// What the answer of `node` to a `get` or `getkey` means; `None`: its
    /// session ended before it answered.
    pub(crate) fn from_answer(
        node: &NodeId,
        answer: Option<NodeAnswer>,
    ) -> Result<GetResult, ReadFailed> {
        match answer {
            Some(NodeAnswer::Found(record)) => Ok(GetResult::Found(record)),
            Some(NodeAnswer::NotFound { removed }) => Ok(GetResult::NotFound { removed }),
            Some(NodeAnswer::Refused(reason)) => Err(ReadFailed::Refused {
                node: node.clone(),
                reason,
            }),
            Some(NodeAnswer::Scanned { .. }) => Err(ReadFailed::Malformed {
                node: node.clone(),
                why: "'scanned' in answer to a get",
            }),
            None => Err(ReadFailed::NodeGone(node.clone())),
        }
    }
}

impl ScanPage {
    /// Takes one line of `node`'s answer to a scan of ids greater than
    /// `after` (`None`: its session ended first). True once the page is
    /// whole; an error once it cannot be.
    pub(crate) fn take(
        &mut self,
        node: &NodeId,
        after: Option<MessageId>,
        answer: Option<NodeAnswer>,
    ) -> Result<bool, ReadFailed> {
        let malformed = |why| ReadFailed::Malformed {
            node: node.clone(),
            why,
        };
        match answer {
            Some(NodeAnswer::Found(record)) => {
                let in_order = self.records.last().map_or(after, |r| Some(r.id));
                if in_order.is_some_and(|prev| record.id <= prev) {
                    return Err(malformed("scan records out of id order"));
                }
                self.records.push(record);
                Ok(false)
            }
            Some(NodeAnswer::Scanned { last, more }) => {
                self.last = last.or(self.records.last().map(|r| r.id));
                self.more = more && !self.records.is_empty();
                Ok(true)
            }
            Some(NodeAnswer::NotFound { .. }) => Err(malformed("'notfound' in answer to a scan")),
            Some(NodeAnswer::Refused(reason)) => Err(ReadFailed::Refused {
                node: node.clone(),
                reason,
            }),
            None => Err(ReadFailed::NodeGone(node.clone())),
        }
    }
}

/// The members of the cluster one read could not hear from, and what the
/// answers of the others prove.
///
/// A member is *missing* from a read when it has no live session (absent,
/// or not yet back since the head node started), when its part of the read
/// failed, or when it is rebuilding: it came back with a new, empty data
/// directory and repair has not yet given it its share, so its `notfound`
/// says nothing of what it held before (its `found` still counts).
///
/// - A `get` answers `notfound` only when no member is missing: every
///   member that could hold the id said it does not ([`Coverage::whole`]).
/// - A tail may go past an id when fewer than W (`--min-replicas`)
///   members are missing ([`Coverage::proves_acknowledged`]): every
///   acknowledged message was written by W members, so one of them
///   answered. With W or more missing, a message could be on them alone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Coverage {
    /// Each missing member and why, in name order.
    missing: BTreeMap<NodeId, String>,
}

impl Coverage {
    /// The coverage of a read of `members` (the member set) asked of the
    /// nodes `readers`, of which `rebuilding` hold only part of their
    /// share yet.
    pub(crate) fn new<'a>(
        members: &[NodeId],
        readers: impl IntoIterator<Item = &'a NodeId>,
        rebuilding: &[NodeId],
    ) -> Self {
        let readers: Vec<&NodeId> = readers.into_iter().collect();
        let mut missing = BTreeMap::new();
        for member in members {
            if !readers.contains(&member) {
                missing.insert(member.clone(), "not connected".to_owned());
            }
        }
        for node in rebuilding {
            if readers.contains(&node) {
                missing.insert(
                    node.clone(),
                    "new data directory, not yet repaired".to_owned(),
                );
            }
        }
        Coverage { missing }
    }

    /// `node`'s part of the read failed.
    pub(crate) fn failed(&mut self, node: &NodeId, why: &ReadFailed) {
        self.missing
            .entry(node.clone())
            .or_insert_with(|| why.to_string());
    }

    /// Every member answered.
    pub(crate) fn whole(&self) -> bool {
        self.missing.is_empty()
    }

    /// Fewer than `needed` (W) members are missing: every acknowledged
    /// message has a copy on a member that answered.
    pub(crate) fn proves_acknowledged(&self, needed: usize) -> bool {
        self.missing.len() < needed.max(1)
    }

    /// The missing members' names, joined by spaces.
    pub(crate) fn names(&self) -> String {
        let names: Vec<&str> = self.missing.keys().map(NodeId::as_str).collect();
        names.join(" ")
    }
}

impl fmt::Display for Coverage {
    /// `dn2 (not connected), dn3 (...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (node, why)) in self.missing.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{node} ({why})")?;
        }
        Ok(())
    }
}

struct Pending {
    /// `None` once the reader went away or overflowed its channel: the
    /// entry stays until the node's answer ends, since the node counts it.
    answer_tx: Option<mpsc::Sender<NodeAnswer>>,
    scan: bool,
}

/// The reads one session has sent and not seen the end of.
#[derive(Default)]
pub(crate) struct PendingReads {
    next_req: u64,
    pending: HashMap<u64, Pending>,
}

impl PendingReads {
    /// Whether another read may be sent now.
    pub(crate) fn has_room(&self) -> bool {
        self.pending.len() < NODE_READS
    }

    /// Numbers `job`, encodes it for the node and remembers where its
    /// answer goes.
    pub(crate) fn send(&mut self, job: ReadJob, encode: impl FnOnce(&ToDataNode<'_>)) {
        self.next_req += 1;
        let req = self.next_req;
        let scan = matches!(job.read, NodeRead::Scan { .. });
        match &job.read {
            NodeRead::Get(id) => encode(&ToDataNode::Get { req, id: *id }),
            NodeRead::GetKey(key) => encode(&ToDataNode::GetKey {
                req,
                key: key.as_ref(),
            }),
            NodeRead::Scan { after, limit } => encode(&ToDataNode::Scan {
                req,
                after: *after,
                limit: *limit,
            }),
        }
        self.pending.insert(
            req,
            Pending {
                answer_tx: Some(job.answer_tx),
                scan,
            },
        );
    }

    /// Routes one read answer line to its reader. Answers to no pending
    /// read are logged and dropped.
    pub(crate) fn answer(&mut self, node: &NodeId, frame: FromDataNode) {
        let (req, answer, last_line) = match frame {
            FromDataNode::Found { req, record } => {
                let scan = self.pending.get(&req).is_some_and(|p| p.scan);
                (req, NodeAnswer::Found(record), !scan)
            }
            FromDataNode::NotFound { req, removed } => {
                (req, NodeAnswer::NotFound { removed }, true)
            }
            FromDataNode::Scanned {
                req, last, more, ..
            } => (req, NodeAnswer::Scanned { last, more }, true),
            FromDataNode::ReadError { req, reason } => (req, NodeAnswer::Refused(reason), true),
            _ => return,
        };
        let Some(pending) = self.pending.get_mut(&req) else {
            debug!(%node, req, "read answer for no pending read; ignored");
            return;
        };
        if let Some(answer_tx) = &pending.answer_tx
            && answer_tx.try_send(answer).is_err()
        {
            // The reader gave up, or the node sent more than it was asked
            // for: the reader sees its channel close.
            pending.answer_tx = None;
        }
        if last_line {
            self.pending.remove(&req);
        }
    }

    /// Reads outstanding.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MessageId {
        MessageId { epoch: 1, seq }
    }

    fn record(seq: u64) -> ReadRecord {
        ReadRecord {
            id: id(seq),
            key: None,
            stored_ms: 5,
            text: format!("m{seq}"),
        }
    }

    fn names(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_read_is_whole_only_when_every_member_answered() {
        let members = names(&["dn1", "dn2", "dn3"]);
        let all = Coverage::new(&members, &members, &[]);
        assert!(all.whole());
        assert!(all.proves_acknowledged(2));

        let readers = names(&["dn1", "dn3", "dn4"]);
        let mut one_away = Coverage::new(&members, &readers, &[]);
        assert!(!one_away.whole(), "dn2 could hold it");
        assert_eq!(one_away.names(), "dn2");
        assert!(
            one_away.proves_acknowledged(2),
            "one of W=2 holders answered"
        );
        assert!(
            !one_away.proves_acknowledged(1),
            "with W=1 dn2 may be the only one"
        );
        one_away.failed(&members[2], &ReadFailed::Busy(members[2].clone()));
        assert!(
            !one_away.proves_acknowledged(2),
            "dn2 and dn3 could hold it alone"
        );
        assert_eq!(one_away.names(), "dn2 dn3");
        assert_eq!(
            one_away.to_string(),
            "dn2 (not connected), dn3 (dataNode dn3 has too many reads queued (16))"
        );
    }

    #[test]
    fn a_member_with_a_new_data_directory_counts_as_missing_until_repaired() {
        let members = names(&["dn1", "dn2"]);
        let rebuilding = Coverage::new(&members, &members, &names(&["dn1"]));
        assert!(!rebuilding.whole(), "its notfound says nothing");
        assert!(rebuilding.proves_acknowledged(2));
        assert_eq!(rebuilding.names(), "dn1");
    }

    #[test]
    fn at_most_sixteen_reads_are_outstanding_and_extra_lines_are_dropped() {
        let mut pending = PendingReads::default();
        let mut receivers = Vec::new();
        while pending.has_room() {
            let (answer_tx, answer_rx) = mpsc::channel(1);
            receivers.push(answer_rx);
            pending.send(
                ReadJob {
                    read: NodeRead::Get(id(1)),
                    answer_tx,
                },
                |_| {},
            );
        }
        assert_eq!(pending.len(), NODE_READS);
        let node: NodeId = "dn1".parse().unwrap();
        // An answer to nothing, and a scan line for a get: no panic.
        pending.answer(
            &node,
            FromDataNode::Scanned {
                req: 999,
                count: 0,
                last: None,
                more: false,
            },
        );
        pending.answer(
            &node,
            FromDataNode::Found {
                req: 1,
                record: record(1),
            },
        );
        assert_eq!(pending.len(), NODE_READS - 1);
    }
}
