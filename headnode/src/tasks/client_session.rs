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
//! What one client can make the head node hold is bounded: at most
//! `max_client_in_flight` unanswered messages holding at most
//! `max_client_in_flight_bytes`, answers not yet taken by its socket up to
//! `max_client_unflushed` bytes (then it is not read until they drain), and
//! its messages' bytes count against the shared in-flight budget. A client whose socket takes nothing for `write_timeout` is
//! closed, and so is one that sends nothing for `client_idle_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use protocol::Line;
use protocol::connection::Connection;
use protocol::message::{
    ClientId, MessageKey, OUTCOME_UNKNOWN, StoreReply, parse_keyed_message, truncate_for_log,
    validate_text,
};
use protocol::net::Stream;
use protocol::telemetry::MESSAGES_TARGET;
use rand::rngs::SmallRng;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::MESSAGE_OVERHEAD;
use crate::state::forward::{Completion, Envelope, NewEnvelope, Outcome, Waiter};
use crate::state::keys::Found;
use crate::state::reply_window::ReplyWindow;
use crate::state::router::Routes;
use crate::tasks::Shared;

/// A message read while the in-flight budget was used up: it waits for its
/// share, and the client is not read meanwhile.
struct Blocked {
    slot: u64,
    line: Line,
    checked: Checked,
    charge: Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
}

pub(crate) async fn run<S: Stream>(
    mut conn: Connection<S>,
    client_id: Option<ClientId>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    mut rng: SmallRng,
) {
    let client: Arc<str> = conn.peer.to_string().into();
    let config = &shared.config;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    let mut window = ReplyWindow::default();
    let mut blocked: Option<Blocked> = None;
    let mut reading = true;
    let mut last_heard = Instant::now();
    let max_in_flight = config.max_client_in_flight.max(1);
    let mut serving = shared.recovered.is_open();
    let recovered = shared.recovered.opened();
    tokio::pin!(recovered);
    // Created once: a fresh `cancelled()` per loop turn costs a lock each time.
    let stopping = stop.cancelled();
    tokio::pin!(stopping);
    // The acknowledgement latency is sampled: one message of this client
    // is timed at a time (its slot and when it was read), so the cost per
    // message is one comparison, and a clock read per sample.
    let mut timed: Option<(u64, Instant)> = None;

    let end = 'session: loop {
        if !reading && window.len() == 0 && conn.writer.pending() == 0 {
            break "done";
        }
        let idle = reading && window.len() == 0 && conn.writer.pending() == 0;
        let idle_deadline = idle.then(|| last_heard + config.client_idle_timeout);
        let may_read = reading
            && serving
            && blocked.is_none()
            && window.len() < max_in_flight
            && window.in_flight_bytes() < config.max_client_in_flight_bytes
            && conn.writer.pending() < config.max_client_unflushed;
        let stall_deadline = conn.writer.stall_deadline(config.write_timeout);
        tokio::select! {
            biased;
            () = &mut recovered, if !serving => {
                serving = true;
                continue;
            }
            _ = &mut stopping, if reading => {
                // Shutdown: take nothing new, answer what is in flight.
                reading = false;
                if let Some(waiting) = blocked.take() {
                    window.fill(failed(waiting.slot, "head node shutting down"));
                }
                continue;
            }
            Some(done) = done_rx.recv() => {
                window.fill(done);
                while let Ok(done) = done_rx.try_recv() {
                    window.fill(done);
                }
            }
            _ = protocol::server::sleep_until(stall_deadline) => {
                warn!(unflushed = conn.writer.pending(), timeout = ?config.write_timeout, "cliente is not reading its answers; closing");
                break "not reading its answers";
            }
            flushed = conn.writer.flush(), if conn.writer.pending() > 0 => {
                if let Err(e) = flushed {
                    info!(error = %e, "cliente gone before its answers were written");
                    break "write failed";
                }
            }
            charge = async { blocked.as_mut().expect("armed only when blocked").charge.as_mut().await }, if blocked.is_some() => {
                let waiting = blocked.take().expect("armed only when blocked");
                match charge {
                    Ok(charge) => {
                        window.charge(waiting.slot, charge.num_permits() as u32);
                        if let Err(refusal) = forward(&shared, &shared.router.snapshot(), &client, client_id.as_ref(), &done_tx, waiting.slot, &waiting.line, waiting.checked, charge, Instant::now(), &mut rng) {
                            window.fill(failed(waiting.slot, &refusal));
                        }
                    }
                    Err(_) => window.fill(failed(waiting.slot, "head node shutting down")),
                }
            }
            _ = protocol::server::sleep_until(idle_deadline) => {
                info!(timeout = ?config.client_idle_timeout, "cliente idle; closing");
                let reason = format!("idle for {:?}; closing", config.client_idle_timeout);
                conn.close_with_error(&reason).await;
                break "idle";
            }
            frame = conn.reader.read_frame(), if may_read => {
                last_heard = Instant::now();
                // One snapshot of the routable nodes for every line of this turn.
                let routes = shared.router.snapshot();
                let mut frame = frame;
                // Every line already buffered is taken in this turn: one
                // pass of the loop per read, not per message.
                loop {
                    match frame {
                        Ok(Some(line)) => {
                            let slot = window.open_slot();
                            timed.get_or_insert((slot, last_heard));
                            match check(line.as_str(), client_id.is_some()) {
                                Err(refusal) => window.fill(failed(slot, &refusal)),
                                Ok(checked) => {
                                    let cost = charge_for(&line);
                                    match shared.budget.clone().try_acquire_many_owned(cost) {
                                        Ok(charge) => {
                                            window.charge(slot, cost);
                                            if let Err(refusal) = forward(&shared, &routes, &client, client_id.as_ref(), &done_tx, slot, &line, checked, charge, last_heard, &mut rng) {
                                                window.fill(failed(slot, &refusal));
                                            }
                                        }
                                        Err(_) => {
                                            debug!("in-flight budget used up; this cliente waits");
                                            let budget = shared.budget.clone();
                                            blocked = Some(Blocked {
                                                slot,
                                                line,
                                                checked,
                                                charge: Box::pin(budget.acquire_many_owned(cost)),
                                            });
                                        }
                                    }
                                }
                            }
                        }
                        Ok(None) => {
                            info!(in_flight = window.len(), "cliente closed its side");
                            reading = false;
                            break;
                        }
                        Err(e) if e.is_fatal() => {
                            warn!(error = %e, "closing cliente connection");
                            conn.close_with_error(&e).await;
                            break 'session "protocol error";
                        }
                        Err(e) => {
                            warn!(error = %e, "bad message from cliente");
                            let slot = window.open_slot();
                            window.fill(failed(slot, &e.to_string()));
                        }
                    }
                    let may_take_more = blocked.is_none()
                        && window.len() < max_in_flight
                        && window.in_flight_bytes() < config.max_client_in_flight_bytes;
                    if !may_take_more {
                        break;
                    }
                    frame = match conn.reader.next_buffered() {
                        Ok(None) => break,
                        next => next,
                    };
                }
            }
        }
        while let Some(done) = window.pop_ready() {
            if let Some((slot, read_at)) = timed
                && slot == done.slot
            {
                shared.status.ack_latency.observe(read_at.elapsed());
                timed = None;
            }
            queue_reply(&mut conn, done);
        }
    };
    info!(reason = end, "cliente disconnected");
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

