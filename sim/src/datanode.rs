//! A model of a data node, exact at the protocol level.
//!
//! The real data node (`datanode` crate) keeps its data path on a blocking
//! std thread with std sockets; a simulated network drives only async
//! sockets on its own runtime, so the real node cannot run here. This model
//! does what the head node can observe of one:
//!
//! - registers with `dataNode id=.. incarnation=.. nonce=..`, checks the
//!   head node's proof of the cluster token and answers with its own;
//! - refuses a head node whose epoch is older than the newest it has seen
//!   (kept on its [`Disk`]), and after `welcome` reports the keys it holds
//!   (`held`), the last `members` list (`peers`) and `ready`;
//! - writes each `mensaje <id> [<key>]: <text>` of a batch to its [`Disk`],
//!   syncs once, and only then answers `recibido <id>` (group commit); a
//!   key it holds is answered `recibido <id>` or `recibido <id> <held>`
//!   without a write, and a key repeated in a batch is written once;
//! - drops a message withdrawn before its batch is written, answering
//!   `withdrawn <id>` in its place;
//! - answers `ping <n>` with `pong <n>` in order, so after everything
//!   received before it is durable;
//! - reconnects with jittered backoff after losing the head node, and takes
//!   a higher incarnation on every start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::auth::{ClusterToken, Exchange, Nonce};
use protocol::connection::Connection;
use protocol::datanode::{DataNodeHello, FromDataNode, HELD_PER_LINE, STALE_HEAD, ToDataNode};
use protocol::handshake;
use protocol::ids::{MessageId, MessageKey, NodeId};
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

/// What one life of the node keeps between its sessions.
#[derive(Default)]
struct Life {
    /// The last `members` list, for the next report.
    peers: Option<Vec<NodeId>>,
}

