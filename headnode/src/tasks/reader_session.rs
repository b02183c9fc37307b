//! One task per reader (`lector`): reads one request per line and answers
//! it from the live data nodes, before the next request's answer.
//!
//! - `get <id>` / `get <client-id>/<seq>` asks every live data node and
//!   names those that hold it;
//! - `tail <after>|start <limit> [since=<ms>]` merges the nodes' scans in
//!   id order (see `tail`).
//!
//! No reader is read until the head node has recovered (see `recovery`):
//! before the data nodes of the member set have reported, a `get` could
//! miss a message only they hold and answer `notfound`.
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
use protocol::{Line, ReadError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::reads::{Coverage, GetResult, NodeRead, NodeReader};
use crate::state::router::Routes;
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
    conn: Connection<S>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut session = ReaderSession {
        conn,
        shared,
        requests: Vec::with_capacity(READER_QUEUE),
    };
    let reason = match session.serve(&stop).await {
        Ended::Closed => "closed".to_owned(),
        Ended::Failed(why) => why,
    };
    info!(reason, "lector disconnected");
}

/// One reader's session: its connection, and the requests taken from it
/// and not yet answered.
struct ReaderSession<S: Stream> {
    conn: Connection<S>,
    shared: Arc<Shared>,
    /// Requests read, in order, at most [`READER_QUEUE`]: each parsed, or
    /// why it is not a request.
    requests: Vec<Result<ReadRequest, String>>,
}

