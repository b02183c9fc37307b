//! What both servers need at their door: a connection cap that fits the
//! process's open-file limit, an accept loop that survives running out of
//! file descriptors, refusals with a clear error, and a bounded waiting
//! room for connections that have not finished their handshake.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use protocol::net::{Listener, Stream};

/// How long a refused connection is kept open so the refusal is read before
/// the close (closing with unread input would send a reset).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// At most this many refused connections linger at once; more are closed at once.
pub const MAX_LINGERING_REFUSALS: usize = 64;
/// File descriptors kept back from connections: the listener, log files,
/// ICMP sockets, `data.txt`, the runtime's own, and lingering refusals.
pub const RESERVED_FDS: usize = 64 + MAX_LINGERING_REFUSALS;
/// Longest pause between two accept attempts while the process is out of
/// file descriptors (or memory).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per this period about failing accepts.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit and
/// returns the limit now in force. Connections are then capped to fit it
/// (see [`connection_budget`]), so running out of descriptors is a refusal,
/// never a crash.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        // Unlimited already.
        return u64::MAX;
    };
    let target = hard.unwrap_or(u64::MAX);
    if target > soft {
        let raised = rustix::process::Rlimit {
            current: Some(target),
            maximum: hard,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            info!(from = soft, to = target, "open-file limit raised");
            return target;
        }
    }
    soft
}

/// How many connections fit under an open-file limit of `fd_limit`, keeping
/// [`RESERVED_FDS`] back, and never more than `wanted`.
pub fn connection_budget(fd_limit: u64, wanted: usize) -> usize {
    let usable = usize::try_from(fd_limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(RESERVED_FDS);
    wanted.min(usable).max(1)
}

/// Admits at most `max` connections at once. A connection beyond the cap is
/// sent `ERROR server full (<max> connections)`, logged, and closed, while
/// the admitted ones carry on; a slot frees up when its permit is dropped.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    slots: Arc<Semaphore>,
    lingering: Arc<Semaphore>,
    refusals: TaskTracker,
    accept_errors: Mutex<ErrorLog>,
}

#[derive(Debug, Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl Admission {
    /// A door for `max` connections at once.
    pub fn new(max: usize) -> Self {
        Admission {
            max,
            slots: Arc::new(Semaphore::new(max)),
            lingering: Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS)),
            refusals: TaskTracker::new(),
            accept_errors: Mutex::new(ErrorLog::default()),
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections admitted and not yet finished.
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Waits for the next connection that fits under the cap. Hold the
    /// permit for as long as the connection is served.
    ///
    /// Never fails: accept errors (out of file descriptors, out of memory,
    /// a connection reset before it was accepted) are retried with a growing
    /// pause of up to a second, and logged at most once every 10 s with how
    /// many there were, so the server keeps serving the connections it has.
    pub async fn accept<L: Listener>(
        &self,
        listener: &L,
    ) -> (L::Stream, SocketAddr, OwnedSemaphorePermit) {
        let mut delay = Duration::from_millis(5);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    self.log_accept_error(&e, delay);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            delay = Duration::from_millis(5);
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => return (stream, peer, permit),
                Err(_) => {
                    warn!(%peer, max = self.max, "refused connection: server full");
                    refuse(
                        &self.lingering,
                        &self.refusals,
                        stream,
                        format!("server full ({} connections)", self.max),
                    );
                }
            }
        }
    }

    fn log_accept_error(&self, e: &io::Error, retry_in: Duration) {
        let mut log = self
            .accept_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if log
            .last
            .is_some_and(|last| now < last + ACCEPT_ERROR_LOG_EVERY)
        {
            log.suppressed += 1;
            return;
        }
        let hint = match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::MFILE.raw_os_error() => {
                " (out of file descriptors: raise the open-file limit or lower --max-connections)"
            }
            Some(code) if code == rustix::io::Errno::NFILE.raw_os_error() => {
                " (the system is out of file descriptors)"
            }
            _ => "",
        };
        error!(
            error = %e,
            retry_in = ?retry_in,
            similar_errors_since_last_report = log.suppressed,
            "accept failed{hint}; still serving the connections already open"
        );
        log.last = Some(now);
        log.suppressed = 0;
    }
}

