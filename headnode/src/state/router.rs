//! Choosing the data nodes that get each message's copies.
//!
//! The membership task publishes the set of routable data nodes as an
//! immutable snapshot ([`Routes`]) through a `watch` channel; client tasks
//! read it without locks held across awaits. A message's `replicas` copies
//! go to distinct nodes chosen at random, in distinct zones when there are
//! enough zones. When fewer nodes can take a message than the copies it
//! needs before its client is answered, it waits in the waiting room
//! (`parking`) for at most `no_node_wait`; then its client is told `ERROR
//! not enough data nodes (1 live, 2 required)`. A copy beyond those needed
//! that no node can take waits there too, and is then given up: the
//! message is counted as under-replicated.
//!
//! Under load the choice is *sticky*, as in Kafka's sticky partitioner: the
//! set of nodes picked at random keeps receiving the next messages while
//! its nodes are still busy with earlier ones, up to `sticky_run` messages,
//! then another set is picked at random. Messages arriving together then
//! share one group commit (one `fdatasync`) per node instead of costing one
//! on every node, which is what limits a cluster whose nodes share a disk.
//! A message that finds its set idle starts a new run, so a light load is
//! spread per message.
//!
//! Original-system data nodes read one `recv(1024)` per message, so they
//! are never sent a message longer than [`ORIGINAL_NODE_MAX_TEXT`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::client::{NO_DATA_NODES, NO_MAJORITY, NOT_ENOUGH_NODES};
use protocol::ids::{NodeId, Zone};
use rand::RngExt;
use rand::rngs::SmallRng;
use smallvec::SmallVec;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::state::forward::{Envelope, Forward, Holders, report_under_replicated};
use crate::state::membership::{ConnId, Quorum};
use crate::state::reads::NodeReader;

/// Indices of nodes in a snapshot; on the stack up to 16 nodes.
type Indices = SmallVec<[usize; 16]>;

/// Indices of the nodes of one message's set; on the stack up to 4.
type Set = SmallVec<[usize; 4]>;

/// The longest message an original-system data node can take: it reads
/// one `recv(1024)` per message, and the message arrives as `mensaje: <text>`.
pub(crate) const ORIGINAL_NODE_MAX_TEXT: usize = 1024 - "mensaje: ".len();

/// One routable data node, as client tasks see it.
#[derive(Debug, Clone)]
pub(crate) struct NodeHandle {
    /// Its connection.
    pub(crate) conn: ConnId,
    /// Its name.
    pub(crate) node: NodeId,
    /// Its failure domain, if it named one.
    pub(crate) zone: Option<Zone>,
    /// Its forwarding queue, read by its connection task.
    pub(crate) queue: mpsc::UnboundedSender<Forward>,
    /// Messages its connection task holds, shared with that task.
    pub(crate) load: Arc<NodeLoad>,
    /// An original data node, which takes one message at a time: sticky
    /// runs never continue there, or it would queue a whole run. It is
    /// also never sent a message longer than [`ORIGINAL_NODE_MAX_TEXT`].
    pub(crate) one_at_a_time: bool,
}

impl NodeHandle {
    fn takes(&self, text_len: usize) -> bool {
        !self.one_at_a_time || text_len <= ORIGINAL_NODE_MAX_TEXT
    }
}

/// How many messages a data node's connection task holds (queued for the
/// node, or sent and not yet answered) and when it last made progress.
///
/// Each field has one writer: the router counts what it hands over
/// ([`NodeLoad::hand_over`]); the node's session counts what it is done
/// with ([`NodeLoad::resolve`]). Held is the difference.
#[derive(Debug)]
pub(crate) struct NodeLoad {
    /// Messages handed to the node's queue (router).
    handed: AtomicUsize,
    /// When a message was handed to the node while it held none, in µs
    /// after `since` (router).
    busy_since: AtomicU64,
    /// Messages the session is done with: acknowledged, moved elsewhere,
    /// or dropped (session).
    resolved: AtomicUsize,
    /// When the node last acknowledged something, in µs after `since`
    /// (session).
    acked_at: AtomicU64,
    since: Instant,
}

#[cfg(test)]
impl Default for NodeLoad {
    fn default() -> Self {
        NodeLoad::new(Instant::now())
    }
}

/// A node that holds messages and has acknowledged none for this long gets
/// no more of a sticky run: a stalled disk or a hung process must not
/// collect every new message until the failure detectors evict it.
pub(crate) const STALL: Duration = Duration::from_millis(100);

impl NodeLoad {
    /// The load of a session starting at `since`: nothing held.
    pub(crate) fn new(since: Instant) -> Self {
        NodeLoad {
            handed: AtomicUsize::new(0),
            busy_since: AtomicU64::new(0),
            resolved: AtomicUsize::new(0),
            acked_at: AtomicU64::new(0),
            since,
        }
    }

