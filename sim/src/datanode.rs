//! A model of a data node, exact at the protocol level.
//!
//! The real data node (`datanode` crate) keeps its data path on a blocking
//! std thread with std sockets; a simulated network drives only async
//! sockets on its own runtime, so the real node cannot run here. This model
//! does what the head node can observe of one:
//!
//! - registers with `dataNode id=.. incarnation=.. nonce=..`, checks the
//!   head node's proof of the cluster token and answers with its own;
//! - writes each `mensaje <id>: <text>` of a batch to its [`Disk`], syncs
//!   once, and only then answers `recibido <id>` (group commit);
//! - answers `ping <n>` with `pong <n>` in order, so after everything
//!   received before it is durable;
//! - reconnects with jittered backoff after losing the head node, and takes
//!   a higher incarnation on every start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::auth::{ClusterToken, Exchange, Nonce};
use protocol::connection::Connection;
use protocol::handshake;
use protocol::message::{DataNodeHello, FromDataNode, ToDataNode};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::disk::Disk;
use crate::net::SimStream;
use crate::trace::Trace;

/// Longest line the model reads.
const MAX_LINE: usize = 1 << 16;
/// Time allowed for each registration step.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// The head node pings every second; this much silence means the
/// connection is dead (a partition can break it without a close).
const HEAD_SILENT: Duration = Duration::from_secs(5);
/// First and longest pause between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// Lines handled per fsync at most.
const BATCH: usize = 256;

/// One data node of the simulation.
pub struct DataNodeModel {
    /// Its id, `dn1` and so on.
    pub id: String,
    /// Where the head node listens (`head:7000`).
    pub head: String,
    /// The cluster token.
    pub token: ClusterToken,
    /// Its disk, shared with the scenario.
    pub disk: Disk,
    /// Starts so far; the incarnation of the running process.
    pub starts: Arc<AtomicU64>,
    /// Seed of its jitter and nonces.
    pub seed: u64,
    /// Where it records what it sees.
    pub trace: Trace,
}

impl DataNodeModel {
    /// One life of the node's process: runs until the host is crashed.
    pub async fn run(self: Arc<Self>) -> turmoil::Result {
        let incarnation = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        let mut rng = SmallRng::seed_from_u64(self.seed ^ incarnation.rotate_left(32));
        self.trace
            .record(format!("{} starts, incarnation {incarnation}", self.id));
        let mut backoff = BACKOFF.0;
        loop {
            match self.session(incarnation, &mut rng).await {
                Ok(()) => backoff = BACKOFF.0,
                Err(why) => self.trace.record(format!("{}: {why}", self.id)),
            }
            let pause = backoff / 2 + backoff.mul_f64(rng.random::<f64>() / 2.0);
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// One connection to the head node. `Ok` once it was welcomed and then
    /// lost; `Err` when registering failed.
    async fn session(&self, incarnation: u64, rng: &mut SmallRng) -> Result<(), String> {
        let stream = SimStream::connect(&self.head)
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        let mut conn = Connection::connect(stream, MAX_LINE).map_err(|e| e.to_string())?;
        let node_nonce = Nonce::from_rng(rng);
        let hello = DataNodeHello {
            node_id: Some(self.id.parse().map_err(|e| format!("{e}"))?),
            incarnation: Some(incarnation),
            nonce: Some(node_nonce),
        };
        handshake::initiate(
            &mut conn.reader,
            &mut conn.writer,
            Some(&hello.to_line()),
            STEP_TIMEOUT,
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
        let challenge = read_line(&mut conn, STEP_TIMEOUT).await?;
        let Ok(ToDataNode::Challenge { nonce, proof }) = ToDataNode::parse(&challenge) else {
            return Err(format!("refused: {challenge}"));
        };
        let exchange = Exchange {
            node_id: &self.id,
            incarnation,
            node_nonce: &node_nonce,
            head_nonce: &nonce,
        };
        let Some(ours) = self.token.answer_challenge(&exchange, &proof) else {
            return Err("the head node's proof is wrong".into());
        };
        conn.writer
            .queue_with(|buf| FromDataNode::Proof(ours).encode(buf));
        conn.writer.flush().await.map_err(|e| e.to_string())?;
        let welcome = read_line(&mut conn, STEP_TIMEOUT).await?;
        if welcome != format!("welcome {}", self.id) {
            return Err(format!("not welcomed: {welcome}"));
        }
        self.trace.record(format!("{} welcomed", self.id));
        let lost = self.serve(&mut conn).await;
        self.trace
            .record(format!("{} lost the head node: {lost}", self.id));
        Ok(())
    }

    /// Stores and answers until the connection is lost; returns why.
    async fn serve(&self, conn: &mut Connection<SimStream>) -> String {
        loop {
            let first = match read_line(conn, HEAD_SILENT).await {
                Ok(line) => line,
                Err(why) => return why,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match conn.reader.next_buffered() {
                    Ok(Some(line)) => batch.push(line.as_str().to_owned()),
                    Ok(None) => break,
                    Err(e) => return e.to_string(),
                }
            }
            let mut answers = Vec::with_capacity(batch.len());
            let mut wrote = false;
            for line in &batch {
                match ToDataNode::parse(line) {
                    Ok(ToDataNode::Store { id: Some(id), text }) => {
                        self.disk.write(id, text);
                        wrote = true;
                        answers.push(FromDataNode::Stored(Some(id)));
                    }
                    Ok(ToDataNode::Ping(n)) => answers.push(FromDataNode::Pong(n)),
                    Ok(ToDataNode::Bye) => return "told to leave".into(),
                    Ok(ToDataNode::Error(reason)) => return format!("head node error: {reason}"),
                    Ok(other) => return format!("unexpected {other:?}"),
                    Err(e) => return format!("unparsable line: {e}"),
                }
            }
            if wrote {
                self.disk.fsync().await;
            }
            for answer in &answers {
                conn.writer.queue_with(|buf| answer.encode(buf));
            }
            if let Err(e) = conn.writer.flush().await {
                return format!("write failed: {e}");
            }
        }
    }
}

async fn read_line(conn: &mut Connection<SimStream>, limit: Duration) -> Result<String, String> {
    match tokio::time::timeout(limit, conn.reader.read_frame()).await {
        Ok(Ok(Some(line))) => Ok(line.as_str().to_owned()),
        Ok(Ok(None)) => Err("closed by the head node".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("head node silent for {limit:?}")),
    }
}
