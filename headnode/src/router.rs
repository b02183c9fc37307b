//! Routing client messages to data nodes.
//!
//! The membership task publishes the set of routable data nodes as an
//! immutable snapshot ([`Routes`]) through a `watch` channel; client tasks
//! read it without locks held across awaits. A message is sent to one node
//! chosen uniformly at random. When no node can take it, the message waits
//! in the *parking lot* for at most `no_node_wait`; if a node joins in time
//! it is routed then, otherwise the client is told `ERROR no data nodes
//! available`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use protocol::message::{MessageId, NO_DATA_NODES, NodeId};
use rand::RngExt;
use rand::rngs::SmallRng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::membership::ConnId;

/// Hands out message ids unique across the cluster's life: the head node's
/// start time in Unix milliseconds, then a counter.
#[derive(Debug)]
pub struct IdGenerator {
    epoch: u64,
    next: AtomicU64,
}

impl IdGenerator {
    /// Ids of a head node run that started now.
    pub fn new() -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        IdGenerator::with_epoch(epoch)
    }

    /// Ids with a given epoch (tests).
    pub fn with_epoch(epoch: u64) -> Self {
        IdGenerator {
            epoch,
            next: AtomicU64::new(1),
        }
    }

    /// The epoch of this run.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next id.
    pub fn next_id(&self) -> MessageId {
        MessageId {
            epoch: self.epoch,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator::new()
    }
}

/// How a client message ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Written by this data node.
    Stored {
        /// The node whose `data.txt` holds it.
        node: NodeId,
    },
    /// Not stored; the reason goes to the client after `ERROR `.
    Failed(Arc<str>),
}

/// A finished message, on its way back to the client task.
#[derive(Debug)]
pub struct Completion {
    /// Position of the message in its client's stream.
    pub slot: u64,
    /// The message id.
    pub id: MessageId,
    /// What happened.
    pub outcome: Outcome,
}

/// A client message on its way to a data node, with where its answer goes.
#[derive(Debug)]
pub struct Forward {
    /// Cluster-unique id.
    pub id: MessageId,
    /// The client's text.
    pub text: Bytes,
    /// Position in the client's stream.
    pub slot: u64,
    /// The client task's completion queue.
    pub reply_to: mpsc::UnboundedSender<Completion>,
    /// The client's address, for logs.
    pub client: Arc<str>,
    /// Data nodes tried so far.
    pub attempts: u32,
}

impl Forward {
    /// Reports the outcome to the client task (if it is still there).
    pub fn complete(self, outcome: Outcome) {
        let _ = self.reply_to.send(Completion {
            slot: self.slot,
            id: self.id,
            outcome,
        });
    }
}

/// One routable data node, as client tasks see it.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    /// Its connection.
    pub conn: ConnId,
    /// Its name.
    pub node: NodeId,
    /// Its forwarding queue, read by its connection task.
    pub queue: mpsc::UnboundedSender<Forward>,
}

/// An immutable snapshot of the routable data nodes.
#[derive(Debug, Default)]
pub struct Routes {
    /// The nodes, in no particular order.
    pub nodes: Vec<NodeHandle>,
}

/// Sends messages to data nodes. Cheap to clone: one per client task.
#[derive(Debug, Clone)]
pub struct Router {
    routes: watch::Receiver<Arc<Routes>>,
    parking: mpsc::UnboundedSender<Forward>,
    max_attempts: u32,
}

