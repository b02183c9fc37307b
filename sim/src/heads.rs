//! Head nodes of the simulation: which process of which head-node host
//! is running (a [`HeadRun`]), when each started ([`Heads`]), and which
//! head node a data node or a client connects to ([`Target`]).
//!
//! A seed runs one head node, `head`; a seed with a split brain also
//! starts a second one, `head2`, and moves some data nodes and clients to
//! it for a while. The checks tell an older head node from a newer one by
//! when its process started, so every answer a client gets and every head
//! node a data node accepts is tagged with the [`HeadRun`] it came from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The head nodes' host names: the one every seed runs, and the second one
/// a split brain starts.
pub const HEADS: [&str; 2] = ["head", "head2"];
/// The port head nodes listen on.
pub const PORT: u16 = 7000;

/// One process of a head node: its host (an index into [`HEADS`]) and
/// which start of that host it is (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeadRun {
    /// Index into [`HEADS`].
    pub host: usize,
    /// The host's start, from 1.
    pub start: u64,
}

impl std::fmt::Display for HeadRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", HEADS[self.host], self.start)
    }
}

#[derive(Default)]
struct Started {
    starts: [u64; HEADS.len()],
    /// When each run started, in simulated time; at most one entry per
    /// start of a head-node host in one seed (a few dozen).
    at: BTreeMap<HeadRun, Duration>,
}

/// The head-node processes of one seed, shared by the hosts and the checks.
#[derive(Clone, Default)]
pub struct Heads(Arc<Mutex<Started>>);

impl Heads {
    /// A process of host `host` starts: its run. Its start time is
    /// [`Heads::started`]'s to record, from inside the simulation.
    pub fn start(&self, host: usize) -> HeadRun {
        let mut started = self.lock();
        started.starts[host] += 1;
        HeadRun {
            host,
            start: started.starts[host],
        }
    }

    /// Run `run` started at `at`, in simulated time.
    pub fn started(&self, run: HeadRun, at: Duration) {
        self.lock().at.insert(run, at);
    }

    /// The process of host `host` running now (or the last one that ran).
    pub fn current(&self, host: usize) -> HeadRun {
        HeadRun {
            host,
            start: self.lock().starts[host],
        }
    }

    /// When each run started.
    pub fn started_at(&self) -> BTreeMap<HeadRun, Duration> {
        self.lock().at.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Started> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct TargetState {
    /// Index into [`HEADS`].
    host: AtomicUsize,
    /// Raised when the connection to the old head node must be dropped.
    cuts: AtomicU64,
    cut: Notify,
}

/// Which head node a data node or a client connects to; the scenario
/// moves it. Moving with a cut also tells the peer to drop the connection
/// it has (as a proxy that closes it would); without, the peer keeps its
/// connection until it fails.
#[derive(Clone, Default)]
pub struct Target(Arc<TargetState>);

impl Target {
    /// The head node to connect to: its index in [`HEADS`].
    pub fn host(&self) -> usize {
        self.0.host.load(Ordering::Relaxed)
    }

    /// The address to connect to.
    pub fn addr(&self) -> String {
        format!("{}:{PORT}", HEADS[self.host()])
    }

    /// How many cuts so far: a connection made at `n` is dropped once this
    /// differs.
    pub fn cuts(&self) -> u64 {
        self.0.cuts.load(Ordering::Relaxed)
    }

    /// Resolves once the cut count differs from `since`.
    pub async fn cut_since(&self, since: u64) {
        loop {
            let cut = self.0.cut.notified();
            if self.cuts() != since {
                return;
            }
            cut.await;
        }
    }

    /// Points the peer at head node `host`; with `cut`, its current
    /// connection is dropped too.
    pub fn move_to(&self, host: usize, cut: bool) {
        self.0.host.store(host, Ordering::Relaxed);
        if cut {
            self.0.cuts.fetch_add(1, Ordering::Relaxed);
            self.0.cut.notify_waiters();
        }
    }
}