impl DataNodeModel {
    /// One life of the node's process: runs until the host is crashed.
    pub async fn run(self: Arc<Self>) -> turmoil::Result {
        let incarnation = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        let mut rng = SmallRng::seed_from_u64(self.seed ^ incarnation.rotate_left(32));
        self.trace
            .record(format!("{} starts, incarnation {incarnation}", self.id));
        let mut backoff = BACKOFF.0;
        let life = Mutex::new(Life::default());
        loop {
            match self.session(incarnation, &mut rng, &life).await {
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
    async fn session(
        &self,
        incarnation: u64,
        rng: &mut SmallRng,
        life: &Mutex<Life>,
    ) -> Result<(), String> {
        let stream = SimStream::connect(&self.head)
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        let mut conn = Connection::connect(stream, MAX_LINE).map_err(|e| e.to_string())?;
        let node_nonce = Nonce::from_rng(rng);
        let hello = DataNodeHello {
            node_id: Some(self.id.parse().map_err(|e| format!("{e}"))?),
            incarnation: Some(incarnation),
            nonce: Some(node_nonce),
            zone: None,
            store: None,
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
        let Ok(ToDataNode::Welcome { node, epoch }) = ToDataNode::parse(&welcome) else {
            return Err(format!("not welcomed: {welcome}"));
        };
        if node.as_str() != self.id {
            return Err(format!("not welcomed: {welcome}"));
        }
        let newest = self.disk.epoch();
        if epoch < newest {
            let reason = format!("{STALE_HEAD}: epoch {epoch} is older than {newest}");
            conn.writer
                .queue_with(|buf| FromDataNode::Error(reason.clone()).encode(buf));
            let _ = conn.writer.flush().await;
            return Err(reason);
        }
        self.disk.raise_epoch(epoch);
        self.trace.record(format!("{} welcomed", self.id));
        let peers = life.lock().map(|l| l.peers.clone()).unwrap_or_default();
        for line in report(&self.disk.durable(), peers) {
            conn.writer.queue_with(|buf| line.encode(buf));
        }
        conn.writer.flush().await.map_err(|e| e.to_string())?;
        let lost = self.serve(&mut conn, life).await;
        self.trace
            .record(format!("{} lost the head node: {lost}", self.id));
        Ok(())
    }

    /// Stores and answers until the connection is lost; returns why.
    async fn serve(&self, conn: &mut Connection<SimStream>, life: &Mutex<Life>) -> String {
        // Keys written and synced, rebuilt from the disk like `data.txt`.
        let mut held: HashMap<MessageKey, MessageId> = HashMap::new();
        for record in self.disk.durable() {
            if let Some(key) = record.key {
                held.entry(key).or_insert(record.id);
            }
        }
        // Lines read but left for the next batch, behind a repeated key.
        let mut pending: Vec<String> = Vec::new();
        loop {
            let mut batch = std::mem::take(&mut pending);
            if batch.is_empty() {
                match read_line(conn, HEAD_SILENT).await {
                    Ok(line) => batch.push(line),
                    Err(why) => return why,
                }
            }
            while batch.len() < BATCH {
                match conn.reader.next_buffered() {
                    Ok(Some(line)) => batch.push(line.as_str().to_owned()),
                    Ok(None) => break,
                    Err(e) => return e.to_string(),
                }
            }
            let mut answers = Vec::with_capacity(batch.len());
            let mut staged: Vec<Staged> = Vec::new();
            let mut handled = 0;
            for line in &batch {
                match ToDataNode::parse(line) {
                    Ok(ToDataNode::Store {
                        id: Some(id),
                        key,
                        text,
                    }) => {
                        let key = key.map(|k| k.to_key());
                        match key.as_ref().and_then(|k| held.get(k)) {
                            Some(&first) if first == id => {
                                answers.push(FromDataNode::Stored(Some(id)))
                            }
                            Some(&first) => {
                                answers.push(FromDataNode::AlreadyHeld { id, held: first })
                            }
                            // Staged in this batch: decided after its commit.
                            None if key.is_some() && staged.iter().any(|s| s.key == key) => break,
                            None => {
                                staged.push(Staged {
                                    id,
                                    key,
                                    text: text.to_owned(),
                                    answer: answers.len(),
                                });
                                answers.push(FromDataNode::Stored(Some(id)));
                            }
                        }
                    }
                    Ok(ToDataNode::Withdraw(id)) => {
                        if let Some(at) = staged.iter().rposition(|s| s.id == id) {
                            let withdrawn = staged.remove(at);
                            answers[withdrawn.answer] = FromDataNode::Withdrawn(id);
                        }
                    }
                    Ok(ToDataNode::Members(nodes)) => {
                        if let Ok(mut life) = life.lock() {
                            life.peers = Some(nodes);
                        }
                    }
                    Ok(ToDataNode::Ping(n)) => answers.push(FromDataNode::Pong(n)),
                    Ok(ToDataNode::Bye) => return "told to leave".into(),
                    Ok(ToDataNode::Error(reason)) => return format!("head node error: {reason}"),
                    Ok(other) => return format!("unexpected {other:?}"),
                    Err(e) => return format!("unparsable line: {e}"),
                }
                handled += 1;
            }
            pending = batch.split_off(handled);
            for message in &staged {
                self.disk
                    .write(message.id, message.key.clone(), &message.text);
            }
            if !staged.is_empty() {
                self.disk.fsync().await;
            }
            for message in staged {
                if let Some(key) = message.key {
                    held.entry(key).or_insert(message.id);
                }
            }
            conn.writer
                .queue_lines(|buf| FromDataNode::encode_answers(answers, buf));
            if let Err(e) = conn.writer.flush().await {
                return format!("write failed: {e}");
            }
        }
    }
}

/// A message of the batch being handled, written at its commit unless
/// withdrawn first.
struct Staged {
    id: MessageId,
    key: Option<MessageKey>,
    text: String,
    /// Its place among the batch's answers.
    answer: usize,
}

/// The report after `welcome`: the keys on the disk (`held`, grouped by
/// client, at most [`HELD_PER_LINE`] a line), the last members list
/// (`peers`), `ready`.
fn report(records: &[crate::disk::Record], peers: Option<Vec<NodeId>>) -> Vec<FromDataNode> {
    let mut first: HashMap<&MessageKey, MessageId> = HashMap::new();
    for record in records {
        if let Some(key) = &record.key {
            first.entry(key).or_insert(record.id);
        }
    }
    let mut keys: Vec<(MessageKey, MessageId)> =
        first.into_iter().map(|(k, id)| (k.clone(), id)).collect();
    keys.sort();
    let mut lines = Vec::new();
    for group in keys.chunk_by(|a, b| a.0.client == b.0.client) {
        for chunk in group.chunks(HELD_PER_LINE) {
            lines.push(FromDataNode::Held {
                client: chunk[0].0.client.clone(),
                keys: chunk.iter().map(|(k, id)| (k.seq, *id)).collect(),
            });
        }
    }
    if let Some(peers) = peers {
        lines.push(FromDataNode::Peers(peers));
    }
    lines.push(FromDataNode::Ready);
    lines
}

async fn read_line(conn: &mut Connection<SimStream>, limit: Duration) -> Result<String, String> {
    match tokio::time::timeout(limit, conn.reader.read_frame()).await {
        Ok(Ok(Some(line))) => Ok(line.as_str().to_owned()),
        Ok(Ok(None)) => Err("closed by the head node".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("head node silent for {limit:?}")),
    }
}
