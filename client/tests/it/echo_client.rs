//! `client echo` against an in-process echo server.

use std::time::Duration;

use client::echo::{EchoConfig, EchoSummary};
use client::{ClientError, ConnectOptions};
use test_support::server::closed_port;
use tokio::net::TcpListener;

use crate::helpers::{echo_server, echo_server_on};

fn config(server: String, count: u64) -> EchoConfig {
    let mut connect = ConnectOptions::new(server, None);
    connect.retry_for = Duration::from_secs(5);
    connect.min_backoff = Duration::from_millis(10);
    connect.max_backoff = Duration::from_millis(100);
    EchoConfig {
        connect,
        interval: Duration::from_millis(1),
        count: Some(count),
    }
}

#[tokio::test]
async fn sends_count_messages_and_gets_each_echo() {
    node_kit::telemetry::init_for_tests();
    let server = echo_server().await;
    let summary = client::echo::run(config(server.addr.to_string(), 5), std::future::pending())
        .await
        .unwrap();
    assert_eq!(
        summary,
        EchoSummary {
            echoed: 5,
            mismatched: 0,
            reconnects: 0
        }
    );
}

#[tokio::test]
async fn reconnects_when_the_server_comes_back() {
    node_kit::telemetry::init_for_tests();
    let first = echo_server().await;
    let addr = first.addr;

    let mut cfg = config(addr.to_string(), 40);
    cfg.interval = Duration::from_millis(20);
    let client = tokio::spawn(client::echo::run(cfg, std::future::pending()));

    tokio::time::sleep(Duration::from_millis(200)).await;
    first.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Same address, new server.
    let listener = TcpListener::bind(addr).await.unwrap();
    let _second = echo_server_on(listener);

    let summary = client.await.unwrap().unwrap();
    assert_eq!(summary.echoed, 40);
    assert_eq!(summary.mismatched, 0);
    assert!(summary.reconnects >= 1, "{summary:?}");
}

#[tokio::test]
async fn gives_up_with_a_clear_error_when_nothing_listens() {
    node_kit::telemetry::init_for_tests();
    let addr = closed_port().await;
    let mut cfg = config(addr.to_string(), 1);
    cfg.connect.retry_for = Duration::from_millis(300);
    let err = client::echo::run(cfg, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot reach {addr} after trying for")),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}
