//! One task per reader (`lector`): reads one request per line and answers
//! it from the live data nodes, before the next request's answer.
//!
//! - `get <id>` / `get <client-id>/<seq>` asks every live data node and
//!   names those that hold it;
//! - `tail <after>|start <limit> [since=<ms>]` merges the nodes' scans in
//!   id order (see `tail`).
//!
//! Bounds: at most [`READER_QUEUE`] requests taken from one reader at a
//! time (lines beyond them that already arrived are answered `ERROR`),
//! [`Config::max_reads`](crate::Config::max_reads) requests served at once
//! over all readers, scans of at most [`SCAN_PAGE`] records per node, and
//! answers flushed every [`FLUSH_AT`] bytes, so a reader holds at most
//! about `live nodes × 1 MiB` of scan pages plus [`FLUSH_AT`] of answers.
//! Reads use their own channels to the data-node sessions, never the
//! forwarding queues.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::connection::Connection;
use protocol::datanode::ReadRecord;
use protocol::ids::{MessageId, NodeId};
use protocol::net::Stream;
use protocol::reader::{ReadReply, ReadRequest};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::reads::{GetResult, NodeRead, NodeReader};
use crate::state::status::{ReadFailure, ReadKind};
use crate::state::tail::{Merge, Step};
use crate::tasks::{Shared, reads};

/// Requests taken from one reader's buffer at once; lines beyond them
/// already received are answered `ERROR too many requests in flight`.
pub(crate) const READER_QUEUE: usize = 16;
/// Records asked of one node per scan.
pub(crate) const SCAN_PAGE: u32 = 256;
/// Answer bytes queued before they are written out.
pub(crate) const FLUSH_AT: usize = 64 * 1024;
/// Records one `tail` request may examine (sent, or skipped by
/// `since=`) before it answers `end ... more`.
pub(crate) const TAIL_EXAMINE: u32 = 10_000;
/// How long a request waits for its turn in the read budget.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// Why a reader's connection ended.
enum Ended {
    Closed,
    Failed(String),
}

pub(crate) async fn run<S: Stream>(
    mut conn: Connection<S>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let reason = match serve(&mut conn, &shared, &stop).await {
        Ended::Closed => "closed".to_owned(),
        Ended::Failed(why) => why,
    };
    info!(reason, "lector disconnected");
}

async fn serve<S: Stream>(
    conn: &mut Connection<S>,
    shared: &Shared,
    stop: &CancellationToken,
) -> Ended {
    let idle = shared.config.client_idle_timeout;
    let mut requests: Vec<Result<ReadRequest, String>> = Vec::with_capacity(READER_QUEUE);
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ended::Closed,
            frame = tokio::time::timeout(idle, conn.reader.read_frame()) => frame,
        };
        let mut frame = match frame {
            Ok(frame) => frame,
            Err(_) => {
                conn.close_with_error(&format!("idle for {idle:?}; closing"))
                    .await;
                return Ended::Failed(format!("idle for {idle:?}"));
            }
        };
        // This line, and those already buffered behind it, up to the bound.
        let mut refused = 0u64;
        loop {
            match frame {
                Ok(None) => {
                    if requests.is_empty() && refused == 0 {
                        return Ended::Closed;
                    }
                    break;
                }
                Ok(Some(line)) if requests.len() < READER_QUEUE => {
                    requests.push(ReadRequest::parse(line.as_str()).map_err(|e| e.to_string()));
                }
                Ok(Some(_)) => refused += 1,
                Err(e) if e.is_fatal() => {
                    conn.close_with_error(&e).await;
                    return Ended::Failed(e.to_string());
                }
                Err(e) if requests.len() < READER_QUEUE => requests.push(Err(e.to_string())),
                Err(_) => refused += 1,
            }
            frame = match conn.reader.next_buffered() {
                Ok(None) => break,
                next => next,
            };
        }
        for request in requests.drain(..) {
            match request {
                Ok(request) => {
                    if let Err(why) = answer(conn, shared, &request).await {
                        return Ended::Failed(why);
                    }
                }
                Err(reason) => {
                    debug!(reason, "bad request from lector");
                    shared.status.reads.refused(ReadFailure::BadRequest);
                    conn.writer.queue_error(&reason);
                }
            }
        }
        for _ in 0..refused {
            shared.status.reads.refused(ReadFailure::TooManyInFlight);
            conn.writer.queue_error(&format!(
                "too many requests in flight (at most {READER_QUEUE} per reader); this one was not served"
            ));
            if conn.writer.pending() >= FLUSH_AT
                && let Err(why) = flush(conn, shared).await
            {
                return Ended::Failed(why);
            }
        }
        if refused > 0 {
            warn!(
                refused,
                "lector sent more requests at once than are served; refused the rest"
            );
        }
        if let Err(why) = flush(conn, shared).await {
            return Ended::Failed(why);
        }
    }
}

async fn flush<S: Stream>(conn: &mut Connection<S>, shared: &Shared) -> Result<(), String> {
    match tokio::time::timeout(shared.config.write_timeout, conn.writer.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!(
            "it took none of our bytes for {:?}",
            shared.config.write_timeout
        )),
    }
}

/// Serves one request, counted and timed in the read metrics; Err ends
/// the connection.
async fn answer<S: Stream>(
    conn: &mut Connection<S>,
    shared: &Shared,
    request: &ReadRequest,
) -> Result<(), String> {
    let started = Instant::now();
    let kind = match request {
        ReadRequest::Get(_) => ReadKind::Get,
        ReadRequest::GetKey(_) => ReadKind::GetKey,
        ReadRequest::Tail { .. } => ReadKind::Tail,
    };
    let failure = respond(conn, shared, request).await?;
    shared
        .status
        .reads
        .answered(kind, failure, started.elapsed());
    Ok(())
}

