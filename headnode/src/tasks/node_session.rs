//! One task per data node: writes the copies routed to it in batches,
//! matches its answers, sends the application heartbeat and the list of
//! routable nodes, moves to other nodes every copy it cannot get
//! acknowledged, and sends the reads other tasks hand it (see `reads`),
//! after the writes waiting in the same turn.

use std::sync::Arc;

use protocol::connection::Connection;
use protocol::message::{FromDataNode, MessageId, NodeId, ToDataNode, truncate_for_log};
use protocol::net::Stream;
use protocol::telemetry::MESSAGES_TARGET;
use rand::rngs::SmallRng;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::forward::{CopyStored, Forward};
use crate::state::in_flight::{Acked, InFlight};
use crate::state::membership::MemberInfo;
use crate::state::reads::{PendingReads, ReadJob};
use crate::state::router::NodeLoad;
use crate::state::status::NodeCounters;
use crate::tasks::Shared;
use crate::tasks::cluster::Input;

/// A data node that has been accepted into the cluster.
pub(crate) struct Registered<S: Stream> {
    pub(crate) conn: Connection<S>,
    pub(crate) info: MemberInfo,
    pub(crate) queue: mpsc::UnboundedReceiver<Forward>,
    /// The reads other tasks hand it; `None` for a node that serves none.
    pub(crate) reads: Option<mpsc::Receiver<ReadJob>>,
    /// What the router counts as held by this session.
    pub(crate) load: Arc<NodeLoad>,
    /// Cancelled by the membership task when it evicts this node.
    pub(crate) evicted: CancellationToken,
    pub(crate) shared: Arc<Shared>,
    /// This node's place among the reserved data-node connections.
    pub(crate) _slot: OwnedSemaphorePermit,
}

/// At most this many messages are taken from the queue per write.
const WRITE_BATCH: usize = 1024;

