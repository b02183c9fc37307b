//! The waiting room for messages no data node can take right now.
//!
//! A message waits here at most `wait`; as soon as a node is routable it is
//! routed, otherwise its client is told `ERROR no data nodes available`.
//! At most `max` messages wait at once: beyond that a message is refused at
//! once with the same error, so a cluster without data nodes cannot be made
//! to hold an unbounded pile of messages. (Their bytes are also bounded by
//! the in-flight budget every message is charged to.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use protocol::message::NO_DATA_NODES;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::forward::Forward;
use crate::router::Router;

/// Holds messages no node could take, for at most `wait`; routes them as
/// soon as a node is available, gives up on them when the wait is over.
pub(crate) async fn run_parking_lot(
    mut parked: mpsc::UnboundedReceiver<Forward>,
    router: Router,
    wait: Duration,
    max: usize,
    mut rng: SmallRng,
    cancel: CancellationToken,
) {
    let mut routes = router.watch();
    let mut waiting: VecDeque<(Instant, Forward)> = VecDeque::new();
    let no_nodes: Arc<str> = NO_DATA_NODES.into();
    let mut refused_since_report = 0u64;
    loop {
        let next_deadline = waiting.front().map(|(deadline, _)| *deadline);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            changed = routes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            message = parked.recv() => match message {
                Some(message) if waiting.len() < max => {
                    waiting.push_back((Instant::now() + wait, message));
                }
                Some(message) => {
                    if refused_since_report == 0 {
                        warn!(max, "waiting room for messages without a data node is full; refusing more");
                    }
                    refused_since_report += 1;
                    message.envelope.give_up(no_nodes.clone());
                }
                None => break,
            },
            _ = protocol::server::sleep_until(next_deadline) => {
                let now = Instant::now();
                while waiting.front().is_some_and(|(deadline, _)| *deadline <= now) {
                    if let Some((_, message)) = waiting.pop_front() {
                        message.envelope.give_up(no_nodes.clone());
                    }
                }
            }
        }
        if waiting.is_empty() && refused_since_report > 0 {
            warn!(refused = refused_since_report, "waiting room drained");
            refused_since_report = 0;
        }
        if !waiting.is_empty() && !routes.borrow_and_update().nodes.is_empty() {
            for (_, message) in waiting.drain(..) {
                // With nodes present this sends; if they vanished meanwhile,
                // the message comes back here with a fresh deadline.
                router.route(message, None, &mut rng);
            }
        }
    }
    // Dropping what waits answers each client (`head node shutting down`).
    drop(waiting);
    parked.close();
    while parked.try_recv().is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{Completion, Envelope, Outcome};
    use crate::router::{NodeHandle, Routes};
    use bytes::Bytes;
    use protocol::message::MessageId;
    use rand::SeedableRng;
    use tokio::sync::watch;

    fn forward(seq: u64, reply_to: &mpsc::UnboundedSender<Completion>) -> Forward {
        Forward::new(Envelope::new(
            MessageId { epoch: 1, seq },
            Bytes::from_static(b"x"),
            "test".into(),
            seq,
            reply_to.clone(),
            None,
        ))
    }

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

    #[tokio::test(start_paused = true)]
    async fn parked_messages_fail_after_the_wait_or_go_to_a_new_node() {
        let (router, routes_tx, cancel) = start(10);
        let (reply, mut replies) = mpsc::unbounded_channel();
        let mut rng = SmallRng::seed_from_u64(1);

        router.route(forward(1, &reply), None, &mut rng);
        let started = Instant::now();
        let done = replies.recv().await.unwrap();
        assert!(matches!(&done.outcome, Outcome::NotStored(r) if &**r == NO_DATA_NODES));
        assert_eq!(started.elapsed(), Duration::from_secs(1));

        router.route(forward(2, &reply), None, &mut rng);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (queue, mut a_rx) = mpsc::unbounded_channel();
        let a = NodeHandle {
            conn: 1,
            node: "a".parse().unwrap(),
            queue,
            load: Arc::default(),
            one_at_a_time: false,
        };
        routes_tx.send(Arc::new(Routes::new(vec![a]))).unwrap();
        assert_eq!(a_rx.recv().await.unwrap().id().seq, 2);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_waiting_room_refuses_at_once() {
        let (router, _routes_tx, cancel) = start(3);
        let (reply, mut replies) = mpsc::unbounded_channel();
        let mut rng = SmallRng::seed_from_u64(1);
        for seq in 1..=5 {
            router.route(forward(seq, &reply), None, &mut rng);
        }
        // Two did not fit and are refused before any wait is over.
        let started = Instant::now();
        let first = replies.recv().await.unwrap();
        let second = replies.recv().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!((first.slot, second.slot), (4, 5));
        assert!(matches!(&first.outcome, Outcome::NotStored(r) if &**r == NO_DATA_NODES));
        for _ in 0..3 {
            replies.recv().await.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_answers_every_waiting_message() {
        let (router, _routes_tx, cancel) = start(10);
        let (reply, mut replies) = mpsc::unbounded_channel();
        let mut rng = SmallRng::seed_from_u64(1);
        router.route(forward(1, &reply), None, &mut rng);
        tokio::task::yield_now().await;
        cancel.cancel();
        let done = replies.recv().await.unwrap();
        assert!(
            matches!(&done.outcome, Outcome::NotStored(r) if &**r == "head node shutting down")
        );
    }
}
