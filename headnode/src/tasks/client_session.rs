//! One task per client: reads messages, routes each to its data nodes, and
//! writes the answers back in the order the messages came, however the
//! data nodes' acknowledgements interleave.
//!
//! A client that announced a client id sends keyed lines (`<seq> <text>`):
//! a key seen before is not stored again; its request waits for, or gets at
//! once, the answer of the message that key became (see `keys`). No client
//! is read until the head node has recovered what the data nodes hold
//! (see `recovery`), so a resend after a restart is recognised.
//!
//! `recibido` goes out only while a majority of the cluster's member set is
//! live (checked as the answer is written): a head node without one may
//! have been replaced by another, so a message it has written is answered
//! `ERROR outcome unknown: ...` instead (its copies exist; a resend under
//! the same key is safe), and a new one waits for the majority as it waits
//! for nodes, then gets `ERROR no majority ...` (see `router`).
//!
//! What one client can make the head node hold is bounded: at most
//! `max_client_in_flight` unanswered messages holding at most
//! `max_client_in_flight_bytes`, answers not yet taken by its socket up to
//! `max_client_unflushed` bytes (then it is not read until they drain), and
//! its messages' bytes count against the shared in-flight budget. A client whose socket takes nothing for `write_timeout` is
//! closed, and so is one that sends nothing for `client_idle_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use node_kit::telemetry::MESSAGES_TARGET;
use protocol::client::{
    NO_MAJORITY, OUTCOME_UNKNOWN, StoreReply, parse_keyed_message, validate_text,
};
use protocol::connection::Connection;
use protocol::error::truncate_for_log;
use protocol::ids::{ClientId, MessageId, MessageKey, NodeId};
use protocol::net::Stream;
use protocol::{Line, ReadError};
use rand::rngs::SmallRng;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::MESSAGE_OVERHEAD;
use crate::state::forward::{Completion, Envelope, NewEnvelope, Outcome, Waiter};
use crate::state::keys::Found;
use crate::state::membership::Quorum;
use crate::state::reply_window::ReplyWindow;
use crate::state::router::Routes;
use crate::tasks::Shared;

/// A message read and checked, in its slot.
struct Admitted {
    slot: u64,
    line: Line,
    checked: Checked,
}

/// A message read while the in-flight budget was used up: it waits for its
/// share, and the client is not read meanwhile.
struct Blocked {
    message: Admitted,
    charge: Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
}

/// What one step of the session leads to: on, or the end and why.
type Step = Result<(), &'static str>;

/// Serves one client until it leaves, fails, or the head node stops and
/// every answer in flight is written.
pub(crate) async fn run<S: Stream>(
    conn: Connection<S>,
    client_id: Option<ClientId>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    rng: SmallRng,
) {
    let mut session = ClientSession::new(conn, client_id, shared, rng);
    let end = session.serve(stop).await;
    info!(reason = end, "cliente disconnected");
}

/// One client's session: its connection, its answers in order, and what
/// it may send next.
struct ClientSession<S: Stream> {
    conn: Connection<S>,
    /// The client's address, for logs.
    client: Arc<str>,
    /// The id it announced: its messages are keyed.
    client_id: Option<ClientId>,
    shared: Arc<Shared>,
    rng: SmallRng,
    /// Where its messages' answers come back, from any task.
    done_tx: mpsc::UnboundedSender<Completion>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
    /// Answers in the order the messages came.
    window: ReplyWindow,
    /// A message waiting for its share of the in-flight budget.
    blocked: Option<Blocked>,
    /// False once the client closed its side or the head node stops.
    reading: bool,
    /// False until the head node has recovered what the data nodes hold.
    serving: bool,
    /// When the client last sent something.
    last_heard: Instant,
    /// Unanswered messages at once, at most.
    max_in_flight: usize,
    /// The acknowledgement latency is sampled: one message of this client
    /// is timed at a time (its slot and when it was read), so the cost per
    /// message is one comparison, and a clock read per sample.
    timed: Option<(u64, Instant)>,
}

/// What routing a message needs of its session.
struct Sender<'a> {
    shared: &'a Shared,
    client: &'a Arc<str>,
    client_id: Option<&'a ClientId>,
    done_tx: &'a mpsc::UnboundedSender<Completion>,
    rng: &'a mut SmallRng,
}

impl<S: Stream> ClientSession<S> {
    fn new(
        conn: Connection<S>,
        client_id: Option<ClientId>,
        shared: Arc<Shared>,
        rng: SmallRng,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Completion>();
        ClientSession {
            client: conn.peer.to_string().into(),
            conn,
            client_id,
            max_in_flight: shared.config.max_client_in_flight.max(1),
            serving: shared.recovered.is_open(),
            shared,
            rng,
            done_tx,
            done_rx,
            window: ReplyWindow::default(),
            blocked: None,
            reading: true,
            last_heard: Instant::now(),
            timed: None,
        }
    }

