//! Routing client messages to data nodes.
//!
//! The membership task publishes the set of routable data nodes as an
//! immutable snapshot ([`Routes`]) through a `watch` channel; client tasks
//! read it without locks held across awaits. A message goes to a node chosen
//! uniformly at random. When no node can take it, the message waits in the
//! *parking lot* for at most `no_node_wait`; if a node joins in time it is
//! routed then, otherwise the client is told `ERROR no data nodes
//! available`.
//!
//! Under load the choice is *sticky*, as in Kafka's sticky partitioner: the
//! node picked at random keeps receiving the next messages while it is still
//! busy with earlier ones, up to `sticky_run` messages, then another node is
//! picked at random. Messages arriving together then share one group commit
//! (one `fdatasync`) on one node instead of costing one on every node, which
//! is what limits a cluster whose nodes share a disk. A message that finds
//! its node idle starts a new run, so a light load is spread per message.
//!
//! Original-system data nodes read one `recv(1024)` per message, so they
//! are never sent a message longer than [`ORIGINAL_NODE_MAX_TEXT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use protocol::message::NodeId;
use rand::RngExt;
use rand::rngs::SmallRng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::forward::Forward;
use crate::membership::ConnId;

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
/// node, or sent and not yet acknowledged) and when it last made progress.
/// The router adds each message it hands over; the task releases each one
/// it answers or passes on, and notes each acknowledgement.
#[derive(Debug)]
pub(crate) struct NodeLoad {
    held: AtomicUsize,
    /// Microseconds after `since` of the last acknowledgement, or of the
    /// moment an idle node was given a message.
    progress_at: AtomicU64,
    since: Instant,
}

impl Default for NodeLoad {
    fn default() -> Self {
        NodeLoad {
            held: AtomicUsize::new(0),
            progress_at: AtomicU64::new(0),
            since: Instant::now(),
        }
    }
}

/// A node that holds messages and has acknowledged none for this long gets
/// no more of a sticky run: a stalled disk or a hung process must not
/// collect every new message until the failure detectors evict it.
pub(crate) const STALL: Duration = Duration::from_millis(100);

impl NodeLoad {
    /// A message was handed to the node's task.
    pub(crate) fn add(&self) {
        if self.held.fetch_add(1, Ordering::Relaxed) == 0 {
            // An idle node's clock starts now, not at its last ack.
            self.progressed();
        }
    }

    /// A message left the node's task without being acknowledged there
    /// (sent elsewhere, or handed back by a queue that had just closed).
    pub(crate) fn release(&self) {
        // Saturates at zero: a miscount must never make an idle node look
        // busy for good.
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// The node acknowledged one of the messages it held.
    pub(crate) fn acknowledged(&self) {
        self.release();
        self.progressed();
    }

    fn progressed(&self) {
        let micros = self.since.elapsed().as_micros() as u64;
        self.progress_at.store(micros, Ordering::Relaxed);
    }

    /// Messages held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether it acknowledged something (or was given its first message)
    /// within [`STALL`].
    fn moving(&self) -> bool {
        let now = self.since.elapsed().as_micros() as u64;
        now.saturating_sub(self.progress_at.load(Ordering::Relaxed)) < STALL.as_micros() as u64
    }
}

/// An immutable snapshot of the routable data nodes.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// The nodes, in no particular order.
    pub(crate) nodes: Vec<NodeHandle>,
    /// The node of the current sticky run, and messages left in that run.
    /// Races between client tasks on other threads only make a run a
    /// little longer or shorter.
    run: StickyRun,
}

#[derive(Debug)]
struct StickyRun {
    node: AtomicUsize,
    left: AtomicUsize,
}

impl Default for StickyRun {
    fn default() -> Self {
        StickyRun {
            node: AtomicUsize::new(usize::MAX),
            left: AtomicUsize::new(0),
        }
    }
}

impl Routes {
    /// A snapshot of these nodes; the first message starts a new run.
    pub(crate) fn new(nodes: Vec<NodeHandle>) -> Self {
        Routes {
            nodes,
            run: StickyRun::default(),
        }
    }

