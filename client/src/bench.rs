//! `client bench`: load generator. N connections, K messages in flight on
//! each, for a count or a duration; latency from an HDR histogram. Every
//! reply is checked: a stored-ack for the head node, the exact text for the
//! echo server, the asked message's `found` line for reads. A run with
//! errors is a failed run.
//!
//! Against the head node each connection announces its own client id,
//! `<client-id>.<N>` (N from 1), and keys its messages `1`, `2`, ... To
//! measure reads, each connection is a reader (`lector`) that asks `get
//! <id>` for ids read first with one `tail` ([`READ_IDS`] of the oldest
//! stored messages), in turn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use protocol::client::{StoreReply, encode_keyed_message};
use protocol::handshake::{ROLE_CLIENT, ROLE_READER};
use protocol::ids::{ClientId, MessageId, put_u64};
use rand::RngExt;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use crate::session::{self, ClientError, ConnectOptions};

/// What is being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchTarget {
    /// The head node: each message must be acknowledged as stored.
    Store,
    /// The echo server: each reply must equal the message (the loopback floor).
    Echo,
    /// The head node's reads: `get <id>` of messages already stored, each
    /// reply must be that message's `found` line (at most
    /// [`MAX_READ_PIPELINE`] in flight per connection).
    Get,
}

/// Requests in flight on one reader connection at most: the head node
/// takes 16 from a reader at a time and refuses the rest.
pub const MAX_READ_PIPELINE: usize = 16;
/// Ids a read run asks for, in turn: the oldest stored messages.
pub const READ_IDS: u32 = 1000;

/// When the run ends.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// After this many messages in all.
    Count(u64),
    /// After this long (plus the warm-up).
    Duration(Duration),
}

/// The text of each message.
#[derive(Debug, Clone)]
pub enum Payload {
    /// `numero random: N`, N uniform in 0..=100, as the original client sends.
    Seed,
    /// The same text every time.
    Fixed(Bytes),
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Where to connect.
    pub connect: ConnectOptions,
    /// Client id the connections' ids are made from; `None` picks a random one.
    pub client_id: Option<ClientId>,
    /// What is measured.
    pub target: BenchTarget,
    /// Connections at once.
    pub connections: usize,
    /// Messages in flight per connection.
    pub pipeline: usize,
    /// When to stop.
    pub limit: Limit,
    /// What to send.
    pub payload: Payload,
    /// Time at the start whose messages are not measured.
    pub warmup: Duration,
    /// Show a live progress line (on a terminal).
    pub progress: bool,
}

/// The figures of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// `store` or `echo`.
    pub target: &'static str,
    /// Connections used.
    pub connections: usize,
    /// Messages in flight per connection.
    pub pipeline: usize,
    /// Messages measured (after the warm-up).
    pub messages: u64,
    /// Replies that were errors or wrong.
    pub errors: u64,
    /// Measured time.
    pub seconds: f64,
    /// Messages (or reads) per second.
    pub msgs_per_sec: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl BenchReport {
    /// One JSON object, for scripts.
    pub fn to_json(&self) -> String {
        format!(
            concat!(
                "{{\"target\":\"{}\",\"connections\":{},\"pipeline\":{},\"messages\":{},\"errors\":{},",
                "\"seconds\":{:.3},\"msgs_per_sec\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},",
                "\"p999_us\":{},\"max_us\":{}}}"
            ),
            self.target,
            self.connections,
            self.pipeline,
            self.messages,
            self.errors,
            self.seconds,
            self.msgs_per_sec,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} bench: {} connections x {} in flight, {} messages in {:.2}s, {} errors",
            self.target, self.connections, self.pipeline, self.messages, self.seconds, self.errors
        )?;
        writeln!(f, "throughput: {:.0} msgs/s", self.msgs_per_sec)?;
        write!(
            f,
            "latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        )
    }
}

struct Shared {
    /// Messages still to issue (count mode).
    tickets: AtomicU64,
    count_mode: bool,
    stop: AtomicBool,
    completed: AtomicU64,
    errors: AtomicU64,
    measure_from: Instant,
}

