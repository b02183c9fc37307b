//! Reads from data nodes: any head-node task may send `get`, `getkey` or
//! `scan` to a live data node and await its answer.
//!
//! Each data-node session that can serve reads puts a [`NodeReader`] in the
//! [`ReadPool`] while it runs. A read is a [`ReadJob`] sent over the node's
//! own bounded channel ([`NODE_READ_QUEUE`]), never the forwarding queue,
//! so reads never wait behind writes nor writes behind reads. The session
//! numbers each read, keeps at most [`NODE_READS`] outstanding (the data
//! node's own bound; more stay in the channel), and routes `found`,
//! `notfound`, `scanned` and `readerror` lines to the waiting task through a
//! bounded channel sized for the whole answer, with `try_send` so the
//! session never waits on a reader. When the session ends, every read it
//! holds fails with [`ReadFailed::NodeGone`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use protocol::message::{FromDataNode, MessageId, MessageKey, NodeId, ReadRecord, ToDataNode};
use tokio::sync::mpsc;
use tracing::debug;

use crate::state::membership::ConnId;

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
    pub(crate) conn: ConnId,
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

impl NodeReader {
    fn submit(
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

    /// Reads one message by id or key.
    pub(crate) async fn get(
        &self,
        read: NodeRead,
        timeout: Duration,
    ) -> Result<GetResult, ReadFailed> {
        let mut answer_rx = self.submit(read, 1)?;
        let answer = tokio::time::timeout(timeout, answer_rx.recv())
            .await
            .map_err(|_| ReadFailed::TimedOut {
                node: self.node.clone(),
                after: timeout,
            })?;
        match answer {
            Some(NodeAnswer::Found(record)) => Ok(GetResult::Found(record)),
            Some(NodeAnswer::NotFound { removed }) => Ok(GetResult::NotFound { removed }),
            Some(NodeAnswer::Refused(reason)) => Err(ReadFailed::Refused {
                node: self.node.clone(),
                reason,
            }),
            Some(NodeAnswer::Scanned { .. }) => Err(ReadFailed::Malformed {
                node: self.node.clone(),
                why: "'scanned' in answer to a get",
            }),
            None => Err(ReadFailed::NodeGone(self.node.clone())),
        }
    }

    /// Reads the next at most `limit` records with an id greater than
    /// `after`, in id order.
    pub(crate) async fn scan(
        &self,
        after: Option<MessageId>,
        limit: u32,
        timeout: Duration,
    ) -> Result<ScanPage, ReadFailed> {
        let mut answer_rx = self.submit(NodeRead::Scan { after, limit }, limit as usize + 1)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut page = ScanPage::default();
        loop {
            let answer = tokio::time::timeout_at(deadline, answer_rx.recv())
                .await
                .map_err(|_| ReadFailed::TimedOut {
                    node: self.node.clone(),
                    after: timeout,
                })?;
            let malformed = |why| ReadFailed::Malformed {
                node: self.node.clone(),
                why,
            };
            match answer {
                Some(NodeAnswer::Found(record)) => {
                    let in_order = page.records.last().map_or(after, |r| Some(r.id));
                    if in_order.is_some_and(|prev| record.id <= prev) {
                        return Err(malformed("scan records out of id order"));
                    }
                    page.records.push(record);
                }
                Some(NodeAnswer::Scanned { last, more }) => {
                    page.last = last.or(page.records.last().map(|r| r.id));
                    page.more = more && !page.records.is_empty();
                    return Ok(page);
                }
                Some(NodeAnswer::NotFound { .. }) => {
                    return Err(malformed("'notfound' in answer to a scan"));
                }
                Some(NodeAnswer::Refused(reason)) => {
                    return Err(ReadFailed::Refused {
                        node: self.node.clone(),
                        reason,
                    });
                }
                None => return Err(ReadFailed::NodeGone(self.node.clone())),
            }
        }
    }
}

/// The data nodes that serve reads now, by connection.
#[derive(Debug, Default)]
pub(crate) struct ReadPool {
    nodes: Mutex<Vec<NodeReader>>,
}

impl ReadPool {
    /// Adds a node's session; its reads arrive on the returned receiver.
    /// Removed again when the [`Joined`] guard drops.
    pub(crate) fn join(&self, conn: ConnId, node: NodeId) -> (Joined<'_>, mpsc::Receiver<ReadJob>) {
        let (jobs_tx, jobs_rx) = mpsc::channel(NODE_READ_QUEUE);
        let mut nodes = self.lock();
        nodes.retain(|n| n.conn != conn);
        nodes.push(NodeReader {
            conn,
            node,
            jobs_tx,
        });
        (Joined { pool: self, conn }, jobs_rx)
    }

