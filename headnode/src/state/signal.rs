//! [`Signal`]: "something changed", woken in a repeatable order.
//!
//! A `watch` channel wakes its receivers in a random order (it spreads
//! them over several internal queues chosen at random), so two runs of the
//! seeded simulation with one seed could differ. A `Notify` wakes its
//! waiters in the order they started waiting.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// A change counter whose waiters are woken in a repeatable order.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    version: AtomicU64,
    notify: Notify,
}

impl Signal {
    /// Counts a change and wakes every waiter.
    pub(crate) fn bump(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Returns the version once it differs from `seen` (at once if it
    /// already does). Start from 0 to see the first change.
    pub(crate) async fn changed_since(&self, seen: u64) -> u64 {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a bump in between is seen.
            notified.as_mut().enable();
            let now = self.version.load(Ordering::Acquire);
            if now != seen {
                return now;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_before_the_wait_is_seen() {
        let signal = Signal::default();
        signal.bump();
        assert_eq!(signal.changed_since(0).await, 1);
        let waiting = signal.changed_since(1);
        signal.bump();
        assert_eq!(waiting.await, 2);
    }
}
