//! `LineDecoder` on an arbitrary byte stream.
//!
//! Properties, for each of several line limits:
//! - decoding never panics;
//! - no frame is longer than the limit, and while the decoder waits for the
//!   rest of a line it holds at most `max_line + 1` bytes;
//! - the stream decodes to the same frames and errors however it is split
//!   into reads (whole, byte by byte, small and large random pieces);
//! - every decoded line round-trips through `encode_line`, terminated and bare.

use bytes::BytesMut;
use protocol::codec::{DEFAULT_MAX_LINE, Line, LineDecoder, encode_line};
use protocol::error::FrameError;

use super::rng::Rng;

pub(crate) fn check(data: &[u8]) {
    let mut rng = Rng::seeded_by(data);
    let near_input = [
        0,
        data.len().saturating_sub(1),
        data.len(),
        data.len() + 1,
        rng.below(data.len() + 2),
        usize::MAX,
    ];
    let limits = [1, 8, 64, DEFAULT_MAX_LINE, rng.pick(&near_input)];
    for max_line in limits {
        let whole = decode_stream(max_line, &[data]);
        let splits = [
            data.chunks(1).collect::<Vec<_>>(),
            rng.pieces(data, 4),
            rng.pieces(data, 256),
        ];
        for pieces in &splits {
            assert_eq!(
                decode_stream(max_line, pieces),
                whole,
                "max_line {max_line}: reads of {:?} bytes decode differently from one read",
                pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
            );
        }
        for line in whole.iter().flatten() {
            assert_round_trips(line, max_line);
        }
    }
}

/// Feeds `pieces` to one decoder as successive reads, taking every frame
/// after each read, then takes what is left as an unterminated message.
/// Returns the frames and errors in order; a fatal error ends the list.
fn decode_stream(max_line: usize, pieces: &[&[u8]]) -> Vec<Result<Line, FrameError>> {
    let mut decoder = LineDecoder::new(max_line);
    let limit = decoder.max_line();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(line)) => {
                    assert_within_limit(&line, limit);
                    assert!(line.is_terminated(), "decode returned an unterminated line");
                    out.push(Ok(line));
                }
                Ok(None) => {
                    assert!(
                        buf.len() <= limit.saturating_add(1),
                        "decoder waits with {} bytes buffered, limit {limit}",
                        buf.len()
                    );
                    break;
                }
                Err(error) => {
                    let fatal = error.is_fatal();
                    out.push(Err(error));
                    if fatal {
                        return out;
                    }
                }
            }
        }
    }
    match decoder.decode_unterminated(&mut buf) {
        Ok(Some(line)) => {
            assert_within_limit(&line, limit);
            assert!(
                !line.is_terminated(),
                "an idle cut returned a terminated line"
            );
            out.push(Ok(line));
        }
        Ok(None) => {}
        Err(error) => out.push(Err(error)),
    }
    assert!(buf.is_empty(), "an idle cut left bytes in the buffer");
    out
}

fn assert_within_limit(line: &Line, limit: usize) {
    assert!(
        line.bytes().len() <= limit,
        "line of {} bytes returned, limit {limit}",
        line.bytes().len()
    );
    // `as_str` panics if the decoder let invalid UTF-8 through.
    assert_eq!(line.as_str().len(), line.bytes().len());
}

/// A decoded line, encoded again, decodes to the same text.
fn assert_round_trips(line: &Line, max_line: usize) {
    let mut decoder = LineDecoder::new(max_line);

    let mut buf = BytesMut::new();
    encode_line(line.bytes(), true, &mut buf);
    let again = decoder
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{line:?} encoded with a newline fails to decode: {e}"))
        .unwrap_or_else(|| panic!("{line:?} encoded with a newline is not a whole frame"));
    assert_eq!(
        again.as_str(),
        line.as_str(),
        "{line:?} encoded with a newline decodes to other text"
    );
    assert!(
        buf.is_empty(),
        "{line:?} encoded with a newline leaves bytes behind"
    );

    encode_line(line.bytes(), false, &mut buf);
    assert_eq!(&buf[..], &line.bytes()[..], "bare encoding adds bytes");
}
