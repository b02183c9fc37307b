//! The client conversation: after `cliente`, one message per line, each
//! answered once, in order (`docs/protocol.md`, "Client ↔ head node").
//!
//! A client that announced a client id (`cliente id=<client-id>`) sends
//! `<seq> <text>` lines, keyed `<client-id>/<seq>`; the head node answers
//! each with a [`StoreReply`].

use bytes::{BufMut, BytesMut};

use crate::error::{ERROR_PREFIX, ParseError, truncate_for_log};
use crate::ids::{MessageId, NodeId, parse_decimal, put_u64, split_at_first};

/// One message line from a client that announced a client id: `<seq>
/// <text>`. The key is the connection's client id and `seq`.
pub fn parse_keyed_message(line: &str) -> Result<(u64, &str), ParseError> {
    let (seq, text) = split_at_first(line, b' ').ok_or_else(|| {
        ParseError::new("expected '<seq> <text>' (this connection announced a client id)")
    })?;
    let seq = parse_decimal(seq).ok_or_else(|| {
        ParseError::new(format!(
            "bad sequence number {:?}: expected '<seq> <text>' (this connection announced a client id)",
            truncate_for_log(seq)
        ))
    })?;
    Ok((seq, text))
}

/// Appends one keyed message line, `<seq> <text>` (without terminator).
pub fn encode_keyed_message(seq: u64, text: &[u8], buf: &mut impl BufMut) {
    put_u64(buf, seq);
    buf.put_u8(b' ');
    buf.put_slice(text);
}

/// The head node's answer to one client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReply {
    /// `<node-id>[+<node-id>...] , mensaje: recibido <id>`: stored (and
    /// synced) by these data nodes.
    Stored {
        /// The data nodes whose `data.txt` holds the message.
        holders: Vec<String>,
        /// The message id, as written in those `data.txt` files.
        id: MessageId,
    },
    /// `ERROR <reason>`: not stored.
    Error(String),
}

/// The error reason a client gets when no data node can take its message.
pub const NO_DATA_NODES: &str = "no data nodes available";
/// How the error reason starts when fewer data nodes are live than the
/// copies a message needs before it is acknowledged: `not enough data
/// nodes (1 live, 2 required)`. The client may resend it with its key.
pub const NOT_ENOUGH_NODES: &str = "not enough data nodes";
/// How the error reason starts when the head node has no majority of the
/// cluster's data nodes live (it may have been replaced by another head
/// node): `no majority of the cluster's data nodes (1 of 3 members live, 2
/// needed): ...`. The client may resend it with its key; nothing was stored.
pub const NO_MAJORITY: &str = "no majority of the cluster's data nodes";
/// How an error reason starts when the message may or may not be stored
/// (sent to a data node that failed before acknowledging it). Sending it
/// again may store it twice; not sending it again may lose it.
pub const OUTCOME_UNKNOWN: &str = "outcome unknown";

/// Checks a client's message text before it is stored: control characters
/// (CR, NUL, escape sequences and the like; a tab is allowed) could forge
/// a record in `data.txt` or a line in a log, so they are refused.
pub fn validate_text(text: &str) -> Result<(), ParseError> {
    // Fast path, the usual case: printable ASCII and tabs only.
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        return Ok(());
    }
    match text
        .char_indices()
        .find(|(_, c)| c.is_control() && *c != '\t')
    {
        None => Ok(()),
        Some((at, c)) => Err(ParseError::new(format!(
            "control character U+{:04X} at byte {at} (control characters other than tab are not allowed)",
            c as u32
        ))),
    }
}

