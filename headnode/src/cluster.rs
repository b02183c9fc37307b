//! The membership task: the single owner of [`Membership`].
//!
//! Data-node sessions, ICMP rounds and probes report to it through an
//! unbounded channel of [`Input`]s; it feeds them to the state machine with
//! the current time, carries out the resulting [`Event`]s (publish routes,
//! close evicted connections, spawn probes) and writes the heartbeat log.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::telemetry::HEARTBEAT_TARGET;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::membership::{
    ConnId, DetectorConfig, Event, EvictReason, MemberInfo, Membership, ProbeOutcome, Refusal,
};
use crate::prober::Prober;
use crate::router::{Forward, NodeHandle, Routes};

/// What the membership task hears about.
#[derive(Debug)]
pub(crate) enum Input {
    /// A data node finished the handshake and asks to join.
    Register {
        info: MemberInfo,
        queue: mpsc::UnboundedSender<Forward>,
        /// Cancelled when the member is evicted; the session then closes.
        evicted: CancellationToken,
        respond: oneshot::Sender<Result<(), Refusal>>,
    },
    /// The member answered an application heartbeat.
    Heartbeat { conn: ConnId },
    /// The member's connection ended or broke the protocol.
    ConnectionLost { conn: ConnId, why: String },
    /// The member said `bye`.
    Leaving { conn: ConnId },
    /// A leaving member has acknowledged everything it held.
    Drained { conn: ConnId },
    /// An original-system member did not acknowledge in time.
    AckTimeout { conn: ConnId },
    /// An ICMP round finished.
    RoundDone {
        results: Vec<(ConnId, ProbeOutcome)>,
    },
    /// The probe deciding hung vs unreachable finished.
    ConfirmDone { conn: ConnId, outcome: ProbeOutcome },
}

/// Timings of the membership task.
#[derive(Debug, Clone)]
pub(crate) struct ClusterConfig {
    pub(crate) detector: DetectorConfig,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) observer: Option<mpsc::UnboundedSender<Event>>,
}

struct Session {
    handle: NodeHandle,
    evicted: CancellationToken,
}

