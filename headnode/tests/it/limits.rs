//! The head node against peers that misbehave: every bound holds, and the
//! truth about each message's outcome is told.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use headnode::membership::{Event, ProbeOutcome};
use headnode::{Prober, RunError};
use protocol::client::StoreReply;
use test_support::framed;
use test_support::process::run_to_end;
use test_support::scripted_node::{fake_node, register, welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::support::{Cluster, connect_client, fast_config, send_pipelined};

/// Reads one reply line from a client connection, within 10 s.
async fn reply(conn: &mut protocol::Connection) -> String {
    framed::line(&mut conn.reader, "a reply").await
}

/// For tests whose data node is driven by hand and answers no heartbeat:
/// with the fast detector it would be evicted 1.2 s after it registered,
/// which a loaded machine can reach before the test is done with it.
fn config_for_a_node_that_never_pongs() -> headnode::Config {
    let mut config = fast_config();
    config.detector.suspect_after = Duration::from_secs(60);
    config.detector.hung_grace = Duration::from_secs(60);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_paused_then_closed() {
    let mut config = fast_config();
    config.write_timeout = Duration::from_secs(1);
    let mut cluster = Cluster::start(config).await;
    cluster.add_node(cluster.node_config("dn1")).await;

    // Empty lines, each answered `ERROR empty message`, and never a read.
    let mut flooder = TcpStream::connect(cluster.addr).await.unwrap();
    flooder.write_all(b"peticion\ncliente\n").await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let flood = tokio::spawn(async move {
        let chunk = vec![b'\n'; 64 * 1024];
        loop {
            match flooder.write_all(&chunk).await {
                Ok(()) => counter.fetch_add(chunk.len() as u64, Ordering::Relaxed),
                Err(e) => return e,
            };
        }
    });
    // The head node stops reading it once its answers pile up, and closes
    // it when its socket takes nothing for the write timeout.
    let error = tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .expect("the head node closed the flooding client")
        .unwrap();
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        sent < 64 << 20,
        "the head node kept reading: {sent} bytes taken ({error})"
    );
    // Everyone else is served as before.
    let replies = send_pipelined(cluster.addr, vec!["hola".into()], || {}).await;
    assert!(
        matches!(replies[0], StoreReply::Stored { .. }),
        "{replies:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_nodes_get_in_while_clients_hold_every_client_place() {
    let mut config = fast_config();
    // 40 in all: 10 reserved for data nodes, 10 for handshakes, 20 clients.
    config.max_connections = 40;
    let mut cluster = Cluster::start(config).await;
    let mut clients = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let stream = TcpStream::connect(cluster.addr).await.unwrap();
        let mut conn = protocol::Connection::connect(stream, 1024).unwrap();
        match protocol::handshake::initiate(
            &mut conn.reader,
            &mut conn.writer,
            Some("cliente"),
            Duration::from_secs(5),
        )
        .await
        {
            Ok(_) => clients.push(conn),
            Err(e) => panic!("handshake: {e}"),
        }
    }
    // Clients past their places are told so after the role step.
    for conn in &mut clients {
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_millis(50), conn.reader.read_frame()).await
        {
            assert_eq!(line.as_str(), "ERROR server full (20 clients)");
            refused += 1;
        }
    }
    assert_eq!(refused, 20);
    cluster.add_node(cluster.node_config("dn1")).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_handshake_room_makes_way_for_a_peer_that_finishes() {
    let mut config = fast_config();
    config.max_handshakes = 4;
    let cluster = Cluster::start(config).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(cluster.addr).await.unwrap());
    }
    // Give the head node time to take them in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = connect_client(cluster.addr).await;
    conn.writer.send(b"still served").await.unwrap();
    assert!(reply(&mut conn).await.starts_with("ERROR no data nodes"));
    let mut answer = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        silent[0].read_to_string(&mut answer),
    )
    .await;
    assert!(
        answer.starts_with("ERROR server busy"),
        "the longest waiter is closed: {answer:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_told_and_closed() {
    let mut config = fast_config();
    config.client_idle_timeout = Duration::from_millis(500);
    let cluster = Cluster::start(config).await;
    let mut conn = connect_client(cluster.addr).await;
    let started = Instant::now();
    assert_eq!(reply(&mut conn).await, "ERROR idle for 500ms; closing");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(conn.reader.read_frame().await.unwrap().is_none());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_acknowledgement_answers_the_client() {
    let mut config = fast_config();
    config.ack_timeout = Duration::from_millis(300);
    config.no_node_wait = Duration::from_secs(5);
    let cluster = Cluster::start(config).await;
    let slow = fake_node(cluster.addr, "slow").await;
    // It stops reading; the message times out on it and, with no other
    // node, waits for one. Then it reads, writes and acknowledges.
    slow.hang.notify_one();
    let mut conn = connect_client(cluster.addr).await;
    conn.writer.send(b"numero random: 7").await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    slow.resume.notify_one();
    let started = Instant::now();
    let answer = reply(&mut conn).await;
    assert!(
        answer.starts_with("slow , mensaje: recibido "),
        "the late acknowledgement is the answer: {answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered by the acknowledgement, not by the end of the wait"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_to_a_node_that_died_unacknowledged_is_outcome_unknown() {
    let mut config = config_for_a_node_that_never_pongs();
    config.no_node_wait = Duration::from_millis(300);
    let cluster = Cluster::start(config).await;
    let (mut node, welcome) = register(cluster.addr, "mute", 1).await;
    assert!(welcome.starts_with("welcome mute "), "{welcome}");
    let mut conn = connect_client(cluster.addr).await;
    conn.writer.send(b"numero random: 8").await.unwrap();
    // The node reads the message, then dies without acknowledging it.
    loop {
        let line = node.reader.read_frame().await.unwrap().unwrap();
        if line.as_str().starts_with("mensaje ") {
            break;
        }
    }
    drop(node);
    let answer = reply(&mut conn).await;
    assert!(
        answer.starts_with("ERROR outcome unknown: no data nodes available"),
        "{answer}"
    );
    // A message no node was ever sent is plainly not stored.
    conn.writer.send(b"numero random: 9").await.unwrap();
    assert_eq!(reply(&mut conn).await, "ERROR no data nodes available");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_for_room_in_flight_is_answered_when_the_head_node_stops() {
    let mut config = config_for_a_node_that_never_pongs();
    config.reader.max_line = 4096;
    // Room for one large message in flight, not two.
    config.in_flight_budget = 4096 + 256;
    let cluster = Cluster::start(config).await;
    // A node that reads and never acknowledges: the first message holds
    // the whole budget until the end.
    let (mut node, welcome) = register(cluster.addr, "silent", 1).await;
    assert!(welcome.starts_with("welcome silent "), "{welcome}");
    let mut a = connect_client(cluster.addr).await;
    a.writer.send("x".repeat(4000).as_bytes()).await.unwrap();
    loop {
        let line = node.reader.read_frame().await.unwrap().unwrap();
        if line.as_str().starts_with("mensaje ") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = node.reader.read_frame().await {} });
    // B's message waits for room; B has nothing else in flight.
    let mut b = connect_client(cluster.addr).await;
    b.writer.send(b"numero random: 5").await.unwrap();
    // Time for B's session to read it and wait on the budget.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(6), b.reader.read_frame()).await
    });
    cluster.stop().await;
    let answer = answer.await.unwrap();
    let Ok(Ok(Some(line))) = answer else {
        panic!("B was not answered: {answer:?}");
    };
    assert_eq!(line.as_str(), "ERROR head node shutting down");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_acknowledgements_answers_each_message_and_a_forged_run_costs_nothing() {
    let cluster = Cluster::start(config_for_a_node_that_never_pongs()).await;
    let (mut node, welcome) = register(cluster.addr, "runs", 1).await;
    assert!(welcome.starts_with("welcome runs "), "{welcome}");
    let mut conn = connect_client(cluster.addr).await;
    for n in 0..3 {
        conn.writer
            .send(format!("numero random: {n}").as_bytes())
            .await
            .unwrap();
    }
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let line = node.reader.read_frame().await.unwrap().unwrap();
        if let Some(rest) = line.as_str().strip_prefix("mensaje ") {
            let id: protocol::ids::MessageId = rest.split(':').next().unwrap().parse().unwrap();
            ids.push(id);
        }
    }
    assert!(ids.windows(2).all(|w| w[1].seq == w[0].seq + 1), "{ids:?}");
    // A run of four billion ids this node was never sent: ignored after
    // its first id, not looked up four billion times.
    let forged = format!("recibidos {}-1 4294967295", ids[0].epoch + 1);
    node.writer.send(forged.as_bytes()).await.unwrap();
    node.writer
        .send(format!("recibidos {} 3", ids[0]).as_bytes())
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(
            reply(&mut conn).await,
            format!("runs , mensaje: recibido {id}")
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_refused_and_never_reach_a_data_file() {
    let mut cluster = Cluster::start(fast_config()).await;
    cluster.add_node(cluster.node_config("dn1")).await;
    let mut conn = connect_client(cluster.addr).await;
    for bad in [
        &b"forged\r2026-01-01 00:00:00,000 - [1-1] mensaje: x"[..],
        b"nul\0byte",
        b"esc\x1b[2J",
    ] {
        conn.writer.send(bad).await.unwrap();
        let answer = reply(&mut conn).await;
        assert!(
            answer.starts_with("ERROR invalid message: control character U+"),
            "{answer}"
        );
    }
    conn.writer.send(b"tab\tis fine").await.unwrap();
    assert!(
        reply(&mut conn)
            .await
            .starts_with("dn1 , mensaje: recibido ")
    );
    let data = std::fs::read(cluster.nodes[0].data_dir.join("data.txt")).unwrap();
    assert!(!data.contains(&b'\r') && !data.contains(&0));
    assert_eq!(data.iter().filter(|b| **b == b'\n').count(), 1);
    cluster.stop().await;
}

#[tokio::test]
async fn a_zero_interval_is_refused_before_anything_starts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = headnode::Config {
        heartbeat_interval: Duration::ZERO,
        ..fast_config()
    };
    let result = headnode::run(listener, config, std::future::pending()).await;
    assert!(
        matches!(&result, Err(RunError::Config(e)) if e.to_string().contains("heartbeat interval")),
        "{result:?}"
    );
}

#[test]
fn the_binary_refuses_a_zero_interval_with_one_clear_line() {
    let output = run_to_end(Command::new(env!("CARGO_BIN_EXE_headnode")).args([
        "--listen",
        "127.0.0.1:0",
        "--ping-interval",
        "0",
    ]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = output.stderr;
    assert!(
        stderr.contains("invalid value '0' for '--ping-interval"),
        "{stderr}"
    );
    assert!(stderr.contains("out of range"), "{stderr}");
}

/// ICMP that panics, as a bug in a background task would.
struct PanickingProber;

impl Prober for PanickingProber {
    fn probe(
        &self,
        _addr: IpAddr,
        _timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + '_>> {
        Box::pin(async { panic!("prober bug") })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_background_task_stops_the_head_node() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let config = headnode::Config {
        ping_interval: Duration::from_millis(50),
        prober: Some(Arc::new(PanickingProber)),
        observer: Some(events_tx),
        ..fast_config()
    };
    let head = tokio::spawn(headnode::run(listener, config, std::future::pending()));
    let _node = fake_node(addr, "dn1").await;
    while let Some(event) = events.recv().await {
        if matches!(event, Event::Joined { .. }) {
            break;
        }
    }
    let result = tokio::time::timeout(Duration::from_secs(10), head)
        .await
        .expect("the head node stops instead of running on without its membership")
        .unwrap();
    assert!(
        matches!(
            &result,
            Err(RunError::TaskStopped {
                task: "membership",
                ..
            })
        ),
        "{result:?}"
    );
    // And it no longer accepts anyone, so a health check fails.
    assert!(TcpStream::connect(addr).await.is_err());
}

/// A data node that passed the token check but whose report never ends (a
/// line of keys every 20 ms, each within the line limit) is cut off when the
/// registration time is up, told why, and the head node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_node_report_that_never_ends_is_cut_off() {
    let mut config = fast_config();
    config.handshake_timeout = Duration::from_millis(800);
    config.dedup_keys = 10_000;
    let cluster = Cluster::start(config).await;
    let (conn, answer) = welcome(cluster.addr, "endless", 1).await;
    assert!(answer.starts_with("welcome endless "), "{answer}");
    let started = Instant::now();
    let protocol::Connection {
        mut reader,
        mut writer,
        ..
    } = conn;
    let sender = tokio::spawn(async move {
        let mut seq = 0u64;
        // Bounded: 10 s of lines at most.
        for _ in 0..500 {
            let mut line = String::from("held c-endless");
            for _ in 0..protocol::datanode::HELD_PER_LINE {
                seq += 1;
                line.push_str(&format!(" {seq}:1-{seq}"));
            }
            if writer.send(line.as_bytes()).await.is_err() {
                return seq;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seq
    });
    let told = tokio::time::timeout(Duration::from_secs(10), reader.read_frame())
        .await
        .expect("cut off within 10 s")
        .expect("the reason, before the connection closes")
        .expect("a line, not the end of the stream");
    let took = started.elapsed();
    assert_eq!(
        told.as_str(),
        "ERROR registration not finished within 800ms"
    );
    assert!(
        (Duration::from_millis(700)..Duration::from_secs(5)).contains(&took),
        "{took:?}"
    );
    sender.abort();

    // The head node still takes data nodes and stores messages.
    let _node = fake_node(cluster.addr, "dn1").await;
    let replies = send_pipelined(cluster.addr, vec!["hola".into()], || {}).await;
    assert!(
        matches!(replies[0], StoreReply::Stored { .. }),
        "{replies:?}"
    );
    cluster.stop().await;
}
