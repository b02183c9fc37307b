//! The data node's group commit, seen from a scripted head node: a batch
//! smaller than the one before waits (up to `commit_linger`) for the rest
//! of its burst, and is committed with it in one write.

use std::time::{Duration, Instant};

use datanode::storage::parse_line;

use crate::support::ScriptedHead;

async fn start(linger: Duration) -> ScriptedHead {
    ScriptedHead::start(|config| config.commit_linger = linger).await
}

/// The timestamps of these ids' records, in file order: one per committed batch.
fn stamps_of(head: &ScriptedHead, ids: &[String]) -> Vec<String> {
    let contents = std::fs::read(head.data_file()).unwrap();
    contents
        .split_inclusive(|&b| b == b'\n')
        .filter_map(|line| parse_line(line).ok())
        .filter(|record| record.id.is_some_and(|id| ids.contains(&id.to_string())))
        .map(|record| record.timestamp.to_owned())
        .collect()
}

#[tokio::test]
async fn a_burst_that_trickles_in_is_committed_together() {
    let mut head = start(Duration::from_secs(1)).await;
    for id in head.send(10).await {
        head.expect_ack(&id).await;
    }
    // One message, then the rest of its burst 50 ms later.
    let sent = Instant::now();
    let mut burst = head.send(1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    burst.extend(head.send(9).await);
    for id in &burst {
        head.expect_ack(id).await;
    }
    let waited = sent.elapsed();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    // One batch: every line carries the batch's one timestamp, taken when
    // the first of them was staged.
    // As large as the last batch: committed without waiting out the linger.
    assert!(waited < Duration::from_millis(900), "{waited:?}");
    let stamps = stamps_of(&head, &burst);
    assert_eq!(stamps.len(), 10, "{stamps:?}");
    assert!(stamps.iter().all(|s| *s == stamps[0]), "{stamps:?}");
}

#[tokio::test]
async fn a_small_batch_waits_no_longer_than_the_linger() {
    let linger = Duration::from_millis(300);
    let mut head = start(linger).await;
    for id in head.send(10).await {
        head.expect_ack(&id).await;
    }
    let sent = Instant::now();
    let lone = head.send(1).await;
    head.expect_ack(&lone[0]).await;
    let waited = sent.elapsed();
    assert!(waited >= linger, "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // A batch as large as the last one is committed without waiting.
    let sent = Instant::now();
    for id in head.send(1).await {
        head.expect_ack(&id).await;
    }
    assert!(sent.elapsed() < linger, "{:?}", sent.elapsed());
}

#[tokio::test]
async fn without_linger_a_lone_message_is_committed_at_once() {
    let mut head = start(Duration::ZERO).await;
    for id in head.send(10).await {
        head.expect_ack(&id).await;
    }
    let sent = Instant::now();
    let lone = head.send(1).await;
    head.expect_ack(&lone[0]).await;
    // Generous: only a linger would make this take 1 s.
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn a_batch_of_consecutive_ids_is_acknowledged_in_one_line() {
    let mut head = start(Duration::from_secs(1)).await;
    // Sent at once: one batch, ids 7-1 to 7-20 one after another.
    let ids = head.send(20).await;
    assert_eq!(ids.first().map(String::as_str), Some("7-1"));
    let first = head.next_raw_line().await.unwrap();
    let mut acked = 0;
    let mut line = first.clone();
    // However the batch was split, its runs cover every id in order.
    loop {
        let (start, count) = match line.split(' ').collect::<Vec<_>>()[..] {
            ["recibidos", start, count] => (start.to_owned(), count.parse::<usize>().unwrap()),
            ["recibido", start] => (start.to_owned(), 1),
            _ => panic!("not an acknowledgement: {line}"),
        };
        assert_eq!(start, ids[acked], "{line}");
        acked += count;
        if acked == ids.len() {
            break;
        }
        line = head.next_raw_line().await.unwrap();
    }
    assert!(first.starts_with("recibidos 7-1 "), "{first}");
}
