//! The membership task: the single owner of [`Membership`].
//!
//! Data-node sessions, ICMP rounds and probes report to it through a
//! bounded channel of [`Input`]s; it feeds them to the state machine with
//! the current time, carries out the resulting [`Event`]s (publish routes,
//! close evicted connections, spawn probes) and writes the heartbeat log.
//! The routes it publishes carry the member set (sent to the data nodes as
//! `members` once recovery is done) and whether a majority of it is live,
//! and it logs when the majority is lost and regained.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use node_kit::telemetry::HEARTBEAT_TARGET;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::forward::Forward;
use crate::state::keys::{KeyTable, ReportedKeys};
use crate::state::membership::{
    ConnId, DetectorConfig, Event, EvictReason, MemberInfo, Membership, ProbeOutcome, Quorum,
    Refusal,
};
use crate::state::probe::Prober;
use crate::state::reads::{NodeReader, ReadJob};
use crate::state::recovery::{Gate, Recovered, Recovery};
use crate::state::repair::MemberChange;
use crate::state::router::{NodeHandle, NodeLoad, Routes};
use crate::state::signal::Signal;
use crate::state::status::Status;
use crate::tasks::repair::RepairEvent;
use protocol::ids::NodeId;

/// What the membership task hears about.
#[derive(Debug)]
pub(crate) enum Input {
    /// A data node finished the handshake and asks to join.
    Register {
        info: MemberInfo,
        queue: mpsc::UnboundedSender<Forward>,
        /// Messages its session holds (read by the router).
        load: Arc<NodeLoad>,
        /// Cancelled when the member is evicted; the session then closes.
        evicted: CancellationToken,
        /// Where its session takes reads; `None` for a node that serves
        /// none (an original-system one).
        reads: Option<mpsc::Sender<ReadJob>>,
        /// The nodes its report named (see `recovery`).
        peers: Vec<NodeId>,
        /// The keys it reported: into the key table if it is accepted,
        /// discarded if it is refused.
        keys: ReportedKeys,
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
    /// A repair pass that began while these nodes were rebuilding (back
    /// with these data directories) has ended: they hold their share.
    Repaired { nodes: Vec<(NodeId, u64)> },
}

/// What the membership task works with: its timings, and where it reports.
pub(crate) struct ClusterConfig {
    pub(crate) detector: DetectorConfig,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) observer: Option<mpsc::UnboundedSender<Event>>,
    /// How long to wait for the nodes the previous head node had.
    pub(crate) recovery_wait: Duration,
    /// How long a member must be absent before it leaves the member set
    /// (while a majority is live).
    pub(crate) remove_after: Duration,
    /// Where membership events are recorded for the operator.
    pub(crate) status: Arc<Status>,
    /// Told every membership change that decides a repair pass (see
    /// [`RepairEvent`]).
    pub(crate) repair_tx: mpsc::Sender<RepairEvent>,
    pub(crate) prober: Arc<dyn Prober>,
    /// Its own inputs, for the probes it starts to report to.
    pub(crate) inputs_tx: mpsc::Sender<Input>,
    /// Where it publishes the routes.
    pub(crate) routes_tx: watch::Sender<Arc<Routes>>,
    /// Bumped after every new snapshot in `routes_tx`: what wakes its
    /// readers.
    pub(crate) route_changes: Arc<Signal>,
    /// Opened once recovery is done: clients are read from then on.
    pub(crate) recovered: Arc<Gate>,
    /// The key table: an accepted node's reported keys go in, and a node
    /// back with a new data directory leaves its entries.
    pub(crate) keys: Arc<KeyTable>,
}

struct Session {
    handle: NodeHandle,
    /// Its reads, when it serves them.
    reader: Option<NodeReader>,
    evicted: CancellationToken,
}

/// The membership task's state: the state machine and what carries out its
/// decisions.
struct Driver {
    config: ClusterConfig,
    membership: Membership,
    sessions: HashMap<ConnId, Session>,
    /// ICMP rounds and confirming probes under way.
    probes: JoinSet<()>,
    recovery: Recovery,
    /// What the last published routes said of the majority.
    majority: bool,
}

