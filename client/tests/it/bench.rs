//! `client bench` against an in-process echo server: every reply is checked,
//! and a wrong one is counted as an error rather than as throughput.

use std::time::Duration;

use client::ConnectOptions;
use client::bench::{BenchConfig, BenchTarget, Limit, Payload};
use tokio::net::TcpListener;

use crate::helpers::echo_server;

fn config(server: String, target: BenchTarget, count: u64) -> BenchConfig {
    let mut connect = ConnectOptions::new(server, None);
    connect.retry_for = Duration::from_secs(5);
    BenchConfig {
        connect,
        client_id: None,
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
    node_kit::telemetry::init_for_tests();
    let server = echo_server().await;
    let report = client::bench::run(config(server.addr.to_string(), BenchTarget::Echo, 2000))
        .await
        .unwrap();
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.messages, 2000, "{report}");
    assert!(report.msgs_per_sec > 0.0);
    assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
}

#[tokio::test]
async fn replies_that_are_not_stored_acks_are_errors() {
    node_kit::telemetry::init_for_tests();
    // The echo server answers the handshake and echoes each message back as
    // text, never as `<node> , mensaje: recibido <id>`.
    let server = echo_server().await;
    let report = client::bench::run(config(server.addr.to_string(), BenchTarget::Store, 200))
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

#[tokio::test]
async fn each_store_connection_keys_its_messages_under_its_own_client_id() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    node_kit::telemetry::init_for_tests();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // A fake head node: answers every keyed line as stored, and returns
    // each connection's role line and sequence numbers when it closes.
    let head = tokio::spawn(async move {
        let mut peers = Vec::new();
        for n in 0..2u64 {
            let (stream, _) = listener.accept().await.unwrap();
            peers.push(tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                assert_eq!(lines.next_line().await.unwrap().unwrap(), "peticion");
                write.write_all(b"confirmacion\n").await.unwrap();
                let role = lines.next_line().await.unwrap().unwrap();
                let mut seqs = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let (seq, text) = line.split_once(' ').unwrap();
                    assert_eq!(text, "same");
                    let seq: u64 = seq.parse().unwrap();
                    seqs.push(seq);
                    let answer = format!("dn1+dn2 , mensaje: recibido {n}-{seq}\n");
                    write.write_all(answer.as_bytes()).await.unwrap();
                }
                (role, seqs)
            }));
        }
        let mut seen = Vec::new();
        for peer in peers {
            seen.push(peer.await.unwrap());
        }
        seen.sort();
        seen
    });
    let mut cfg = config(addr, BenchTarget::Store, 10);
    cfg.connections = 2;
    cfg.pipeline = 2;
    cfg.client_id = Some("bench-x".parse().unwrap());
    cfg.payload = Payload::Fixed("same".into());
    let report = client::bench::run(cfg).await.unwrap();
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.messages, 10, "{report}");
    let seen = head.await.unwrap();
    assert_eq!(seen[0].0, "cliente id=bench-x.1");
    assert_eq!(seen[1].0, "cliente id=bench-x.2");
    for (role, seqs) in &seen {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "{role}");
    }
    assert_eq!(seen[0].1.len() + seen[1].1.len(), 10);
}
