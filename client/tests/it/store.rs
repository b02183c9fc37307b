//! `client store` against a fake head node on 127.0.0.1:0: keys, resends
//! with the same key after a lost connection or a retryable error, the id
//! checks, and the command line.

use std::time::Duration;

use client::ConnectOptions;
use client::store::{StoreConfig, StoreSummary};
use test_support::process::{Finished, run_to_end_async};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::helpers::client_command;

/// One client connection, as the fake head node sees it after the handshake.
pub(crate) struct Peer {
    pub(crate) role: String,
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Peer {
    /// Accepts a client and answers `peticion` with `confirmacion`.
    pub(crate) async fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("a client connects within 10 s")
            .unwrap();
        Peer::handshake(stream).await
    }

    async fn handshake(stream: TcpStream) -> Peer {
        let (read, writer) = stream.into_split();
        let mut peer = Peer {
            role: String::new(),
            lines: BufReader::new(read).lines(),
            writer,
        };
        assert_eq!(peer.next().await.as_deref(), Some("peticion"));
        peer.answer("confirmacion").await;
        peer.role = peer.next().await.expect("a role line");
        peer
    }

    /// The next line, or `None` when the client closed.
    pub(crate) async fn next(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
    }

    pub(crate) async fn answer(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }
}

/// `<seq> <text>` split at the first space.
fn split(line: &str) -> (u64, &str) {
    let (seq, text) = line.split_once(' ').expect("a keyed line");
    (seq.parse().expect("a sequence number"), text)
}

fn stored(seq: u64) -> String {
    format!("dn1+dn3 , mensaje: recibido 7-{seq}")
}

fn config(server: String, count: u64, pipeline: usize) -> StoreConfig {
    let mut connect = ConnectOptions::new(server, None);
    connect.retry_for = Duration::from_secs(5);
    connect.min_backoff = Duration::from_millis(10);
    connect.max_backoff = Duration::from_millis(100);
    StoreConfig {
        connect,
        client_id: Some("tester".parse().unwrap()),
        interval: Duration::ZERO,
        count: Some(count),
        pipeline,
        message: Some("same text".into()),
    }
}

pub(crate) async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

#[tokio::test]
async fn messages_carry_sequential_keys_under_the_announced_client_id() {
    node_kit::telemetry::init_for_tests();
    let (listener, addr) = listen().await;
    let mut cfg = config(addr, 5, 1);
    cfg.message = None;
    let client = tokio::spawn(client::store::run(cfg, std::future::pending()));
    let mut peer = Peer::accept(&listener).await;
    assert_eq!(peer.role, "cliente id=tester");
    for expected in 1..=5 {
        let line = peer.next().await.unwrap();
        let (seq, text) = split(&line);
        assert_eq!(seq, expected, "{line}");
        assert!(text.starts_with("numero random: "), "{line}");
        peer.answer(&stored(seq)).await;
    }
    let summary = client.await.unwrap().unwrap();
    assert_eq!(
        summary,
        StoreSummary {
            client_id: "tester".into(),
            answered: 5,
            ..StoreSummary::default()
        }
    );
}

#[tokio::test]
async fn without_a_client_id_one_is_chosen_at_random() {
    node_kit::telemetry::init_for_tests();
    let (listener, addr) = listen().await;
    let mut cfg = config(addr, 1, 1);
    cfg.client_id = None;
    let client = tokio::spawn(client::store::run(cfg, std::future::pending()));
    let mut peer = Peer::accept(&listener).await;
    let id = peer
        .role
        .strip_prefix("cliente id=c-")
        .expect(&peer.role)
        .to_owned();
    assert!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        peer.role
    );
    assert_eq!(peer.next().await.as_deref(), Some("1 same text"));
    peer.answer(&stored(1)).await;
    let summary = client.await.unwrap().unwrap();
    assert_eq!(summary.client_id, format!("c-{id}"));
}

#[tokio::test]
async fn a_lost_connection_mid_pipeline_resends_the_unanswered_with_the_same_keys() {
    node_kit::telemetry::init_for_tests();
    let (listener, addr) = listen().await;
    let client = tokio::spawn(client::store::run(
        config(addr, 6, 4),
        std::future::pending(),
    ));

    // First connection: four in flight, two answered, then the head node goes.
    let mut first = Peer::accept(&listener).await;
    let mut sent = Vec::new();
    for _ in 0..4 {
        sent.push(first.next().await.unwrap());
    }
    assert_eq!(
        sent,
        ["1 same text", "2 same text", "3 same text", "4 same text"]
    );
    first.answer(&stored(1)).await;
    first.answer(&stored(2)).await;
    // The two answers free room for 5 and 6.
    assert_eq!(first.next().await.as_deref(), Some("5 same text"));
    assert_eq!(first.next().await.as_deref(), Some("6 same text"));
    drop(first);

    // Second connection: the four unanswered again, same keys, same order.
    let mut second = Peer::accept(&listener).await;
    assert_eq!(second.role, "cliente id=tester");
    let mut seqs = Vec::new();
    for _ in 0..4 {
        let line = second.next().await.unwrap();
        let (seq, text) = split(&line);
        assert_eq!(text, "same text");
        seqs.push(seq);
        second.answer(&stored(seq)).await;
    }
    assert_eq!(seqs, [3, 4, 5, 6]);
    let summary = client.await.unwrap().unwrap();
    assert_eq!(summary.answered, 6, "{summary:?}");
    assert_eq!(summary.resent, 4, "{summary:?}");
    assert_eq!(summary.reconnects, 1, "{summary:?}");
    assert_eq!(summary.conflicting_ids, 0, "{summary:?}");
}

