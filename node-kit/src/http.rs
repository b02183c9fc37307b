//! A small HTTP/1.1 server for the operator's endpoints (`/metrics`,
//! `/healthz`, `/status.json`, the status page and its event stream).
//!
//! It serves `GET` (and `HEAD`) only, one request per connection
//! (`Connection: close`), and everything it holds is bounded, so a hostile
//! peer cannot exhaust it:
//!
//! - at most [`HttpConfig::max_connections`] connections at once; one more
//!   is sent `503` without waiting (a non-blocking write) and closed;
//! - a request head of at most [`HttpConfig::max_head`] bytes (`431` past
//!   it), read in full within [`HttpConfig::read_timeout`] (`408` past it,
//!   so a slow sender cannot hold a place for long);
//! - a response that the peer does not take within
//!   [`HttpConfig::write_timeout`] ends its connection;
//! - at most [`HttpConfig::max_streams`] event streams (server-sent events)
//!   at once, within the connection cap; one more gets `503`.
//!
//! Request bodies are never read. The handler is a plain function from
//! [`Request`] to [`Response`]; it must not block.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Bounds of the HTTP server. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Connections served at once (default 64).
    pub max_connections: usize,
    /// Longest request head: request line and headers (default 8 KiB).
    pub max_head: usize,
    /// Time from accept to the end of the request head (default 5 s).
    pub read_timeout: Duration,
    /// Time the peer has to take each write of the response (default 10 s).
    pub write_timeout: Duration,
    /// Event streams at once (default 16).
    pub max_streams: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 64,
            max_head: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_streams: 16,
        }
    }
}

/// A parsed request: what the handler sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path, without the query (`/metrics`).
    pub path: String,
    /// The query after `?`, if any.
    pub query: Option<String>,
}

/// What a handler answers.
#[derive(Debug)]
pub struct Response {
    /// Status code (200, 404...).
    pub status: u16,
    /// The body and its type.
    pub body: Body,
}

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// A complete body of this content type.
    Full {
        /// `Content-Type` header value.
        content_type: &'static str,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Server-sent events: the current value of the channel, then each new
    /// one, as a `data:` event, until the peer leaves or the server stops.
    /// Each value must be one line (no newline).
    Events(watch::Receiver<Arc<str>>),
}

impl Response {
    /// `200` with `bytes` of `content_type`.
    pub fn ok(content_type: &'static str, bytes: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            body: Body::Full {
                content_type,
                bytes: bytes.into(),
            },
        }
    }

    /// A plain-text answer with this status.
    pub fn text(status: u16, text: &str) -> Response {
        Response {
            status,
            body: Body::Full {
                content_type: "text/plain; charset=utf-8",
                bytes: format!("{text}\n").into_bytes(),
            },
        }
    }

    /// `404 not found`.
    pub fn not_found() -> Response {
        Response::text(404, "not found")
    }
}

/// Serves `handler` on `listener` until `shutdown` completes; then stops
/// accepting, ends the event streams, and waits at most a second for the
/// responses being written.
///
/// Errors of one connection end that connection only; failing accepts
/// (out of descriptors) are waited out.
pub async fn run<H>(
    listener: TcpListener,
    config: HttpConfig,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let streams = Arc::new(Semaphore::new(config.max_streams.max(1)));
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "http: accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Without waiting: a full socket buffer just loses the answer.
            let _ = stream.try_write(&head(503, "text/plain; charset=utf-8", Some(5)));
            let _ = stream.try_write(b"busy\n");
            debug!(%peer, "http: connection cap reached; refused");
            continue;
        };
        let handler = handler.clone();
        let config = config.clone();
        let streams = streams.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            if let Err(e) = serve(stream, &config, &*handler, &streams, &stop).await {
                debug!(%peer, error = %e, "http: connection ended");
            }
            drop(permit);
        });
    }
    stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    TooLarge,
    Malformed,
    NotGet,
}

