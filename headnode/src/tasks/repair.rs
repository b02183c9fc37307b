//! Repair (re-replication): gives every message its `replicas` copies again
//! after a data node is lost.
//!
//! [`Schedule`] decides when a pass is due, from membership events alone
//! (tested with fabricated instants):
//! - a data node has been gone (evicted or left) for `--repair-after`;
//! - a data node registers with a different store id than it had (its
//!   data directory is new: a lost disk, a new volume): at once;
//! - the head node started `--repair-after` ago: it keeps no state, so it
//!   cannot know what a previous head node saw; this is how repair survives
//!   a restart;
//! - the end of a pass that stopped at messages still in flight: a short
//!   pass over what it left, `--repair-after` later.
//!
//! A due pass waits while a data node has been gone less than
//! `--repair-after` (at most `--repair-after` more): that node may come
//! back with its copies, and a pass then would give everything it holds a
//! third copy.
//!
//! A pass ([`run`]) takes an inventory of ids from every live data node by
//! merging their scans in id order (the same merge as `tail`), as HDFS's
//! block reports tell the name node which blocks each data node holds,
//! without keeping the whole inventory: memory is one scan page per node.
//! A message with fewer live copies than wanted is asked for on the nodes
//! that did not list it (it may have arrived since their scan, or their
//! retention may have removed it: then it is left alone, so repair never
//! brings back what retention removed). The rest get new copies, made by the
//! router exactly as a client message's missing copies are: same id, key
//! and text, on nodes (and zones) that do not hold it, at most
//! `--repair-rate` messages a second and [`REPAIR_IN_FLIGHT`] at once,
//! within the head node's in-flight budget.
//!
//! A pass never removes a copy, and running it again finds nothing to do:
//! it is idempotent. Messages still in flight when the pass starts (above
//! the tail's watermark) are left to their own write, and looked at again
//! by the follow-up pass.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use protocol::message::{MessageId, NodeId, ReadRecord};
use protocol::status::RepairPass;
use protocol::timefmt::timestamp;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::forward::{
    Completion, Envelope, Holders, NewEnvelope, Outcome, Replication, Waiter,
};
use crate::state::membership::{Event, EvictReason};
use crate::state::reads::{GetResult, NodeRead, NodeReader};
use crate::state::tail::{Merge, Step};
use crate::tasks::{Shared, reads};

/// Repair copies on their way at once.
pub(crate) const REPAIR_IN_FLIGHT: usize = 64;
/// Records per scan page of a repair pass (per node).
pub(crate) const REPAIR_SCAN_PAGE: u32 = 256;
/// Data nodes whose store id is remembered, at most (one entry each).
pub(crate) const REMEMBERED_STORES: usize = 4096;
/// How soon a pass that could not run (too few live nodes, a node that
/// failed mid-pass) is tried again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why a pass runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The head node started `repair_after` ago.
    HeadStarted,
    /// A node has been gone this long.
    NodeLost { node: NodeId, away: Duration },
    /// A node came back with another data directory.
    NewStore { node: NodeId },
    /// Messages the last pass left because they were still in flight.
    Leftover,
    /// The last pass could not finish.
    Retry,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::HeadStarted => write!(
                f,
                "head node started: checking what a previous one may have missed"
            ),
            Trigger::NodeLost { node, away } => {
                write!(f, "dataNode {node} gone for {:.0}s", away.as_secs_f64())
            }
            Trigger::NewStore { node } => {
                write!(f, "dataNode {node} came back with a new data directory")
            }
            Trigger::Leftover => write!(f, "messages the last pass left in flight"),
            Trigger::Retry => write!(f, "the last pass did not finish"),
        }
    }
}

#[derive(Debug)]
struct Request {
    at: Instant,
    trigger: Trigger,
    /// Scan ids after this one only; `None`: every id.
    from: Option<MessageId>,
}

#[derive(Debug)]
struct Lost {
    since: Instant,
    /// A pass has started since it was gone `repair_after`.
    covered: bool,
}

/// When a pass is due. Pure: fed membership events and instants.
#[derive(Debug)]
pub(crate) struct Schedule {
    repair_after: Duration,
    lost: BTreeMap<NodeId, Lost>,
    stores: HashMap<NodeId, u64>,
    requested: Option<Request>,
}

