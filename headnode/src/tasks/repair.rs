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
//! brings back what retention removed). It is left alone too while the
//! copies it lacks may be on members that are absent (down, or still
//! reading their files: unknown, not lost, until they leave the member
//! set), and when a node that cannot answer now reported a retention
//! removal whose ranges cover its id ([`Retained`]). The rest get new
//! copies, made by
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
    Check, Failed, MAX_RETRIES, MemberChange, PassEnd, RETRY_AFTER, RETRY_ATTEMPTS, RepairProgress,
    Schedule, Trigger,
};
use crate::state::retained::Retained;
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
    /// What the nodes' retention removed, as they reported it.
    pub(crate) retained: Retained,
}

/// Notes one change: the schedule's, or removed ranges for `retained`.
fn note(schedule: &mut Schedule, retained: &mut Retained, event: RepairEvent) {
    match event.change {
        MemberChange::Retention {
            node,
            ranges,
            whole,
        } => retained.note(&node, &ranges, whole),
        change => schedule.note(change, event.at),
    }
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
                    note(&mut self.schedule, &mut self.retained, event);
                    continue;
                }
                _ = &mut next_check => {}
            }
            // Before recovery the member set is not known, nor which
            // members are absent: no pass until the routes carry it.
            if !self.shared.recovered.is_open()
                || self.shared.router.snapshot().member_set.is_none()
            {
                next_check.as_mut().reset(Instant::now() + CHECK_EVERY);
                continue;
            }
            if let Some((trigger, from)) = self.check(&mut last_wait) {
                // Nodes back with a new data directory before the pass
                // begins: a pass over every id gives them their share.
                let rebuilding = self.shared.router.snapshot().rebuilding.clone();
                self.schedule.begin(Instant::now());
                let Some(ended) = self.run_pass(&trigger, Work::Scan(from), &stop).await else {
                    return;
                };
                let clean = ended.failed.is_empty() && !ended.overflow;
                let end = match self.retry_later(ended) {
                    // A pass with failures has not given a rebuilding node
                    // all its share: a whole pass runs again for it.
                    PassEnd::Complete | PassEnd::Leftover(_)
                        if !clean && !rebuilding.is_empty() =>
                    {
                        PassEnd::Failures
                    }
                    end => end,
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
                                note(&mut self.schedule, &mut self.retained, event);
                            }
                        }
                    }
                }
            } else {
                let due = self
                    .schedule
                    .due_retries(Instant::now(), REPAIR_SCAN_PAGE as usize);
                if !due.is_empty() {
                    let trigger = Trigger::Retries {
                        messages: due.len(),
                    };
                    let Some(ended) = self.run_pass(&trigger, Work::Retry(due), &stop).await else {
                        return;
                    };
                    let end = self.retry_later(ended);
                    // A retry that must give way to a whole pass asks for one.
                    if end != PassEnd::Complete {
                        self.schedule.finish(&end, Instant::now());
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

    /// Hands the messages a pass could not check or copy to the schedule,
    /// to be tried again one by one; how the pass ended for the schedule:
    /// with failures to run again whole only if they could not all be.
    fn retry_later(&mut self, ended: Ended) -> PassEnd {
        let now = Instant::now();
        for id in &ended.settled {
            self.schedule.settled(*id);
        }
        let mut whole = ended.overflow;
        let mut given_up = 0;
        for id in ended.failed {
            match self.schedule.failed(id, now) {
                Failed::Again(at) => debug!(
                    target: "headnode::repair", %id,
                    "tried again in {:.0}s", at.saturating_duration_since(now).as_secs_f64()
                ),
                Failed::GivenUp => {
                    warn!(
                        target: "headnode::repair", %id,
                        "unrepairable: {id} could not be checked or copied in {RETRY_ATTEMPTS} tries after its pass; given up on (a later pass checks it again)"
                    );
                    given_up += 1;
                }
                Failed::NoRoom => whole = true,
            }
        }
        if given_up > 0 {
            self.progress.unrepairable(given_up);
        }
        match ended.end {
            PassEnd::Complete | PassEnd::Leftover(_) if whole => PassEnd::Failures,
            end => end,
        }
    }

    /// Runs one pass, still taking the membership changes sent meanwhile;
    /// `None` if the head node stops first.
    async fn run_pass(
        &mut self,
        trigger: &Trigger,
        work: Work,
        stop: &CancellationToken,
    ) -> Option<Ended> {
        // Ranges reported during the pass come from live nodes, which
        // answer for themselves.
        let retained = self.retained.clone();
        let departed = self.schedule.departed(Instant::now());
        let lost = self.schedule.left_set().iter().cloned().collect();
        let pass = pass(
            &self.shared,
            &self.progress,
            trigger,
            work,
            Unanswered {
                retained: &retained,
                departed,
                lost,
            },
            &mut self.rng,
        );
        tokio::pin!(pass);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                end = &mut pass => return Some(end),
                Some(event) = self.events_rx.recv() => note(&mut self.schedule, &mut self.retained, event),
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
    unknown: u64,
    failed: u64,
}

/// What a pass goes over.
enum Work {
    /// Every message after this id (`None`: every message).
    Scan(Option<MessageId>),
    /// These messages, which a pass could not check or copy.
    Retry(Vec<MessageId>),
}

/// How a pass ended, and the messages it could not check or copy.
struct Ended {
    end: PassEnd,
    /// Messages it could not check or copy (at most [`MAX_RETRIES`]).
    failed: Vec<MessageId>,
    /// More failed than `failed` holds.
    overflow: bool,
    /// Messages it tried again that are settled (checked, and copied if
    /// they had to be): a retry's only.
    settled: Vec<MessageId>,
}

/// What a pass knows of the nodes that cannot answer it.
struct Unanswered<'a> {
    /// What the nodes' retention removed, as they reported it.
    retained: &'a Retained,
    /// Nodes gone but not lost that no member set keeps ([`Schedule::departed`]).
    departed: Vec<NodeId>,
    /// Nodes lost: never absent, even while the routes still name them.
    lost: Vec<NodeId>,
}

/// One pass over `work`.
async fn pass(
    shared: &Arc<Shared>,
    progress: &RepairProgress,
    trigger: &Trigger,
    work: Work,
    unanswered: Unanswered<'_>,
    rng: &mut SmallRng,
) -> Ended {
    let routes = shared.router.snapshot();
    let live = routes.readers();
    let wanted = shared.replication.replicas.min(live.len());
    // Members without a live session, and nodes that left not long ago:
    // they may hold copies, so a message is not short of any they could
    // hold.
    let mut away: Vec<&NodeId> = routes
        .member_set
        .iter()
        .flat_map(|set| set.iter())
        .collect();
    away.extend(unanswered.departed.iter());
    away.sort();
    away.dedup();
    away.retain(|node| !live.iter().any(|r| &r.node == *node) && !unanswered.lost.contains(node));
    let absent = away.len();
    let retained = unanswered.retained;
    if live.len() < 2 {
        warn!(
            live = live.len(),
            "repair ({trigger}) waits: {} live data node(s), at least 2 needed to copy from one to another; trying again in {:.0}s",
            live.len(),
            shared.config.repair_after.as_secs_f64()
        );
        return match work {
            Work::Scan(_) => Ended {
                end: PassEnd::Failures,
                failed: Vec::new(),
                overflow: false,
                settled: Vec::new(),
            },
            // Tried, and failed: each waits longer for its next try.
            Work::Retry(ids) => Ended {
                end: PassEnd::Complete,
                failed: ids,
                overflow: false,
                settled: Vec::new(),
            },
        };
    }
    let started = Instant::now();
    let names: Vec<&str> = live.iter().map(|r| r.node.as_str()).collect();
    let from = match &work {
        Work::Scan(from) => *from,
        Work::Retry(ids) => ids.first().copied(),
    };
    info!(
        from = ?from.map(|id| id.to_string()), nodes = ?names, absent,
        "repair started ({trigger}): checking every message's copies on {} live data nodes, {wanted} copies wanted; {absent} absent members may hold copies",
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
        absent,
        retained,
        timeout: shared.config.read_timeout,
        live,
        counts: Counts::default(),
        failed: Vec::new(),
        overflow: false,
        in_flight: HashMap::new(),
        done_tx,
        done_rx,
        pace: Pace::new(shared.config.repair_rate),
        slot: 0,
    };
    match work {
        Work::Scan(from) => {
            let end = pass.scan(from).await;
            pass.finish(end, started, Vec::new()).await
        }
        Work::Retry(ids) => {
            for id in &ids {
                pass.retry(*id).await;
            }
            pass.finish(PassEnd::Complete, started, ids).await
        }
    }
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
    /// Members of the set that are not live: copies may be on them.
    absent: usize,
    /// What the nodes' retention removed, as they reported it.
    retained: &'a Retained,
    /// How long a node has to answer one read.
    timeout: Duration,
    counts: Counts,
    /// Messages it could not check or copy, at most [`MAX_RETRIES`].
    failed: Vec<MessageId>,
    /// More failed than `failed` holds.
    overflow: bool,
    /// Messages whose copies are on their way, by slot: their id, and how
    /// many holders each had before.
    in_flight: HashMap<u64, (MessageId, usize)>,
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
        let failed_before = counts.failed;
        let confirmed = confirm(&self.live, record.id, holders, self.timeout, counts).await;
        if self.counts.failed > failed_before {
            self.fail(record.id);
        }
        let Some(holders) = confirmed else {
            return;
        };
        let counts = &mut self.counts;
        if holders.len() >= self.wanted {
            return;
        }
        if holders.len() + self.absent >= self.wanted {
            // Its missing copies may be on absent members: unknown, not
            // lost, until they leave the member set.
            counts.unknown += 1;
            return;
        }
        let answering: Vec<NodeId> = self.live.iter().map(|r| r.node.clone()).collect();
        if let Some(node) = self.retained.removed_elsewhere(record.id, &answering) {
            // A node that cannot answer may have removed it: copying it
            // back could undo that.
            debug!(target: "headnode::repair", id = %record.id, node = %node, "left alone: within what the retention of dataNode {node} removed, and it cannot say whether it held it");
            counts.removed += 1;
            return;
        }
        counts.under += 1;
        self.pace.wait().await;
        while self.in_flight.len() >= REPAIR_IN_FLIGHT {
            let Some(done) = self.done_rx.recv().await else {
                break;
            };
            self.settle(done);
        }
        let before = holders.len();
        let id = record.id;
        if self.copy(record, holders).await {
            self.in_flight.insert(self.slot, (id, before));
            self.slot += 1;
        }
        while let Ok(done) = self.done_rx.try_recv() {
            self.settle(done);
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

    /// `id` could not be checked or copied: tried again later.
    fn fail(&mut self, id: MessageId) {
        if self.failed.len() < MAX_RETRIES {
            self.failed.push(id);
        } else {
            self.overflow = true;
        }
    }

    /// One message a pass could not check or copy, tried again: read from
    /// every live node, then checked as a scan would.
    async fn retry(&mut self, id: MessageId) {
        let mut asks = JoinSet::new();
        for reader in &self.live {
            let reader = reader.clone();
            let timeout = self.timeout;
            asks.spawn(async move {
                let answer = reads::get(&reader, NodeRead::Get(id), timeout).await;
                (reader.node, answer)
            });
        }
        let mut record = None;
        let mut holders = Vec::new();
        let mut unknown = false;
        while let Some(done) = asks.join_next().await {
            match done {
                Ok((node, Ok(GetResult::Found(found)))) => {
                    holders.push(node);
                    record.get_or_insert(found);
                }
                Ok((_, Ok(GetResult::NotFound { .. }))) => {}
                Ok((node, Err(e))) => {
                    warn!(%id, node = %node, error = %e, "repair cannot tell whether this dataNode holds the message; tried again later");
                    unknown = true;
                }
                Err(_) => unknown = true,
            }
        }
        if unknown {
            self.counts.failed += 1;
            self.fail(id);
            return;
        }
        // Held by no live node: nothing to copy it from.
        let Some(record) = record else { return };
        holders.sort();
        self.check(record, holders).await;
    }

    /// Counts one message's end.
    fn settle(&mut self, done: Completion) {
        let Some((expected, before)) = self.in_flight.remove(&done.slot) else {
            return;
        };
        match done.outcome {
            // A copy under another id (a node held the key under it) is no
            // copy of this message.
            Outcome::Stored { holders, id } if id == expected => {
                let made = holders.len().saturating_sub(before) as u64;
                debug!(target: "headnode::repair", %id, holders = ?holders.iter().map(|n| n.as_str()).collect::<Vec<_>>(), "repaired: {made} new copies");
                self.counts.copied += 1;
                self.counts.copies += made;
            }
            Outcome::Stored { id, .. } => {
                warn!(target: "headnode::repair", id = %expected, held = %id, "a repair copy of {expected} was answered as held under {id}: no copy of {expected} was made; tried again later");
                self.counts.failed += 1;
                self.fail(expected);
            }
            Outcome::NotStored(reason) | Outcome::Unknown(reason) => {
                warn!(target: "headnode::repair", id = %expected, reason = %reason, "a repair copy was not made; tried again later");
                self.counts.failed += 1;
                self.fail(expected);
            }
        }
    }

    /// Waits for the copies still on their way, then logs and records how
    /// the pass begun at `started` ended; how it ended, and the messages
    /// it could not check or copy. `retried`: the messages a retry went
    /// over (those not failed again are settled).
    async fn finish(mut self, end: PassEnd, started: Instant, retried: Vec<MessageId>) -> Ended {
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.done_tx, tx));
        while !self.in_flight.is_empty() {
            let Some(done) = self.done_rx.recv().await else {
                break;
            };
            self.settle(done);
        }
        let Pass {
            progress,
            counts,
            failed,
            overflow,
            ..
        } = self;
        let settled: Vec<MessageId> = retried
            .into_iter()
            .filter(|id| !failed.contains(id))
            .collect();
        let took = started.elapsed();
        let summary = report(&end, &counts, took);
        progress.end(counts.copies, |pass| {
            counts.put(pass);
            pass.finished = true;
            pass.took_seconds = took.as_secs_f64();
            pass.outcome = summary.to_owned();
        });
        Ended {
            end,
            failed,
            overflow,
            settled,
        }
    }
}

/// Logs how a pass ended, after `took`; its outcome in a few words.
fn report(end: &PassEnd, counts: &Counts, took: Duration) -> &'static str {
    let (summary, left) = match end {
        PassEnd::Complete if counts.failed > 0 => (
            "done, but some messages could not be checked or copied",
            "; they are tried again one by one".to_owned(),
        ),
        PassEnd::Complete => ("done", String::new()),
        PassEnd::Leftover(after) => (
            "done up to the messages still in flight",
            format!(
                "; the rest (after {}) later",
                after.map_or("the start".to_owned(), |id| id.to_string()),
            ),
        ),
        PassEnd::Incomplete => (
            "stopped before the end",
            format!("; again in {}s", RETRY_AFTER.as_secs()),
        ),
        PassEnd::Failures => (
            "done, but some messages could not be copied",
            "; it runs again".to_owned(),
        ),
    };
    info!(
        checked = counts.checked, under_replicated = counts.under, copied = counts.copied,
        copies = counts.copies, removed_by_retention = counts.removed, unknown = counts.unknown,
        failed = counts.failed, took = ?took,
        "repair {summary} in {:.3}s: {} messages checked, {} had too few copies, {} copied ({} new copies), {} left alone as removed by retention, {} left alone as their copies may be on absent members, {} could not be copied{left}",
        took.as_secs_f64(), counts.checked, counts.under, counts.copied, counts.copies, counts.removed, counts.unknown, counts.failed
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
        pass.unknown = self.unknown;
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
                warn!(%id, node = %node, error = %e, "repair cannot tell whether this dataNode holds the message; tried again later");
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
