//! The head node's HTTP port with real data nodes, in one process:
//! `/metrics`, `/healthz`, `/status.json` (through `client status`'s
//! reader), the status page.

use std::net::SocketAddr;
use std::time::Duration;

use headnode::membership::{Event, EvictReason};
use protocol::client::StoreReply;
use protocol::connection::Connection;
use test_support::framed;
use test_support::http::{Answer, get};
use test_support::scripted_node::register;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Cluster, connect_as, fast_config, keyed_client, send_keyed, send_pipelined};

/// Checks that `text` is Prometheus (OpenMetrics) text: every sample line
/// is `name{labels} value` with a metric declared by `# TYPE`.
fn check_exposition(text: &str) {
    let mut declared = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next()) {
                (Some("TYPE"), Some(name)) => declared.push(name.to_owned()),
                (Some("HELP" | "UNIT"), Some(_)) => {}
                (Some("EOF"), None) => {}
                _ => panic!("bad comment line: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line}"
        );
        if let Some(labels) = series.split_once('{').map(|(_, l)| l) {
            assert!(labels.ends_with('}'), "bad labels in {line}");
        }
        assert!(
            declared.iter().any(|d| name.starts_with(d.as_str())),
            "{name} has no # TYPE"
        );
    }
    assert!(text.ends_with("# EOF\n"), "no # EOF");
}

/// The value of the sample line that starts with `series `.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

async fn store(conn: &mut Connection, seq: u64, text: &str) {
    match send_keyed(conn, seq, text).await {
        StoreReply::Stored { holders, .. } => assert_eq!(holders.len(), 2),
        StoreReply::Error(reason) => panic!("not stored: {reason}"),
    }
}

async fn two_copies_on(nodes: &[&str]) -> (Cluster, SocketAddr) {
    let config = headnode::Config {
        replicas: 2,
        min_replicas: 2,
        ..fast_config()
    };
    let (mut cluster, http) = Cluster::start_with_http(config).await;
    for id in nodes {
        let config = cluster.node_config(id);
        cluster.add_node(config).await;
    }
    (cluster, http)
}

