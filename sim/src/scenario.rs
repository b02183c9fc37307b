//! One seed of the simulation: a head node, three data nodes and
//! pipelining clients on a simulated network (and, if the settings ask,
//! tailing readers), a fault schedule drawn from the seed, the data nodes'
//! wall clocks skewed and retention on one of them as the seed decides,
//! and the invariants ([`crate::check`]) checked once every client is done.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use headnode::membership::{Event, EvictReason};
use headnode::{Config, DetectorConfig};
use protocol::auth::ClusterToken;
use protocol::ids::{MessageId, MessageKey};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

use crate::check::{self, Answer, NodeHistory};
use crate::client::{ClientModel, ClientReport};
use crate::clock::WallClock;
use crate::datanode::SimDataNode;
use crate::disk::Disk;
use crate::heads::{HEADS, Heads, PORT, Target};
use crate::net::SimListener;
use crate::prober::{SimProber, Unreachable};
use crate::reader::ReaderModel;
use crate::trace::Trace;

/// The data nodes' host names (and node ids).
pub const NODES: [&str; 3] = ["dn1", "dn2", "dn3"];
/// The head node's host name.
pub const HEAD: &str = HEADS[0];
/// The second head node's host name (a split brain starts it).
pub const HEAD2: &str = HEADS[1];
/// When the simulated wall clock starts: 2026-12-01 00:00 UTC, so a clock
/// set back still reads a plausible time.
const START_UNIX_SECS: u64 = 1_796_083_200;
const TOKEN: &str = "simulation-cluster-token";
/// The head node's `--repair-after`: a pass after its start, and after a
/// data node has been gone this long.
const REPAIR_AFTER: Duration = Duration::from_secs(4);

/// Size of the workload and of the fault schedule.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Clients.
    pub clients: u32,
    /// Messages per client.
    pub messages: usize,
    /// Of the clients, how many (the last ones) send keyed messages (one
    /// by default: see `sim/tests/it/simulation.rs`).
    pub keyed_clients: u32,
    /// Messages in flight per client.
    pub window: usize,
    /// Readers tailing from the start throughout.
    pub readers: u32,
    /// Whether seeds that draw retention on a data node get it (off by
    /// default: see `sim/tests/it/simulation.rs`).
    pub retention: bool,
    /// Whether seeds that draw a split brain get it (off by default: see
    /// `sim/tests/it/simulation.rs`).
    pub split_brain: bool,
    /// Pause between two sends of one client.
    pub pace: Duration,
    /// Faults per seed, at most.
    pub max_faults: usize,
    /// Faults start within this time.
    pub fault_window: Duration,
    /// Simulated time a seed may take before it fails as stuck.
    pub limit: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            clients: 3,
            keyed_clients: 1,
            readers: 0,
            retention: false,
            split_brain: false,
            messages: 120,
            window: 8,
            pace: Duration::from_millis(100),
            max_faults: 5,
            fault_window: Duration::from_secs(12),
            limit: Duration::from_secs(240),
        }
    }
}

/// The detector the head node runs with; short holds stay below its grace.
fn detector() -> DetectorConfig {
    DetectorConfig::default()
}

/// The longest "short hold": with a heartbeat answered just before the
/// hold and one interval until the next ping, silence stays below
/// `suspect_after + hung_grace`.
fn max_short_hold() -> Duration {
    grace()
        .saturating_sub(Config::default().heartbeat_interval)
        .saturating_sub(Duration::from_millis(700))
}

/// Heartbeat silence after which the head node evicts a data node.
fn grace() -> Duration {
    let d = detector();
    d.suspect_after + d.hung_grace
}

/// How long after losing its majority a head node may still answer
/// `recibido`: the fencing time of docs/guarantees.md with the settings
/// here (the detector's grace, one ICMP probe, its 50 ms tick), plus a
/// second for the answer's way to the client.
pub fn fencing_time() -> Duration {
    grace() + Config::default().ping_timeout + Duration::from_millis(50) + Duration::from_secs(1)
}

