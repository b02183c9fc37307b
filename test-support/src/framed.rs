//! The protocol's framed connections ([`protocol::Connection`]) in this
//! process: reading one line with a bound, so a peer that says nothing
//! fails the test instead of hanging it.

use std::time::Duration;

use protocol::FrameReader;
use tokio::io::AsyncRead;

/// Bound on the wait for one line from a peer in this process.
pub const LINE_WITHIN: Duration = Duration::from_secs(10);

/// The next line from `reader`, without its line end; `None` once the peer
/// has closed the connection (or reset it, or sent what is not a line).
/// `what` names the line in the failure message.
///
/// # Panics
///
/// If no line arrives within [`LINE_WITHIN`].
pub async fn next_line<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    what: &str,
) -> Option<String> {
    let read = tokio::time::timeout(LINE_WITHIN, reader.read_frame())
        .await
        .unwrap_or_else(|_| panic!("{what} did not arrive within {LINE_WITHIN:?}"));
    match read {
        Ok(Some(line)) => Some(line.as_str().to_owned()),
        Ok(None) | Err(_) => None,
    }
}

/// [`next_line`] from a peer that must not close first.
///
/// # Panics
///
/// As [`next_line`] does, and if the connection ends before the line.
pub async fn line<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>, what: &str) -> String {
    next_line(reader, what)
        .await
        .unwrap_or_else(|| panic!("the connection ended before {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Connection;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A client connection to a peer that writes `sent` and then closes.
    async fn connection_to(sent: &'static [u8]) -> Connection {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            peer.write_all(sent).await.unwrap();
        });
        Connection::connect(TcpStream::connect(addr).await.unwrap(), 1024).unwrap()
    }

    #[tokio::test]
    async fn lines_arrive_in_order_and_then_the_close() {
        let mut conn = connection_to(b"one\ntwo\n").await;
        assert_eq!(line(&mut conn.reader, "the first line").await, "one");
        assert_eq!(
            next_line(&mut conn.reader, "the second line")
                .await
                .as_deref(),
            Some("two")
        );
        assert_eq!(next_line(&mut conn.reader, "the close").await, None);
    }

    #[tokio::test]
    #[should_panic(expected = "the connection ended before the answer")]
    async fn a_close_before_a_line_that_must_come_fails_the_test() {
        let mut conn = connection_to(b"").await;
        line(&mut conn.reader, "the answer").await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "the answer did not arrive within 10s")]
    async fn a_silent_peer_fails_the_test() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let _peer = listener.accept().await.unwrap();
        let mut conn = Connection::connect(stream, 1024).unwrap();
        next_line(&mut conn.reader, "the answer").await;
    }
}
