//! One `data.txt` record: written by [`format_record`], read by
//! [`parse_line`], and nowhere else.
//!
//! ```text
//! 2026-11-23 05:55:31,793 - [1795413330851-2] crc32c=1a2b3c4d mensaje: numero random: 1
//! 2026-11-23 05:55:31,793 - [1795413330851-3] key=c-5f2a/17 crc32c=1a2b3c4d mensaje: numero random: 4
//! ```
//!
//! A message its client sent with a key carries it as `key=<client>/<seq>`.
//!
//! The checksum is the CRC32C of the line with its `crc32c=XXXXXXXX ` token
//! removed, which is the line as records were written before they carried
//! one. Between the id and `mensaje: ` there may be any number of
//! `key=value ` fields; the reader skips those it does not know, so later
//! versions can add fields that older readers still read.
//!
//! A record without a checksum is read as unchecked only in the shape
//! records had before they carried one: no field at all between the id and
//! `mensaje: ` (every field came after the checksum). A record with fields
//! and no `crc32c=` has lost its checksum token to damage (`crc32c=` read
//! as `crc32e=`): it is corrupt ([`Checksum::Missing`]), never unchecked.

use std::borrow::Cow;
use std::ops::Range;

use protocol::ids::{KeyRef, MessageId};

const SEPARATOR: &[u8] = b" - ";
const CHECKSUM_KEY: &[u8] = b"crc32c";
const MESSAGE_KEY: &[u8] = b"key";
const TEXT_MARKER: &[u8] = b"mensaje: ";
/// `YYYY-MM-DD HH:MM:SS,mmm`: `d` a digit, anything else itself.
const TIMESTAMP_SHAPE: &[u8] = b"dddd-dd-dd dd:dd:dd,ddd";

/// Appends one record, `\n` included, to `buf`.
///
/// `text` MUST NOT contain `\n`: a record is one line (the protocol's
/// framing already guarantees it).
pub fn format_record(
    buf: &mut Vec<u8>,
    timestamp: &str,
    id: Option<MessageId>,
    key: Option<KeyRef<'_>>,
    text: &[u8],
) {
    debug_assert!(!text.contains(&b'\n'), "a record is one line");
    let start = buf.len();
    buf.extend_from_slice(timestamp.as_bytes());
    buf.extend_from_slice(SEPARATOR);
    if let Some(id) = id {
        buf.push(b'[');
        id.put(buf);
        buf.extend_from_slice(b"] ");
    }
    if let Some(key) = key {
        buf.extend_from_slice(MESSAGE_KEY);
        buf.push(b'=');
        key.put(buf);
        buf.push(b' ');
    }
    // The checksum covers the line without its own token: the token is
    // written with room for its digits, which are filled in once the rest
    // of the line is there (two runs of the checksum, no copy).
    let header_end = buf.len();
    buf.extend_from_slice(CHECKSUM_KEY);
    buf.push(b'=');
    let digits_at = buf.len();
    buf.extend_from_slice(b"00000000 ");
    let marker_at = buf.len();
    buf.extend_from_slice(TEXT_MARKER);
    buf.extend_from_slice(text);
    let crc = crc32c::crc32c(&buf[start..header_end]);
    let crc = crc32c::crc32c_append(crc, &buf[marker_at..]);
    buf[digits_at..digits_at + 8].copy_from_slice(&hex_digits(crc));
    buf.push(b'\n');
}

/// A record read back from `data.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// When its batch was committed, as written: `2026-11-23 05:55:31,793` (UTC).
    pub timestamp: &'a str,
    /// The message id; `None` for a message that came without one.
    pub id: Option<MessageId>,
    /// The client's key; `None` for a message sent without one.
    pub key: Option<KeyRef<'a>>,
    /// The client's text, byte for byte.
    pub text: &'a [u8],
    /// What the record's checksum says about the line.
    pub checksum: Checksum,
}

