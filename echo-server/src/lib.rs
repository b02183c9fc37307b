//! Activity 1: the echo server.
//!
//! Each client gets its own task. After the `peticion` / `confirmacion`
//! handshake every message is sent back unchanged, in the client's own
//! framing (see `docs/protocol.md`). At most `max_connections` clients are
//! served at once (fewer if the open-file limit is lower); one more is told
//! `ERROR server full (N connections)` and closed, while the others carry
//! on. A client that reads none of its echoes for `write_timeout`, or sends
//! nothing for `idle_timeout`, is closed.
//!
//! [`run`] is the only entry point: the binary and the tests both call it
//! with a bound listener and a shutdown future.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use node_kit::server::Admission;
use protocol::connection::{Connection, ReaderConfig};
use protocol::handshake::{self, PETICION, RoleStep};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// Default cap on concurrent clients, as in the original server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100;

/// How long `run` waits for client tasks to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(800);

/// Settings of the echo server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Clients served at once.
    pub max_connections: usize,
    /// Framing limits for every connection.
    pub reader: ReaderConfig,
    /// Time a client has to send `peticion`.
    pub handshake_timeout: Duration,
    /// A client whose socket takes none of its echoes for this long is closed.
    pub write_timeout: Duration,
    /// A client that sends nothing for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            reader: ReaderConfig::default(),
            handshake_timeout: handshake::DEFAULT_HANDSHAKE_TIMEOUT,
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Serves clients on `listener` until `shutdown` completes, then closes every
/// client politely and returns.
///
/// Only a failure of the listener itself ends `run` early with an error;
/// errors of one client are logged and end that client's task only.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let config = Arc::new(config);
    let fd_limit = node_kit::server::raise_fd_limit();
    let admission = Admission::new(node_kit::server::connection_budget(
        fd_limit,
        config.max_connections,
    ));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    info!(
        addr = %listener.local_addr()?,
        max_connections = admission.max(),
        open_file_limit = fd_limit,
        "echo server listening"
    );

    tokio::pin!(shutdown);
    let result = loop {
        let (stream, peer, permit) = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            accepted = admission.accept(&listener) => accepted,
        };
        let config = config.clone();
        let cancel = cancel.clone();
        tracker.spawn(
            async move {
                if let Err(e) = serve_client(stream, &config, &cancel).await {
                    warn!(error = %e, "client connection failed");
                }
                drop(permit);
            }
            .instrument(info_span!("client", %peer)),
        );
    };

    info!(clients = admission.in_use(), "closing client connections");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        warn!("some clients did not close in time; dropping them");
    }
    info!("echo server stopped");
    result
}

async fn serve_client(
    stream: TcpStream,
    config: &Config,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let mut conn = Connection::accept(stream, config.reader, PETICION.as_bytes())?;
    info!("client connected");

    let handshake = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        result = handshake::accept(&mut conn.reader, &mut conn.writer, RoleStep::None, config.handshake_timeout) => result,
    };
    if let Err(e) = handshake {
        warn!(error = %e, "handshake failed, closing");
        return Ok(());
    }
    info!(framing = ?conn.reader.framing(), "peticion received, confirmacion sent");

    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => {
                debug!("server shutting down, closing client");
                let _ = tokio::time::timeout(Duration::from_millis(200), conn.writer.shutdown()).await;
                return Ok(());
            }
            _ = tokio::time::sleep(config.idle_timeout) => {
                info!(timeout = ?config.idle_timeout, "client idle; closing");
                let reason = format!("idle for {:?}; closing", config.idle_timeout);
                conn.close_with_error(&reason).await;
                return Ok(());
            }
            frame = conn.reader.read_frame() => frame,
        };
        match frame {
            Ok(Some(line)) => {
                info!(
                    message = protocol::error::truncate_for_log(line.as_str()),
                    "received"
                );
                conn.writer.queue(line.bytes());
                if tokio::time::timeout(config.write_timeout, conn.writer.flush())
                    .await
                    .is_err()
                {
                    warn!(timeout = ?config.write_timeout, "client is not reading its echoes; closing");
                    return Ok(());
                }
            }
            Ok(None) => {
                info!("client disconnected");
                return Ok(());
            }
            Err(e) if e.is_fatal() => {
                warn!(error = %e, "closing connection");
                conn.close_with_error(&e).await;
                return Ok(());
            }
            Err(e) => {
                warn!(error = %e, "bad message");
                conn.writer.send_error(&e).await?;
            }
        }
    }
}
