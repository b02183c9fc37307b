//! The status counters and the cluster table the operator sees (on the
//! HTTP port; the page and its endpoints are `tasks::status`).
//!
//! The hot path only adds to atomics: messages stored, each data node's
//! copies and bytes (its session holds its counters), and the
//! acknowledgement latency (sampled: see `client_session`). Everything
//! else is read when asked for, or kept by the membership task, which
//! records every membership event here (a short lock, a few times a second
//! at most), and by the node sessions, which record each data node's fsync
//! report (the same lock, once per node every few seconds). Every call
//! that depends on the time is given it.
//!
//! Readers' requests are counted by kind and failure reason, and timed,
//! in [`ReadMetrics`]: a few atomic additions per request.
//!
//! What the status shows besides its own counters (the epoch, repair, the
//! connections) comes in as [`Facts`] when a snapshot or the metrics are
//! asked for.
//!
//! Bounded: the table keeps the current members and at most
//! [`KEPT_DEPARTED`] departed (evicted or left) nodes, each for at most
//! [`KEPT_DEPARTED_FOR`]; the event ring keeps the last [`RECENT_EVENTS`]
//! events; the rate window [`RATE_WINDOW`] samples.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use node_kit::metrics::{AtomicHistogram, LATENCY_BUCKETS};
use node_kit::timefmt::timestamp;
use protocol::datanode::{FSYNC_REPORT_EVERY, FsyncReport};
use protocol::ids::NodeId;
use protocol::status::{ClusterEvent, Eviction, NodeStatus, RepairPass, StatusSnapshot, Totals};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::state::forward::Replication;
use crate::state::membership::{Event, EvictReason};

mod metrics;

/// Departed (evicted or left) nodes kept in the table at most; the one
/// that departed first goes first.
pub(crate) const KEPT_DEPARTED: usize = 64;
/// How long a departed node stays in the table at most.
pub(crate) const KEPT_DEPARTED_FOR: Duration = Duration::from_secs(3600);
/// Membership events kept for the status page.
pub(crate) const RECENT_EVENTS: usize = 50;
/// Samples (one a second) the message rate is measured over.
pub(crate) const RATE_WINDOW: usize = 5;
/// A data node's fsync report older than this is not shown: it reports
/// every [`FSYNC_REPORT_EVERY`], so it missed three.
pub(crate) const FSYNC_REPORT_STALE: Duration = FSYNC_REPORT_EVERY.saturating_mul(3);

/// The reason kinds of evictions, as labels and in the snapshot.
const REASONS: [&str; 8] = [
    "unreachable",
    "hung",
    "silent",
    "ack_timeout",
    "connection_lost",
    "left",
    "replaced",
    "shutdown",
];

fn reason_index(reason: &EvictReason) -> usize {
    match reason {
        EvictReason::Unreachable => 0,
        EvictReason::Hung { .. } => 1,
        EvictReason::Silent { .. } => 2,
        EvictReason::AckTimeout => 3,
        EvictReason::ConnectionLost(_) => 4,
        EvictReason::Left => 5,
        EvictReason::Replaced { .. } => 6,
        EvictReason::Shutdown => 7,
    }
}

/// The states a row can be in, as labels and in the snapshot.
const STATES: [&str; 5] = ["live", "suspect", "leaving", "evicted", "left"];

/// What a reader asked for, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadKind {
    /// `get <message-id>`.
    Get,
    /// `get <client-id>/<seq>`.
    GetKey,
    /// `tail ...`.
    Tail,
}

/// The labels of [`ReadKind`], in its order.
const READ_KINDS: [&str; 3] = ["get", "getkey", "tail"];

/// Why a reader's request was answered `ERROR`, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFailure {
    /// No place in the read budget (`--max-reads`) in time.
    Busy,
    /// No live data node to ask.
    NoDataNodes,
    /// A `get` found nothing and a member that could hold it could not
    /// be read (`ERROR unavailable: ...`).
    Unreadable,
    /// Beyond the requests taken from one reader at once.
    TooManyInFlight,
    /// Not a request.
    BadRequest,
    /// A tail stopped where members that could hold the next messages
    /// alone could not be read (`ERROR incomplete: ...`).
    Incomplete,
}