/// How a pass ended, for the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PassEnd {
    /// Every message looked at.
    Complete,
    /// Stopped at messages still in flight, after this id.
    Leftover(Option<MessageId>),
    /// Could not run or finish (too few nodes, a node failed, shutdown).
    Incomplete,
    /// Could not do all it should (some messages could not be checked or
    /// copied, or too few nodes were live to copy anything): tried again
    /// `repair_after` later.
    Failures,
}

/// What [`Schedule::check`] finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// No pass is due.
    Idle,
    /// A pass runs now: why, and from which id.
    Run(Trigger, Option<MessageId>),
    /// A pass is due but waits for `node`, gone `away` (less than
    /// `repair_after`), until `until` at the latest.
    Wait {
        node: NodeId,
        away: Duration,
        until: Instant,
    },
}

impl Schedule {
    /// A schedule for a head node started at `now`.
    pub(crate) fn new(repair_after: Duration, now: Instant) -> Self {
        Schedule {
            repair_after,
            lost: BTreeMap::new(),
            stores: HashMap::new(),
            requested: Some(Request {
                at: now + repair_after,
                trigger: Trigger::HeadStarted,
                from: None,
            }),
        }
    }

    fn request(&mut self, at: Instant, trigger: Trigger, from: Option<MessageId>) {
        match &mut self.requested {
            Some(req) => {
                if at < req.at {
                    req.at = at;
                    req.trigger = trigger;
                }
                // A pass over every id covers one from a later id.
                req.from = match (req.from, from) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
            }
            None => self.requested = Some(Request { at, trigger, from }),
        }
    }

    /// Notes a membership event.
    pub(crate) fn record(&mut self, event: &Event, now: Instant) {
        match event {
            Event::Joined { member, .. } => {
                self.lost.remove(&member.node);
                let Some(store) = member.store else { return };
                let before = if self.stores.len() < REMEMBERED_STORES
                    || self.stores.contains_key(&member.node)
                {
                    self.stores.insert(member.node.clone(), store)
                } else {
                    None
                };
                if before.is_some_and(|b| b != store) {
                    self.request(
                        now,
                        Trigger::NewStore {
                            node: member.node.clone(),
                        },
                        None,
                    );
                }
            }
            Event::Evicted { member, reason } => {
                // A newer incarnation took its place, or the head node is
                // stopping: nothing was lost.
                if matches!(reason, EvictReason::Replaced { .. } | EvictReason::Shutdown) {
                    return;
                }
                if self.lost.len() < REMEMBERED_STORES {
                    self.lost.entry(member.node.clone()).or_insert(Lost {
                        since: now,
                        covered: false,
                    });
                }
            }
            _ => {}
        }
    }

    /// The pass due at `now`, if any: why, and from which id.
    #[cfg(test)]
    fn due(&self, now: Instant) -> Option<(Trigger, Option<MessageId>)> {
        match self.check(now) {
            Check::Run(trigger, from) => Some((trigger, from)),
            Check::Idle | Check::Wait { .. } => None,
        }
    }

    /// Whether a pass runs at `now`, waits, or none is due.
    ///
    /// A pass waits while a node has been gone less than `repair_after`:
    /// it may come back with its copies, and a pass now would copy all it
    /// holds a third time (a node flapping, or briefly cut off). It waits
    /// at most `repair_after` past the time it was due, so a node that
    /// keeps flapping cannot hold repair back for ever.
    pub(crate) fn check(&self, now: Instant) -> Check {
        let Some((trigger, from, due_at)) = self.pending(now) else {
            return Check::Idle;
        };
        let until = due_at + self.repair_after;
        if now < until
            && let Some((node, lost)) = self
                .lost
                .iter()
                .filter(|(_, lost)| now < lost.since + self.repair_after)
                .max_by_key(|(_, lost)| lost.since)
        {
            return Check::Wait {
                node: node.clone(),
                away: now - lost.since,
                until,
            };
        }
        Check::Run(trigger, from)
    }

