//! Reading messages back through the head node: `get` and `tail`, with
//! real data nodes in one process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use client::ConnectOptions;
use client::read::{Found, ReadError, TailOptions, Wanted};
use protocol::client::StoreReply;
use protocol::connection::Connection;
use protocol::ids::MessageId;
use test_support::framed;
use tokio::time::Instant;

use crate::support::{Cluster, connect_as, fast_config, send_pipelined};

async fn start(nodes: &[&str]) -> Cluster {
    let config = headnode::Config {
        replicas: 2,
        min_replicas: 2,
        ..fast_config()
    };
    let mut cluster = Cluster::start(config).await;
    for id in nodes {
        let config = cluster.node_config(id);
        cluster.add_node(config).await;
    }
    cluster
}

/// Stores `texts` one at a time as client `client_id` from `first_seq`;
/// returns each message's id and holders.
async fn store(
    conn: &mut Connection,
    first_seq: u64,
    texts: &[String],
) -> Vec<(MessageId, Vec<String>)> {
    let mut stored = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let seq = first_seq + i as u64;
        conn.writer
            .send(format!("{seq} {text}").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(20), conn.reader.read_frame())
            .await
            .expect("no reply within 20 s")
            .unwrap()
            .expect("head node closed the connection");
        match StoreReply::parse(line.as_str()).unwrap() {
            StoreReply::Stored { holders, id } => stored.push((id, holders)),
            StoreReply::Error(reason) => panic!("not stored: {reason}"),
        }
    }
    stored
}

