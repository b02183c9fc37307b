//! One task per client: reads messages, routes each to a data node, and
//! writes the answers back in the order the messages came, however the
//! data nodes' acknowledgements interleave.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::connection::Connection;
use protocol::message::{StoreReply, truncate_for_log};
use protocol::telemetry::MESSAGES_TARGET;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::router::{Completion, Forward, Outcome};

/// Answers not yet written, by slot: the message at `first_slot` is at the front.
struct ReplyWindow {
    first_slot: u64,
    slots: VecDeque<Option<Completion>>,
}

impl ReplyWindow {
    fn next_slot(&self) -> u64 {
        self.first_slot + self.slots.len() as u64
    }

    fn open_slot(&mut self) -> u64 {
        self.slots.push_back(None);
        self.next_slot() - 1
    }

    fn fill(&mut self, done: Completion) {
        let index = done.slot.wrapping_sub(self.first_slot) as usize;
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(done);
        }
    }

    /// Takes the answers that are ready and next in order.
    fn pop_ready(&mut self) -> Option<Completion> {
        if matches!(self.slots.front(), Some(Some(_))) {
            self.first_slot += 1;
            self.slots.pop_front().flatten()
        } else {
            None
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }
}

pub(crate) async fn run(mut conn: Connection, shared: Arc<Shared>, stop: CancellationToken) {
    let client: Arc<str> = conn.peer.to_string().into();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    let mut window = ReplyWindow {
        first_slot: 0,
        slots: VecDeque::new(),
    };
    let mut rng: SmallRng = rand::make_rng();
    let mut reading = true;
    let max_in_flight = shared.config.max_client_in_flight.max(1);
    // Created once: a fresh `cancelled()` per loop turn costs a lock each time.
    let stopping = stop.cancelled();
    tokio::pin!(stopping);

    let end = loop {
        if !reading && window.len() == 0 && conn.writer.pending() == 0 {
            break "done";
        }
        tokio::select! {
            biased;
            _ = &mut stopping, if reading => {
                // Shutdown: take nothing new, answer what is in flight.
                reading = false;
                continue;
            }
            Some(done) = done_rx.recv() => {
                window.fill(done);
                while let Ok(done) = done_rx.try_recv() {
                    window.fill(done);
                }
                while let Some(done) = window.pop_ready() {
                    queue_reply(&mut conn, done);
                }
            }
            flushed = conn.writer.flush(), if conn.writer.pending() > 0 => {
                if let Err(e) = flushed {
                    info!(error = %e, "cliente gone before its answers were written");
                    break "write failed";
                }
            }
            frame = conn.reader.read_frame(), if reading && window.len() < max_in_flight => {
                match frame {
                    Ok(Some(line)) => {
                        let slot = window.open_slot();
                        if line.bytes().is_empty() {
                            window.fill(failed(slot, "empty message"));
                        } else {
                            let message = Forward {
                                id: shared.ids.next_id(),
                                text: line.bytes().clone(),
                                slot,
                                reply_to: done_tx.clone(),
                                client: client.clone(),
                                attempts: 0,
                            };
                            let id = message.id;
                            match shared.router.route(message, None, &mut rng) {
                                Some(node) => info!(
                                    target: MESSAGES_TARGET,
                                    %id, %client, %node,
                                    "forwarding mensaje: {}",
                                    truncate_for_log(line.as_str())
                                ),
                                None => debug!(%id, "no data node available; message waits"),
                            }
                        }
                    }
                    Ok(None) => {
                        info!(in_flight = window.len(), "cliente closed its side");
                        reading = false;
                    }
                    Err(e) if e.is_fatal() => {
                        warn!(error = %e, "closing cliente connection");
                        conn.close_with_error(&e).await;
                        break "protocol error";
                    }
                    Err(e) => {
                        warn!(error = %e, "bad message from cliente");
                        let slot = window.open_slot();
                        window.fill(failed(slot, &e.to_string()));
                    }
                }
                while let Some(done) = window.pop_ready() {
                    queue_reply(&mut conn, done);
                }
            }
        }
    };
    info!(reason = end, "cliente disconnected");
}

fn failed(slot: u64, reason: &str) -> Completion {
    Completion {
        slot,
        id: protocol::message::MessageId { epoch: 0, seq: 0 },
        outcome: Outcome::Failed(reason.into()),
    }
}

fn queue_reply(conn: &mut Connection, done: Completion) {
    match &done.outcome {
        Outcome::Stored { node } => {
            conn.writer
                .queue_with(|buf| StoreReply::encode_stored(node, done.id, buf));
        }
        Outcome::Failed(reason) => conn.writer.queue_error(reason),
    }
}
