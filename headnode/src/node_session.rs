//! One task per data node: writes forwarded messages in batches, matches
//! acknowledgements, sends the application heartbeat, and hands back to the
//! router every message it cannot get acknowledged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;
use protocol::connection::Connection;
use protocol::message::{FromDataNode, MessageId, ToDataNode, truncate_for_log};
use protocol::telemetry::MESSAGES_TARGET;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::cluster::Input;
use crate::membership::MemberInfo;
use crate::router::{Forward, Outcome};

/// A data node that has been accepted into the cluster.
pub(crate) struct Registered {
    pub(crate) conn: Connection,
    pub(crate) info: MemberInfo,
    pub(crate) queue: mpsc::UnboundedReceiver<Forward>,
    /// Cancelled by the membership task when it evicts this node.
    pub(crate) evicted: CancellationToken,
    pub(crate) shared: Arc<Shared>,
}

/// Messages sent and not yet acknowledged, oldest first.
struct InFlight {
    by_seq: HashMap<u64, Forward>,
    deadlines: VecDeque<(Instant, u64)>,
    /// Resent elsewhere after a timeout; an ack for one of these means the
    /// message is stored twice.
    timed_out: HashSet<u64>,
}

/// How many timed-out ids to remember for duplicate reports.
const REMEMBER_TIMED_OUT: usize = 100_000;
/// At most this many messages are taken from the queue per write.
const WRITE_BATCH: usize = 1024;

pub(crate) async fn run(registered: Registered, nodes_stop: CancellationToken) {
    let Registered {
        mut conn,
        info,
        mut queue,
        evicted,
        shared,
    } = registered;
    let config = &shared.config;
    let max_in_flight = if info.legacy {
        1
    } else {
        config.max_node_in_flight.max(1)
    };
    let mut in_flight = InFlight {
        by_seq: HashMap::new(),
        deadlines: VecDeque::new(),
        timed_out: HashSet::new(),
    };
    let mut rng: SmallRng = rand::make_rng();
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping_seq = 0u64;
    let mut leaving = false;
    let mut scratch = BytesMut::new();
    let membership = &shared.membership;

    if !info.legacy {
        conn.writer
            .queue_with(|buf| ToDataNode::Welcome(info.node.clone()).encode(buf));
    }

    // Why the session ended; `None` when the membership task already knows.
    let lost: Option<String> = loop {
        let next_deadline = in_flight.deadlines.front().map(|(deadline, _)| *deadline);
        tokio::select! {
            biased;
            _ = evicted.cancelled() => break None,
            _ = nodes_stop.cancelled() => break None,
            flushed = conn.writer.flush(), if conn.writer.pending() > 0 => {
                if let Err(e) = flushed {
                    break Some(format!("write failed: {e}"));
                }
            }
            frame = conn.reader.read_frame() => {
                let line = match frame {
                    Ok(Some(line)) => line,
                    Ok(None) => break Some("closed by the data node".to_owned()),
                    Err(e) => break Some(e.to_string()),
                };
                match FromDataNode::parse(line.as_str()) {
                    Ok(FromDataNode::Stored(id)) => {
                        acknowledge(&info, &mut in_flight, id, shared.ids.epoch());
                    }
                    Ok(FromDataNode::Pong(_)) => {
                        let _ = membership.send(Input::Heartbeat { conn: info.conn });
                    }
                    Ok(FromDataNode::Leaving) => {
                        info!(node = %info.node, in_flight = in_flight.by_seq.len(), "dataNode says it is leaving");
                        leaving = true;
                        let _ = membership.send(Input::Leaving { conn: info.conn });
                    }
                    Ok(FromDataNode::Error(reason)) => {
                        conn.close_with_error(&"closing after your error").await;
                        break Some(format!("data node reported an error: {reason}"));
                    }
                    Err(e) => {
                        warn!(node = %info.node, error = %e, "bad line from dataNode: {}", truncate_for_log(line.as_str()));
                        conn.close_with_error(&e).await;
                        break Some(format!("protocol error: {e}"));
                    }
                }
            }
            message = queue.recv(), if in_flight.by_seq.len() < max_in_flight => {
                let Some(message) = message else { break None };
                if leaving {
                    reroute(&shared, &info, message, "it is leaving", &mut rng);
                    continue;
                }
                send(&mut conn, &info, &mut in_flight, message, config.ack_timeout, &mut scratch);
                let mut taken = 1;
                while taken < WRITE_BATCH && in_flight.by_seq.len() < max_in_flight {
                    let Ok(message) = queue.try_recv() else { break };
                    send(&mut conn, &info, &mut in_flight, message, config.ack_timeout, &mut scratch);
                    taken += 1;
                }
            }
            _ = heartbeat.tick(), if !info.legacy => {
                ping_seq += 1;
                conn.writer.queue_with(|buf| ToDataNode::Ping(ping_seq).encode(buf));
            }
            _ = protocol::server::sleep_until(next_deadline) => {
                let expired = expire(&mut in_flight, Instant::now());
                if info.legacy && !expired.is_empty() {
                    // Its only hang detector: the membership evicts it and we
                    // resend through the eviction path below.
                    for message in expired {
                        in_flight.by_seq.insert(message.id.seq, message);
                    }
                    let _ = membership.send(Input::AckTimeout { conn: info.conn });
                    continue;
                }
                for message in expired {
                    warn!(
                        id = %message.id, client = %message.client, node = %info.node,
                        timeout = ?config.ack_timeout,
                        "no acknowledgement in time; resending to another dataNode (it may end up stored twice)"
                    );
                    reroute(&shared, &info, message, "ack timeout", &mut rng);
                }
            }
        }
        if leaving && in_flight.by_seq.is_empty() {
            conn.writer.queue_with(|buf| ToDataNode::Bye.encode(buf));
            let _ = conn.writer.shutdown().await;
            let _ = membership.send(Input::Drained { conn: info.conn });
            break None;
        }
    };

    if let Some(why) = &lost {
        let _ = membership.send(Input::ConnectionLost {
            conn: info.conn,
            why: why.clone(),
        });
    }
    // Whatever this node held goes to the others.
    queue.close();
    let why = lost.as_deref().unwrap_or("evicted");
    let mut held: Vec<Forward> = in_flight.by_seq.into_values().collect();
    held.sort_by_key(|m| m.id);
    while let Ok(message) = queue.try_recv() {
        held.push(message);
    }
    if !held.is_empty() {
        warn!(node = %info.node, messages = held.len(), "dataNode gone ({why}); resending the messages it had not acknowledged");
    }
    for message in held {
        reroute(&shared, &info, message, why, &mut rng);
    }
    debug!(node = %info.node, "dataNode session ended");
}

