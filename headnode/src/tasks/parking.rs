//! The waiting room for messages and copies no data node can take now.
//!
//! A message that needs more copies before its client is answered than
//! there are nodes to take them waits here at most `wait`; as soon as
//! enough nodes are routable it is routed, otherwise its client is told
//! `ERROR not enough data nodes (1 live, 2 required)` (or `no data nodes
//! available` when there is none). A copy beyond those needed waits the
//! same way and is then given up: the message is under-replicated.
//!
//! At most `max` wait at once: beyond that one is refused at once, so a
//! cluster without data nodes cannot be made to hold an unbounded pile of
//! messages. (Their bytes are also bounded by the in-flight budget every
//! message is charged to.)

use std::time::Duration;

use rand::rngs::SmallRng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::state::router::{Parked, Router};

impl Parked {
    fn since(&self) -> Instant {
        match self {
            Parked::Start(_, since) => *since,
            Parked::Copy(copy) => copy.waiting_since.unwrap_or_else(Instant::now),
        }
    }

    /// Gives up waiting: the client is told why, or the message is
    /// counted as under-replicated.
    fn give_up(self, router: &Router) {
        match self {
            Parked::Start(envelope, _) => {
                let reason = router.not_enough_nodes(envelope.replication().needed);
                envelope.give_up(reason.into());
            }
            Parked::Copy(copy) => {
                let reason = router.not_enough_nodes(copy.envelope.replication().needed);
                if copy.envelope.give_up_copy(reason.into()) {
                    router.count_under_replicated(&copy.envelope);
                }
            }
        }
    }

    fn retry(self, router: &Router, rng: &mut SmallRng) {
        match self {
            Parked::Start(envelope, since) => {
                router.start(envelope, Some(since), Instant::now(), rng);
            }
            Parked::Copy(copy) => {
                router.reroute(copy, Instant::now(), rng);
            }
        }
    }
}

