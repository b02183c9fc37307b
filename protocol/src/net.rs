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