impl<S: Stream> ReaderSession<S> {
    /// Reads requests and answers them in order, until the reader leaves,
    /// idles, fails, or the head node stops.
    async fn serve(&mut self, stop: &CancellationToken) -> Ended {
        let idle = self.shared.config.client_idle_timeout;
        let recovered = self.shared.recovered.clone();
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ended::Closed,
            () = recovered.opened() => {}
        }
        loop {
            let frame = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ended::Closed,
                frame = tokio::time::timeout(idle, self.conn.reader.read_frame()) => frame,
            };
            let Ok(frame) = frame else {
                self.conn
                    .close_with_error(&format!("idle for {idle:?}; closing"))
                    .await;
                return Ended::Failed(format!("idle for {idle:?}"));
            };
            let refused = match self.take_requests(frame).await {
                Ok(refused) => refused,
                Err(ended) => return ended,
            };
            if let Err(why) = self.on_requests(refused).await {
                return Ended::Failed(why);
            }
        }
    }

    /// Takes this line, and those already buffered behind it, up to the
    /// bound; how many lines beyond it were refused.
    async fn take_requests(
        &mut self,
        mut frame: Result<Option<Line>, ReadError>,
    ) -> Result<u64, Ended> {
        let mut refused = 0u64;
        loop {
            let room = self.requests.len() < READER_QUEUE;
            match frame {
                Ok(None) => {
                    if self.requests.is_empty() && refused == 0 {
                        return Err(Ended::Closed);
                    }
                    break;
                }
                Ok(Some(line)) if room => {
                    let request = ReadRequest::parse(line.as_str()).map_err(|e| e.to_string());
                    self.requests.push(request);
                }
                Ok(Some(_)) => refused += 1,
                Err(e) if e.is_fatal() => {
                    self.conn.close_with_error(&e).await;
                    return Err(Ended::Failed(e.to_string()));
                }
                Err(e) if room => self.requests.push(Err(e.to_string())),
                Err(_) => refused += 1,
            }
            frame = match self.conn.reader.next_buffered() {
                Ok(None) => break,
                next => next,
            };
        }
        Ok(refused)
    }

    /// Answers the requests taken, in order, then refuses `refused` more;
    /// Err ends the connection.
    async fn on_requests(&mut self, refused: u64) -> Result<(), String> {
        let mut requests = std::mem::take(&mut self.requests);
        for request in requests.drain(..) {
            match request {
                Ok(request) => self.answer(&request).await?,
                Err(reason) => {
                    debug!(reason, "bad request from lector");
                    self.shared.status.reads.refused(ReadFailure::BadRequest);
                    self.conn.writer.queue_error(&reason);
                }
            }
        }
        self.requests = requests;
        for _ in 0..refused {
            self.shared
                .status
                .reads
                .refused(ReadFailure::TooManyInFlight);
            self.conn.writer.queue_error(&format!(
                "too many requests in flight (at most {READER_QUEUE} per reader); this one was not served"
            ));
            if self.conn.writer.pending() >= FLUSH_AT {
                self.flush().await?;
            }
        }
        if refused > 0 {
            warn!(
                refused,
                "lector sent more requests at once than are served; refused the rest"
            );
        }
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), String> {
        match tokio::time::timeout(self.shared.config.write_timeout, self.conn.writer.flush()).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err(format!(
                "it took none of our bytes for {:?}",
                self.shared.config.write_timeout
            )),
        }
    }

    /// Serves one request, counted and timed in the read metrics; Err ends
    /// the connection.
    async fn answer(&mut self, request: &ReadRequest) -> Result<(), String> {
        let started = Instant::now();
        let kind = match request {
            ReadRequest::Get(_) => ReadKind::Get,
            ReadRequest::GetKey(_) => ReadKind::GetKey,
            ReadRequest::Tail { .. } => ReadKind::Tail,
        };
        let failure = self.respond(request).await?;
        self.shared
            .status
            .reads
            .answered(kind, failure, started.elapsed());
        Ok(())
    }

    /// Queues the answer to one request; why it is an `ERROR`, if it is.
    async fn respond(&mut self, request: &ReadRequest) -> Result<Option<ReadFailure>, String> {
        // Its own handle on the budget: the permit is held while the
        // session writes the answer.
        let shared = self.shared.clone();
        let budget = &shared.read_budget;
        let Ok(Ok(_permit)) = tokio::time::timeout(BUDGET_WAIT, budget_permit(budget)).await else {
            self.conn.writer.queue_error(&format!(
                "head node busy: {} reads at once; try again",
                self.shared.config.max_reads
            ));
            return Ok(Some(ReadFailure::Busy));
        };
        let routes = self.shared.router.snapshot();
        let live = routes.readers();
        if live.is_empty() {
            self.conn
                .writer
                .queue_error(&protocol::client::NO_DATA_NODES);
            return Ok(Some(ReadFailure::NoDataNodes));
        }
        let coverage = self.coverage(&routes, &live);
        match request {
            ReadRequest::Get(id) => Ok(self
                .get(live, coverage, NodeRead::Get(*id), id.to_string())
                .await),
            ReadRequest::GetKey(key) => Ok(self
                .get(
                    live,
                    coverage,
                    NodeRead::GetKey(key.clone()),
                    key.to_string(),
                )
                .await),
            ReadRequest::Tail {
                after,
                limit,
                since_ms,
            } => self.tail(live, coverage, *after, *limit, *since_ms).await,
        }
    }

    /// Which members a read of `live` cannot hear from before it starts:
    /// members of the set with no session, and nodes back with a new data
    /// directory that repair has not yet given their share (with one copy
    /// per message there is nothing to give them: they count as they are).
    fn coverage(&self, routes: &Routes, live: &[NodeReader]) -> Coverage {
        let readers = live.iter().map(|r| &r.node);
        let members: Vec<NodeId> = match &routes.member_set {
            Some(set) => set.to_vec(),
            None => live.iter().map(|r| r.node.clone()).collect(),
        };
        let rebuilding: Vec<NodeId> = if self.shared.replication.replicas > 1 {
            routes.rebuilding.iter().map(|(n, _)| n.clone()).collect()
        } else {
            Vec::new()
        };
        Coverage::new(&members, readers, &rebuilding)
    }

    /// Asks every live node for one message; names those that hold it.
    /// `notfound` only when every member answered that it does not hold
    /// it; `ERROR unavailable: ...` when one that could hold it did not
    /// answer. Why its answer is an `ERROR`, if it is.
    async fn get(
        &mut self,
        live: Vec<NodeReader>,
        mut coverage: Coverage,
        read: NodeRead,
        what: String,
    ) -> Option<ReadFailure> {
        let timeout = self.shared.config.read_timeout;
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
                Ok(GetResult::NotFound { removed: r }) => {
                    // A rebuilding node's `removed` is of its new directory:
                    // true all the same (it held the id and removed it).
                    removed |= r;
                }
                Err(e) => {
                    warn!(%node, error = %e, what, "read failed on a dataNode; answering from the others");
                    coverage.failed(&node, &e);
                }
            }
        }
        holders.sort();
        match found {
            Some(record) => self
                .conn
                .writer
                .queue_with(|buf| ReadReply::encode_found(&record, &holders, buf)),
            None if !coverage.whole() => {
                self.conn.writer.queue_error(&ReadReply::unavailable(
                    &coverage.names(),
                    &coverage.to_string(),
                ));
                return Some(ReadFailure::Unreadable);
            }
            None => self
                .conn
                .writer
                .queue_with(|buf| ReadReply::NotFound { what, removed }.encode(buf)),
        }
        None
    }

    /// Merges the live nodes' scans from `after`: at most `limit` records
    /// sent, then `end`. It goes past an id only while fewer than W members
    /// are missing (see [`Coverage`]); otherwise, or once a scan failure
    /// makes them W, it ends with `ERROR incomplete: ...` after what it
    /// sent, and the reader asks again from the last id it got. Why its
    /// answer ends in an `ERROR`, if it does; Err ends the connection.
    async fn tail(
        &mut self,
        live: Vec<NodeReader>,
        mut coverage: Coverage,
        after: Option<MessageId>,
        limit: u32,
        since_ms: Option<u64>,
    ) -> Result<Option<ReadFailure>, String> {
        let timeout = self.shared.config.read_timeout;
        let needed = self.shared.replication.needed;
        if !coverage.proves_acknowledged(needed) {
            self.conn
                .writer
                .queue_error(&ReadReply::incomplete(&format!(
                    "{coverage} could hold messages no other data node has (W={needed}); ask again"
                )));
            return Ok(Some(ReadFailure::Incomplete));
        }
        let watermark = self.shared.watermark();
        let mut merge = Merge::new(live.iter().map(|r| r.node.clone()).collect(), after);
        let mut sent = 0u32;
        let mut examined = 0u32;
        let more = loop {
            match merge.step(&watermark) {
                Step::Refill(which) => {
                    for (node, e) in
                        reads::refill(&mut merge, which, &live, SCAN_PAGE, timeout).await
                    {
                        warn!(node = %node, error = %e, "tail goes on without this dataNode while the others hold a copy of everything acknowledged");
                        coverage.failed(&node, &e);
                    }
                    if !coverage.proves_acknowledged(needed) || merge.live() == 0 {
                        // Nothing past the last id sent: the failed node
                        // gave every id up to it before it failed.
                        self.conn.writer.queue_error(&ReadReply::incomplete(&format!(
                            "{coverage} could hold messages no other data node has (W={needed}); ask again after {}",
                            merge.last().map_or("the start".to_owned(), |id| id.to_string())
                        )));
                        return Ok(Some(ReadFailure::Incomplete));
                    }
                }
                Step::Next(record, holders) => {
                    examined += 1;
                    if since_ms.is_none_or(|since| record.stored_ms >= since) {
                        self.conn
                            .writer
                            .queue_with(|buf| ReadReply::encode_found(&record, &holders, buf));
                        sent += 1;
                        if self.conn.writer.pending() >= FLUSH_AT {
                            self.flush().await?;
                        }
                    }
                    if sent >= limit || examined >= TAIL_EXAMINE {
                        break true;
                    }
                }
                Step::Done => break false,
            }
        };
        self.conn.writer.queue_with(|buf| {
            ReadReply::End {
                count: sent,
                cursor: merge.last(),
                more,
            }
            .encode(buf)
        });
        Ok(None)
    }
}

async fn budget_permit(budget: &Semaphore) -> Result<tokio::sync::SemaphorePermit<'_>, ()> {
    budget.acquire().await.map_err(|_| ())
}
