//! Frames over a byte stream: [`FrameReader`] and [`FrameWriter`].
//!
//! The reader owns the receive buffer and hides bytes from handlers. It also
//! tells the two kinds of peer apart from the first frame:
//!
//! - a **line-framed** peer ends every message with `\n`; the reader never
//!   cuts its lines on a pause, however long;
//! - a peer of the **original system** writes each message with no newline
//!   and waits for the answer. When such a peer's bytes stop arriving for
//!   `idle_flush`, what is buffered is one message. The writer then answers
//!   it without newlines too, because those peers compare replies with exact
//!   strings (`confirmacion`, `recibido`).

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::codec::{DEFAULT_MAX_LINE, Line, LineDecoder, encode_line};
use crate::error::ReadError;
use crate::net::Stream;

/// Default idle gap that ends an unterminated message of an original-system peer.
pub const DEFAULT_IDLE_FLUSH: Duration = Duration::from_millis(10);
/// Default time a line may take from its first byte to its newline.
pub const DEFAULT_LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Smallest read; idle connections hold no more than this in their buffer.
const MIN_READ_CHUNK: usize = 1024;
/// Largest read; busy connections grow their reads up to this.
const MAX_READ_CHUNK: usize = 64 * 1024;
/// How long a refused peer gets to read our error and close.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// A write buffer larger than this is released once flushed.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

/// How a peer delimits its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Not known until the first frame arrives.
    Unknown,
    /// Every message ends in `\n`.
    Lines,
    /// Original-system peer: one message per write, no terminator.
    Unterminated,
}

/// Settings of a [`FrameReader`].
#[derive(Debug, Clone, Copy)]
pub struct ReaderConfig {
    /// Longest accepted line, terminator excluded.
    pub max_line: usize,
    /// Pause after which an unterminated message is complete.
    pub idle_flush: Duration,
    /// Longest time from the first byte of a line to its end; a peer that
    /// leaves a line unfinished for longer is an error
    /// ([`ReadError::LineTimedOut`]), so a partial line cannot pin its
    /// buffer for ever.
    pub line_timeout: Duration,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            max_line: DEFAULT_MAX_LINE,
            idle_flush: DEFAULT_IDLE_FLUSH,
            line_timeout: DEFAULT_LINE_TIMEOUT,
        }
    }
}