/// Refuses an accepted connection: sends `ERROR <reason>`, closes our side
/// and drains the peer's input for a moment, so the refusal is read rather
/// than lost to a reset. At most [`MAX_LINGERING_REFUSALS`] linger; beyond
/// that the connection is closed at once.
fn refuse<S: Stream>(lingering: &Arc<Semaphore>, tracker: &TaskTracker, stream: S, reason: String) {
    let message = format!("ERROR {reason}\n");
    // A fresh socket's send buffer always has room for one short line.
    let _ = stream.try_write(message.as_bytes());
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tracker.spawn(async move {
        let mut stream = stream;
        let _ = stream.shutdown().await;
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

/// The waiting room of connections that have not finished their handshake,
/// with room for `max`. When it is full, the connection that has waited
/// longest is told to leave ([`HandshakeSlot::evicted`]) to make room: a
/// flood of silent connections then cannot keep a real peer (a data node
/// coming back) out, since a real peer finishes in a round trip.
#[derive(Debug, Clone)]
pub struct Handshakes {
    inner: Arc<Mutex<Room>>,
}

#[derive(Debug)]
struct Room {
    max: usize,
    next: u64,
    waiting: VecDeque<(u64, CancellationToken)>,
    evicted: u64,
}

impl Handshakes {
    /// Room for `max` connections in their handshake.
    pub fn new(max: usize) -> Self {
        Handshakes {
            inner: Arc::new(Mutex::new(Room {
                max: max.max(1),
                next: 0,
                waiting: VecDeque::new(),
                evicted: 0,
            })),
        }
    }

    /// Enters a new connection, evicting the longest-waiting one if the room
    /// is full. Drop the slot when the handshake is over.
    pub fn enter(&self) -> HandshakeSlot {
        let mut room = self.lock();
        let id = room.next;
        room.next += 1;
        let token = CancellationToken::new();
        if room.waiting.len() >= room.max
            && let Some((_, oldest)) = room.waiting.pop_front()
        {
            oldest.cancel();
            room.evicted += 1;
        }
        room.waiting.push_back((id, token.clone()));
        HandshakeSlot {
            id,
            token,
            room: self.clone(),
        }
    }

    /// Connections in their handshake now.
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Whether no connection is in its handshake.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections evicted so far to make room.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Room> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A connection's place in [`Handshakes`]; leaves the room when dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    id: u64,
    token: CancellationToken,
    room: Handshakes,
}

impl HandshakeSlot {
    /// Completes when this connection was evicted to make room for a newer
    /// one; the caller should then close it.
    pub async fn evicted(&self) {
        self.token.cancelled().await
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut room = self.room.lock();
        if let Some(at) = room.waiting.iter().position(|(id, _)| *id == self.id) {
            room.waiting.remove(at);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_descriptors_back_and_respects_the_wanted_cap() {
        assert_eq!(connection_budget(1024, 16_384), 1024 - RESERVED_FDS);
        assert_eq!(connection_budget(1_048_576, 16_384), 16_384);
        assert_eq!(connection_budget(u64::MAX, 100), 100);
        assert_eq!(connection_budget(10, 100), 1, "never zero");
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        use rustix::process::{Resource, getrlimit};
        let limit = raise_fd_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current.unwrap_or(u64::MAX), limit);
        assert_eq!(now.current, now.maximum);
    }

    #[tokio::test]
    async fn a_full_waiting_room_evicts_the_longest_waiting_connection() {
        let room = Handshakes::new(2);
        let first = room.enter();
        let second = room.enter();
        assert_eq!(room.len(), 2);
        let third = room.enter();
        assert_eq!(room.len(), 2);
        assert_eq!(room.evicted(), 1);
        tokio::time::timeout(Duration::from_secs(5), first.evicted())
            .await
            .expect("the oldest is told to leave");
        let still_waiting = tokio::time::timeout(Duration::from_millis(10), second.evicted()).await;
        assert!(still_waiting.is_err(), "the others stay");
        drop(first);
        assert_eq!(room.len(), 2, "an evicted slot is already out of the room");
        drop(second);
        drop(third);
        assert!(room.is_empty());
    }
}
