//! The echo server over real loopback sockets.

use std::net::SocketAddr;
use std::time::Duration;

use echo_server::Config;
use protocol::connection::{Connection, ReaderConfig};
use protocol::handshake;
use test_support::server::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `echo_server::run` with `config` on 127.0.0.1:0.
async fn start_server(config: Config) -> TestServer<std::io::Result<()>> {
    node_kit::telemetry::init_for_tests();
    TestServer::start(|listener, shutdown| echo_server::run(listener, config, shutdown)).await
}

fn config_with_cap(max_connections: usize) -> Config {
    Config {
        max_connections,
        ..Config::default()
    }
}

/// A line-framed client that has completed the handshake.
async fn connect(addr: SocketAddr) -> Connection {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut conn = Connection::connect(stream, 1 << 16).unwrap();
    let confirmation = handshake::initiate(
        &mut conn.reader,
        &mut conn.writer,
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(confirmation, "confirmacion");
    conn
}

async fn echo(conn: &mut Connection, text: &str) -> String {
    conn.writer.send(text.as_bytes()).await.unwrap();
    conn.reader
        .read_frame()
        .await
        .unwrap()
        .expect("server closed")
        .as_str()
        .to_owned()
}

/// Reads from a raw socket until the peer closes (or 5 s pass).
async fn read_until_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn echoes_every_message_unchanged() {
    let server = start_server(Config::default()).await;
    let mut conn = connect(server.addr).await;
    for text in ["numero random: 42", "", "ñandú: 7", "  spaced  "] {
        assert_eq!(echo(&mut conn, text).await, text);
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_are_served_and_the_101st_is_refused() {
    let server = start_server(config_with_cap(100)).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(connect(server.addr).await);
    }
    // All 100 echo concurrently, each getting its own text back.
    let mut tasks = Vec::new();
    for (i, mut conn) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                let text = format!("numero random: {i}-{round}");
                assert_eq!(echo(&mut conn, &text).await, text);
            }
            conn
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.unwrap());
    }

    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    refused.write_all(b"peticion\n").await.ok();
    assert_eq!(
        read_until_close(&mut refused).await,
        "ERROR server full (100 connections)\n"
    );

    // The 100 keep working after the refusal.
    for (i, conn) in clients.iter_mut().enumerate() {
        let text = format!("still here {i}");
        assert_eq!(echo(conn, &text).await, text);
    }

    // When one leaves, a new client gets its place.
    let leaving = clients.pop().unwrap();
    drop(leaving);
    let mut newcomer = loop {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let mut conn = Connection::connect(stream, 1 << 16).unwrap();
        match handshake::initiate(
            &mut conn.reader,
            &mut conn.writer,
            None,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(_) => break conn,
            // The server may not have seen the departure yet.
            Err(protocol::HandshakeError::Refused(reason)) => {
                assert_eq!(reason, "server full (100 connections)");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("unexpected handshake error: {e}"),
        }
    };
    assert_eq!(echo(&mut newcomer, "hola").await, "hola");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn original_style_peer_gets_unterminated_echoes() {
    let server = start_server(Config::default()).await;
    let mut peer = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 1024];

    peer.write_all(b"peticion").await.unwrap();
    let n = peer.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"confirmacion");

    for number in [5, 77, 100] {
        let msg = format!("numero random: {number}");
        peer.write_all(msg.as_bytes()).await.unwrap();
        let n = peer.read(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..n],
            msg.as_bytes(),
            "one recv, exact text, no newline"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn original_style_message_split_across_segments_is_one_message() {
    let config = Config {
        reader: ReaderConfig {
            idle_flush: Duration::from_millis(200),
            ..ReaderConfig::default()
        },
        ..Config::default()
    };
    let server = start_server(config).await;
    let mut peer = TcpStream::connect(server.addr).await.unwrap();
    peer.set_nodelay(true).unwrap();
    let mut buf = [0u8; 1024];

    peer.write_all(b"peticion").await.unwrap();
    let n = peer.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"confirmacion");

    // Two segments with a pause shorter than the idle cut between them.
    peer.write_all(b"numero ran").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    peer.write_all(b"dom: 64").await.unwrap();
    let n = peer.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"numero random: 64");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn line_framed_and_original_peers_are_served_side_by_side() {
    let server = start_server(Config::default()).await;
    let mut framed = connect(server.addr).await;
    let mut original = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 1024];
    original.write_all(b"peticion").await.unwrap();
    let n = original.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"confirmacion");

    // A line-framed client's line that arrives in pieces is not cut by pauses.
    framed.writer.queue(b"");
    framed.writer.flush().await.unwrap();
    let mut pieces = TcpStream::connect(server.addr).await.unwrap();
    pieces.write_all(b"peticion\n").await.unwrap();
    let n = pieces.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"confirmacion\n");
    pieces.write_all(b"numero ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    pieces.write_all(b"random: 3\n").await.unwrap();
    let n = pieces.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"numero random: 3\n");

    assert_eq!(
        framed.reader.read_frame().await.unwrap().unwrap().as_str(),
        ""
    );
    original.write_all(b"numero random: 1").await.unwrap();
    let n = original.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"numero random: 1");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn garbage_before_handshake_gets_an_error_and_close() {
    let server = start_server(Config::default()).await;
    let mut peer = TcpStream::connect(server.addr).await.unwrap();
    peer.write_all(b"\x16\x03\x01 hello\n").await.unwrap();
    let reply = read_until_close(&mut peer).await;
    assert!(reply.starts_with("ERROR "), "{reply:?}");

    let mut peer = TcpStream::connect(server.addr).await.unwrap();
    peer.write_all(b"hola\n").await.unwrap();
    assert_eq!(
        read_until_close(&mut peer).await,
        "ERROR expected 'peticion', got \"hola\"\n"
    );
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn silent_peer_is_closed_after_the_handshake_timeout() {
    let server = start_server(Config::default()).await;
    let started = tokio::time::Instant::now();
    let mut peer = TcpStream::connect(server.addr).await.unwrap();
    let mut reply = Vec::new();
    peer.read_to_end(&mut reply).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "ERROR handshake timed out after 10s\n"
    );
    assert!(started.elapsed() >= Duration::from_secs(10));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn peer_leaving_mid_line_frees_its_slot() {
    let server = start_server(config_with_cap(1)).await;
    let mut peer = TcpStream::connect(server.addr).await.unwrap();
    peer.write_all(b"peticion\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = peer.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"confirmacion\n");
    // Half a line, then gone.
    peer.write_all(b"numero rand").await.unwrap();
    drop(peer);
    // The slot comes back once the server notices; retry until it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let mut next = Connection::connect(stream, 1 << 16).unwrap();
        match handshake::initiate(
            &mut next.reader,
            &mut next.writer,
            None,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(_) => {
                assert_eq!(echo(&mut next, "again").await, "again");
                break;
            }
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "slot never freed: {e}"
            ),
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn ten_megabyte_line_is_refused_and_the_connection_closed() {
    let server = start_server(Config::default()).await;
    let mut peer = TcpStream::connect(server.addr).await.unwrap();
    peer.write_all(b"peticion\n").await.unwrap();
    let (mut read, mut write) = peer.into_split();
    let sender = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..160 {
            // The server stops reading; a write error is expected.
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(
        reply,
        "confirmacion\nERROR line too long (max 65536 bytes)\n"
    );
    sender.abort();
    let mut conn = connect(server.addr).await;
    assert_eq!(echo(&mut conn, "still serving").await, "still serving");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_utf8_gets_an_error_and_the_connection_continues() {
    let server = start_server(Config::default()).await;
    let mut conn = connect(server.addr).await;
    conn.writer.queue(b"\xff\xfe");
    conn.writer.flush().await.unwrap();
    assert_eq!(
        conn.reader.read_frame().await.unwrap().unwrap().as_str(),
        "ERROR invalid UTF-8"
    );
    assert_eq!(echo(&mut conn, "ok").await, "ok");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_returns_promptly_and_closes_clients() {
    let server = start_server(Config::default()).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(server.addr).await);
    }
    let started = std::time::Instant::now();
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    for conn in &mut clients {
        assert!(
            conn.reader.read_frame().await.unwrap().is_none(),
            "clients see a clean close"
        );
    }
}