    /// `now`, in µs after `since`.
    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.since).as_micros() as u64
    }

    /// The router handed one message to the node's queue at `now`.
    pub(crate) fn hand_over(&self, now: Instant) {
        if self.held() == 0 {
            // An idle node's clock starts now, not at its last ack.
            self.busy_since.store(self.micros(now), Ordering::Relaxed);
        }
        self.handed.fetch_add(1, Ordering::Relaxed);
    }

    /// The session is done with one message it was handed: acknowledged
    /// (then [`NodeLoad::acked`] follows, once for all the
    /// acknowledgements read together), moved elsewhere or dropped.
    pub(crate) fn resolve(&self) {
        self.resolved.fetch_add(1, Ordering::Relaxed);
    }

    /// The node acknowledged something at `now`.
    pub(crate) fn acked(&self, now: Instant) {
        self.acked_at.store(self.micros(now), Ordering::Relaxed);
    }

    /// Messages held now.
    pub(crate) fn held(&self) -> usize {
        // Saturates: the two counters are read apart, and a miscount must
        // never make an idle node look busy for good.
        self.handed
            .load(Ordering::Relaxed)
            .saturating_sub(self.resolved.load(Ordering::Relaxed))
    }

    /// Whether it acknowledged something (or was given its first message)
    /// within [`STALL`] before `now`.
    fn moving(&self, now: Instant) -> bool {
        let last = self
            .acked_at
            .load(Ordering::Relaxed)
            .max(self.busy_since.load(Ordering::Relaxed));
        self.micros(now).saturating_sub(last) < STALL.as_micros() as u64
    }
}

/// An immutable snapshot of the data nodes: those that may be sent new
/// messages, every member that serves reads, whether a majority of the
/// member set is live, and the set itself. All come from the membership,
/// which is the one owner of who is live and who is a member.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// The routable nodes, in no particular order.
    pub(crate) nodes: Vec<NodeHandle>,
    /// Every member that serves reads (suspect and leaving ones too), one
    /// per node id, in node order. Original-system nodes serve none.
    readers: Vec<NodeReader>,
    /// Live members against the member set: without a majority nothing new
    /// is routed and no client is answered `recibido`.
    pub(crate) quorum: Quorum,
    /// The member set to tell the data nodes (`members`); `None` until
    /// recovery is done.
    pub(crate) member_set: Option<Arc<[NodeId]>>,
    /// Nodes back with a new data directory (its store id) that repair has
    /// not yet given their share: readers count them as missing.
    pub(crate) rebuilding: Vec<(NodeId, u64)>,
    /// The nodes of the current sticky run, and messages left in that run.
    run: Mutex<StickyRun>,
}

#[derive(Debug, Default)]
struct StickyRun {
    set: Set,
    left: usize,
}

impl Routes {
    /// A snapshot of these nodes, none serving reads, every member live;
    /// the first message starts a new run.
    #[cfg(test)]
    pub(crate) fn new(nodes: Vec<NodeHandle>) -> Self {
        let quorum = Quorum {
            live: nodes.len(),
            members: nodes.len(),
        };
        Routes::with_readers(nodes, Vec::new(), quorum, None)
    }

    /// A snapshot of these routable nodes and these readers, this quorum
    /// and member set.
    pub(crate) fn with_readers(
        nodes: Vec<NodeHandle>,
        readers: Vec<NodeReader>,
        quorum: Quorum,
        member_set: Option<Arc<[NodeId]>>,
    ) -> Self {
        Routes {
            nodes,
            readers,
            quorum,
            member_set,
            rebuilding: Vec::new(),
            run: Mutex::default(),
        }
    }

    /// The nodes that serve reads now, in node order: a node whose session
    /// has just ended (its eviction not yet published) is left out.
    pub(crate) fn readers(&self) -> Vec<NodeReader> {
        self.readers
            .iter()
            .filter(|r| r.is_open())
            .cloned()
            .collect()
    }

    /// `count` distinct nodes among `eligible` (indices) for a new message:
    /// the current run's set while its nodes are busy, not stalled and the
    /// run not used up; otherwise a random set (another one if the run's
    /// nodes are still busy).
    fn pick_set(
        &self,
        eligible: &[usize],
        count: usize,
        sticky_run: usize,
        now: Instant,
        rng: &mut SmallRng,
    ) -> Set {
        if sticky_run <= 1 {
            return self.random_set(eligible, count, &[], rng);
        }
        let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
        let continues = run.left > 0
            && run.set.len() == count
            && run.set.iter().all(|&i| {
                self.nodes
                    .get(i)
                    .is_some_and(|n| !n.one_at_a_time && n.load.held() > 0 && n.load.moving(now))
                    && eligible.contains(&i)
            });
        if continues {
            run.left -= 1;
            return run.set.clone();
        }
        let still_busy = run
            .set
            .iter()
            .any(|&i| self.nodes.get(i).is_some_and(|n| n.load.held() > 0));
        let avoid = if still_busy {
            run.set.clone()
        } else {
            Set::new()
        };
        let set = self.random_set(eligible, count, &avoid, rng);
        run.set.clone_from(&set);
        run.left = sticky_run - 1;
        set
    }