#[tokio::test]
async fn not_enough_data_nodes_is_resent_with_the_same_key_after_a_backoff() {
    node_kit::telemetry::init_for_tests();
    let (listener, addr) = listen().await;
    let client = tokio::spawn(client::store::run(
        config(addr, 2, 1),
        std::future::pending(),
    ));
    let mut peer = Peer::accept(&listener).await;
    assert_eq!(peer.next().await.as_deref(), Some("1 same text"));
    peer.answer("ERROR not enough data nodes (1 live, 2 required)")
        .await;
    let refused_at = Instant::now();
    assert_eq!(peer.next().await.as_deref(), Some("1 same text"));
    // The first backoff is 50 to 100 ms.
    assert!(
        refused_at.elapsed() >= Duration::from_millis(40),
        "resent after {:?}",
        refused_at.elapsed()
    );
    peer.answer(&stored(1)).await;
    assert_eq!(peer.next().await.as_deref(), Some("2 same text"));
    peer.answer(&stored(2)).await;
    let summary = client.await.unwrap().unwrap();
    assert_eq!(summary.answered, 2, "{summary:?}");
    assert_eq!(summary.resent, 1, "{summary:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");
}

#[tokio::test]
async fn an_unknown_outcome_resent_and_answered_with_its_original_id_is_counted_as_earlier() {
    node_kit::telemetry::init_for_tests();
    let (listener, addr) = listen().await;
    let client = tokio::spawn(client::store::run(
        config(addr, 3, 3),
        std::future::pending(),
    ));
    let mut peer = Peer::accept(&listener).await;
    for expected in 1..=3 {
        assert_eq!(split(&peer.next().await.unwrap()).0, expected);
    }
    // Key 1 was stored as 7-1 but its node failed before acknowledging.
    peer.answer("ERROR outcome unknown: dn1 failed; it may or may not be stored")
        .await;
    peer.answer(&stored(2)).await;
    peer.answer(&stored(3)).await;
    assert_eq!(peer.next().await.as_deref(), Some("1 same text"));
    peer.answer(&stored(1)).await;
    let summary = client.await.unwrap().unwrap();
    assert_eq!(summary.answered, 3, "{summary:?}");
    assert_eq!(summary.resent, 1, "{summary:?}");
    assert_eq!(summary.answered_with_earlier_id, 1, "{summary:?}");
    assert_eq!(summary.conflicting_ids, 0, "{summary:?}");
}

#[tokio::test]
async fn a_message_refused_for_longer_than_retry_for_fails() {
    node_kit::telemetry::init_for_tests();
    let (listener, addr) = listen().await;
    let mut cfg = config(addr, 1, 1);
    cfg.connect.retry_for = Duration::from_millis(300);
    let client = tokio::spawn(client::store::run(cfg, std::future::pending()));
    let mut peer = Peer::accept(&listener).await;
    let mut refusals = 0;
    while let Some(line) = peer.next_or_closed().await {
        assert_eq!(line, "1 same text");
        peer.answer("ERROR no data nodes available").await;
        refusals += 1;
    }
    let summary = client.await.unwrap().unwrap();
    assert!(refusals >= 2, "{refusals} refusals");
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert_eq!(summary.answered, 0, "{summary:?}");
}

impl Peer {
    /// The next line, or `None` when the client closed (or reset).
    pub(crate) async fn next_or_closed(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a line within 10 s")
            .ok()
            .flatten()
    }
}

/// Runs the `client` binary with `args`, answering its messages with
/// `answers` in order; returns how it ended and the peer it talked to.
pub(crate) async fn run_binary(args: Vec<String>, answers: Vec<String>) -> (Finished, Peer) {
    let (listener, addr) = listen().await;
    let mut args = args;
    args.extend(["--server".into(), addr]);
    let child = tokio::spawn(run_to_end_async(client_command(args)));
    let mut peer = Peer::accept(&listener).await;
    for answer in answers {
        peer.next().await.unwrap();
        peer.answer(&answer).await;
    }
    (child.await.unwrap(), peer)
}

#[tokio::test]
async fn shared_flags_after_the_subcommand_are_accepted_and_answers_are_logged_with_their_keys() {
    let logs = tempfile::tempdir().unwrap();
    let args = [
        "store",
        "--count",
        "2",
        "--interval",
        "0",
        "--client-id",
        "cli-1",
        "--retry-for",
        "5s",
        "--log-dir",
    ]
    .map(String::from)
    .into_iter()
    .chain([logs.path().display().to_string()])
    .collect();
    let (output, peer) = run_binary(args, vec![stored(1), stored(2)]).await;
    assert!(output.status.success(), "{}", output.stderr);
    assert_eq!(peer.role, "cliente id=cli-1");
    let log = std::fs::read_to_string(logs.path().join("registro_cliente.txt")).unwrap();
    assert!(
        log.contains("Servidor recibio: dn1+dn3 , mensaje: recibido 7-1 key=cli-1/1"),
        "{log}"
    );
    assert!(log.contains("recibido 7-2 key=cli-1/2"), "{log}");
    assert!(log.contains("answered=2"), "{log}");
}

#[tokio::test]
async fn conflicting_ids_are_counted_and_fail_the_run() {
    let logs = tempfile::tempdir().unwrap();
    let args = ["store", "--count", "2", "--interval", "0", "--log-dir"]
        .map(String::from)
        .into_iter()
        .chain([logs.path().display().to_string()])
        .collect();
    // One id for two keys: the answers and the keys no longer agree.
    let (output, _peer) = run_binary(args, vec![stored(1), stored(1)]).await;
    let stderr = &output.stderr;
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "client: 1 keys were answered with conflicting ids"
    );
    let log = std::fs::read_to_string(logs.path().join("registro_cliente.txt")).unwrap();
    assert!(log.contains("conflicting_ids=1"), "{log}");
}