/// A fault the scenario injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A data node's process dies, unsynced writes are lost, and it starts again.
    CrashDataNode {
        /// Which node.
        node: usize,
        /// Down this long.
        down_for: Duration,
    },
    /// A data node is asked to stop (as on SIGTERM): it says `bye`, the
    /// head node drains it, and it exits; it starts again after
    /// `down_for` (killed then if it has not finished leaving).
    LeaveDataNode {
        /// Which node.
        node: usize,
        /// Down this long, from the request.
        down_for: Duration,
    },
    /// The head node's process dies and starts again.
    CrashHead {
        /// Down this long.
        down_for: Duration,
    },
    /// The link between a data node and the head node drops everything.
    Partition {
        /// Which node.
        node: usize,
        /// Cut this long.
        lasting: Duration,
    },
    /// The link between a data node and the head node holds everything,
    /// shorter than the failure detector's grace.
    ShortHold {
        /// Which node.
        node: usize,
        /// Held this long.
        lasting: Duration,
    },
    /// The link between a data node and the head node holds everything
    /// for longer than the grace: the node is evicted, and what it sent
    /// arrives late.
    LongHold {
        /// Which node.
        node: usize,
        /// Held this long.
        lasting: Duration,
    },
    /// The link between a client and the head node holds everything.
    ClientHold {
        /// Which client (from 1).
        client: u32,
        /// Held this long.
        lasting: Duration,
    },
    /// A data node's fsync takes `fsync` for a while.
    SlowDisk {
        /// Which node.
        node: usize,
        /// The slow fsync.
        fsync: Duration,
        /// Slow this long.
        lasting: Duration,
    },
    /// Every process dies at once, the head node and every data node
    /// (unsynced writes are lost), and all start again together.
    CrashCluster {
        /// Down this long.
        down_for: Duration,
    },
    /// A second head node starts, and some data nodes and clients move to
    /// it while the first keeps the others: with `cut`, their connections
    /// to the first are dropped (it notices at once); without, the data
    /// nodes' links to it go silent (they leave it after their
    /// `--head-timeout`, it evicts them after its detector's grace). At the
    /// end the second head node dies and everyone goes back to the first.
    SplitBrain {
        /// The data nodes that move.
        nodes: Vec<usize>,
        /// The clients that move (from 1).
        clients: Vec<u32>,
        /// Whether the old connections are cut or left silent.
        cut: bool,
        /// The second head node runs this long.
        lasting: Duration,
    },
    /// A data node's wall clock steps, forward or back.
    ClockStep {
        /// Which node.
        node: usize,
        /// By this many ms (back if negative).
        by_ms: i64,
    },
}

impl Fault {
    fn lasting(&self) -> Duration {
        match *self {
            Fault::CrashDataNode { down_for, .. }
            | Fault::LeaveDataNode { down_for, .. }
            | Fault::CrashHead { down_for }
            | Fault::CrashCluster { down_for } => down_for,
            Fault::Partition { lasting, .. }
            | Fault::ShortHold { lasting, .. }
            | Fault::LongHold { lasting, .. }
            | Fault::ClientHold { lasting, .. }
            | Fault::SlowDisk { lasting, .. }
            | Fault::SplitBrain { lasting, .. } => lasting,
            Fault::ClockStep { .. } => Duration::ZERO,
        }
    }

    /// A full-cluster crash or a split brain: every host is in it.
    pub fn is_cluster_wide(&self) -> bool {
        matches!(self, Fault::CrashCluster { .. } | Fault::SplitBrain { .. })
    }

    /// The one data node a fault is about, which no other fault may
    /// touch meanwhile.
    fn node(&self) -> Option<usize> {
        match *self {
            Fault::CrashHead { .. }
            | Fault::ClientHold { .. }
            | Fault::CrashCluster { .. }
            | Fault::SplitBrain { .. }
            | Fault::ClockStep { .. } => None,
            Fault::CrashDataNode { node, .. }
            | Fault::LeaveDataNode { node, .. }
            | Fault::Partition { node, .. }
            | Fault::ShortHold { node, .. }
            | Fault::LongHold { node, .. }
            | Fault::SlowDisk { node, .. } => Some(node),
        }
    }
}

/// A fault and when it starts.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// Start, in simulated time.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

impl Scheduled {
    /// From its start to its end and the room after it ([`ROOM`]).
    pub fn span(&self) -> std::ops::Range<Duration> {
        self.at..self.at + self.fault.lasting() + ROOM
    }

    /// Whether two faults' spans overlap (a clock step overlaps nothing).
    fn overlaps(&self, other: &Scheduled) -> bool {
        let (a, b) = (self.span(), other.span());
        let steps = |s: &Scheduled| matches!(s.fault, Fault::ClockStep { .. });
        !steps(self) && !steps(other) && a.start < b.end && b.start < a.end
    }
}

/// Room after a fault before another on the same data node (or any other,
/// after a whole-cluster fault): the membership settles first.
pub const ROOM: Duration = Duration::from_secs(6);

