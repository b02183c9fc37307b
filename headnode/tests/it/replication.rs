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

/// A scripted data node's next `mensaje`, within 10 s: its id and the
/// whole line. Pings and other lines are skipped.
async fn next_store(node: &mut protocol::Connection) -> (MessageId, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no mensaje within 10 s");
        let line = test_support::framed::line(&mut node.reader, "a mensaje").await;
        if let Some(rest) = line.strip_prefix("mensaje ") {
            let id = rest
                .split([' ', ':'])
                .next()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("no id in {line:?}"));
            return (id, line);
        }
    }
}

/// Waits until `node` has joined: the head node routes to it from then on.
async fn joined(cluster: &mut Cluster, node: &str) {
    cluster
        .wait_for(
            &format!("{node} to join"),
            |e| matches!(e, Event::Joined { member, .. } if member.node.as_str() == node),
        )
        .await;
}

/// A head node whose scripted nodes answer no heartbeat: the detector
/// must not evict them while the test drives them by hand.
fn scripted(replicas: usize, min_replicas: usize) -> headnode::Config {
    let mut config = replicated(replicas, min_replicas);
    config.detector.suspect_after = Duration::from_secs(60);
    config.detector.hung_grace = Duration::from_secs(60);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_holds_the_key_under_another_id_gives_the_answer_that_id() {
    use test_support::scripted_node::register;
    // Fails without the adoption: the client was answered with the id it
    // was sent under, which the node does not hold.
    let mut cluster = Cluster::start(scripted(1, 1)).await;
    let (mut node, welcome) = register(cluster.addr, "dn1", 1).await;
    assert!(welcome.starts_with("welcome dn1 "), "{welcome}");
    joined(&mut cluster, "dn1").await;
    let mut client = keyed_client(cluster.addr, "k").await;
    client.writer.send(b"1 hola").await.unwrap();
    let (sent, line) = next_store(&mut node).await;
    assert!(line.contains(" k/1: hola"), "{line}");
    let held: MessageId = "7-3".parse().unwrap();
    node.writer
        .send(format!("recibido {sent} {held}").as_bytes())
        .await
        .unwrap();
    let answer = test_support::framed::line(&mut client.reader, "the answer").await;
    assert_eq!(answer, format!("dn1 , mensaje: recibido {held}"));
    // A resend gets the same id from the key table, with nothing sent.
    let again = send_keyed(&mut client, 1, "hola").await;
    assert_eq!(stored(&again), (vec!["dn1".to_owned()], held));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_id_is_copied_to_another_node_and_the_answer_names_only_its_holders() {
    use test_support::scripted_node::register;
    // R=2 W=2, three nodes: the first to answer wrote the id it was sent,
    // the second held the key under another id. The answer must name the
    // second and a third node that got a copy under the held id: never the
    // first, whose copy is of another id. Without the adoption both were
    // named under the id sent, which the second does not hold.
    let cluster = Cluster::start(scripted(2, 2)).await;
    let mut nodes = Vec::new();
    for name in ["dn1", "dn2", "dn3"] {
        let (node, welcome) = register(cluster.addr, name, 1).await;
        assert!(
            welcome.starts_with(&format!("welcome {name} ")),
            "{welcome}"
        );
        nodes.push((name, node));
    }
    let mut client = keyed_client(cluster.addr, "k").await;
    client.writer.send(b"1 hola").await.unwrap();
    // Two of the three are sent a copy: find them.
    let mut sent_to = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent_to.len() < 2 && Instant::now() < deadline {
        for (at, (_, node)) in nodes.iter_mut().enumerate() {
            if sent_to.iter().any(|(i, _)| *i == at) {
                continue;
            }
            if let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_millis(50), node.reader.read_frame()).await
                && let Some(rest) = line.as_str().strip_prefix("mensaje ")
            {
                let id: MessageId = rest.split([' ', ':']).next().unwrap().parse().unwrap();
                sent_to.push((at, id));
            }
        }
    }
    assert_eq!(sent_to.len(), 2, "two copies sent");
    let (fresh, sent) = sent_to[0];
    let (holder, _) = sent_to[1];
    let third = (0..3).find(|i| *i != fresh && *i != holder).unwrap();
    let held: MessageId = "7-3".parse().unwrap();
    nodes[fresh]
        .1
        .writer
        .send(format!("recibido {sent}").as_bytes())
        .await
        .unwrap();
    // Let the first answer land before the second.
    tokio::time::sleep(Duration::from_millis(100)).await;
    nodes[holder]
        .1
        .writer
        .send(format!("recibido {sent} {held}").as_bytes())
        .await
        .unwrap();
    let (copy_id, line) = next_store(&mut nodes[third].1).await;
    assert_eq!(copy_id, held, "the copy is made under the held id: {line}");
    assert!(line.contains(" k/1: hola"), "{line}");
    nodes[third]
        .1
        .writer
        .send(format!("recibido {held}").as_bytes())
        .await
        .unwrap();
    let answer = test_support::framed::line(&mut client.reader, "the answer").await;
    let (holders, id) = stored(&StoreReply::parse(&answer).unwrap());
    assert_eq!(id, held, "{answer}");
    let mut holders = holders;
    holders.sort();
    let mut expected = vec![nodes[holder].0.to_owned(), nodes[third].0.to_owned()];
    expected.sort();
    assert_eq!(holders, expected, "{answer}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_with_a_new_data_directory_is_no_longer_named_as_a_holder() {
    // Before, the key table still named dn1 as the holder of k/1 after dn1
    // came back empty, and the resend was answered from it: a reply naming
    // a node whose file lacks the id.
    let mut cluster = Cluster::start(replicated(1, 1)).await;
    let config = cluster.node_config("dn1");
    let dir = config.data_dir.clone();
    cluster.add_node(config).await;
    let mut client = keyed_client(cluster.addr, "k").await;
    let (holders, id) = stored(&send_keyed(&mut client, 1, "hola").await);
    assert_eq!(holders, ["dn1"]);
    cluster.nodes[0].stop().await.unwrap();
    cluster.nodes[0].released().await;
    std::fs::remove_dir_all(&dir).unwrap();
    cluster.nodes.clear();
    cluster.add_node(cluster.node_config("dn1")).await;
    let (holders, again) = stored(&send_keyed(&mut client, 1, "hola").await);
    assert_eq!((holders.as_slice(), again), (&["dn1".to_owned()][..], id));
    let on_disk = stored_keys(&cluster);
    assert_eq!(
        on_disk["dn1"].get("k/1"),
        Some(&vec![id]),
        "the answer names dn1: it holds the id again"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_a_refused_registration_reported_are_discarded() {
    use bytes::BytesMut;
    use protocol::datanode::FromDataNode;
    use test_support::scripted_node::welcome;
    // A second process claiming dn1's name while dn1 is live is refused;
    // before, the keys it reported stayed in the key table under dn1, and
    // a client's k/1 was answered 'dn1 , recibido 7-3' with nothing sent.
    let mut cluster = Cluster::start(replicated(1, 1)).await;
    cluster.add_node(cluster.node_config("dn1")).await;
    let (mut impostor, answer) = welcome(cluster.addr, "dn1", u64::MAX / 2).await;
    assert!(answer.starts_with("welcome dn1 "), "{answer}");
    let held: MessageId = "7-3".parse().unwrap();
    let mut buf = BytesMut::new();
    FromDataNode::Held {
        client: "k".parse().unwrap(),
        keys: vec![(1, held)],
    }
    .encode(&mut buf);
    impostor.writer.send(&buf).await.unwrap();
    impostor.writer.send(b"ready").await.unwrap();
    let refusal = test_support::framed::line(&mut impostor.reader, "the refusal").await;
    assert!(refusal.starts_with("ERROR "), "{refusal}");
    let mut client = keyed_client(cluster.addr, "k").await;
    let (holders, id) = stored(&send_keyed(&mut client, 1, "hola").await);
    assert_eq!(holders, ["dn1"]);
    assert_ne!(id, held, "the refused report named a copy nobody holds");
    assert_eq!(stored_keys(&cluster)["dn1"].get("k/1"), Some(&vec![id]));
    cluster.stop().await;
}