    /// Serves the client; why the session ended.
    async fn serve(&mut self, stop: CancellationToken) -> &'static str {
        let gate = self.shared.recovered.clone();
        let recovered = gate.opened();
        tokio::pin!(recovered);
        // Created once: a fresh `cancelled()` per loop turn costs a lock each time.
        let stopping = stop.cancelled();
        tokio::pin!(stopping);
        let config = &self.shared.config;
        let (idle_timeout, write_timeout) = (config.client_idle_timeout, config.write_timeout);
        loop {
            let nothing_held = self.window.len() == 0 && self.conn.writer.pending() == 0;
            if !self.reading && nothing_held {
                return "done";
            }
            let idle = self.reading && nothing_held;
            let idle_deadline = idle.then(|| self.last_heard + idle_timeout);
            let may_read = self.reading
                && self.serving
                && self.may_take_more()
                && self.conn.writer.pending() < self.shared.config.max_client_unflushed;
            let stall_deadline = self.conn.writer.stall_deadline(write_timeout);
            let step = tokio::select! {
                biased;
                () = &mut recovered, if !self.serving => {
                    self.serving = true;
                    continue;
                }
                _ = &mut stopping, if self.reading => {
                    // Not `continue`: a blocked message answered here must
                    // still be written below.
                    self.on_stopping();
                    Ok(())
                }
                Some(done) = self.done_rx.recv() => {
                    self.on_answers(done);
                    Ok(())
                }
                _ = node_kit::server::sleep_until(stall_deadline) => {
                    warn!(unflushed = self.conn.writer.pending(), timeout = ?write_timeout, "cliente is not reading its answers; closing");
                    Err("not reading its answers")
                }
                flushed = self.conn.writer.flush(), if self.conn.writer.pending() > 0 => {
                    flushed.map_err(|e| {
                        info!(error = %e, "cliente gone before its answers were written");
                        "write failed"
                    })
                }
                charge = blocked_charge(&mut self.blocked), if self.blocked.is_some() => {
                    self.on_charged(charge);
                    Ok(())
                }
                _ = node_kit::server::sleep_until(idle_deadline) => self.on_idle().await,
                frame = self.conn.reader.read_frame(), if may_read => self.on_frames(frame).await,
            };
            if let Err(end) = step {
                return end;
            }
            self.write_ready();
        }
    }

    /// Whether another message may be taken from the client now.
    fn may_take_more(&self) -> bool {
        self.blocked.is_none()
            && self.window.len() < self.max_in_flight
            && self.window.in_flight_bytes() < self.shared.config.max_client_in_flight_bytes
    }

    /// The head node stops: nothing new is taken, what is in flight is
    /// answered.
    fn on_stopping(&mut self) {
        self.reading = false;
        if let Some(waiting) = self.blocked.take() {
            let slot = waiting.message.slot;
            self.window.fill(failed(slot, "head node shutting down"));
        }
    }

    /// Answers came back: each waits in its slot for those before it.
    fn on_answers(&mut self, done: Completion) {
        self.window.fill(done);
        while let Ok(done) = self.done_rx.try_recv() {
            self.window.fill(done);
        }
    }

    /// The blocked message got its share of the budget (or the head node
    /// is stopping): it is routed now.
    fn on_charged(&mut self, charge: Result<OwnedSemaphorePermit, AcquireError>) {
        let waiting = self.blocked.take().expect("armed only when blocked");
        let slot = waiting.message.slot;
        match charge {
            Ok(charge) => {
                self.window.charge(slot, charge.num_permits() as u32);
                let routes = self.shared.router.snapshot();
                forward(
                    self.sender(),
                    &routes,
                    &waiting.message,
                    charge,
                    Instant::now(),
                );
            }
            Err(_) => self.window.fill(failed(slot, "head node shutting down")),
        }
    }

    /// The client sent nothing, with nothing in flight, for the idle
    /// timeout.
    async fn on_idle(&mut self) -> Step {
        let timeout = self.shared.config.client_idle_timeout;
        info!(timeout = ?timeout, "cliente idle; closing");
        let reason = format!("idle for {timeout:?}; closing");
        self.conn.close_with_error(&reason).await;
        Err("idle")
    }

    /// A line read, and every line already buffered behind it while the
    /// client may send more: one pass of the loop per read, not per
    /// message.
    async fn on_frames(&mut self, mut frame: Result<Option<Line>, ReadError>) -> Step {
        self.last_heard = Instant::now();
        // One snapshot of the routable nodes for every line of this turn.
        let routes = self.shared.router.snapshot();
        loop {
            match frame {
                Ok(Some(line)) => self.on_line(&routes, line),
                Ok(None) => {
                    info!(in_flight = self.window.len(), "cliente closed its side");
                    self.reading = false;
                    break;
                }
                Err(e) if e.is_fatal() => {
                    warn!(error = %e, "closing cliente connection");
                    self.conn.close_with_error(&e).await;
                    return Err("protocol error");
                }
                Err(e) => {
                    warn!(error = %e, "bad message from cliente");
                    let slot = self.window.open_slot();
                    self.window.fill(failed(slot, &e.to_string()));
                }
            }
            if !self.may_take_more() {
                break;
            }
            frame = match self.conn.reader.next_buffered() {
                Ok(None) => break,
                next => next,
            };
        }
        Ok(())
    }

    /// One line: refused, routed, or blocked until the budget has room.
    fn on_line(&mut self, routes: &Routes, line: Line) {
        let slot = self.window.open_slot();
        self.timed.get_or_insert((slot, self.last_heard));
        let checked = match check(line.as_str(), self.client_id.is_some()) {
            Ok(checked) => checked,
            Err(refusal) => return self.window.fill(failed(slot, &refusal)),
        };
        let message = Admitted {
            slot,
            line,
            checked,
        };
        let cost = charge_for(&message.line);
        let budget = &self.shared.budget;
        match budget.clone().try_acquire_many_owned(cost) {
            Ok(charge) => {
                self.window.charge(slot, cost);
                let now = self.last_heard;
                forward(self.sender(), routes, &message, charge, now);
            }
            Err(_) => {
                debug!("in-flight budget used up; this cliente waits");
                let charge = Box::pin(budget.clone().acquire_many_owned(cost));
                self.blocked = Some(Blocked { message, charge });
            }
        }
    }

    /// The answers next in order, written: `recibido` only while a
    /// majority of the member set is live.
    fn write_ready(&mut self) {
        let mut quorum = None;
        while let Some(mut done) = self.window.pop_ready() {
            if let Outcome::Stored { holders, id } = &done.outcome {
                let quorum = *quorum.get_or_insert_with(|| self.shared.router.snapshot().quorum);
                if !quorum.holds() {
                    warn!(%id, %quorum, "written, but answered outcome unknown: no majority of the member set is live");
                    done.outcome = Outcome::Unknown(without_majority(quorum, holders, *id).into());
                }
            }
            if let Some((slot, read_at)) = self.timed
                && slot == done.slot
            {
                self.shared.status.ack_latency.observe(read_at.elapsed());
                self.timed = None;
            }
            queue_reply(&mut self.conn, done);
        }
    }

    fn sender(&mut self) -> Sender<'_> {
        Sender {
            shared: &self.shared,
            client: &self.client,
            client_id: self.client_id.as_ref(),
            done_tx: &self.done_tx,
            rng: &mut self.rng,
        }
    }
}