impl Router {
    /// A router reading `routes` and parking unroutable messages in `parking`.
    pub fn new(
        routes: watch::Receiver<Arc<Routes>>,
        parking: mpsc::UnboundedSender<Forward>,
        max_attempts: u32,
    ) -> Self {
        Router {
            routes,
            parking,
            max_attempts,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Routes> {
        self.routes.borrow().clone()
    }

    /// Sends `message` to a random routable node other than `exclude`
    /// (the node that just failed it), or parks it when there is none.
    /// Returns the node chosen, if any.
    pub fn route(
        &self,
        mut message: Forward,
        exclude: Option<ConnId>,
        rng: &mut SmallRng,
    ) -> Option<NodeId> {
        if message.attempts >= self.max_attempts {
            warn!(
                id = %message.id,
                attempts = message.attempts,
                "giving up on message: no data node acknowledged it"
            );
            let reason: Arc<str> = format!(
                "not stored: {} data nodes failed to acknowledge it",
                message.attempts
            )
            .into();
            message.complete(Outcome::Failed(reason));
            return None;
        }
        // The common case allocates nothing: one random pick among the
        // nodes, skipping the excluded one.
        let first_choice = {
            let routes = self.routes.borrow();
            let nodes = &routes.nodes;
            let excluded = exclude.and_then(|conn| nodes.iter().position(|n| n.conn == conn));
            let count = nodes.len() - usize::from(excluded.is_some());
            if count == 0 {
                None
            } else {
                let mut pick = rng.random_range(0..count);
                if excluded.is_some_and(|at| pick >= at) {
                    pick += 1;
                }
                let node = &nodes[pick];
                match offer(node, message) {
                    Ok(()) => return Some(node.node.clone()),
                    Err(back) => {
                        message = back;
                        Some(node.conn)
                    }
                }
            }
        };
        // That node's task just ended: try the others, in random order.
        if let Some(failed) = first_choice {
            let routes = self.snapshot();
            let mut candidates: Vec<&NodeHandle> = routes
                .nodes
                .iter()
                .filter(|n| Some(n.conn) != exclude && n.conn != failed)
                .collect();
            while !candidates.is_empty() {
                let node = candidates.swap_remove(rng.random_range(0..candidates.len()));
                match offer(node, message) {
                    Ok(()) => return Some(node.node.clone()),
                    Err(back) => message = back,
                }
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
    node.queue
        .send(message)
        .map_err(|mpsc::error::SendError(mut back)| {
            back.attempts -= 1;
            back
        })
}

/// Holds messages no node could take, for at most `wait`; routes them as
/// soon as a node is available, fails them with `ERROR no data nodes
/// available` when the wait is over.
pub async fn run_parking_lot(
    mut parked: mpsc::UnboundedReceiver<Forward>,
    router: Router,
    wait: Duration,
    cancel: CancellationToken,
) {
    let mut routes = router.routes.clone();
    let mut rng: SmallRng = rand::make_rng();
    let mut waiting: VecDeque<(Instant, Forward)> = VecDeque::new();
    let no_nodes: Arc<str> = NO_DATA_NODES.into();
    loop {
        let next_deadline = waiting.front().map(|(deadline, _)| *deadline);
        tokio::select! {
            _ = cancel.cancelled() => break,
            message = parked.recv() => match message {
                Some(message) => waiting.push_back((Instant::now() + wait, message)),
                None => break,
            },
            changed = routes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = protocol::server::sleep_until(next_deadline) => {
                let now = Instant::now();
                while waiting.front().is_some_and(|(deadline, _)| *deadline <= now) {
                    if let Some((_, message)) = waiting.pop_front() {
                        message.complete(Outcome::Failed(no_nodes.clone()));
                    }
                }
            }
        }
        if !waiting.is_empty() && !routes.borrow_and_update().nodes.is_empty() {
            for (_, message) in waiting.drain(..) {
                // With nodes present this sends; if they vanished meanwhile,
                // the message comes back here with a fresh deadline.
                router.route(message, None, &mut rng);
            }
        }
    }
    for (_, message) in waiting.drain(..) {
        message.complete(Outcome::Failed("head node shutting down".into()));
    }
    while let Ok(message) = parked.try_recv() {
        message.complete(Outcome::Failed("head node shutting down".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn forward(id: u64, reply_to: &mpsc::UnboundedSender<Completion>) -> Forward {
        Forward {
            id: MessageId { epoch: 1, seq: id },
            text: Bytes::from_static(b"numero random: 1"),
            slot: id,
            reply_to: reply_to.clone(),
            client: "test".into(),
            attempts: 0,
        }
    }

    fn node(conn: ConnId, name: &str) -> (NodeHandle, mpsc::UnboundedReceiver<Forward>) {
        let (queue, rx) = mpsc::unbounded_channel();
        (
            NodeHandle {
                conn,
                node: name.parse().unwrap(),
                queue,
            },
            rx,
        )
    }

    #[test]
    fn ids_are_unique_and_carry_the_epoch() {
        let ids = IdGenerator::with_epoch(42);
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_eq!((a.epoch, a.seq, b.seq), (42, 1, 2));
    }

    #[test]
    fn random_choice_is_roughly_uniform_and_never_out_of_range() {
        let (a, mut a_rx) = node(1, "a");
        let (b, mut b_rx) = node(2, "b");
        let (c, mut c_rx) = node(3, "c");
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes {
            nodes: vec![a, b, c],
        }));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5);
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

    #[test]
    fn retries_skip_the_failed_node_and_closed_queues() {
        let (a, a_rx) = node(1, "a");
        let (b, mut b_rx) = node(2, "b");
        let (c, c_rx) = node(3, "c");
        drop(c_rx);
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes {
            nodes: vec![a, b, c],
        }));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5);
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
        let router = Router::new(routes_rx, park_tx, 5);
        let (reply, _replies) = mpsc::unbounded_channel();
        let mut rng = SmallRng::seed_from_u64(1);
        assert!(router.route(forward(1, &reply), None, &mut rng).is_none());
        assert_eq!(park_rx.try_recv().unwrap().id.seq, 1);
    }

    #[test]
    fn too_many_attempts_fail_the_message() {
        let (a, _a_rx) = node(1, "a");
        let (_tx, routes_rx) = watch::channel(Arc::new(Routes { nodes: vec![a] }));
        let (park_tx, _park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 3);
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
            matches!(done.outcome, Outcome::Failed(reason) if reason.starts_with("not stored"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn parked_messages_fail_after_the_wait_or_go_to_a_new_node() {
        let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
        let (park_tx, park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5);
        let cancel = CancellationToken::new();
        tokio::spawn(run_parking_lot(
            park_rx,
            router.clone(),
            Duration::from_secs(1),
            cancel.clone(),
        ));
        let (reply, mut replies) = mpsc::unbounded_channel();
        let mut rng = SmallRng::seed_from_u64(1);

        router.route(forward(1, &reply), None, &mut rng);
        let started = Instant::now();
        let done = replies.recv().await.unwrap();
        assert!(matches!(&done.outcome, Outcome::Failed(r) if &**r == NO_DATA_NODES));
        assert_eq!(started.elapsed(), Duration::from_secs(1));

        router.route(forward(2, &reply), None, &mut rng);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (a, mut a_rx) = node(1, "a");
        routes_tx.send(Arc::new(Routes { nodes: vec![a] })).unwrap();
        assert_eq!(a_rx.recv().await.unwrap().id.seq, 2);
        cancel.cancel();
    }
}
