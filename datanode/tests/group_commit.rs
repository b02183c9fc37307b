//! The data node's group commit, seen from a scripted head node: a batch
//! smaller than the one before waits (up to `commit_linger`) for the rest
//! of its burst, and is committed with it in one write.

use std::time::{Duration, Instant};

use datanode::Config;
use protocol::handshake::{self, RoleStep};
use protocol::message::PETICION;
use protocol::{Connection, ReaderConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A head node of our own: accepts the data node and welcomes it.
struct ScriptedHead {
    conn: Connection,
    next_seq: u64,
}

impl ScriptedHead {
    async fn start(linger: Duration) -> (ScriptedHead, tempfile::TempDir, oneshot::Sender<()>) {
        protocol::telemetry::init_for_tests();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(
            listener.local_addr().unwrap().to_string(),
            "dn1".parse().unwrap(),
        );
        config.data_dir = dir.path().to_path_buf();
        config.commit_linger = linger;
        // The scripted head node welcomes without a challenge.
        config.open_registration = true;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(datanode::run(config, async {
            let _ = stopped.await;
        }));
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = accept(stream);
        handshake::accept(
            &mut conn.reader,
            &mut conn.writer,
            RoleStep::Required,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        conn.writer.send(b"welcome dn1").await.unwrap();
        (ScriptedHead { conn, next_seq: 1 }, dir, stop)
    }

    /// Sends `count` messages in one write; their ids.
    async fn send(&mut self, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let id = format!("7-{}", self.next_seq);
            self.next_seq += 1;
            self.conn
                .writer
                .queue(format!("mensaje {id}: numero random: 1").as_bytes());
            ids.push(id);
        }
        self.conn.writer.flush().await.unwrap();
        ids
    }

    async fn expect_ack(&mut self, id: &str) {
        let line = tokio::time::timeout(Duration::from_secs(10), self.conn.reader.read_frame())
            .await
            .expect("no acknowledgement within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(line.as_str(), format!("recibido {id}"));
    }
}

fn accept(stream: TcpStream) -> Connection {
    Connection::accept(stream, ReaderConfig::default(), PETICION.as_bytes()).unwrap()
}

/// The data.txt lines of these ids, in file order.
fn lines_of(dir: &tempfile::TempDir, ids: &[String]) -> Vec<String> {
    let text = std::fs::read_to_string(dir.path().join("data.txt")).unwrap();
    text.lines()
        .filter(|line| ids.iter().any(|id| line.contains(&format!("[{id}]"))))
        .map(str::to_owned)
        .collect()
}

/// `<date> <time>` of a data.txt line: one per committed batch.
fn stamp(line: &str) -> &str {
    line.split(" - ").next().unwrap()
}

#[tokio::test]
async fn a_burst_that_trickles_in_is_committed_together() {
    let (mut head, dir, _stop) = ScriptedHead::start(Duration::from_secs(1)).await;
    for id in head.send(10).await {
        head.expect_ack(&id).await;
    }
    // One message, then the rest of its burst 50 ms later.
    let sent = Instant::now();
    let mut burst = head.send(1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    burst.extend(head.send(9).await);
    for id in &burst {
        head.expect_ack(id).await;
    }
    let waited = sent.elapsed();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    // One batch: every line carries the batch's one timestamp, taken when
    // the first of them was staged.
    // As large as the last batch: committed without waiting out the linger.
    assert!(waited < Duration::from_millis(900), "{waited:?}");
    let lines = lines_of(&dir, &burst);
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert!(
        lines.iter().all(|l| stamp(l) == stamp(&lines[0])),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_small_batch_waits_no_longer_than_the_linger() {
    let linger = Duration::from_millis(300);
    let (mut head, _dir, _stop) = ScriptedHead::start(linger).await;
    for id in head.send(10).await {
        head.expect_ack(&id).await;
    }
    let sent = Instant::now();
    let lone = head.send(1).await;
    head.expect_ack(&lone[0]).await;
    let waited = sent.elapsed();
    assert!(waited >= linger, "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // A batch as large as the last one is committed without waiting.
    let sent = Instant::now();
    for id in head.send(1).await {
        head.expect_ack(&id).await;
    }
    assert!(sent.elapsed() < linger, "{:?}", sent.elapsed());
}

#[tokio::test]
async fn without_linger_a_lone_message_is_committed_at_once() {
    let (mut head, _dir, _stop) = ScriptedHead::start(Duration::ZERO).await;
    for id in head.send(10).await {
        head.expect_ack(&id).await;
    }
    let sent = Instant::now();
    let lone = head.send(1).await;
    head.expect_ack(&lone[0]).await;
    // Generous: only a linger would make this take 1 s.
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
}