    /// `count` distinct nodes among `eligible` chosen at random, in
    /// distinct zones first (a node without a zone is its own zone), and
    /// not exactly the set `avoid` when another set exists.
    fn random_set(
        &self,
        eligible: &[usize],
        count: usize,
        avoid: &[usize],
        rng: &mut SmallRng,
    ) -> Set {
        let mut order = Indices::from_slice(eligible);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let zone = |i: usize| self.nodes[i].zone.as_ref();
        let mut chosen = Set::with_capacity(count);
        for &i in &order {
            if chosen.len() == count {
                break;
            }
            let fresh_zone = zone(i).is_none_or(|z| !chosen.iter().any(|&c| zone(c) == Some(z)));
            if fresh_zone {
                chosen.push(i);
            }
        }
        for &i in &order {
            if chosen.len() == count {
                break;
            }
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        let same_as_avoided = !avoid.is_empty()
            && chosen.len() == avoid.len()
            && chosen.iter().all(|i| avoid.contains(i));
        if same_as_avoided && order.len() > chosen.len() {
            // Swap one member for a node outside the set.
            let outside: Indices = order
                .iter()
                .copied()
                .filter(|i| !chosen.contains(i))
                .collect();
            let slot = rng.random_range(0..chosen.len());
            chosen[slot] = outside[rng.random_range(0..outside.len())];
        }
        chosen
    }
}

/// Messages stored with fewer copies than wanted, and copies written
/// beyond the wanted count, since the start: the router counts them, the
/// status page reads them.
#[derive(Debug, Default)]
pub(crate) struct CopyCounts {
    under: AtomicU64,
    over: AtomicU64,
}

impl CopyCounts {
    /// Messages stored with fewer copies than wanted.
    pub(crate) fn under_replicated(&self) -> u64 {
        self.under.load(Ordering::Relaxed)
    }

    /// Copies written beyond the wanted count.
    pub(crate) fn over_replicated(&self) -> u64 {
        self.over.load(Ordering::Relaxed)
    }
}

/// A message or copy waiting in the waiting room for a node.
#[derive(Debug)]
pub(crate) enum Parked {
    /// A message that needs more nodes than can take it now, and when it
    /// started waiting.
    Start(Arc<Envelope>, Instant),
    /// One copy of a message that no node can take now.
    Copy(Forward),
}

/// Sends messages' copies to data nodes. Cheap to clone: one per client task.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    routes: watch::Receiver<Arc<Routes>>,
    parking: mpsc::UnboundedSender<Parked>,
    max_attempts: u32,
    sticky_run: usize,
    /// Copies too few and too many, since the start.
    copies: Arc<CopyCounts>,
    /// Bumped after every new snapshot: what node sessions and the
    /// parking task wait on (in a repeatable order, unlike the watch).
    changes: Arc<crate::state::signal::Signal>,
}

impl Router {
    /// A router reading `routes` and parking what cannot be placed in
    /// `parking`; up to `sticky_run` messages in a row go to one busy set
    /// of nodes (1: every message is routed on its own).
    pub(crate) fn new(
        routes: watch::Receiver<Arc<Routes>>,
        parking: mpsc::UnboundedSender<Parked>,
        max_attempts: u32,
        sticky_run: usize,
    ) -> Self {
        Router {
            routes,
            parking,
            max_attempts,
            sticky_run,
            copies: Arc::default(),
            changes: Arc::default(),
        }
    }

    /// The signal bumped after every new snapshot.
    pub(crate) fn changes(&self) -> Arc<crate::state::signal::Signal> {
        self.changes.clone()
    }

    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Routes> {
        self.routes.borrow().clone()
    }

