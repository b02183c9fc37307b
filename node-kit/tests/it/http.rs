//! The operator's HTTP server against well-behaved, malformed, huge, slow
//! and too many peers, on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use node_kit::http::{self, Body, HttpConfig, Request, Response};
use test_support::http::{exchange, read_to_close};
use test_support::server::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

struct Server {
    addr: SocketAddr,
    server: TestServer<()>,
    /// Feeds `/events`.
    events: watch::Sender<Arc<str>>,
}

impl Server {
    async fn start(config: HttpConfig) -> Server {
        let (events, events_rx) = watch::channel(Arc::<str>::from("first"));
        let handler = move |request: &Request| match request.path.as_str() {
            "/healthz" => Response::text(200, "ok"),
            "/events" => Response {
                status: 200,
                body: Body::Events(events_rx.clone()),
            },
            _ => Response::not_found(),
        };
        let server =
            TestServer::start(|listener, shutdown| http::run(listener, config, handler, shutdown))
                .await;
        Server {
            addr: server.addr,
            server,
            events,
        }
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

#[tokio::test]
async fn serves_a_get_and_closes() {
    let server = Server::start(HttpConfig::default()).await;
    let answer = exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("Content-Length: 3\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    let missing = exchange(server.addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    server.stop().await;
}

#[tokio::test]
async fn refuses_other_methods_and_garbage() {
    let server = Server::start(HttpConfig::default()).await;
    let post = exchange(
        server.addr,
        b"POST /healthz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
    let garbage = exchange(server.addr, b"\x16\x03\x01 hello\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    server.stop().await;
}

#[tokio::test]
async fn refuses_an_oversized_request_head() {
    let server = Server::start(HttpConfig::default()).await;
    let mut request = b"GET /healthz HTTP/1.1\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 64 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // The server answers once it has 8 KiB and one byte, and may close
    // before the rest is written: a failed write is expected.
    let _ = stream.write_all(&request).await;
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_request_head_times_out() {
    let config = HttpConfig {
        read_timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    };
    let server = Server::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /healthz HT").await.unwrap();
    let started = tokio::time::Instant::now();
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_connection_beyond_the_cap_is_refused_at_once() {
    let config = HttpConfig {
        max_connections: 4,
        ..HttpConfig::default()
    };
    let server = Server::start(config).await;
    // Four silent connections hold every place (their heads never end).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET /").await.unwrap();
        held.push(stream);
    }
    // Let the server accept them before the fifth arrives.
    let mut refused = String::new();
    for _ in 0..50 {
        refused = exchange(server.addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        if refused.starts_with("HTTP/1.1 503 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    drop(held);
    // Places free up again.
    let mut answer = String::new();
    for _ in 0..50 {
        answer = exchange(server.addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn event_streams_send_each_value_and_are_capped() {
    let config = HttpConfig {
        max_streams: 1,
        ..HttpConfig::default()
    };
    let server = Server::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("data: first\n\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen}");
    assert!(
        seen.contains("Content-Type: text/event-stream\r\n"),
        "{seen}"
    );
    let second = exchange(server.addr, b"GET /events HTTP/1.1\r\n\r\n").await;
    assert!(second.starts_with("HTTP/1.1 503 "), "{second}");
    server.events.send_replace(Arc::from("second"));
    while !seen.contains("data: second\n\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // Stopping the server ends the stream.
    server.stop().await;
    let rest = read_to_close(&mut stream).await;
    assert!(!rest.contains("HTTP/1.1"), "{rest}");
}