impl StoreReply {
    /// Parses one reply line from the head node.
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        if let Some(reason) = line.strip_prefix(ERROR_PREFIX) {
            return Ok(StoreReply::Error(reason.to_owned()));
        }
        let (node, rest) = line.split_once(" , mensaje: recibido ").ok_or_else(|| {
            ParseError::new(format!("unexpected reply {:?}", truncate_for_log(line)))
        })?;
        Ok(StoreReply::Stored {
            holders: node.split('+').map(str::to_owned).collect(),
            id: rest.parse()?,
        })
    }

    /// The id of a `Stored` reply, without allocating the holders' names;
    /// `None` for any other line.
    pub fn stored_id(line: &str) -> Option<MessageId> {
        const MARK: &str = " , mensaje: recibido ";
        // The id is the last word: look for the mark just before it.
        let at = line.bytes().rposition(|b| b == b' ')?;
        let head = line[..=at].strip_suffix(MARK)?;
        if head.is_empty() || line.starts_with(ERROR_PREFIX) {
            return None;
        }
        line[at + 1..].parse().ok()
    }

    /// Appends the `Stored` reply text to `buf` without allocating.
    pub fn encode_stored<'n>(
        holders: impl IntoIterator<Item = &'n NodeId>,
        id: MessageId,
        buf: &mut BytesMut,
    ) {
        buf.reserve(160);
        for (i, node) in holders.into_iter().enumerate() {
            if i > 0 {
                buf.put_u8(b'+');
            }
            buf.extend_from_slice(node.as_str().as_bytes());
        }
        buf.extend_from_slice(b" , mensaje: recibido ");
        id.put(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageKey;

    fn id(epoch: u64, seq: u64) -> MessageId {
        MessageId { epoch, seq }
    }

    #[test]
    fn keys_and_keyed_lines_parse() {
        let key: MessageKey = "c-1.x/42".parse().unwrap();
        assert_eq!(key.to_string(), "c-1.x/42");
        assert_eq!(key.as_ref().to_key(), key);
        for bad in ["c1", "/1", "c1/", "c1/x", "c 1/2", "c1/-2", "c1/+2"] {
            assert!(bad.parse::<MessageKey>().is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_keyed_message("7 numero random: 3").unwrap(),
            (7, "numero random: 3")
        );
        assert_eq!(parse_keyed_message("7 ").unwrap(), (7, ""));
        for bad in ["numero random: 3", "7", "x7 a", "-1 a"] {
            assert!(parse_keyed_message(bad).is_err(), "{bad:?}");
        }
        let mut buf = BytesMut::new();
        encode_keyed_message(12, b"hola", &mut buf);
        assert_eq!(&buf[..], b"12 hola");
    }

    #[test]
    fn control_characters_are_refused_in_texts() {
        assert!(validate_text("numero random: 5\tok ñandú").is_ok());
        for bad in ["a\rb", "nul\0", "esc\u{1b}[2J", "del\u{7f}", "c1\u{85}"] {
            let err = validate_text(bad).unwrap_err().to_string();
            assert!(err.starts_with("control character U+"), "{bad:?}: {err}");
        }
        assert_eq!(
            validate_text("ab\rc").unwrap_err().to_string(),
            "control character U+000D at byte 2 (control characters other than tab are not allowed)"
        );
    }

    #[test]
    fn store_reply_round_trips() {
        let mut buf = BytesMut::new();
        let holders: Vec<NodeId> = vec!["dn1".parse().unwrap(), "dn3".parse().unwrap()];
        StoreReply::encode_stored(&holders, id(3, 4), &mut buf);
        let text = std::str::from_utf8(&buf).unwrap();
        assert_eq!(text, "dn1+dn3 , mensaje: recibido 3-4");
        assert_eq!(
            StoreReply::parse(text).unwrap(),
            StoreReply::Stored {
                holders: vec!["dn1".into(), "dn3".into()],
                id: id(3, 4)
            }
        );
        assert_eq!(
            StoreReply::parse("dn2 , mensaje: recibido 3-5").unwrap(),
            StoreReply::Stored {
                holders: vec!["dn2".into()],
                id: id(3, 5)
            }
        );
        assert_eq!(
            StoreReply::parse("ERROR no data nodes available").unwrap(),
            StoreReply::Error(NO_DATA_NODES.into())
        );
        assert!(StoreReply::parse("hello").is_err());
        assert_eq!(StoreReply::stored_id(text), Some(id(3, 4)));
        for other in [
            "ERROR no data nodes available",
            "hello",
            " , mensaje: recibido 3-4",
            "dn1 , mensaje: recibido 3-x",
            "ERROR x , mensaje: recibido 3-4",
        ] {
            assert_eq!(StoreReply::stored_id(other), None, "{other}");
        }
    }
}
