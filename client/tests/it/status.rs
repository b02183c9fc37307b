//! `client status` against an HTTP port serving a fixed snapshot.

use node_kit::http::{self, HttpConfig, Request, Response};
use protocol::status::{NodeStatus, StatusSnapshot, Totals};
use test_support::process::{Finished, run_to_end_async};
use test_support::server::{TestServer, closed_port};

use crate::helpers::client_command;

fn snapshot() -> StatusSnapshot {
    StatusSnapshot {
        at: "2026-11-24 12:00:00,000".into(),
        epoch: 1795413330851,
        uptime_seconds: 12.0,
        replicas: 2,
        min_replicas: 2,
        clients: 3,
        message_rate: 4.5,
        rate_window_seconds: 5.0,
        nodes: vec![NodeStatus {
            id: "dn1".into(),
            zone: Some("rack1".into()),
            address: "127.0.0.1".into(),
            state: "live".into(),
            incarnation: 9,
            last_heartbeat_seconds_ago: Some(0.2),
            icmp_rtt_ms: None,
            messages_stored: 5,
            bytes_stored: 80,
            fsync_p99_ms: Some(2.5),
            fsyncs_in_window: Some(120),
            fsync_window_seconds: Some(10.0),
            last_eviction: None,
        }],
        totals: Totals {
            messages_stored: 5,
            under_replicated: 0,
            over_replicated: 0,
            repair_in_progress: false,
            repair: "idle; first check 30s after start".into(),
            repair_pass: None,
        },
        recent_events: Vec::new(),
    }
}

/// Serves `snapshot()` at /status.json until stopped or dropped.
async fn serve() -> TestServer<()> {
    let json = serde_json::to_vec(&snapshot()).unwrap();
    TestServer::start(|listener, shutdown| {
        http::run(
            listener,
            HttpConfig::default(),
            move |request: &Request| match request.path.as_str() {
                "/status.json" => Response::ok("application/json", json.clone()),
                _ => Response::not_found(),
            },
            shutdown,
        )
    })
    .await
}

async fn client(args: Vec<String>) -> Finished {
    run_to_end_async(client_command(args)).await
}

#[tokio::test]
async fn status_json_prints_the_snapshot() {
    let server = serve().await;
    let output = client(vec![
        "status".into(),
        "--http".into(),
        server.addr.to_string(),
        "--json".into(),
    ])
    .await;
    let stdout = &output.stdout;
    assert!(output.status.success(), "{}", output.stderr);
    let printed: StatusSnapshot = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(printed, snapshot());
}

#[tokio::test]
async fn status_prints_a_table() {
    let server = serve().await;
    let output = client(vec![
        "status".into(),
        "--http".into(),
        server.addr.to_string(),
    ])
    .await;
    let stdout = &output.stdout;
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("NODE"), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with("dn1")).unwrap();
    assert!(row.contains("LIVE") && row.contains("rack1"), "{stdout}");
    assert!(
        stdout.contains("repair: idle; first check 30s after start"),
        "{stdout}"
    );
    assert!(row.contains("2.50ms"), "its fsync p99: {stdout}");
}

#[tokio::test]
async fn status_from_nothing_is_one_clear_error() {
    let addr = closed_port().await;
    let output = client(vec!["status".into(), "--http".into(), addr.to_string()]).await;
    let stderr = &output.stderr;
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the head node's HTTP port"),
        "{stderr}"
    );
}
