//! The head node's HTTP port with real data nodes, in one process:
//! `/metrics`, `/healthz`, `/status.json` (through `client status`'s
//! reader), the status page.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use headnode::membership::{Event, EvictReason};
use protocol::connection::Connection;
use protocol::message::StoreReply;
use support::{Cluster, fast_config, keyed_client, send_keyed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path`: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

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
    let (status, text) = get(http, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
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

    let (status, body) = get(http, "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (status, page) = get(http, "/").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(page.contains("<title>msgstore head node</title>"));
    assert!(get(http, "/nope").await.0.starts_with("HTTP/1.1 404"));
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

    let (_, metrics) = get(http, "/metrics").await;
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