    /// Index of the node for a new message (there is at least one node):
    /// the current run's node while it is busy, not stalled and the run not
    /// used up; otherwise a random node, another one if the run's node is
    /// still busy.
    fn pick(&self, sticky_run: usize, rng: &mut SmallRng) -> usize {
        let count = self.nodes.len();
        if sticky_run <= 1 {
            return rng.random_range(0..count);
        }
        let current = self.run.node.load(Ordering::Relaxed);
        let left = self.run.left.load(Ordering::Relaxed);
        let node = self.nodes.get(current);
        let busy = node.map(|n| &n.load).filter(|l| l.held() > 0);
        let batches = node.is_some_and(|n| !n.one_at_a_time);
        if left > 0 && batches && busy.is_some_and(|l| l.moving()) {
            self.run.left.store(left - 1, Ordering::Relaxed);
            return current;
        }
        let next = if busy.is_some() && count > 1 {
            // Used up or stalled: the next run goes to another node.
            let pick = rng.random_range(0..count - 1);
            pick + usize::from(pick >= current)
        } else {
            rng.random_range(0..count)
        };
        self.run.node.store(next, Ordering::Relaxed);
        self.run.left.store(sticky_run - 1, Ordering::Relaxed);
        next
    }
}

/// Sends messages to data nodes. Cheap to clone: one per client task.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    routes: watch::Receiver<Arc<Routes>>,
    parking: mpsc::UnboundedSender<Forward>,
    max_attempts: u32,
    sticky_run: usize,
}

impl Router {
    /// A router reading `routes` and parking unroutable messages in
    /// `parking`; up to `sticky_run` messages in a row go to one busy node
    /// (1: every message is routed on its own).
    pub(crate) fn new(
        routes: watch::Receiver<Arc<Routes>>,
        parking: mpsc::UnboundedSender<Forward>,
        max_attempts: u32,
        sticky_run: usize,
    ) -> Self {
        Router {
            routes,
            parking,
            max_attempts,
            sticky_run,
        }
    }

    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Routes> {
        self.routes.borrow().clone()
    }

    /// A receiver of new snapshots.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<Routes>> {
        self.routes.clone()
    }

    /// Sends `message` to a random routable node other than `exclude`
    /// (the node that just failed it), or parks it when there is none.
    /// Returns the node chosen, if any.
    pub(crate) fn route(
        &self,
        mut message: Forward,
        exclude: Option<ConnId>,
        rng: &mut SmallRng,
    ) -> Option<NodeId> {
        if message.envelope.is_answered() {
            // Another attempt was acknowledged meanwhile: nothing to do.
            return None;
        }
        if message.attempts >= self.max_attempts {
            warn!(
                id = %message.id(),
                attempts = message.attempts,
                "giving up on message: no data node acknowledged it"
            );
            let reason = format!("{} data nodes failed to acknowledge it", message.attempts);
            message.envelope.give_up(reason.into());
            return None;
        }
        let text_len = message.envelope.text.len();
        // The common case allocates nothing: one pick among the nodes; a
        // resent message skips the node that failed it and leaves the
        // sticky run alone.
        let first_choice = {
            let routes = self.routes.borrow();
            let nodes = &routes.nodes;
            let excluded = exclude.and_then(|conn| nodes.iter().position(|n| n.conn == conn));
            let count = nodes.len() - usize::from(excluded.is_some());
            if count == 0 {
                None
            } else {
                let pick = match excluded {
                    None => routes.pick(self.sticky_run, rng),
                    Some(at) => {
                        let pick = rng.random_range(0..count);
                        pick + usize::from(pick >= at)
                    }
                };
                let node = &nodes[pick];
                if node.takes(text_len) {
                    match offer(node, message) {
                        Ok(()) => return Some(node.node.clone()),
                        Err(back) => message = back,
                    }
                }
                Some(node.conn)
            }
        };
        // That node's task just ended, or it cannot take this message: try
        // the others, in random order.
        if let Some(tried) = first_choice {
            let routes = self.snapshot();
            let mut candidates: Vec<&NodeHandle> = routes
                .nodes
                .iter()
                .filter(|n| Some(n.conn) != exclude && n.conn != tried)
                .collect();
            let mut refused_for_size = false;
            while !candidates.is_empty() {
                let node = candidates.swap_remove(rng.random_range(0..candidates.len()));
                if !node.takes(text_len) {
                    refused_for_size = true;
                    continue;
                }
                match offer(node, message) {
                    Ok(()) => return Some(node.node.clone()),
                    Err(back) => message = back,
                }
            }
            let tried_was_too_small = routes
                .nodes
                .iter()
                .any(|n| n.conn == tried && !n.takes(text_len));
            if refused_for_size || tried_was_too_small {
                // Only original-system nodes are live; waiting would not help.
                let reason = format!(
                    "message too long for the live data nodes ({text_len} bytes; original-system data nodes take at most {ORIGINAL_NODE_MAX_TEXT})"
                );
                message.envelope.give_up(reason.into());
                return None;
            }
        }
        // Fails only during shutdown, when the client is being closed anyway.
        let _ = self.parking.send(message);
        None
    }
}

