//! The repair task: gives every message its `replicas` copies again after
//! a data node is lost.
//!
//! It owns the repair [`Schedule`] (see `state::repair` for when a pass is
//! due): the membership task sends it every [`MemberChange`] over a bounded
//! channel ([`REPAIR_EVENTS`]), read in every state of this task, idle or
//! in a pass, so the membership task waits for room rarely and briefly,
//! and no change is ever dropped.
//!
//! A pass takes an inventory of ids from every live data node by merging
//! their scans in id order (the same merge as `tail`), as HDFS's block
//! reports tell the name node which blocks each data node holds, without
//! keeping the whole inventory: memory is one scan page per node. A
//! message with fewer live copies than wanted is asked for on the nodes
//! that did not list it (it may have arrived since their scan, or their
//! retention may have removed it: then it is left alone, so repair never
//! brings back what retention removed). The rest get new copies, made by
//! the router exactly as a client message's missing copies are: same id,
//! key and text, and the record time of the copy read (so retention by age
//! counts from when the message was stored), on nodes (and zones) that do
//! not hold it, at most
//! `--repair-rate` messages a second and [`REPAIR_IN_FLIGHT`] at once,
//! within the head node's in-flight budget.
//!
//! A pass never removes a copy, and running it again finds nothing to do:
//! it is idempotent. Messages still in flight when the pass starts (above
//! the tail's watermark) are left to their own write, and looked at again
//! by the follow-up pass.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use node_kit::timefmt::timestamp;
use protocol::datanode::ReadRecord;
use protocol::ids::{MessageId, NodeId};
use protocol::status::RepairPass;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::MESSAGE_OVERHEAD;
use crate::state::forward::{
    Completion, Envelope, Holders, NewEnvelope, Outcome, Replication, Waiter,
};
use crate::state::reads::{GetResult, NodeRead, NodeReader};
use crate::state::repair::{
    Check, MemberChange, PassEnd, RETRY_AFTER, RepairProgress, Schedule, Trigger,
};
use crate::state::tail::{Merge, Step};
use crate::tasks::{Shared, cluster, reads};

/// Repair copies on their way at once.
pub(crate) const REPAIR_IN_FLIGHT: usize = 64;
/// Records per scan page of a repair pass (per node).
pub(crate) const REPAIR_SCAN_PAGE: u32 = 256;
/// Membership changes queued for the repair task at most. It reads them in
/// every state, so the queue fills only in a burst of evictions and joins
/// larger than this; the membership task then waits for room rather than
/// drop one (a dropped change would make a pass run too early or never).
pub(crate) const REPAIR_EVENTS: usize = 1024;
/// How often the schedule is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A membership change for the repair task, and when it happened.
#[derive(Debug)]
pub(crate) struct RepairEvent {
    pub(crate) change: MemberChange,
    pub(crate) at: Instant,
}

/// The repair task: the schedule it owns, the changes it is sent, and
/// what it needs to run a pass.
pub(crate) struct RepairTask {
    pub(crate) shared: Arc<Shared>,
    pub(crate) schedule: Schedule,
    pub(crate) events_rx: mpsc::Receiver<RepairEvent>,
    /// How passes went, for the status page.
    pub(crate) progress: Arc<RepairProgress>,
    pub(crate) rng: SmallRng,
}

