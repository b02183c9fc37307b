//! `client bench` against an in-process echo server: every reply is checked,
//! and a wrong one is counted as an error rather than as throughput.

use std::time::Duration;

use client::ConnectOptions;
use client::bench::{BenchConfig, BenchTarget, Limit, Payload};
use tokio::net::TcpListener;

async fn echo_server() -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(echo_server::run(
        listener,
        echo_server::Config::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

fn config(server: String, target: BenchTarget, count: u64) -> BenchConfig {
    let mut connect = ConnectOptions::new(server, None);
    connect.retry_for = Duration::from_secs(5);
    BenchConfig {
        connect,
        target,
        connections: 4,
        pipeline: 8,
        limit: Limit::Count(count),
        payload: Payload::Seed,
        warmup: Duration::ZERO,
        progress: false,
    }
}

#[tokio::test]
async fn every_echo_is_checked_and_counted() {
    protocol::telemetry::init_for_tests();
    let (addr, _stop) = echo_server().await;
    let report = client::bench::run(config(addr, BenchTarget::Echo, 2000))
        .await
        .unwrap();
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.messages, 2000, "{report}");
    assert!(report.msgs_per_sec > 0.0);
    assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
}

#[tokio::test]
async fn replies_that_are_not_stored_acks_are_errors() {
    protocol::telemetry::init_for_tests();
    // The echo server answers the handshake and echoes each message back as
    // text, never as `<node> , mensaje: recibido <id>`.
    let (addr, _stop) = echo_server().await;
    let report = client::bench::run(config(addr, BenchTarget::Store, 200))
        .await
        .unwrap();
    // The echoed role line answers the first message of each connection,
    // so one more reply than messages arrives; none of them counts.
    assert!(
        report.errors >= 200,
        "wrong replies went uncounted: {report}"
    );
    assert_eq!(report.messages, 0, "{report}");
    assert_eq!(report.msgs_per_sec, 0.0);
}