/// Draws the faults of `seed`: one at a time per data node (so a short
/// hold is never mixed with another fault of the same node), head-node
/// crashes and clock steps at any time, and a full-cluster crash or a
/// split brain (at most one per seed) only alone.
pub fn schedule(seed: u64, settings: &Settings) -> Vec<Scheduled> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let count = rng.random_range(1..=settings.max_faults);
    let mut node_free_at = [Duration::ZERO; NODES.len()];
    let mut faults: Vec<Scheduled> = Vec::new();
    let ms =
        |rng: &mut SmallRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    for _ in 0..count {
        let at = ms(&mut rng, 200, settings.fault_window.as_millis() as u64);
        let node = rng.random_range(0..NODES.len());
        let fault = match rng.random_range(0..112) {
            0..13 => Fault::CrashDataNode {
                node,
                down_for: ms(&mut rng, 100, 4000),
            },
            13..18 => Fault::LeaveDataNode {
                node,
                down_for: ms(&mut rng, 500, 6000),
            },
            18..30 => Fault::CrashHead {
                down_for: ms(&mut rng, 100, 3000),
            },
            30..45 => Fault::Partition {
                node,
                lasting: ms(&mut rng, 200, 8000),
            },
            45..70 => Fault::ShortHold {
                node,
                lasting: ms(&mut rng, 100, max_short_hold().as_millis() as u64),
            },
            70..78 => Fault::LongHold {
                node,
                lasting: grace() + ms(&mut rng, 500, 5000),
            },
            78..86 => Fault::ClientHold {
                client: rng.random_range(1..=settings.clients),
                lasting: ms(&mut rng, 100, 5000),
            },
            86..100 => Fault::SlowDisk {
                node,
                fsync: ms(&mut rng, 50, 1000),
                lasting: ms(&mut rng, 500, 6000),
            },
            100..104 => Fault::CrashCluster {
                down_for: ms(&mut rng, 100, 4000),
            },
            104..108 => {
                let moved = rng.random_range(1..NODES.len());
                let mut nodes: Vec<usize> = (0..NODES.len()).collect();
                while nodes.len() > moved {
                    nodes.remove(rng.random_range(0..nodes.len()));
                }
                let clients: Vec<u32> = (1..=settings.clients)
                    .filter(|_| rng.random_bool(0.5))
                    .collect();
                Fault::SplitBrain {
                    nodes,
                    clients,
                    cut: rng.random_bool(0.5),
                    lasting: ms(&mut rng, 3000, 15000),
                }
            }
            _ => {
                let by_ms = match rng.random_range(0..3) {
                    0 => rng.random_range(1..=5_000),
                    1 => rng.random_range(60_000..=600_000),
                    _ => rng.random_range(3_600_000..=86_400_000),
                };
                Fault::ClockStep {
                    node,
                    by_ms: if rng.random_bool(0.5) { by_ms } else { -by_ms },
                }
            }
        };
        let candidate = Scheduled { at, fault };
        // A whole-cluster fault overlaps nothing else (clock steps aside);
        // a seed has one split brain at most.
        let clash = |other: &Scheduled| {
            other.overlaps(&candidate)
                && (other.fault.is_cluster_wide() || candidate.fault.is_cluster_wide())
        };
        if matches!(candidate.fault, Fault::SplitBrain { .. }) && !settings.split_brain {
            continue;
        }
        let second_split = matches!(candidate.fault, Fault::SplitBrain { .. })
            && faults
                .iter()
                .any(|s| matches!(s.fault, Fault::SplitBrain { .. }));
        if faults.iter().any(clash) || second_split {
            continue;
        }
        if let Some(node) = candidate.fault.node() {
            if at < node_free_at[node] {
                continue;
            }
            // Room after each fault, so the next one on this node starts
            // from a settled membership.
            node_free_at[node] = candidate.span().end;
        }
        faults.push(candidate);
    }
    faults.sort_by_key(|s| s.at);
    faults
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Digest of the trace: equal for two runs of one seed.
    pub digest: u64,
    /// Every observable line.
    pub trace: Vec<String>,
    /// The faults injected.
    pub faults: Vec<Scheduled>,
    /// The data nodes' clocks and retention.
    pub conditions: Conditions,
    /// Acknowledgements received.
    pub acks: usize,
    /// Error replies (retried).
    pub errors: u64,
    /// Client connections lost.
    pub drops: u64,
    /// Messages resent after a lost connection.
    pub resent: u64,
    /// Data-node evictions.
    pub evictions: usize,
    /// Reads the data nodes answered: `get` (and `getkey`), and `scan`
    /// (repair's inventory and its checks).
    pub reads: [u64; 2],
    /// Records the data nodes' retention removed.
    pub removed: usize,
    /// Ids the readers printed, over all of them.
    pub printed: usize,
    /// Simulated time until every client was done.
    pub sim_time: Duration,
}

/// Why a seed failed.
#[derive(Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// What went wrong.
    pub problems: Vec<String>,
    /// The faults of the seed.
    pub faults: Vec<Scheduled>,
    /// The end of the trace.
    pub trace_tail: Vec<String>,
    /// The whole trace.
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed:", self.seed)?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        writeln!(f, "faults:")?;
        for s in &self.faults {
            writeln!(f, "  {:>9.3} {:?}", s.at.as_secs_f64(), s.fault)?;
        }
        writeln!(f, "trace (last {} lines):", self.trace_tail.len())?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay: SIM_SEED={} cargo test -p sim --test it replay -- --nocapture",
            self.seed
        )
    }
}

/// A membership event and when the head node emitted it.
type Timed = (Duration, Event);