/// Reads [`Line`]s from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: LineDecoder,
    framing: Framing,
    idle_flush: Duration,
    /// When bytes last arrived; an unterminated message is cut `idle_flush` later.
    last_data: Instant,
    line_timeout: Duration,
    /// When the first byte of the unfinished line in `buf` arrived.
    line_started: Option<Instant>,
    /// The first word an original-system peer sends; while the buffer holds
    /// only a prefix of it, a pause does not end the message (a line-framed
    /// peer's first line may simply be arriving slowly).
    opening: &'static [u8],
    read_chunk: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader for a server-side connection whose peer may be of either kind.
    /// `opening` is the first word such a peer sends (`peticion`).
    pub fn detecting(inner: R, config: ReaderConfig, opening: &'static [u8]) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            decoder: LineDecoder::new(config.max_line),
            framing: Framing::Unknown,
            idle_flush: config.idle_flush,
            last_data: Instant::now(),
            line_timeout: config.line_timeout,
            line_started: None,
            opening,
            read_chunk: MIN_READ_CHUNK,
            eof: false,
        }
    }

    /// A reader for a peer known to frame with newlines; pauses never cut lines.
    pub fn lines(inner: R, max_line: usize) -> Self {
        let mut reader = FrameReader::detecting(
            inner,
            ReaderConfig {
                max_line,
                ..ReaderConfig::default()
            },
            b"",
        );
        reader.framing = Framing::Lines;
        reader
    }

    /// Changes the longest line accepted from now on (a peer whose role
    /// allows longer lines, once known). Bytes already buffered are
    /// scanned again under the new limit.
    pub fn set_max_line(&mut self, max_line: usize) {
        self.decoder = LineDecoder::new(max_line);
    }

    /// The stream and any bytes already read but not yet decoded, for
    /// handing the connection to code that reads it another way.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    /// The peer's framing, as detected so far.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Reads the next frame. `Ok(None)` means the peer closed the connection
    /// cleanly (at a frame boundary).
    ///
    /// Cancel safe: if the future is dropped before it completes, no bytes
    /// are lost and the next call continues where this one stopped.
    pub async fn read_frame(&mut self) -> Result<Option<Line>, ReadError> {
        loop {
            if let Some(line) = self.next_buffered()? {
                return Ok(Some(line));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                if self.may_cut_unterminated() {
                    return self.cut_unterminated();
                }
                return Err(ReadError::ClosedMidLine {
                    buffered: self.buf.len(),
                });
            }
            let cut_at = self
                .may_cut_unterminated()
                .then(|| self.last_data + self.idle_flush);
            let give_up_at = self.line_started.map(|started| started + self.line_timeout);
            tokio::select! {
                biased;
                read = read_some(&mut self.inner, &mut self.buf, &mut self.read_chunk) => {
                    if read? == 0 {
                        self.eof = true;
                    } else {
                        self.last_data = Instant::now();
                        self.line_started.get_or_insert(self.last_data);
                    }
                }
                _ = sleep_until(cut_at) => return self.cut_unterminated(),
                _ = sleep_until(give_up_at) => {
                    return Err(ReadError::LineTimedOut {
                        after: self.line_timeout,
                        buffered: self.buf.len(),
                    });
                }
            }
        }
    }

    /// The next frame already in the buffer, without reading the socket.
    /// Lets a caller gather every frame of one read into a batch.
    pub fn next_buffered(&mut self) -> Result<Option<Line>, ReadError> {
        let decoded = self.decoder.decode(&mut self.buf);
        if !matches!(decoded, Ok(None)) {
            // A line ended (or was refused): what is left began arriving
            // with the last read.
            self.line_started = (!self.buf.is_empty()).then_some(self.last_data);
        }
        match decoded? {
            Some(line) => {
                if self.framing == Framing::Unknown {
                    self.framing = Framing::Lines;
                }
                Ok(Some(line))
            }
            None => Ok(None),
        }
    }

    /// Reads and throws away input until the peer closes or `limit` passes.
    ///
    /// Used after refusing a peer: closing a socket with unread input makes
    /// the kernel send a reset, which can destroy the error line before the
    /// peer reads it.
    pub async fn discard_until_close(&mut self, limit: Duration) {
        // The sink lives on the heap: an array here would make every
        // connection's task (which may reach this point) larger.
        let drain = async {
            let mut sink = BytesMut::with_capacity(4096);
            loop {
                sink.clear();
                match self.inner.read_buf(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        self.buf = BytesMut::new();
        let _ = tokio::time::timeout(limit, drain).await;
    }

    fn may_cut_unterminated(&self) -> bool {
        match self.framing {
            Framing::Lines => false,
            Framing::Unterminated => !self.buf.is_empty(),
            Framing::Unknown => {
                let buffered = &self.buf[..];
                let strict_prefix_of_opening =
                    buffered.len() < self.opening.len() && self.opening.starts_with(buffered);
                !buffered.is_empty() && !strict_prefix_of_opening && buffered.last() != Some(&b'\r')
            }
        }
    }

    fn cut_unterminated(&mut self) -> Result<Option<Line>, ReadError> {
        if self.framing == Framing::Unknown {
            self.framing = Framing::Unterminated;
        }
        self.line_started = None;
        Ok(self.decoder.decode_unterminated(&mut self.buf)?)
    }
}

async fn read_some<R: AsyncRead + Unpin>(
    inner: &mut R,
    buf: &mut BytesMut,
    read_chunk: &mut usize,
) -> io::Result<usize> {
    buf.reserve(*read_chunk);
    let spare = buf.capacity() - buf.len();
    let n = inner.read_buf(buf).await?;
    // Grow reads on a busy stream, shrink them again when it calms down.
    *read_chunk = if n >= spare {
        (*read_chunk * 2).min(MAX_READ_CHUNK)
    } else {
        MIN_READ_CHUNK
            .max(n.next_power_of_two())
            .min(MAX_READ_CHUNK)
    };
    Ok(n)
}

/// Writes frames, batching them in one buffer until [`FrameWriter::flush`].
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    terminated: bool,
    /// When the socket last accepted bytes, or when the buffer last went
    /// from empty to pending: a peer that stops reading is seen as no
    /// progress since then.
    last_progress: Instant,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer that ends each frame with `\n`.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: BytesMut::new(),
            terminated: true,
            last_progress: Instant::now(),
        }
    }

    /// Matches the peer's framing: original-system peers get bare frames.
    pub fn match_framing(&mut self, framing: Framing) {
        self.terminated = framing != Framing::Unterminated;
    }

    /// Queues one frame without writing it yet.
    pub fn queue(&mut self, text: &[u8]) {
        self.note_start();
        encode_line(text, self.terminated, &mut self.buf);
    }

    /// Queues one frame built by `build`, which appends its text to the buffer.
    /// Saves an intermediate allocation on hot paths.
    pub fn queue_with(&mut self, build: impl FnOnce(&mut BytesMut)) {
        self.note_start();
        build(&mut self.buf);
        if self.terminated {
            self.buf.extend_from_slice(b"\n");
        }
    }

    /// Queues the whole lines `build` appends, each with its own `\n`
    /// (a writer to a line-framed peer only).
    pub fn queue_lines(&mut self, build: impl FnOnce(&mut BytesMut)) {
        debug_assert!(self.terminated, "lines to a peer without line ends");
        self.note_start();
        build(&mut self.buf);
    }

    /// Queues `ERROR <reason>`.
    pub fn queue_error(&mut self, reason: &(dyn std::fmt::Display + Sync)) {
        self.queue(format!("ERROR {reason}").as_bytes());
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// When a writer that still holds bytes will have made no progress for
    /// `timeout`; `None` when nothing is pending. A peer that stops reading
    /// its socket is closed at that point, so its answers cannot pile up.
    pub fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        (!self.buf.is_empty()).then(|| self.last_progress + timeout)
    }

    fn note_start(&mut self) {
        if self.buf.is_empty() {
            self.last_progress = Instant::now();
        }
    }

    /// Writes everything queued.
    ///
    /// Cancel safe in the sense that bytes already written are not written
    /// again: the buffer advances as the socket accepts data.
    pub async fn flush(&mut self) -> io::Result<()> {
        while !self.buf.is_empty() {
            if self.inner.write_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.last_progress = Instant::now();
        }
        self.inner.flush().await?;
        if self.buf.capacity() > KEEP_WRITE_BUFFER {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Queues one frame and writes everything queued.
    pub async fn send(&mut self, text: &[u8]) -> io::Result<()> {
        self.queue(text);
        self.flush().await
    }

    /// Sends `ERROR <reason>` now.
    pub async fn send_error(&mut self, reason: &(dyn std::fmt::Display + Sync)) -> io::Result<()> {
        self.queue_error(reason);
        self.flush().await
    }

    /// Flushes, then shuts down the write direction (the peer reads EOF).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.inner.shutdown().await
    }
}