/// Holds what no node could take, for at most `wait`; routes it again
/// whenever the routable nodes change, gives up on it when the wait is over.
pub(crate) async fn run_parking_lot(
    mut parked: mpsc::UnboundedReceiver<Parked>,
    router: Router,
    wait: Duration,
    max: usize,
    mut rng: SmallRng,
    cancel: CancellationToken,
) {
    let mut routes = router.watch();
    let mut waiting: Vec<(Instant, Parked)> = Vec::new();
    let mut refused_since_report = 0u64;
    loop {
        let next_deadline = waiting.iter().map(|(deadline, _)| *deadline).min();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            changed = routes.changed() => {
                if changed.is_err() {
                    break;
                }
                routes.borrow_and_update();
                // Everything is tried again; what still cannot be placed
                // comes back here, keeping its first deadline.
                for (_, item) in std::mem::take(&mut waiting) {
                    item.retry(&router, &mut rng);
                }
            }
            item = parked.recv() => match item {
                Some(item) if waiting.len() < max => {
                    let deadline = item.since() + wait;
                    if deadline <= Instant::now() {
                        item.give_up(&router);
                    } else {
                        waiting.push((deadline, item));
                    }
                }
                Some(item) => {
                    if refused_since_report == 0 {
                        warn!(max, "waiting room for messages without enough data nodes is full; refusing more");
                    }
                    refused_since_report += 1;
                    item.give_up(&router);
                }
                None => break,
            },
            _ = node_kit::server::sleep_until(next_deadline) => {
                let now = Instant::now();
                let (due, left): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting)
                    .into_iter()
                    .partition(|(deadline, _)| *deadline <= now);
                waiting = left;
                for (_, item) in due {
                    item.give_up(&router);
                }
            }
        }
        if waiting.is_empty() && refused_since_report > 0 {
            warn!(refused = refused_since_report, "waiting room drained");
            refused_since_report = 0;
        }
    }
    // Dropping what waits answers each client (`head node shutting down`).
    drop(waiting);
    parked.close();
    // Until `None`: a send that began before the close is still delivered.
    while parked.recv().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::forward::tests::replicated;
    use crate::state::forward::{Completion, Outcome};
    use crate::state::router::Routes;
    use crate::state::router::tests::node;
    use protocol::client::NO_DATA_NODES;
    use rand::SeedableRng;
    use tokio::sync::watch;

    fn start(max: usize) -> (Router, watch::Sender<Arc<Routes>>, CancellationToken) {
        let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
        let (park_tx, park_rx) = mpsc::unbounded_channel();
        let router = Router::new(routes_rx, park_tx, 5, 1);
        let cancel = CancellationToken::new();
        tokio::spawn(run_parking_lot(
            park_rx,
            router.clone(),
            Duration::from_secs(1),
            max,
            SmallRng::seed_from_u64(1),
            cancel.clone(),
        ));
        (router, routes_tx, cancel)
    }

    fn submit(
        router: &Router,
        seq: u64,
        replicas: usize,
        needed: usize,
        rng: &mut SmallRng,
    ) -> mpsc::UnboundedReceiver<Completion> {
        let (envelope, replies) = replicated(seq, replicas, needed);
        router.start(envelope, None, Instant::now(), rng);
        replies
    }

    #[tokio::test(start_paused = true)]
    async fn parked_messages_fail_after_the_wait_or_go_to_a_new_node() {
        let (router, routes_tx, cancel) = start(10);
        let mut rng = SmallRng::seed_from_u64(1);

        let mut replies = submit(&router, 1, 1, 1, &mut rng);
        let started = Instant::now();
        let done = replies.recv().await.unwrap();
        assert!(matches!(&done.outcome, Outcome::NotStored(r) if &**r == NO_DATA_NODES));
        assert_eq!(started.elapsed(), Duration::from_secs(1));

        let _replies = submit(&router, 2, 1, 1, &mut rng);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (a, mut a_rx) = node(1, "a");
        routes_tx.send(Arc::new(Routes::new(vec![a]))).unwrap();
        assert_eq!(a_rx.recv().await.unwrap().id().seq, 2);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_needing_two_copies_with_one_node_gets_a_clear_error_in_time() {
        let (router, routes_tx, cancel) = start(10);
        let mut rng = SmallRng::seed_from_u64(1);
        let (a, _a_rx) = node(1, "a");
        routes_tx
            .send(Arc::new(Routes::new(vec![a.clone()])))
            .unwrap();
        let mut replies = submit(&router, 1, 2, 2, &mut rng);
        let started = Instant::now();
        // A change that still leaves one node does not restart the wait.
        tokio::time::sleep(Duration::from_millis(600)).await;
        routes_tx.send(Arc::new(Routes::new(vec![a]))).unwrap();
        let done = replies.recv().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(
            matches!(&done.outcome, Outcome::NotStored(r) if &**r == "not enough data nodes (1 live, 2 required)"),
            "{done:?}"
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_node_joining_in_time_gets_the_waiting_messages() {
        let (router, routes_tx, cancel) = start(10);
        let mut rng = SmallRng::seed_from_u64(1);
        let (a, mut a_rx) = node(1, "a");
        let (b, mut b_rx) = node(2, "b");
        routes_tx
            .send(Arc::new(Routes::new(vec![a.clone()])))
            .unwrap();
        let _replies = submit(&router, 1, 2, 2, &mut rng);
        tokio::time::sleep(Duration::from_millis(300)).await;
        routes_tx.send(Arc::new(Routes::new(vec![a, b]))).unwrap();
        assert_eq!(a_rx.recv().await.unwrap().id().seq, 1);
        assert_eq!(b_rx.recv().await.unwrap().id().seq, 1);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_waiting_room_refuses_at_once() {
        let (router, _routes_tx, cancel) = start(3);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut all: Vec<_> = (1..=5)
            .map(|seq| submit(&router, seq, 1, 1, &mut rng))
            .collect();
        // Two did not fit and are refused before any wait is over.
        let started = Instant::now();
        let fourth = all[3].recv().await.unwrap();
        let fifth = all[4].recv().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(matches!(&fourth.outcome, Outcome::NotStored(r) if &**r == NO_DATA_NODES));
        assert!(matches!(&fifth.outcome, Outcome::NotStored(_)));
        for replies in &mut all[..3] {
            replies.recv().await.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_answers_every_waiting_message() {
        let (router, _routes_tx, cancel) = start(10);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut replies = submit(&router, 1, 1, 1, &mut rng);
        tokio::task::yield_now().await;
        cancel.cancel();
        let done = replies.recv().await.unwrap();
        assert!(
            matches!(&done.outcome, Outcome::NotStored(r) if &**r == "head node shutting down")
        );
    }
}