fn send(
    conn: &mut Connection,
    info: &MemberInfo,
    in_flight: &mut InFlight,
    message: Forward,
    ack_timeout: std::time::Duration,
    scratch: &mut BytesMut,
) {
    let Ok(text) = std::str::from_utf8(&message.text) else {
        // Client lines are validated UTF-8 when decoded; this cannot happen.
        message.complete(Outcome::Failed("invalid UTF-8".into()));
        return;
    };
    let id = if info.legacy { None } else { Some(message.id) };
    scratch.clear();
    ToDataNode::Store { id, text }.encode(scratch);
    conn.writer.queue(scratch);
    in_flight
        .deadlines
        .push_back((Instant::now() + ack_timeout, message.id.seq));
    in_flight.by_seq.insert(message.id.seq, message);
}

fn acknowledge(info: &MemberInfo, in_flight: &mut InFlight, id: Option<MessageId>, epoch: u64) {
    let message = match id {
        Some(id) if id.epoch != epoch => {
            debug!(node = %info.node, %id, "ack for a message of an earlier head node run; ignored");
            return;
        }
        Some(id) => in_flight.by_seq.remove(&id.seq),
        // Original-system nodes hold one message at a time.
        None => {
            let seq = in_flight.by_seq.keys().next().copied();
            seq.and_then(|seq| in_flight.by_seq.remove(&seq))
        }
    };
    // Acks come in order; keep the deadline queue to messages still waiting.
    while let Some(&(_, seq)) = in_flight.deadlines.front() {
        if in_flight.by_seq.contains_key(&seq) {
            break;
        }
        in_flight.deadlines.pop_front();
    }
    match message {
        Some(message) => {
            info!(
                target: MESSAGES_TARGET,
                id = %message.id, client = %message.client,
                "recibido en dataNode {} {}", info.node, info.addr
            );
            message.complete(Outcome::Stored {
                node: info.node.clone(),
            });
        }
        None => {
            if let Some(id) = id.filter(|id| in_flight.timed_out.remove(&id.seq)) {
                warn!(
                    %id, node = %info.node,
                    "late acknowledgement: this message was resent after a timeout and is stored twice (same id)"
                );
            } else {
                debug!(node = %info.node, ?id, "acknowledgement for no message in flight; ignored");
            }
        }
    }
}

/// Removes and returns messages whose ack deadline has passed.
fn expire(in_flight: &mut InFlight, now: Instant) -> Vec<Forward> {
    let mut expired = Vec::new();
    while let Some(&(deadline, seq)) = in_flight.deadlines.front() {
        if deadline > now {
            break;
        }
        in_flight.deadlines.pop_front();
        if let Some(message) = in_flight.by_seq.remove(&seq) {
            if in_flight.timed_out.len() >= REMEMBER_TIMED_OUT {
                in_flight.timed_out.clear();
            }
            in_flight.timed_out.insert(seq);
            expired.push(message);
        }
    }
    // Acked messages leave stale deadlines behind; drop them from the front
    // so the next wake-up is for a message still waiting.
    while let Some(&(_, seq)) = in_flight.deadlines.front() {
        if in_flight.by_seq.contains_key(&seq) {
            break;
        }
        in_flight.deadlines.pop_front();
    }
    expired
}

fn reroute(shared: &Shared, from: &MemberInfo, message: Forward, why: &str, rng: &mut SmallRng) {
    let id = message.id;
    let client = message.client.clone();
    if let Some(node) = shared.router.route(message, Some(from.conn), rng) {
        info!(%id, %client, from = %from.node, to = %node, "message resent to another dataNode ({why})");
    }
}