impl Record<'_> {
    /// The text as a string (it is UTF-8 unless the line was damaged).
    pub fn text_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.text)
    }

    /// False when the checksum shows the line changed after it was
    /// written, or the checksum token itself is gone.
    pub fn is_intact(&self) -> bool {
        !matches!(self.checksum, Checksum::Mismatch { .. } | Checksum::Missing)
    }
}

/// What a record's checksum says about its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The stored checksum matches the line.
    Valid,
    /// The stored checksum does not match: the line changed after it was written.
    Mismatch {
        /// The checksum written in the line.
        stored: u32,
        /// The checksum of the line as read.
        computed: u32,
    },
    /// The record was written before records carried a checksum: it has
    /// no field at all before its text.
    Unchecked,
    /// The record has fields before its text but no checksum among them:
    /// the checksum token itself was damaged, so nothing vouches for the
    /// line.
    Missing,
}

/// Why a line is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line does not start with `<timestamp> - `.
    #[error("no timestamp")]
    NoTimestamp,
    /// `[` without a closing `] `, or what is between them is not a message id.
    #[error("bad message id")]
    BadId,
    /// A word before `mensaje: ` that is not `key=value`.
    #[error("bad field {0:?}")]
    BadField(String),
    /// A `crc32c=` value that is not 8 lowercase hex digits, or a second one.
    #[error("bad checksum field")]
    BadChecksum,
    /// The line ends before `mensaje: `.
    #[error("no \"mensaje: \"")]
    NoText,
    /// A `key=` value that is not `<client-id>/<seq>`, or a second one.
    #[error("bad key field")]
    BadKey,
}

/// Parses one line of `data.txt` (a trailing `\n` is ignored).
///
/// A record without a checksum (as written before records carried one:
/// no field before `mensaje: `) parses with [`Checksum::Unchecked`]; one
/// with fields but no checksum with [`Checksum::Missing`]; one whose
/// checksum does not match with [`Checksum::Mismatch`]. Unknown
/// `key=value` fields before `mensaje: ` are skipped (the checksum covers
/// them).
pub fn parse_line(line: &[u8]) -> Result<Record<'_>, LineError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let stamp_len = TIMESTAMP_SHAPE.len();
    let timestamp = line.get(..stamp_len).ok_or(LineError::NoTimestamp)?;
    let shaped = timestamp.iter().zip(TIMESTAMP_SHAPE).all(|(&b, &shape)| {
        if shape == b'd' {
            b.is_ascii_digit()
        } else {
            b == shape
        }
    });
    if !shaped || !line[stamp_len..].starts_with(SEPARATOR) {
        return Err(LineError::NoTimestamp);
    }
    // Checked above: digits and ASCII punctuation.
    let timestamp = std::str::from_utf8(timestamp).map_err(|_| LineError::NoTimestamp)?;
    let mut pos = stamp_len + SEPARATOR.len();

    let mut id = None;
    if line.get(pos) == Some(&b'[') {
        let close = pos + find(&line[pos..], b']').ok_or(LineError::BadId)?;
        let parsed = std::str::from_utf8(&line[pos + 1..close])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(LineError::BadId)?;
        if line.get(close + 1) != Some(&b' ') {
            return Err(LineError::BadId);
        }
        id = Some(parsed);
        pos = close + 2;
    }

    let mut checksum_field: Option<(u32, Range<usize>)> = None;
    let mut message_key = None;
    let mut has_fields = false;
    while !line[pos..].starts_with(TEXT_MARKER) {
        has_fields = true;
        let len = find(&line[pos..], b' ').ok_or(LineError::NoText)?;
        let field = &line[pos..pos + len];
        let bad_field = || LineError::BadField(String::from_utf8_lossy(field).into_owned());
        let eq = find(field, b'=').ok_or_else(bad_field)?;
        let (key, value) = (&field[..eq], &field[eq + 1..]);
        let key_ok = !key.is_empty()
            && key
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok {
            return Err(bad_field());
        }
        if key == CHECKSUM_KEY {
            if checksum_field.is_some() {
                return Err(LineError::BadChecksum);
            }
            let stored = parse_hex(value).ok_or(LineError::BadChecksum)?;
            // The token and the space after it.
            checksum_field = Some((stored, pos..pos + len + 1));
        } else if key == MESSAGE_KEY {
            let parsed = std::str::from_utf8(value)
                .ok()
                .and_then(|v| KeyRef::parse(v).ok())
                .ok_or(LineError::BadKey)?;
            if message_key.replace(parsed).is_some() {
                return Err(LineError::BadKey);
            }
        }
        pos += len + 1;
    }
    let text = &line[pos + TEXT_MARKER.len()..];

    let checksum = match checksum_field {
        None if has_fields => Checksum::Missing,
        None => Checksum::Unchecked,
        Some((stored, token)) => {
            let computed = crc32c::crc32c(&line[..token.start]);
            let computed = crc32c::crc32c_append(computed, &line[token.end..]);
            if computed == stored {
                Checksum::Valid
            } else {
                Checksum::Mismatch { stored, computed }
            }
        }
    };
    Ok(Record {
        timestamp,
        id,
        key: message_key,
        text,
        checksum,
    })
}