/// Sends `ERROR <reason>`, closes our side, and waits briefly for the peer
/// to close, so the error is read rather than lost to a reset.
pub async fn close_with_error<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    reason: &(dyn std::fmt::Display + Sync),
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let write = async {
        writer.queue_error(reason);
        writer.shutdown().await
    };
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_LINGER, write).await {
        reader.discard_until_close(CLOSE_LINGER).await;
    }
}

/// A connection split into a frame reader and a frame writer, so one task
/// can wait on both in a `select!`. A TCP connection unless `S` says
/// otherwise (a simulated network's stream, say).
pub struct Connection<S: Stream = TcpStream> {
    /// Incoming frames.
    pub reader: FrameReader<S::ReadHalf>,
    /// Outgoing frames.
    pub writer: FrameWriter<S::WriteHalf>,
    /// The peer's address, for logs.
    pub peer: std::net::SocketAddr,
    /// Our end's address, for logs.
    pub local: std::net::SocketAddr,
}

impl<S: Stream> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("framing", &self.reader.framing())
            .finish_non_exhaustive()
    }
}

impl<S: Stream> Connection<S> {
    /// Server side: the peer may be line-framed or of the original system.
    pub fn accept(stream: S, config: ReaderConfig, opening: &'static [u8]) -> io::Result<Self> {
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        Ok(Connection {
            reader: FrameReader::detecting(read, config, opening),
            writer: FrameWriter::new(write),
            peer,
            local,
        })
    }