    /// A receiver of new snapshots.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<Routes>> {
        self.routes.clone()
    }

    /// What the router counts of copies too few and too many.
    pub(crate) fn copy_counts(&self) -> Arc<CopyCounts> {
        self.copies.clone()
    }

    /// Messages stored with fewer copies than wanted, since the start.
    pub(crate) fn under_replicated(&self) -> u64 {
        self.copies.under_replicated()
    }

    /// Copies written beyond the wanted count (a late acknowledgement after
    /// a copy was moved), since the start.
    pub(crate) fn over_replicated(&self) -> u64 {
        self.copies.over_replicated()
    }

    /// Counts one copy more than wanted.
    pub(crate) fn count_over_replicated(&self) {
        self.copies.over.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message whose last missing copy was given up.
    pub(crate) fn count_under_replicated(&self, envelope: &Envelope) {
        let count = self.copies.under.fetch_add(1, Ordering::Relaxed) + 1;
        report_under_replicated(envelope, count);
    }

    /// Places the copies `envelope` still wants on distinct nodes, or parks
    /// it (since `waiting_since`, or `now`) when fewer nodes can take it
    /// than the copies it needs before its client is answered. Returns the
    /// nodes chosen (empty when it waits or failed). `now` may be a little
    /// old (a client's messages read together share one clock read).
    pub(crate) fn start(
        &self,
        envelope: Arc<Envelope>,
        waiting_since: Option<Instant>,
        now: Instant,
        rng: &mut SmallRng,
    ) -> Holders {
        self.start_on(&self.snapshot(), envelope, waiting_since, now, rng)
    }

    /// [`Router::start`] on a snapshot the caller took: a client session
    /// takes one for all the lines it read in one turn, rather than one per
    /// message.
    pub(crate) fn start_on(
        &self,
        routes: &Routes,
        envelope: Arc<Envelope>,
        waiting_since: Option<Instant>,
        now: Instant,
        rng: &mut SmallRng,
    ) -> Holders {
        let (want, have) = envelope.wanted();
        if want == 0 {
            return Holders::new();
        }
        let replication = envelope.replication();
        let text_len = envelope.text.len();
        let eligible: Indices = (0..routes.nodes.len())
            .filter(|&i| {
                let node = &routes.nodes[i];
                node.takes(text_len) && (have == 0 || !envelope.excludes(&node.node))
            })
            .collect();
        let needed_more = replication.needed.saturating_sub(have);
        // Without a majority of the member set this head node may have been
        // replaced: nothing new is placed, and it waits as for nodes.
        if eligible.len() < needed_more || !routes.quorum.holds() {
            let too_small = routes.nodes.iter().filter(|n| !n.takes(text_len)).count();
            if too_small > 0 && routes.nodes.len() >= needed_more {
                // Only original-system nodes could make up the count;
                // waiting would not help.
                let reason = format!(
                    "message too long for the live data nodes ({text_len} bytes; original-system data nodes take at most {ORIGINAL_NODE_MAX_TEXT})"
                );
                envelope.give_up(reason.into());
                return Holders::new();
            }
            let since = waiting_since.unwrap_or(now);
            // Fails only during shutdown, when the client is being closed anyway.
            let _ = self.parking.send(Parked::Start(envelope, since));
            return Holders::new();
        }
        let count = want.min(eligible.len());
        let sticky = if have == 0 && count == replication.replicas {
            self.sticky_run
        } else {
            1
        };
        let set = routes.pick_set(&eligible, count, sticky, now, rng);
        // Every node of the set is marked before any copy is offered: a copy
        // refused below is moved by `reroute`, which must not pick a node
        // of this set that is still to get its own copy.
        for &i in &set {
            let node = &routes.nodes[i];
            envelope.place(node.conn, &node.node);
        }
        let mut chosen = Holders::new();
        let mut refused = Vec::new();
        for &i in &set {
            let node = &routes.nodes[i];
            match offer(node, Forward::first(envelope.clone()), now) {
                Ok(()) => chosen.push(node.node.clone()),
                Err(back) => refused.push((node.conn, back)),
            }
        }
        for (conn, back) in refused {
            // That node's task just ended: this copy goes elsewhere.
            envelope.unplace(conn);
            envelope.reserve();
            self.reroute(back, now, rng);
        }
        for _ in count..want {
            // Not enough nodes for every copy: the rest wait for one.
            envelope.reserve();
            self.reroute(Forward::first(envelope.clone()), now, rng);
        }
        chosen
    }

    /// Sends one copy (already counted as on its way by its envelope) to a
    /// node that does not hold, may not hold and is not getting one, in a
    /// zone its other copies are not in when possible; parks it when there
    /// is none (its wait counted from `now` if it was not waiting yet).
    /// Returns the node chosen, if any.
    pub(crate) fn reroute(
        &self,
        mut message: Forward,
        now: Instant,
        rng: &mut SmallRng,
    ) -> Option<NodeId> {
        let envelope = message.envelope.clone();
        if message.attempts >= self.max_attempts {
            warn!(
                id = %message.id(),
                attempts = message.attempts,
                "giving up on a copy: no data node acknowledged it"
            );
            let reason = format!("{} data nodes failed to acknowledge it", message.attempts);
            if envelope.give_up_copy(reason.into()) {
                self.count_under_replicated(&envelope);
            }
            return None;
        }
        let text_len = envelope.text.len();
        let routes = self.snapshot();
        let mut candidates: Vec<&NodeHandle> = routes
            .nodes
            .iter()
            .filter(|n| !envelope.excludes(&n.node))
            .collect();
        let any_candidate = !candidates.is_empty();
        candidates.retain(|n| n.takes(text_len));
        if candidates.is_empty() && any_candidate {
            let reason = format!(
                "message too long for the live data nodes ({text_len} bytes; original-system data nodes take at most {ORIGINAL_NODE_MAX_TEXT})"
            );
            if envelope.give_up_copy(reason.into()) {
                self.count_under_replicated(&envelope);
            }
            return None;
        }
        // Zones that already have a copy go last.
        let used_zones: Vec<&Zone> = routes
            .nodes
            .iter()
            .filter(|n| envelope.excludes(&n.node))
            .filter_map(|n| n.zone.as_ref())
            .collect();
        while !candidates.is_empty() {
            let fresh: Vec<usize> = (0..candidates.len())
                .filter(|&i| {
                    candidates[i]
                        .zone
                        .as_ref()
                        .is_none_or(|z| !used_zones.contains(&z))
                })
                .collect();
            let at = if fresh.is_empty() {
                rng.random_range(0..candidates.len())
            } else {
                fresh[rng.random_range(0..fresh.len())]
            };
            let node = candidates.swap_remove(at);
            envelope.replace(node.conn, &node.node);
            match offer(node, message, now) {
                Ok(()) => return Some(node.node.clone()),
                Err(back) => {
                    envelope.move_copy(node.conn, false);
                    message = back;
                }
            }
        }
        message.waiting_since.get_or_insert(now);
        // Fails only during shutdown, when the client is being closed anyway.
        let _ = self.parking.send(Parked::Copy(message));
        None
    }

    /// The reason given to a client whose message could not get the copies
    /// it needs in time: too few live nodes, or no majority of the member
    /// set.
    pub(crate) fn not_enough_nodes(&self, needed: usize) -> String {
        let routes = self.routes.borrow();
        let live = routes.nodes.len();
        if live == 0 {
            NO_DATA_NODES.to_owned()
        } else if live < needed || routes.quorum.holds() {
            format!("{NOT_ENOUGH_NODES} ({live} live, {needed} required)")
        } else {
            format!(
                "{NO_MAJORITY} ({}): this head node may have been replaced; nothing was stored",
                routes.quorum
            )
        }
    }
}

