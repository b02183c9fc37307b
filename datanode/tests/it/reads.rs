//! Reads from a scripted head node: `get`, `getkey` and `scan` over the
//! data node's connection, across segments, and their bounds.

use protocol::datanode::{FromDataNode, ReadRecord};
use protocol::ids::MessageId;

use crate::support::ScriptedHead;

fn id(text: &str) -> MessageId {
    text.parse().unwrap()
}

/// Reads lines until `count` answers to reads came (acks are skipped).
async fn read_answers(head: &mut ScriptedHead, count: usize) -> Vec<FromDataNode> {
    let mut answers = Vec::new();
    while answers.len() < count {
        let line = head.next_line().await.expect("closed");
        match FromDataNode::parse(&line).unwrap() {
            FromDataNode::Stored(_) | FromDataNode::Pong(_) => {}
            answer => answers.push(answer),
        }
    }
    answers
}

fn found(answer: &FromDataNode) -> &ReadRecord {
    match answer {
        FromDataNode::Found { record, .. } => record,
        other => panic!("not found: {other:?}"),
    }
}

#[tokio::test]
async fn messages_are_read_back_by_id_by_key_and_in_id_order_across_segments() {
    let mut head = ScriptedHead::start_with_http(|config| config.store.segment_bytes = 200).await;
    for seq in 1..=10 {
        head.send_keyed(
            &format!("7-{seq}"),
            &format!("c-1/{seq}"),
            &format!("hola {seq}"),
        )
        .await;
        head.expect_ack(&format!("7-{seq}")).await;
    }
    let segments = std::fs::read_dir(head.dir.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("data.0")
        })
        .count();
    assert!(segments >= 2, "{segments} segments");

    head.send_lines(&[
        "get 1 7-2".into(),
        "getkey 2 c-1/9".into(),
        "get 3 7-99".into(),
        "getkey 4 c-2/1".into(),
        "scan 5 start 4".into(),
        "scan 6 7-8 1000".into(),
        "scan 7 start 1001".into(),
    ])
    .await;
    let mut answers = read_answers(&mut head, 13).await;
    // Refusals come at once, with the batch; the reads follow in order.
    answers.sort_by_key(|a| match a {
        FromDataNode::Found { req, .. }
        | FromDataNode::NotFound { req, .. }
        | FromDataNode::Scanned { req, .. }
        | FromDataNode::ReadError { req, .. } => *req,
        _ => 0,
    });
    let record = found(&answers[0]);
    assert_eq!(
        (
            record.id,
            record.text.as_str(),
            record.key.as_ref().map(ToString::to_string)
        ),
        (id("7-2"), "hola 2", Some("c-1/2".into()))
    );
    assert!(record.stored_ms > 1_700_000_000_000, "{}", record.stored_ms);
    assert_eq!(found(&answers[1]).text, "hola 9");
    assert_eq!(
        answers[2],
        FromDataNode::NotFound {
            req: 3,
            removed: false
        }
    );
    assert_eq!(
        answers[3],
        FromDataNode::NotFound {
            req: 4,
            removed: false
        }
    );
    let scanned: Vec<MessageId> = answers[4..8].iter().map(|a| found(a).id).collect();
    assert_eq!(scanned, [id("7-1"), id("7-2"), id("7-3"), id("7-4")]);
    assert_eq!(
        answers[8],
        FromDataNode::Scanned {
            req: 5,
            count: 4,
            last: Some(id("7-4")),
            more: true
        }
    );
    assert_eq!(found(&answers[9]).id, id("7-9"));
    assert_eq!(found(&answers[10]).id, id("7-10"));
    assert!(
        matches!(
            &answers[11],
            FromDataNode::Scanned {
                req: 6,
                count: 2,
                more: false,
                ..
            }
        ),
        "{:?}",
        answers[11]
    );
    assert!(
        matches!(&answers[12], FromDataNode::ReadError { req: 7, reason } if reason.contains("over the most one scan may ask, 1000")),
        "{:?}",
        answers[12]
    );
    // Four gets (getkey counted as get, one answered from the key index
    // alone), two scans of 4 and 2 records, one refused.
    let metrics = head.metrics().await;
    for series in [
        "msgstore_datanode_reads_total{kind=\"get\"} 4\n",
        "msgstore_datanode_reads_total{kind=\"scan\"} 2\n",
        "msgstore_datanode_records_scanned_total 6\n",
        "msgstore_datanode_read_failures_total 1\n",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
    head.stop().await.unwrap();
}

#[tokio::test]
async fn reads_past_the_bound_are_refused_and_the_connection_goes_on() {
    let mut head = ScriptedHead::start(|_| {}).await;
    let ids = head.send(1).await;
    head.expect_ack(&ids[0]).await;
    let burst: Vec<String> = (1..=20)
        .map(|req| format!("scan {req} start 1000"))
        .collect();
    head.send_lines(&burst).await;
    let answers = read_answers(&mut head, 20 + 16).await;
    let refused = answers
        .iter()
        .filter(|a| matches!(a, FromDataNode::ReadError { reason, .. } if reason.starts_with("too many reads in flight (at most 16)")))
        .count();
    let scanned = answers
        .iter()
        .filter(|a| matches!(a, FromDataNode::Scanned { count: 1, .. }))
        .count();
    assert_eq!((refused, scanned), (4, 16), "{answers:?}");
    // Still serving writes and reads.
    let ids = head.send(1).await;
    head.expect_ack(&ids[0]).await;
    head.send_lines(&[format!("get 99 {}", ids[0])]).await;
    let answer = read_answers(&mut head, 1).await;
    assert_eq!(found(&answer[0]).id, id(&ids[0]));
    head.stop().await.unwrap();
}