impl RepairTask {
    /// Runs passes when they are due, until `stop`. Checks once a second.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        if self.shared.replication.replicas < 2 {
            info!(
                "repair off: one copy per message (--replicas 1), so there is nothing to copy from"
            );
            return;
        }
        // The node the last wait was logged for: logged once per node.
        let mut last_wait: Option<NodeId> = None;
        let next_check = tokio::time::sleep(CHECK_EVERY);
        tokio::pin!(next_check);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                Some(event) = self.events_rx.recv() => {
                    self.schedule.note(event.change, event.at);
                    continue;
                }
                _ = &mut next_check => {}
            }
            if let Some((trigger, from)) = self.check(&mut last_wait) {
                // Nodes back with a new data directory before the pass
                // begins: a pass over every id gives them their share.
                let rebuilding = self.shared.router.snapshot().rebuilding.clone();
                self.schedule.begin(Instant::now());
                let Some(end) = self.run_pass(&trigger, from, &stop).await else {
                    return;
                };
                self.schedule.finish(&end, Instant::now());
                let whole = matches!(end, PassEnd::Complete | PassEnd::Leftover(_));
                if whole && from.is_none() && !rebuilding.is_empty() {
                    // Sent while still taking the membership's changes:
                    // that task may be waiting for room in this one's queue.
                    let repaired = cluster::Input::Repaired { nodes: rebuilding };
                    let send = self.shared.membership_tx.send(repaired);
                    tokio::pin!(send);
                    loop {
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => return,
                            _ = &mut send => break,
                            Some(event) = self.events_rx.recv() => {
                                self.schedule.note(event.change, event.at);
                            }
                        }
                    }
                }
            }
            next_check.as_mut().reset(Instant::now() + CHECK_EVERY);
        }
    }

    /// The pass to run now, if one is due and waits for no node; logs a
    /// wait once per node waited for.
    fn check(&self, last_wait: &mut Option<NodeId>) -> Option<(Trigger, Option<MessageId>)> {
        match self.schedule.check(Instant::now()) {
            Check::Idle => {
                *last_wait = None;
                None
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
                *last_wait = Some(node);
                None
            }
            Check::Run(trigger, from) => {
                *last_wait = None;
                Some((trigger, from))
            }
        }
    }

    /// Runs one pass, still taking the membership changes sent meanwhile;
    /// `None` if the head node stops first.
    async fn run_pass(
        &mut self,
        trigger: &Trigger,
        from: Option<MessageId>,
        stop: &CancellationToken,
    ) -> Option<PassEnd> {
        let pass = pass(&self.shared, &self.progress, trigger, from, &mut self.rng);
        tokio::pin!(pass);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                end = &mut pass => return Some(end),
                Some(event) = self.events_rx.recv() => self.schedule.note(event.change, event.at),
            }
        }
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
    progress: &RepairProgress,
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
    progress.start(RepairPass {
        trigger: trigger.to_string(),
        started_at: timestamp(SystemTime::now()),
        ..RepairPass::default()
    });
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Completion>();
    let mut pass = Pass {
        shared,
        progress,
        rng,
        wanted,
        timeout: shared.config.read_timeout,
        live,
        counts: Counts::default(),
        in_flight: HashMap::new(),
        done_tx,
        done_rx,
        pace: Pace::new(shared.config.repair_rate),
        slot: 0,
    };
    let end = pass.scan(from).await;
    pass.finish(end, started).await
}

/// A pass under way: the nodes it reads, the copies it has made, and its
/// counts.
struct Pass<'a> {
    shared: &'a Arc<Shared>,
    progress: &'a RepairProgress,
    rng: &'a mut SmallRng,
    /// The nodes it reads, as they were when it started.
    live: Vec<NodeReader>,
    /// Copies wanted per message: `replicas`, or fewer with fewer nodes.
    wanted: usize,
    /// How long a node has to answer one read.
    timeout: Duration,
    counts: Counts,
    /// Messages whose copies are on their way, by slot: how many holders
    /// each had before.
    in_flight: HashMap<u64, usize>,
    done_tx: mpsc::UnboundedSender<Completion>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
    pace: Pace,
    /// The next message's slot.
    slot: u64,
}