impl Forward {
    /// A copy's first attempt.
    fn first(envelope: Arc<Envelope>) -> Self {
        Forward::new(envelope)
    }
}

/// Hands a copy to `node`'s queue, counting the attempt; gives it back
/// (attempt uncounted) if that node's task has just ended.
fn offer(node: &NodeHandle, mut message: Forward, now: Instant) -> Result<(), Forward> {
    message.attempts += 1;
    match node.queue.send(message) {
        Ok(()) => {
            node.load.hand_over(now);
            Ok(())
        }
        Err(mpsc::error::SendError(mut back)) => {
            back.attempts -= 1;
            Err(back)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::forward::tests::replicated;
    use crate::state::forward::{Completion, NewEnvelope, Outcome, Replication, Waiter};
    use bytes::Bytes;
    use protocol::ids::MessageId;
    use rand::SeedableRng;

    type Replies = mpsc::UnboundedReceiver<Completion>;

    /// A routable node named `name` on connection `conn`, and its queue.
    pub(crate) fn node(conn: ConnId, name: &str) -> (NodeHandle, mpsc::UnboundedReceiver<Forward>) {
        let (queue, rx) = mpsc::unbounded_channel();
        (
            NodeHandle {
                conn,
                node: name.parse().unwrap(),
                zone: None,
                queue,
                load: Arc::default(),
                one_at_a_time: false,
            },
            rx,
        )
    }

    fn router(
        nodes: Vec<NodeHandle>,
        sticky: usize,
    ) -> (
        Router,
        mpsc::UnboundedReceiver<Parked>,
        watch::Sender<Arc<Routes>>,
    ) {
        let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::new(nodes)));
        let (park_tx, park_rx) = mpsc::unbounded_channel();
        (
            Router::new(routes_rx, park_tx, 5, sticky),
            park_rx,
            routes_tx,
        )
    }

    /// Starts message `seq` wanting `replicas` copies, `needed` before the
    /// answer; the names of the nodes chosen.
    fn start(
        router: &Router,
        seq: u64,
        replicas: usize,
        needed: usize,
        rng: &mut SmallRng,
    ) -> (Vec<String>, Replies) {
        let (envelope, replies) = replicated(seq, replicas, needed);
        let chosen = router.start(envelope, None, Instant::now(), rng);
        (chosen.iter().map(|n| n.to_string()).collect(), replies)
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Forward>) -> usize {
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn random_choice_is_roughly_uniform_and_never_out_of_range() {
        let (a, mut a_rx) = node(1, "a");
        let (b, mut b_rx) = node(2, "b");
        let (c, mut c_rx) = node(3, "c");
        let (router, _park, _routes) = router(vec![a, b, c], 1);
        let mut rng = SmallRng::seed_from_u64(7);
        for i in 0..3000 {
            assert_eq!(start(&router, i, 1, 1, &mut rng).0.len(), 1);
        }
        let counts = [&mut a_rx, &mut b_rx, &mut c_rx].map(drain);
        assert_eq!(counts.iter().sum::<usize>(), 3000);
        for n in counts {
            assert!((800..1200).contains(&n), "{counts:?}");
        }
    }

    #[test]
    fn each_copy_goes_to_a_distinct_node() {
        let (a, mut a_rx) = node(1, "a");
        let (b, mut b_rx) = node(2, "b");
        let (c, mut c_rx) = node(3, "c");
        let (router, _park, _routes) = router(vec![a, b, c], 1);
        let mut rng = SmallRng::seed_from_u64(8);
        for i in 0..3000 {
            let (chosen, _) = start(&router, i, 2, 2, &mut rng);
            assert_eq!(chosen.len(), 2);
            assert_ne!(chosen[0], chosen[1]);
        }
        // Each node gets two thirds of the messages.
        for n in [&mut a_rx, &mut b_rx, &mut c_rx].map(drain) {
            assert!((1800..2200).contains(&n), "{n}");
        }
    }

    #[test]
    fn copies_go_to_distinct_zones_when_there_are_enough() {
        let mut nodes = Vec::new();
        let mut receivers = Vec::new();
        for (conn, name, zone) in [(1, "a1", "za"), (2, "a2", "za"), (3, "b1", "zb")] {
            let (mut handle, rx) = node(conn, name);
            handle.zone = Some(zone.parse().unwrap());
            nodes.push(handle);
            receivers.push(rx);
        }
        let (router, _park, _routes) = router(nodes, 1);
        let mut rng = SmallRng::seed_from_u64(9);
        for i in 0..500 {
            let (chosen, _) = start(&router, i, 2, 2, &mut rng);
            assert!(chosen.contains(&"b1".to_string()), "{chosen:?}");
        }
    }

    #[test]
    fn a_busy_set_keeps_its_run_then_another_set_is_chosen() {
        let (a, _a_rx) = node(1, "a");
        let (b, _b_rx) = node(2, "b");
        let (c, _c_rx) = node(3, "c");
        let (router, _park, _routes) = router(vec![a, b, c], 4);
        let mut rng = SmallRng::seed_from_u64(3);
        // Nothing is acknowledged, so every chosen node stays busy: runs of
        // exactly 4, each on a different set than the run before.
        let sets: Vec<Vec<String>> = (0..400)
            .map(|i| {
                let mut set = start(&router, i, 2, 2, &mut rng).0;
                set.sort();
                set
            })
            .collect();
        for run in sets.chunks(4) {
            assert!(run.iter().all(|s| *s == run[0]), "{run:?}");
        }
        for pair in sets.chunks(4).collect::<Vec<_>>().windows(2) {
            assert_ne!(pair[0][0], pair[1][0]);
        }
    }

    #[test]
    fn a_set_that_went_idle_ends_the_run() {
        let (a, mut a_rx) = node(1, "a");
        let (b, mut b_rx) = node(2, "b");
        let (c, mut c_rx) = node(3, "c");
        let loads = [a.load.clone(), b.load.clone(), c.load.clone()];
        let (router, _park, _routes) = router(vec![a, b, c], 1024);
        let mut rng = SmallRng::seed_from_u64(5);
        // Each message is answered before the next: a light load is spread
        // per message, uniformly.
        for i in 0..3000 {
            start(&router, i, 1, 1, &mut rng);
            for (load, rx) in loads.iter().zip([&mut a_rx, &mut b_rx, &mut c_rx]) {
                for _ in 0..drain(rx) {
                    load.resolve();
                    load.acked(Instant::now());
                }
            }
        }
        for load in &loads {
            let n = load.handed.load(Ordering::Relaxed);
            assert!((800..1200).contains(&n), "{n}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_node_gets_no_more_of_its_run() {
        let (a, _a_rx) = node(1, "a");
        let (b, _b_rx) = node(2, "b");
        let (router, _park, _routes) = router(vec![a, b], 1024);
        let mut rng = SmallRng::seed_from_u64(11);
        let first: Vec<String> = (0..10)
            .map(|i| start(&router, i, 1, 1, &mut rng).0.remove(0))
            .collect();
        assert!(first.iter().all(|n| *n == first[0]));
        // Its node acknowledges nothing for longer than STALL.
        tokio::time::advance(STALL + Duration::from_millis(1)).await;
        let next: Vec<String> = (10..20)
            .map(|i| start(&router, i, 1, 1, &mut rng).0.remove(0))
            .collect();
        assert!(next.iter().all(|n| *n != first[0]), "{next:?}");
    }

    #[test]
    fn runs_never_continue_on_an_original_data_node() {
        let (mut a, _a_rx) = node(1, "a");
        a.one_at_a_time = true;
        let (b, _b_rx) = node(2, "b");
        let (router, _park, _routes) = router(vec![a, b], 4);
        let mut rng = SmallRng::seed_from_u64(13);
        let chosen: String = (0..1000)
            .map(|i| start(&router, i, 1, 1, &mut rng).0.remove(0))
            .collect();
        assert!(chosen.matches('a').count() >= 190, "{chosen}");
        assert!(!chosen.contains("aa"), "{chosen}");
        assert!(!chosen.contains("bbbbb"), "{chosen}");
    }

    #[test]
    fn too_few_nodes_for_the_needed_copies_parks_the_message() {
        let (a, mut a_rx) = node(1, "a");
        let (router, mut park, _routes) = router(vec![a], 1);
        let mut rng = SmallRng::seed_from_u64(1);
        let (chosen, _replies) = start(&router, 1, 2, 2, &mut rng);
        assert!(chosen.is_empty());
        assert_eq!(drain(&mut a_rx), 0, "no lone copy is written");
        assert!(matches!(park.try_recv().unwrap(), Parked::Start(..)));
        assert_eq!(
            router.not_enough_nodes(2),
            "not enough data nodes (1 live, 2 required)"
        );
    }

    #[test]
    fn without_a_majority_of_the_member_set_a_new_message_waits_and_is_refused_so() {
        let (a, mut a_rx) = node(1, "a");
        let (router, mut park, routes_tx) = router(vec![a.clone()], 1);
        // a is live; two more members are not.
        let quorum = Quorum {
            live: 1,
            members: 3,
        };
        routes_tx.send_replace(Arc::new(Routes::with_readers(
            vec![a],
            Vec::new(),
            quorum,
            None,
        )));
        let mut rng = SmallRng::seed_from_u64(1);
        let (chosen, _replies) = start(&router, 1, 1, 1, &mut rng);
        assert!(chosen.is_empty());
        assert_eq!(drain(&mut a_rx), 0, "nothing is written");
        assert!(matches!(park.try_recv().unwrap(), Parked::Start(..)));
        assert_eq!(
            router.not_enough_nodes(1),
            "no majority of the cluster's data nodes (1 of 3 members live, 2 needed): \
             this head node may have been replaced; nothing was stored"
        );
        // Too few live nodes for the copies is said first.
        assert!(
            router
                .not_enough_nodes(2)
                .starts_with("not enough data nodes")
        );
    }

    #[test]
    fn with_enough_nodes_to_answer_but_fewer_than_wanted_the_missing_copy_waits() {
        let (a, mut a_rx) = node(1, "a");
        let (router, mut park, _routes) = router(vec![a], 1);
        let mut rng = SmallRng::seed_from_u64(1);
        let (chosen, _replies) = start(&router, 1, 2, 1, &mut rng);
        assert_eq!(chosen, ["a"]);
        assert_eq!(drain(&mut a_rx), 1);
        assert!(matches!(park.try_recv().unwrap(), Parked::Copy(_)));
    }

    #[test]
    fn a_moved_copy_skips_every_node_that_holds_may_hold_or_gets_one() {
        let (a, _a_rx) = node(1, "a");
        let (b, mut b_rx) = node(2, "b");
        let (c, c_rx) = node(3, "c");
        let (d, mut d_rx) = node(4, "d");
        drop(c_rx);
        let (router, _park, _routes) = router(vec![a, b, c, d], 1);
        let mut rng = SmallRng::seed_from_u64(1);
        for seq in 0..50 {
            let (envelope, _replies) = replicated(seq, 2, 2);
            envelope.place(1, &"a".parse().unwrap());
            envelope.place(2, &"b".parse().unwrap());
            // a failed after it was sent the copy: it may hold it.
            envelope.move_copy(1, true);
            let copy = Forward::new(envelope);
            assert_eq!(
                router
                    .reroute(copy, Instant::now(), &mut rng)
                    .unwrap()
                    .as_str(),
                "d"
            );
        }
        assert_eq!(drain(&mut b_rx), 0);
        assert_eq!(d_rx.try_recv().unwrap().attempts, 1);
    }

    #[test]
    fn too_many_attempts_give_the_copy_up() {
        let (a, _a_rx) = node(1, "a");
        let (router, _park, _routes) = router(vec![a], 1);
        let (envelope, mut replies) = replicated(9, 1, 1);
        envelope.reserve();
        let mut copy = Forward::new(envelope.clone());
        copy.attempts = 5;
        assert!(
            router
                .reroute(copy, Instant::now(), &mut SmallRng::seed_from_u64(1))
                .is_none()
        );
        assert!(matches!(
            &replies.try_recv().unwrap().outcome,
            Outcome::NotStored(reason) if reason.contains("5 data nodes failed")
        ));

        // The same after a node was sent it: its fate is unknown.
        let (envelope, mut replies) = replicated(10, 1, 1);
        envelope.place(7, &"x".parse().unwrap());
        envelope.move_copy(7, true);
        let mut copy = Forward::new(envelope);
        copy.attempts = 5;
        router.reroute(copy, Instant::now(), &mut SmallRng::seed_from_u64(1));
        assert!(matches!(
            replies.try_recv().unwrap().outcome,
            Outcome::Unknown(_)
        ));
    }

    fn long_message(seq: u64, len: usize) -> (Arc<Envelope>, Replies) {
        let (reply_to, replies) = mpsc::unbounded_channel();
        let envelope = Envelope::new(NewEnvelope::plain(
            MessageId { epoch: 1, seq },
            Bytes::from(vec![b'x'; len]),
            "test".into(),
            Waiter {
                slot: seq,
                reply_to,
            },
            Replication {
                replicas: 1,
                needed: 1,
            },
        ));
        (envelope, replies)
    }

    #[test]
    fn original_data_nodes_are_never_sent_a_message_longer_than_one_recv() {
        let (mut a, mut a_rx) = node(1, "a");
        a.one_at_a_time = true;
        let (b, mut b_rx) = node(2, "b");
        let (router, _park, _routes) = router(vec![a, b], 1);
        let mut rng = SmallRng::seed_from_u64(4);
        for i in 0..100 {
            let (envelope, _r) = long_message(i, ORIGINAL_NODE_MAX_TEXT + 1);
            assert_eq!(
                router.start(envelope, None, Instant::now(), &mut rng)[0].as_str(),
                "b"
            );
        }
        assert_eq!(drain(&mut a_rx), 0);
        assert_eq!(drain(&mut b_rx), 100);
        // Exactly the limit still fits.
        for i in 0..100 {
            let (envelope, _r) = long_message(i, ORIGINAL_NODE_MAX_TEXT);
            router.start(envelope, None, Instant::now(), &mut rng);
        }
        assert!(drain(&mut a_rx) > 0);
    }

    #[test]
    fn a_long_message_with_only_original_nodes_gets_a_clear_error() {
        let (mut a, _a_rx) = node(1, "a");
        a.one_at_a_time = true;
        let (router, mut park, _routes) = router(vec![a], 1);
        let (envelope, mut replies) = long_message(1, 2000);
        assert!(
            router
                .start(
                    envelope,
                    None,
                    Instant::now(),
                    &mut SmallRng::seed_from_u64(4)
                )
                .is_empty()
        );
        assert!(park.try_recv().is_err(), "waiting would not help");
        let done = replies.try_recv().unwrap();
        assert!(
            matches!(&done.outcome, Outcome::NotStored(reason) if reason.starts_with("message too long for the live data nodes (2000 bytes")),
            "{done:?}"
        );
    }

    #[test]
    fn a_copy_offered_to_a_node_whose_session_just_ended_goes_to_another() {
        for sticky in [1, 8] {
            for seed in 0..50 {
                let (a, mut a_rx) = node(1, "a");
                let (gone, mut gone_rx) = node(2, "gone");
                let (c, mut c_rx) = node(3, "c");
                gone_rx.close();
                let (router, mut park, _routes) = router(vec![a, gone, c], sticky);
                let mut rng = SmallRng::seed_from_u64(seed);
                for seq in 0..4 {
                    let (envelope, _replies) = replicated(seq, 2, 2);
                    router.start(envelope.clone(), None, Instant::now(), &mut rng);
                    let queued = (drain(&mut a_rx), drain(&mut c_rx));
                    let parked = std::iter::from_fn(|| park.try_recv().ok()).count();
                    assert_eq!(
                        (queued, parked, envelope.wanted()),
                        ((1, 1), 0, (0, 0)),
                        "sticky {sticky}, seed {seed}, message {seq}: both copies on a and c"
                    );
                }
            }
        }
    }
}