    /// The pass asked for or made due by a lost node, before any wait:
    /// why, from which id, and since when it is due.
    fn pending(&self, now: Instant) -> Option<(Trigger, Option<MessageId>, Instant)> {
        if let Some(req) = &self.requested
            && req.at <= now
        {
            return Some((req.trigger.clone(), req.from, req.at));
        }
        self.lost
            .iter()
            .find(|(_, lost)| !lost.covered && lost.since + self.repair_after <= now)
            .map(|(node, lost)| {
                (
                    Trigger::NodeLost {
                        node: node.clone(),
                        away: now - lost.since,
                    },
                    None,
                    lost.since + self.repair_after,
                )
            })
    }

    /// A pass starts at `now`: it covers every request and every node gone
    /// long enough.
    pub(crate) fn begin(&mut self, now: Instant) {
        self.requested = None;
        for lost in self.lost.values_mut() {
            if lost.since + self.repair_after <= now {
                lost.covered = true;
            }
        }
    }

    /// The pass begun last ended at `now`.
    pub(crate) fn finish(&mut self, end: &PassEnd, now: Instant) {
        match end {
            PassEnd::Complete => {}
            PassEnd::Leftover(after) => {
                self.request(now + self.repair_after, Trigger::Leftover, *after);
            }
            PassEnd::Incomplete => self.request(now + RETRY_AFTER, Trigger::Retry, None),
            // Not at once: what failed (a node too busy to answer, no node
            // to take a copy) takes time to change.
            PassEnd::Failures => {
                self.request(now + self.repair_after, Trigger::Retry, None);
            }
        }
    }
}

/// The schedule and the progress of passes, shared by the membership task
/// (which records events), the repair task and the status page.
#[derive(Debug)]
pub(crate) struct Repair {
    schedule: Mutex<Schedule>,
    progress: Mutex<Progress>,
}

#[derive(Debug, Default, Clone)]
struct Progress {
    running: Option<RepairPass>,
    last: Option<RepairPass>,
    passes: u64,
    copies: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks leaves the state consistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Repair {
    pub(crate) fn new(repair_after: Duration) -> Self {
        Repair {
            schedule: Mutex::new(Schedule::new(repair_after, Instant::now())),
            progress: Mutex::default(),
        }
    }

    /// Notes a membership event (called by the membership task).
    pub(crate) fn record(&self, event: &Event) {
        lock(&self.schedule).record(event, Instant::now());
    }

    /// The pass running now, or else the last one.
    pub(crate) fn pass(&self) -> (bool, Option<RepairPass>) {
        let progress = lock(&self.progress);
        match &progress.running {
            Some(running) => (true, Some(running.clone())),
            None => (false, progress.last.clone()),
        }
    }

    /// Passes run and copies made by them, since the head node started.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let progress = lock(&self.progress);
        (progress.passes, progress.copies)
    }

    fn update(&self, change: impl FnOnce(&mut RepairPass)) {
        if let Some(running) = &mut lock(&self.progress).running {
            change(running);
        }
    }
}

/// Runs passes when they are due, until `stop`. Checks once a second.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let repair = shared.repair.clone();
    let replicas = shared.replication.replicas;
    if replicas < 2 {
        info!("repair off: one copy per message (--replicas 1), so there is nothing to copy from");
        return;
    }
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    // The node the last wait was logged for: logged once per node.
    let mut last_wait: Option<NodeId> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (trigger, from) = match lock(&repair.schedule).check(Instant::now()) {
            Check::Idle => {
                last_wait = None;
                continue;
            }
            Check::Wait { node, away, until } => {
                if last_wait.as_ref() != Some(&node) {
                    info!(
                        %node,
                        "repair pass due, waiting for dataNode {node} (gone {:.1}s, less than --repair-after): it may come back with its copies; waiting at most {:.0}s more",
                        away.as_secs_f64(),
                        until.saturating_duration_since(Instant::now()).as_secs_f64()
                    );
                }
                last_wait = Some(node);
                continue;
            }
            Check::Run(trigger, from) => {
                last_wait = None;
                (trigger, from)
            }
        };
        lock(&repair.schedule).begin(Instant::now());
        let end = tokio::select! {
            _ = stop.cancelled() => return,
            end = pass(&shared, &trigger, from, &mut rng) => end,
        };
        lock(&repair.schedule).finish(&end, Instant::now());
    }
}

/// Counts of one pass.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    checked: u64,
    under: u64,
    copied: u64,
    copies: u64,
    removed: u64,
    failed: u64,
}

