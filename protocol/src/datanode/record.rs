//! Stored messages read back: the record of a `found` line, and the words
//! of a scan (`docs/protocol.md`, "Reads").

use bytes::{BufMut, BytesMut};

use super::FromDataNode;
use crate::error::{ParseError, truncate_for_log};
use crate::ids::{KeyRef, MessageId, MessageKey, parse_counter, put_u64};

/// The word of a `scan` that stands for "from the smallest id".
pub const SCAN_START: &str = "start";
/// The most records one `scan` may ask for.
pub const MAX_SCAN_RECORDS: u32 = 1000;
/// A read's answer line (`found ...`, from a data node or the head node)
/// carries a message's text and at most this much more: ids, time, key, and
/// the names of its holders (up to 64 data nodes). Readers of such lines
/// accept the longest message plus this.
pub const READ_LINE_OVERHEAD: usize = 8 * 1024;

/// One stored message as a data node reads it back: the payload of a
/// `found` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// Its id.
    pub id: MessageId,
    /// Its client key, if it was sent with one.
    pub key: Option<MessageKey>,
    /// When it was stored (its record's timestamp), in Unix milliseconds.
    pub stored_ms: u64,
    /// The client's text (one line).
    pub text: String,
}

impl ReadRecord {
    /// A record from the words of a `found` line, from a data node or the
    /// head node: its id, stored time (Unix ms), key (`-`: none) and text.
    pub fn from_words(
        id: &str,
        stored_ms: &str,
        key: &str,
        text: &str,
    ) -> Result<Self, ParseError> {
        Ok(ReadRecord {
            id: id.parse()?,
            key: match key {
                "-" => None,
                key => Some(key.parse()?),
            },
            stored_ms: stored_ms.parse().map_err(|_| {
                ParseError::new(format!("bad stored time {:?}", truncate_for_log(stored_ms)))
            })?,
            text: text.to_owned(),
        })
    }
}

impl FromDataNode {
    /// Appends `found <req> <id> <stored-ms> <key>|- <text>` (without
    /// terminator) straight from a record read back, without building a
    /// [`ReadRecord`]. `text` MUST be one line.
    pub fn encode_found(
        req: u64,
        id: MessageId,
        key: Option<KeyRef<'_>>,
        stored_ms: u64,
        text: &[u8],
        buf: &mut BytesMut,
    ) {
        buf.reserve(text.len() + 120);
        buf.extend_from_slice(b"found ");
        put_u64(buf, req);
        buf.put_u8(b' ');
        id.put(buf);
        buf.put_u8(b' ');
        put_u64(buf, stored_ms);
        buf.put_u8(b' ');
        match key {
            Some(key) => key.put(buf),
            None => buf.put_u8(b'-'),
        }
        buf.put_u8(b' ');
        buf.extend_from_slice(text);
    }
}

/// Parses what follows `found `.
pub(super) fn parse_found(rest: &str) -> Result<FromDataNode, ParseError> {
    let mut parts = rest.splitn(5, ' ');
    let (Some(req), Some(id), Some(stored), Some(key), Some(text)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ParseError::new(
            "expected 'found <req> <id> <stored-ms> <key>|- <text>'",
        ));
    };
    Ok(FromDataNode::Found {
        req: parse_counter(req)?,
        record: ReadRecord::from_words(id, stored, key, text)?,
    })
}
