//! A pipelining client: keeps a window of messages in flight, matches each
//! reply with the oldest unanswered message, resends what was unanswered
//! when its connection drops (as `client store` does), and retries messages
//! the head node could not place (`no data nodes available`, `outcome
//! unknown`) a moment later. A keyed client announces a client id and
//! sends each message under its key, as `client store` does. It connects
//! to the head node its [`Target`] names, and drops its connection when
//! the scenario moves it with a cut (resending what was unanswered to the
//! head node it is moved to).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::client::StoreReply;
use protocol::connection::Connection;
use protocol::handshake;
use protocol::ids::MessageId;
use tokio::time::Instant;

use crate::heads::{HeadRun, Heads, Target};
use crate::net::SimStream;
use crate::trace::Trace;

/// Longest reply line.
const MAX_LINE: usize = 1 << 16;
/// No reply for this long: the connection is taken as lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause before sending again after an error reply or a lost connection.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// One client of the simulation.
pub struct ClientModel {
    /// Its number; its texts are `c<id>-<n>`.
    pub id: u32,
    /// The head node it connects to.
    pub target: Target,
    /// The head-node processes, to tag each answer with the one that gave it.
    pub heads: Heads,
    /// Messages to store.
    pub messages: usize,
    /// Messages in flight at most.
    pub window: usize,
    /// Pause between two sends: the load spreads over the faults.
    pub pace: Duration,
    /// Whether it announces a client id (`cliente id=c<id>`) and sends each
    /// message under its key (`<n + 1> <text>`), so a resend is answered
    /// with the id its first copy got.
    pub keyed: bool,
    /// What it saw.
    pub report: Arc<Mutex<ClientReport>>,
    /// Where it records replies.
    pub trace: Trace,
}

/// What a client saw.
#[derive(Debug, Default, Clone)]
pub struct ClientReport {
    /// Its client id when it is keyed: message `n` goes under key
    /// `<client-id>/<n + 1>`.
    pub client_id: Option<String>,
    /// The text of each message, by number.
    pub texts: Vec<String>,
    /// Acknowledgements, in the order they came.
    pub acks: Vec<Ack>,
    /// Messages sent (resends included).
    pub sent: u64,
    /// Error replies (each one retried).
    pub errors: u64,
    /// Connections lost.
    pub drops: u64,
    /// Messages resent because their connection was lost unanswered.
    pub resent: u64,
    /// Broken promises seen on the wire.
    pub violations: Vec<String>,
    /// Whether every message was acknowledged.
    pub done: bool,
}

/// One `recibido`.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The number of the message it answers.
    pub n: usize,
    /// The data nodes it names.
    pub holders: Vec<String>,
    /// The id it gives.
    pub id: MessageId,
    /// When it was read, in simulated time.
    pub at: Duration,
    /// The head-node process that answered.
    pub head: HeadRun,
}

impl ClientModel {
    /// The texts this client stores.
    pub fn texts(&self) -> Vec<String> {
        (0..self.messages)
            .map(|n| format!("c{}-{n}", self.id))
            .collect()
    }

    /// Runs until every message is acknowledged.
    pub async fn run(self: Arc<Self>) -> turmoil::Result {
        let texts = self.texts();
        self.report().texts = texts.clone();
        let mut to_send: VecDeque<usize> = (0..texts.len()).collect();
        while !to_send.is_empty() {
            let mut in_flight = VecDeque::new();
            let lost = self.connection(&texts, &mut to_send, &mut in_flight).await;
            let Err(why) = lost else { break };
            {
                let mut report = self.report();
                report.drops += 1;
                report.resent += in_flight.len() as u64;
            }
            self.trace.record(format!(
                "c{} lost its connection ({why}); resends {}",
                self.id,
                in_flight.len()
            ));
            while let Some(n) = in_flight.pop_back() {
                to_send.push_front(n);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        self.report().done = true;
        self.trace.record(format!("c{} done", self.id));
        Ok(())
    }

    /// One connection: sends and reads until everything is acknowledged
    /// (`Ok`) or the connection is lost (`Err`, with `in_flight` unanswered).
    async fn connection(
        &self,
        texts: &[String],
        to_send: &mut VecDeque<usize>,
        in_flight: &mut VecDeque<usize>,
    ) -> Result<(), String> {
        let cuts = self.target.cuts();
        let host = self.target.host();
        let stream = SimStream::connect(&self.target.addr())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut conn = Connection::connect(stream, MAX_LINE).map_err(|e| e.to_string())?;
        handshake::initiate(
            &mut conn.reader,
            &mut conn.writer,
            Some(&self.role()),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
        let head = self.heads.current(host);
        let mut pause_until: Option<Instant> = None;
        let mut next_send = Instant::now();
        loop {
            if to_send.is_empty() && in_flight.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if pause_until.is_some_and(|until| now >= until) {
                pause_until = None;
            }
            if pause_until.is_none()
                && now >= next_send
                && in_flight.len() < self.window
                && let Some(n) = to_send.pop_front()
            {
                if self.keyed {
                    conn.writer
                        .queue(format!("{} {}", n + 1, texts[n]).as_bytes());
                } else {
                    conn.writer.queue(texts[n].as_bytes());
                }
                in_flight.push_back(n);
                self.report().sent += 1;
                next_send = now + self.pace;
            }
            conn.writer
                .flush()
                .await
                .map_err(|e| format!("write: {e}"))?;
            let may_send = !to_send.is_empty() && in_flight.len() < self.window;
            let wake = may_send.then(|| pause_until.unwrap_or(next_send).max(next_send));
            let frame = tokio::select! {
                biased;
                _ = self.target.cut_since(cuts) => {
                    return Err("moved to another head node".into());
                }
                frame = tokio::time::timeout(REPLY_TIMEOUT, conn.reader.read_frame()), if !in_flight.is_empty() => frame,
                _ = node_kit::server::sleep_until(wake), if wake.is_some() => continue,
            };
            let line = match frame {
                Ok(Ok(Some(line))) => line.as_str().to_owned(),
                Ok(Ok(None)) => return Err("closed by the head node".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => {
                    // The head node answers or closes; silence is a bug.
                    let why = format!("no reply for {REPLY_TIMEOUT:?}");
                    self.violation(why.clone());
                    return Err(why);
                }
            };
            let Some(n) = in_flight.pop_front() else {
                self.violation(format!("a reply with nothing in flight: {line}"));
                continue;
            };
            self.trace
                .record(format!("c{} {} <- {line}", self.id, texts[n]));
            match StoreReply::parse(&line) {
                Ok(StoreReply::Stored { holders, id }) => self.report().acks.push(Ack {
                    n,
                    holders,
                    id,
                    at: turmoil::sim_elapsed().unwrap_or_default(),
                    head,
                }),
                Ok(StoreReply::Error(_)) => {
                    self.report().errors += 1;
                    to_send.push_back(n);
                    pause_until = Some(Instant::now() + RETRY_PAUSE);
                }
                Err(e) => self.violation(format!("unparsable reply {line:?}: {e}")),
            }
        }
    }

    /// The role it announces.
    fn role(&self) -> String {
        if self.keyed {
            format!("cliente id={}", self.client_id())
        } else {
            "cliente".to_owned()
        }
    }

    /// Its client id, when keyed.
    pub fn client_id(&self) -> String {
        format!("c{}", self.id)
    }

    fn violation(&self, what: String) {
        self.trace.record(format!("c{} VIOLATION {what}", self.id));
        self.report().violations.push(what);
    }

    fn report(&self) -> std::sync::MutexGuard<'_, ClientReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}