#[tokio::test]
async fn metrics_count_what_was_stored_and_parse_as_prometheus_text() {
    let (cluster, http) = two_copies_on(&["dn1", "dn2"]).await;
    let mut client = keyed_client(cluster.addr, "metrics-1").await;
    for seq in 1..=3 {
        store(&mut client, seq, "hola").await;
    }
    let Answer {
        status_line,
        body: text,
    } = get(http, "/metrics").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    check_exposition(&text);
    assert_eq!(sample(&text, "msgstore_messages_stored_total"), 3.0);
    assert_eq!(sample(&text, "msgstore_data_nodes{state=\"live\"}"), 2.0);
    assert_eq!(sample(&text, "msgstore_data_nodes{state=\"evicted\"}"), 0.0);
    assert_eq!(
        sample(&text, "msgstore_node_copies_stored_total{node=\"dn1\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "msgstore_node_stored_bytes_total{node=\"dn2\"}"),
        12.0
    );
    assert_eq!(
        sample(&text, "msgstore_messages_under_replicated_total"),
        0.0
    );
    assert_eq!(sample(&text, "msgstore_copies_over_replicated_total"), 0.0);
    assert_eq!(
        sample(&text, "msgstore_evictions_total{reason=\"hung\"}"),
        0.0
    );
    assert_eq!(sample(&text, "msgstore_client_connections"), 1.0);
    assert_eq!(sample(&text, "msgstore_data_node_connections"), 2.0);
    let timed = sample(&text, "msgstore_ack_latency_seconds_count");
    assert!(timed >= 1.0);
    assert_eq!(
        sample(&text, "msgstore_ack_latency_seconds_bucket{le=\"+Inf\"}"),
        timed
    );
    assert!(sample(&text, "msgstore_uptime_seconds") >= 0.0);
    assert!(sample(&text, "msgstore_epoch") > 0.0);
    assert!(sample(&text, "msgstore_log_lines_dropped_total") >= 0.0);
    for kind in ["get", "getkey", "tail"] {
        let series = format!("msgstore_reads_total{{kind=\"{kind}\"}}");
        assert_eq!(sample(&text, &series), 0.0);
    }

    // A reader: one request of each kind, and one that is none.
    let mut reader = connect_as(cluster.addr, "lector").await;
    for request in ["get metrics-1/2", "get 1-1", "tail start 10", "nonsense"] {
        reader.writer.queue(request.as_bytes());
    }
    reader.writer.flush().await.unwrap();
    let mut answers = Vec::new();
    while !answers
        .last()
        .is_some_and(|a: &String| a.starts_with("ERROR "))
    {
        answers.push(framed::line(&mut reader.reader, "an answer").await);
    }
    assert!(answers[0].starts_with("found "), "{answers:?}");
    assert!(answers[1].starts_with("notfound 1-1"), "{answers:?}");
    assert_eq!(answers.len(), 2 + 3 + 1 + 1, "{answers:?}");
    let text = get(http, "/metrics").await.body;
    check_exposition(&text);
    for kind in ["get", "getkey", "tail"] {
        let served = format!("msgstore_reads_total{{kind=\"{kind}\"}}");
        assert_eq!(sample(&text, &served), 1.0, "{served}");
        let timed = format!("msgstore_read_latency_seconds_count{{kind=\"{kind}\"}}");
        assert_eq!(sample(&text, &timed), 1.0, "{timed}");
        let all = format!("msgstore_read_latency_seconds_bucket{{le=\"+Inf\",kind=\"{kind}\"}}");
        assert_eq!(sample(&text, &all), 1.0, "{all}");
    }
    assert_eq!(
        sample(
            &text,
            "msgstore_read_failures_total{reason=\"bad_request\"}"
        ),
        1.0
    );
    for reason in ["busy", "no_data_nodes", "unreadable", "too_many_in_flight"] {
        let failed = format!("msgstore_read_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&text, &failed), 0.0, "{failed}");
    }

    let Answer { status_line, body } = get(http, "/healthz").await;
    assert_eq!(
        (status_line.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let Answer {
        status_line,
        body: page,
    } = get(http, "/").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert!(page.contains("<title>msgstore head node</title>"));
    assert!(
        get(http, "/nope")
            .await
            .status_line
            .starts_with("HTTP/1.1 404")
    );
    cluster.stop().await;
}

#[tokio::test]
async fn status_shows_a_killed_node_as_evicted_with_its_reason() {
    let (mut cluster, http) = two_copies_on(&["dn1", "dn2", "dn3"]).await;
    let mut client = keyed_client(cluster.addr, "status-1").await;
    store(&mut client, 1, "antes").await;

    cluster.nodes[1].kill();
    cluster
        .wait_for("dn2 to be evicted", |e| {
            matches!(e, Event::Evicted { member, reason: EvictReason::ConnectionLost(_) } if member.node.as_str() == "dn2")
        })
        .await;
    store(&mut client, 2, "despues").await;

    let json = client::status::fetch_json(&http.to_string(), Duration::from_secs(5))
        .await
        .unwrap();
    let status: protocol::status::StatusSnapshot = serde_json::from_str(&json).unwrap();
    let row = |id: &str| status.nodes.iter().find(|n| n.id == id).unwrap();
    assert_eq!(row("dn1").state, "live");
    assert_eq!(row("dn3").state, "live");
    let dn2 = row("dn2");
    assert_eq!(dn2.state, "evicted");
    let eviction = dn2.last_eviction.as_ref().expect("its eviction");
    assert_eq!(eviction.reason, "connection_lost");
    assert!(eviction.detail.contains("connection lost"), "{eviction:?}");
    assert!(dn2.last_heartbeat_seconds_ago.is_none());
    assert_eq!(
        status.nodes.last().unwrap().id,
        "dn2",
        "departed nodes come last"
    );
    assert_eq!((status.replicas, status.min_replicas), (2, 2));
    assert_eq!(status.clients, 1);
    assert_eq!(status.totals.messages_stored, 2);
    assert!(!status.totals.repair_in_progress);
    assert!(
        status.totals.repair.starts_with("idle; first check"),
        "{}",
        status.totals.repair
    );
    assert!(
        status.recent_events.iter().any(|e| e.node == "dn2"
            && e.kind == "evicted"
            && e.reason.as_deref() == Some("connection_lost")),
        "{:?}",
        status.recent_events
    );
    let copies: u64 = status.nodes.iter().map(|n| n.messages_stored).sum();
    assert_eq!(copies, 4, "two copies of each message");

    // What `client status` prints for it.
    let table = client::status::render(&status);
    let line = table.lines().find(|l| l.starts_with("dn2")).unwrap();
    assert!(
        line.contains("EVICTED") && line.contains("connection_lost"),
        "{table}"
    );

    let metrics = get(http, "/metrics").await.body;
    assert_eq!(
        sample(
            &metrics,
            "msgstore_evictions_total{reason=\"connection_lost\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, "msgstore_data_nodes{state=\"evicted\"}"),
        1.0
    );
    cluster.stop().await;
}

#[tokio::test]
async fn the_event_stream_sends_a_snapshot() {
    let (cluster, http) = two_copies_on(&["dn1"]).await;
    let mut stream = TcpStream::connect(http).await.unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\n\n") || !seen.contains("data: ") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let data = seen.split("data: ").nth(1).unwrap();
    let json = data.split("\n\n").next().unwrap();
    let status: protocol::status::StatusSnapshot = serde_json::from_str(json).unwrap();
    assert_eq!(status.nodes.len(), 1);
    drop(stream);
    cluster.stop().await;
}

/// The status snapshot, as `client status` reads it.
async fn status(http: SocketAddr) -> protocol::status::StatusSnapshot {
    client::status::fetch(&http.to_string(), Duration::from_secs(5))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_real_data_node_reports_its_fsync_p99_while_it_writes() {
    let (mut cluster, http) = Cluster::start_with_http(fast_config()).await;
    let mut config = cluster.node_config("dn1");
    config.fsync_report_every = Duration::from_millis(200);
    cluster.add_node(config).await;
    // Writes until a report with fdatasyncs in its window has come; its
    // window is short (two periods), so the writes go on meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let row = loop {
        let texts = (0..50).map(|i| format!("numero random: {i}")).collect();
        let replies = send_pipelined(cluster.addr, texts, || {}).await;
        assert!(
            replies
                .iter()
                .all(|r| matches!(r, StoreReply::Stored { .. })),
            "{replies:?}"
        );
        let snapshot = status(http).await;
        let row = snapshot.nodes.into_iter().find(|n| n.id == "dn1").unwrap();
        if row.fsync_p99_ms.is_some() {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fsync p99 for dn1 within 10 s: {row:?}"
        );
    };
    let p99 = row.fsync_p99_ms.unwrap();
    assert!(p99 > 0.0 && p99 <= 10_000.0, "{row:?}");
    assert!(row.fsyncs_in_window.unwrap() > 0, "{row:?}");
    let window = row.fsync_window_seconds.unwrap();
    assert!(
        window > 0.0 && window < 5.0,
        "two periods of 200 ms: {row:?}"
    );
    cluster.stop().await;
}

/// An original-system data node: `peticion`, the exact `confirmacion`,
/// `dataNode`; then it holds its socket (it reports nothing).
async fn original_data_node(addr: SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"peticion").await.unwrap();
    let mut buf = [0u8; 64];
    let n = socket.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"confirmacion");
    // Its own send: the original sends each step as one unterminated write.
    tokio::time::sleep(Duration::from_millis(30)).await;
    socket.write_all(b"dataNode").await.unwrap();
    socket
}

#[tokio::test]
async fn the_status_shows_each_reported_fsync_p99_and_a_dash_for_nodes_that_report_none() {
    let config = headnode::Config {
        open_registration: true,
        ..fast_config()
    };
    let (mut cluster, http) = Cluster::start_with_http(config).await;
    // A data node of ours that reports a p99 of 1.93 ms over 812 fsyncs
    // with every pong.
    let (mut conn, welcome) = register(cluster.addr, "dn9", 1).await;
    assert!(welcome.starts_with("welcome dn9 "), "{welcome}");
    let reporter = tokio::spawn(async move {
        while let Ok(Some(line)) = conn.reader.read_frame().await {
            if let Some(n) = line.as_str().strip_prefix("ping ") {
                let pong = format!("pong {n}");
                conn.writer.queue(pong.as_bytes());
                conn.writer.queue(b"fsync 10000 812 1930");
                if conn.writer.flush().await.is_err() {
                    return;
                }
            }
        }
    });
    let _original = original_data_node(cluster.addr).await;
    let joined = cluster
        .wait_for(
            "the original data node to join",
            |e| matches!(e, Event::Joined { member, .. } if member.legacy),
        )
        .await;
    let Event::Joined { member, .. } = joined else {
        unreachable!("matched a join")
    };
    let original = member.node.to_string();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot = status(http).await;
        let reported = snapshot
            .nodes
            .iter()
            .any(|n| n.id == "dn9" && n.fsync_p99_ms.is_some());
        if reported {
            break snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dn9's report not shown within 10 s: {:?}",
            snapshot.nodes
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = |id: &str| snapshot.nodes.iter().find(|n| n.id == id).unwrap();
    let dn9 = row("dn9");
    assert_eq!(dn9.fsync_p99_ms, Some(1.93));
    assert_eq!(dn9.fsyncs_in_window, Some(812));
    assert_eq!(dn9.fsync_window_seconds, Some(10.0));
    let legacy = row(&original);
    assert_eq!(legacy.state, "live");
    assert_eq!((legacy.fsync_p99_ms, legacy.fsyncs_in_window), (None, None));

    // What `client status` prints for them.
    let table = client::status::render(&snapshot);
    let header = table.lines().find(|l| l.starts_with("NODE")).unwrap();
    let column = header.find("FSYNC P99").unwrap();
    let cell = |id: &str| {
        let line = table.lines().find(|l| l.starts_with(id)).unwrap();
        line[column..].split_whitespace().next().unwrap().to_owned()
    };
    assert_eq!(cell("dn9"), "1.93ms", "{table}");
    assert_eq!(cell(&original), "-", "{table}");
    reporter.abort();
    cluster.stop().await;
}
