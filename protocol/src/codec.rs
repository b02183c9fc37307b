//! Line framing, free of I/O.
//!
//! A frame is one line of UTF-8 text ending in `\n`. Peers of the original
//! system send one message per TCP write with no terminator at all; for them
//! the I/O layer calls [`LineDecoder::decode_unterminated`] once the
//! connection has been idle for a moment, and whatever is buffered becomes
//! one frame.
//!
//! Every `\r` at the end of a line is dropped, so `\r\n` works too. Dropping
//! all of them, not just one, keeps the round trip exact: a text ending in
//! `\r` could not be sent on with [`encode_line`], because the next reader
//! would take that `\r` for half of a `\r\n`.
//!
//! The decoder never holds more than `max_line + 1` bytes of an unfinished
//! line: a longer one is rejected with [`FrameError::LineTooLong`] before the
//! caller reads any more.

use bytes::{Bytes, BytesMut};

use crate::error::FrameError;

/// Default maximum length of one line, terminator excluded.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// One decoded frame: a line of valid UTF-8 without its terminator.
#[derive(Clone, PartialEq, Eq)]
pub struct Line {
    text: Bytes,
    terminated: bool,
}

impl Line {
    /// The text of the line, without its `\n` and without any `\r` before it.
    pub fn as_str(&self) -> &str {
        // The decoder only builds lines from bytes it has validated.
        std::str::from_utf8(&self.text).expect("Line holds validated UTF-8")
    }

    /// The text as shared bytes (cheap to clone and forward).
    pub fn bytes(&self) -> &Bytes {
        &self.text
    }

    /// Whether the peer ended this line with `\n`. `false` means it was an
    /// unterminated message of an original-system peer, cut at an idle gap.
    pub fn is_terminated(&self) -> bool {
        self.terminated
    }
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Line({:?}, terminated: {})",
            self.as_str(),
            self.terminated
        )
    }
}

/// Splits a byte stream into [`Line`]s with a length limit.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max_line: usize,
    /// How far `buf` has already been searched for `\n`, so a line that
    /// arrives in many small reads is scanned once, not once per read.
    scanned: usize,
}

impl Default for LineDecoder {
    fn default() -> Self {
        LineDecoder::new(DEFAULT_MAX_LINE)
    }
}

impl LineDecoder {
    /// A decoder accepting lines of at most `max_line` bytes (terminator excluded).
    pub fn new(max_line: usize) -> Self {
        LineDecoder {
            max_line: max_line.max(1),
            scanned: 0,
        }
    }

    /// The configured maximum line length.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Takes one terminated line off the front of `buf`.
    ///
    /// Returns `Ok(None)` when no whole line is buffered yet; that is not an
    /// error. On `Err`, check [`FrameError::is_fatal`]: a fatal error means the
    /// stream can no longer be split reliably and the connection should close.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, FrameError> {
        let start = self.scanned.min(buf.len());
        match buf[start..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let newline = start + offset;
                self.scanned = 0;
                let mut raw = buf.split_to(newline + 1);
                raw.truncate(newline);
                if raw.last() == Some(&b'\r') {
                    raw.truncate(raw.len() - 1);
                }
                self.finish(raw, true).map(Some)
            }
            None => {
                self.scanned = buf.len();
                // One byte of slack: the `\r` of a maximal CRLF line.
                if buf.len() > self.max_line.saturating_add(1) {
                    return Err(FrameError::LineTooLong { max: self.max_line });
                }
                Ok(None)
            }
        }
    }

    /// Takes everything buffered as one unterminated message.
    ///
    /// The I/O layer calls this when an original-system peer has stopped
    /// sending without a newline. Returns `Ok(None)` if `buf` is empty.
    pub fn decode_unterminated(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, FrameError> {
        if buf.is_empty() {
            return Ok(None);
        }
        self.scanned = 0;
        let raw = buf.split();
        self.finish(raw, false).map(Some)
    }

    /// `raw` is what the limit applies to: a line without its `\n` and one
    /// `\r` before it, or everything an idle cut took.
    fn finish(&self, mut raw: BytesMut, terminated: bool) -> Result<Line, FrameError> {
        if raw.len() > self.max_line {
            return Err(FrameError::LineTooLong { max: self.max_line });
        }
        let text_len = raw
            .iter()
            .rposition(|&b| b != b'\r')
            .map_or(0, |last| last + 1);
        raw.truncate(text_len);
        if std::str::from_utf8(&raw).is_err() {
            return Err(FrameError::InvalidUtf8);
        }
        Ok(Line {
            text: raw.freeze(),
            terminated,
        })
    }
}