/// Runs the membership task until `cancel`; then evicts everyone.
pub(crate) async fn run_membership(
    config: ClusterConfig,
    prober: Arc<dyn Prober>,
    inputs_tx: mpsc::UnboundedSender<Input>,
    mut inputs: mpsc::UnboundedReceiver<Input>,
    routes: watch::Sender<Arc<Routes>>,
    cancel: CancellationToken,
) {
    let mut membership = Membership::new(config.detector.clone());
    let mut sessions: HashMap<ConnId, Session> = HashMap::new();
    let mut rounds = tokio::time::interval(config.ping_interval);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Fine-grained enough that suspicion and eviction land within ~50 ms of due.
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probes = JoinSet::new();
    let misses_allowed = config.detector.ping_misses.max(1);

    loop {
        let events = tokio::select! {
            _ = cancel.cancelled() => break,
            input = inputs.recv() => match input {
                Some(input) => handle_input(&mut membership, &mut sessions, input),
                None => break,
            },
            _ = ticks.tick() => membership.tick(now()),
            _ = rounds.tick() => {
                start_round(&membership, &prober, config.ping_timeout, &inputs_tx, &mut probes);
                Vec::new()
            }
            Some(_) = probes.join_next(), if !probes.is_empty() => Vec::new(),
        };
        if events.is_empty() {
            continue;
        }
        if let Some(observer) = &config.observer {
            for event in &events {
                let _ = observer.send(event.clone());
            }
        }
        let routes_changed = carry_out(
            &events,
            &mut sessions,
            &prober,
            config.ping_timeout,
            &inputs_tx,
            &mut probes,
            misses_allowed,
        );
        if routes_changed {
            publish(&membership, &sessions, &routes);
        }
    }

    let events = membership.evict_all();
    carry_out(
        &events,
        &mut sessions,
        &prober,
        config.ping_timeout,
        &inputs_tx,
        &mut probes,
        misses_allowed,
    );
    publish(&membership, &sessions, &routes);
    probes.abort_all();
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn handle_input(
    membership: &mut Membership,
    sessions: &mut HashMap<ConnId, Session>,
    input: Input,
) -> Vec<Event> {
    match input {
        Input::Register {
            info,
            queue,
            evicted,
            respond,
        } => match membership.register(info.clone(), now()) {
            Ok(events) => {
                sessions.insert(
                    info.conn,
                    Session {
                        handle: NodeHandle {
                            conn: info.conn,
                            node: info.node.clone(),
                            queue,
                        },
                        evicted,
                    },
                );
                let _ = respond.send(Ok(()));
                events
            }
            Err(refusal) => {
                warn!(target: HEARTBEAT_TARGET, node = %info.node, addr = %info.addr, "registration refused: {refusal}");
                let _ = respond.send(Err(refusal));
                Vec::new()
            }
        },
        Input::Heartbeat { conn } => membership.heartbeat(conn, now()),
        Input::ConnectionLost { conn, why } => membership.connection_lost(conn, why),
        Input::Leaving { conn } => membership.leaving(conn),
        Input::Drained { conn } => membership.left(conn),
        Input::AckTimeout { conn } => membership.ack_timeout(conn),
        Input::RoundDone { results } => {
            let mut events = Vec::new();
            for (conn, outcome) in results {
                events.extend(membership.round_result(conn, outcome));
            }
            events
        }
        Input::ConfirmDone { conn, outcome } => membership.confirm_result(conn, outcome, now()),
    }
}

/// One ICMP round: every member's host is pinged once (hosts shared by
/// several members, as on one machine, once in all), concurrently.
fn start_round(
    membership: &Membership,
    prober: &Arc<dyn Prober>,
    timeout: Duration,
    inputs: &mpsc::UnboundedSender<Input>,
    probes: &mut JoinSet<()>,
) {
    let members: Vec<(ConnId, IpAddr)> = membership.members().map(|m| (m.conn, m.addr)).collect();
    if members.is_empty() {
        info!(target: HEARTBEAT_TARGET, "no hay dataNodes");
        return;
    }
    let prober = prober.clone();
    let inputs = inputs.clone();
    probes.spawn(async move {
        let hosts: HashSet<IpAddr> = members.iter().map(|(_, addr)| *addr).collect();
        let mut pings = JoinSet::new();
        for host in hosts {
            let prober = prober.clone();
            pings.spawn(async move { (host, prober.probe(host, timeout).await) });
        }
        let mut outcomes = HashMap::new();
        while let Some(Ok((host, outcome))) = pings.join_next().await {
            outcomes.insert(host, outcome);
        }
        let results = members
            .into_iter()
            .map(|(conn, addr)| {
                (
                    conn,
                    outcomes
                        .get(&addr)
                        .copied()
                        .unwrap_or(ProbeOutcome::NoReply),
                )
            })
            .collect();
        let _ = inputs.send(Input::RoundDone { results });
    });
}

/// Logs and acts on events. Returns whether the routable set may have changed.
fn carry_out(
    events: &[Event],
    sessions: &mut HashMap<ConnId, Session>,
    prober: &Arc<dyn Prober>,
    ping_timeout: Duration,
    inputs: &mpsc::UnboundedSender<Input>,
    probes: &mut JoinSet<()>,
    misses_allowed: u32,
) -> bool {
    let mut routes_changed = false;
    for event in events {
        match event {
            Event::Joined { member, rejoined } => {
                let verb = if *rejoined { "rejoined" } else { "joined" };
                let kind = if member.legacy {
                    ", original-system node"
                } else {
                    ""
                };
                info!(target: HEARTBEAT_TARGET, "{member} {verb} (incarnation {}{kind})", member.incarnation);
                routes_changed = true;
            }
            Event::Suspected { member, silent_for } => {
                warn!(
                    target: HEARTBEAT_TARGET,
                    "{member} suspect: no heartbeat reply for {:.1}s; no new messages routed to it",
                    silent_for.as_secs_f64()
                );
                routes_changed = true;
            }
            Event::Recovered { member } => {
                info!(target: HEARTBEAT_TARGET, "{member} answering again; routing to it again");
                routes_changed = true;
            }
            Event::ProbeNow { member } => {
                let prober = prober.clone();
                let inputs = inputs.clone();
                let (conn, addr) = (member.conn, member.addr);
                probes.spawn(async move {
                    let outcome = prober.probe(addr, ping_timeout).await;
                    let _ = inputs.send(Input::ConfirmDone { conn, outcome });
                });
            }
            Event::Leaving { member } => {
                info!(target: HEARTBEAT_TARGET, "{member} leaving: draining the messages it holds");
                routes_changed = true;
            }
            Event::Evicted { member, reason } => {
                match reason {
                    EvictReason::Unreachable => {
                        warn!(target: HEARTBEAT_TARGET, "{member} no disponible, eliminado")
                    }
                    EvictReason::Left => {
                        info!(target: HEARTBEAT_TARGET, "{member} {reason}, eliminado")
                    }
                    _ => warn!(target: HEARTBEAT_TARGET, "{member} {reason}, eliminado"),
                }
                if let Some(session) = sessions.remove(&member.conn) {
                    session.evicted.cancel();
                }
                routes_changed = true;
            }
            Event::Available { member, rtt } => {
                info!(
                    target: HEARTBEAT_TARGET,
                    "{member} disponible {:.3}ms",
                    rtt.as_secs_f64() * 1000.0
                );
            }
            Event::Missed { member, misses } => {
                warn!(target: HEARTBEAT_TARGET, "{member} did not answer ping ({misses} of {misses_allowed} allowed misses)");
            }
            Event::NoneLeft => {
                warn!(target: HEARTBEAT_TARGET, "no hay dataNodes");
                warn!("no hay dataNodes");
            }
        }
    }
    routes_changed
}

fn publish(
    membership: &Membership,
    sessions: &HashMap<ConnId, Session>,
    routes: &watch::Sender<Arc<Routes>>,
) {
    let nodes = membership
        .routable()
        .filter_map(|m| sessions.get(&m.conn).map(|s| s.handle.clone()))
        .collect();
    routes.send_replace(Arc::new(Routes { nodes }));
}
