//! When a repair (re-replication) pass is due, and how passes went.
//!
//! [`Schedule`] decides when a pass is due, from membership changes alone
//! (tested with fabricated instants):
//! - a data node is lost: it left the member set, absent for
//!   `--repair-after` while a majority was live (an absent member is
//!   unknown, not lost: a pass before then leaves what it may hold alone);
//!   a node that left gracefully, or an original-system node, which no
//!   member set keeps, once it has been gone `--repair-after`;
//! - a data node registers with a different store id than it had (its
//!   data directory is new: a lost disk, a new volume): at once;
//! - the head node started `--repair-after` ago: it keeps no state, so it
//!   cannot know what a previous head node saw; this is how repair survives
//!   a restart;
//! - the end of a pass that stopped at messages still in flight: a short
//!   pass over what it left, `--repair-after` later;
//! - a data node reports more damaged records than it reported before
//!   (records its reads leave out): at once.
//!
//! A due pass waits while a data node has been gone less than
//! `--repair-after` (at most `--repair-after` more): that node may come
//! back with its copies, and a pass then would give everything it holds a
//! third copy.
//!
//! The repair task owns the schedule; the membership task tells it what
//! changed ([`MemberChange`], stamped with when it happened), and the
//! status page reads [`RepairProgress`], which only the repair task writes.
//! The pass itself is the repair task's (`tasks::repair`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use protocol::datanode::IdRange;
use protocol::ids::{MessageId, NodeId};
use protocol::status::RepairPass;
use tokio::time::Instant;

use crate::state::membership::{Event, EvictReason};

/// Data nodes whose store id is remembered, at most (one entry each).
pub(crate) const REMEMBERED_STORES: usize = 4096;
/// How soon a pass that could not run (too few live nodes, a node that
/// failed mid-pass) is tried again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Messages a pass could not check or copy that are tried again one by
/// one, at most; beyond them a pass with failures is run again whole.
pub(crate) const MAX_RETRIES: usize = 4096;
/// Tries of one message after the pass that failed it, at most: the
/// first `RETRY_AFTER` later, each next one twice as late; then it is
/// given up on, logged and counted as unrepairable.
pub(crate) const RETRY_ATTEMPTS: u32 = 5;

/// What the schedule hears of the membership: only what decides a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemberChange {
    /// A node joined, naming its data directory if it did.
    Joined { node: NodeId, store: Option<u64> },
    /// A node is gone (evicted or left): not replaced by a newer
    /// incarnation of itself, and not let go by a head node stopping.
    /// `member`: it stays in the member set, absent, and is lost only when
    /// it leaves the set ([`MemberChange::Lost`]); otherwise (a graceful
    /// leave, an original-system node) it counts as lost `repair_after`
    /// after it went.
    Gone { node: NodeId, member: bool },
    /// A node reported this many damaged records when it registered
    /// (`damaged <n>`): their messages may lack a copy.
    Damaged { node: NodeId, records: u64 },
    /// A node reported ranges of ids its retention removed: the whole of
    /// them (its report after `welcome`) or those removed since.
    Retention {
        node: NodeId,
        ranges: Vec<IdRange>,
        whole: bool,
    },
    /// A node left the member set, absent too long: it is lost, and the
    /// copies it held are made again.
    Lost { node: NodeId, absent_for: Duration },
}

impl MemberChange {
    /// What `event` changes for repair, if anything.
    pub(crate) fn of(event: &Event) -> Option<MemberChange> {
        match event {
            Event::Joined { member, .. } => Some(MemberChange::Joined {
                node: member.node.clone(),
                store: member.store,
            }),
            // A newer incarnation took its place, or the head node is
            // stopping: nothing was lost.
            Event::Evicted {
                reason: EvictReason::Replaced { .. } | EvictReason::Shutdown,
                ..
            } => None,
            Event::Evicted { member, reason } => Some(MemberChange::Gone {
                node: member.node.clone(),
                member: !member.legacy && *reason != EvictReason::Left,
            }),
            Event::Removed { node, absent_for } => Some(MemberChange::Lost {
                node: node.clone(),
                absent_for: *absent_for,
            }),
            _ => None,
        }
    }
}