/// One pass over the messages after `from`.
async fn pass(
    shared: &Arc<Shared>,
    trigger: &Trigger,
    from: Option<MessageId>,
    rng: &mut SmallRng,
) -> PassEnd {
    let live = shared.router.snapshot().readers();
    let wanted = shared.replication.replicas.min(live.len());
    if live.len() < 2 {
        warn!(
            live = live.len(),
            "repair ({trigger}) waits: {} live data node(s), at least 2 needed to copy from one to another; trying again in {:.0}s",
            live.len(),
            shared.config.repair_after.as_secs_f64()
        );
        return PassEnd::Failures;
    }
    let started = Instant::now();
    let names: Vec<&str> = live.iter().map(|r| r.node.as_str()).collect();
    info!(
        from = ?from.map(|id| id.to_string()), nodes = ?names,
        "repair started ({trigger}): checking every message's copies on {} live data nodes, {wanted} copies wanted",
        live.len()
    );
    {
        let mut progress = lock(&shared.repair.progress);
        progress.running = Some(RepairPass {
            trigger: trigger.to_string(),
            started_at: timestamp(SystemTime::now()),
            ..RepairPass::default()
        });
    }
    let watermark = shared.watermark();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    let mut in_flight: HashMap<u64, usize> = HashMap::new();
    let mut counts = Counts::default();
    let mut pace = Pace::new(shared.config.repair_rate);
    let mut merge = Merge::new(live.iter().map(|r| r.node.clone()).collect(), from);
    let timeout = shared.config.read_timeout;
    let mut slot = 0u64;
    let mut complete = true;
    let end = loop {
        match merge.step(&watermark) {
            Step::Refill(which) => {
                for (node, e) in
                    reads::refill(&mut merge, which, &live, REPAIR_SCAN_PAGE, timeout).await
                {
                    warn!(node = %node, error = %e, "repair cannot read this dataNode; the pass goes on without it and will run again");
                    complete = false;
                }
                if merge.live() < 2 {
                    break PassEnd::Incomplete;
                }
            }
            Step::Next(record, holders) => {
                counts.checked += 1;
                if counts.checked.is_multiple_of(1024) {
                    shared.repair.update(|p| p.checked = counts.checked);
                }
                if holders.len() >= wanted {
                    continue;
                }
                let Some(holders) = confirm(&live, record.id, holders, timeout, &mut counts).await
                else {
                    continue;
                };
                if holders.len() >= wanted {
                    continue;
                }
                counts.under += 1;
                pace.wait().await;
                while in_flight.len() >= REPAIR_IN_FLIGHT {
                    let Some(done) = done_rx.recv().await else {
                        break;
                    };
                    settle(done, &mut in_flight, &mut counts);
                }
                let before = holders.len();
                if copy(shared, record, holders, wanted, slot, &done_tx, rng).await {
                    in_flight.insert(slot, before);
                    slot += 1;
                }
                while let Ok(done) = done_rx.try_recv() {
                    settle(done, &mut in_flight, &mut counts);
                }
                let snapshot = counts;
                shared.repair.update(|p| snapshot.put(p));
            }
            Step::Done => {
                let finished = merge.live() == live.len() && complete;
                break if !finished {
                    PassEnd::Incomplete
                } else if merge.exhausted() {
                    PassEnd::Complete
                } else {
                    PassEnd::Leftover(merge.last())
                };
            }
        }
    };
    drop(done_tx);
    while !in_flight.is_empty() {
        let Some(done) = done_rx.recv().await else {
            break;
        };
        settle(done, &mut in_flight, &mut counts);
    }
    let end = match end {
        PassEnd::Complete | PassEnd::Leftover(_) if counts.failed > 0 => PassEnd::Failures,
        end => end,
    };
    let took = started.elapsed();
    let (summary, left) = match &end {
        PassEnd::Complete => ("done", String::new()),
        PassEnd::Leftover(after) => (
            "done up to the messages still in flight",
            format!(
                "; the rest (after {}) in {:.0}s",
                after.map_or("the start".to_owned(), |id| id.to_string()),
                shared.config.repair_after.as_secs_f64()
            ),
        ),
        PassEnd::Incomplete => (
            "stopped before the end",
            format!("; again in {}s", RETRY_AFTER.as_secs()),
        ),
        PassEnd::Failures => (
            "done, but some messages could not be copied",
            format!(
                "; again in {:.0}s",
                shared.config.repair_after.as_secs_f64()
            ),
        ),
    };
    info!(
        checked = counts.checked, under_replicated = counts.under, copied = counts.copied,
        copies = counts.copies, removed_by_retention = counts.removed, failed = counts.failed,
        took = ?took,
        "repair {summary} in {:.3}s: {} messages checked, {} had too few copies, {} copied ({} new copies), {} left alone as removed by retention, {} could not be copied{left}",
        took.as_secs_f64(), counts.checked, counts.under, counts.copied, counts.copies, counts.removed, counts.failed
    );
    let mut progress = lock(&shared.repair.progress);
    if let Some(mut pass) = progress.running.take() {
        counts.put(&mut pass);
        pass.finished = true;
        pass.took_seconds = took.as_secs_f64();
        pass.outcome = summary.to_owned();
        progress.last = Some(pass);
    }
    progress.passes += 1;
    progress.copies += counts.copies;
    end
}