/// The name of data node `node`'s store in seed `seed`: its disk keeps it
/// through crashes, as a data directory keeps its store-id file.
fn store_id(seed: u64, node: usize) -> u64 {
    seed.rotate_left(17) ^ (node as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// How a seed sets its data nodes' wall clocks and retention, drawn from
/// the seed apart from its faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conditions {
    /// Each data node's clock offset from the simulated time, in ms: a
    /// node's clock may start seconds, minutes or hours ahead or behind.
    pub clock_offsets_ms: [i64; NODES.len()],
    /// A data node with retention, and the records it keeps at most.
    pub retention: Option<(usize, usize)>,
}

/// Draws the clocks and the retention of `seed`.
pub fn conditions(seed: u64) -> Conditions {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_c10c_5eed_c10c);
    let clock_offsets_ms = [(); NODES.len()].map(|()| {
        let ms = match rng.random_range(0..6) {
            0..3 => 0,
            3 => rng.random_range(1..=5_000),
            4 => rng.random_range(60_000..=600_000),
            _ => rng.random_range(3_600_000..=86_400_000),
        };
        if rng.random_bool(0.5) { ms } else { -ms }
    });
    let retention = rng
        .random_bool(0.3)
        .then(|| (rng.random_range(0..NODES.len()), rng.random_range(60..=160)));
    Conditions {
        clock_offsets_ms,
        retention,
    }
}

