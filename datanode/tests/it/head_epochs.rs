//! Head-node epochs, seen from a scripted head node: a data node refuses a
//! head node older than the newest it has been welcomed by, stores nothing
//! for it, keeps trying, and remembers the epoch across a restart.

use datanode::storage::{EPOCH_FILE, stored_ids};

use crate::support::ScriptedHead;

#[tokio::test]
async fn an_older_head_node_is_refused_and_nothing_is_stored_for_it() {
    let mut head = ScriptedHead::start_in(tempfile::tempdir().unwrap(), |config| {
        config.min_backoff = std::time::Duration::from_millis(20);
    })
    .await;
    head.welcome(2000).await;
    head.read_report().await;
    let epoch_file = head.dir.path().join(EPOCH_FILE);
    assert_eq!(std::fs::read_to_string(&epoch_file).unwrap(), "2000\n");
    head.conn.writer.send(b"ERROR going away").await.unwrap();

    // A head node of an older run comes back at the address.
    head.reconnected().await;
    head.welcome(1000).await;
    let refusal = head.next_line().await.unwrap();
    assert!(
        refusal.starts_with("ERROR stale head node: epoch 1000 is older than 2000, "),
        "{refusal}"
    );
    // The node has closed; whatever the stale head node sends is lost.
    let _ = head
        .conn
        .writer
        .send(b"mensaje 1000-1 c-1/1: must not be stored")
        .await;
    assert_eq!(head.next_line().await, None, "the node closed");
    assert!(stored_ids(&head.data_file()).unwrap().is_empty());
    assert_eq!(std::fs::read_to_string(&epoch_file).unwrap(), "2000\n");

    // It keeps trying, and serves a head node as new as the newest seen.
    head.reconnected().await;
    head.welcome(2000).await;
    head.read_report().await;
    head.send_keyed("2000-1", "c-1/1", "stored").await;
    head.expect_ack("2000-1").await;
    assert_eq!(
        stored_ids(&head.data_file()).unwrap(),
        ["2000-1".parse().unwrap()]
    );
}

#[tokio::test]
async fn the_newest_epoch_survives_a_restart() {
    let mut head = ScriptedHead::start_in(tempfile::tempdir().unwrap(), |_| {}).await;
    head.welcome(5000).await;
    head.read_report().await;
    let dir = head.stop_keeping_dir().await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join(EPOCH_FILE)).unwrap(),
        "5000\n"
    );

    let mut head = ScriptedHead::start_in(dir, |_| {}).await;
    head.welcome(4999).await;
    let refusal = head.next_line().await.unwrap();
    assert!(
        refusal.starts_with("ERROR stale head node: epoch 4999 is older than 5000, "),
        "{refusal}"
    );
    head.reconnected().await;
    head.welcome(6000).await;
    head.read_report().await;
    assert_eq!(
        std::fs::read_to_string(head.dir.path().join(EPOCH_FILE)).unwrap(),
        "6000\n"
    );
}