impl Pass<'_> {
    /// Merges the nodes' scans from `from` and checks every message; how
    /// far it got.
    async fn scan(&mut self, from: Option<MessageId>) -> PassEnd {
        let watermark = self.shared.watermark();
        let mut merge = Merge::new(self.live.iter().map(|r| r.node.clone()).collect(), from);
        let mut complete = true;
        loop {
            match merge.step(&watermark) {
                Step::Refill(which) => {
                    let (live, timeout) = (&self.live, self.timeout);
                    for (node, e) in
                        reads::refill(&mut merge, which, live, REPAIR_SCAN_PAGE, timeout).await
                    {
                        warn!(node = %node, error = %e, "repair cannot read this dataNode; the pass goes on without it and will run again");
                        complete = false;
                    }
                    if merge.live() < 2 {
                        return PassEnd::Incomplete;
                    }
                }
                Step::Next(record, holders) => self.check(record, holders).await,
                Step::Done => {
                    let finished = merge.live() == self.live.len() && complete;
                    return if !finished {
                        PassEnd::Incomplete
                    } else if merge.exhausted() {
                        PassEnd::Complete
                    } else {
                        PassEnd::Leftover(merge.last())
                    };
                }
            }
        }
    }

    /// One message the scans listed on `holders`: given new copies if it
    /// has too few.
    async fn check(&mut self, record: ReadRecord, holders: Vec<NodeId>) {
        let counts = &mut self.counts;
        counts.checked += 1;
        if counts.checked.is_multiple_of(1024) {
            let checked = counts.checked;
            self.progress.update(|p| p.checked = checked);
        }
        if holders.len() >= self.wanted {
            return;
        }
        let Some(holders) = confirm(&self.live, record.id, holders, self.timeout, counts).await
        else {
            return;
        };
        if holders.len() >= self.wanted {
            return;
        }
        counts.under += 1;
        self.pace.wait().await;
        while self.in_flight.len() >= REPAIR_IN_FLIGHT {
            let Some(done) = self.done_rx.recv().await else {
                break;
            };
            settle(done, &mut self.in_flight, &mut self.counts);
        }
        let before = holders.len();
        if self.copy(record, holders).await {
            self.in_flight.insert(self.slot, before);
            self.slot += 1;
        }
        while let Ok(done) = self.done_rx.try_recv() {
            settle(done, &mut self.in_flight, &mut self.counts);
        }
        let snapshot = self.counts;
        self.progress.update(|p| snapshot.put(p));
    }

    /// Hands a message's missing copies to the router; false if it could
    /// not be handed over (the head node is shutting down).
    async fn copy(&mut self, record: ReadRecord, holders: Vec<NodeId>) -> bool {
        let shared = self.shared;
        // Its share of the in-flight budget, as a client message takes (text
        // plus a message's overhead): repair never holds more than clients may.
        let cost = u32::try_from(record.text.len() + MESSAGE_OVERHEAD).unwrap_or(u32::MAX);
        let Ok(charge) = shared.budget.clone().acquire_many_owned(cost).await else {
            return false;
        };
        let waiter = Waiter {
            slot: self.slot,
            reply_to: self.done_tx.clone(),
        };
        let replication = Replication {
            replicas: shared.replication.replicas,
            needed: self.wanted,
        };
        let envelope = Envelope::new(NewEnvelope {
            key: record.key,
            held_by: holders.into_iter().collect::<Holders>(),
            charge: Some(charge),
            // The new copy keeps the time of the one it is made from, so
            // that retention by age does not start over (0: not known).
            stored_ms: (record.stored_ms > 0).then_some(record.stored_ms),
            ..NewEnvelope::plain(
                record.id,
                Bytes::from(record.text),
                Arc::from("repair"),
                waiter,
                replication,
            )
        });
        shared
            .router
            .start(envelope, None, Instant::now(), self.rng);
        true
    }

    /// Waits for the copies still on their way, then logs and records how
    /// the pass begun at `started` ended; how it ended, for the schedule.
    async fn finish(self, end: PassEnd, started: Instant) -> PassEnd {
        let Pass {
            shared,
            progress,
            done_tx,
            mut done_rx,
            mut in_flight,
            mut counts,
            ..
        } = self;
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
        let summary = report(&end, &counts, took, shared.config.repair_after);
        progress.end(counts.copies, |pass| {
            counts.put(pass);
            pass.finished = true;
            pass.took_seconds = took.as_secs_f64();
            pass.outcome = summary.to_owned();
        });
        end
    }
}

/// Logs how a pass ended, after `took`; its outcome in a few words.
fn report(end: &PassEnd, counts: &Counts, took: Duration, repair_after: Duration) -> &'static str {
    let (summary, left) = match end {
        PassEnd::Complete => ("done", String::new()),
        PassEnd::Leftover(after) => (
            "done up to the messages still in flight",
            format!(
                "; the rest (after {}) in {:.0}s",
                after.map_or("the start".to_owned(), |id| id.to_string()),
                repair_after.as_secs_f64()
            ),
        ),
        PassEnd::Incomplete => (
            "stopped before the end",
            format!("; again in {}s", RETRY_AFTER.as_secs()),
        ),
        PassEnd::Failures => (
            "done, but some messages could not be copied",
            format!("; again in {:.0}s", repair_after.as_secs_f64()),
        ),
    };
    info!(
        checked = counts.checked, under_replicated = counts.under, copied = counts.copied,
        copies = counts.copies, removed_by_retention = counts.removed, failed = counts.failed,
        took = ?took,
        "repair {summary} in {:.3}s: {} messages checked, {} had too few copies, {} copied ({} new copies), {} left alone as removed by retention, {} could not be copied{left}",
        took.as_secs_f64(), counts.checked, counts.under, counts.copied, counts.copies, counts.removed, counts.failed
    );
    summary
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
