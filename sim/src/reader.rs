//! A reader that tails, as `client tail -f` does: asks for the next stored
//! messages after its cursor, prints each `found` line's id and moves its
//! cursor past it, then to the answer's `end`, and polls again after
//! `done`. It reconnects (keeping its cursor) when it loses the head node,
//! and asks again after an error (`ERROR incomplete: ...` among them: the
//! head node could not prove nothing lies past its last `found`). It stops once every client is done
//! and a `done` answer came [`SETTLE`] after that, so everything
//! acknowledged has had time to settle; the checks then want every
//! acknowledged id printed once, in id order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::connection::Connection;
use protocol::handshake;
use protocol::ids::MessageId;
use protocol::reader::ReadReply;
use tokio::time::Instant;

use crate::client::ClientReport;
use crate::heads::Target;
use crate::net::SimStream;
use crate::trace::Trace;

/// Longest answer line.
const MAX_LINE: usize = 1 << 16;
/// Records asked for per request.
const LIMIT: u32 = 100;
/// No answer line for this long: the connection is taken as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between polls after `done`, and before retrying after an error.
const POLL: Duration = Duration::from_millis(250);
/// After the last client is done, how long a `done` must wait to end the
/// reader: above the head node's tail lag (its `--ack-timeout` plus
/// `--no-node-wait` by default), so every acknowledged message has settled.
pub const SETTLE: Duration = Duration::from_secs(8);

/// One tailing reader of the simulation.
pub struct ReaderModel {
    /// Its number; its host is `r<id>`.
    pub id: u32,
    /// The head node it connects to.
    pub target: Target,
    /// The clients, to know when they are all done.
    pub clients: Vec<Arc<Mutex<ClientReport>>>,
    /// The ids printed, in order.
    pub printed: Arc<Mutex<Vec<MessageId>>>,
    /// Where it records what it sees.
    pub trace: Trace,
}

impl ReaderModel {
    /// Tails until the clients are done and everything has settled.
    pub async fn run(self: Arc<Self>) -> turmoil::Result {
        let mut cursor: Option<MessageId> = None;
        let mut clients_done_at: Option<Instant> = None;
        loop {
            match self.session(&mut cursor, &mut clients_done_at).await {
                Ok(()) => {
                    self.trace.record(format!(
                        "r{} done, {} printed",
                        self.id,
                        self.printed().len()
                    ));
                    return Ok(());
                }
                Err(why) => {
                    self.trace
                        .record(format!("r{} lost its connection ({why})", self.id));
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    /// One connection: requests until the reader may stop (`Ok`) or the
    /// connection is lost (`Err`).
    async fn session(
        &self,
        cursor: &mut Option<MessageId>,
        clients_done_at: &mut Option<Instant>,
    ) -> Result<(), String> {
        let stream = SimStream::connect(&self.target.addr())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut conn = Connection::connect(stream, MAX_LINE).map_err(|e| e.to_string())?;
        handshake::initiate(
            &mut conn.reader,
            &mut conn.writer,
            Some("lector"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
        loop {
            if clients_done_at.is_none() && self.clients_done() {
                *clients_done_at = Some(Instant::now());
            }
            let asked_at = Instant::now();
            let after = cursor.map_or_else(|| "start".to_owned(), |id| id.to_string());
            conn.writer
                .queue(format!("tail {after} {LIMIT}").as_bytes());
            conn.writer
                .flush()
                .await
                .map_err(|e| format!("write: {e}"))?;
            let more = loop {
                let line =
                    match tokio::time::timeout(ANSWER_TIMEOUT, conn.reader.read_frame()).await {
                        Ok(Ok(Some(line))) => line.as_str().to_owned(),
                        Ok(Ok(None)) => return Err("closed by the head node".into()),
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => return Err(format!("no answer for {ANSWER_TIMEOUT:?}")),
                    };
                match ReadReply::parse(&line) {
                    Ok(ReadReply::Found { record, .. }) => {
                        // Printed: the next request asks after it, whatever
                        // ends this answer (`client tail` does the same).
                        self.printed_one(record.id);
                        *cursor = Some(record.id);
                    }
                    Ok(ReadReply::End {
                        cursor: next, more, ..
                    }) => {
                        if next.is_some() {
                            *cursor = next;
                        }
                        break Some(more);
                    }
                    Ok(ReadReply::Error(reason)) => {
                        self.trace.record(format!("r{} <- ERROR {reason}", self.id));
                        break None;
                    }
                    Ok(other) => {
                        self.trace
                            .record(format!("r{} <- unexpected {other:?}", self.id));
                        break None;
                    }
                    Err(e) => {
                        self.trace
                            .record(format!("r{} <- unparsable {line:?}: {e}", self.id));
                        break None;
                    }
                }
            };
            match more {
                Some(true) => {}
                Some(false) => {
                    if clients_done_at.is_some_and(|done| asked_at >= done + SETTLE) {
                        return Ok(());
                    }
                    tokio::time::sleep(POLL).await;
                }
                None => tokio::time::sleep(POLL).await,
            }
        }
    }

    fn printed_one(&self, id: MessageId) {
        self.printed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
    }

    fn printed(&self) -> Vec<MessageId> {
        self.printed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.lock().unwrap_or_else(|p| p.into_inner()).done)
    }
}
