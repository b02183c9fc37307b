//! Raw HTTP/1.1 against the operator's endpoints: the servers answer one
//! request per connection and close, so an answer is whatever arrives
//! until the close.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on the wait for a whole answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Sends `request` byte for byte (well-formed or not) and returns the whole
/// answer, as [`read_to_close`] reads it.
///
/// # Panics
///
/// If the connection cannot be made, the request cannot be written, or the
/// server does not close within [`ANSWER_WITHIN`]. A request bigger than
/// the server reads before it answers may not be written whole: send that
/// one by hand and use [`read_to_close`].
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream.write_all(request).await.expect("write the request");
    read_to_close(&mut stream).await
}

/// Reads until the server closes. A reset ends the answer like a close:
/// a server that answers a request it did not read whole resets the
/// connection, and what it sent before the reset is the answer.
///
/// # Panics
///
/// If the server does not close within [`ANSWER_WITHIN`].
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(ANSWER_WITHIN, stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The parts of an answer a test looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `HTTP/1.1 200 OK`, without its line end.
    pub status_line: String,
    /// Everything after the blank line that ends the head.
    pub body: String,
}

/// `GET path` with a `Host` header, as a browser or a scraper asks.
///
/// # Panics
///
/// As [`exchange`] does, and if the answer has no head.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    let answer = exchange(addr, request.as_bytes()).await;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    Answer {
        status_line: head.lines().next().unwrap_or_default().to_owned(),
        body: body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    /// Answers one request with `answer` after reading its head.
    async fn answer_once(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            while stream.read_line(&mut line).await.unwrap() > 0 && !line.ends_with("\r\n\r\n") {}
            assert!(
                line.starts_with("GET /x HTTP/1.1\r\nHost: test\r\n"),
                "{line}"
            );
            stream.get_mut().write_all(answer).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn a_get_gives_the_status_line_and_the_body() {
        let addr = answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
        assert_eq!(
            get(addr, "/x").await,
            Answer {
                status_line: "HTTP/1.1 200 OK".into(),
                body: "ok\n".into(),
            }
        );
    }

    #[tokio::test]
    async fn an_exchange_returns_the_raw_answer() {
        let addr = answer_once(b"HTTP/1.1 404 Not Found\r\n\r\n").await;
        let answer = exchange(addr, b"GET /x HTTP/1.1\r\nHost: test\r\n\r\n").await;
        assert_eq!(answer, "HTTP/1.1 404 Not Found\r\n\r\n");
    }
}
