//! The head node with real data nodes, in one process, over loopback.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use headnode::membership::{Event, EvictReason};
use protocol::auth::{ClusterToken, Nonce};
use protocol::client::StoreReply;
use protocol::ids::MessageId;
use test_support::scripted_node::{TEST_TOKEN, fake_node, register_refused, test_token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::support::{
    Cluster, LogCapture, check_every_ack_is_stored, connect_client, fast_config, send_pipelined,
};

fn texts(client: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("cliente {client} numero random: {i}"))
        .collect()
}

/// Starts `clients` clients pipelining `per_client` messages each, and
/// returns once `acked` answers have come back in all: the load is underway.
async fn start_load(
    cluster: &Cluster,
    clients: usize,
    per_client: usize,
    acked: u64,
) -> Vec<tokio::task::JoinHandle<Vec<StoreReply>>> {
    let acks = Arc::new(AtomicU64::new(0));
    let tasks = (0..clients)
        .map(|c| {
            let acks = acks.clone();
            tokio::spawn(send_pipelined(
                cluster.addr,
                texts(c, per_client),
                move || {
                    acks.fetch_add(1, Ordering::Relaxed);
                },
            ))
        })
        .collect();
    while acks.load(Ordering::Relaxed) < acked {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tasks
}

async fn start_with_nodes(n: usize) -> Cluster {
    start_with_nodes_and(n, fast_config()).await
}

async fn start_with_nodes_and(n: usize, config: headnode::Config) -> Cluster {
    let mut cluster = Cluster::start(config).await;
    for i in 1..=n {
        let config = cluster.node_config(&format!("dn{i}"));
        cluster.add_node(config).await;
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_pipelining_clients_every_ack_names_the_node_that_stored_it() {
    // Short sticky runs: 10,000 messages make hundreds of runs, enough for
    // the random choice to even out across the nodes.
    let mut cluster = Cluster::start(headnode::Config {
        sticky_run: 16,
        ..fast_config()
    })
    .await;
    for i in 1..=3 {
        let config = cluster.node_config(&format!("dn{i}"));
        cluster.add_node(config).await;
    }
    let mut clients = Vec::new();
    for c in 0..10 {
        clients.push(tokio::spawn(send_pipelined(
            cluster.addr,
            texts(c, 1000),
            || {},
        )));
    }
    let mut all = Vec::new();
    let mut per_client = Vec::new();
    for client in clients {
        per_client.push(client.await.unwrap());
    }
    let stored_texts = cluster.stored_texts();
    for (c, replies) in per_client.into_iter().enumerate() {
        // Each answer belongs to this client's own message, in order.
        for (i, reply) in replies.iter().enumerate() {
            let StoreReply::Stored { id, .. } = reply else {
                panic!("error reply {reply:?}")
            };
            assert_eq!(stored_texts.get(id), Some(&texts(c, 1000)[i]));
        }
        all.extend(replies);
    }
    let duplicates = check_every_ack_is_stored(&cluster, &all, &HashMap::new());
    assert_eq!(duplicates, 0, "no failures, so nothing is stored twice");
    let stored = cluster.stored();
    let total: usize = stored.values().map(|ids| ids.len()).sum();
    assert_eq!(total, 10_000);
    for (node, ids) in &stored {
        assert!(
            ids.len() > 2000,
            "{node} got only {} of 10000 messages",
            ids.len()
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_mid_load_loses_no_acknowledged_message() {
    let mut cluster = start_with_nodes(3).await;
    let clients = start_load(&cluster, 10, 1000, 3000).await;
    let killed_at = Instant::now();
    cluster.nodes[0].kill();
    let evicted = cluster
        .wait_for(
            "dn1 eviction",
            |e| matches!(e, Event::Evicted { member, .. } if member.node.as_str() == "dn1"),
        )
        .await;
    let detection = killed_at.elapsed();
    assert!(
        matches!(
            &evicted,
            Event::Evicted {
                reason: EvictReason::ConnectionLost(_),
                ..
            }
        ),
        "{evicted:?}"
    );
    assert!(
        detection < Duration::from_millis(500),
        "eviction took {detection:?}"
    );

    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    let duplicates = check_every_ack_is_stored(&cluster, &all, &HashMap::new());
    let per_node: Vec<(String, usize)> = {
        let mut counts: Vec<_> = cluster
            .stored()
            .into_iter()
            .map(|(node, ids)| (node, ids.len()))
            .collect();
        counts.sort();
        counts
    };
    let acked_by_killed = all
        .iter()
        .filter(|r| matches!(r, StoreReply::Stored { holders, .. } if holders.iter().any(|n| n == "dn1")))
        .count();
    println!(
        "kill test: sent 10000, acknowledged {}, stored per node {per_node:?} (dn1 acknowledged {acked_by_killed} before it died), stored twice {duplicates}, kill-to-eviction {detection:?}",
        all.len()
    );
    assert_eq!(all.len(), 10_000);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_node_is_suspected_then_evicted_and_its_messages_stored_elsewhere() {
    let mut config = fast_config();
    config.detector.suspect_after = Duration::from_millis(300);
    config.detector.hung_grace = Duration::from_millis(400);
    config.ack_timeout = Duration::from_secs(10);
    // Every message routed on its own, so the hung node surely gets some.
    config.sticky_run = 1;
    let mut cluster = Cluster::start(config).await;
    for id in ["dn1", "dn2"] {
        let config = cluster.node_config(id);
        cluster.add_node(config).await;
    }
    let hung = fake_node(cluster.addr, "hung").await;
    cluster
        .wait_for(
            "hung to join",
            |e| matches!(e, Event::Joined { member, .. } if member.node.as_str() == "hung"),
        )
        .await;

    let first = send_pipelined(cluster.addr, texts(0, 300), || {}).await;
    hung.hang.notify_one();
    let hung_at = Instant::now();
    // Messages sent now partly go to the hung node before it is suspected.
    let during = tokio::spawn(send_pipelined(cluster.addr, texts(1, 300), || {}));

    cluster
        .wait_for(
            "hung to be suspect",
            |e| matches!(e, Event::Suspected { member, .. } if member.node.as_str() == "hung"),
        )
        .await;
    let evicted = cluster
        .wait_for(
            "hung eviction",
            |e| matches!(e, Event::Evicted { member, .. } if member.node.as_str() == "hung"),
        )
        .await;
    let detection = hung_at.elapsed();
    assert!(
        matches!(
            &evicted,
            Event::Evicted {
                reason: EvictReason::Hung { .. },
                ..
            }
        ),
        "{evicted:?}"
    );
    assert!(
        detection < Duration::from_secs(2),
        "eviction took {detection:?}"
    );

    let during = during.await.unwrap();
    let mut fakes = HashMap::new();
    fakes.insert("hung".to_string(), hung.acked.lock().unwrap().clone());
    let all: Vec<StoreReply> = first.into_iter().chain(during).collect();
    let duplicates = check_every_ack_is_stored(&cluster, &all, &fakes);
    let by_hung = all
        .iter()
        .filter(|r| matches!(r, StoreReply::Stored { holders, .. } if holders.iter().any(|n| n == "hung")))
        .count();
    println!(
        "hang test: sent 600, acknowledged {} ({by_hung} by the hung node before it hung), duplicated {duplicates}, hang-to-eviction {detection:?}",
        all.len()
    );
    assert_eq!(all.len(), 600);
    assert!(by_hung > 0, "the hung node was never chosen");
    hung.task.abort();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_stall_evicts_no_one() {
    // Default detector timings: suspect after 2 s of silence, evict 3 s later.
    // One copy per message: a stall at the edge of suspicion takes the
    // staller out of routing for a moment, and with two copies wanted of
    // two nodes a message then waits and may fail (`not enough data
    // nodes`), which is right but not what this test is about.
    let config = headnode::Config {
        ping_interval: Duration::from_secs(3600),
        cluster_token: Some(test_token()),
        replicas: 1,
        min_replicas: 1,
        ..headnode::Config::default()
    };
    let mut cluster = Cluster::start(config).await;
    let config = cluster.node_config("dn1");
    cluster.add_node(config).await;
    let staller = fake_node(cluster.addr, "staller").await;
    cluster
        .wait_for(
            "staller to join",
            |e| matches!(e, Event::Joined { member, .. } if member.node.as_str() == "staller"),
        )
        .await;

    staller.hang.notify_one();
    let during = tokio::spawn(send_pipelined(cluster.addr, texts(0, 200), || {}));
    tokio::time::sleep(Duration::from_secs(2)).await;
    staller.resume.notify_one();
    let replies = during.await.unwrap();
    let events = cluster.events_within(Duration::from_secs(2)).await;
    assert!(
        !events.iter().any(|e| matches!(e, Event::Evicted { .. })),
        "a 2 s stall must not evict: {events:?}"
    );
    let mut fakes = HashMap::new();
    fakes.insert("staller".to_string(), staller.acked.lock().unwrap().clone());
    check_every_ack_is_stored(&cluster, &replies, &fakes);
    staller.task.abort();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_silent_on_icmp_for_ping_misses_rounds_is_evicted_and_the_node_rejoins() {
    let mut config = fast_config();
    config.ping_interval = Duration::from_millis(200);
    config.detector.ping_misses = 3;
    let mut cluster = Cluster::start(config).await;
    let mut dn1 = cluster.node_config("dn1");
    dn1.source_ip = Some("127.0.0.2".parse().unwrap());
    let first_incarnation = dn1.incarnation;
    cluster.add_node(dn1).await;
    let config = cluster.node_config("dn2");
    cluster.add_node(config).await;

    cluster.prober.set_down("127.0.0.2".parse().unwrap(), true);
    let mut misses = Vec::new();
    let evicted = loop {
        let event = cluster
            .wait_for("dn1 misses and eviction", |e| {
                matches!(e, Event::Missed { member, .. } | Event::Evicted { member, .. }
                    if member.node.as_str() == "dn1")
            })
            .await;
        match event {
            Event::Missed {
                misses: n,
                heartbeat_answers,
                ..
            } => misses.push((n, heartbeat_answers)),
            evicted => break evicted,
        }
    };
    assert_eq!(
        misses,
        [(1, true), (2, true)],
        "its heartbeat answers, so it has three rounds"
    );
    assert!(
        matches!(
            &evicted,
            Event::Evicted {
                reason: EvictReason::Unreachable,
                ..
            }
        ),
        "{evicted:?}"
    );

    // Its host answers again; the node, which reconnects by itself, is back.
    cluster.prober.set_down("127.0.0.2".parse().unwrap(), false);
    let rejoined = cluster
        .wait_for(
            "dn1 to rejoin",
            |e| matches!(e, Event::Joined { member, .. } if member.node.as_str() == "dn1"),
        )
        .await;
    assert!(
        matches!(&rejoined, Event::Joined { rejoined: true, member } if member.incarnation == first_incarnation)
    );

    // A restart is a new incarnation, registered again as a rejoin.
    cluster.nodes[0].kill();
    cluster
        .wait_for(
            "dn1 loss",
            |e| matches!(e, Event::Evicted { member, .. } if member.node.as_str() == "dn1"),
        )
        .await;
    cluster.nodes[0].released().await;
    let restarted = cluster.node_config("dn1");
    let new_incarnation = restarted.incarnation;
    assert_ne!(new_incarnation, first_incarnation);
    let task = tokio::spawn(datanode::run(restarted, std::future::pending()));
    let rejoined = cluster
        .wait_for(
            "dn1 restart",
            |e| matches!(e, Event::Joined { member, .. } if member.node.as_str() == "dn1"),
        )
        .await;
    assert!(
        matches!(&rejoined, Event::Joined { rejoined: true, member } if member.incarnation == new_incarnation)
    );
    task.abort();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lost_echo_evicts_no_one() {
    let mut config = fast_config();
    config.ping_interval = Duration::from_millis(100);
    config.detector.ping_misses = 3;
    let mut cluster = Cluster::start(config).await;
    let mut dn1 = cluster.node_config("dn1");
    dn1.source_ip = Some("127.0.0.2".parse().unwrap());
    cluster.add_node(dn1).await;
    let config = cluster.node_config("dn2");
    cluster.add_node(config).await;

    cluster.prober.lose_next("127.0.0.2".parse().unwrap(), 1);
    let is_dn1 = |member: &headnode::membership::MemberInfo| member.node.as_str() == "dn1";
    cluster
        .wait_for("dn1 to miss a round", |e| {
            matches!(e, Event::Missed { member, misses: 1, heartbeat_answers: true } if is_dn1(member))
        })
        .await;
    let events = cluster.events_within(Duration::from_millis(600)).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Available { member, .. } if is_dn1(member))),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Evicted { .. })),
        "{events:?}"
    );
    cluster.stop().await;
}

/// Current-thread runtime: the captured log sees every line the head node writes.
#[tokio::test]
async fn filtered_icmp_evicts_no_one_while_heartbeats_answer_and_is_logged_once() {
    let (logs, _guard) = LogCapture::start();
    let mut config = fast_config();
    config.ping_interval = Duration::from_millis(100);
    config.detector.ping_misses = 3;
    // Generous, so that a slow machine cannot make a member look suspect.
    config.detector.suspect_after = Duration::from_secs(3);
    config.detector.hung_grace = Duration::from_secs(3);
    let mut cluster = Cluster::start(config).await;
    for id in ["dn1", "dn2"] {
        let config = cluster.node_config(id);
        cluster.add_node(config).await;
    }

    cluster.prober.set_all_down(true);
    cluster
        .wait_for("ICMP to be given up on", |e| {
            matches!(e, Event::IcmpUnanswered { rounds: 3 })
        })
        .await;
    // About ten more rounds without a reply.
    let events = cluster.events_within(Duration::from_secs(1)).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Evicted { .. } | Event::IcmpUnanswered { .. })),
        "{events:?}"
    );

    cluster.prober.set_all_down(false);
    cluster
        .wait_for("ICMP to answer again", |e| *e == Event::IcmpAnswering)
        .await;
    let events = cluster.events_within(Duration::from_millis(500)).await;
    assert!(
        !events.iter().any(|e| matches!(e, Event::Evicted { .. })),
        "{events:?}"
    );
    cluster.stop().await;
    assert_eq!(
        logs.count(
            "ICMP unavailable: no echo reply from any data node for 3 rounds while every heartbeat answers; \
             evicting on heartbeat and connection loss only"
        ),
        1
    );
    assert_eq!(logs.count("ICMP answering again"), 1);
    assert_eq!(logs.count("did not answer ping"), 0);
    assert_eq!(logs.count("no disponible"), 0);
}

#[tokio::test]
async fn ipv4_peers_of_a_dual_stack_listener_are_known_by_their_ipv4_address() {
    let listener = match tokio::net::TcpListener::bind("[::]:0").await {
        Ok(listener) => listener,
        Err(e) => {
            println!("skipped: cannot listen on [::] ({e})");
            return;
        }
    };
    let port = listener.local_addr().unwrap().port();
    let v4: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let probe = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(v4)).await;
    if !matches!(probe, Ok(Ok(_))) {
        println!("skipped: [::] does not accept IPv4 here (IPV6_V6ONLY?): {probe:?}");
        return;
    }
    drop(probe);
    let mut cluster = Cluster::start_on(listener, v4, fast_config()).await;
    let config = cluster.node_config("dn1");
    let task = tokio::spawn(datanode::run(config, std::future::pending()));
    let joined = cluster
        .wait_for("dn1 to join", |e| matches!(e, Event::Joined { .. }))
        .await;
    let Event::Joined { member, .. } = joined else {
        unreachable!()
    };
    assert_eq!(member.addr, std::net::IpAddr::from([127, 0, 0, 1]));
    task.abort();
    cluster.stop().await;
}

#[tokio::test]
async fn older_incarnation_of_a_node_is_refused() {
    let mut cluster = Cluster::start(fast_config()).await;
    let config = cluster.node_config("dn1");
    let incarnation = config.incarnation;
    cluster.add_node(config).await;
    let answer = register_refused(cluster.addr, "dn1", incarnation - 1).await;
    assert_eq!(
        answer,
        format!(
            "ERROR stale incarnation {} of dn1: incarnation {incarnation} has registered since",
            incarnation - 1
        )
    );
    cluster.stop().await;
}

#[tokio::test]
async fn second_live_process_with_the_same_id_is_refused() {
    let cluster = start_with_nodes(1).await;
    let mut twin = cluster.node_config("dn1");
    twin.data_dir = cluster.dir.path().join("twin");
    let answer = register_refused(cluster.addr, "dn1", twin.incarnation).await;
    assert_eq!(
        answer,
        "ERROR node id dn1 is already in use by a live data node"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn data_nodes_must_prove_the_cluster_token() {
    let mut cluster = Cluster::start(fast_config()).await;

    // Without the challenge, or answering it wrongly: refused and closed.
    for role in [
        "dataNode id=x incarnation=1".to_owned(),
        "dataNode".to_owned(),
        format!("dataNode id=x incarnation=1 nonce={}", Nonce::random()),
    ] {
        let stream = TcpStream::connect(cluster.addr).await.unwrap();
        let mut conn = protocol::Connection::connect(stream, 1024).unwrap();
        protocol::handshake::initiate(
            &mut conn.reader,
            &mut conn.writer,
            Some(&role),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut answer = conn.reader.read_frame().await.unwrap().unwrap();
        if answer.as_str().starts_with("challenge ") {
            conn.writer
                .send(format!("proof {}", "00".repeat(32)).as_bytes())
                .await
                .unwrap();
            answer = conn.reader.read_frame().await.unwrap().unwrap();
        }
        assert_eq!(answer.as_str(), "ERROR unauthorized", "{role}");
        assert!(
            conn.reader.read_frame().await.unwrap().is_none(),
            "closed after refusal"
        );
    }

    // A real data node with another token stops with a clear error: it
    // does not trust a head node that cannot prove its token.
    let mut wrong = cluster.node_config("dn1");
    wrong.cluster_token = Some(ClusterToken::new("another-token-0123456789").unwrap());
    let err = datanode::run(wrong, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(err, datanode::DataNodeError::HeadNotAuthenticated(_)),
        "{err}"
    );

    cluster.add_node(cluster.node_config("dn1")).await;
    let replies = send_pipelined(cluster.addr, texts(0, 10), || {}).await;
    check_every_ack_is_stored(&cluster, &replies, &HashMap::new());
    cluster.stop().await;
}

#[tokio::test]
async fn without_a_token_data_nodes_are_refused_unless_registration_is_open() {
    let mut closed = fast_config();
    closed.cluster_token = None;
    let cluster = Cluster::start(closed).await;
    let mut node = cluster.node_config("dn1");
    node.cluster_token = None;
    node.open_registration = true;
    let err = datanode::run(node, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unauthorized: the head node has no cluster token configured"),
        "{err}"
    );
    cluster.stop().await;

    let mut open = fast_config();
    open.cluster_token = None;
    open.open_registration = true;
    let mut cluster = Cluster::start(open).await;
    let mut node = cluster.node_config("dn1");
    node.cluster_token = None;
    node.open_registration = true;
    cluster.add_node(node).await;
    let replies = send_pipelined(cluster.addr, texts(0, 10), || {}).await;
    check_every_ack_is_stored(&cluster, &replies, &HashMap::new());
    cluster.stop().await;
}

#[tokio::test]
async fn a_data_node_without_a_token_refuses_to_start_unless_told_to() {
    let cluster = Cluster::start(fast_config()).await;
    let mut node = cluster.node_config("dn1");
    node.cluster_token = None;
    let err = datanode::run(node, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, datanode::DataNodeError::NoToken), "{err}");
    cluster.stop().await;
}

#[tokio::test]
async fn the_token_never_crosses_the_wire() {
    let mut cluster = Cluster::start(fast_config()).await;
    // Everything between the data node and the head node passes through a
    // recording relay.
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let head = cluster.addr;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let recorder = seen.clone();
    tokio::spawn(async move {
        let (mut node_side, _) = relay.accept().await.unwrap();
        let mut head_side = TcpStream::connect(head).await.unwrap();
        let mut from_node = vec![0u8; 4096];
        let mut from_head = vec![0u8; 4096];
        loop {
            tokio::select! {
                n = node_side.read(&mut from_node) => {
                    let Ok(n @ 1..) = n else { return };
                    recorder.lock().unwrap().extend_from_slice(&from_node[..n]);
                    if head_side.write_all(&from_node[..n]).await.is_err() { return }
                }
                n = head_side.read(&mut from_head) => {
                    let Ok(n @ 1..) = n else { return };
                    recorder.lock().unwrap().extend_from_slice(&from_head[..n]);
                    if node_side.write_all(&from_head[..n]).await.is_err() { return }
                }
            }
        }
    });
    let mut node = cluster.node_config("dn1");
    node.headnode = relay_addr.to_string();
    cluster.add_node(node).await;
    let replies = send_pipelined(cluster.addr, texts(0, 5), || {}).await;
    check_every_ack_is_stored(&cluster, &replies, &HashMap::new());
    let seen = seen.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("challenge ") && text.contains("proof "),
        "{text}"
    );
    assert!(
        !seen
            .windows(TEST_TOKEN.len())
            .any(|w| w == TEST_TOKEN.as_bytes()),
        "the token itself was sent: {text}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn clients_never_receive_data_node_traffic() {
    let mut cluster = start_with_nodes(1).await;
    let mut conn = connect_client(cluster.addr).await;
    // Whatever a client sends is a message to store, never a role change.
    for text in [
        "dataNode id=evil incarnation=9",
        "recibido 1-1",
        "pong 1",
        "bye",
    ] {
        conn.writer.send(text.as_bytes()).await.unwrap();
        let reply = conn.reader.read_frame().await.unwrap().unwrap();
        let StoreReply::Stored { id, .. } = StoreReply::parse(reply.as_str()).unwrap() else {
            panic!("{reply:?}")
        };
        assert_eq!(cluster.stored_text(id).as_deref(), Some(text));
    }
    let events = cluster.events_within(Duration::from_millis(300)).await;
    assert!(
        events.iter().all(|e| !matches!(e, Event::Joined { .. })),
        "{events:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_data_nodes_clients_get_a_prompt_error_then_traffic_resumes() {
    let mut cluster = Cluster::start(fast_config()).await;
    let mut conn = connect_client(cluster.addr).await;
    let started = Instant::now();
    for i in 0..3 {
        conn.writer.queue(format!("numero random: {i}").as_bytes());
    }
    conn.writer.flush().await.unwrap();
    for _ in 0..3 {
        let reply = conn.reader.read_frame().await.unwrap().unwrap();
        assert_eq!(reply.as_str(), "ERROR no data nodes available");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // A store client keeps retrying until a node joins.
    let mut connect = client::ConnectOptions::new(cluster.addr.to_string(), None);
    connect.retry_for = Duration::from_secs(10);
    let store = tokio::spawn(client::store::run(
        client::store::StoreConfig {
            connect,
            client_id: None,
            interval: Duration::ZERO,
            count: Some(20),
            pipeline: 4,
            message: Some("retried message".into()),
        },
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let config = cluster.node_config("late");
    cluster.add_node(config).await;
    let summary = store.await.unwrap().unwrap();
    assert_eq!(summary.answered, 20);
    assert_eq!(summary.failed, 0);
    assert!(summary.resent > 0, "the client had to retry: {summary:?}");
    let stored = cluster.stored();
    assert_eq!(stored["late"].len(), 20);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelining_clients_never_get_each_others_replies() {
    let cluster = start_with_nodes(2).await;
    let a = tokio::spawn(send_pipelined(cluster.addr, texts(1, 500), || {}));
    let b = tokio::spawn(send_pipelined(cluster.addr, texts(2, 500), || {}));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let stored_texts = cluster.stored_texts();
    for (c, replies) in [(1, a), (2, b)] {
        assert_eq!(replies.len(), 500);
        for (i, reply) in replies.iter().enumerate() {
            let StoreReply::Stored { id, .. } = reply else {
                panic!("{reply:?}")
            };
            assert_eq!(
                stored_texts.get(id),
                Some(&texts(c, 500)[i]),
                "client {c} reply {i}"
            );
        }
    }
    cluster.stop().await;
}

/// An original-system data node: `peticion` / exact `confirmacion` / `dataNode`,
/// then one `recv` per message and a bare `recibido`.
async fn original_data_node(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<Vec<String>> {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"peticion").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = socket.read(&mut buf).await.unwrap();
    assert_eq!(
        &buf[..n],
        b"confirmacion",
        "the original checks this exact string"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    socket.write_all(b"dataNode").await.unwrap();
    tokio::spawn(async move {
        let mut received = Vec::new();
        loop {
            let n = match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => n,
            };
            let text = String::from_utf8(buf[..n].to_vec()).unwrap();
            assert!(text.starts_with("mensaje: "), "{text:?}");
            assert_eq!(
                text.matches("mensaje: ").count(),
                1,
                "one message per recv: {text:?}"
            );
            received.push(text.trim_start_matches("mensaje: ").to_owned());
            if socket.write_all(b"recibido").await.is_err() {
                return received;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_style_peers_work_alongside_line_framed_ones() {
    // Original data nodes cannot prove a token: they need open registration.
    let mut config = fast_config();
    config.open_registration = true;
    let mut cluster = start_with_nodes_and(1, config).await;
    let legacy_node = original_data_node(cluster.addr).await;
    let joined = cluster
        .wait_for(
            "original node to join",
            |e| matches!(e, Event::Joined { member, .. } if member.legacy),
        )
        .await;
    let Event::Joined { member, .. } = joined else {
        unreachable!()
    };
    let legacy_id = member.node.to_string();
    assert!(legacy_id.starts_with("dn-127.0.0.1-"), "{legacy_id}");

    // An original client: one write per message, one recv per answer.
    let mut legacy_client = TcpStream::connect(cluster.addr).await.unwrap();
    legacy_client.write_all(b"peticion").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = legacy_client.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"confirmacion");
    tokio::time::sleep(Duration::from_millis(30)).await;
    legacy_client.write_all(b"cliente").await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;

    // Meanwhile a line-framed client pipelines.
    let framed = tokio::spawn(send_pipelined(cluster.addr, texts(9, 100), || {}));
    let mut legacy_replies = Vec::new();
    for i in 0..10 {
        legacy_client
            .write_all(format!("numero random: {i}").as_bytes())
            .await
            .unwrap();
        let n = legacy_client.read(&mut buf).await.unwrap();
        let reply = String::from_utf8(buf[..n].to_vec()).unwrap();
        assert!(
            !reply.ends_with('\n'),
            "original clients get bare replies: {reply:?}"
        );
        legacy_replies.push(StoreReply::parse(&reply).unwrap());
    }
    let framed = framed.await.unwrap();
    check_every_ack_is_stored_or_legacy(&cluster, &framed, &legacy_id);

    // The original node received exactly what its acks say it stored.
    drop(legacy_client);
    let held_by_legacy: Vec<MessageId> = framed
        .iter()
        .chain(&legacy_replies)
        .filter_map(|r| match r {
            StoreReply::Stored { holders, id } if holders.contains(&legacy_id) => Some(*id),
            _ => None,
        })
        .collect();
    assert!(
        !held_by_legacy.is_empty(),
        "random routing sends the original node a share"
    );
    cluster.stop().await;
    let received = legacy_node.await.unwrap();
    assert!(
        received.len() >= held_by_legacy.len(),
        "{} < {}",
        received.len(),
        held_by_legacy.len()
    );
}

fn check_every_ack_is_stored_or_legacy(cluster: &Cluster, replies: &[StoreReply], legacy_id: &str) {
    let stored = cluster.stored();
    for reply in replies {
        let StoreReply::Stored { holders, id } = reply else {
            panic!("{reply:?}")
        };
        let node = &holders[0];
        if node != legacy_id {
            assert!(stored[node].contains_key(id), "{node} lacks {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_nodes_rejoin_a_restarted_head_node_and_keep_their_data() {
    let mut cluster = start_with_nodes(2).await;
    let before = send_pipelined(cluster.addr, texts(0, 100), || {}).await;
    cluster.restart_head().await;
    let mut rejoined = std::collections::HashSet::new();
    while rejoined.len() < 2 {
        let event = cluster
            .wait_for("both nodes to rejoin", |e| {
                matches!(e, Event::Joined { .. })
            })
            .await;
        if let Event::Joined { member, .. } = event {
            rejoined.insert(member.node.to_string());
        }
    }
    let after = send_pipelined(cluster.addr, texts(1, 100), || {}).await;
    let all: Vec<StoreReply> = before.into_iter().chain(after).collect();
    check_every_ack_is_stored(&cluster, &all, &HashMap::new());
    let stored: usize = cluster.stored().values().map(|ids| ids.len()).sum();
    assert_eq!(stored, 200, "data written before the restart is kept");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_node_is_drained_and_loses_nothing() {
    let mut cluster = start_with_nodes(3).await;
    let clients = start_load(&cluster, 5, 1000, 1000).await;
    // As on SIGTERM: `bye`, drained by the head node, exit 0.
    cluster.nodes[0].stop().await.unwrap();
    cluster
        .wait_for(
            "dn1 to leave",
            |e| matches!(e, Event::Leaving { member } if member.node.as_str() == "dn1"),
        )
        .await;
    let left = cluster
        .wait_for(
            "dn1 removal",
            |e| matches!(e, Event::Evicted { member, .. } if member.node.as_str() == "dn1"),
        )
        .await;
    assert!(
        matches!(
            &left,
            Event::Evicted {
                reason: EvictReason::Left,
                ..
            }
        ),
        "{left:?}"
    );
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    assert_eq!(all.len(), 5000);
    let duplicates = check_every_ack_is_stored(&cluster, &all, &HashMap::new());
    assert_eq!(duplicates, 0, "a clean leave resends nothing");
    cluster.stop().await;
}