/// Hands `message` to `node`'s queue, counting the attempt; gives it back
/// (attempt uncounted) if that node's task has just ended.
fn offer(node: &NodeHandle, mut message: Forward) -> Result<(), Forward> {
    message.attempts += 1;
    // Counted before the send: the node's task may answer it at once.
    node.load.add();
    node.queue
        .send(message)
        .map_err(|mpsc::error::SendError(mut back)| {
            node.load.release();
            back.attempts -= 1;
            back
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{Completion, Envelope, Outcome};
    use bytes::Bytes;
    use protocol::message::MessageId;
    use rand::SeedableRng;

    fn forward(id: u64, reply_to: &mpsc::UnboundedSender<Completion>) -> Forward {
        forward_text(id, reply_to, b"numero random: 1")
    }

    fn forward_text(
        id: u64,
        reply_to: &mpsc::UnboundedSender<Completion>,
        text: &'static [u8],
    ) -> Forward {
        Forward::new(Envelope::new(
            MessageId { epoch: 1, seq: id },
            Bytes::from_static(text),
            "test".into(),
            id,
            reply_to.clone(),
            None,
        ))
    }

    fn node(conn: ConnId, name: &str) -> (NodeHandle, mpsc::UnboundedReceiver<Forward>) {
        let (queue, rx) = mpsc::unbounded_channel();
        (
            NodeHandle {
                conn,
                node: name.parse().unwrap(),
                queue,
                load: Arc::default(),
                one_at_a_time: false,
            },
            rx,
        )
    }

    #[test]
    fn random_choice_is_roughly_uniform_and_never_out_of_range() {
        let (a, mut a_rx) = node(1, "a");
        let (b, mut b_rx) = node(2, "b");
        let (c, mut c_rx) = node(3, "c");
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a, b, c])));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 1);
        let (reply, _replies) = mpsc::unbounded_channel();
        let mut rng = SmallRng::seed_from_u64(7);
        for i in 0..3000 {
            router.route(forward(i, &reply), None, &mut rng).unwrap();
        }
        let counts = [&mut a_rx, &mut b_rx, &mut c_rx].map(|rx| {
            let mut n = 0;
            while rx.try_recv().is_ok() {
                n += 1;
            }
            n
        });
        assert_eq!(counts.iter().sum::<i32>(), 3000);
        for n in counts {
            assert!((800..1200).contains(&n), "{counts:?}");
        }
    }

    /// Routes `count` new messages; the name of the node each went to.
    fn route_many(router: &Router, count: u64, rng: &mut SmallRng) -> Vec<String> {
        let (reply, _replies) = mpsc::unbounded_channel();
        (0..count)
            .map(|i| {
                router
                    .route(forward(i, &reply), None, rng)
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_busy_node_keeps_its_run_then_another_node_is_chosen() {
        let (a, _a_rx) = node(1, "a");
        let (b, _b_rx) = node(2, "b");
        let (c, _c_rx) = node(3, "c");
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a, b, c])));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 4);
        let mut rng = SmallRng::seed_from_u64(3);
        // Nothing is acknowledged, so every chosen node stays busy: runs of
        // exactly 4, each on a different node than the run before.
        let chosen = route_many(&router, 400, &mut rng);
        for run in chosen.chunks(4) {
            assert!(run.iter().all(|n| *n == run[0]), "{run:?}");
        }
        for pair in chosen.chunks(4).collect::<Vec<_>>().windows(2) {
            assert_ne!(pair[0][0], pair[1][0]);
        }
        for name in ["a", "b", "c"] {
            let n = chosen.iter().filter(|c| *c == name).count();
            assert!((100..170).contains(&n), "{name}: {n}");
        }
    }

    #[test]
    fn a_node_that_went_idle_ends_the_run() {
        let (a, _a_rx) = node(1, "a");
        let (b, _b_rx) = node(2, "b");
        let (c, _c_rx) = node(3, "c");
        let loads = [a.load.clone(), b.load.clone(), c.load.clone()];
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a, b, c])));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 1024);
        let mut rng = SmallRng::seed_from_u64(5);
        // Each message is answered before the next: a light load is spread
        // per message, uniformly.
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for _ in 0..3000 {
            let name = route_many(&router, 1, &mut rng).remove(0);
            for load in &loads {
                load.release();
            }
            *counts.entry(name).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        for n in counts.values() {
            assert!((800..1200).contains(n), "{counts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_node_gets_no_more_of_its_run() {
        let (a, _a_rx) = node(1, "a");
        let (b, _b_rx) = node(2, "b");
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a, b])));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 1024);
        let mut rng = SmallRng::seed_from_u64(11);
        let first = route_many(&router, 10, &mut rng);
        assert!(first.iter().all(|n| *n == first[0]));
        // Its node acknowledges nothing for longer than STALL.
        tokio::time::advance(STALL + Duration::from_millis(1)).await;
        let next = route_many(&router, 10, &mut rng);
        assert!(next.iter().all(|n| *n != first[0]), "{next:?}");
    }

    #[test]
    fn runs_never_continue_on_an_original_data_node() {
        let (mut a, _a_rx) = node(1, "a");
        a.one_at_a_time = true;
        let (b, _b_rx) = node(2, "b");
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a, b])));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 4);
        let mut rng = SmallRng::seed_from_u64(13);
        // Nothing is acknowledged: "b" gets runs of 4, "a" one message at a
        // time between them.
        let chosen = route_many(&router, 1000, &mut rng).concat();
        let runs_of_a = chosen.matches('a').count();
        assert!(runs_of_a >= 190, "{chosen}");
        assert!(!chosen.contains("aa"), "{chosen}");
        assert!(!chosen.contains("bbbbb"), "{chosen}");
    }

    #[test]
    fn a_resent_message_leaves_the_run_alone() {
        let (a, _a_rx) = node(1, "a");
        let (b, _b_rx) = node(2, "b");
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a, b])));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 1024);
        let mut rng = SmallRng::seed_from_u64(9);
        let (reply, _replies) = mpsc::unbounded_channel();
        let first = route_many(&router, 1, &mut rng).remove(0);
        let other_conn = if first == "a" { 2 } else { 1 };
        // A message resent away from the other node lands on the run's
        // node without counting against the run, which goes on there.
        let resent = router.route(forward(100, &reply), Some(other_conn), &mut rng);
        assert_eq!(resent.unwrap().as_str(), first);
        assert!(
            route_many(&router, 50, &mut rng)
                .iter()
                .all(|n| *n == first)
        );
    }

    #[test]
    fn retries_skip_the_failed_node_and_closed_queues() {
        let (a, a_rx) = node(1, "a");
        let (b, mut b_rx) = node(2, "b");
        let (c, c_rx) = node(3, "c");
        drop(c_rx);
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a, b, c])));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 1);
        let (reply, _replies) = mpsc::unbounded_channel();
        let mut rng = SmallRng::seed_from_u64(1);
        for i in 0..50 {
            let chosen = router.route(forward(i, &reply), Some(1), &mut rng);
            assert_eq!(chosen.unwrap().as_str(), "b");
        }
        drop(a_rx);
        assert_eq!(b_rx.try_recv().unwrap().attempts, 1);
    }

    #[test]
    fn no_node_parks_the_message() {
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
        let (park_tx, mut park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 1);
        let (reply, _replies) = mpsc::unbounded_channel();
        let mut rng = SmallRng::seed_from_u64(1);
        assert!(router.route(forward(1, &reply), None, &mut rng).is_none());
        assert_eq!(park_rx.try_recv().unwrap().id().seq, 1);
    }

    #[test]
    fn too_many_attempts_fail_the_message() {
        let (a, _a_rx) = node(1, "a");
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a])));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 3, 1);
        let (reply, mut replies) = mpsc::unbounded_channel();
        let mut message = forward(9, &reply);
        message.attempts = 3;
        assert!(
            router
                .route(message, None, &mut SmallRng::seed_from_u64(1))
                .is_none()
        );
        let done = replies.try_recv().unwrap();
        assert!(
            matches!(&done.outcome, Outcome::NotStored(reason) if reason.contains("3 data nodes failed")),
            "{done:?}"
        );

        // The same after a node was sent it: its fate is unknown.
        let mut message = forward(10, &reply);
        message.envelope.mark_sent();
        message.attempts = 3;
        router.route(message, None, &mut SmallRng::seed_from_u64(1));
        assert!(matches!(
            replies.try_recv().unwrap().outcome,
            Outcome::Unknown(_)
        ));
    }

    #[test]
    fn original_data_nodes_are_never_sent_a_message_longer_than_one_recv() {
        let (mut a, mut a_rx) = node(1, "a");
        a.one_at_a_time = true;
        let (b, b_rx) = node(2, "b");
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a, b])));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 1);
        let (reply, _replies) = mpsc::unbounded_channel();
        let mut rng = SmallRng::seed_from_u64(4);
        let long: &'static [u8] =
            Box::leak(vec![b'x'; ORIGINAL_NODE_MAX_TEXT + 1].into_boxed_slice());
        for i in 0..100 {
            let chosen = router.route(forward_text(i, &reply, long), None, &mut rng);
            assert_eq!(chosen.unwrap().as_str(), "b");
        }
        assert!(a_rx.try_recv().is_err());
        assert_eq!(b_rx.len(), 100);
        // Exactly the limit still fits.
        let fits: &'static [u8] = Box::leak(vec![b'x'; ORIGINAL_NODE_MAX_TEXT].into_boxed_slice());
        let mut to_a = 0;
        for i in 0..100 {
            let chosen = router.route(forward_text(i, &reply, fits), None, &mut rng);
            to_a += usize::from(chosen.unwrap().as_str() == "a");
        }
        assert!(to_a > 0);
    }

    #[test]
    fn a_long_message_with_only_original_nodes_gets_a_clear_error() {
        let (mut a, _a_rx) = node(1, "a");
        a.one_at_a_time = true;
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes::new(vec![a])));
        let (park_tx, mut park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 1);
        let (reply, mut replies) = mpsc::unbounded_channel();
        let long: &'static [u8] = Box::leak(vec![b'x'; 2000].into_boxed_slice());
        let mut rng = SmallRng::seed_from_u64(4);
        assert!(
            router
                .route(forward_text(1, &reply, long), None, &mut rng)
                .is_none()
        );
        assert!(park_rx.try_recv().is_err(), "waiting would not help");
        let done = replies.try_recv().unwrap();
        assert!(
            matches!(&done.outcome, Outcome::NotStored(reason) if reason.starts_with("message too long for the live data nodes (2000 bytes")),
            "{done:?}"
        );
    }
}
