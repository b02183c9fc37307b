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
async fn a_message_that_came_before_any_data_node_gets_no_id_of_an_earlier_head_node() {
    // A first head node stores a message on dn1 under an id of its epoch.
    let mut first = start_with_nodes(replicated(1, 1), &["dn1"]).await;
    let mut client = keyed_client(first.addr, "c-early").await;
    let (_, earlier) = stored(&send_keyed(&mut client, 1, "stored by the first head").await);
    drop(client);
    let dn1_dir = first.nodes[0].data_dir.clone();
    first.nodes[0].stop().await.unwrap();

    // A second head node, from the same first epoch, gets a message before
    // any data node has registered: with time to wait for one, it waited
    // under an id of that epoch, and was written under it once dn1 came,
    // beside the first head node's message of that id.
    let mut next = Cluster::start(headnode::Config {
        no_node_wait: Duration::from_secs(5),
        ..replicated(1, 1)
    })
    .await;
    // Past its --recovery-wait (300 ms), with no member to wait for, it
    // serves clients.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut client = keyed_client(next.addr, "c-early").await;
    client
        .writer
        .send(b"2 sent before any data node")
        .await
        .unwrap();
    // The message is read (and, without a node, answered or left waiting)
    // before dn1 starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut config = next.node_config("dn1");
    config.data_dir = dn1_dir;
    let node = tokio::spawn(datanode::run(config, std::future::pending()));
    next.wait_for(
        "dn1 to join",
        |e| matches!(e, Event::Joined { member, .. } if member.node.as_str() == "dn1"),
    )
    .await;
    let line = test_support::framed::line(&mut client.reader, "the reply").await;
    let reply = match StoreReply::parse(&line).unwrap() {
        // Refused at once, as nothing was stored: sent again now.
        StoreReply::Error(reason) => {
            assert_eq!(reason, protocol::client::NO_DATA_NODES);
            send_keyed(&mut client, 2, "sent before any data node").await
        }
        stored => stored,
    };
    let (_, later) = stored(&reply);
    assert!(
        later.epoch > earlier.epoch,
        "{later} is given above the epoch of {earlier}, which dn1 held"
    );
    node.abort();
    next.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_node_started_below_a_data_nodes_epoch_goes_above_it_before_it_stores() {
    // dn1 registers with a head node at epoch 2000...
    let mut newer = start_with_nodes(
        headnode::Config {
            id_epoch: 2000,
            ..replicated(1, 1)
        },
        &["dn1"],
    )
    .await;
    let mut client = keyed_client(newer.addr, "c-epoch").await;
    let (_, first) = stored(&send_keyed(&mut client, 1, "stored by the first head").await);
    drop(client);
    let dn1_dir = newer.nodes[0].data_dir.clone();
    newer.nodes[0].stop().await.unwrap();

    // ...then, restarted, finds a head node that starts from epoch 1000
    // (as one whose clock is behind once did): it goes above 2000 before
    // it welcomes dn1, so every id it gives is newer than dn1's.
    let mut next = Cluster::start(headnode::Config {
        id_epoch: 1000,
        ..replicated(1, 1)
    })
    .await;
    let mut config = next.node_config("dn1");
    config.data_dir = dn1_dir.clone();
    let node = tokio::spawn(datanode::run(config, std::future::pending()));
    next.wait_for(
        "dn1 to join",
        |e| matches!(e, Event::Joined { member, .. } if member.node.as_str() == "dn1"),
    )
    .await;
    let mut client = keyed_client(next.addr, "c-epoch").await;
    let (_, second) = stored(&send_keyed(&mut client, 2, "stored by the next head").await);
    assert_eq!(first.epoch, 2000);
    assert_eq!(second.epoch, 2001, "above the epoch dn1 had accepted");
    let epoch_file = std::fs::read_to_string(dn1_dir.join(datanode::storage::EPOCH_FILE)).unwrap();
    assert!(epoch_file.starts_with("2001 "), "{epoch_file}");
    node.abort();
    next.stop().await;
    newer.stop().await;
}
