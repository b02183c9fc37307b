//! A data node driven by the test instead of the real one, against a head
//! node on `addr`. It registers through the protocol's registration (the
//! code the real data node runs), proving it knows [`TEST_TOKEN`]; what it
//! says after that is the test's: nothing at all, an empty report, or, as a
//! [`FakeNode`], acknowledgements and pongs until it is told to hang.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::Connection;
use protocol::auth::{ClusterToken, Nonce};
use protocol::datanode::register::{
    RegisterError, Registration, Welcomed, register as register_node,
};
use protocol::ids::MessageId;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::framed;

/// The cluster token of the test clusters.
pub const TEST_TOKEN: &str = "test-cluster-token-0123456789";

/// Longest line a scripted node reads: the head node's lines are far
/// shorter.
const MAX_LINE: usize = 1 << 17;

/// Time allowed for the handshake and for each answer of the registration.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// [`TEST_TOKEN`] as a token.
///
/// # Panics
///
/// Never: the text is a valid token.
pub fn test_token() -> ClusterToken {
    ClusterToken::new(TEST_TOKEN).expect("the test token is valid")
}

/// Authenticates as data node `id` with [`TEST_TOKEN`], answering the head
/// node's challenge, up to the head node's answer, and sends no report;
/// returns the connection and that answer: `welcome <id> <epoch>` or
/// `ERROR <reason>`.
///
/// # Panics
///
/// If the connection cannot be made, or the registration fails other than
/// by a refusal (the head node closes, stays silent, or does not prove it
/// knows the token).
pub async fn welcome(addr: SocketAddr, id: &str, incarnation: u64) -> (Connection, String) {
    let token = test_token();
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let mut conn = Connection::connect(stream, MAX_LINE).expect("a connected socket");
    let registration = Registration {
        node_id: id.parse().expect("a valid node id"),
        incarnation,
        zone: None,
        store: None,
        token: Some((&token, Nonce::random())),
        newest_epoch: 0,
        step_timeout: STEP_TIMEOUT,
    };
    let answer = match register_node(&mut conn, &registration).await {
        Ok(Welcomed { node, epoch }) => format!("welcome {node} {epoch}"),
        Err(
            RegisterError::Unauthorized(reason)
            | RegisterError::Superseded(reason)
            | RegisterError::Refused(reason),
        ) => format!("ERROR {reason}"),
        Err(e) => panic!("registration failed: {e}"),
    };
    (conn, answer)
}

/// Registers as data node `id` as [`welcome`] does and, once welcomed,
/// sends an empty report (no keys held, no peers known); returns the
/// connection and the head node's answer to the registration.
///
/// # Panics
///
/// As [`welcome`] does, and if the report cannot be written.
pub async fn register(addr: SocketAddr, id: &str, incarnation: u64) -> (Connection, String) {
    let (mut conn, answer) = welcome(addr, id, incarnation).await;
    if answer.starts_with("welcome ") {
        conn.writer.send(b"peers").await.expect("write the report");
        conn.writer.send(b"ready").await.expect("write the report");
    }
    (conn, answer)
}

/// Registers as [`register`] does and returns the head node's refusal: the
/// membership decides after the report, so a refused node is welcomed,
/// sends its report, and then reads the `ERROR`.
///
/// # Panics
///
/// As [`register`] does, and if the head node closes without a line or
/// says nothing within [`framed::LINE_WITHIN`].
pub async fn register_refused(addr: SocketAddr, id: &str, incarnation: u64) -> String {
    let (mut conn, answer) = register(addr, id, incarnation).await;
    if !answer.starts_with("welcome ") {
        return answer;
    }
    framed::next_line(&mut conn.reader, "the answer to the report")
        .await
        .unwrap_or_else(|| panic!("closed without a refusal"))
}

/// A registered scripted data node that answers every `ping` with its
/// `pong` and every `mensaje` with its `recibido` until it is told to hang;
/// then it keeps its socket open and reads nothing until it is told to
/// resume.
#[derive(Debug)]
pub struct FakeNode {
    /// The id of every message it acknowledged, in order.
    pub acked: Arc<Mutex<Vec<MessageId>>>,
    /// Notified, it hangs.
    pub hang: Arc<Notify>,
    /// Notified while it hangs, it reads and answers again.
    pub resume: Arc<Notify>,
    /// The task that answers; it ends when the head node closes the
    /// connection, or when aborted.
    pub task: JoinHandle<()>,
}

/// Registers data node `id` (incarnation 1) as [`register`] does and starts
/// answering as a [`FakeNode`].
///
/// # Panics
///
/// As [`register`] does, and if the head node does not welcome it.
pub async fn fake_node(addr: SocketAddr, id: &str) -> FakeNode {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let hang = Arc::new(Notify::new());
    let resume = Arc::new(Notify::new());
    let (conn, welcome) = register(addr, id, 1).await;
    assert!(welcome.starts_with(&format!("welcome {id} ")), "{welcome}");
    let task = tokio::spawn(answer(conn, acked.clone(), hang.clone(), resume.clone()));
    FakeNode {
        acked,
        hang,
        resume,
        task,
    }
}

/// A [`FakeNode`]'s answers, until the connection ends.
async fn answer(
    mut conn: Connection,
    acked: Arc<Mutex<Vec<MessageId>>>,
    hang: Arc<Notify>,
    resume: Arc<Notify>,
) {
    loop {
        let line = tokio::select! {
            _ = hang.notified() => {
                // Hung: hold the socket, read nothing, until resumed.
                resume.notified().await;
                continue;
            }
            line = conn.reader.read_frame() => line,
        };
        let Ok(Some(line)) = line else { return };
        let text = line.as_str();
        if let Some(rest) = text.strip_prefix("ping ") {
            conn.writer
                .send(format!("pong {rest}").as_bytes())
                .await
                .ok();
        } else if let Some(rest) = text.strip_prefix("mensaje ") {
            let head = rest.split_once(": ").expect("mensaje <id>: <text>").0;
            let id: MessageId = head
                .split(' ')
                .next()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("no message id in {text:?}"));
            acked.lock().expect("not poisoned").push(id);
            conn.writer
                .send(format!("recibido {id}").as_bytes())
                .await
                .ok();
        }
    }
}
