//! The wall clock a data node of the simulation reads: the simulated time
//! plus an offset the scenario sets at the start (skew) and changes while
//! the node runs (steps, forward or back). The monotonic clock is never
//! offset: turmoil's simulated time is the same for every host, as a
//! monotonic clock only measures intervals.
//!
//! A data node reads the wall clock for its records' times and for its
//! key index's window; no decision about who may store, or what a reply
//! means, may depend on it, and the checks do not change with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A host's wall clock: simulated time plus a signed offset in ms.
#[derive(Clone, Default)]
pub struct WallClock(Arc<AtomicI64>);

impl WallClock {
    /// A clock `offset_ms` away from the simulated time.
    pub fn skewed(offset_ms: i64) -> Self {
        WallClock(Arc::new(AtomicI64::new(offset_ms)))
    }

    /// Now, in Unix ms: never before the epoch.
    pub fn now_ms(&self) -> u64 {
        let sim = turmoil::since_epoch().map_or(0, |d| d.as_millis() as i64);
        sim.saturating_add(self.offset_ms()).max(0) as u64
    }

    /// The offset from the simulated time.
    pub fn offset_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Steps the clock by `by_ms` (back if negative).
    pub fn step(&self, by_ms: i64) {
        self.0.fetch_add(by_ms, Ordering::Relaxed);
    }
}