/// Runs seed `seed` and checks every invariant.
pub fn run(seed: u64, settings: &Settings) -> Result<Outcome, Failure> {
    let faults = schedule(seed, settings);
    let mut conditions = conditions(seed);
    if !settings.retention {
        conditions.retention = None;
    }
    let trace = Trace::default();
    let token = ClusterToken::new(TOKEN).expect("a valid token");
    let unreachable = Unreachable::default();
    let events: Arc<Mutex<Vec<Timed>>> = Arc::default();
    let disks: Vec<Disk> = (0..NODES.len())
        .map(|i| Disk::new(Duration::from_millis(2), store_id(seed, i)))
        .collect();
    if let Some((node, records)) = conditions.retention {
        disks[node].set_retention(records);
    }
    let clocks: Vec<WallClock> = conditions
        .clock_offsets_ms
        .iter()
        .map(|&ms| WallClock::skewed(ms))
        .collect();
    let heads = Heads::default();
    let node_targets: Vec<Target> = NODES.iter().map(|_| Target::default()).collect();
    let client_targets: Vec<Target> = (0..settings.clients).map(|_| Target::default()).collect();
    let split = faults
        .iter()
        .any(|s| matches!(s.fault, Fault::SplitBrain { .. }));
    trace.record(format!("conditions: {conditions:?}"));

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(START_UNIX_SECS))
        .simulation_duration(settings.limit)
        .tcp_capacity(4096)
        .build();

    // The second head node exists only in seeds with a split brain, down
    // until the split starts it.
    let head_hosts = if split { HEADS.len() } else { 1 };
    for (host, &name) in HEADS.iter().enumerate().take(head_hosts) {
        let (token, unreachable, events, trace, heads) = (
            token.clone(),
            unreachable.clone(),
            events.clone(),
            trace.clone(),
            heads.clone(),
        );
        sim.host(name, move || {
            let run = heads.start(host);
            let (observer, mut observed) = mpsc::unbounded_channel();
            let config = Config {
                cluster_token: Some(token.clone()),
                detector: detector(),
                prober: Some(Arc::new(SimProber {
                    unreachable: unreachable.clone(),
                })),
                rng_seed: Some(
                    seed.wrapping_mul(31)
                        .wrapping_add(run.start)
                        .wrapping_add((host as u64) << 32),
                ),
                // Two copies, both written before the answer: every
                // acknowledged message must survive on both holders.
                replicas: 2,
                min_replicas: 2,
                recovery_wait: Duration::from_secs(2),
                // Well within a seed's run, so repair's passes (their scans
                // of every data node, the gets that confirm a copy is
                // missing, and the copies) run against the data nodes.
                repair_after: REPAIR_AFTER,
                observer: Some(observer),
                ..Config::default()
            };
            let (events, trace, heads) = (events.clone(), trace.clone(), heads.clone());
            async move {
                heads.started(run, turmoil::sim_elapsed().unwrap_or_default());
                trace.record(format!("{run} starts"));
                tokio::spawn(async move {
                    while let Some(event) = observed.recv().await {
                        let at = turmoil::sim_elapsed().unwrap_or_default();
                        trace.record_at(at, format!("{run}: {event:?}"));
                        // The checks of holds are about the first head node.
                        if host == 0 {
                            events
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((at, event));
                        }
                    }
                });
                let listener =
                    SimListener(turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?);
                headnode::run_on(listener, config, std::future::pending()).await?;
                Ok(())
            }
        });
    }

    let reads: Arc<[AtomicU64; 2]> = Arc::default();
    let leaving: Vec<Arc<AtomicBool>> = NODES.iter().map(|_| Arc::default()).collect();
    for (i, name) in NODES.iter().enumerate() {
        let node = Arc::new(SimDataNode {
            id: name.parse().expect("a valid node id"),
            target: node_targets[i].clone(),
            heads: heads.clone(),
            clock: clocks[i].clone(),
            token: token.clone(),
            disk: disks[i].clone(),
            starts: Arc::default(),
            seed: seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            reads: reads.clone(),
            leave: leaving[i].clone(),
            trace: trace.clone(),
        });
        sim.host(*name, move || node.clone().run());
    }

    let mut reports = Vec::new();
    for id in 1..=settings.clients {
        let keyed = id > settings.clients.saturating_sub(settings.keyed_clients);
        let report = Arc::new(Mutex::new(ClientReport {
            client_id: keyed.then(|| format!("c{id}")),
            ..ClientReport::default()
        }));
        reports.push(report.clone());
        let client = Arc::new(ClientModel {
            id,
            target: client_targets[id as usize - 1].clone(),
            heads: heads.clone(),
            messages: settings.messages,
            window: settings.window,
            pace: settings.pace,
            keyed,
            report,
            trace: trace.clone(),
        });
        sim.client(client_host(id), client.run());
    }
    let mut printed = Vec::new();
    for id in 1..=settings.readers {
        let ids: Arc<Mutex<Vec<MessageId>>> = Arc::default();
        printed.push(ids.clone());
        let reader = Arc::new(ReaderModel {
            id,
            target: Target::default(),
            clients: reports.clone(),
            printed: ids,
            trace: trace.clone(),
        });
        sim.client(format!("r{id}"), reader.run());
    }

    let world = World {
        disks: &disks,
        leaving: &leaving,
        unreachable: &unreachable,
        clocks: &clocks,
        node_targets: &node_targets,
        client_targets: &client_targets,
    };
    let mut problems = Vec::new();
    let mut actions = actions(&faults);
    if split {
        actions.insert(0, (Duration::ZERO, Action::Crash(HEAD2)));
    }
    actions.reverse();
    loop {
        while actions.last().is_some_and(|(at, _)| *at <= sim.elapsed()) {
            let (_, action) = actions.pop().expect("checked above");
            trace.record_at(sim.elapsed(), format!("fault: {action:?}"));
            apply(&mut sim, &action, &world);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                problems.push(format!("the simulation stopped: {e}"));
                break;
            }
        }
    }
    let sim_time = sim.elapsed();
    drop(sim);

    let events = std::mem::take(&mut *events.lock().unwrap_or_else(|p| p.into_inner()));
    let reports: Vec<ClientReport> = reports
        .iter()
        .map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();
    let nodes: Vec<NodeHistory> = disks
        .iter()
        .enumerate()
        .map(|(i, disk)| NodeHistory {
            name: NODES[i].to_owned(),
            records: disk.durable(),
            removed: disk.removed(),
            fences: disk.fences(),
        })
        .collect();
    let answers: Vec<Answer> = reports
        .iter()
        .flat_map(|report| {
            report.acks.iter().map(|ack| Answer {
                text: report.texts[ack.n].clone(),
                holders: ack.holders.clone(),
                id: ack.id,
                at: ack.at,
                head: ack.head,
            })
        })
        .collect();
    check::acks_are_durable(&answers, &nodes, &mut problems);
    // By key as well: the answered client's key on every named holder, and
    // one id per key in every answer and on every node.
    check_acks_are_durable(&reports, &disks, &mut problems);
    check_one_id_per_key(&reports, &disks, &mut problems);
    check::no_writes_for_older_heads(&nodes, &answers, &mut problems);
    check::old_heads_stop_answering(
        &answers,
        &nodes,
        &heads.started_at(),
        fencing_time(),
        &mut problems,
    );
    check::retention_is_not_undone(&nodes, &mut problems);
    if !printed.is_empty() {
        // A message retention removed may be gone before a tail reaches it.
        let removed: std::collections::BTreeSet<MessageId> = nodes
            .iter()
            .flat_map(|n| n.removed.iter().filter_map(|r| r.record.id))
            .collect();
        let kept: Vec<Answer> = answers
            .iter()
            .filter(|a| !removed.contains(&a.id))
            .cloned()
            .collect();
        for (i, ids) in printed.iter().enumerate() {
            let ids = ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
            check::tails_print_every_ack_once(&format!("r{}", i + 1), &ids, &kept, &mut problems);
        }
    }
    check_short_holds(&faults, &events, &mut problems);
    check_clients(&reports, &mut problems);

    if !problems.is_empty() {
        let lines = trace.lines();
        let tail = lines[lines.len().saturating_sub(60)..].to_vec();
        return Err(Failure {
            seed,
            problems,
            faults,
            trace_tail: tail,
            trace: lines,
        });
    }
    Ok(Outcome {
        seed,
        digest: trace.digest(),
        trace: trace.lines(),
        faults,
        conditions,
        acks: answers.len(),
        errors: reports.iter().map(|r| r.errors).sum(),
        drops: reports.iter().map(|r| r.drops).sum(),
        resent: reports.iter().map(|r| r.resent).sum(),
        evictions: events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Evicted { .. }))
            .count(),
        reads: [0, 1].map(|kind| reads[kind].load(Ordering::Relaxed)),
        removed: nodes.iter().map(|n| n.removed.len()).sum(),
        printed: printed
            .iter()
            .map(|ids| ids.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum(),
        sim_time,
    })
}