/// Why a pass runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The head node started `repair_after` ago.
    HeadStarted,
    /// A node has been gone this long: it left the member set, or left
    /// gracefully that long ago.
    NodeLost { node: NodeId, away: Duration },
    /// A node came back with another data directory.
    NewStore { node: NodeId },
    /// A node reported damaged records.
    Damaged { node: NodeId, records: u64 },
    /// Messages the last pass left because they were still in flight.
    Leftover,
    /// The last pass could not finish.
    Retry,
    /// Messages a pass could not check or copy, tried again one by one.
    Retries { messages: usize },
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
            Trigger::Damaged { node, records } => {
                write!(f, "dataNode {node} found {records} damaged records")
            }
            Trigger::Leftover => write!(f, "messages the last pass left in flight"),
            Trigger::Retry => write!(f, "the last pass did not finish"),
            Trigger::Retries { messages } => {
                write!(
                    f,
                    "{messages} messages a pass could not check or copy, tried again"
                )
            }
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
    /// A member of the set: lost when it leaves the set, not by the time.
    member: bool,
}

/// One message to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    /// Tries so far that failed, the pass's included.
    failures: u32,
    /// When it is tried next.
    at: Instant,
}

/// What became of a message that failed again ([`Schedule::failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// It is tried again at this time.
    Again(Instant),
    /// It failed [`RETRY_ATTEMPTS`] tries after its pass: given up on.
    GivenUp,
    /// No room among the [`MAX_RETRIES`]: a whole pass must run again.
    NoRoom,
}

/// When a pass is due. Pure: fed membership events and instants.
#[derive(Debug)]
pub(crate) struct Schedule {
    repair_after: Duration,
    lost: BTreeMap<NodeId, Lost>,
    /// Nodes that left the member set and have not registered since (at
    /// most [`REMEMBERED_STORES`]): a pass counts none of them absent,
    /// whether or not the routes it reads still name them.
    left_set: BTreeSet<NodeId>,
    /// Messages tried again one by one, at most [`MAX_RETRIES`].
    retries: BTreeMap<MessageId, Retry>,
    stores: HashMap<NodeId, u64>,
    /// The damaged records each node reported last.
    damaged: HashMap<NodeId, u64>,
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
    /// Could not do all it should (more messages could not be checked or
    /// copied than can be tried again one by one, or too few nodes were
    /// live to copy anything): tried again `repair_after` later.
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
            left_set: BTreeSet::new(),
            retries: BTreeMap::new(),
            stores: HashMap::new(),
            damaged: HashMap::new(),
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

    /// Notes a membership event that happened at `now`, as the membership
    /// task would send it.
    #[cfg(test)]
    fn record(&mut self, event: &Event, now: Instant) {
        if let Some(change) = MemberChange::of(event) {
            self.note(change, now);
        }
    }

