//! What both servers need at their door: accepting with a connection cap,
//! and refusing the connections beyond it with a clear error.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

/// How long a refused connection is kept open so the refusal is read before
/// the close (closing with unread input would send a reset).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// At most this many refused connections linger at once; more are closed at once.
const MAX_LINGERING_REFUSALS: usize = 256;

/// Admits at most `max` connections at once. A connection beyond the cap is
/// sent `ERROR server full (<max> connections)`, logged, and closed, while
/// the admitted ones carry on; a slot frees up when its permit is dropped.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    slots: Arc<Semaphore>,
    lingering: Arc<Semaphore>,
    refusals: TaskTracker,
}

impl Admission {
    /// A door for `max` connections at once.
    pub fn new(max: usize) -> Self {
        Admission {
            max,
            slots: Arc::new(Semaphore::new(max)),
            lingering: Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS)),
            refusals: TaskTracker::new(),
        }
    }

    /// Connections admitted and not yet finished.
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Waits for the next connection that fits under the cap. Hold the
    /// permit for as long as the connection is served.
    ///
    /// Transient accept errors (too many open files, a connection reset
    /// before it was accepted) are retried with a growing pause; only a
    /// listener that keeps failing for several seconds returns an error.
    pub async fn accept(
        &self,
        listener: &TcpListener,
    ) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        loop {
            let (stream, peer) = accept_with_retry(listener).await?;
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => return Ok((stream, peer, permit)),
                Err(_) => {
                    warn!(%peer, max = self.max, "refused connection: server full");
                    self.refuse(stream);
                }
            }
        }
    }

    fn refuse(&self, stream: TcpStream) {
        let message = format!("ERROR server full ({} connections)\n", self.max);
        // A fresh socket's send buffer always has room for one short line.
        let _ = stream.try_write(message.as_bytes());
        let Ok(permit) = self.lingering.clone().try_acquire_owned() else {
            return;
        };
        self.refusals.spawn(async move {
            let mut stream = stream;
            let _ = stream.shutdown().await;
            // Drain what the client sent until it closes, so our close is a
            // FIN, not a reset that could discard the refusal unread.
            let mut sink = vec![0u8; 512];
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            drop(permit);
        });
    }
}

async fn accept_with_retry(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let mut delay = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok(accepted) => return Ok(accepted),
            Err(e) if delay <= Duration::from_secs(5) => {
                error!(error = %e, retry_in = ?delay, "accept failed");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none: for `select!`
/// branches whose timer is only sometimes armed.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