/// Appends `text` as one frame to `buf`: with `\n` for line-framed peers,
/// bare for original-system peers (whose exact-string checks would fail on
/// a trailing newline).
///
/// `text` MUST NOT contain `\n` nor end in `\r`, or the peer decodes other
/// text; the text of every decoded [`Line`] qualifies.
pub fn encode_line(text: &[u8], terminated: bool, buf: &mut BytesMut) {
    buf.reserve(text.len() + 1);
    buf.extend_from_slice(text);
    if terminated {
        buf.extend_from_slice(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut LineDecoder, buf: &mut BytesMut) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(line) = decoder.decode(buf).expect("valid input") {
            out.push(line.as_str().to_owned());
        }
        out
    }

    #[test]
    fn partial_line_waits_for_the_rest() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::from(&b"numero ran"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"dom: 7\n");
        let line = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(line.as_str(), "numero random: 7");
        assert!(line.is_terminated());
        assert!(buf.is_empty());
    }

    #[test]
    fn merged_writes_split_into_lines() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::from(&b"a\nbb\nccc\nd"[..]);
        assert_eq!(decode_all(&mut decoder, &mut buf), ["a", "bb", "ccc"]);
        assert_eq!(&buf[..], b"d", "the unfinished line stays buffered");
    }

    #[test]
    fn split_and_merged_writes_decode_the_same() {
        let stream = b"peticion\r\ncliente\nnumero random: 1\nnumero random: 22\n";
        let mut whole = BytesMut::from(&stream[..]);
        let expected = decode_all(&mut LineDecoder::new(64), &mut whole);
        for chunk in 1..stream.len() {
            let mut decoder = LineDecoder::new(64);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                got.extend(decode_all(&mut decoder, &mut buf));
            }
            assert_eq!(got, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn crlf_is_accepted_and_stripped() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::from(&b"peticion\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap().unwrap().as_str(),
            "peticion"
        );
    }

    #[test]
    fn every_carriage_return_at_the_end_of_a_line_is_dropped() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::from(&b"hola\r\r\n\r\r\r\nadios\r"[..]);
        assert_eq!(decode_all(&mut decoder, &mut buf), ["hola", ""]);
        let line = decoder.decode_unterminated(&mut buf).unwrap().unwrap();
        assert_eq!(line.as_str(), "adios");

        // What is left is sent on unchanged.
        encode_line(b"hola", true, &mut buf);
        assert_eq!(decode_all(&mut decoder, &mut buf), ["hola"]);
    }

    #[test]
    fn carriage_returns_beyond_the_crlf_count_towards_the_limit() {
        // Split or whole, the stream is refused the same way: while waiting,
        // the decoder cannot know the `\r`s will end the line.
        let mut decoder = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"12345678\r\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap_err(),
            FrameError::LineTooLong { max: 8 }
        );
    }

    #[test]
    fn lone_carriage_return_inside_a_line_is_kept() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::from(&b"a\rb\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().as_str(), "a\rb");
    }

    #[test]
    fn empty_lines_are_frames() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::from(&b"\n\r\nx\n"[..]);
        assert_eq!(decode_all(&mut decoder, &mut buf), ["", "", "x"]);
    }

    #[test]
    fn line_of_exactly_max_length_is_accepted() {
        let mut decoder = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"12345678\n12345678\r\n"[..]);
        assert_eq!(decode_all(&mut decoder, &mut buf), ["12345678", "12345678"]);
    }

    #[test]
    fn line_over_max_is_rejected_without_waiting_for_newline() {
        let mut decoder = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"123456789"[..]);
        // 9 bytes could still be 8 bytes plus `\r`.
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"0");
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(err, FrameError::LineTooLong { max: 8 });
        assert!(err.is_fatal());
    }

    #[test]
    fn largest_limit_waits_for_the_rest_of_a_line() {
        let mut decoder = LineDecoder::new(usize::MAX);
        let mut buf = BytesMut::from(&b"numero ran"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"dom: 7\n");
        assert_eq!(
            decoder.decode(&mut buf).unwrap().unwrap().as_str(),
            "numero random: 7"
        );
    }

    #[test]
    fn terminated_line_over_max_is_rejected() {
        let mut decoder = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"123456789\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap_err(),
            FrameError::LineTooLong { max: 8 }
        );
    }

    #[test]
    fn invalid_utf8_is_rejected_but_the_stream_stays_in_step() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::from(&b"ok\n\xff\xfe\nnext\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().as_str(), "ok");
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(err, FrameError::InvalidUtf8);
        assert!(!err.is_fatal(), "the bad line was consumed whole");
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().as_str(), "next");
    }

    #[test]
    fn utf8_split_across_reads_is_fine() {
        let mut decoder = LineDecoder::new(100);
        let text = "confirmación\n".as_bytes();
        let mut buf = BytesMut::from(&text[..11]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&text[11..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap().unwrap().as_str(),
            "confirmación"
        );
    }

    #[test]
    fn unterminated_message_is_taken_whole() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::from(&b"numero random: 5"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        let line = decoder.decode_unterminated(&mut buf).unwrap().unwrap();
        assert_eq!(line.as_str(), "numero random: 5");
        assert!(!line.is_terminated());
        assert!(buf.is_empty());
        assert_eq!(decoder.decode_unterminated(&mut buf).unwrap(), None);
    }

    #[test]
    fn unterminated_message_with_invalid_utf8_is_rejected() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::from(&b"abc\xc3"[..]);
        assert_eq!(
            decoder.decode_unterminated(&mut buf).unwrap_err(),
            FrameError::InvalidUtf8
        );
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let mut decoder = LineDecoder::new(100);
        let mut buf = BytesMut::new();
        for text in ["peticion", "", "mensaje 1-2: numero random: 3", "ñandú"] {
            encode_line(text.as_bytes(), true, &mut buf);
            assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().as_str(), text);
        }
        encode_line(b"recibido", false, &mut buf);
        assert_eq!(&buf[..], b"recibido");
    }
}
