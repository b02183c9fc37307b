//! The network seam: what a server needs from a listener and from the
//! streams it accepts.
//!
//! Production code uses tokio's TCP types, which implement these traits
//! directly; a simulation wraps its own socket types in newtypes that
//! implement them too. Each stream splits into owned halves without a lock,
//! so the real TCP path costs nothing extra.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream that splits into independent read and write halves.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The read half after [`Stream::into_split`].
    type ReadHalf: AsyncRead + Unpin + Send + 'static;
    /// The write half after [`Stream::into_split`].
    type WriteHalf: AsyncWrite + Unpin + Send + 'static;

    /// Splits the stream into owned halves, one per direction.
    fn into_split(self) -> (Self::ReadHalf, Self::WriteHalf);
    /// The remote end's address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// Our end's address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Turns Nagle's algorithm off (or on); streams without it ignore this.
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;
    /// Writes what fits now without waiting; see `TcpStream::try_write`.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

/// A bound listener that accepts [`Stream`]s.
pub trait Listener: Send + Sync {
    /// The accepted streams.
    type Stream: Stream;

    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
    /// The address the listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Stream for tokio::net::TcpStream {
    type ReadHalf = tokio::net::tcp::OwnedReadHalf;
    type WriteHalf = tokio::net::tcp::OwnedWriteHalf;

    fn into_split(self) -> (Self::ReadHalf, Self::WriteHalf) {
        tokio::net::TcpStream::into_split(self)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpStream::peer_addr(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpStream::local_addr(self)
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        tokio::net::TcpStream::set_nodelay(self, nodelay)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        tokio::net::TcpStream::try_write(self, buf)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send {
        tokio::net::TcpListener::accept(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

/// How long one outgoing connection may take, name lookup included.
///
/// Without a bound, a connection begun while the peer's network is cut keeps
/// retrying its SYN on the kernel's schedule (1, 2, 4, ... 64 s, about two
/// minutes in all), so a node could take a minute to notice that the link came
/// back. A few seconds covers any real round trip and keeps reconnection prompt.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects to `target` (`host:port`, looked up on every call, so a peer
/// that moved is found at its new address), from `source` when given, with
/// name lookup and connection bounded together by `timeout`. Addresses are
/// tried in the order the resolver gives them; the last error is returned.
pub async fn dial(
    target: &str,
    source: Option<std::net::IpAddr>,
    timeout: std::time::Duration,
) -> io::Result<tokio::net::TcpStream> {
    let attempt = async {
        let mut last = None;
        for addr in tokio::net::lookup_host(target).await? {
            if source.is_some_and(|s| s.is_ipv4() != addr.is_ipv4()) {
                continue;
            }
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            if let Some(source) = source {
                socket.bind(SocketAddr::new(source, 0))?;
            }
            match socket.connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::other(match source {
                Some(s) => format!("{target} has no address of {s}'s family"),
                None => format!("{target} has no address"),
            })
        }))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from {target} within {timeout:?}"),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dial_connects_by_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = dial(&format!("localhost:{port}"), None, CONNECT_TIMEOUT).await;
        assert_eq!(stream.unwrap().peer_addr().unwrap().port(), port);
    }

    #[tokio::test]
    async fn dial_gives_up_after_the_timeout() {
        // A listener that never accepts, with its queue full, drops new SYNs,
        // as a cut link does: the connection neither succeeds nor fails.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let mut queued = Vec::new();
        let mut hangs = false;
        for _ in 0..8 {
            let short = std::time::Duration::from_millis(300);
            match tokio::time::timeout(short, tokio::net::TcpStream::connect(&target)).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => {
                    hangs = true;
                    break;
                }
            }
        }
        assert!(hangs, "the full listener kept accepting connections");
        let timeout = std::time::Duration::from_millis(200);
        let err = dial(&target, None, timeout).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("no answer from"), "{err}");
    }
}
