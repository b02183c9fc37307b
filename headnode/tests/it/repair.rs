//! Repair with real data nodes, in one process: a node lost with its disk
//! gets its copies made again, with the same id, key and text, and never
//! more than once; a restarted head node checks again and finds nothing to
//! do, and leaves a down member's share alone until it is lost;
//! retention's removals are not brought back, also when the node that
//! removed them is down, and what a node's retention did not remove is not
//! left at one copy; a message no node can confirm is tried again a
//! bounded number of times (scripted data nodes, paused time).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use headnode::membership::Event;
use protocol::client::StoreReply;
use protocol::ids::MessageId;
use protocol::status::StatusSnapshot;
use test_support::http::get;
use tokio::time::Instant;

use crate::support::{Cluster, fast_config, keyed_client, send_keyed};

const REPAIR_AFTER: Duration = Duration::from_millis(500);

fn config() -> headnode::Config {
    headnode::Config {
        replicas: 2,
        min_replicas: 2,
        repair_after: REPAIR_AFTER,
        ..fast_config()
    }
}

async fn status(http: SocketAddr) -> StatusSnapshot {
    serde_json::from_str(&get(http, "/status.json").await.body).unwrap()
}

/// Waits (at most 20 s) until a repair pass whose trigger contains
/// `trigger` has ended; returns the snapshot.
async fn pass_ended(http: SocketAddr, trigger: &str) -> StatusSnapshot {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snapshot = status(http).await;
        if let Some(pass) = &snapshot.totals.repair_pass
            && pass.finished
            && pass.trigger.contains(trigger)
        {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "no repair pass '{trigger}' ended within 20 s: {:?}",
            snapshot.totals
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stores `count` keyed messages through a client connection; their ids,
/// with texts and holders.
async fn store(
    cluster: &Cluster,
    client: &str,
    count: u64,
) -> BTreeMap<MessageId, (String, Vec<String>)> {
    let mut conn = keyed_client(cluster.addr, client).await;
    let mut stored = BTreeMap::new();
    for seq in 1..=count {
        let text = format!("numero random: {}", seq * 7 % 100);
        match send_keyed(&mut conn, seq, &text).await {
            StoreReply::Stored { id, holders } => {
                stored.insert(id, (text, holders));
            }
            StoreReply::Error(reason) => panic!("not stored: {reason}"),
        }
    }
    stored
}

/// Per node: each id it holds (in every data file), with its key and
/// text, and how many records it has.
type Held = HashMap<MessageId, (Option<String>, String, usize)>;

fn held(cluster: &Cluster) -> HashMap<String, Held> {
    let mut all = HashMap::new();
    for node in &cluster.nodes {
        let mut ids = Held::new();
        let files = datanode::storage::segments::list_data_files(&node.data_dir, 0).unwrap();
        for file in files {
            let contents = std::fs::read(&file.path).unwrap();
            for line in contents.split_inclusive(|&b| b == b'\n') {
                let record = datanode::storage::parse_line(line).unwrap();
                let Some(id) = record.id else { continue };
                let entry = ids.entry(id).or_insert((
                    record.key.map(|k| k.to_string()),
                    String::from_utf8(record.text.to_vec()).unwrap(),
                    0,
                ));
                entry.2 += 1;
            }
        }
        all.insert(node.id.clone(), ids);
    }
    all
}

/// The ids of every segment retention removed from `dir`, by segment.
fn removed_sets(dir: &std::path::Path) -> BTreeMap<u32, datanode::storage::removed::IdSet> {
    use datanode::storage::removed::{parse_set_file_name, read_set};
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| parse_set_file_name(entry.unwrap().file_name().to_str()?))
        .map(|number| (number, read_set(dir, number).unwrap()))
        .collect()
}

async fn kill_and_lose_disk(cluster: &mut Cluster, index: usize) {
    let id = cluster.nodes[index].id.clone();
    cluster.nodes[index].kill();
    cluster.nodes[index].released().await;
    std::fs::remove_dir_all(&cluster.nodes[index].data_dir).unwrap();
    cluster
        .wait_for(
            &format!("{id} evicted"),
            |e| matches!(e, Event::Evicted { member, .. } if member.node.as_str() == id),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_disk_is_repaired_once_with_the_same_ids_keys_and_texts() {
    let (mut cluster, http) = Cluster::start_with_http(config()).await;
    for id in ["dn1", "dn2", "dn3"] {
        let node = cluster.node_config(id);
        cluster.add_node(node).await;
    }
    // The start-up check first, so that the next pass is the loss's.
    pass_ended(http, "head node started").await;
    let messages = store(&cluster, "c-repair", 90).await;
    let before = held(&cluster);
    let on_dn3: BTreeSet<MessageId> = before["dn3"].keys().copied().collect();
    assert!(!on_dn3.is_empty(), "dn3 holds some messages");

    kill_and_lose_disk(&mut cluster, 2).await;
    let snapshot = pass_ended(http, "dn3 gone").await;
    let pass = snapshot.totals.repair_pass.unwrap();
    assert_eq!(pass.outcome, "done", "{pass:?}");
    assert_eq!(pass.under_replicated, on_dn3.len() as u64, "{pass:?}");
    assert_eq!(pass.copied, on_dn3.len() as u64, "{pass:?}");
    assert_eq!(pass.new_copies, on_dn3.len() as u64, "{pass:?}");

    // Every message on both survivors, once each, as it was sent.
    let after = held(&cluster);
    for (id, (text, _)) in &messages {
        for node in ["dn1", "dn2"] {
            let (key, stored, records) = after[node]
                .get(id)
                .unwrap_or_else(|| panic!("{id} missing on {node}"));
            assert_eq!((stored, *records), (text, 1), "{id} on {node}");
            let original = before.values().find_map(|ids| ids.get(id)).unwrap();
            assert_eq!(key, &original.0, "{id}'s key on {node}");
        }
    }

    // dn3 comes back with an empty directory: a new store. A pass runs at
    // once and finds every message with its two copies: nothing is copied.
    let node = cluster.node_config("dn3");
    cluster.nodes.remove(2);
    cluster.add_node(node).await;
    let snapshot = pass_ended(http, "new data directory").await;
    let pass = snapshot.totals.repair_pass.unwrap();
    assert_eq!((pass.under_replicated, pass.copied), (0, 0), "{pass:?}");
    assert_eq!(pass.checked, messages.len() as u64, "{pass:?}");
    assert!(held(&cluster)["dn3"].is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_head_node_checks_every_message_and_copies_only_what_is_missing() {
    let (mut cluster, http) = Cluster::start_with_http(headnode::Config {
        // Long enough that the first head node never repairs by itself.
        repair_after: Duration::from_secs(3600),
        ..config()
    })
    .await;
    for id in ["dn1", "dn2", "dn3"] {
        let node = cluster.node_config(id);
        cluster.add_node(node).await;
    }
    let messages = store(&cluster, "c-restart", 60).await;
    let on_dn3 = held(&cluster)["dn3"].len() as u64;
    kill_and_lose_disk(&mut cluster, 2).await;
    assert_eq!(status(http).await.totals.repair_pass, None, "no pass yet");

    // The next head node (its own HTTP port) learns from dn1's and dn2's
    // reports that dn3 is a member: it checks every message once recovery
    // is over, leaving dn3's share alone while dn3 may come back, and
    // copies it once dn3 leaves the member set.
    let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap());
    for node in &cluster.nodes[..2] {
        node.kill();
        node.released().await;
    }
    cluster.stop().await;
    let (mut cluster2, http2) = Cluster::start_with_http(config()).await;
    for id in ["dn1", "dn2"] {
        let mut node = cluster2.node_config(id);
        node.data_dir = dir.path().join(id);
        cluster2.add_node(node).await;
    }
    let copied = format!("msgstore_repair_copies_total {on_dn3}\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(http2, "/metrics").await.body.contains(&copied) {
        assert!(
            Instant::now() < deadline,
            "{on_dn3} copies not made within 20 s: {:?}",
            status(http2).await.totals.repair_pass
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pass = status(http2).await.totals.repair_pass.unwrap();
    assert_eq!(pass.checked, messages.len() as u64, "{pass:?}");
    // Idempotent: the texts were written once more on one node each, no more.
    let mut copies: HashMap<MessageId, usize> = HashMap::new();
    for node in ["dn1", "dn2"] {
        let path = dir.path().join(node).join(datanode::storage::DATA_FILE);
        for id in datanode::storage::stored_ids(&path).unwrap() {
            *copies.entry(id).or_default() += 1;
        }
    }
    for id in messages.keys() {
        assert_eq!(copies.get(id), Some(&2), "{id}");
    }
    cluster2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_leaves_alone_what_retention_removed() {
    let (mut cluster, http) = Cluster::start_with_http(config()).await;
    // dn1 keeps little: 1 KiB segments, at most 4 KiB in all.
    let mut dn1 = cluster.node_config("dn1");
    dn1.store.segment_bytes = 1024;
    dn1.store.retention.max_bytes = Some(4096);
    cluster.add_node(dn1).await;
    for id in ["dn2", "dn3"] {
        let node = cluster.node_config(id);
        cluster.add_node(node).await;
    }
    pass_ended(http, "head node started").await;
    let messages = store(&cluster, "c-retention", 200).await;
    let before = held(&cluster);
    let dn1_dir = cluster.nodes[0].data_dir.clone();
    let removed_before = removed_sets(&dn1_dir);
    // What dn1 was sent and no longer holds: its retention removed it.
    let removed_from_dn1: BTreeSet<MessageId> = messages
        .iter()
        .filter(|(id, (_, holders))| {
            holders.iter().any(|h| h == "dn1") && !before["dn1"].contains_key(id)
        })
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !removed_from_dn1.is_empty(),
        "dn1's retention removed some messages"
    );

    // dn3 is lost. Messages dn1's retention removed that have one live
    // copy are left alone (dn1 answers "removed"); the others get their
    // copy, also those dn1 never held.
    cluster.nodes[2].kill();
    cluster
        .wait_for(
            "dn3 evicted",
            |e| matches!(e, Event::Evicted { member, .. } if member.node.as_str() == "dn3"),
        )
        .await;
    let pass = pass_ended(http, "dn3 gone")
        .await
        .totals
        .repair_pass
        .unwrap();
    assert!(pass.removed_by_retention > 0, "{pass:?}");
    assert!(pass.copied > 0, "{pass:?}");
    let after = held(&cluster);
    // dn1's retention goes on: a copy made there may be gone again, in a
    // segment removed since.
    let removed_since: Vec<_> = removed_sets(&dn1_dir)
        .into_iter()
        .filter(|(number, _)| !removed_before.contains_key(number))
        .map(|(_, set)| set)
        .collect();
    let on = |node: &str, id: &MessageId| {
        after[node].contains_key(id)
            || (node == "dn1" && removed_since.iter().any(|set| set.contains(*id)))
    };
    let mut new_copies = 0;
    for node in ["dn1", "dn2"] {
        for id in messages
            .keys()
            .filter(|id| on(node, id) && !before[node].contains_key(id))
        {
            assert!(
                !removed_from_dn1.contains(id),
                "{id} brought back on {node}, though dn1's retention removed it"
            );
            new_copies += 1;
        }
    }
    assert_eq!(new_copies as u64, pass.new_copies, "{pass:?}");
    for (id, (_, holders)) in &messages {
        if holders.iter().all(|h| h != "dn1") {
            let copies = ["dn1", "dn2"].iter().filter(|node| on(node, id)).count();
            assert_eq!(
                copies, 2,
                "{id}, which dn1 never held, has {copies} live copies"
            );
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_a_node_finds_damaged_at_start_gets_its_copy_again_at_once() {
    let (mut cluster, http) = Cluster::start_with_http(headnode::Config {
        // No pass of its own: the one that runs is the damage's.
        repair_after: Duration::from_secs(3600),
        ..config()
    })
    .await;
    for id in ["dn1", "dn2"] {
        let node = cluster.node_config(id);
        cluster.add_node(node).await;
    }
    let messages = store(&cluster, "c-damage", 20).await;
    cluster.nodes[0].kill();
    cluster.nodes[0].released().await;
    // A byte of one of dn1's records changes while it is down.
    let path = cluster.nodes[0].data_dir.join(datanode::storage::DATA_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().nth(4).unwrap();
    let damaged = datanode::storage::parse_line(line.as_bytes())
        .unwrap()
        .id
        .unwrap();
    let changed = format!("{line}!");
    std::fs::write(&path, text.replacen(line, &changed, 1)).unwrap();

    let node = cluster.node_config("dn1");
    cluster.nodes.remove(0);
    cluster.add_node(node).await;
    let pass = pass_ended(http, "dn1 found 1 damaged records")
        .await
        .totals
        .repair_pass
        .unwrap();
    assert_eq!((pass.under_replicated, pass.copied), (1, 1), "{pass:?}");
    assert_eq!(pass.checked, messages.len() as u64, "{pass:?}");
    let report = datanode::storage::verify_dir(&cluster.nodes[1].data_dir).unwrap();
    assert_eq!(report.corrupt.len(), 1, "the damaged line stays: {report}");
    assert_eq!(report.corrupt[0].id, Some(damaged));
    let intact = datanode::storage::stored_ids(&path).unwrap();
    assert!(intact.contains(&damaged), "a new copy beside it");
    cluster.stop().await;
}

/// Per node: the record time of each id it holds (its first record's).
fn record_times(cluster: &Cluster) -> HashMap<String, HashMap<MessageId, String>> {
    let mut all = HashMap::new();
    for node in &cluster.nodes {
        let mut times = HashMap::new();
        let files = datanode::storage::segments::list_data_files(&node.data_dir, 0).unwrap();
        for file in files {
            let contents = std::fs::read(&file.path).unwrap();
            for line in contents.split_inclusive(|&b| b == b'\n') {
                let record = datanode::storage::parse_line(line).unwrap();
                if let Some(id) = record.id {
                    times.entry(id).or_insert(record.timestamp.to_owned());
                }
            }
        }
        all.insert(node.id.clone(), times);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repaired_copy_keeps_the_record_time_of_the_copy_it_was_made_from() {
    let (mut cluster, http) = Cluster::start_with_http(config()).await;
    for id in ["dn1", "dn2", "dn3"] {
        let node = cluster.node_config(id);
        cluster.add_node(node).await;
    }
    pass_ended(http, "head node started").await;
    store(&cluster, "c-times", 30).await;
    let before = record_times(&cluster);
    // Later than any record time a copy made now could be confused with.
    tokio::time::sleep(Duration::from_millis(50)).await;
    kill_and_lose_disk(&mut cluster, 2).await;
    let pass = pass_ended(http, "dn3 gone")
        .await
        .totals
        .repair_pass
        .unwrap();
    assert!(pass.copied > 0, "{pass:?}");
    let after = record_times(&cluster);
    let mut repaired = 0;
    for node in ["dn1", "dn2"] {
        for (id, time) in &after[node] {
            if before[node].contains_key(id) {
                continue;
            }
            repaired += 1;
            let originals: Vec<&String> = before.values().filter_map(|t| t.get(id)).collect();
            assert!(
                originals.contains(&time),
                "{id} on {node} at {time}, its copies at {originals:?}"
            );
        }
    }
    assert_eq!(repaired as u64, pass.new_copies, "{pass:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_down_node_removed_by_retention_is_not_copied_back() {
    let (mut cluster, http) = Cluster::start_with_http(config()).await;
    // dn1 keeps little: 1 KiB segments, at most 4 KiB in all.
    let mut dn1 = cluster.node_config("dn1");
    dn1.store.segment_bytes = 1024;
    dn1.store.retention.max_bytes = Some(4096);
    cluster.add_node(dn1).await;
    for id in ["dn2", "dn3"] {
        let node = cluster.node_config(id);
        cluster.add_node(node).await;
    }
    pass_ended(http, "head node started").await;
    let messages = store(&cluster, "c-retention-down", 200).await;
    // The head node hears of dn1's removals after its next pong.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = held(&cluster);
    let removed_from_dn1: BTreeSet<MessageId> = messages
        .iter()
        .filter(|(id, (_, holders))| {
            holders.iter().any(|h| h == "dn1") && !before["dn1"].contains_key(id)
        })
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !removed_from_dn1.is_empty(),
        "dn1's retention removed some messages"
    );
    let on_dn1: BTreeSet<MessageId> = before["dn1"].keys().copied().collect();

    // dn1 is lost: it cannot say what it removed; it said so before.
    cluster.nodes[0].kill();
    cluster
        .wait_for(
            "dn1 out of the member set",
            |e| matches!(e, Event::Removed { node, .. } if node.as_str() == "dn1"),
        )
        .await;
    let pass = pass_ended(http, "dn1 gone")
        .await
        .totals
        .repair_pass
        .unwrap();
    assert!(pass.removed_by_retention > 0, "{pass:?}");
    assert!(pass.copied > 0, "{pass:?}");
    let after = held(&cluster);
    for node in ["dn2", "dn3"] {
        for id in after[node]
            .keys()
            .filter(|id| !before[node].contains_key(id))
        {
            assert!(
                !removed_from_dn1.contains(id),
                "{id} copied to {node}, though dn1's retention removed it"
            );
        }
    }
    // What dn1 still held gets its second copy.
    for id in &on_dn1 {
        let copies = ["dn2", "dn3"]
            .iter()
            .filter(|node| after[**node].contains_key(id))
            .count();
        assert_eq!(copies, 2, "{id}, held by dn1 when it was lost");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_head_node_leaves_a_down_members_share_alone_until_it_is_lost() {
    let (mut cluster, _) = Cluster::start_with_http(headnode::Config {
        // Long enough that the first head node never repairs by itself.
        repair_after: Duration::from_secs(3600),
        ..config()
    })
    .await;
    for id in ["dn1", "dn2", "dn3"] {
        let node = cluster.node_config(id);
        cluster.add_node(node).await;
    }
    let messages = store(&cluster, "c-down", 60).await;
    let on_dn3 = held(&cluster)["dn3"].len() as u64;
    assert!(on_dn3 > 0);
    // Every process goes; dn3 keeps its disk but is not back yet.
    let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap());
    for node in &cluster.nodes {
        node.kill();
        node.released().await;
    }
    cluster.stop().await;
    let (mut cluster2, http2) = Cluster::start_with_http(headnode::Config {
        // dn3 is waited for this long, then absent: the first pass comes
        // at the end of recovery, and dn3 leaves the member set only
        // --repair-after after that.
        recovery_wait: Duration::from_secs(4),
        repair_after: Duration::from_secs(4),
        ..config()
    })
    .await;
    for id in ["dn1", "dn2"] {
        let mut node = cluster2.node_config(id);
        node.data_dir = dir.path().join(id);
        cluster2.add_node(node).await;
    }
    let pass = pass_ended(http2, "head node started")
        .await
        .totals
        .repair_pass
        .unwrap();
    assert_eq!((pass.under_replicated, pass.copied), (0, 0), "{pass:?}");
    assert_eq!(pass.unknown, on_dn3, "{pass:?}");
    assert_eq!(pass.checked, messages.len() as u64, "{pass:?}");
    // dn3 comes back with its copies: no message has a third.
    let mut node = cluster2.node_config("dn3");
    node.data_dir = dir.path().join("dn3");
    cluster2.add_node(node).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut copies: HashMap<MessageId, usize> = HashMap::new();
    for ids in held(&cluster2).values() {
        for id in ids.keys() {
            *copies.entry(*id).or_default() += 1;
        }
    }
    for id in messages.keys() {
        assert_eq!(copies.get(id), Some(&2), "{id}");
    }
    cluster2.stop().await;
}

/// A scripted data node for the retry test: it holds `holds` (if any),
/// lists it in its scans, and answers `readerror` to every get it does not
/// hold the answer to when `unsure`. Counts the scans and gets it is sent.
async fn scripted_holder(
    addr: SocketAddr,
    name: &str,
    holds: Option<MessageId>,
    unsure: bool,
) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
    use protocol::datanode::{FromDataNode, ReadRecord, ToDataNode};
    let (mut conn, welcome) = test_support::scripted_node::register(addr, name, 1).await;
    assert!(welcome.starts_with("welcome "), "{welcome}");
    let (scans, gets) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counted = (scans.clone(), gets.clone());
    tokio::spawn(async move {
        let record = |id: MessageId| ReadRecord {
            id,
            key: None,
            stored_ms: 1,
            text: "hola".into(),
        };
        while let Ok(Some(line)) = conn.reader.read_frame().await {
            let answers = match ToDataNode::parse(line.as_str()) {
                Ok(ToDataNode::Ping(n)) => vec![FromDataNode::Pong(n)],
                Ok(ToDataNode::Scan { req, after, .. }) => {
                    counted.0.fetch_add(1, Ordering::Relaxed);
                    match holds.filter(|id| after.is_none_or(|after| *id > after)) {
                        Some(id) => vec![
                            FromDataNode::Found {
                                req,
                                record: record(id),
                            },
                            FromDataNode::Scanned {
                                req,
                                count: 1,
                                last: Some(id),
                                more: false,
                            },
                        ],
                        None => vec![FromDataNode::Scanned {
                            req,
                            count: 0,
                            last: None,
                            more: false,
                        }],
                    }
                }
                Ok(ToDataNode::Get { req, id }) => {
                    counted.1.fetch_add(1, Ordering::Relaxed);
                    if holds == Some(id) {
                        vec![FromDataNode::Found {
                            req,
                            record: record(id),
                        }]
                    } else if unsure {
                        vec![FromDataNode::ReadError {
                            req,
                            reason: "cannot read its files".into(),
                        }]
                    } else {
                        vec![FromDataNode::NotFound {
                            req,
                            removed: false,
                        }]
                    }
                }
                _ => Vec::new(),
            };
            for answer in answers {
                let mut buf = bytes::BytesMut::new();
                answer.encode(&mut buf);
                if conn.writer.send(&buf).await.is_err() {
                    return;
                }
            }
        }
    });
    (scans, gets)
}

#[tokio::test(start_paused = true)]
async fn a_message_no_node_can_confirm_costs_a_bounded_retry_not_a_rescan() {
    let (mut cluster, http) = Cluster::start_with_http(config()).await;
    // dn1 holds 5-1; dn2 cannot say whether it does.
    let id: MessageId = "5-1".parse().unwrap();
    let (dn1_scans, dn1_gets) = scripted_holder(cluster.addr, "dn1", Some(id), false).await;
    let (dn2_scans, dn2_gets) = scripted_holder(cluster.addr, "dn2", None, true).await;
    for name in ["dn1", "dn2"] {
        cluster
            .wait_for(
                &format!("{name} to join"),
                |e| matches!(e, Event::Joined { member, .. } if member.node.as_str() == name),
            )
            .await;
    }
    // The start-up pass, then its retries: 5, 10, 20, 40 and 80 s apart.
    let deadline = Instant::now() + Duration::from_secs(400);
    let given_up = loop {
        let metrics = get(http, "/metrics").await.body;
        if metrics.contains("msgstore_repair_unrepairable_total 1") {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "not given up on within 400 s: {dn2_gets:?} gets"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        given_up.contains("msgstore_repair_passes_total"),
        "{given_up}"
    );
    // Long after: no more tries, and no pass scanned everything again.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(dn1_scans.load(Ordering::Relaxed), 1, "one scan");
    assert_eq!(dn2_scans.load(Ordering::Relaxed), 1, "one scan");
    assert_eq!(
        dn2_gets.load(Ordering::Relaxed),
        6,
        "the pass's ask and 5 tries"
    );
    assert_eq!(dn1_gets.load(Ordering::Relaxed), 5, "the 5 tries");
    let pass = status(http).await.totals.repair_pass.unwrap();
    assert!(pass.finished, "{pass:?}");
    cluster.stop().await;
}