fn options(cluster: &Cluster) -> ConnectOptions {
    let mut connect = ConnectOptions::new(cluster.addr.to_string(), None);
    connect.retry_for = Duration::from_secs(5);
    connect
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Tails (following) in the background; the records seen so far.
fn follow(
    cluster: &Cluster,
    batch: u32,
) -> (Arc<Mutex<Vec<Found>>>, tokio::sync::oneshot::Sender<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut tail = TailOptions::new(options(cluster));
    tail.follow = true;
    tail.poll = Duration::from_millis(50);
    tail.batch = batch;
    let sink = seen.clone();
    tokio::spawn(async move {
        client::read::tail(
            &tail,
            |found| {
                sink.lock().unwrap().push(found.clone());
                Ok(())
            },
            async {
                let _ = stop_rx.await;
            },
        )
        .await
        .expect("tail failed")
    });
    (seen, stop_tx)
}

/// Waits (at most `within`) until `seen` holds `count` records.
async fn wait_seen(seen: &Mutex<Vec<Found>>, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while seen.lock().unwrap().len() < count {
        assert!(
            Instant::now() < deadline,
            "tail saw {} of {count} messages",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every id once, in order, and exactly `expected`.
fn assert_once_in_order(seen: &[Found], expected: &[MessageId]) {
    let ids: Vec<MessageId> = seen.iter().map(|f| f.record.id).collect();
    let unique: HashSet<MessageId> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an id was printed twice");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in id order");
    let mut wanted = expected.to_vec();
    wanted.sort();
    let missing: Vec<_> = wanted.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "missing {} ids, first {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(ids, wanted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_by_id_and_by_key_returns_text_holders_and_time() {
    let cluster = start(&["dn1", "dn2", "dn3"]).await;
    let mut writer = connect_as(cluster.addr, "cliente id=c-get").await;
    let before = now_ms();
    let texts: Vec<String> = (1..=5).map(|n| format!("numero random: {n}")).collect();
    let stored = store(&mut writer, 1, &texts).await;
    let after = now_ms();
    for (i, (id, holders)) in stored.iter().enumerate() {
        let found = client::read::get(&options(&cluster), &Wanted::Id(*id))
            .await
            .unwrap();
        assert_eq!(found.record.id, *id);
        assert_eq!(found.record.text, texts[i]);
        assert_eq!(
            found.record.key.as_ref().unwrap().to_string(),
            format!("c-get/{}", i + 1)
        );
        let mut wanted = holders.clone();
        wanted.sort();
        let got: Vec<String> = found.holders.iter().map(ToString::to_string).collect();
        assert_eq!(got, wanted, "every live holder is named");
        assert!(
            (before..=after).contains(&found.record.stored_ms),
            "stored at {} outside {before}..={after}",
            found.record.stored_ms
        );
        let by_key = client::read::get(
            &options(&cluster),
            &Wanted::Key(format!("c-get/{}", i + 1).parse().unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(by_key, found);
    }
    let unknown = MessageId {
        epoch: stored[0].0.epoch,
        seq: 999_999,
    };
    let err = client::read::get(&options(&cluster), &Wanted::Id(unknown))
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::NotFound { .. }), "{err}");
    assert_eq!(err.to_string(), format!("{unknown} not found"));
    let err = client::read::get(
        &options(&cluster),
        &Wanted::Key("c-get/77".parse().unwrap()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ReadError::NotFound { .. }), "{err}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_message_is_read_back_whole_by_get_and_tail() {
    let cluster = start(&["dn1", "dn2"]).await;
    let mut writer = connect_as(cluster.addr, "cliente id=c-long").await;
    // The longest line a client may send: `<seq> ` and the text.
    let text = "x".repeat(protocol::DEFAULT_MAX_LINE - "1 ".len());
    let stored = store(&mut writer, 1, std::slice::from_ref(&text)).await;
    let found = client::read::get(&options(&cluster), &Wanted::Id(stored[0].0))
        .await
        .unwrap();
    assert_eq!(found.record.text.len(), text.len());
    assert_eq!(found.holders.len(), 2, "both nodes answered and stayed");
    let (seen, stop) = follow(&cluster, 10);
    wait_seen(&seen, 1, Duration::from_secs(10)).await;
    assert_eq!(seen.lock().unwrap()[0].record.text, text);
    let _ = stop.send(());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reads_from_a_live_replica_while_a_holder_is_down() {
    let cluster = start(&["dn1", "dn2", "dn3"]).await;
    let mut writer = connect_as(cluster.addr, "cliente id=c-down").await;
    let stored = store(&mut writer, 1, &["hola".to_owned()]).await;
    let (id, holders) = stored[0].clone();
    let down = cluster
        .nodes
        .iter()
        .position(|n| n.id == holders[0])
        .unwrap();
    cluster.nodes[down].kill();
    cluster.nodes[down].released().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = client::read::get(&options(&cluster), &Wanted::Id(id))
            .await
            .unwrap();
        assert_eq!(found.record.text, "hola");
        let names: Vec<String> = found.holders.iter().map(ToString::to_string).collect();
        if names == vec![holders[1].clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "still named {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_every_message_once_in_id_order() {
    let cluster = start(&["dn1", "dn2", "dn3"]).await;
    let texts: Vec<String> = (0..300).map(|n| format!("numero random: {n}")).collect();
    let replies = send_pipelined(cluster.addr, texts, || {}).await;
    let ids: Vec<MessageId> = replies
        .iter()
        .map(|r| match r {
            StoreReply::Stored { id, holders } => {
                assert_eq!(holders.len(), 2);
                *id
            }
            StoreReply::Error(reason) => panic!("not stored: {reason}"),
        })
        .collect();
    let mut tail = TailOptions::new(options(&cluster));
    tail.batch = 37;
    let mut seen = Vec::new();
    let last = client::read::tail(
        &tail,
        |found| {
            seen.push(found.clone());
            Ok(())
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_once_in_order(&seen, &ids);
    assert_eq!(last, ids.iter().max().copied());
    assert!(
        seen.iter().all(|f| f.holders.len() == 2),
        "each message on two nodes"
    );
    // From an id: only what follows it.
    let mut from = TailOptions::new(options(&cluster));
    from.after = Some(seen[199].record.id);
    let mut rest = Vec::new();
    client::read::tail(
        &from,
        |found| {
            rest.push(found.record.id);
            Ok(())
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let wanted: Vec<MessageId> = seen[200..].iter().map(|f| f.record.id).collect();
    assert_eq!(rest, wanted);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follow_sees_new_messages() {
    let cluster = start(&["dn1", "dn2", "dn3"]).await;
    let (seen, stop) = follow(&cluster, 1000);
    let mut writer = connect_as(cluster.addr, "cliente id=c-follow").await;
    let texts: Vec<String> = (0..20).map(|n| format!("nuevo {n}")).collect();
    let first = store(&mut writer, 1, &texts[..10]).await;
    wait_seen(&seen, 10, Duration::from_secs(15)).await;
    let second = store(&mut writer, 11, &texts[10..]).await;
    wait_seen(&seen, 20, Duration::from_secs(15)).await;
    let _ = stop.send(());
    let ids: Vec<MessageId> = first.iter().chain(&second).map(|(id, _)| *id).collect();
    let seen = seen.lock().unwrap().clone();
    assert_once_in_order(&seen, &ids);
    assert_eq!(seen[19].record.text, "nuevo 19");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_goes_on_without_gap_or_duplicate_while_a_node_dies_and_comes_back() {
    let mut cluster = start(&["dn1", "dn2", "dn3"]).await;
    let (seen, stop) = follow(&cluster, 25);
    let mut writer = connect_as(cluster.addr, "cliente id=c-churn").await;
    let texts: Vec<String> = (0..360).map(|n| format!("numero random: {n}")).collect();
    let mut ids: Vec<MessageId> = Vec::new();
    ids.extend(
        store(&mut writer, 1, &texts[..120])
            .await
            .iter()
            .map(|(id, _)| *id),
    );
    // Mid-tail: a node dies while messages keep coming.
    cluster.nodes[1].kill();
    ids.extend(
        store(&mut writer, 121, &texts[120..240])
            .await
            .iter()
            .map(|(id, _)| *id),
    );
    wait_seen(&seen, 200, Duration::from_secs(30)).await;
    // It comes back with what it held; the tail takes it in again.
    cluster.nodes[1].released().await;
    let config = cluster.node_config("dn2");
    cluster.add_node(config).await;
    ids.extend(
        store(&mut writer, 241, &texts[240..])
            .await
            .iter()
            .map(|(id, _)| *id),
    );
    wait_seen(&seen, ids.len(), Duration::from_secs(30)).await;
    // Nothing more comes after the last one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(());
    let seen = seen.lock().unwrap().clone();
    assert_once_in_order(&seen, &ids);
    cluster.stop().await;
}

/// Kills the nodes named `ids` and waits until their directories are free.
async fn kill(cluster: &Cluster, ids: &[&str]) {
    for id in ids {
        let node = cluster.nodes.iter().find(|n| n.id == *id).unwrap();
        node.kill();
        node.released().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_says_unavailable_not_notfound_while_a_member_that_could_hold_it_is_away() {
    let mut cluster = start(&["dn1", "dn2", "dn3"]).await;
    let mut writer = connect_as(cluster.addr, "cliente id=c-away").await;
    let (id, holders) = store(&mut writer, 1, &["hola".to_owned()]).await[0].clone();
    let nothing: MessageId = "1-1".parse().unwrap();
    // Every member answers: an id none holds is a definite not found.
    let err = client::read::get(&options(&cluster), &Wanted::Id(nothing))
        .await
        .unwrap_err();
    assert!(matches!(err, ReadError::NotFound { .. }), "{err}");

    // Both holders die: the third node alone cannot say it does not exist.
    let away: Vec<&str> = holders.iter().map(String::as_str).collect();
    kill(&cluster, &away).await;
    for wanted in [id, nothing] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client::read::get(&options(&cluster), &Wanted::Id(wanted)).await {
                Err(ReadError::Unavailable(reason)) => {
                    for node in &away {
                        assert!(reason.contains(node), "{reason}");
                    }
                    break;
                }
                // Found while a holder's session has not yet ended.
                Ok(found) if wanted == id => assert_eq!(found.record.text, "hola"),
                other => panic!("get {wanted} while {away:?} are away: {other:?}"),
            }
            assert!(Instant::now() < deadline, "never unavailable");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Back: found again, and not found is definite again.
    for node in &away {
        let config = cluster.node_config(node);
        cluster.add_node(config).await;
    }
    // Found, and not found definite again, once the routes name them
    // (published just after the join the test waited for).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client::read::get(&options(&cluster), &Wanted::Id(id)).await {
            Ok(found) => break assert_eq!(found.record.text, "hola"),
            Err(ReadError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("get {id} with every member back: {other:?}"),
        }
    }
    loop {
        match client::read::get(&options(&cluster), &Wanted::Id(nothing)).await {
            Err(ReadError::NotFound { .. }) => break,
            Err(ReadError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("get {nothing} with every member back: {other:?}"),
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_says_incomplete_while_w_members_are_away_and_skips_nothing_once_back() {
    let mut cluster = start(&["dn1", "dn2", "dn3"]).await;
    let mut writer = connect_as(cluster.addr, "cliente id=c-gap").await;
    let texts: Vec<String> = (0..60).map(|n| format!("numero random: {n}")).collect();
    let stored = store(&mut writer, 1, &texts).await;
    let ids: Vec<MessageId> = stored.iter().map(|(id, _)| *id).collect();
    let only_away = stored
        .iter()
        .filter(|(_, h)| !h.contains(&"dn1".to_owned()))
        .count();
    assert!(only_away > 0, "some messages are on dn2 and dn3 only");

    // W=2 of the members are away: dn1 alone cannot prove a tail whole.
    kill(&cluster, &["dn2", "dn3"]).await;
    let mut reader = connect_as(cluster.addr, "lector").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        reader.writer.send(b"tail start 1000").await.unwrap();
        let first = framed::line(&mut reader.reader, "a tail answer").await;
        if first.starts_with("ERROR incomplete: ") {
            assert!(first.contains("dn2") && first.contains("dn3"), "{first}");
            break;
        }
        // A scan of a node whose session has not yet ended: read it whole.
        assert!(
            first.starts_with("found "),
            "dn1's messages alone must not be the whole tail: {first}"
        );
        loop {
            let line = framed::line(&mut reader.reader, "a tail answer").await;
            assert!(
                !line.starts_with("end "),
                "a tail ended without {only_away} messages on dn2 and dn3 only: {line}"
            );
            if line.starts_with("ERROR ") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never incomplete");
    }

    // A tail asks again until they are back, and prints everything once.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tail = TailOptions::new(options(&cluster));
    tail.connect.retry_for = Duration::from_secs(30);
    tail.batch = 25;
    let sink = seen.clone();
    let tailing = tokio::spawn(async move {
        client::read::tail(
            &tail,
            |found| {
                sink.lock().unwrap().push(found.clone());
                Ok(())
            },
            std::future::pending(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in ["dn2", "dn3"] {
        let config = cluster.node_config(node);
        cluster.add_node(config).await;
    }
    tokio::time::timeout(Duration::from_secs(30), tailing)
        .await
        .expect("the tail ends once dn2 and dn3 are back")
        .unwrap()
        .expect("tail failed");
    assert_once_in_order(&seen.lock().unwrap(), &ids);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_with_an_empty_directory_counts_as_missing_until_repaired() {
    let config = headnode::Config {
        replicas: 2,
        min_replicas: 2,
        // The pass the new directory asks for waits for dn2, gone less
        // than this: dn1 stays unrepaired for the whole test.
        repair_after: Duration::from_secs(3600),
        ..fast_config()
    };
    let mut cluster = Cluster::start(config).await;
    for id in ["dn1", "dn2", "dn3"] {
        let config = cluster.node_config(id);
        cluster.add_node(config).await;
    }
    let mut writer = connect_as(cluster.addr, "cliente id=c-disk").await;
    let texts: Vec<String> = (0..60).map(|n| format!("numero random: {n}")).collect();
    let stored = store(&mut writer, 1, &texts).await;
    let lost = stored
        .iter()
        .filter(|(_, h)| h.contains(&"dn1".to_owned()) && h.contains(&"dn2".to_owned()))
        .count();
    assert!(lost > 0, "some messages are on dn1 and dn2 only");

    // dn2 is away; dn1 comes back at once with an empty directory.
    kill(&cluster, &["dn2", "dn1"]).await;
    let dn1 = cluster.nodes.iter().position(|n| n.id == "dn1").unwrap();
    std::fs::remove_dir_all(&cluster.nodes[dn1].data_dir).unwrap();
    let config = cluster.node_config("dn1");
    cluster.add_node(config).await;

    // dn1 answers, but what it held is gone: with dn2 away, two of W=2
    // members are missing, and a tail must not pass what they held.
    let mut reader = connect_as(cluster.addr, "lector").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        reader.writer.send(b"tail start 1000").await.unwrap();
        let first = framed::line(&mut reader.reader, "a tail answer").await;
        // Until the routes name dn1 again, it is missing as not connected.
        if first.starts_with("ERROR incomplete: ") && first.contains("dn1 (new data directory") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never incomplete for dn1's new directory: {first}"
        );
        if first.starts_with("ERROR incomplete: ") {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert!(
            first.starts_with("found "),
            "dn3's messages alone must not be the whole tail: {first}"
        );
        loop {
            let line = framed::line(&mut reader.reader, "a tail answer").await;
            assert!(
                !line.starts_with("end "),
                "a tail ended without the {lost} messages dn1 and dn2 held: {line}"
            );
            if line.starts_with("ERROR ") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never incomplete");
    }
    cluster.stop().await;
}

/// The answer lines to one batch of request lines, read until `count`.
async fn answers(conn: &mut Connection, count: usize) -> Vec<String> {
    let mut lines = Vec::new();
    while lines.len() < count {
        lines.push(framed::line(&mut conn.reader, "an answer").await);
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_readers_get_clear_errors_and_bounded_answers() {
    let cluster = start(&["dn1", "dn2"]).await;
    let mut writer = connect_as(cluster.addr, "cliente id=c-hostile").await;
    let texts: Vec<String> = (0..30).map(|n| format!("m{n}")).collect();
    store(&mut writer, 1, &texts).await;
    let mut reader = connect_as(cluster.addr, "lector").await;
    for (request, answer) in [
        (
            "tail start 99999999",
            "ERROR bad tail limit \"99999999\": 1 to 1000",
        ),
        ("tail start 0", "ERROR bad tail limit \"0\": 1 to 1000"),
        (
            "get",
            "ERROR expected 'get <message-id>' or 'get <client-id>/<seq>'",
        ),
        ("get nope", "ERROR bad message id \"nope\""),
        (
            "mensaje: hola",
            "ERROR unknown request \"mensaje: hola\": expected 'get <message-id>', 'get <client-id>/<seq>' or 'tail <after-id>|start <limit> [since=<unix-ms>]'",
        ),
    ] {
        reader.writer.send(request.as_bytes()).await.unwrap();
        assert_eq!(
            answers(&mut reader, 1).await,
            vec![answer.to_owned()],
            "{request}"
        );
    }
    reader.writer.send(b"\xff\xfe").await.unwrap();
    assert_eq!(
        answers(&mut reader, 1).await,
        vec!["ERROR invalid UTF-8".to_owned()]
    );
    // A small tail: its limit, then `end ... more`.
    reader.writer.send(b"tail start 3").await.unwrap();
    let page = answers(&mut reader, 4).await;
    assert!(
        page[..3].iter().all(|l| l.starts_with("found ")),
        "{page:?}"
    );
    assert!(
        page[3].starts_with("end 3 ") && page[3].ends_with(" more"),
        "{page:?}"
    );
    // Far more requests at once than are served: the rest are refused, in order.
    let burst = "get 1-1\n".repeat(40);
    reader.writer.queue(&burst.as_bytes()[..burst.len() - 1]);
    reader.writer.flush().await.unwrap();
    let lines = answers(&mut reader, 40).await;
    let served = lines
        .iter()
        .take_while(|l| l.starts_with("notfound 1-1"))
        .count();
    assert!(served >= 16, "{lines:?}");
    assert!(
        lines[served..]
            .iter()
            .all(|l| l.starts_with("ERROR too many requests in flight (at most 16 per reader)")),
        "{lines:?}"
    );
    // The connection goes on.
    reader.writer.send(b"tail start 1000").await.unwrap();
    let all = answers(&mut reader, 31).await;
    assert_eq!(
        all[30],
        format!("end 30 {} done", all[29].split(' ').nth(1).unwrap())
    );
    // A line over the limit closes the connection with the reason.
    reader.writer.send(&vec![b'x'; 70_000]).await.unwrap();
    assert_eq!(
        answers(&mut reader, 1).await,
        vec!["ERROR line too long (max 65536 bytes)".to_owned()]
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_data_nodes_get_a_clear_error() {
    let cluster = start(&[]).await;
    let err = client::read::get(&options(&cluster), &Wanted::Id("1-1".parse().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the head node could not serve it: no data nodes available"
    );
    cluster.stop().await;
}

fn read_bench(
    cluster: &Cluster,
    connections: usize,
    pipeline: usize,
) -> client::bench::BenchConfig {
    client::bench::BenchConfig {
        connect: options(cluster),
        client_id: None,
        target: client::bench::BenchTarget::Get,
        connections,
        pipeline,
        limit: client::bench::Limit::Count(400),
        payload: client::bench::Payload::Seed,
        warmup: Duration::ZERO,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_bench_gets_stored_messages_by_id_and_checks_each_answer() {
    let cluster = start(&["dn1", "dn2", "dn3"]).await;
    let empty = client::bench::run(read_bench(&cluster, 1, 1))
        .await
        .unwrap_err();
    assert!(
        empty.to_string().contains("nothing to read back yet"),
        "{empty}"
    );
    let mut writer = connect_as(cluster.addr, "cliente id=bench-reads").await;
    let texts: Vec<String> = (0..30).map(|i| format!("numero random: {i}")).collect();
    store(&mut writer, 1, &texts).await;

    let report = client::bench::run(read_bench(&cluster, 2, 8))
        .await
        .unwrap();
    assert_eq!(report.target, "get");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.messages, 400, "{report}");
    assert!(report.msgs_per_sec > 0.0 && report.p50_us <= report.p99_us);

    let too_deep = client::bench::run(read_bench(&cluster, 1, 17))
        .await
        .unwrap_err();
    assert!(
        too_deep
            .to_string()
            .contains("at most 16 requests in flight"),
        "{too_deep}"
    );
    cluster.stop().await;
}