    /// Client side: we and the server both frame with newlines.
    pub fn connect(stream: S, max_line: usize) -> io::Result<Self> {
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        Ok(Connection {
            reader: FrameReader::lines(read, max_line),
            writer: FrameWriter::new(write),
            peer,
            local,
        })
    }

    /// See [`close_with_error`].
    pub async fn close_with_error(&mut self, reason: &(dyn std::fmt::Display + Sync)) {
        close_with_error(&mut self.reader, &mut self.writer, reason).await;
    }
}

impl Connection<TcpStream> {
    /// The TCP stream again, with the bytes read but not yet decoded. Queued
    /// but unflushed frames are dropped: flush first.
    pub fn into_stream(self) -> (TcpStream, BytesMut) {
        let (read, leftover) = self.reader.into_parts();
        let stream = read
            .reunite(self.writer.inner)
            .expect("both halves come from this connection's stream");
        (stream, leftover)
    }
}

/// Sleeps until `deadline`, or forever when there is none: the idle cut
/// and the line timeout are each armed only some of the time.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, duplex};

    fn config(idle_ms: u64) -> ReaderConfig {
        ReaderConfig {
            max_line: 64,
            idle_flush: Duration::from_millis(idle_ms),
            ..ReaderConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn line_framed_peer_is_never_cut_on_a_pause() {
        let (mut peer, ours) = duplex(1024);
        let mut reader = FrameReader::detecting(ours, config(10), b"peticion");
        peer.write_all(b"peticion\n").await.unwrap();
        assert_eq!(
            reader.read_frame().await.unwrap().unwrap().as_str(),
            "peticion"
        );
        assert_eq!(reader.framing(), Framing::Lines);

        peer.write_all(b"numero ").await.unwrap();
        // Any pause short of the line timeout (30 s by default).
        let read = tokio::time::timeout(Duration::from_secs(25), reader.read_frame()).await;
        assert!(read.is_err(), "a pause must not end a line-framed message");
        peer.write_all(b"random: 4\n").await.unwrap();
        assert_eq!(
            reader.read_frame().await.unwrap().unwrap().as_str(),
            "numero random: 4"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unterminated_peer_is_detected_and_cut_on_idle() {
        let (mut peer, ours) = duplex(1024);
        let mut reader = FrameReader::detecting(ours, config(10), b"peticion");
        peer.write_all(b"peticion").await.unwrap();
        let line = reader.read_frame().await.unwrap().unwrap();
        assert_eq!(line.as_str(), "peticion");
        assert!(!line.is_terminated());
        assert_eq!(reader.framing(), Framing::Unterminated);

        peer.write_all(b"numero random: 9").await.unwrap();
        assert_eq!(
            reader.read_frame().await.unwrap().unwrap().as_str(),
            "numero random: 9"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn prefix_of_opening_word_waits_for_more() {
        let (mut peer, ours) = duplex(1024);
        let mut reader = FrameReader::detecting(ours, config(10), b"peticion");
        peer.write_all(b"petic").await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), reader.read_frame()).await;
        assert!(
            read.is_err(),
            "a prefix of `peticion` may be a slow line-framed peer"
        );
        peer.write_all(b"ion\n").await.unwrap();
        assert_eq!(
            reader.read_frame().await.unwrap().unwrap().as_str(),
            "peticion"
        );
        assert_eq!(reader.framing(), Framing::Lines);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_read_loses_nothing() {
        let (mut peer, ours) = duplex(1024);
        let mut reader = FrameReader::lines(ours, 64);
        peer.write_all(b"hal").await.unwrap();
        let first = tokio::time::timeout(Duration::from_millis(5), reader.read_frame()).await;
        assert!(first.is_err());
        peer.write_all(b"f\n").await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap().unwrap().as_str(), "half");
    }

    #[tokio::test]
    async fn eof_mid_line_is_an_error_for_line_framed_peers() {
        let (mut peer, ours) = duplex(1024);
        let mut reader = FrameReader::lines(ours, 64);
        peer.write_all(b"a\nincomplete").await.unwrap();
        drop(peer);
        assert_eq!(reader.read_frame().await.unwrap().unwrap().as_str(), "a");
        assert!(matches!(
            reader.read_frame().await,
            Err(ReadError::ClosedMidLine { buffered: 10 })
        ));
    }

    #[tokio::test]
    async fn clean_eof_is_none() {
        let (peer, ours) = duplex(1024);
        let mut reader = FrameReader::lines(ours, 64);
        drop(peer);
        assert!(reader.read_frame().await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_line_left_unfinished_times_out_from_its_first_byte() {
        let (mut peer, ours) = duplex(1024);
        let mut reader = FrameReader::detecting(
            ours,
            ReaderConfig {
                line_timeout: Duration::from_secs(30),
                ..config(10)
            },
            b"peticion",
        );
        peer.write_all(b"peticion\nnum").await.unwrap();
        assert_eq!(
            reader.read_frame().await.unwrap().unwrap().as_str(),
            "peticion"
        );
        let started = Instant::now();
        // Trickling bytes does not reset the clock: it runs from the first one.
        let trickle = async {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                peer.write_all(b"x").await.unwrap();
            }
        };
        let read = async { reader.read_frame().await };
        tokio::pin!(trickle);
        let result = tokio::select! {
            result = read => result,
            _ = &mut trickle => panic!("the line should have timed out"),
        };
        assert!(
            matches!(result, Err(ReadError::LineTimedOut { buffered, .. }) if buffered >= 3),
            "{result:?}"
        );
        assert!(result.unwrap_err().is_fatal());
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_line_resets_the_line_clock() {
        let (mut peer, ours) = duplex(1024);
        let mut reader = FrameReader::lines(ours, 64);
        for i in 0..10 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            peer.write_all(format!("line {i}\n").as_bytes())
                .await
                .unwrap();
            assert_eq!(
                reader.read_frame().await.unwrap().unwrap().as_str(),
                format!("line {i}")
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_whose_peer_reads_nothing_reports_a_stall() {
        let (ours, _peer) = duplex(16);
        let mut writer = FrameWriter::new(ours);
        assert_eq!(writer.stall_deadline(Duration::from_secs(5)), None);
        let queued_at = Instant::now();
        writer.queue(&[b'x'; 64]);
        assert_eq!(
            writer.stall_deadline(Duration::from_secs(5)),
            Some(queued_at + Duration::from_secs(5))
        );
        // The first 16 bytes fit; nothing after that moves.
        let flushed = tokio::time::timeout(Duration::from_secs(60), writer.flush()).await;
        assert!(flushed.is_err());
        assert!(writer.pending() > 0);
        assert_eq!(
            writer.stall_deadline(Duration::from_secs(5)),
            Some(queued_at + Duration::from_secs(5)),
            "progress was made only at the start"
        );
    }

    #[tokio::test]
    async fn writer_matches_unterminated_framing() {
        let (ours, mut peer) = duplex(1024);
        let mut writer = FrameWriter::new(ours);
        writer.queue(b"confirmacion");
        writer.match_framing(Framing::Unterminated);
        writer.queue(b"recibido");
        writer.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"confirmacion\nrecibido");
    }
}
