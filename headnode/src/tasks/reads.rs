//! Reads from data nodes, waited for: a read is handed to the node's
//! session over its channel (see `state::reads`), and its answer awaited
//! within the read timeout. Any task may read: the reader sessions, the
//! repair pass, and the scans of a merge.

use std::time::Duration;

use protocol::ids::{MessageId, NodeId};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::state::reads::{GetResult, NodeRead, NodeReader, ReadFailed, ScanPage};
use crate::state::tail::Merge;

/// Reads one message by id or key from `reader`'s node.
pub(crate) async fn get(
    reader: &NodeReader,
    read: NodeRead,
    timeout: Duration,
) -> Result<GetResult, ReadFailed> {
    let mut answer_rx = reader.submit(read, 1)?;
    let answer = tokio::time::timeout(timeout, answer_rx.recv())
        .await
        .map_err(|_| ReadFailed::TimedOut {
            node: reader.node.clone(),
            after: timeout,
        })?;
    GetResult::from_answer(&reader.node, answer)
}

/// Reads the next at most `limit` records with an id greater than `after`
/// from `reader`'s node, in id order; the whole page within `timeout`.
pub(crate) async fn scan(
    reader: &NodeReader,
    after: Option<MessageId>,
    limit: u32,
    timeout: Duration,
) -> Result<ScanPage, ReadFailed> {
    let mut answer_rx = reader.submit(NodeRead::Scan { after, limit }, limit as usize + 1)?;
    let deadline = Instant::now() + timeout;
    let mut page = ScanPage::default();
    loop {
        let answer = tokio::time::timeout_at(deadline, answer_rx.recv())
            .await
            .map_err(|_| ReadFailed::TimedOut {
                node: reader.node.clone(),
                after: timeout,
            })?;
        if page.take(&reader.node, after, answer)? {
            return Ok(page);
        }
    }
}

/// Scans the nodes of `merge` at `which` (indices into `live`, in the
/// order the merge was made with) at once, `page` records each, and hands
/// it their answers. The nodes whose read failed, with why: they leave
/// the merge.
pub(crate) async fn refill(
    merge: &mut Merge,
    which: Vec<usize>,
    live: &[NodeReader],
    page: u32,
    timeout: Duration,
) -> Vec<(NodeId, ReadFailed)> {
    let mut scans = JoinSet::new();
    for i in which {
        let reader = live[i].clone();
        let after = merge.scan_from(i);
        scans.spawn(async move { (i, scan(&reader, after, page, timeout).await) });
    }
    let mut failed = Vec::new();
    while let Some(done) = scans.join_next().await {
        let Ok((i, answer)) = done else { continue };
        if let Err(e) = &answer {
            failed.push((merge.node(i).clone(), e.clone()));
        }
        merge.page(i, answer);
    }
    failed
}

#[cfg(test)]
mod tests {
    use protocol::datanode::{FromDataNode, ReadRecord, ToDataNode};
    use tokio::sync::mpsc;

    use super::*;
    use crate::state::reads::{PendingReads, ReadJob, read_channel};
    use crate::state::router::Routes;

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
        let (jobs_tx, jobs_rx) = read_channel();
        let reader = NodeReader::new("dn1".parse().unwrap(), jobs_tx);
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
        let got = get(&reader, NodeRead::Get(id(3)), wait).await.unwrap();
        assert!(matches!(got, GetResult::Found(r) if r.id == id(3)));
        let got = get(&reader, NodeRead::Get(id(4)), wait).await.unwrap();
        assert!(matches!(got, GetResult::NotFound { removed: true }));
        let page = scan(&reader, None, 2, wait).await.unwrap();
        assert_eq!(page.records.len(), 2);
        assert_eq!((page.last, page.more), (Some(id(2)), true));
        session.await.unwrap();
    }

    #[tokio::test]
    async fn a_session_that_ends_fails_its_reads_and_leaves_the_readers() {
        let (jobs_tx, jobs_rx) = read_channel();
        let reader = NodeReader::new("dn1".parse().unwrap(), jobs_tx);
        let routes =
            Routes::with_readers(Vec::new(), vec![reader.clone()], Default::default(), None);
        assert_eq!(routes.readers().len(), 1);
        drop(jobs_rx);
        assert!(routes.readers().is_empty());
        let failed = get(&reader, NodeRead::Get(id(1)), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(failed, ReadFailed::NodeGone(_)), "{failed}");
    }
}