pub(crate) async fn run<S: Stream>(
    registered: Registered<S>,
    mut rng: SmallRng,
    nodes_stop: CancellationToken,
) {
    let Registered {
        mut conn,
        info,
        mut queue,
        reads: mut reads_rx,
        load,
        evicted,
        shared,
        _slot,
    } = registered;
    let config = &shared.config;
    let counters = shared.status.node_counters(&info.node);
    let max_in_flight = if info.legacy {
        1
    } else {
        config.max_node_in_flight.max(1)
    };
    // Its answers to reads carry a message's text and a little more.
    conn.reader.set_max_line(
        config
            .reader
            .max_line
            .saturating_add(protocol::message::READ_LINE_OVERHEAD),
    );
    let mut in_flight = InFlight::default();
    let mut reads = PendingReads::default();
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let max_unacked_bytes = config.max_node_unacked_bytes;
    let mut ping_seq = 0u64;
    let mut leaving = false;
    let mut ack_timeout_reported = false;
    let mut skipped = Vec::new();
    let membership = &shared.membership_tx;
    let routes = shared.router.watch();
    let route_changes = shared.router.changes();
    // From 0: the current list first, then every change.
    let mut routes_seen = 0;
    // Created once: a fresh `cancelled()` per loop turn costs a lock each time.
    let evicted = evicted.cancelled();
    let stopping = nodes_stop.cancelled();
    tokio::pin!(evicted, stopping);

    // Why the session ended; `None` when the membership task already knows.
    let lost: Option<String> = 'session: loop {
        let next_deadline = in_flight.next_deadline().filter(|_| !ack_timeout_reported);
        let stall_deadline = conn.writer.stall_deadline(config.write_timeout);
        tokio::select! {
            biased;
            _ = &mut evicted => break None,
            _ = &mut stopping => break None,
            flushed = conn.writer.flush(), if conn.writer.pending() > 0 => {
                if let Err(e) = flushed {
                    break Some(format!("write failed: {e}"));
                }
            }
            _ = protocol::server::sleep_until(stall_deadline) => {
                break Some(format!("it took none of our bytes for {:?}", config.write_timeout));
            }
            frame = conn.reader.read_frame() => {
                // Every line already buffered is handled in this turn: a
                // data node answers a whole group commit at once.
                let mut frame = frame;
                let mut acked = false;
                loop {
                    let line = match frame {
                        Ok(Some(line)) => line,
                        Ok(None) => break 'session Some("closed by the data node".to_owned()),
                        Err(e) => break 'session Some(e.to_string()),
                    };
                    match FromDataNode::parse(line.as_str()) {
                        Ok(FromDataNode::Stored(id)) => {
                            acked |= acknowledge(&shared, &info, &load, &counters, &mut in_flight, id, None, &mut skipped);
                            for message in skipped.drain(..) {
                                load.resolve();
                                reroute(&shared, &info, message, true, "acknowledged a later message but not this one", &mut rng);
                            }
                        }
                        Ok(FromDataNode::StoredRun { first, count }) => {
                            // The node's next `count` messages, in order: each is
                            // the front of the queue. An id it was not sent ends
                            // the run, so a forged run costs one scan, not `count`.
                            for id in (FromDataNode::StoredRun { first, count }).stored_ids() {
                                let matched = acknowledge(&shared, &info, &load, &counters, &mut in_flight, Some(id), None, &mut skipped);
                                acked |= matched;
                                for message in skipped.drain(..) {
                                    load.resolve();
                                    reroute(&shared, &info, message, true, "acknowledged a later message but not this one", &mut rng);
                                }
                                if !matched {
                                    warn!(node = %info.node, %first, count, unknown = %id, "a run of acknowledgements names a message not in flight on this node; the rest of the run is ignored");
                                    break;
                                }
                            }
                        }
                        Ok(FromDataNode::AlreadyHeld { id, held }) => {
                            acked |= acknowledge(&shared, &info, &load, &counters, &mut in_flight, Some(id), Some(held), &mut skipped);
                            for message in skipped.drain(..) {
                                load.resolve();
                                reroute(&shared, &info, message, true, "acknowledged a later message but not this one", &mut rng);
                            }
                        }
                        Ok(FromDataNode::Withdrawn(id)) => {
                            match in_flight.ack(Some(id), &mut skipped) {
                                Acked::Message(message) => {
                                    load.resolve();
                                    reroute(&shared, &info, message, false, "withdrawn after its ack timeout", &mut rng);
                                }
                                Acked::Unknown => {}
                            }
                            for message in skipped.drain(..) {
                                load.resolve();
                                reroute(&shared, &info, message, true, "answered a later message but not this one", &mut rng);
                            }
                        }
                        Ok(FromDataNode::Pong(_)) => {
                            // When the membership task is behind, a heartbeat may
                            // be dropped: the next one comes within a second.
                            let _ = membership.try_send(Input::Heartbeat { conn: info.conn });
                        }
                        Ok(FromDataNode::Fsync(report)) => {
                            shared.status.fsync_reported(&info.node, info.incarnation, report, Instant::now());
                        }
                        Ok(FromDataNode::Leaving) => {
                            info!(node = %info.node, in_flight = in_flight.waiting(), "dataNode says it is leaving");
                            leaving = true;
                            let _ = membership.send(Input::Leaving { conn: info.conn }).await;
                        }
                        Ok(FromDataNode::Error(reason)) => {
                            conn.close_with_error(&"closing after your error").await;
                            break 'session Some(format!("data node reported an error: {reason}"));
                        }
                        Ok(
                            answer @ (FromDataNode::Found { .. }
                            | FromDataNode::NotFound { .. }
                            | FromDataNode::Scanned { .. }
                            | FromDataNode::ReadError { .. }),
                        ) => reads.answer(&info.node, answer),
                        Ok(
                            FromDataNode::Proof(_)
                            | FromDataNode::Held { .. }
                            | FromDataNode::Peers(_)
                            | FromDataNode::Ready,
                        ) => {
                            conn.close_with_error(&"unexpected registration line after registration").await;
                            break 'session Some(format!("protocol error: {} after registration", truncate_for_log(line.as_str())));
                        }
                        Err(e) => {
                            warn!(node = %info.node, error = %e, "bad line from dataNode: {}", truncate_for_log(line.as_str()));
                            conn.close_with_error(&e).await;
                            break 'session Some(format!("protocol error: {e}"));
                        }
                    }


                    frame = match conn.reader.next_buffered() {
                        Ok(None) => break,
                        next => next,
                    };
                }
                if acked {
                    load.acked_now();
                }
            }
            message = queue.recv(), if in_flight.waiting() < max_in_flight && in_flight.bytes() < max_unacked_bytes => {
                let Some(message) = message else { break None };
                if leaving {
                    load.resolve();
                    reroute(&shared, &info, message, false, "it is leaving", &mut rng);
                    continue;
                }
                let deadline = Instant::now() + config.ack_timeout;
                send(&mut conn, &info, &mut in_flight, message, deadline);
                let mut taken = 1;
                while taken < WRITE_BATCH
                    && in_flight.waiting() < max_in_flight
                    && in_flight.bytes() < max_unacked_bytes
                {
                    let Ok(message) = queue.try_recv() else { break };
                    send(&mut conn, &info, &mut in_flight, message, deadline);
                    taken += 1;
                }
            }
            job = next_read(&mut reads_rx), if reads.has_room() => {
                match job {
                    Some(job) => reads.send(job, |frame| conn.writer.queue_with(|buf| frame.encode(buf))),
                    None => reads_rx = None,
                }
            }
            seen = route_changes.changed_since(routes_seen), if !info.legacy => {
                routes_seen = seen;
                let members: Vec<NodeId> = routes
                    .borrow()
                    .nodes
                    .iter()
                    .map(|n| n.node.clone())
                    .collect();
                conn.writer.queue_with(|buf| ToDataNode::Members(members).encode(buf));
            }
            _ = heartbeat.tick(), if !info.legacy => {
                ping_seq += 1;
                conn.writer.queue_with(|buf| ToDataNode::Ping(ping_seq).encode(buf));
            }
            _ = protocol::server::sleep_until(next_deadline) => {
                if info.legacy {
                    // Its only hang detector: the membership evicts it, and
                    // what it held is resent on the way out below.
                    ack_timeout_reported = true;
                    let _ = membership.send(Input::AckTimeout { conn: info.conn }).await;
                    continue;
                }
                let expired = in_flight.expire(Instant::now());
                if let Some(first) = expired.first() {
                    warn!(
                        node = %info.node, first = %first, messages = expired.len(), timeout = ?config.ack_timeout,
                        "no acknowledgement in time; asking the dataNode to withdraw them: each copy moves once it answers withdrawn, or when it is evicted"
                    );
                }
                for id in expired {
                    conn.writer.queue_with(|buf| ToDataNode::Withdraw(id).encode(buf));
                }
            }
        }
        if leaving && in_flight.waiting() == 0 {
            conn.writer.queue_with(|buf| ToDataNode::Bye.encode(buf));
            let _ = conn.writer.shutdown().await;
            let _ = membership.send(Input::Drained { conn: info.conn }).await;
            break None;
        }
    };

    if let Some(why) = &lost {
        let _ = membership
            .send(Input::ConnectionLost {
                conn: info.conn,
                why: why.clone(),
            })
            .await;
    }
    // Its readers see their answer channels close: the read failed.
    if reads.len() > 0 {
        info!(node = %info.node, reads = reads.len(), "dataNode gone with reads unanswered; they fail and their readers go on with the other nodes");
    }
    drop(reads);
    drop(reads_rx);
    // Whatever this node held goes to the others.
    queue.close();
    let why = lost.as_deref().unwrap_or("evicted");
    let sent = in_flight.drain();
    let mut queued = Vec::new();
    // `recv` until `None`, not `try_recv`: a send that began before the
    // close may not be visible yet, and a copy dropped here would answer
    // its client `head node shutting down`.
    while let Some(message) = queue.recv().await {
        queued.push(message);
    }
    if !sent.is_empty() || !queued.is_empty() {
        warn!(node = %info.node, messages = sent.len() + queued.len(), "dataNode gone ({why}); sending the copies it had not acknowledged to other nodes");
    }
    for message in sent {
        load.resolve();
        reroute(&shared, &info, message, true, why, &mut rng);
    }
    for message in queued {
        load.resolve();
        reroute(&shared, &info, message, false, why, &mut rng);
    }
    debug!(node = %info.node, "dataNode session ended");
}

