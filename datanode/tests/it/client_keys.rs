//! Client keys, seen from a scripted head node: a key the node holds is
//! answered with its id and never written again, a repeated key in one
//! batch is written once, the index survives a restart, a withdrawn
//! message is never written, the report after `welcome` lists the keys,
//! and a key leaves the index with the segment retention removes.

use datanode::storage::{parse_line, stored_ids};
use protocol::ids::MessageId;

use crate::support::ScriptedHead;

fn id(text: &str) -> MessageId {
    text.parse().unwrap()
}

/// Every record's `(id, key)` in the data file, in order.
fn records(head: &ScriptedHead) -> Vec<(String, Option<String>)> {
    let contents = std::fs::read(head.data_file()).unwrap();
    contents
        .split_inclusive(|&b| b == b'\n')
        .map(|line| parse_line(line).unwrap())
        .map(|r| (r.id.unwrap().to_string(), r.key.map(|k| k.to_string())))
        .collect()
}

#[tokio::test]
async fn a_held_key_is_answered_without_a_second_write() {
    let mut head = ScriptedHead::start(|_| {}).await;
    head.send_keyed("7-1", "c-1/1", "first").await;
    head.expect_ack("7-1").await;
    // The same message again (the head node resends after a timeout).
    head.send_keyed("7-1", "c-1/1", "first").await;
    head.expect_ack("7-1").await;
    assert_eq!(records(&head), [("7-1".into(), Some("c-1/1".into()))]);
}

#[tokio::test]
async fn a_held_key_under_another_id_is_answered_with_the_held_id() {
    let mut head = ScriptedHead::start(|_| {}).await;
    head.send_keyed("7-1", "c-1/1", "first").await;
    head.expect_ack("7-1").await;
    // A restarted head node gave the resend a new id.
    head.send_keyed("8-1", "c-1/1", "first").await;
    assert_eq!(head.next_line().await.as_deref(), Some("recibido 8-1 7-1"));
    assert_eq!(records(&head), [("7-1".into(), Some("c-1/1".into()))]);
}

#[tokio::test]
async fn a_key_repeated_in_one_batch_is_written_once() {
    let mut head = ScriptedHead::start(|_| {}).await;
    head.send_lines(&[
        "mensaje 7-1 c-1/1: first".into(),
        "mensaje 7-2 c-1/2: other".into(),
        "mensaje 7-1 c-1/1: first".into(),
        "mensaje 7-3 c-1/1: first".into(),
        "ping 1".into(),
    ])
    .await;
    head.expect_ack("7-1").await;
    head.expect_ack("7-2").await;
    head.expect_ack("7-1").await;
    assert_eq!(head.next_line().await.as_deref(), Some("recibido 7-3 7-1"));
    assert_eq!(head.next_line().await.as_deref(), Some("pong 1"));
    assert_eq!(
        records(&head),
        [
            ("7-1".into(), Some("c-1/1".into())),
            ("7-2".into(), Some("c-1/2".into())),
        ]
    );
}

#[tokio::test]
async fn a_restarted_node_rebuilds_its_keys_from_data_txt_and_reports_them() {
    let mut head = ScriptedHead::start(|_| {}).await;
    let mut lines: Vec<String> = (1..=70)
        .map(|n| format!("mensaje 7-{n} c-a/{n}: a{n}"))
        .collect();
    lines.push("mensaje 7-71 c-b/1: b".into());
    lines.push("mensaje 7-72: unkeyed".into());
    lines.push("members dn1 dn2".into());
    head.send_lines(&lines).await;
    for n in 1..=72 {
        head.expect_ack(&format!("7-{n}")).await;
    }
    let dir = head.stop_keeping_dir().await;

    let mut head = ScriptedHead::start_in(dir, |_| {}).await;
    head.welcome(8).await;
    let report = head.read_report().await;
    let mut held = report.held.clone();
    held.sort();
    let mut expected: Vec<(String, MessageId)> = (1..=70)
        .map(|n| (format!("c-a/{n}"), id(&format!("7-{n}"))))
        .collect();
    expected.push(("c-b/1".into(), id("7-71")));
    expected.sort();
    assert_eq!(held, expected);
    assert_eq!(
        report.peers,
        Some(vec!["dn1".into(), "dn2".into()]),
        "the member set is kept across a restart"
    );
    head.send_keyed("8-1", "c-a/3", "a3").await;
    assert_eq!(head.next_line().await.as_deref(), Some("recibido 8-1 7-3"));
    assert_eq!(stored_ids(&head.data_file()).unwrap().len(), 72);
}

#[tokio::test]
async fn the_report_names_the_last_members_list() {
    let mut head = ScriptedHead::start(|_| {}).await;
    head.send_lines(&["members dn1 dn3".into(), "ping 1".into()])
        .await;
    assert_eq!(head.next_line().await.as_deref(), Some("pong 1"));
    // The head node goes away; the node reconnects to the next one.
    head.conn.writer.send(b"ERROR going away").await.unwrap();
    head.reconnected().await;
    head.welcome(2).await;
    let report = head.read_report().await;
    assert_eq!(report.peers, Some(vec!["dn1".into(), "dn3".into()]));
}