    /// Every node that serves reads now, one per node id (the newest
    /// connection when a node reconnected).
    pub(crate) fn live(&self) -> Vec<NodeReader> {
        let nodes = self.lock();
        let mut live: Vec<NodeReader> = Vec::with_capacity(nodes.len());
        for reader in nodes.iter().rev() {
            if !reader.jobs_tx.is_closed() && !live.iter().any(|l| l.node == reader.node) {
                live.push(reader.clone());
            }
        }
        live.sort_by(|a, b| a.node.cmp(&b.node));
        live
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<NodeReader>> {
        // Every change under this lock leaves it consistent.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a session's reader from the pool when dropped.
pub(crate) struct Joined<'a> {
    pool: &'a ReadPool,
    conn: ConnId,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.pool.lock().retain(|n| n.conn != self.conn);
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

    /// A session that sends what it is handed and answers from a script.
    async fn serve(mut jobs_rx: mpsc::Receiver<ReadJob>, script: Vec<Vec<FromDataNode>>) {
        let node: NodeId = "dn1".parse().unwrap();
        let mut pending = PendingReads::default();
        for answers in script {
            let Some(job) = jobs_rx.recv().await else {
                return;
            };
            let mut req = 0;
            pending.send(job, |frame| {
                if let ToDataNode::Get { req: r, .. }
                | ToDataNode::GetKey { req: r, .. }
                | ToDataNode::Scan { req: r, .. } = frame
                {
                    req = *r;
                }
            });
            for answer in answers {
                let answer = match answer {
                    FromDataNode::Found { record, .. } => FromDataNode::Found { req, record },
                    FromDataNode::Scanned {
                        count, last, more, ..
                    } => FromDataNode::Scanned {
                        req,
                        count,
                        last,
                        more,
                    },
                    FromDataNode::NotFound { removed, .. } => {
                        FromDataNode::NotFound { req, removed }
                    }
                    other => other,
                };
                pending.answer(&node, answer);
            }
        }
        assert_eq!(pending.len(), 0, "every read ended");
    }

    #[tokio::test]
    async fn answers_reach_the_reader_that_asked() {
        let pool = ReadPool::default();
        let (_joined, jobs_rx) = pool.join(1, "dn1".parse().unwrap());
        let reader = pool.live().pop().unwrap();
        let script = vec![
            vec![FromDataNode::Found {
                req: 0,
                record: record(3),
            }],
            vec![FromDataNode::NotFound {
                req: 0,
                removed: true,
            }],
            vec![
                FromDataNode::Found {
                    req: 0,
                    record: record(1),
                },
                FromDataNode::Found {
                    req: 0,
                    record: record(2),
                },
                FromDataNode::Scanned {
                    req: 0,
                    count: 2,
                    last: Some(id(2)),
                    more: true,
                },
            ],
        ];
        let session = tokio::spawn(serve(jobs_rx, script));
        let wait = Duration::from_secs(5);
        let got = reader.get(NodeRead::Get(id(3)), wait).await.unwrap();
        assert!(matches!(got, GetResult::Found(r) if r.id == id(3)));
        let got = reader.get(NodeRead::Get(id(4)), wait).await.unwrap();
        assert!(matches!(got, GetResult::NotFound { removed: true }));
        let page = reader.scan(None, 2, wait).await.unwrap();
        assert_eq!(page.records.len(), 2);
        assert_eq!((page.last, page.more), (Some(id(2)), true));
        session.await.unwrap();
    }

    #[tokio::test]
    async fn a_session_that_ends_fails_its_reads_and_leaves_the_pool() {
        let pool = ReadPool::default();
        let reader = {
            let (joined, jobs_rx) = pool.join(1, "dn1".parse().unwrap());
            let reader = pool.live().pop().unwrap();
            drop(jobs_rx);
            drop(joined);
            reader
        };
        assert!(pool.live().is_empty());
        let failed = reader
            .get(NodeRead::Get(id(1)), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(failed, ReadFailed::NodeGone(_)), "{failed}");
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