/// Runs the benchmark.
pub async fn run(config: BenchConfig) -> Result<BenchReport, ClientError> {
    let connections = config.connections.max(1);
    let pipeline = config.pipeline.max(1);
    if config.target == BenchTarget::Get && pipeline > MAX_READ_PIPELINE {
        return Err(ClientError::Config(format!(
            "a reader may have at most {MAX_READ_PIPELINE} requests in flight, not {pipeline}"
        )));
    }
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(crate::reply::random_client_id);
    let mut conns = Vec::with_capacity(connections);
    for n in 1..=connections {
        let mut connect = config.connect.clone();
        connect.role = match config.target {
            BenchTarget::Store => {
                let id = connection_id(&client_id, n)?;
                Some(format!("{ROLE_CLIENT} id={id}"))
            }
            BenchTarget::Echo => None,
            BenchTarget::Get => Some(ROLE_READER.to_owned()),
        };
        conns.push(session::connect(&connect).await?);
    }
    let ids: Arc<[MessageId]> = match config.target {
        BenchTarget::Get => read_ids(&mut conns[0], &config.connect.server)
            .await?
            .into(),
        BenchTarget::Store | BenchTarget::Echo => Arc::from([]),
    };
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let (tickets, count_mode) = match config.limit {
        Limit::Count(n) => (n, true),
        Limit::Duration(_) => (u64::MAX, false),
    };
    let shared = Arc::new(Shared {
        tickets: AtomicU64::new(tickets),
        count_mode,
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        measure_from,
    });
    let mut tasks = Vec::with_capacity(connections);
    for (n, conn) in conns.into_iter().enumerate() {
        let shared = shared.clone();
        let payload = config.payload.clone();
        let target = config.target;
        // Each connection starts at its own place in the ids.
        let reads = Reads {
            ids: ids.clone(),
            next: n * 7919,
        };
        tasks.push(tokio::spawn(drive(
            conn, shared, payload, target, pipeline, reads,
        )));
    }
    let progress = config
        .progress
        .then(|| spawn_progress(shared.clone(), config.limit));
    if let Limit::Duration(duration) = config.limit {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from + duration).await;
            shared.stop.store(true, Ordering::Relaxed);
        });
    }
    let mut histogram = new_histogram();
    let mut measured_until = measure_from;
    for task in tasks {
        let (local, last) = task.await.map_err(|e| ClientError::Protocol {
            server: config.connect.server.clone(),
            reason: format!("bench task failed: {e}"),
        })?;
        let _ = histogram.add(&local);
        measured_until = measured_until.max(last);
    }
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    let seconds = measured_until
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let messages = histogram.len();
    Ok(BenchReport {
        target: match config.target {
            BenchTarget::Store => "store",
            BenchTarget::Echo => "echo",
            BenchTarget::Get => "get",
        },
        connections,
        pipeline,
        messages,
        errors: shared.errors.load(Ordering::Relaxed),
        seconds,
        msgs_per_sec: if seconds > 0.0 {
            messages as f64 / seconds
        } else {
            0.0
        },
        p50_us: histogram.value_at_quantile(0.50),
        p90_us: histogram.value_at_quantile(0.90),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
    })
}

/// The ids a read run asks for, read on its first connection.
async fn read_ids(
    conn: &mut protocol::Connection,
    server: &str,
) -> Result<Vec<MessageId>, ClientError> {
    let failed = |reason: String| ClientError::Protocol {
        server: server.to_owned(),
        reason,
    };
    let ids = crate::read::first_ids(conn, READ_IDS)
        .await
        .map_err(|e| failed(format!("cannot read the ids to get: {e}")))?;
    if ids.is_empty() {
        return Err(failed(
            "nothing to read back yet: store some messages first".into(),
        ));
    }
    Ok(ids)
}

/// The ids a reader asks for, in turn, and where it is among them.
struct Reads {
    ids: Arc<[MessageId]>,
    next: usize,
}

impl Reads {
    fn next_id(&mut self) -> MessageId {
        let id = self.ids[self.next % self.ids.len()];
        self.next = self.next.wrapping_add(1);
        id
    }
}

