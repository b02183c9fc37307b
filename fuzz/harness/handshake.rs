//! The server side of the handshake against a peer that sends arbitrary bytes.
//!
//! The peer's bytes go through a `tokio::io::duplex` into
//! `handshake::accept(.., RoleStep::Required, ..)`, on a current-thread
//! runtime whose clock is paused: timeouts and idle cuts happen in virtual
//! time, so a run takes microseconds even when the peer stalls.
//!
//! The same input is sent three ways: in one write; in pieces cut after each
//! newline and after a bare opening word, with pauses longer than the idle
//! cut (an original-system peer); and in random pieces with random pauses,
//! sometimes never closing.
//!
//! Properties: `accept` never panics, always returns, and within its timeout
//! plus the time it lingers to deliver an error; success means the peer sent
//! `peticion`, was answered `confirmacion` and named a role; a refusal for a
//! malformed or late step reaches the peer as an `ERROR` line.

use std::time::Duration;

use protocol::connection::{FrameReader, FrameWriter, ReaderConfig};
use protocol::error::HandshakeError;
use protocol::handshake::{CONFIRMACION, PETICION, Role, RoleStep, accept};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::rng::Rng;

const TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_FLUSH: Duration = Duration::from_millis(10);
/// `accept` may spend up to this long after its timeout delivering an error
/// (one second to write it, one to let the peer close), plus virtual-clock slack.
const LINGER_BOUND: Duration = Duration::from_millis(2_100);
/// Far beyond any bound above: reaching it means something never ends.
const HANG: Duration = Duration::from_secs(3_600);

/// One write of the peer, after a pause.
struct Write<'a> {
    pause: Duration,
    bytes: &'a [u8],
}

struct Peer<'a> {
    writes: Vec<Write<'a>>,
    /// Whether the peer closes its sending side after the last write.
    closes: bool,
}

pub(crate) fn check(data: &[u8]) {
    let mut rng = Rng::seeded_by(data);
    let max_line = rng.pick(&[16, 64, protocol::DEFAULT_MAX_LINE]);
    let peers = [
        Peer {
            writes: vec![Write {
                pause: Duration::ZERO,
                bytes: data,
            }],
            closes: true,
        },
        Peer {
            writes: paced(data),
            closes: true,
        },
        jittered(data, &mut rng),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    for peer in peers {
        runtime.block_on(async {
            tokio::time::timeout(HANG, converse(&peer, max_line, data))
                .await
                .expect("the handshake ends");
        });
    }
}

/// Pieces cut after each `\n`, and after each `peticion` not followed by a
/// line ending (as an original-system peer sends it), 50 ms apart.
fn paced(data: &[u8]) -> Vec<Write<'_>> {
    let mut writes = Vec::new();
    let mut start = 0;
    for end in 1..=data.len() {
        let bare_opening = data[..end].ends_with(PETICION.as_bytes())
            && !matches!(data.get(end), Some(b'\r' | b'\n'));
        if data[end - 1] == b'\n' || bare_opening || end == data.len() {
            writes.push(Write {
                pause: Duration::from_millis(50),
                bytes: &data[start..end],
            });
            start = end;
        }
    }
    writes
}

fn jittered<'a>(data: &'a [u8], rng: &mut Rng) -> Peer<'a> {
    const PAUSES_MS: [u64; 9] = [0, 0, 0, 1, 9, 11, 50, 3_000, 11_000];
    let writes = rng
        .pieces(data, 16)
        .into_iter()
        .map(|bytes| Write {
            pause: Duration::from_millis(rng.pick(&PAUSES_MS)),
            bytes,
        })
        .collect();
    Peer {
        writes,
        closes: rng.below(4) != 0,
    }
}

async fn converse(peer: &Peer<'_>, max_line: usize, data: &[u8]) {
    let (peer_end, server_end) = tokio::io::duplex(64);
    let (mut peer_rx, mut peer_tx) = tokio::io::split(peer_end);
    let (server_rx, server_tx) = tokio::io::split(server_end);
    let (server_done_tx, server_done_rx) = oneshot::channel::<()>();

    let server = async move {
        let config = ReaderConfig {
            max_line,
            idle_flush: IDLE_FLUSH,
            ..ReaderConfig::default()
        };
        let mut reader = FrameReader::detecting(server_rx, config, PETICION.as_bytes());
        let mut writer = FrameWriter::new(server_tx);
        let started = Instant::now();
        let result = accept(&mut reader, &mut writer, RoleStep::Required, TIMEOUT).await;
        let took = started.elapsed();
        assert!(
            took <= TIMEOUT + LINGER_BOUND,
            "accept took {took:?}, timeout {TIMEOUT:?}"
        );
        // Dropping the reader and writer closes the server's end (the peer
        // reads EOF); dropping the sender lets a silent peer go.
        drop(server_done_tx);
        result
    };
    let send = async move {
        for write in &peer.writes {
            tokio::time::sleep(write.pause).await;
            if peer_tx.write_all(write.bytes).await.is_err() {
                return;
            }
        }
        if peer.closes {
            let _ = peer_tx.shutdown().await;
        } else {
            let _ = server_done_rx.await;
        }
    };
    let receive = async move {
        let mut received = Vec::new();
        let _ = peer_rx.read_to_end(&mut received).await;
        received
    };

    let (result, (), received) = tokio::join!(server, send, receive);
    check_outcome(result, &received, data);
}

fn check_outcome(result: Result<Option<Role>, HandshakeError>, received: &[u8], data: &[u8]) {
    let received = String::from_utf8_lossy(received);
    match result {
        Ok(Some(_role)) => {
            assert!(
                data.starts_with(PETICION.as_bytes()),
                "handshake accepted from a peer that did not open with {PETICION:?}"
            );
            assert!(
                received == CONFIRMACION || received == format!("{CONFIRMACION}\n"),
                "accepted peer received {received:?}"
            );
        }
        Ok(None) => panic!("RoleStep::Required accepted a peer without a role"),
        Err(HandshakeError::Unexpected(_) | HandshakeError::TimedOut(_)) => {
            assert!(
                received.contains("ERROR "),
                "refused peer received no ERROR line: {received:?}"
            );
        }
        Err(HandshakeError::Read(error)) if !error.is_fatal() => {
            assert!(
                received.contains("ERROR "),
                "refused peer received no ERROR line: {received:?}"
            );
        }
        Err(_) => {}
    }
}
