//! Replicated, idempotent writes with real data nodes, in one process.

use std::collections::HashMap;
use std::time::Duration;

use headnode::membership::Event;
use protocol::client::StoreReply;
use protocol::ids::MessageId;
use tokio::time::Instant;

use crate::support::{Cluster, fast_config, keyed_client, send_keyed};

fn replicated(replicas: usize, min_replicas: usize) -> headnode::Config {
    headnode::Config {
        replicas,
        min_replicas,
        ..fast_config()
    }
}

fn stored(reply: &StoreReply) -> (Vec<String>, MessageId) {
    match reply {
        StoreReply::Stored { holders, id } => (holders.clone(), *id),
        StoreReply::Error(reason) => panic!("not stored: {reason}"),
    }
}

/// Per node, each key's ids, one entry per record.
fn stored_keys(cluster: &Cluster) -> HashMap<String, HashMap<String, Vec<MessageId>>> {
    let mut all = HashMap::new();
    for node in &cluster.nodes {
        let path = node.data_dir.join(datanode::storage::DATA_FILE);
        let contents = std::fs::read(&path).unwrap_or_default();
        let mut keys: HashMap<String, Vec<MessageId>> = HashMap::new();
        for line in contents.split_inclusive(|&b| b == b'\n') {
            let record = datanode::storage::parse_line(line).unwrap();
            if let (Some(key), Some(id)) = (record.key, record.id) {
                keys.entry(key.to_string()).or_default().push(id);
            }
        }
        all.insert(node.id.clone(), keys);
    }
    all
}