impl Counts {
    fn put(&self, pass: &mut RepairPass) {
        pass.checked = self.checked;
        pass.under_replicated = self.under;
        pass.copied = self.copied;
        pass.new_copies = self.copies;
        pass.removed_by_retention = self.removed;
        pass.failed = self.failed;
    }
}

/// Asks the live nodes that did not list `id` whether they hold it now.
/// The holders then, or `None` when the message is to be left alone: a
/// node's retention removed it, or a node could not say.
async fn confirm(
    live: &[NodeReader],
    id: MessageId,
    mut holders: Vec<NodeId>,
    timeout: Duration,
    counts: &mut Counts,
) -> Option<Vec<NodeId>> {
    let mut asks = JoinSet::new();
    for reader in live.iter().filter(|r| !holders.contains(&r.node)) {
        let reader = reader.clone();
        asks.spawn(async move {
            let answer = reads::get(&reader, NodeRead::Get(id), timeout).await;
            (reader.node, answer)
        });
    }
    let mut removed = false;
    let mut unknown = false;
    while let Some(done) = asks.join_next().await {
        let Ok((node, answer)) = done else {
            unknown = true;
            continue;
        };
        match answer {
            Ok(GetResult::Found(_)) => holders.push(node),
            Ok(GetResult::NotFound { removed: true }) => removed = true,
            Ok(GetResult::NotFound { removed: false }) => {}
            Err(e) => {
                warn!(%id, node = %node, error = %e, "repair cannot tell whether this dataNode holds the message; left for the next pass");
                unknown = true;
            }
        }
    }
    if removed {
        counts.removed += 1;
        return None;
    }
    if unknown {
        counts.failed += 1;
        return None;
    }
    Some(holders)
}

/// Hands a message's missing copies to the router; false if it could not
/// be handed over (the head node is shutting down).
async fn copy(
    shared: &Arc<Shared>,
    record: ReadRecord,
    holders: Vec<NodeId>,
    wanted: usize,
    slot: u64,
    done_tx: &mpsc::UnboundedSender<Completion>,
    rng: &mut SmallRng,
) -> bool {
    // Its share of the in-flight budget, as a client message takes (text
    // plus a line's overhead): repair never holds more than clients may.
    let cost = u32::try_from(record.text.len() + 64).unwrap_or(u32::MAX);
    let Ok(charge) = shared.budget.clone().acquire_many_owned(cost).await else {
        return false;
    };
    let waiter = Waiter {
        slot,
        reply_to: done_tx.clone(),
    };
    let replication = Replication {
        replicas: shared.replication.replicas,
        needed: wanted,
    };
    let envelope = Envelope::new(NewEnvelope {
        key: record.key,
        held_by: holders.into_iter().collect::<Holders>(),
        charge: Some(charge),
        ..NewEnvelope::plain(
            record.id,
            Bytes::from(record.text),
            Arc::from("repair"),
            waiter,
            replication,
        )
    });
    shared.router.start(envelope, None, Instant::now(), rng);
    true
}

