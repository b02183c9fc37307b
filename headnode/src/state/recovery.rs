//! Whether the head node knows enough to serve clients after a start.
//!
//! A restarted head node knows nothing: which keys were stored, under which
//! ids, on which nodes. Each data node tells it when it registers (its
//! `held` keys) and names the cluster's member set (`peers`), which it
//! keeps in its `members` file across restarts of either side. A client
//! resend that arrived before the node holding its key had reported would
//! be stored again under a new id, so clients and readers are not read
//! until every member some report names has reported too, or until `wait`
//! has passed (a node that is gone for good must not keep the cluster
//! closed). A fresh cluster's nodes name no members, so the first report
//! opens it; after a full restart, the first node back names them all.
//!
//! A state machine without I/O: the membership task feeds it reports and
//! the time.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Opened once recovery is done; client sessions wait on it before they
/// read. Not a `watch` channel: that one wakes its waiters in a random
/// order, and the seeded simulation must see the same run for a seed.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    notify: Notify,
}

impl Gate {
    /// Whether it is open.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Opens it and wakes every waiter, in the order they started waiting.
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Returns once it is open.
    pub(crate) async fn opened(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so an `open` in between is seen.
            notified.as_mut().enable();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }
}

use protocol::ids::NodeId;

/// How recovery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recovered {
    /// Every node named in a report has reported.
    AllReported {
        /// Nodes that reported.
        nodes: usize,
    },
    /// The wait ran out; these named nodes never reported.
    TimedOut { missing: Vec<NodeId> },
}

/// The recovery after a start.
#[derive(Debug)]
pub(crate) struct Recovery {
    deadline: Instant,
    expected: BTreeSet<NodeId>,
    reported: BTreeSet<NodeId>,
    done: bool,
}

impl Recovery {
    /// Recovery of a head node started at `started`, waiting at most `wait`.
    pub(crate) fn new(started: Instant, wait: Duration) -> Self {
        Recovery {
            deadline: started + wait,
            expected: BTreeSet::new(),
            reported: BTreeSet::new(),
            done: false,
        }
    }

    /// Whether clients may be served.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// `node` finished its report, naming `peers`. `Some` if this ends
    /// recovery.
    pub(crate) fn reported(
        &mut self,
        node: &NodeId,
        peers: &[NodeId],
        now: Instant,
    ) -> Option<Recovered> {
        if self.done {
            return None;
        }
        self.reported.insert(node.clone());
        self.expected.extend(peers.iter().cloned());
        if self.expected.is_subset(&self.reported) {
            self.done = true;
            return Some(Recovered::AllReported {
                nodes: self.reported.len(),
            });
        }
        self.tick(now)
    }

    /// The time is `now`. `Some` if the wait just ran out.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Recovered> {
        if self.done || now < self.deadline {
            return None;
        }
        self.done = true;
        Some(Recovered::TimedOut {
            missing: self.expected.difference(&self.reported).cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_fresh_cluster_opens_at_the_first_report() {
        let t0 = Instant::now();
        let mut recovery = Recovery::new(t0, Duration::from_secs(5));
        assert!(!recovery.is_done());
        assert_eq!(recovery.tick(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            recovery.reported(&ids(&["dn1"])[0], &[], t0),
            Some(Recovered::AllReported { nodes: 1 })
        );
        assert!(recovery.is_done());
    }

    #[test]
    fn after_a_restart_it_waits_for_every_node_the_reports_name() {
        let t0 = Instant::now();
        let mut recovery = Recovery::new(t0, Duration::from_secs(5));
        let all = ids(&["dn1", "dn2", "dn3"]);
        assert_eq!(recovery.reported(&all[1], &all, t0), None);
        assert_eq!(recovery.reported(&all[0], &all, t0), None);
        assert!(!recovery.is_done());
        assert_eq!(
            recovery.reported(&all[2], &all[..2], t0),
            Some(Recovered::AllReported { nodes: 3 })
        );
        assert_eq!(recovery.reported(&all[2], &all, t0), None, "ends once");
    }

    #[test]
    fn after_a_full_restart_a_node_that_holds_no_key_waits_for_the_members_it_kept() {
        // Every process was killed; dn2 comes back first, and its members
        // file names dn1, which holds the keys.
        let t0 = Instant::now();
        let mut recovery = Recovery::new(t0, Duration::from_secs(60));
        let kept = ids(&["dn1", "dn2"]);
        assert_eq!(recovery.reported(&kept[1], &kept, t0), None);
        assert_eq!(recovery.tick(t0 + Duration::from_secs(59)), None);
        assert_eq!(
            recovery.reported(&kept[0], &kept, t0 + Duration::from_secs(59)),
            Some(Recovered::AllReported { nodes: 2 })
        );
    }

    #[test]
    fn a_node_that_never_comes_back_delays_it_only_until_the_wait_is_over() {
        let t0 = Instant::now();
        let mut recovery = Recovery::new(t0, Duration::from_secs(5));
        let all = ids(&["dn1", "dn2", "dn3"]);
        recovery.reported(&all[0], &all, t0);
        recovery.reported(&all[1], &all, t0 + Duration::from_secs(1));
        assert_eq!(recovery.tick(t0 + Duration::from_millis(4999)), None);
        assert_eq!(
            recovery.tick(t0 + Duration::from_secs(5)),
            Some(Recovered::TimedOut {
                missing: ids(&["dn3"])
            })
        );
        assert!(recovery.is_done());
    }
}