/// The blocked message's share of the budget, once it is free.
async fn blocked_charge(
    blocked: &mut Option<Blocked>,
) -> Result<OwnedSemaphorePermit, AcquireError> {
    blocked
        .as_mut()
        .expect("armed only when blocked")
        .charge
        .as_mut()
        .await
}

/// A line found to be a message.
#[derive(Debug, Clone, Copy)]
struct Checked {
    /// Its key's sequence number, on a keyed connection.
    seq: Option<u64>,
    /// Where its text starts in the line.
    text_at: usize,
}

/// Why a line cannot be a message, if it cannot; else its parts.
fn check(line: &str, keyed: bool) -> Result<Checked, String> {
    let (seq, text) = if keyed {
        let (seq, text) = parse_keyed_message(line).map_err(|e| format!("invalid message: {e}"))?;
        (Some(seq), text)
    } else {
        (None, line)
    };
    if text.is_empty() {
        return Err("empty message".to_owned());
    }
    validate_text(text).map_err(|e| format!("invalid message: {e}"))?;
    Ok(Checked {
        seq,
        text_at: line.len() - text.len(),
    })
}

/// What a message costs the in-flight budget, in bytes.
fn charge_for(line: &Line) -> u32 {
    u32::try_from(line.bytes().len() + MESSAGE_OVERHEAD).unwrap_or(u32::MAX)
}