/// Counts one message's end.
fn settle(done: Completion, in_flight: &mut HashMap<u64, usize>, counts: &mut Counts) {
    let Some(before) = in_flight.remove(&done.slot) else {
        return;
    };
    match done.outcome {
        Outcome::Stored { holders, id } => {
            let made = holders.len().saturating_sub(before) as u64;
            debug!(target: "headnode::repair", %id, holders = ?holders.iter().map(|n| n.as_str()).collect::<Vec<_>>(), "repaired: {made} new copies");
            counts.copied += 1;
            counts.copies += made;
        }
        Outcome::NotStored(reason) | Outcome::Unknown(reason) => {
            warn!(target: "headnode::repair", reason = %reason, "a repair copy was not made; the next pass tries again");
            counts.failed += 1;
        }
    }
}

/// Spaces repair copies to at most `rate` a second.
struct Pace {
    every: Duration,
    next: Instant,
}

impl Pace {
    fn new(rate: u32) -> Self {
        Pace {
            every: Duration::from_secs(1) / rate.max(1),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        } else if now - self.next > Duration::from_millis(100) {
            // No credit for idle time beyond a short burst.
            self.next = now - Duration::from_millis(100);
        }
        self.next += self.every;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::membership::MemberInfo;

    const AFTER: Duration = Duration::from_secs(30);

    fn member(node: &str, store: Option<u64>) -> MemberInfo {
        MemberInfo {
            node: node.parse().unwrap(),
            incarnation: 1,
            conn: 1,
            addr: "10.0.0.1".parse().unwrap(),
            legacy: false,
            zone: None,
            store,
        }
    }

    fn joined(node: &str, store: Option<u64>) -> Event {
        Event::Joined {
            member: member(node, store),
            rejoined: false,
        }
    }

    fn evicted(node: &str, reason: EvictReason) -> Event {
        Event::Evicted {
            member: member(node, None),
            reason,
        }
    }

    /// A schedule whose start-up pass has run.
    fn settled(t0: Instant) -> Schedule {
        let mut schedule = Schedule::new(AFTER, t0);
        schedule.begin(t0 + AFTER);
        schedule.finish(&PassEnd::Complete, t0 + AFTER);
        schedule
    }

    #[test]
    fn a_new_head_node_checks_once_after_the_delay() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(AFTER, t0);
        assert_eq!(schedule.due(t0 + AFTER - Duration::from_millis(1)), None);
        assert_eq!(schedule.due(t0 + AFTER), Some((Trigger::HeadStarted, None)));
        schedule.begin(t0 + AFTER);
        schedule.finish(&PassEnd::Complete, t0 + AFTER * 2);
        assert_eq!(schedule.due(t0 + AFTER * 10), None);
    }