/// The next read handed to this session; never, for a node that serves none.
async fn next_read(reads_rx: &mut Option<mpsc::Receiver<ReadJob>>) -> Option<ReadJob> {
    match reads_rx {
        Some(reads_rx) => reads_rx.recv().await,
        None => std::future::pending().await,
    }
}

fn send<S: Stream>(
    conn: &mut Connection<S>,
    info: &MemberInfo,
    in_flight: &mut InFlight,
    message: Forward,
    deadline: Instant,
) {
    let envelope = &message.envelope;
    if info.legacy {
        conn.writer
            .queue_with(|buf| ToDataNode::encode_store(None, None, &envelope.text, buf));
    } else {
        let key = envelope.key.as_ref().map(|key| key.as_ref());
        conn.writer.queue_with(|buf| {
            ToDataNode::encode_store(Some(envelope.id), key, &envelope.text, buf)
        });
    }
    in_flight.push(message, deadline);
}

/// Matches an acknowledgement and counts the copy it stands for; true if
/// it matched a copy in flight.
#[allow(clippy::too_many_arguments)]
fn acknowledge(
    shared: &Shared,
    info: &MemberInfo,
    load: &NodeLoad,
    counters: &NodeCounters,
    in_flight: &mut InFlight,
    id: Option<MessageId>,
    held_as: Option<MessageId>,
    skipped: &mut Vec<Forward>,
) -> bool {
    let envelope = match in_flight.ack(id, skipped) {
        Acked::Message(message) => {
            load.resolve();
            message.envelope
        }
        Acked::Unknown => {
            debug!(node = %info.node, ?id, "acknowledgement for no message in flight; ignored");
            return false;
        }
    };
    if let Some(held) = held_as.filter(|held| *held != envelope.id) {
        warn!(
            id = %envelope.id, %held, node = %info.node,
            key = ?envelope.key.as_ref().map(ToString::to_string),
            "this key is already held there under another id; not written again"
        );
    }
    let stored = envelope.copy_stored(info.conn, &info.node);
    if stored != CopyStored::Again {
        counters.count(envelope.text.len());
    }
    match stored {
        CopyStored::Answered => {
            shared.status.count_stored();
            info!(
            target: MESSAGES_TARGET,
            id = %envelope.id, client = %envelope.client,
            "recibido en dataNode {} {}", info.node, info.addr
            )
        }
        CopyStored::Counted => debug!(
            target: MESSAGES_TARGET,
            id = %envelope.id, "recibido en dataNode {} {}", info.node, info.addr
        ),
        CopyStored::Again => debug!(id = %envelope.id, node = %info.node, "acknowledged again"),
        CopyStored::OverReplicated => {
            shared.router.count_over_replicated();
            warn!(
                id = %envelope.id, node = %info.node,
                "late acknowledgement: this node wrote a copy that had been moved elsewhere; one copy more than wanted"
            );
        }
    }
    true
}

/// Moves one copy this session held to another node; `sent` if this node
/// may have written it.
fn reroute(
    shared: &Shared,
    from: &MemberInfo,
    message: Forward,
    sent: bool,
    why: &str,
    rng: &mut SmallRng,
) {
    message.envelope.move_copy(from.conn, sent);
    let id = message.id();
    let client = message.envelope.client.clone();
    if let Some(node) = shared.router.reroute(message, rng) {
        info!(%id, %client, from = %from.node, to = %node, "copy sent to another dataNode ({why})");
    }
}
