//! Everything observable in one run, in order, with the simulated time.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A shared, append-only log of observable events.
#[derive(Clone, Default)]
pub struct Trace(Arc<Mutex<Vec<String>>>);

impl Trace {
    /// Records `line` at the current simulated time (zero outside a simulation).
    pub fn record(&self, line: impl AsRef<str>) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.record_at(at, line);
    }

    /// Records `line` at `at`.
    pub fn record_at(&self, at: Duration, line: impl AsRef<str>) {
        let entry = format!("{:>9.3} {}", at.as_secs_f64(), line.as_ref());
        self.lock().push(entry);
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().clone()
    }

    /// A hash of every line, to compare runs.
    pub fn digest(&self) -> u64 {
        // SipHash with fixed keys: the same lines give the same digest.
        let mut hasher = DefaultHasher::new();
        self.lock().hash(&mut hasher);
        hasher.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