async fn start_with_nodes(config: headnode::Config, nodes: &[&str]) -> Cluster {
    let mut cluster = Cluster::start(config).await;
    for id in nodes {
        let config = cluster.node_config(id);
        cluster.add_node(config).await;
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_copy_is_written_before_the_answer_and_the_reply_names_them() {
    let cluster = start_with_nodes(replicated(2, 2), &["dn1", "dn2", "dn3"]).await;
    let mut client = keyed_client(cluster.addr, "c1").await;
    let mut ids = Vec::new();
    for seq in 1..=60 {
        let (holders, id) = stored(&send_keyed(&mut client, seq, "numero random: 5").await);
        assert_eq!(holders.len(), 2, "{holders:?}");
        assert_ne!(holders[0], holders[1]);
        // Both are written and synced before the answer.
        let keys = stored_keys(&cluster);
        for holder in &holders {
            assert_eq!(keys[holder][&format!("c1/{seq}")], vec![id], "{holder}");
        }
        ids.push(id);
    }
    let per_node: Vec<usize> = stored_keys(&cluster).values().map(HashMap::len).collect();
    assert_eq!(per_node.iter().sum::<usize>(), 120, "{per_node:?}");
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_key_gets_its_original_id_and_no_second_copy() {
    let cluster = start_with_nodes(replicated(2, 2), &["dn1", "dn2", "dn3"]).await;
    let mut client = keyed_client(cluster.addr, "c-resend").await;
    let (holders, first) = stored(&send_keyed(&mut client, 7, "hola").await);
    // The same connection, then a new one after the first is gone.
    let (_, again) = stored(&send_keyed(&mut client, 7, "hola").await);
    drop(client);
    let mut client = keyed_client(cluster.addr, "c-resend").await;
    let (holders_later, later) = stored(&send_keyed(&mut client, 7, "hola").await);
    assert_eq!((again, later), (first, first));
    let mut sorted = holders.clone();
    sorted.sort();
    let mut sorted_later = holders_later;
    sorted_later.sort();
    assert_eq!(sorted, sorted_later);
    // The same text under another key is another message.
    let (_, other) = stored(&send_keyed(&mut client, 8, "hola").await);
    assert_ne!(other, first);
    let copies: usize = stored_keys(&cluster)
        .values()
        .map(|keys| keys.get("c-resend/7").map_or(0, Vec::len))
        .sum();
    assert_eq!(copies, 2, "one copy per replica");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_nodes_get_a_clear_error_and_resends_are_stored_twice_once_a_node_joins() {
    let mut cluster = start_with_nodes(replicated(2, 2), &["dn1"]).await;
    let mut client = keyed_client(cluster.addr, "c-few").await;
    let started = Instant::now();
    let reply = send_keyed(&mut client, 1, "numero random: 1").await;
    assert_eq!(
        reply,
        StoreReply::Error("not enough data nodes (1 live, 2 required)".into())
    );
    // The bounded wait, not a hang.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stored_keys(&cluster)["dn1"].is_empty(),
        "no lone copy is written"
    );

    let config = cluster.node_config("dn2");
    cluster.add_node(config).await;
    let (holders, id) = stored(&send_keyed(&mut client, 1, "numero random: 1").await);
    assert_eq!(holders.len(), 2);
    let keys = stored_keys(&cluster);
    assert_eq!(keys["dn1"]["c-few/1"], vec![id]);
    assert_eq!(keys["dn2"]["c-few/1"], vec![id]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_head_node_answers_resends_with_the_original_id() {
    let mut cluster = start_with_nodes(replicated(2, 2), &["dn1", "dn2", "dn3"]).await;
    let mut client = keyed_client(cluster.addr, "c-restart").await;
    let mut first = HashMap::new();
    for seq in 1..=20 {
        first.insert(
            seq,
            stored(&send_keyed(&mut client, seq, "numero random: 9").await).1,
        );
    }
    drop(client);
    let restarted = Instant::now();
    cluster.restart_head().await;
    // Every data node reconnects and reports what it holds.
    for _ in 0..3 {
        cluster
            .wait_for("a data node to rejoin", |e| {
                matches!(e, Event::Joined { .. })
            })
            .await;
    }
    let mut client = keyed_client(cluster.addr, "c-restart").await;
    for seq in [1, 7, 20] {
        let (holders, id) = stored(&send_keyed(&mut client, seq, "numero random: 9").await);
        assert_eq!(id, first[&seq], "key c-restart/{seq}");
        assert_eq!(holders.len(), 2);
    }
    let (_, new) = stored(&send_keyed(&mut client, 21, "numero random: 9").await);
    assert!(
        new.epoch > first[&1].epoch,
        "a new head node run, a newer epoch"
    );
    println!(
        "head restart: restart to a resend answered from the data nodes' reports in {:?}",
        restarted.elapsed()
    );
    for (node, keys) in stored_keys(&cluster) {
        for (key, ids) in keys {
            assert_eq!(ids.len(), 1, "{node} holds {key} {} times", ids.len());
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_node_with_an_older_epoch_cannot_make_a_data_node_store_anything() {
    // dn1 registers with a head node of epoch 2000...
    let mut newer = start_with_nodes(
        headnode::Config {
            id_epoch: Some(2000),
            ..replicated(1, 1)
        },
        &["dn1"],
    )
    .await;
    let mut client = keyed_client(newer.addr, "c-epoch").await;
    stored(&send_keyed(&mut client, 1, "stored by the newer head").await);
    drop(client);
    let dn1_dir = newer.nodes[0].data_dir.clone();
    newer.nodes[0].stop().await.unwrap();
    let before = std::fs::read(dn1_dir.join(datanode::storage::DATA_FILE)).unwrap();

    // ...then, restarted, finds a head node of epoch 1000 at the address.
    let mut stale = Cluster::start(headnode::Config {
        id_epoch: Some(1000),
        ..replicated(1, 1)
    })
    .await;
    let mut config = stale.node_config("dn1");
    config.data_dir = dn1_dir.clone();
    let node = tokio::spawn(datanode::run(config, std::future::pending()));
    let events = stale.events_within(Duration::from_secs(1)).await;
    assert!(
        !events.iter().any(|e| matches!(e, Event::Joined { .. })),
        "{events:?}"
    );
    let mut client = keyed_client(stale.addr, "c-epoch").await;
    let reply = send_keyed(&mut client, 2, "stored by the stale head").await;
    assert!(matches!(reply, StoreReply::Error(_)), "{reply:?}");
    let after = std::fs::read(dn1_dir.join(datanode::storage::DATA_FILE)).unwrap();
    assert_eq!(before, after, "nothing written for the stale head node");
    node.abort();
    stale.stop().await;
    newer.stop().await;
}