fn find(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `n` as 8 lowercase hex digits.
fn hex_digits(n: u32) -> [u8; 8] {
    let mut digits = [0u8; 8];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[(n >> ((7 - i) * 4)) as usize & 0xf];
    }
    digits
}

/// Exactly 8 lowercase hex digits, as [`hex_digits`] makes them.
fn parse_hex(digits: &[u8]) -> Option<u32> {
    if digits.len() != 8 {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| {
        let value = HEX.iter().position(|&h| h == d)?;
        Some(n << 4 | value as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: &str = "2026-11-23 05:55:31,793";

    fn id(seq: u64) -> MessageId {
        MessageId {
            epoch: 1795413330851,
            seq,
        }
    }

    fn formatted(id: Option<MessageId>, text: &str) -> String {
        let mut buf = Vec::new();
        format_record(&mut buf, STAMP, id, None, text.as_bytes());
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_keyed_record_carries_its_key_under_the_checksum() {
        let mut buf = Vec::new();
        let key = KeyRef {
            client: "c-5f2a",
            seq: 17,
        };
        format_record(&mut buf, STAMP, Some(id(3)), Some(key), b"numero random: 4");
        let line = String::from_utf8(buf).unwrap();
        let unchecked =
            "2026-11-23 05:55:31,793 - [1795413330851-3] key=c-5f2a/17 mensaje: numero random: 4";
        let crc = crc32c::crc32c(unchecked.as_bytes());
        assert_eq!(
            line,
            format!(
                "2026-11-23 05:55:31,793 - [1795413330851-3] key=c-5f2a/17 crc32c={crc:08x} mensaje: numero random: 4\n"
            )
        );
        let record = parse_line(line.as_bytes()).unwrap();
        assert_eq!(record.key, Some(key));
        assert_eq!(record.checksum, Checksum::Valid);
        let forged = line.replace("c-5f2a/17", "c-5f2a/18");
        assert!(!parse_line(forged.as_bytes()).unwrap().is_intact());
        for bad in ["key=x ", "key=c/1 key=c/2 "] {
            let line = format!("{STAMP} - [1-1] {bad}mensaje: x");
            assert_eq!(
                parse_line(line.as_bytes()),
                Err(LineError::BadKey),
                "{line}"
            );
        }
    }

    #[test]
    fn a_record_keeps_the_seed_shape_with_a_checksum_before_the_text() {
        let line = formatted(Some(id(2)), "numero random: 1");
        let seed = "2026-11-23 05:55:31,793 - [1795413330851-2] mensaje: numero random: 1";
        let crc = crc32c::crc32c(seed.as_bytes());
        assert_eq!(
            line,
            format!(
                "2026-11-23 05:55:31,793 - [1795413330851-2] crc32c={crc:08x} mensaje: numero random: 1\n"
            )
        );
        assert!(line.contains("[1795413330851-2]"), "grep -F finds it");
    }

    #[test]
    fn a_record_without_an_id_has_the_checksum_right_after_the_timestamp() {
        let line = formatted(None, "hola");
        let crc = crc32c::crc32c(b"2026-11-23 05:55:31,793 - mensaje: hola");
        assert_eq!(line, format!("{STAMP} - crc32c={crc:08x} mensaje: hola\n"));
        let record = parse_line(line.as_bytes()).unwrap();
        assert_eq!(record.id, None);
        assert_eq!(record.text, b"hola");
        assert_eq!(record.checksum, Checksum::Valid);
    }

    #[test]
    fn a_formatted_record_parses_back_and_verifies() {
        let line = formatted(Some(id(7)), "a - [b] c=d mensaje: e");
        let record = parse_line(line.as_bytes()).unwrap();
        assert_eq!(
            record,
            Record {
                timestamp: STAMP,
                id: Some(id(7)),
                key: None,
                text: b"a - [b] c=d mensaje: e",
                checksum: Checksum::Valid,
            }
        );
    }

    #[test]
    fn a_record_without_a_checksum_is_unchecked_not_corrupt() {
        let record = parse_line(b"2026-01-01 00:00:00,000 - [9-1] mensaje: a").unwrap();
        assert_eq!(record.id, Some(MessageId { epoch: 9, seq: 1 }));
        assert_eq!(record.text, b"a");
        assert_eq!(record.checksum, Checksum::Unchecked);
        assert!(record.is_intact());
        let bare = parse_line(b"2026-01-01 00:00:00,000 - mensaje: b").unwrap();
        assert_eq!((bare.id, bare.text), (None, &b"b"[..]));
    }

    #[test]
    fn a_record_whose_checksum_token_was_damaged_is_corrupt_not_unchecked() {
        let line = formatted(Some(id(2)), "numero random: 1");
        for damaged in [
            line.replace("crc32c=", "crc32e="),
            line.replace("crc32c=", "crc3c=x"),
        ] {
            let record = parse_line(damaged.as_bytes()).unwrap();
            assert_eq!(record.checksum, Checksum::Missing, "{damaged}");
            assert!(!record.is_intact(), "{damaged}");
        }
        let mut keyed = Vec::new();
        let key = KeyRef {
            client: "c-5f2a",
            seq: 17,
        };
        format_record(&mut keyed, STAMP, Some(id(3)), Some(key), b"x");
        let keyed = String::from_utf8(keyed)
            .unwrap()
            .replace("crc32c=", "crc32e=");
        assert!(
            !parse_line(keyed.as_bytes()).unwrap().is_intact(),
            "{keyed}"
        );
        // The original system's lines, with no field at all, stay readable.
        for legacy in [
            "2026-01-01 00:00:00,000 - [9-1] mensaje: a key=b crc32e=c",
            "2026-01-01 00:00:00,000 - mensaje: b",
        ] {
            let record = parse_line(legacy.as_bytes()).unwrap();
            assert_eq!(record.checksum, Checksum::Unchecked, "{legacy}");
            assert!(record.is_intact(), "{legacy}");
        }
    }

    #[test]
    fn unknown_fields_before_the_checksum_are_skipped_and_covered_by_it() {
        let seed = "2026-11-23 05:55:31,793 - [9-1] idem=k-42 mensaje: hi";
        let crc = crc32c::crc32c(seed.as_bytes());
        let line =
            format!("2026-11-23 05:55:31,793 - [9-1] idem=k-42 crc32c={crc:08x} mensaje: hi");
        let record = parse_line(line.as_bytes()).unwrap();
        assert_eq!(record.text, b"hi");
        assert_eq!(record.checksum, Checksum::Valid);
        let changed = line.replace("idem=k-42", "idem=k-43");
        assert!(!parse_line(changed.as_bytes()).unwrap().is_intact());
    }

    #[test]
    fn a_changed_line_fails_its_checksum() {
        let line = formatted(Some(id(2)), "numero random: 1");
        for (from, to) in [
            ("random: 1", "random: 2"),
            ("-2]", "-3]"),
            ("05:55", "05:56"),
        ] {
            let changed = line.replace(from, to);
            let record = parse_line(changed.as_bytes()).unwrap();
            assert!(
                matches!(record.checksum, Checksum::Mismatch { .. }),
                "{changed}"
            );
        }
    }

    #[test]
    fn lines_that_are_not_records_are_rejected() {
        let crc = "crc32c=00000000";
        for (line, why) in [
            ("", LineError::NoTimestamp),
            ("2026-11-23 05:55:31,7", LineError::NoTimestamp),
            (
                "2026-11-23 05:55:31,793 [9-1] mensaje: a",
                LineError::NoTimestamp,
            ),
            (
                "2026-11-23 05:55:31,793 - [9-1 mensaje: a",
                LineError::BadId,
            ),
            ("2026-11-23 05:55:31,793 - [x] mensaje: a", LineError::BadId),
            (
                "2026-11-23 05:55:31,793 - [9-1]mensaje: a",
                LineError::BadId,
            ),
            ("2026-11-23 05:55:31,793 - [9-1] men", LineError::NoText),
            (
                "2026-11-23 05:55:31,793 - [9-1] hello mensaje: a",
                LineError::BadField("hello".into()),
            ),
            (
                "2026-11-23 05:55:31,793 - [9-1] crc32c=1A2B3C4D mensaje: a",
                LineError::BadChecksum,
            ),
            (
                "2026-11-23 05:55:31,793 - [9-1] crc32c=1a2b3c4 mensaje: a",
                LineError::BadChecksum,
            ),
            (
                &format!("2026-11-23 05:55:31,793 - [9-1] {crc} {crc} mensaje: a"),
                LineError::BadChecksum,
            ),
        ] {
            assert_eq!(parse_line(line.as_bytes()), Err(why), "{line:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_record_round_trips_and_any_changed_text_byte_fails_its_checksum(
            id in proptest::option::of((0..u64::MAX, 0..u64::MAX)),
            text in "[^\\p{Cc}]*",
            millis in 0..253_402_300_800_000u64,
            flip in 0..usize::MAX,
            mask in 1..=u8::MAX,
        ) {
            let id = id.map(|(epoch, seq)| MessageId { epoch, seq });
            let stamp = node_kit::timefmt::timestamp(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis),
            );
            let mut line = Vec::new();
            format_record(&mut line, &stamp, id, None, text.as_bytes());
            let record = parse_line(&line).unwrap();
            proptest::prop_assert_eq!(record.timestamp, stamp.as_str());
            proptest::prop_assert_eq!(record.id, id);
            proptest::prop_assert_eq!(record.text, text.as_bytes());
            proptest::prop_assert_eq!(record.checksum, Checksum::Valid);

            if !text.is_empty() {
                let text_start = line.len() - 1 - text.len();
                line[text_start + flip % text.len()] ^= mask;
                let intact = parse_line(&line).is_ok_and(|record| record.is_intact());
                proptest::prop_assert!(!intact, "{:?}", String::from_utf8_lossy(&line));
            }
        }
    }

    #[test]
    fn hex_round_trips() {
        for n in [0, 1, 0xdead_beef, u32::MAX] {
            let buf = hex_digits(n);
            assert_eq!(buf.to_vec(), format!("{n:08x}").into_bytes());
            assert_eq!(parse_hex(&buf), Some(n));
        }
    }
}