/// Routes one checked line, charged to the budget: a new message, or a
/// key seen before.
fn forward(
    session: Sender<'_>,
    routes: &Routes,
    message: &Admitted,
    charge: OwnedSemaphorePermit,
    now: Instant,
) {
    let Sender {
        shared,
        client,
        client_id,
        done_tx,
        rng,
    } = session;
    let Admitted {
        slot,
        ref line,
        checked,
    } = *message;
    let waiter = || Waiter {
        slot,
        reply_to: done_tx.clone(),
    };
    let replication = shared.replication;
    let (Some(client_id), Some(seq)) = (client_id, checked.seq) else {
        let ticket = shared.ids.next_ticket();
        let id = ticket.id();
        let envelope = Envelope::new(NewEnvelope {
            charge: Some(charge),
            ticket: Some(ticket),
            ..NewEnvelope::plain(
                id,
                line.bytes().clone(),
                client.clone(),
                waiter(),
                replication,
            )
        });
        route(shared, routes, envelope, line, now, rng);
        return;
    };
    let text = line.bytes().slice(checked.text_at..);
    let key = MessageKey {
        client: client_id.clone(),
        seq,
    };
    let mut charge = Some(charge);
    let found = shared.keys.lookup_or_insert(&key, now, || {
        let ticket = shared.ids.next_ticket();
        let id = ticket.id();
        Envelope::new(NewEnvelope {
            key: Some(key.clone()),
            keys: Some(shared.keys.clone()),
            charge: charge.take(),
            ticket: Some(ticket),
            ..NewEnvelope::plain(id, text.clone(), client.clone(), waiter(), replication)
        })
    });
    match found {
        Found::New(envelope) => route(shared, routes, envelope, line, now, rng),
        Found::InFlight(envelope) => {
            debug!(%key, id = %envelope.id, "resent key: waiting for its message's answer");
            envelope.add_waiter(waiter());
        }
        Found::Settled { id, holders } if holders.len() >= replication.needed => {
            debug!(%key, %id, "resent key: already stored");
            let _ = done_tx.send(Completion {
                slot,
                outcome: Outcome::Stored { holders, id },
            });
        }
        Found::Settled { id, holders } => {
            // Seen before with too few copies: more copies, same id.
            info!(%key, %id, holders = holders.len(), "resent key stored with too few copies; making more under the same id");
            let envelope = Envelope::new(NewEnvelope {
                key: Some(key.clone()),
                keys: Some(shared.keys.clone()),
                held_by: holders,
                charge: charge.take(),
                ..NewEnvelope::plain(id, text, client.clone(), waiter(), replication)
            });
            shared.keys.track(&key, &envelope);
            route(shared, routes, envelope, line, now, rng);
        }
    }
}

fn route(
    shared: &Shared,
    routes: &Routes,
    envelope: Arc<Envelope>,
    line: &Line,
    now: Instant,
    rng: &mut SmallRng,
) {
    let id = envelope.id;
    // Kept for the log line only when it is written: a clone per message
    // costs two atomic operations.
    let client = tracing::enabled!(target: MESSAGES_TARGET, tracing::Level::INFO)
        .then(|| envelope.client.clone());
    let nodes = shared.router.start_on(routes, envelope, None, now, rng);
    if nodes.is_empty() {
        debug!(%id, "not enough data nodes available; message waits");
    } else if let Some(client) = client {
        info!(
            target: MESSAGES_TARGET,
            %id, %client, nodes = ?nodes.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            "forwarding mensaje: {}",
            truncate_for_log(line.as_str())
        );
    }
}

/// Why a written message is not answered `recibido` while no majority of
/// the member set is live.
fn without_majority(quorum: Quorum, holders: &[NodeId], id: MessageId) -> String {
    let names: Vec<&str> = holders.iter().map(NodeId::as_str).collect();
    format!(
        "this head node has {NO_MAJORITY} ({quorum}) and may have been replaced; \
         it was written on {} under {id}, and a resend under the same key is safe",
        names.join("+")
    )
}

/// A message refused before it was routed: no id, certainly not stored.
fn failed(slot: u64, reason: &str) -> Completion {
    Completion {
        slot,
        outcome: Outcome::NotStored(reason.into()),
    }
}

fn queue_reply<S: Stream>(conn: &mut Connection<S>, done: Completion) {
    match &done.outcome {
        Outcome::Stored { holders, id } => {
            conn.writer
                .queue_with(|buf| StoreReply::encode_stored(holders, *id, buf));
        }
        Outcome::NotStored(reason) => conn.writer.queue_error(reason),
        Outcome::Unknown(reason) => conn.writer.queue_error(&format!(
            "{OUTCOME_UNKNOWN}: {reason}; it may or may not be stored"
        )),
    }
}