    /// Notes a membership change that happened at `now`.
    pub(crate) fn note(&mut self, change: MemberChange, now: Instant) {
        match change {
            MemberChange::Joined { node, store } => {
                self.lost.remove(&node);
                self.left_set.remove(&node);
                let Some(store) = store else { return };
                let before =
                    if self.stores.len() < REMEMBERED_STORES || self.stores.contains_key(&node) {
                        self.stores.insert(node.clone(), store)
                    } else {
                        None
                    };
                if before.is_some_and(|b| b != store) {
                    self.request(now, Trigger::NewStore { node }, None);
                }
            }
            MemberChange::Damaged { node, records } => {
                // A node that reports the same damage again (it restarted,
                // or reconnected) has had its pass; one that reports more
                // found more.
                let before = self.damaged.get(&node).copied().unwrap_or(0);
                if records <= before {
                    return;
                }
                if self.damaged.len() < REMEMBERED_STORES || self.damaged.contains_key(&node) {
                    self.damaged.insert(node.clone(), records);
                }
                self.request(now, Trigger::Damaged { node, records }, None);
            }
            MemberChange::Lost { node, absent_for } => {
                self.lost.remove(&node);
                if self.left_set.len() < REMEMBERED_STORES {
                    self.left_set.insert(node.clone());
                }
                self.request(
                    now,
                    Trigger::NodeLost {
                        node,
                        away: absent_for,
                    },
                    None,
                );
            }
            // The repair task keeps these (`Retained`).
            MemberChange::Retention { .. } => {}
            MemberChange::Gone { node, member } => {
                if self.lost.len() < REMEMBERED_STORES {
                    self.lost.entry(node).or_insert(Lost {
                        since: now,
                        covered: false,
                        member,
                    });
                }
            }
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
            .find(|(_, lost)| {
                !lost.member && !lost.covered && lost.since + self.repair_after <= now
            })
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

    /// `id` could not be checked or copied at `now` (by a pass, or by its
    /// last try): when it is tried again, if it is.
    pub(crate) fn failed(&mut self, id: MessageId, now: Instant) -> Failed {
        let failures = match self.retries.get(&id) {
            Some(retry) => retry.failures + 1,
            None if self.retries.len() >= MAX_RETRIES => return Failed::NoRoom,
            None => 1,
        };
        if failures > RETRY_ATTEMPTS {
            self.retries.remove(&id);
            return Failed::GivenUp;
        }
        let at = now + RETRY_AFTER * 2u32.pow(failures - 1);
        self.retries.insert(id, Retry { failures, at });
        Failed::Again(at)
    }

    /// `id` was checked and, if it had to be, copied: no more tries.
    pub(crate) fn settled(&mut self, id: MessageId) {
        self.retries.remove(&id);
    }

    /// The messages due to be tried again at `now`, at most `most`, in id
    /// order.
    pub(crate) fn due_retries(&self, now: Instant, most: usize) -> Vec<MessageId> {
        self.retries
            .iter()
            .filter(|(_, retry)| retry.at <= now)
            .map(|(id, _)| *id)
            .take(most)
            .collect()
    }

    /// Messages waiting to be tried again.
    #[cfg(test)]
    fn retries(&self) -> usize {
        self.retries.len()
    }

    /// Nodes that left the member set (lost) and have not registered since.
    pub(crate) fn left_set(&self) -> &BTreeSet<NodeId> {
        &self.left_set
    }

    /// Nodes gone at `now` that no member set keeps and that are not lost
    /// yet (a graceful leave, an original-system node, gone less than
    /// `repair_after`): a pass counts them absent, with the members the set
    /// keeps absent, and leaves alone what they may hold.
    pub(crate) fn departed(&self, now: Instant) -> Vec<NodeId> {
        self.lost
            .iter()
            .filter(|(_, lost)| !lost.member && now < lost.since + self.repair_after)
            .map(|(node, _)| node.clone())
            .collect()
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
            // to take a copy) takes time to change. Used only when the
            // failures could not all be tried again one by one.
            PassEnd::Failures => {
                self.request(now + self.repair_after, Trigger::Retry, None);
            }
        }
    }
}

/// How repair passes went: written by the repair task only, read by the
/// status page.
#[derive(Debug, Default)]
pub(crate) struct RepairProgress {
    progress: Mutex<Progress>,
}

#[derive(Debug, Default, Clone)]
struct Progress {
    running: Option<RepairPass>,
    last: Option<RepairPass>,
    passes: u64,
    copies: u64,
    unrepairable: u64,
}

impl RepairProgress {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        // Every change under this lock leaves the state consistent.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pass running now, or else the last one.
    pub(crate) fn pass(&self) -> (bool, Option<RepairPass>) {
        let progress = self.lock();
        match &progress.running {
            Some(running) => (true, Some(running.clone())),
            None => (false, progress.last.clone()),
        }
    }

    /// Passes run, copies made by them, and messages given up on as
    /// unrepairable, since the head node started.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        let progress = self.lock();
        (progress.passes, progress.copies, progress.unrepairable)
    }

    /// `messages` were given up on: they could not be checked or copied in
    /// every try.
    pub(crate) fn unrepairable(&self, messages: u64) {
        self.lock().unrepairable += messages;
    }

    /// A pass starts.
    pub(crate) fn start(&self, pass: RepairPass) {
        self.lock().running = Some(pass);
    }

    /// The pass running changed.
    pub(crate) fn update(&self, change: impl FnOnce(&mut RepairPass)) {
        if let Some(running) = &mut self.lock().running {
            change(running);
        }
    }

    /// The pass running ended, `finish` filling in how, after making
    /// `copies` new copies.
    pub(crate) fn end(&self, copies: u64, finish: impl FnOnce(&mut RepairPass)) {
        let mut progress = self.lock();
        if let Some(mut pass) = progress.running.take() {
            finish(&mut pass);
            progress.last = Some(pass);
        }
        progress.passes += 1;
        progress.copies += copies;
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

    fn removed(node: &str, absent_for: Duration) -> Event {
        Event::Removed {
            node: node.parse().unwrap(),
            absent_for,
        }
    }

    #[test]
    fn a_member_is_repaired_once_when_it_leaves_the_set_not_before() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        let t1 = t0 + AFTER * 2;
        schedule.record(&evicted("dn1", EvictReason::Unreachable), t1);
        assert_eq!(schedule.due(t1 + AFTER / 2), None);
        assert_eq!(
            schedule.due(t1 + AFTER * 3),
            None,
            "absent, not lost, while it is in the member set"
        );
        schedule.record(&removed("dn1", AFTER * 3), t1 + AFTER * 3);
        let (trigger, from) = schedule.due(t1 + AFTER * 3).unwrap();
        assert!(matches!(trigger, Trigger::NodeLost { ref node, .. } if node.as_str() == "dn1"));
        assert_eq!(from, None);
        schedule.begin(t1 + AFTER * 3);
        schedule.finish(&PassEnd::Complete, t1 + AFTER * 3);
        assert_eq!(schedule.due(t1 + AFTER * 5), None, "covered by the pass");
    }