/// Queues the answer to one request; why it is an `ERROR`, if it is.
async fn respond<S: Stream>(
    conn: &mut Connection<S>,
    shared: &Shared,
    request: &ReadRequest,
) -> Result<Option<ReadFailure>, String> {
    let budget = &shared.read_budget;
    let Ok(Ok(_permit)) = tokio::time::timeout(BUDGET_WAIT, budget_permit(budget)).await else {
        conn.writer.queue_error(&format!(
            "head node busy: {} reads at once; try again",
            shared.config.max_reads
        ));
        return Ok(Some(ReadFailure::Busy));
    };
    let live = shared.router.snapshot().readers();
    if live.is_empty() {
        conn.writer.queue_error(&protocol::client::NO_DATA_NODES);
        return Ok(Some(ReadFailure::NoDataNodes));
    }
    match request {
        ReadRequest::Get(id) => {
            Ok(get(conn, shared, live, NodeRead::Get(*id), id.to_string()).await)
        }
        ReadRequest::GetKey(key) => Ok(get(
            conn,
            shared,
            live,
            NodeRead::GetKey(key.clone()),
            key.to_string(),
        )
        .await),
        ReadRequest::Tail {
            after,
            limit,
            since_ms,
        } => tail(conn, shared, live, *after, *limit, *since_ms).await,
    }
}

async fn budget_permit(budget: &Semaphore) -> Result<tokio::sync::SemaphorePermit<'_>, ()> {
    budget.acquire().await.map_err(|_| ())
}

/// Asks every live node for one message; names those that hold it.
/// Why its answer is an `ERROR`, if it is.
async fn get<S: Stream>(
    conn: &mut Connection<S>,
    shared: &Shared,
    live: Vec<NodeReader>,
    read: NodeRead,
    what: String,
) -> Option<ReadFailure> {
    let timeout = shared.config.read_timeout;
    let asked = live.len();
    let mut reads = JoinSet::new();
    for reader in live {
        let read = read.clone();
        reads.spawn(async move {
            let got = reads::get(&reader, read, timeout).await;
            (reader.node, got)
        });
    }
    let mut found: Option<ReadRecord> = None;
    let mut holders: Vec<NodeId> = Vec::new();
    let mut removed = false;
    let mut failures = Vec::new();
    while let Some(done) = reads.join_next().await {
        let Ok((node, got)) = done else { continue };
        match got {
            Ok(GetResult::Found(record)) => {
                holders.push(node);
                // Each copy has its own record time: the first one counts.
                if found
                    .as_ref()
                    .is_none_or(|f| record.stored_ms < f.stored_ms)
                {
                    found = Some(record);
                }
            }
            Ok(GetResult::NotFound { removed: r }) => removed |= r,
            Err(e) => {
                warn!(%node, error = %e, what, "read failed on a dataNode; answering from the others");
                failures.push(e.to_string());
            }
        }
    }
    holders.sort();
    match found {
        Some(record) => conn
            .writer
            .queue_with(|buf| ReadReply::encode_found(&record, &holders, buf)),
        None if failures.len() == asked => {
            conn.writer
                .queue_error(&format!("no data node could be read ({})", failures[0]));
            return Some(ReadFailure::Unreadable);
        }
        None if !failures.is_empty() => {
            conn.writer.queue_error(&format!(
                "not found on {} of {asked} data nodes; {} could not be read ({}); it may be there",
                asked - failures.len(),
                failures.len(),
                failures[0]
            ));
            return Some(ReadFailure::Unreadable);
        }
        None => conn
            .writer
            .queue_with(|buf| ReadReply::NotFound { what, removed }.encode(buf)),
    }
    None
}

/// Merges the live nodes' scans from `after`: at most `limit` records
/// sent, then `end`. Why its answer ends in an `ERROR`, if it does; Err
/// ends the connection.
async fn tail<S: Stream>(
    conn: &mut Connection<S>,
    shared: &Shared,
    live: Vec<NodeReader>,
    after: Option<MessageId>,
    limit: u32,
    since_ms: Option<u64>,
) -> Result<Option<ReadFailure>, String> {
    let timeout = shared.config.read_timeout;
    let watermark = shared.watermark();
    let mut merge = Merge::new(live.iter().map(|r| r.node.clone()).collect(), after);
    let mut sent = 0u32;
    let mut examined = 0u32;
    let mut first_failure: Option<String> = None;
    let more = loop {
        match merge.step(&watermark) {
            Step::Refill(which) => {
                for (node, e) in reads::refill(&mut merge, which, &live, SCAN_PAGE, timeout).await {
                    warn!(node = %node, error = %e, "tail goes on without this dataNode (its messages have copies on the others)");
                    first_failure.get_or_insert_with(|| e.to_string());
                }
                if merge.live() == 0 {
                    let why = first_failure.unwrap_or_default();
                    conn.writer
                        .queue_error(&format!("no data node could be read ({why})"));
                    return Ok(Some(ReadFailure::Unreadable));
                }
            }
            Step::Next(record, holders) => {
                examined += 1;
                if since_ms.is_none_or(|since| record.stored_ms >= since) {
                    conn.writer
                        .queue_with(|buf| ReadReply::encode_found(&record, &holders, buf));
                    sent += 1;
                    if conn.writer.pending() >= FLUSH_AT {
                        flush(conn, shared).await?;
                    }
                }
                if sent >= limit || examined >= TAIL_EXAMINE {
                    break true;
                }
            }
            Step::Done => break false,
        }
    };
    conn.writer.queue_with(|buf| {
        ReadReply::End {
            count: sent,
            cursor: merge.last(),
            more,
        }
        .encode(buf)
    });
    Ok(None)
}