/// Routes one checked line: a new message, or a key seen before. Err
/// with the reason when the line cannot be a message.
#[allow(clippy::too_many_arguments)]
fn forward(
    shared: &Shared,
    routes: &Routes,
    client: &Arc<str>,
    client_id: Option<&ClientId>,
    done_tx: &mpsc::UnboundedSender<Completion>,
    slot: u64,
    line: &Line,
    checked: Checked,
    charge: OwnedSemaphorePermit,
    now: Instant,
    rng: &mut SmallRng,
) -> Result<(), String> {
    let waiter = || Waiter {
        slot,
        reply_to: done_tx.clone(),
    };
    let replication = shared.replication;
    let (Some(client_id), Some(seq)) = (client_id, checked.seq) else {
        let envelope = Envelope::new(NewEnvelope {
            charge: Some(charge),
            ..NewEnvelope::plain(
                shared.ids.next_id(),
                line.bytes().clone(),
                client.clone(),
                waiter(),
                replication,
            )
        });
        route(shared, routes, envelope, line, now, rng);
        return Ok(());
    };
    let text = line.bytes().slice(checked.text_at..);
    let key = MessageKey {
        client: client_id.clone(),
        seq,
    };
    let mut charge = Some(charge);
    let found = shared.keys.lookup_or_insert(&key, now, || {
        Envelope::new(NewEnvelope {
            key: Some(key.clone()),
            keys: Some(shared.keys.clone()),
            charge: charge.take(),
            ..NewEnvelope::plain(
                shared.ids.next_id(),
                text.clone(),
                client.clone(),
                waiter(),
                replication,
            )
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
    Ok(())
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