/// Runs the membership task until `cancel`; then evicts everyone.
pub(crate) async fn run_membership(
    config: ClusterConfig,
    mut inputs: mpsc::Receiver<Input>,
    cancel: CancellationToken,
) {
    let mut rounds = tokio::time::interval(config.ping_interval);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Fine-grained enough that suspicion and eviction land within ~50 ms of due.
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut driver = Driver {
        membership: Membership::new(config.detector.clone(), config.remove_after),
        recovery: Recovery::new(now(), config.recovery_wait),
        config,
        sessions: HashMap::new(),
        probes: JoinSet::new(),
        majority: false,
    };

    loop {
        // Biased, so runs repeat exactly; the timers come before the inputs
        // so a steady stream of inputs cannot starve them.
        let events = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => {
                if let Some(done) = driver.recovery.tick(now()) {
                    driver.recovered(done);
                }
                driver.membership.tick(now())
            }
            _ = rounds.tick() => {
                driver.start_round();
                Vec::new()
            }
            Some(done) = driver.probes.join_next(), if !driver.probes.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    // A probe that panics would silently stop failure
                    // detection; let the head node see this task die.
                    std::panic::resume_unwind(e.into_panic());
                }
                Vec::new()
            }
            input = inputs.recv() => match input {
                Some(input) => driver.handle_input(input),
                None => break,
            },
        };
        driver.carry_out(&events).await;
    }

    let events = driver.membership.evict_all(now());
    driver.carry_out(&events).await;
    driver.probes.abort_all();
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Driver {
    fn recovered(&mut self, done: Recovered) {
        match done {
            Recovered::AllReported { nodes } => info!(
                target: HEARTBEAT_TARGET,
                nodes, "recovery done: every data node the previous head node had has reported what it holds; serving clients"
            ),
            Recovered::TimedOut { missing } => warn!(
                target: HEARTBEAT_TARGET,
                missing = ?missing.iter().map(NodeId::as_str).collect::<Vec<_>>(),
                wait = ?self.config.recovery_wait,
                "recovery wait over: serving clients without these data nodes' reports (a resend of a key only they hold would be stored again)"
            ),
        }
        // The set learned from the reports is the cluster's from now on,
        // and the data nodes are told it.
        self.membership.recovered(now());
        // The key table's bound holds again (within one generation).
        self.config.keys.recovered(tokio::time::Instant::now());
        // The routes that name the member set first: a reader let in by the
        // gate reads them, never the ones before.
        self.publish();
        self.config.recovered.open();
    }

    fn handle_input(&mut self, input: Input) -> Vec<Event> {
        let membership = &mut self.membership;
        match input {
            Input::Register {
                info,
                queue,
                load,
                evicted,
                reads,
                peers,
                keys,
                respond,
            } => {
                let known_store = membership.known_store(&info.node);
                match membership.register(info.clone(), now()) {
                    Ok(events) => {
                        membership.reported(&peers, now());
                        // Before recovery may end on this report: its keys are
                        // in the table by then.
                        if let (Some(store), Some(known)) = (info.store, known_store)
                            && store != known
                        {
                            let left = self.config.keys.forget_holder(&info.node);
                            info!(
                                node = %info.node, store = format_args!("{store:016x}"), replaced = format_args!("{known:016x}"), keys = left,
                                "dataNode back with a new data directory: no longer named as the holder of the keys it held"
                            );
                        }
                        let reported = keys.len();
                        self.config.keys.holds_reported(
                            keys,
                            &info.node,
                            tokio::time::Instant::now(),
                        );
                        debug!(node = %info.node, keys = reported, "reported keys in the key table");
                        self.sessions.insert(
                            info.conn,
                            Session {
                                handle: NodeHandle {
                                    conn: info.conn,
                                    node: info.node.clone(),
                                    zone: info.zone.clone(),
                                    queue,
                                    load,
                                    one_at_a_time: info.legacy,
                                },
                                reader: reads
                                    .map(|jobs_tx| NodeReader::new(info.node.clone(), jobs_tx)),
                                evicted,
                            },
                        );
                        // After the session is in: the routes recovery publishes
                        // include this node, whose report may have ended it.
                        if let Some(done) = self.recovery.reported(&info.node, &peers, now()) {
                            self.recovered(done);
                        }
                        let _ = respond.send(Ok(()));
                        events
                    }
                    Err(refusal) => {
                        warn!(
                            target: HEARTBEAT_TARGET, node = %info.node, addr = %info.addr, discarded_keys = keys.len(),
                            "registration refused: {refusal}; the keys it reported are discarded"
                        );
                        let _ = respond.send(Err(refusal));
                        Vec::new()
                    }
                }
            }
            Input::Heartbeat { conn } => {
                if let Some(session) = self.sessions.get(&conn) {
                    self.config
                        .status
                        .heartbeat(&session.handle.node, tokio::time::Instant::now());
                }
                membership.heartbeat(conn, now())
            }
            Input::ConnectionLost { conn, why } => membership.connection_lost(conn, why, now()),
            Input::Leaving { conn } => membership.leaving(conn),
            Input::Drained { conn } => membership.left(conn, now()),
            Input::AckTimeout { conn } => membership.ack_timeout(conn, now()),
            Input::RoundDone { results } => membership.round_result(&results, now()),
            Input::ConfirmDone { conn, outcome } => membership.confirm_result(conn, outcome, now()),
            Input::Repaired { nodes } => {
                if membership.repaired(&nodes) {
                    let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
                    info!(
                        target: HEARTBEAT_TARGET,
                        "repair gave {} their share after a new data directory: their notfound counts again",
                        names.join(" ")
                    );
                    self.publish();
                }
                Vec::new()
            }
        }
    }

    /// One ICMP round: every member's host is pinged once (hosts shared by
    /// several members, as on one machine, once in all), concurrently.
    fn start_round(&mut self) {
        let members: Vec<(ConnId, IpAddr)> = self
            .membership
            .members()
            .map(|m| (m.conn, m.addr))
            .collect();
        if members.is_empty() {
            info!(target: HEARTBEAT_TARGET, "no hay dataNodes");
            return;
        }
        let prober = self.config.prober.clone();
        let inputs = self.config.inputs_tx.clone();
        let timeout = self.config.ping_timeout;
        self.probes.spawn(async move {
            // Ordered, so the prober sees the same sequence of calls every run.
            let hosts: BTreeSet<IpAddr> = members.iter().map(|(_, addr)| *addr).collect();
            let mut pings = JoinSet::new();
            for host in hosts {
                let prober = prober.clone();
                pings.spawn(async move { (host, prober.probe(host, timeout).await) });
            }
            let mut outcomes = HashMap::new();
            while let Some(done) = pings.join_next().await {
                match done {
                    Ok((host, outcome)) => {
                        outcomes.insert(host, outcome);
                    }
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => {}
                }
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
            let _ = inputs.send(Input::RoundDone { results }).await;
        });
    }

    /// Sends the repair task what `event` changes for it, if anything. Never
    /// dropped: when its queue is full, this waits for room (the repair task
    /// reads it in every state, so the wait is short); when that task has
    /// ended (repair off, or shutting down), nobody needs it.
    async fn tell_repair(&self, event: &Event) {
        let Some(change) = MemberChange::of(event) else {
            return;
        };
        let event = RepairEvent {
            change,
            at: tokio::time::Instant::now(),
        };
        if let Err(mpsc::error::TrySendError::Full(event)) = self.config.repair_tx.try_send(event) {
            let _ = self.config.repair_tx.send(event).await;
        }
    }

    /// Logs and acts on events, then republishes the routes if they may have changed.
    async fn carry_out(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        if let Some(observer) = &self.config.observer {
            for event in events {
                let _ = observer.send(event.clone());
            }
        }
        let mut routes_changed = false;
        for event in events {
            self.config.status.record(
                event,
                tokio::time::Instant::now(),
                std::time::SystemTime::now(),
            );
            self.tell_repair(event).await;
            routes_changed |= self.act_on(event);
        }
        if routes_changed {
            self.publish();
        }
    }

    /// Logs `event` and does what it asks; whether the routes may have
    /// changed.
    fn act_on(&mut self, event: &Event) -> bool {
        let misses_allowed = self.config.detector.ping_misses.max(1);
        match event {
            Event::Joined { member, rejoined } => {
                let verb = if *rejoined { "rejoined" } else { "joined" };
                let kind = if member.legacy {
                    ", original-system node"
                } else {
                    ""
                };
                let store = member
                    .store
                    .map(|store| format!(", store {store:016x}"))
                    .unwrap_or_default();
                info!(target: HEARTBEAT_TARGET, "{member} {verb} (incarnation {}{store}{kind})", member.incarnation);
                true
            }
            Event::Suspected { member, silent_for } => {
                warn!(
                    target: HEARTBEAT_TARGET,
                    "{member} suspect: no heartbeat reply for {:.1}s; no new messages routed to it",
                    silent_for.as_secs_f64()
                );
                true
            }
            Event::Recovered { member } => {
                info!(target: HEARTBEAT_TARGET, "{member} answering again; routing to it again");
                true
            }
            Event::ProbeNow { member } => {
                let prober = self.config.prober.clone();
                let inputs = self.config.inputs_tx.clone();
                let (conn, addr, timeout) = (member.conn, member.addr, self.config.ping_timeout);
                self.probes.spawn(async move {
                    let outcome = prober.probe(addr, timeout).await;
                    let _ = inputs.send(Input::ConfirmDone { conn, outcome }).await;
                });
                false
            }
            Event::Leaving { member } => {
                info!(target: HEARTBEAT_TARGET, "{member} leaving: draining the messages it holds");
                true
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
                if let Some(session) = self.sessions.remove(&member.conn) {
                    session.evicted.cancel();
                }
                true
            }
            Event::Available { member, rtt } => {
                info!(
                    target: HEARTBEAT_TARGET,
                    "{member} disponible {:.3}ms",
                    rtt.as_secs_f64() * 1000.0
                );
                false
            }
            Event::Missed {
                member,
                misses,
                heartbeat_answers,
            } => {
                let heartbeat = if *heartbeat_answers {
                    "; its heartbeat still answers"
                } else {
                    ""
                };
                warn!(target: HEARTBEAT_TARGET, "{member} did not answer ping ({misses} of {misses_allowed} allowed misses){heartbeat}");
                false
            }
            Event::IcmpUnanswered { rounds } => {
                let plural = if *rounds == 1 { "" } else { "s" };
                warn!(
                    target: HEARTBEAT_TARGET,
                    "ICMP unavailable: no echo reply from any data node for {rounds} round{plural} while every heartbeat answers; \
                     evicting on heartbeat and connection loss only"
                );
                false
            }
            Event::IcmpAnswering => {
                info!(target: HEARTBEAT_TARGET, "ICMP answering again; missed rounds count toward eviction again");
                false
            }
            Event::NoneLeft => {
                warn!(target: HEARTBEAT_TARGET, "no hay dataNodes");
                warn!("no hay dataNodes");
                false
            }
            Event::Removed { node, absent_for } => {
                warn!(
                    target: HEARTBEAT_TARGET,
                    "{node} removed from the member set: absent for {:.0}s while a majority was live",
                    absent_for.as_secs_f64()
                );
                true
            }
        }
    }

    fn publish(&mut self) {
        let nodes = self
            .membership
            .routable()
            .filter_map(|m| self.sessions.get(&m.conn).map(|s| s.handle.clone()))
            .collect();
        // Every member, not only the routable: a suspect or leaving node
        // still serves reads of what it holds.
        let readers = self
            .membership
            .members()
            .filter_map(|m| self.sessions.get(&m.conn)?.reader.clone())
            .collect();
        let quorum = self.membership.quorum();
        self.log_majority(quorum);
        let member_set = self
            .recovery
            .is_done()
            .then(|| self.membership.member_set().into());
        let mut routes = Routes::with_readers(nodes, readers, quorum, member_set);
        routes.rebuilding = self.membership.rebuilding();
        self.config.routes_tx.send_replace(Arc::new(routes));
        self.config.route_changes.bump();
    }

    /// Logs a majority lost or regained since the last routes published.
    fn log_majority(&mut self, quorum: Quorum) {
        let holds = quorum.holds();
        if holds == self.majority {
            return;
        }
        self.majority = holds;
        let members: Vec<String> = self
            .membership
            .member_set()
            .iter()
            .map(ToString::to_string)
            .collect();
        if holds {
            info!(target: HEARTBEAT_TARGET, members = ?members, "majority of the member set live ({quorum}): answering clients");
        } else if quorum.members > 0 {
            warn!(
                target: HEARTBEAT_TARGET, members = ?members,
                "no majority of the member set live ({quorum}): no client is answered recibido until it is back (another head node may have taken over)"
            );
        }
    }
}
