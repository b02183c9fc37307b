//! A server's `run(listener, .., shutdown)` in this process, on a port of
//! its own, with a switch that stops it.
//!
//! Every server of the workspace takes a bound listener and a shutdown
//! future; a test binds 127.0.0.1:0, hands [`Shutdown`] in as that future,
//! and later asserts on how `run` ended.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bound on the wait for a stopped server's `run` to return.
pub const STOP_WITHIN: Duration = Duration::from_secs(5);

/// A server's `run` future spawned on the test's runtime. Dropping it
/// stops the server too (its [`Shutdown`] completes), without waiting.
#[derive(Debug)]
pub struct TestServer<T> {
    /// Where it listens.
    pub addr: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    task: JoinHandle<T>,
}

impl<T: Send + 'static> TestServer<T> {
    /// Binds 127.0.0.1:0 and spawns `serve(listener, shutdown)`.
    pub async fn start<F, Fut>(serve: F) -> TestServer<T>
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        TestServer::start_on(listener, serve)
    }

    /// Spawns `serve(listener, shutdown)` on a listener the test bound, for
    /// example again on the address of a server it stopped.
    pub fn start_on<F, Fut>(listener: TcpListener, serve: F) -> TestServer<T>
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let addr = listener.local_addr().expect("a bound listener's address");
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, Shutdown(stop_rx)));
        TestServer {
            addr,
            stop_tx: Some(stop_tx),
            task,
        }
    }

    /// Completes its [`Shutdown`] and returns what `run` returned.
    ///
    /// # Panics
    ///
    /// If `run` panicked, or has not returned within [`STOP_WITHIN`].
    pub async fn stop(mut self) -> T {
        if let Some(stop_tx) = self.stop_tx.take() {
            // The server may have ended on its own and dropped the receiver.
            let _ = stop_tx.send(());
        }
        tokio::time::timeout(STOP_WITHIN, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("the server did not stop within {STOP_WITHIN:?}"))
            .expect("the server task panicked")
    }
}

/// The shutdown future handed to a [`TestServer`]'s `run`: it completes
/// when [`TestServer::stop`] is called or the [`TestServer`] is dropped.
#[derive(Debug)]
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A sent stop and a dropped sender both mean: stop.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// An address on 127.0.0.1 where nothing listens: a port bound and closed
/// again at once, so (almost certainly) no one else has it yet.
pub async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("a bound listener's address")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Answers each connection with one byte until told to stop; returns
    /// how many it answered.
    async fn serve_one_byte(listener: TcpListener, shutdown: Shutdown) -> usize {
        tokio::pin!(shutdown);
        let mut answered = 0;
        loop {
            tokio::select! {
                _ = &mut shutdown => return answered,
                accepted = listener.accept() => {
                    let (mut stream, _) = accepted.unwrap();
                    stream.write_all(b"!").await.unwrap();
                    answered += 1;
                }
            }
        }
    }

    async fn one_byte(addr: SocketAddr) -> u8 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.read_u8().await.unwrap()
    }

    #[tokio::test]
    async fn a_started_server_serves_until_stopped_and_returns_its_result() {
        let server = TestServer::start(serve_one_byte).await;
        assert_eq!(one_byte(server.addr).await, b'!');
        assert_eq!(one_byte(server.addr).await, b'!');
        assert_eq!(server.stop().await, 2);
    }

    #[tokio::test]
    async fn a_server_can_start_again_on_the_address_of_a_stopped_one() {
        let first = TestServer::start(serve_one_byte).await;
        let addr = first.addr;
        first.stop().await;
        let listener = TcpListener::bind(addr).await.unwrap();
        let second = TestServer::start_on(listener, serve_one_byte);
        assert_eq!(one_byte(addr).await, b'!');
        assert_eq!(second.stop().await, 1);
    }

    #[tokio::test]
    async fn dropping_the_handle_completes_the_shutdown() {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let shutdown = Shutdown(stop_rx);
        drop(stop_tx);
        tokio::time::timeout(STOP_WITHIN, shutdown)
            .await
            .expect("a dropped switch stops the server");
    }

    #[tokio::test]
    async fn nothing_listens_on_a_closed_port() {
        let addr = closed_port().await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
