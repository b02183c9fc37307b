//! Connecting to a server, with the handshake, and retrying while it is away.

use std::time::Duration;

use node_kit::backoff::Backoff;
use protocol::HandshakeError;
use protocol::connection::Connection;
use protocol::handshake;
use tokio::time::Instant;
use tracing::{info, warn};

/// Why a client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made for the whole retry window.
    #[error("cannot reach {server} after trying for {waited:?}: {last_error}")]
    Unreachable {
        /// The server address as given.
        server: String,
        /// How long we kept trying.
        waited: Duration,
        /// The last failure.
        last_error: String,
    },
    /// The server refused us for good (for example a wrong cluster token).
    #[error("{server} refused the connection: {reason}")]
    Refused {
        /// The server address as given.
        server: String,
        /// The server's `ERROR` text.
        reason: String,
    },
    /// A setting cannot be used (for example a client id that is not a valid name).
    #[error("{0}")]
    Config(String),
    /// The server broke the protocol.
    #[error("protocol error from {server}: {reason}")]
    Protocol {
        /// The server address as given.
        server: String,
        /// What was wrong.
        reason: String,
    },
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` of the server; host names are resolved on every attempt.
    pub server: String,
    /// The role line for the head node (`cliente` or `cliente id=<client-id>`);
    /// `None` for the echo server.
    pub role: Option<String>,
    /// Give up once connecting has failed continuously for this long.
    pub retry_for: Duration,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Longest accepted reply line.
    pub max_line: usize,
}

impl ConnectOptions {
    /// Defaults for `server`: retry for 30 s, backoff 100 ms to 5 s.
    pub fn new(server: impl Into<String>, role: Option<&str>) -> Self {
        ConnectOptions {
            server: server.into(),
            role: role.map(str::to_owned),
            retry_for: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_line: protocol::DEFAULT_MAX_LINE,
        }
    }
}

/// Connects and completes the handshake, retrying with capped, jittered
/// backoff until it succeeds or `retry_for` has passed.
pub async fn connect(options: &ConnectOptions) -> Result<Connection, ClientError> {
    let started = Instant::now();
    let mut backoff = Backoff::new(options.min_backoff, options.max_backoff, rand::make_rng());
    loop {
        let last_error = match try_connect(options).await {
            Ok(conn) => {
                info!(server = %options.server, "connected, confirmacion received");
                return Ok(conn);
            }
            Err(HandshakeError::Refused(reason)) if !is_transient_refusal(&reason) => {
                return Err(ClientError::Refused {
                    server: options.server.clone(),
                    reason,
                });
            }
            Err(e) => e.to_string(),
        };
        let waited = started.elapsed();
        if waited >= options.retry_for {
            return Err(ClientError::Unreachable {
                server: options.server.clone(),
                waited,
                last_error,
            });
        }
        let delay = backoff
            .next_delay()
            .min(options.retry_for.saturating_sub(waited));
        warn!(
            server = %options.server,
            attempt = backoff.attempts(),
            error = %last_error,
            retry_in = ?delay,
            "cannot connect, retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// A full server frees up as clients leave; everything else is final.
fn is_transient_refusal(reason: &str) -> bool {
    reason.starts_with("server full")
}

async fn try_connect(options: &ConnectOptions) -> Result<Connection, HandshakeError> {
    let stream = protocol::net::dial(&options.server, None, protocol::net::CONNECT_TIMEOUT).await?;
    let mut conn = Connection::connect(stream, options.max_line)?;
    handshake::initiate(
        &mut conn.reader,
        &mut conn.writer,
        options.role.as_deref(),
        handshake::DEFAULT_HANDSHAKE_TIMEOUT,
    )
    .await?;
    Ok(conn)
}