/// The labels of [`ReadFailure`], in its order.
const READ_FAILURES: [&str; 6] = [
    "busy",
    "no_data_nodes",
    "unreadable",
    "too_many_in_flight",
    "bad_request",
    "incomplete",
];

/// Readers' requests: answered by kind, failed by reason, and how long
/// each took from its turn to its answer.
#[derive(Debug)]
pub(crate) struct ReadMetrics {
    served: [AtomicU64; READ_KINDS.len()],
    failed: [AtomicU64; READ_FAILURES.len()],
    latency: [AtomicHistogram; READ_KINDS.len()],
}

impl Default for ReadMetrics {
    fn default() -> Self {
        ReadMetrics {
            served: std::array::from_fn(|_| AtomicU64::new(0)),
            failed: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicHistogram::new(LATENCY_BUCKETS)),
        }
    }
}

impl ReadMetrics {
    /// A request of `kind` answered after `took`: served (`found`,
    /// `notfound`, a tail's `end`) or failed (`ERROR`).
    pub(crate) fn answered(&self, kind: ReadKind, failure: Option<ReadFailure>, took: Duration) {
        match failure {
            None => self.served[kind as usize].fetch_add(1, Ordering::Relaxed),
            Some(why) => self.failed[why as usize].fetch_add(1, Ordering::Relaxed),
        };
        self.latency[kind as usize].observe(took);
    }