    #[test]
    fn a_graceful_leave_is_an_absence_until_the_delay_then_a_loss() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        let t1 = t0 + AFTER * 2;
        schedule.record(&evicted("dn1", EvictReason::Left), t1);
        let dn1: NodeId = "dn1".parse().unwrap();
        assert_eq!(
            schedule.departed(t1 + AFTER / 2),
            std::slice::from_ref(&dn1)
        );
        assert_eq!(schedule.due(t1 + AFTER / 2), None);
        assert!(schedule.departed(t1 + AFTER).is_empty());
        let (trigger, _) = schedule.due(t1 + AFTER).unwrap();
        assert!(matches!(trigger, Trigger::NodeLost { ref node, .. } if *node == dn1));
        // Back in time: no pass, and not absent.
        let mut schedule = settled(t0);
        schedule.record(&evicted("dn1", EvictReason::Left), t1);
        schedule.record(&joined("dn1", None), t1 + AFTER / 2);
        assert!(schedule.departed(t1 + AFTER / 2).is_empty());
        assert_eq!(schedule.due(t1 + AFTER * 3), None);
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
    fn damaged_records_a_node_reports_are_repaired_at_once_and_once() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        let dn1: NodeId = "dn1".parse().unwrap();
        let damaged = |records| MemberChange::Damaged {
            node: dn1.clone(),
            records,
        };
        schedule.note(damaged(2), t0);
        assert_eq!(
            schedule.due(t0),
            Some((
                Trigger::Damaged {
                    node: dn1.clone(),
                    records: 2
                },
                None
            ))
        );
        schedule.begin(t0);
        schedule.finish(&PassEnd::Complete, t0);
        schedule.note(damaged(2), t0 + AFTER);
        assert_eq!(
            schedule.due(t0 + AFTER * 3),
            None,
            "the same damage reported again (a restart, a reconnection)"
        );
        schedule.note(damaged(3), t0 + AFTER * 4);
        assert!(
            matches!(
                schedule.due(t0 + AFTER * 4),
                Some((Trigger::Damaged { records: 3, .. }, None))
            ),
            "one more"
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
    fn a_message_that_keeps_failing_is_tried_a_bounded_number_of_times_with_backoff() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        let id = MessageId { epoch: 5, seq: 1 };
        let mut now = t0;
        let mut waits = Vec::new();
        loop {
            match schedule.failed(id, now) {
                Failed::Again(at) => {
                    assert!(
                        schedule
                            .due_retries(at - Duration::from_millis(1), 10)
                            .is_empty()
                    );
                    assert_eq!(schedule.due_retries(at, 10), [id]);
                    waits.push((at - now).as_secs());
                    now = at;
                }
                Failed::GivenUp => break,
                Failed::NoRoom => panic!("room for one"),
            }
        }
        assert_eq!(waits, [5, 10, 20, 40, 80]);
        assert_eq!(schedule.retries(), 0, "given up on: not tried again");
        assert_eq!(
            schedule.due(now + AFTER * 100),
            None,
            "and no pass runs for it"
        );
        // One that succeeds is not tried again.
        schedule.failed(id, now);
        schedule.settled(id);
        assert!(schedule.due_retries(now + AFTER * 100, 10).is_empty());
    }

    #[test]
    fn retries_are_bounded_and_beyond_them_a_whole_pass_runs_again() {
        let t0 = Instant::now();
        let mut schedule = settled(t0);
        for seq in 0..MAX_RETRIES as u64 {
            assert!(matches!(
                schedule.failed(MessageId { epoch: 1, seq }, t0),
                Failed::Again(_)
            ));
        }
        assert_eq!(
            schedule.failed(MessageId { epoch: 2, seq: 0 }, t0),
            Failed::NoRoom
        );
        assert_eq!(schedule.due_retries(t0 + RETRY_AFTER, 3).len(), 3);
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
        schedule.record(&removed("dn1", AFTER), due_at);
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