/// A step of a fault.
#[derive(Debug, Clone)]
enum Action {
    Crash(&'static str),
    Leave(usize),
    Restart(&'static str),
    Partition(&'static str),
    Repair(&'static str),
    Hold(&'static str),
    Release(&'static str),
    HoldClient(String),
    ReleaseClient(String),
    Fsync(usize, Duration),
    StepClock(usize, i64),
    /// The second head node starts; these data nodes and clients move to it.
    Split {
        nodes: Vec<usize>,
        clients: Vec<u32>,
        cut: bool,
    },
    /// The second head node dies; everyone goes back to the first.
    Heal {
        nodes: Vec<usize>,
        cut: bool,
    },
}

fn client_host(client: u32) -> String {
    format!("c{client}")
}

fn actions(faults: &[Scheduled]) -> Vec<(Duration, Action)> {
    let mut actions = Vec::new();
    for s in faults {
        let end = s.at + s.fault.lasting();
        let (start, stop) = match s.fault {
            Fault::CrashDataNode { node, .. } => {
                (Action::Crash(NODES[node]), Action::Restart(NODES[node]))
            }
            Fault::LeaveDataNode { node, .. } => {
                (Action::Leave(node), Action::Restart(NODES[node]))
            }
            Fault::CrashHead { .. } => (Action::Crash(HEAD), Action::Restart(HEAD)),
            Fault::Partition { node, .. } => {
                (Action::Partition(NODES[node]), Action::Repair(NODES[node]))
            }
            Fault::ShortHold { node, .. } | Fault::LongHold { node, .. } => {
                (Action::Hold(NODES[node]), Action::Release(NODES[node]))
            }
            Fault::ClientHold { client, .. } => (
                Action::HoldClient(client_host(client)),
                Action::ReleaseClient(client_host(client)),
            ),
            Fault::SlowDisk { node, fsync, .. } => (
                Action::Fsync(node, fsync),
                Action::Fsync(node, Duration::from_millis(2)),
            ),
            Fault::CrashCluster { .. } => {
                // Everything at once: the head node, then each data node.
                for host in NODES {
                    actions.push((s.at, Action::Crash(host)));
                }
                for host in NODES {
                    actions.push((end, Action::Restart(host)));
                }
                (Action::Crash(HEAD), Action::Restart(HEAD))
            }
            Fault::SplitBrain {
                ref nodes,
                ref clients,
                cut,
                ..
            } => (
                Action::Split {
                    nodes: nodes.clone(),
                    clients: clients.clone(),
                    cut,
                },
                Action::Heal {
                    nodes: nodes.clone(),
                    cut,
                },
            ),
            Fault::ClockStep { node, by_ms } => {
                actions.push((s.at, Action::StepClock(node, by_ms)));
                continue;
            }
        };
        actions.push((s.at, start));
        actions.push((end, stop));
    }
    // Stable: simultaneous steps keep their schedule order.
    actions.sort_by_key(|(at, _)| *at);
    actions
}

fn node_index(host: &str) -> Option<usize> {
    NODES.iter().position(|n| *n == host)
}

/// What the fault steps act on besides the simulation itself.
struct World<'a> {
    disks: &'a [Disk],
    /// Each data node's shutdown request.
    leaving: &'a [Arc<AtomicBool>],
    unreachable: &'a Unreachable,
    clocks: &'a [WallClock],
    node_targets: &'a [Target],
    client_targets: &'a [Target],
}

fn apply(sim: &mut turmoil::Sim<'_>, action: &Action, world: &World<'_>) {
    let World {
        disks,
        leaving,
        unreachable,
        clocks,
        node_targets,
        client_targets,
    } = *world;
    match action {
        &Action::Crash(host) => {
            sim.crash(host);
            if let Some(i) = node_index(host) {
                disks[i].crash();
                unreachable.set(sim.lookup(host), true);
            }
        }
        &Action::Leave(node) => leaving[node].store(true, Ordering::Relaxed),
        &Action::Restart(host) => {
            if let Some(i) = node_index(host) {
                // A process still running (leaving, say) is killed first:
                // what it had not synced is gone.
                disks[i].crash();
                leaving[i].store(false, Ordering::Relaxed);
            }
            sim.bounce(host);
            unreachable.set(sim.lookup(host), false);
        }
        &Action::Partition(host) => {
            sim.partition(host, HEAD);
            unreachable.set(sim.lookup(host), true);
        }
        &Action::Repair(host) => {
            sim.repair(host, HEAD);
            unreachable.set(sim.lookup(host), false);
        }
        &Action::Hold(host) => sim.hold(host, HEAD),
        &Action::Release(host) => sim.release(host, HEAD),
        Action::HoldClient(client) => sim.hold(client.as_str(), HEAD),
        Action::ReleaseClient(client) => sim.release(client.as_str(), HEAD),
        &Action::Fsync(node, delay) => disks[node].set_fsync_delay(delay),
        &Action::StepClock(node, by_ms) => clocks[node].step(by_ms),
        Action::Split {
            nodes,
            clients,
            cut,
        } => {
            sim.bounce(HEAD2);
            for &node in nodes {
                node_targets[node].move_to(1, *cut);
                if !*cut {
                    // Silent: the node answers ICMP still, as a paused
                    // link's host does; its heartbeats stop.
                    sim.partition(NODES[node], HEAD);
                }
            }
            for &client in clients {
                client_targets[client as usize - 1].move_to(1, true);
            }
        }
        Action::Heal { nodes, cut } => {
            sim.crash(HEAD2);
            for &node in nodes {
                node_targets[node].move_to(0, false);
                if !*cut {
                    sim.repair(NODES[node], HEAD);
                }
            }
            for target in client_targets {
                target.move_to(0, false);
            }
        }
    }
}

/// Every acknowledged message is durable, by id, on every node the ack
/// names, with the text and the key of the client that got the ack.
fn check_acks_are_durable(reports: &[ClientReport], disks: &[Disk], problems: &mut Vec<String>) {
    let durable: Vec<_> = disks.iter().map(Disk::durable).collect();
    for report in reports {
        for ack in &report.acks {
            let (n, id) = (&ack.n, &ack.id);
            let text = &report.texts[*n];
            let key = key_of(report, *n);
            for node in ack.holders.iter().map(String::as_str) {
                let Some(i) = node_index(node) else {
                    problems.push(format!("{text}: acknowledged by unknown node {node:?}"));
                    continue;
                };
                let stored: Vec<(&str, Option<&MessageKey>)> = durable[i]
                    .iter()
                    .filter(|r| r.id == Some(*id))
                    .map(|r| (r.text.as_str(), r.key.as_ref()))
                    .collect();
                if stored.is_empty() {
                    let elsewhere = durable.iter().any(|d| d.iter().any(|r| r.id == Some(*id)));
                    problems.push(format!(
                    "{text}: acknowledged as {id} by {node}, but not durable there (elsewhere: {elsewhere})"
                ));
                } else if stored.iter().any(|(s, k)| s != text || *k != key.as_ref()) {
                    problems.push(format!(
                    "{text} (key {key:?}): acknowledged as {id} by {node}, which stored {stored:?} under that id"
                ));
                }
            }
        }
    }
}

/// The key client `report`'s message `n` was sent under, if it is keyed.
fn key_of(report: &ClientReport, n: usize) -> Option<MessageKey> {
    let client = report.client_id.as_deref()?;
    format!("{client}/{}", n + 1).parse().ok()
}

/// Every client key has one id: in every answer its client got and on
/// every node that holds it (the whole run is within the deduplication
/// window). One exception, which no answer names: a later head node that
/// ended its recovery by `--recovery-wait` without the report of the only
/// live holders of a key gives a resend of it a new id. Either a node that
/// does not hold the key writes it under that new id before the holder's
/// `recibido <id> <held>` makes the message take the held id, or the
/// holders stay away and the answer names the new id while their copy (a
/// write an earlier head node never answered) keeps the old one. Such a
/// stray copy is allowed only under another epoch than the answered id
/// (two ids from one head node are never allowed), and never answered.
fn check_one_id_per_key(reports: &[ClientReport], disks: &[Disk], problems: &mut Vec<String>) {
    let mut ids: BTreeMap<MessageKey, BTreeMap<MessageId, Vec<&'static str>>> = BTreeMap::new();
    for (i, disk) in disks.iter().enumerate() {
        for record in disk.durable() {
            if let (Some(key), Some(id)) = (record.key, record.id) {
                ids.entry(key)
                    .or_default()
                    .entry(id)
                    .or_default()
                    .push(NODES[i]);
            }
        }
    }
    for report in reports {
        for ack in &report.acks {
            let (n, id) = (&ack.n, &ack.id);
            if let Some(key) = key_of(report, *n) {
                ids.entry(key)
                    .or_default()
                    .entry(*id)
                    .or_default()
                    .push("answer");
            }
        }
    }
    for (key, held) in ids {
        let answered: Vec<MessageId> = held
            .iter()
            .filter(|(_, by)| by.contains(&"answer"))
            .map(|(id, _)| *id)
            .collect();
        let stray = |id: &MessageId| {
            answered.len() == 1 && !answered.contains(id) && id.epoch != answered[0].epoch
        };
        if answered.len() > 1 || held.keys().filter(|id| !stray(id)).count() > 1 {
            problems.push(format!(
                "key {key} is stored or answered under more than one id: {held:?}"
            ));
        }
    }
}

/// No data node is evicted because of a hold shorter than the grace.
fn check_short_holds(faults: &[Scheduled], events: &[Timed], problems: &mut Vec<String>) {
    let settle = Duration::from_secs(2);
    for s in faults {
        let Fault::ShortHold { node, lasting } = s.fault else {
            continue;
        };
        let window = s.at..s.at + lasting + settle;
        for (at, event) in events {
            let Event::Evicted { member, reason } = event else {
                continue;
            };
            if member.node.as_str() == NODES[node]
                && window.contains(at)
                && !matches!(reason, EvictReason::Replaced { .. })
            {
                problems.push(format!(
                    "{} evicted at {at:?} ({reason}) during a hold of {lasting:?} from {:?}",
                    NODES[node], s.at
                ));
            }
        }
    }
}

/// Every client finished, saw no broken promise, and got one answer per
/// message sent or a dropped connection.
fn check_clients(reports: &[ClientReport], problems: &mut Vec<String>) {
    for (i, report) in reports.iter().enumerate() {
        let c = i + 1;
        if !report.done {
            problems.push(format!("client c{c} did not finish"));
        }
        for v in &report.violations {
            problems.push(format!("client c{c}: {v}"));
        }
        let answered = report.acks.len() as u64 + report.errors;
        if answered + report.resent != report.sent {
            problems.push(format!(
                "client c{c}: sent {} but got {} answers and resent {} after drops",
                report.sent, answered, report.resent
            ));
        }
        let mut acked = vec![false; report.texts.len()];
        for ack in &report.acks {
            acked[ack.n] = true;
        }
        if report.done && acked.iter().any(|a| !a) {
            problems.push(format!("client c{c} finished with unacknowledged messages"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::Record;

    fn id(seq: u64) -> MessageId {
        MessageId { epoch: 1, seq }
    }

    /// A disk holding `records` durably.
    fn disk(records: &[(MessageId, &str, &str)]) -> Disk {
        let disk = Disk::new(Duration::ZERO, 1);
        for (id, key, text) in records {
            disk.write(Record {
                id: Some(*id),
                key: Some(key.parse().unwrap()),
                text: (*text).to_owned(),
                stored_ms: 0,
                written_for: Default::default(),
                serial: 0,
            });
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(disk.fsync());
        disk
    }

    fn keyed_report(acks: Vec<(usize, String, MessageId)>) -> ClientReport {
        ClientReport {
            client_id: Some("c3".to_owned()),
            texts: vec!["c3-0".to_owned()],
            acks: acks
                .into_iter()
                .map(|(n, holders, id)| crate::client::Ack {
                    n,
                    holders: holders.split('+').map(str::to_owned).collect(),
                    id,
                    at: Duration::ZERO,
                    head: crate::heads::HeadRun { host: 0, start: 1 },
                })
                .collect(),
            ..ClientReport::default()
        }
    }

    #[test]
    fn an_answer_naming_nodes_that_hold_its_key_under_another_id_is_a_violation() {
        // c3/1 is stored under 1-1 on dn1 and dn2; the answer said 1-5 on
        // both (a head node that counted 'recibido 1-5 1-1' as a copy of
        // 1-5). By key and text it looks stored.
        let disks = [
            disk(&[(id(1), "c3/1", "c3-0")]),
            disk(&[(id(1), "c3/1", "c3-0")]),
            disk(&[]),
        ];
        let reports = [keyed_report(vec![(0, "dn1+dn2".to_owned(), id(5))])];
        let mut problems = Vec::new();
        check_acks_are_durable(&reports, &disks, &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        check_one_id_per_key(&reports, &disks, &mut problems);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[2].contains("key c3/1"), "{problems:?}");

        // The same answer under the held id is sound.
        let reports = [keyed_report(vec![(0, "dn1+dn2".to_owned(), id(1))])];
        let mut problems = Vec::new();
        check_acks_are_durable(&reports, &disks, &mut problems);
        check_one_id_per_key(&reports, &disks, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn an_unanswered_copy_under_another_epoch_is_a_stray_and_any_other_second_id_a_violation() {
        let answer = vec![(0, "dn1".to_owned(), id(1))];
        let later = MessageId { epoch: 2, seq: 1 };
        let stray = [
            disk(&[(id(1), "c3/1", "c3-0")]),
            disk(&[(later, "c3/1", "c3-0")]),
            disk(&[]),
        ];
        let mut problems = Vec::new();
        check_one_id_per_key(&[keyed_report(answer.clone())], &stray, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        // The holders of an earlier head node's unanswered write stayed
        // away, and the resend was answered under the later epoch.
        let answered_later = vec![(0, "dn2".to_owned(), later)];
        check_one_id_per_key(&[keyed_report(answered_later)], &stray, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let same_epoch = [
            disk(&[(id(1), "c3/1", "c3-0")]),
            disk(&[(id(2), "c3/1", "c3-0")]),
            disk(&[]),
        ];
        check_one_id_per_key(&[keyed_report(answer)], &same_epoch, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_copy_of_the_answered_id_under_another_key_is_a_violation() {
        let disks = [disk(&[(id(1), "c9/1", "c3-0")]), disk(&[]), disk(&[])];
        let reports = [keyed_report(vec![(0, "dn1".to_owned(), id(1))])];
        let mut problems = Vec::new();
        check_acks_are_durable(&reports, &disks, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