    /// A request refused before its turn (malformed, or beyond the
    /// reader's bound): not timed.
    pub(crate) fn refused(&self, why: ReadFailure) {
        self.failed[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies one data node acknowledged, counted by its session.
#[derive(Debug, Default)]
pub(crate) struct NodeCounters {
    copies: AtomicU64,
    bytes: AtomicU64,
}

impl NodeCounters {
    /// One copy of `bytes` bytes of text written there.
    pub(crate) fn count(&self, bytes: usize) {
        self.copies.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Row {
    zone: Option<String>,
    addr: IpAddr,
    /// An index into [`STATES`].
    state: usize,
    incarnation: u64,
    last_heartbeat: Option<Instant>,
    rtt: Option<Duration>,
    /// Its last fsync report, and when it came; cleared when it departs
    /// or joins again.
    fsync: Option<(FsyncReport, Instant)>,
    last_eviction: Option<Evicted>,
    departed: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Evicted {
    reason: usize,
    detail: String,
    at: SystemTime,
    when: Instant,
}

#[derive(Debug)]
struct Recorded {
    at: SystemTime,
    when: Instant,
    node: NodeId,
    kind: &'static str,
    reason: Option<usize>,
    detail: String,
}

#[derive(Debug, Default)]
struct View {
    rows: BTreeMap<NodeId, Row>,
    /// By node id, across its incarnations; kept while its row is.
    counters: HashMap<NodeId, Arc<NodeCounters>>,
    events: VecDeque<Recorded>,
}

/// Counters and the cluster table. One per head node, shared.
#[derive(Debug)]
pub(crate) struct Status {
    started: Instant,
    /// Messages stored with the copies their client waited for.
    stored: AtomicU64,
    /// From a client's request to its answer (sampled).
    pub(crate) ack_latency: AtomicHistogram,
    /// Readers' requests.
    pub(crate) reads: ReadMetrics,
    evictions: [AtomicU64; REASONS.len()],
    view: Mutex<View>,
    /// (time, messages stored) once a second, newest last.
    rate: Mutex<VecDeque<(Instant, u64)>>,
    /// The snapshot, as JSON, for `/events`.
    feed: watch::Sender<Arc<str>>,
}

impl Status {
    /// The status of a head node started at `started`.
    pub(crate) fn new(started: Instant) -> Self {
        Status {
            started,
            stored: AtomicU64::new(0),
            ack_latency: AtomicHistogram::new(LATENCY_BUCKETS),
            reads: ReadMetrics::default(),
            evictions: std::array::from_fn(|_| AtomicU64::new(0)),
            view: Mutex::default(),
            rate: Mutex::default(),
            feed: watch::Sender::new(Arc::from("{}")),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks leaves the state consistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Status {
    /// One message stored with the copies its client waited for.
    pub(crate) fn count_stored(&self) {
        self.stored.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters a data node's session adds to.
    pub(crate) fn node_counters(&self, node: &NodeId) -> Arc<NodeCounters> {
        lock(&self.view)
            .counters
            .entry(node.clone())
            .or_default()
            .clone()
    }

    /// A member answered its heartbeat at `now`.
    pub(crate) fn heartbeat(&self, node: &NodeId, now: Instant) {
        if let Some(row) = lock(&self.view).rows.get_mut(node) {
            row.last_heartbeat = Some(now);
        }
    }

    /// A data node's fsync report, from its session (incarnation
    /// `incarnation`), received at `now`: shown in its row until it
    /// departs or the report is [`FSYNC_REPORT_STALE`].
    pub(crate) fn fsync_reported(
        &self,
        node: &NodeId,
        incarnation: u64,
        report: FsyncReport,
        now: Instant,
    ) {
        if let Some(row) = lock(&self.view).rows.get_mut(node)
            && row.incarnation == incarnation
            && row.departed.is_none()
        {
            row.fsync = Some((report, now));
        }
    }

    /// Records what a membership event, emitted at `now` (`wall` on the
    /// wall clock), changes in the table.
    pub(crate) fn record(&self, event: &Event, now: Instant, wall: SystemTime) {
        let mut view = lock(&self.view);
        let view = &mut *view;
        let (node, kind, reason, detail) = match event {
            Event::Joined { member, rejoined } => {
                let row = view.rows.entry(member.node.clone()).or_insert(Row {
                    zone: None,
                    addr: member.addr,
                    state: 0,
                    incarnation: member.incarnation,
                    last_heartbeat: None,
                    rtt: None,
                    fsync: None,
                    last_eviction: None,
                    departed: None,
                });
                row.zone = member.zone.as_ref().map(|z| z.as_str().to_owned());
                row.addr = member.addr;
                row.state = 0;
                row.incarnation = member.incarnation;
                row.last_heartbeat = Some(now);
                row.fsync = None;
                row.departed = None;
                view.counters.entry(member.node.clone()).or_default();
                let kind = if *rejoined { "rejoined" } else { "joined" };
                let detail = format!("{member} {kind} (incarnation {})", member.incarnation);
                (&member.node, kind, None, detail)
            }
            Event::Suspected { member, silent_for } => {
                set_state(view, &member.node, 1);
                let detail = format!(
                    "{member} suspect: no heartbeat reply for {:.1}s",
                    silent_for.as_secs_f64()
                );
                (&member.node, "suspect", None, detail)
            }
            Event::Recovered { member } => {
                set_state(view, &member.node, 0);
                (
                    &member.node,
                    "recovered",
                    None,
                    format!("{member} answering again"),
                )
            }
            Event::Leaving { member } => {
                set_state(view, &member.node, 2);
                (&member.node, "leaving", None, format!("{member} leaving"))
            }
            Event::Evicted { member, reason } => {
                let index = reason_index(reason);
                self.evictions[index].fetch_add(1, Ordering::Relaxed);
                let detail = format!("{member} {reason}, eliminado");
                if let Some(row) = view.rows.get_mut(&member.node)
                    && row.incarnation == member.incarnation
                {
                    row.state = if matches!(reason, EvictReason::Left) {
                        4
                    } else {
                        3
                    };
                    row.departed = Some(now);
                    row.last_heartbeat = None;
                    row.fsync = None;
                    row.last_eviction = Some(Evicted {
                        reason: index,
                        detail: detail.clone(),
                        at: wall,
                        when: now,
                    });
                }
                (&member.node, "evicted", Some(index), detail)
            }
            Event::Available { member, rtt } => {
                if let Some(row) = view.rows.get_mut(&member.node) {
                    row.rtt = Some(*rtt);
                }
                return;
            }
            Event::Removed { node, absent_for } => {
                let detail = format!(
                    "{node} removed from the member set after {:.0}s absent",
                    absent_for.as_secs_f64()
                );
                (node, "removed", None, detail)
            }
            Event::ProbeNow { .. }
            | Event::Missed { .. }
            | Event::IcmpUnanswered { .. }
            | Event::IcmpAnswering
            | Event::NoneLeft => return,
        };
        if view.events.len() == RECENT_EVENTS {
            view.events.pop_front();
        }
        view.events.push_back(Recorded {
            at: wall,
            when: now,
            node: node.clone(),
            kind,
            reason,
            detail,
        });
        prune(view, now);
    }

    /// Samples the stored count at `now` for the message rate (once a
    /// second).
    pub(crate) fn sample(&self, now: Instant) {
        let mut rate = lock(&self.rate);
        if rate.len() > RATE_WINDOW {
            rate.pop_front();
        }
        rate.push_back((now, self.stored.load(Ordering::Relaxed)));
    }

    /// Messages stored per second over the window, and the window.
    fn rate(&self) -> (f64, Duration) {
        let rate = lock(&self.rate);
        match (rate.front(), rate.back()) {
            (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
                let window = t1 - t0;
                (n1.saturating_sub(n0) as f64 / window.as_secs_f64(), window)
            }
            _ => (0.0, Duration::ZERO),
        }
    }

    /// A receiver of the snapshot published once a second.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        self.feed.subscribe()
    }

    /// Time since the head node started, at `now`.
    pub(crate) fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Whether anyone listens to the published snapshots.
    pub(crate) fn has_subscribers(&self) -> bool {
        self.feed.receiver_count() > 0
    }

    /// Publishes a snapshot, as JSON, to the subscribers.
    pub(crate) fn publish(&self, json: Arc<str>) {
        self.feed.send_replace(json);
    }
}

fn set_state(view: &mut View, node: &NodeId, state: usize) {
    if let Some(row) = view.rows.get_mut(node) {
        row.state = state;
    }
}

/// Drops departed rows past [`KEPT_DEPARTED_FOR`] or beyond [`KEPT_DEPARTED`].
fn prune(view: &mut View, now: Instant) {
    view.rows.retain(|_, row| {
        row.departed
            .is_none_or(|t| now.saturating_duration_since(t) < KEPT_DEPARTED_FOR)
    });
    let mut departed: Vec<(Instant, NodeId)> = view
        .rows
        .iter()
        .filter_map(|(node, row)| row.departed.map(|t| (t, node.clone())))
        .collect();
    if departed.len() > KEPT_DEPARTED {
        departed.sort();
        for (_, node) in &departed[..departed.len() - KEPT_DEPARTED] {
            view.rows.remove(node);
        }
    }
    // Counters of a node whose row is gone, unless a session still holds them.
    let View { rows, counters, .. } = view;
    counters.retain(|node, c| rows.contains_key(node) || Arc::strong_count(c) > 1);
}

/// What the status shows besides its own counters and table, read from
/// elsewhere when a snapshot or the metrics are asked for.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// This head node's message-id epoch.
    pub(crate) epoch: u64,
    /// Copies per message, and before the answer.
    pub(crate) replication: Replication,
    /// `--repair-after`.
    pub(crate) repair_after: Duration,
    /// Clients connected.
    pub(crate) clients: usize,
    /// Data nodes connected.
    pub(crate) data_node_connections: usize,
    /// Messages left with fewer copies than wanted, since the start.
    pub(crate) under_replicated: u64,
    /// Copies beyond the wanted count, since the start.
    pub(crate) over_replicated: u64,
    /// Whether a repair pass runs now.
    pub(crate) repair_running: bool,
    /// The pass running now, or else the last one.
    pub(crate) repair_pass: Option<RepairPass>,
    /// Repair passes run, and copies they made, since the start.
    pub(crate) repair_totals: (u64, u64, u64),
}

impl Facts {
    /// Repair in a few words, for the table and the page.
    fn repair_summary(&self) -> String {
        if self.replication.replicas < 2 {
            return "off (one copy per message)".to_owned();
        }
        match (self.repair_running, self.repair_pass.as_ref()) {
            (true, Some(p)) => format!(
                "running ({}): {} checked, {} with too few copies, {} copied",
                p.trigger, p.checked, p.under_replicated, p.copied
            ),
            (_, Some(p)) => format!(
                "idle; last pass {} at {}: {} checked, {} copied in {:.1}s",
                p.outcome, p.started_at, p.checked, p.copied, p.took_seconds
            ),
            _ => format!(
                "idle; first check {}s after start, then {}s after a data node is lost",
                self.repair_after.as_secs(),
                self.repair_after.as_secs()
            ),
        }
    }
}

impl Status {
    /// The status snapshot at `now` (`wall` on the wall clock), with
    /// `facts` from elsewhere.
    pub(crate) fn snapshot(&self, facts: &Facts, now: Instant, wall: SystemTime) -> StatusSnapshot {
        let status = self;
        let (message_rate, window) = status.rate();
        let mut view = lock(&status.view);
        prune(&mut view, now);
        let ago = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
        let mut nodes: Vec<NodeStatus> = view
            .rows
            .iter()
            .map(|(node, row)| {
                let counters = view.counters.get(node);
                let read = |f: fn(&NodeCounters) -> &AtomicU64| {
                    counters.map_or(0, |c| f(c).load(Ordering::Relaxed))
                };
                let fsync = row
                    .fsync
                    .filter(|(_, at)| now.saturating_duration_since(*at) < FSYNC_REPORT_STALE)
                    .map(|(report, _)| report);
                NodeStatus {
                    id: node.to_string(),
                    zone: row.zone.clone(),
                    address: row.addr.to_string(),
                    state: STATES[row.state].to_owned(),
                    incarnation: row.incarnation,
                    last_heartbeat_seconds_ago: row.last_heartbeat.map(ago),
                    icmp_rtt_ms: row.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
                    messages_stored: read(|c| &c.copies),
                    bytes_stored: read(|c| &c.bytes),
                    fsync_p99_ms: fsync
                        .and_then(|f| f.p99_micros)
                        .map(|us| us as f64 / 1000.0),
                    fsyncs_in_window: fsync.map(|f| f.count),
                    fsync_window_seconds: fsync.map(|f| f.window_ms as f64 / 1000.0),
                    last_eviction: row.last_eviction.as_ref().map(|e| Eviction {
                        reason: REASONS[e.reason].to_owned(),
                        detail: e.detail.clone(),
                        at: timestamp(e.at),
                        seconds_ago: ago(e.when),
                    }),
                }
            })
            .collect();
        // Members first, then the departed; by id within each.
        nodes.sort_by_key(|n| (matches!(n.state.as_str(), "evicted" | "left"), n.id.clone()));
        let recent_events = view
            .events
            .iter()
            .map(|e| ClusterEvent {
                at: timestamp(e.at),
                seconds_ago: ago(e.when),
                node: e.node.to_string(),
                kind: e.kind.to_owned(),
                reason: e.reason.map(|r| REASONS[r].to_owned()),
                detail: e.detail.clone(),
            })
            .collect();
        drop(view);
        StatusSnapshot {
            at: timestamp(wall),
            epoch: facts.epoch,
            uptime_seconds: ago(status.started),
            replicas: facts.replication.replicas,
            min_replicas: facts.replication.needed,
            clients: facts.clients,
            message_rate,
            rate_window_seconds: window.as_secs_f64(),
            nodes,
            totals: Totals {
                messages_stored: status.stored.load(Ordering::Relaxed),
                under_replicated: facts.under_replicated,
                over_replicated: facts.over_replicated,
                repair_in_progress: facts.repair_running,
                repair: facts.repair_summary(),
                repair_pass: facts.repair_pass.clone(),
            },
            recent_events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::membership::MemberInfo;

    fn member(name: &str, incarnation: u64) -> MemberInfo {
        MemberInfo {
            node: name.parse().unwrap(),
            incarnation,
            conn: incarnation,
            addr: "10.0.0.1".parse().unwrap(),
            legacy: false,
            zone: None,
            store: None,
        }
    }

    #[test]
    fn departed_nodes_and_events_are_bounded() {
        let status = Status::new(Instant::now());
        for i in 0..(KEPT_DEPARTED as u64 + 10) {
            let m = member(&format!("n{i}"), 1);
            status.record(
                &Event::Joined {
                    member: m.clone(),
                    rejoined: false,
                },
                Instant::now(),
                SystemTime::now(),
            );
            status.record(
                &Event::Evicted {
                    member: m,
                    reason: EvictReason::ConnectionLost("reset".into()),
                },
                Instant::now(),
                SystemTime::now(),
            );
        }
        let view = lock(&status.view);
        assert_eq!(view.rows.len(), KEPT_DEPARTED);
        assert!(
            !view.rows.contains_key(&"n0".parse().unwrap()),
            "oldest gone"
        );
        assert_eq!(view.events.len(), RECENT_EVENTS);
        assert_eq!(view.counters.len(), KEPT_DEPARTED);
        assert_eq!(
            status.evictions[reason_index(&EvictReason::ConnectionLost(String::new()))]
                .load(Ordering::Relaxed),
            KEPT_DEPARTED as u64 + 10
        );
    }

    #[test]
    fn an_fsync_report_is_kept_for_the_incarnation_that_sent_it_while_it_is_a_member() {
        let status = Status::new(Instant::now());
        let report = FsyncReport {
            window_ms: 10_000,
            count: 800,
            p99_micros: Some(1_500),
        };
        status.record(
            &Event::Joined {
                member: member("a", 2),
                rejoined: false,
            },
            Instant::now(),
            SystemTime::now(),
        );
        let node: NodeId = "a".parse().unwrap();
        let shown = |status: &Status| lock(&status.view).rows[&node].fsync.map(|(r, _)| r);
        status.fsync_reported(&node, 1, report, Instant::now());
        assert_eq!(shown(&status), None, "from an older incarnation");
        status.fsync_reported(&node, 2, report, Instant::now());
        assert_eq!(shown(&status), Some(report));
        status.record(
            &Event::Joined {
                member: member("a", 3),
                rejoined: true,
            },
            Instant::now(),
            SystemTime::now(),
        );
        assert_eq!(shown(&status), None, "a new process reports anew");
        status.fsync_reported(&node, 3, report, Instant::now());
        status.record(
            &Event::Evicted {
                member: member("a", 3),
                reason: EvictReason::Unreachable,
            },
            Instant::now(),
            SystemTime::now(),
        );
        assert_eq!(shown(&status), None, "departed");
        status.fsync_reported(&node, 3, report, Instant::now());
        assert_eq!(shown(&status), None, "a late report of a departed node");
    }

    #[test]
    fn an_eviction_of_an_older_incarnation_leaves_the_new_row_live() {
        let status = Status::new(Instant::now());
        status.record(
            &Event::Joined {
                member: member("a", 2),
                rejoined: true,
            },
            Instant::now(),
            SystemTime::now(),
        );
        status.record(
            &Event::Evicted {
                member: member("a", 1),
                reason: EvictReason::Unreachable,
            },
            Instant::now(),
            SystemTime::now(),
        );
        let view = lock(&status.view);
        let row = &view.rows[&"a".parse::<NodeId>().unwrap()];
        assert_eq!(STATES[row.state], "live");
        assert!(row.last_eviction.is_none());
    }
}