    #[test]
    fn a_node_gone_for_the_delay_is_repaired_once() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        let t1 = t0 + AFTER * 2;
        schedule.record(&evicted("dn1", EvictReason::Unreachable), t1);
        assert_eq!(schedule.due(t1 + AFTER / 2), None);
        let (trigger, from) = schedule.due(t1 + AFTER).unwrap();
        assert!(matches!(trigger, Trigger::NodeLost { ref node, .. } if node.as_str() == "dn1"));
        assert_eq!(from, None);
        schedule.begin(t1 + AFTER);
        schedule.finish(&PassEnd::Complete, t1 + AFTER);
        assert_eq!(schedule.due(t1 + AFTER * 5), None, "covered by the pass");
    }

    #[test]
    fn a_node_back_in_time_with_its_data_needs_no_repair() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        schedule.record(&joined("dn1", Some(7)), t0);
        let t1 = t0 + AFTER * 2;
        schedule.record(&evicted("dn1", EvictReason::AckTimeout), t1);
        schedule.record(&joined("dn1", Some(7)), t1 + AFTER / 2);
        assert_eq!(schedule.due(t1 + AFTER * 3), None);
    }

    #[test]
    fn a_node_back_with_a_new_data_directory_is_repaired_at_once() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        schedule.record(&joined("dn1", Some(7)), t0);
        schedule.record(&evicted("dn1", EvictReason::Unreachable), t0 + AFTER);
        let back = t0 + AFTER + Duration::from_secs(2);
        schedule.record(&joined("dn1", Some(8)), back);
        assert_eq!(
            schedule.due(back),
            Some((
                Trigger::NewStore {
                    node: "dn1".parse().unwrap()
                },
                None
            ))
        );
    }

    #[test]
    fn a_replaced_incarnation_or_a_shutdown_is_no_loss() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        schedule.record(
            &evicted("dn1", EvictReason::Replaced { by_incarnation: 2 }),
            t0,
        );
        schedule.record(&evicted("dn2", EvictReason::Shutdown), t0);
        assert_eq!(schedule.due(t0 + AFTER * 3), None);
    }

    #[test]
    fn leftovers_and_failures_come_back_and_a_full_pass_covers_a_partial_one() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        let at = MessageId { epoch: 5, seq: 10 };
        schedule.begin(t0);
        schedule.finish(&PassEnd::Leftover(Some(at)), t0);
        assert_eq!(schedule.due(t0 + AFTER - Duration::from_millis(1)), None);
        assert_eq!(
            schedule.due(t0 + AFTER),
            Some((Trigger::Leftover, Some(at)))
        );
        schedule.finish(&PassEnd::Incomplete, t0);
        assert_eq!(
            schedule.due(t0 + RETRY_AFTER),
            Some((Trigger::Retry, None)),
            "the sooner request wins, and it scans every id"
        );
    }

    #[test]
    fn a_pass_with_failures_runs_again_after_the_delay() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        schedule.begin(t0);
        schedule.finish(&PassEnd::Failures, t0);
        assert_eq!(schedule.due(t0 + AFTER - Duration::from_millis(1)), None);
        assert_eq!(schedule.due(t0 + AFTER), Some((Trigger::Retry, None)));
    }

    #[test]
    fn a_due_pass_waits_for_a_node_gone_less_than_the_delay() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(AFTER, t0);
        // dn2 goes 5 s before the start-up pass is due.
        let gone = t0 + AFTER - Duration::from_secs(5);
        schedule.record(
            &evicted("dn2", EvictReason::ConnectionLost("reset".into())),
            gone,
        );
        assert_eq!(schedule.due(t0 + AFTER), None);
        assert_eq!(
            schedule.check(t0 + AFTER),
            Check::Wait {
                node: "dn2".parse().unwrap(),
                away: Duration::from_secs(5),
                until: t0 + AFTER * 2,
            }
        );
        // It comes back with its data: the pass runs at once.
        let back = t0 + AFTER + Duration::from_secs(1);
        schedule.record(&joined("dn2", None), back);
        assert!(!matches!(schedule.check(back), Check::Wait { .. }));
        assert_eq!(schedule.due(back), Some((Trigger::HeadStarted, None)));
    }

    #[test]
    fn a_node_that_stays_away_is_waited_for_only_until_it_counts_as_lost() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(AFTER, t0);
        let gone = t0 + AFTER - Duration::from_secs(5);
        schedule.record(&evicted("dn2", EvictReason::Unreachable), gone);
        assert_eq!(schedule.due(gone + AFTER - Duration::from_millis(1)), None);
        // Gone the whole delay: the pass runs, and covers dn2's copies too.
        assert_eq!(
            schedule.due(gone + AFTER),
            Some((Trigger::HeadStarted, None))
        );
        schedule.begin(gone + AFTER);
        schedule.finish(&PassEnd::Complete, gone + AFTER);
        assert_eq!(schedule.due(gone + AFTER * 5), None);
    }

    #[test]
    fn a_flapping_node_holds_a_pass_back_at_most_one_delay() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        let t1 = t0 + AFTER * 2;
        schedule.record(&evicted("dn1", EvictReason::Unreachable), t1);
        let due_at = t1 + AFTER;
        // dn2 flaps every 2 s from before the pass for dn1 is due.
        let mut now = due_at - Duration::from_secs(3);
        while now < due_at + AFTER * 2 {
            schedule.record(
                &evicted("dn2", EvictReason::ConnectionLost("reset".into())),
                now,
            );
            let due = schedule.due(now);
            if now < due_at + AFTER {
                assert_eq!(due, None, "{:?} after dn1's pass was due", now - due_at);
            } else {
                let (trigger, _) = due.expect("waited one delay: runs");
                assert!(
                    matches!(trigger, Trigger::NodeLost { ref node, .. } if node.as_str() == "dn1")
                );
                return;
            }
            schedule.record(&joined("dn2", None), now + Duration::from_secs(1));
            now += Duration::from_secs(2);
        }
        panic!("the pass never ran");
    }
}
