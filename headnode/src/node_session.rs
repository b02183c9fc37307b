//! One task per data node: writes forwarded messages in batches, matches
//! acknowledgements, sends the application heartbeat, and hands back to the
//! router every message it cannot get acknowledged.

use std::sync::Arc;

use protocol::connection::Connection;
use protocol::message::{FromDataNode, MessageId, ToDataNode, truncate_for_log};
use protocol::net::Stream;
use protocol::telemetry::MESSAGES_TARGET;
use rand::rngs::SmallRng;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::cluster::Input;
use crate::forward::Forward;
use crate::in_flight::{Acked, InFlight};
use crate::membership::MemberInfo;
use crate::router::NodeLoad;

/// A data node that has been accepted into the cluster.
pub(crate) struct Registered<S: Stream> {
    pub(crate) conn: Connection<S>,
    pub(crate) info: MemberInfo,
    pub(crate) queue: mpsc::UnboundedReceiver<Forward>,
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
        load,
        evicted,
        shared,
        _slot,
    } = registered;
    let config = &shared.config;
    let max_in_flight = if info.legacy {
        1
    } else {
        config.max_node_in_flight.max(1)
    };
    let mut in_flight = InFlight::default();
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let max_unacked_bytes = config.max_node_unacked_bytes;
    let mut ping_seq = 0u64;
    let mut leaving = false;
    let mut ack_timeout_reported = false;
    let mut skipped = Vec::new();
    let membership = &shared.membership_tx;
    // Created once: a fresh `cancelled()` per loop turn costs a lock each time.
    let evicted = evicted.cancelled();
    let stopping = nodes_stop.cancelled();
    tokio::pin!(evicted, stopping);

    if !info.legacy {
        conn.writer
            .queue_with(|buf| ToDataNode::Welcome(info.node.clone()).encode(buf));
    }

    // Why the session ended; `None` when the membership task already knows.
    let lost: Option<String> = loop {
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
                let line = match frame {
                    Ok(Some(line)) => line,
                    Ok(None) => break Some("closed by the data node".to_owned()),
                    Err(e) => break Some(e.to_string()),
                };
                match FromDataNode::parse(line.as_str()) {
                    Ok(FromDataNode::Stored(id)) => {
                        if acknowledge(&info, &mut in_flight, id, shared.ids.epoch(), &mut skipped) {
                            load.acknowledged();
                        }
                        for message in skipped.drain(..) {
                            reroute(&shared, &info, &load, message, "acknowledged a later message but not this one", &mut rng);
                        }
                    }
                    Ok(FromDataNode::Pong(_)) => {
                        // When the membership task is behind, a heartbeat may
                        // be dropped: the next one comes within a second.
                        let _ = membership.try_send(Input::Heartbeat { conn: info.conn });
                    }
                    Ok(FromDataNode::Leaving) => {
                        info!(node = %info.node, in_flight = in_flight.waiting(), "dataNode says it is leaving");
                        leaving = true;
                        let _ = membership.send(Input::Leaving { conn: info.conn }).await;
                    }
                    Ok(FromDataNode::Error(reason)) => {
                        conn.close_with_error(&"closing after your error").await;
                        break Some(format!("data node reported an error: {reason}"));
                    }
                    Ok(FromDataNode::Proof(_)) => {
                        conn.close_with_error(&"unexpected proof after registration").await;
                        break Some("protocol error: proof after registration".to_owned());
                    }
                    Err(e) => {
                        warn!(node = %info.node, error = %e, "bad line from dataNode: {}", truncate_for_log(line.as_str()));
                        conn.close_with_error(&e).await;
                        break Some(format!("protocol error: {e}"));
                    }
                }
            }
            message = queue.recv(), if in_flight.waiting() < max_in_flight && in_flight.bytes() < max_unacked_bytes => {
                let Some(message) = message else { break None };
                if leaving {
                    reroute(&shared, &info, &load, message, "it is leaving", &mut rng);
                    continue;
                }
                let deadline = Instant::now() + config.ack_timeout;
                send(&mut conn, &info, &mut in_flight, &load, message, deadline);
                let mut taken = 1;
                while taken < WRITE_BATCH
                    && in_flight.waiting() < max_in_flight
                    && in_flight.bytes() < max_unacked_bytes
                {
                    let Ok(message) = queue.try_recv() else { break };
                    send(&mut conn, &info, &mut in_flight, &load, message, deadline);
                    taken += 1;
                }
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
                for message in in_flight.expire(Instant::now()) {
                    warn!(
                        id = %message.id(), client = %message.envelope.client, node = %info.node,
                        timeout = ?config.ack_timeout,
                        "no acknowledgement in time; resending to another dataNode (it may end up stored twice)"
                    );
                    reroute(&shared, &info, &load, message, "ack timeout", &mut rng);
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
    // Whatever this node held goes to the others.
    queue.close();
    let why = lost.as_deref().unwrap_or("evicted");
    let mut held = in_flight.drain();
    while let Ok(message) = queue.try_recv() {
        held.push(message);
    }
    if !held.is_empty() {
        warn!(node = %info.node, messages = held.len(), "dataNode gone ({why}); resending the messages it had not acknowledged");
    }
    for message in held {
        reroute(&shared, &info, &load, message, why, &mut rng);
    }
    debug!(node = %info.node, "dataNode session ended");
}

fn send<S: Stream>(
    conn: &mut Connection<S>,
    info: &MemberInfo,
    in_flight: &mut InFlight,
    load: &NodeLoad,
    message: Forward,
    deadline: Instant,
) {
    if message.envelope.is_answered() {
        // Another node stored it meanwhile (a late acknowledgement).
        load.release();
        return;
    }
    let id = if info.legacy {
        None
    } else {
        Some(message.id())
    };
    conn.writer
        .queue_with(|buf| ToDataNode::encode_store(id, &message.envelope.text, buf));
    message.envelope.mark_sent();
    in_flight.push(message, deadline);
}

/// Matches an acknowledgement; true if it completed a message this session held.
fn acknowledge(
    info: &MemberInfo,
    in_flight: &mut InFlight,
    id: Option<MessageId>,
    epoch: u64,
    skipped: &mut Vec<Forward>,
) -> bool {
    if let Some(id) = id.filter(|id| id.epoch != epoch) {
        debug!(node = %info.node, %id, "ack for a message of an earlier head node run; ignored");
        return false;
    }
    match in_flight.ack(id.map(|id| id.seq), skipped) {
        Acked::Message(message) => {
            let envelope = &message.envelope;
            if envelope.stored(&info.node) {
                info!(
                    target: MESSAGES_TARGET,
                    id = %envelope.id, client = %envelope.client,
                    "recibido en dataNode {} {}", info.node, info.addr
                );
            } else {
                warn!(
                    id = %envelope.id, node = %info.node,
                    "stored twice (same id): another dataNode acknowledged it first"
                );
            }
            true
        }
        Acked::Late(envelope) => {
            if envelope.stored(&info.node) {
                info!(
                    id = %envelope.id, node = %info.node, client = %envelope.client,
                    "late acknowledgement after a resend: the message is stored here, and the client is answered"
                );
            } else {
                warn!(
                    id = %envelope.id, node = %info.node,
                    "late acknowledgement: this message was resent after a timeout and is stored twice (same id)"
                );
            }
            false
        }
        Acked::Unknown => {
            debug!(node = %info.node, ?id, "acknowledgement for no message in flight; ignored");
            false
        }
    }
}

/// Passes a message this session held to another node.
fn reroute(
    shared: &Shared,
    from: &MemberInfo,
    load: &NodeLoad,
    message: Forward,
    why: &str,
    rng: &mut SmallRng,
) {
    load.release();
    let id = message.id();
    let client = message.envelope.client.clone();
    if let Some(node) = shared.router.route(message, Some(from.conn), rng) {
        info!(%id, %client, from = %from.node, to = %node, "message resent to another dataNode ({why})");
    }
}
