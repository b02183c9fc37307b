//! When to commit (group commit's linger rule), as a plain state machine
//! over the batch sizes and fabricated instants.

use std::time::{Duration, Instant};

/// What to do with the batch staged so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Write and sync it now.
    Now,
    /// Read what else arrives until then, and decide again.
    WaitUntil(Instant),
}

/// Group commit's linger rule. Right after an acknowledged batch, the
/// clients it answered send again, and their messages arrive over the next
/// few hundred µs. A batch smaller than the last one is the head of that
/// burst: it waits up to `linger` (counted from its first look) for the
/// rest, rather than pay a whole `fdatasync` for a few messages while the
/// others queue behind it. A batch at least as large as the last one, an
/// empty one, and one that may not wait are committed at once.
#[derive(Debug)]
pub struct GroupCommit {
    linger: Duration,
    /// Messages in the last batch that had any.
    last_batch: usize,
    /// When the batch being gathered stops waiting.
    linger_until: Option<Instant>,
}

impl GroupCommit {
    /// A rule with this linger; zero never waits.
    pub fn new(linger: Duration) -> Self {
        GroupCommit {
            linger,
            last_batch: 0,
            linger_until: None,
        }
    }

    /// What to do with `staged` messages at `now`; `may_wait` is false when
    /// the batch must go at once (see [`super::Session::when_to_commit`]).
    pub fn decide(&mut self, staged: usize, may_wait: bool, now: Instant) -> Commit {
        if may_wait && !self.linger.is_zero() && staged > 0 && staged < self.last_batch {
            let until = *self.linger_until.get_or_insert(now + self.linger);
            if now < until {
                return Commit::WaitUntil(until);
            }
        }
        Commit::Now
    }

    /// A batch of `staged` messages is being committed.
    pub fn committed(&mut self, staged: usize) {
        self.linger_until = None;
        if staged > 0 {
            self.last_batch = staged;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_micros(400);

    fn after(batch: usize) -> GroupCommit {
        let mut group = GroupCommit::new(LINGER);
        group.committed(batch);
        group
    }

    #[test]
    fn the_first_batch_is_committed_at_once() {
        let mut group = GroupCommit::new(LINGER);
        assert_eq!(group.decide(1, true, Instant::now()), Commit::Now);
    }

    #[test]
    fn a_batch_as_large_as_the_last_is_committed_at_once() {
        let now = Instant::now();
        assert_eq!(after(40).decide(40, true, now), Commit::Now);
        assert_eq!(after(40).decide(41, true, now), Commit::Now);
    }

    #[test]
    fn a_smaller_batch_waits_for_the_rest_of_its_burst_until_the_linger_from_its_first_look() {
        let start = Instant::now();
        let mut group = after(40);
        let until = start + LINGER;
        assert_eq!(group.decide(3, true, start), Commit::WaitUntil(until));
        // More arrived: the deadline stays where the first look put it.
        let later = start + Duration::from_micros(250);
        assert_eq!(group.decide(25, true, later), Commit::WaitUntil(until));
        assert_eq!(group.decide(25, true, until), Commit::Now);
    }

    #[test]
    fn the_rest_of_the_burst_ends_the_wait() {
        let start = Instant::now();
        let mut group = after(40);
        assert!(matches!(group.decide(3, true, start), Commit::WaitUntil(_)));
        let later = start + Duration::from_micros(100);
        assert_eq!(group.decide(40, true, later), Commit::Now);
    }

    #[test]
    fn an_empty_batch_a_batch_that_may_not_wait_and_a_zero_linger_never_wait() {
        let now = Instant::now();
        assert_eq!(after(40).decide(0, true, now), Commit::Now);
        assert_eq!(after(40).decide(3, false, now), Commit::Now);
        let mut never = GroupCommit::new(Duration::ZERO);
        never.committed(40);
        assert_eq!(never.decide(3, true, now), Commit::Now);
    }

    #[test]
    fn a_commit_starts_a_new_wait_and_an_empty_one_keeps_the_last_size() {
        let start = Instant::now();
        let mut group = after(40);
        assert!(matches!(group.decide(3, true, start), Commit::WaitUntil(_)));
        group.committed(30);
        // Pings alone: nothing staged, the size to wait for stays 30.
        group.committed(0);
        let later = start + Duration::from_millis(5);
        assert_eq!(
            group.decide(10, true, later),
            Commit::WaitUntil(later + LINGER),
            "a new batch gets a linger of its own"
        );
        assert_eq!(group.decide(30, true, later), Commit::Now);
    }
}