/// One connection: read the head, answer, close.
async fn serve<H>(
    mut stream: TcpStream,
    config: &HttpConfig,
    handler: &H,
    streams: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> io::Result<()>
where
    H: Fn(&Request) -> Response + ?Sized,
{
    let read = tokio::time::timeout(config.read_timeout, read_head(&mut stream, config.max_head));
    let head_bytes = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        read = read => match read {
            Ok(Ok(Some(bytes))) => bytes,
            // Closed before a whole head: nothing to answer.
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return write_all(&mut stream, &text_response(408, "request head not received in time"), config).await;
            }
        },
    };
    let (request, head_only) = match parse_head(&head_bytes) {
        Ok(parsed) => parsed,
        Err(refusal) => {
            let bytes = match refusal {
                Refusal::TooLarge => text_response(431, "request head too large"),
                Refusal::Malformed => text_response(400, "bad request"),
                Refusal::NotGet => text_response(405, "only GET is served"),
            };
            return write_all(&mut stream, &bytes, config).await;
        }
    };
    let response = handler(&request);
    match response.body {
        Body::Full {
            content_type,
            bytes,
        } => {
            let mut out = head(response.status, content_type, Some(bytes.len()));
            if !head_only {
                out.extend_from_slice(&bytes);
            }
            write_all(&mut stream, &out, config).await
        }
        Body::Events(mut events) => {
            let Ok(_stream_permit) = streams.clone().try_acquire_owned() else {
                return write_all(
                    &mut stream,
                    &text_response(503, "too many event streams"),
                    config,
                )
                .await;
            };
            write_all(&mut stream, &head(200, "text/event-stream", None), config).await?;
            if head_only {
                return Ok(());
            }
            loop {
                let event = {
                    let value = events.borrow_and_update();
                    format!("data: {}\n\n", &**value)
                };
                write_all(&mut stream, event.as_bytes(), config).await?;
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    changed = events.changed() => if changed.is_err() { return Ok(()) },
                    // A peer that closed is noticed here, not only at the next write.
                    _ = peer_gone(&mut stream) => return Ok(()),
                }
            }
        }
    }
}

/// Resolves once the peer has closed (or reset) its side; bytes it sends
/// meanwhile are read and ignored.
async fn peer_gone(stream: &mut TcpStream) {
    let mut scratch = [0u8; 256];
    loop {
        match stream.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Reads until the end of the request head (an empty line). `None` if the
/// peer closed first; a head longer than `max` is returned cut at `max + 1`
/// bytes, which [`parse_head`] refuses as too large.
async fn read_head(stream: &mut TcpStream, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024.min(max + 1));
    let mut chunk = [0u8; 1024];
    loop {
        let room = (max + 1 - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(None);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[searched_from..]) {
            buf.truncate(searched_from + end);
            return Ok(Some(buf));
        }
        if buf.len() > max {
            return Ok(Some(buf));
        }
    }
}

/// Where the head ends in `bytes` (after `\r\n\r\n` or `\n\n`), if it does.
fn head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        if bytes[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if bytes[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// The request in a head, and whether it is a `HEAD` request.
fn parse_head(bytes: &[u8]) -> Result<(Request, bool), Refusal> {
    if head_end(bytes).is_none() {
        return Err(Refusal::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Refusal::Malformed)?;
    let line = text.lines().next().ok_or(Refusal::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(Refusal::Malformed);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Err(Refusal::NotGet);
        }
        _ => return Err(Refusal::Malformed),
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    Ok((
        Request {
            path: path.to_owned(),
            query,
        },
        head_only,
    ))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A response head; no `Content-Length` for a stream.
fn head(status: u16, content_type: &str, length: Option<usize>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        reason(status)
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    if let Some(length) = length {
        out.push_str(&format!("Content-Length: {length}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn text_response(status: u16, text: &str) -> Vec<u8> {
    let body = format!("{text}\n");
    let mut out = head(status, "text/plain; charset=utf-8", Some(body.len()));
    out.extend_from_slice(body.as_bytes());
    out
}

async fn write_all(stream: &mut TcpStream, bytes: &[u8], config: &HttpConfig) -> io::Result<()> {
    match tokio::time::timeout(config.write_timeout, stream.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer took none of the response in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_is_parsed_with_its_query() {
        let (request, head_only) =
            parse_head(b"GET /status.json?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(request.path, "/status.json");
        assert_eq!(request.query.as_deref(), Some("x=1"));
        assert!(!head_only);
        assert!(parse_head(b"HEAD / HTTP/1.0\n\n").unwrap().1);
    }

    #[test]
    fn other_methods_and_garbage_are_refused() {
        assert_eq!(
            parse_head(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap_err(),
            Refusal::NotGet
        );
        for bad in [
            &b"GET\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"G\xffT / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad).unwrap_err(), Refusal::Malformed, "{bad:?}");
        }
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nX: y").unwrap_err(),
            Refusal::TooLarge
        );
    }
}