#[tokio::test]
async fn a_withdrawn_message_is_answered_withdrawn_and_never_written() {
    let mut head = ScriptedHead::start(|_| {}).await;
    head.send_lines(&[
        "mensaje 7-1 c-1/1: kept".into(),
        "mensaje 7-2 c-1/2: withdrawn".into(),
        "mensaje 7-3: kept too".into(),
        "withdraw 7-2".into(),
        // Already written, or never sent: ignored.
        "withdraw 7-99".into(),
    ])
    .await;
    head.expect_ack("7-1").await;
    assert_eq!(head.next_line().await.as_deref(), Some("withdrawn 7-2"));
    head.expect_ack("7-3").await;
    // A withdraw after the write changes nothing; a later line that reuses
    // the id is written.
    head.send_lines(&[
        "withdraw 7-1".into(),
        "mensaje 7-2 c-1/2: sent again".into(),
    ])
    .await;
    head.expect_ack("7-2").await;
    assert_eq!(
        records(&head),
        [
            ("7-1".into(), Some("c-1/1".into())),
            ("7-3".into(), None),
            ("7-2".into(), Some("c-1/2".into())),
        ]
    );
}

#[tokio::test]
async fn a_batch_cut_off_by_the_end_of_its_session_is_never_written_nor_its_keys_held() {
    let mut head = ScriptedHead::start(|_| {}).await;
    // One write: the message is staged, then the bad line ends the session
    // before the batch's commit.
    head.send_lines(&[
        "mensaje 7-1 c-1/1: cut off".into(),
        "not a line of the protocol".into(),
    ])
    .await;
    head.reconnected().await;
    head.welcome(8).await;
    let report = head.read_report().await;
    assert!(
        report.held.is_empty(),
        "a key of a record never written is not held: {:?}",
        report.held
    );
    // Its resend is written under the new id, and the cut-off copy never.
    head.send_keyed("8-1", "c-1/1", "cut off").await;
    head.expect_ack("8-1").await;
    assert_eq!(records(&head), [("8-1".into(), Some("c-1/1".into()))]);
}

#[tokio::test]
async fn a_key_whose_segment_retention_removed_is_written_again_when_resent() {
    let mut head = ScriptedHead::start(|config| {
        config.store.segment_bytes = 200;
        config.store.retention.max_bytes = Some(600);
    })
    .await;
    for seq in 1..=10 {
        head.send_keyed(&format!("7-{seq}"), &format!("c-1/{seq}"), "hola")
            .await;
        head.expect_ack(&format!("7-{seq}")).await;
    }
    assert!(
        !head.dir.path().join("data.000001.txt").exists(),
        "7-1's segment was removed"
    );
    // A new head node resends c-1/1 under a new id: nothing holds it now.
    head.send_keyed("8-1", "c-1/1", "hola").await;
    assert_eq!(head.next_line().await.as_deref(), Some("recibido 8-1"));
    assert!(stored_ids(&head.data_file()).unwrap().contains(&id("8-1")));
}

#[tokio::test]
async fn what_retention_removed_is_told_after_the_next_pong_and_in_every_report() {
    let retaining = |config: &mut datanode::Config| {
        config.store.segment_bytes = 200;
        config.store.retention.max_bytes = Some(600);
    };
    let mut head = ScriptedHead::start(retaining).await;
    for seq in 1..=10 {
        head.send_keyed(&format!("7-{seq}"), &format!("c-1/{seq}"), "hola")
            .await;
        head.expect_ack(&format!("7-{seq}")).await;
    }
    head.send_lines(&["ping 1".to_owned()]).await;
    assert_eq!(head.next_line().await.as_deref(), Some("pong 1"));
    let told = head.next_line().await.unwrap_or_default();
    let covers =
        |ranges: &[protocol::datanode::IdRange]| ranges.iter().any(|r| r.contains(id("7-1")));
    match protocol::datanode::FromDataNode::parse(&told) {
        Ok(protocol::datanode::FromDataNode::Removed(ranges)) => {
            assert!(covers(&ranges), "{told}");
            assert!(!ranges.iter().any(|r| r.contains(id("7-10"))), "{told}");
        }
        other => panic!("expected a removed line after the pong, got {told:?} ({other:?})"),
    }
    // Restarted, it names them in its report.
    let dir = head.stop_keeping_dir().await;
    let mut head = ScriptedHead::start_in(dir, retaining).await;
    // Above epoch 7, which the messages' ids raised the node's fence to.
    head.welcome(8).await;
    let report = head.read_report().await;
    assert!(covers(&report.removed), "{report:?}");
    head.stop().await.unwrap();
}