/// The client id of connection `n`: `<client-id>.<n>`.
pub fn connection_id(client_id: &ClientId, n: usize) -> Result<ClientId, ClientError> {
    format!("{client_id}.{n}").parse().map_err(|e| {
        ClientError::Config(format!(
            "client id {client_id} is too long for per-connection ids: {e}"
        ))
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant figures; the bounds are valid constants.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Shared {
    fn take_ticket(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if !self.count_mode {
            return true;
        }
        self.tickets
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// One connection's loop. Returns its histogram and when its last measured reply came.
async fn drive(
    mut conn: protocol::Connection,
    shared: Arc<Shared>,
    payload: Payload,
    target: BenchTarget,
    pipeline: usize,
    mut reads: Reads,
) -> (Histogram<u64>, Instant) {
    let mut histogram = new_histogram();
    let mut rng: SmallRng = rand::make_rng();
    // Send time and, for the echo target, the text to compare.
    let mut in_flight: VecDeque<(Instant, Option<Bytes>)> = VecDeque::with_capacity(pipeline);
    let mut text = BytesMut::new();
    let mut line = BytesMut::new();
    let mut seq = 0u64;
    let mut last = shared.measure_from;
    let mut exhausted = false;
    let mut queued_at: Option<Instant> = None;
    loop {
        while !exhausted && in_flight.len() < pipeline {
            if !shared.take_ticket() {
                exhausted = true;
                break;
            }
            text.clear();
            let expected = match target {
                BenchTarget::Store | BenchTarget::Echo => {
                    match &payload {
                        Payload::Seed => {
                            text.extend_from_slice(b"numero random: ");
                            put_u64(&mut text, rng.random_range(0..=100u64));
                        }
                        Payload::Fixed(fixed) => text.extend_from_slice(fixed),
                    }
                    if target == BenchTarget::Store {
                        seq += 1;
                        line.clear();
                        encode_keyed_message(seq, &text, &mut line);
                        conn.writer.queue(&line);
                        None
                    } else {
                        conn.writer.queue(&text);
                        Some(Bytes::copy_from_slice(&text))
                    }
                }
                BenchTarget::Get => {
                    // `get <id>`, answered `found <id> ...`.
                    let id = reads.next_id();
                    text.extend_from_slice(b"get ");
                    id.put(&mut text);
                    conn.writer.queue(&text);
                    line.clear();
                    line.extend_from_slice(b"found ");
                    id.put(&mut line);
                    line.extend_from_slice(b" ");
                    Some(Bytes::copy_from_slice(&line))
                }
            };
            // Every message queued in this turn leaves with the same flush.
            let sent = *queued_at.get_or_insert_with(Instant::now);
            in_flight.push_back((sent, expected));
        }
        queued_at = None;
        if in_flight.is_empty() {
            return (histogram, last);
        }
        if conn.writer.flush().await.is_err() {
            shared
                .errors
                .fetch_add(in_flight.len() as u64, Ordering::Relaxed);
            return (histogram, last);
        }
        let mut line = match conn.reader.read_frame().await {
            Ok(Some(line)) => Some(line),
            _ => {
                shared
                    .errors
                    .fetch_add(in_flight.len() as u64, Ordering::Relaxed);
                return (histogram, last);
            }
        };
        let now = Instant::now();
        let mut completed = 0;
        while let Some(reply) = line {
            let Some((sent, expected)) = in_flight.pop_front() else {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let ok = match target {
                BenchTarget::Store => StoreReply::stored_id(reply.as_str()).is_some(),
                BenchTarget::Echo => expected.is_some_and(|e| e == reply.bytes()),
                BenchTarget::Get => expected.is_some_and(|e| reply.bytes().starts_with(&e)),
            };
            if !ok {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            } else if sent >= shared.measure_from {
                let micros = now.saturating_duration_since(sent).as_micros() as u64;
                let _ = histogram.record(micros.max(1));
                last = now;
            }
            completed += 1;
            line = conn.reader.next_buffered().ok().flatten();
        }
        shared.completed.fetch_add(completed, Ordering::Relaxed);
    }
}

fn spawn_progress(shared: Arc<Shared>, limit: Limit) -> tokio::task::JoinHandle<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = match limit {
        Limit::Count(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} messages  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        Limit::Duration(_) => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed} {pos} messages  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        let mut previous = 0;
        loop {
            ticker.tick().await;
            let done = shared.completed.load(Ordering::Relaxed);
            bar.set_position(done);
            bar.set_message(format!(
                "{} msgs/s, {} errors",
                (done - previous) * 4,
                shared.errors.load(Ordering::Relaxed)
            ));
            previous = done;
            if shared.stop.load(Ordering::Relaxed) {
                bar.finish_and_clear();
                return;
            }
        }
    })
}

/// `client idle`: opens `connections` client connections and holds them,
/// for measuring the head node's memory per idle client.
pub async fn hold_idle(
    connect: ConnectOptions,
    connections: usize,
    hold: Duration,
) -> Result<usize, ClientError> {
    let mut connect = connect;
    connect.role = Some(ROLE_CLIENT.to_owned());
    let mut open = Vec::with_capacity(connections);
    // A few hundred handshakes at a time: fast, without a SYN flood.
    for chunk in (0..connections).collect::<Vec<_>>().chunks(256) {
        let mut batch = Vec::with_capacity(chunk.len());
        for _ in chunk {
            let connect = connect.clone();
            batch.push(tokio::spawn(
                async move { session::connect(&connect).await },
            ));
        }
        for task in batch {
            match task.await {
                Ok(Ok(conn)) => open.push(conn),
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(ClientError::Protocol {
                        server: connect.server.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    println!("READY {}", open.len());
    tokio::time::sleep(hold).await;
    Ok(open.len())
}
