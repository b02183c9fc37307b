//! Reading stored messages back through the head node.
//!
//! A peer that announces the role `lector` sends one request per line and
//! gets its answer before the next request's:
//!
//! ```text
//! get <message-id>                      -> found ... | notfound <what> [removed]
//!                                          | ERROR unavailable: <nodes>: ... | ERROR <reason>
//! get <client-id>/<seq>                 -> the same, by client key
//! tail <after-id>|start <limit> [since=<unix-ms>]
//!                                       -> found ... (0 to <limit>), then end <count> <cursor>|- more|done
//!                                          or ERROR incomplete: ... | ERROR <reason>
//! ```
//!
//! `notfound` is definite: every data node that could hold it answered.
//! `ERROR unavailable: ...` ([`UNAVAILABLE`]) and `ERROR incomplete: ...`
//! ([`INCOMPLETE`]) say a data node that could hold it (or the next
//! messages) did not answer: ask again (a tail from the last id it got).
//!
//! `found <message-id> <stored-ms> <holders> <client-id>/<seq>|- <text>`:
//! `<holders>` are the data nodes that answered with it, joined by `+`.
//! See `docs/protocol.md` ("Reader ↔ head node").

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::datanode::{ReadRecord, SCAN_START};
use crate::error::{ERROR_PREFIX, ParseError, truncate_for_log};
use crate::ids::{KeyRef, MessageId, MessageKey, NodeId, put_u64};

/// The most records one `tail` request may ask for.
pub const MAX_TAIL_LIMIT: u32 = 1000;

/// How an `ERROR` reason begins when a `get` found nothing and a data node
/// that could hold it could not answer: `unavailable: <node> <node>:
/// <why>`. Not a definite "not found": ask again.
pub const UNAVAILABLE: &str = "unavailable: ";

/// How an `ERROR` reason begins when a `tail` stopped because the data
/// nodes that answered cannot prove nothing lies past its last `found`:
/// `incomplete: <why>`. Ask again after the last id received.
pub const INCOMPLETE: &str = "incomplete: ";

/// One request of a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRequest {
    /// `get <message-id>`.
    Get(MessageId),
    /// `get <client-id>/<seq>`: found only within the data nodes' key
    /// index (their deduplication window).
    GetKey(MessageKey),
    /// `tail <after-id>|start <limit> [since=<unix-ms>]`: the next stored
    /// messages in id order, merged over every live data node, each once.
    Tail {
        /// Only ids greater than this; `None` from the smallest.
        after: Option<MessageId>,
        /// Records wanted, 1 to [`MAX_TAIL_LIMIT`].
        limit: u32,
        /// Skip records stored before this time (Unix ms).
        since_ms: Option<u64>,
    },
}

impl ReadRequest {
    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("get"), Some(what), None) if what.contains('/') => {
                Ok(ReadRequest::GetKey(KeyRef::parse(what)?.to_key()))
            }
            (Some("get"), Some(id), None) => Ok(ReadRequest::Get(id.parse()?)),
            (Some("tail"), Some(after), Some(limit)) => {
                let since_ms = match (words.next(), words.next()) {
                    (None, _) => None,
                    (Some(since), None) => Some(
                        since
                            .strip_prefix("since=")
                            .and_then(|ms| ms.parse::<u64>().ok())
                            .ok_or_else(|| {
                                ParseError::new(format!(
                                    "bad tail filter {:?}: expected since=<unix-ms>",
                                    truncate_for_log(since)
                                ))
                            })?,
                    ),
                    _ => return Err(ParseError::new(TAIL_SYNTAX)),
                };
                let limit = limit
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_TAIL_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ParseError::new(format!(
                            "bad tail limit {:?}: 1 to {MAX_TAIL_LIMIT}",
                            truncate_for_log(limit)
                        ))
                    })?;
                Ok(ReadRequest::Tail {
                    after: match after {
                        SCAN_START => None,
                        id => Some(id.parse()?),
                    },
                    limit,
                    since_ms,
                })
            }
            (Some("get"), _, _) => Err(ParseError::new(
                "expected 'get <message-id>' or 'get <client-id>/<seq>'",
            )),
            (Some("tail"), _, _) => Err(ParseError::new(TAIL_SYNTAX)),
            _ => Err(ParseError::new(format!(
                "unknown request {:?}: expected 'get <message-id>', 'get <client-id>/<seq>' or '{TAIL_SYNTAX}'",
                truncate_for_log(line)
            ))),
        }
    }
}

const TAIL_SYNTAX: &str = "tail <after-id>|start <limit> [since=<unix-ms>]";

impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadRequest::Get(id) => write!(f, "get {id}"),
            ReadRequest::GetKey(key) => write!(f, "get {key}"),
            ReadRequest::Tail {
                after,
                limit,
                since_ms,
            } => {
                match after {
                    Some(id) => write!(f, "tail {id} {limit}")?,
                    None => write!(f, "tail {SCAN_START} {limit}")?,
                }
                if let Some(ms) = since_ms {
                    write!(f, " since={ms}")?;
                }
                Ok(())
            }
        }
    }
}

/// One line of the head node's answer to a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadReply {
    /// `found <id> <stored-ms> <holders> <key>|- <text>`.
    Found {
        /// The record.
        record: ReadRecord,
        /// The data nodes that answered with it.
        holders: Vec<NodeId>,
    },
    /// `notfound <id-or-key>` / `notfound <id-or-key> removed`: no live
    /// data node holds it (`removed`: retention removed it).
    NotFound {
        /// What was asked for, as asked.
        what: String,
        /// Whether a node's retention removed it.
        removed: bool,
    },
    /// `end <count> <cursor>|- more|done`: the end of a `tail` answer:
    /// `found` lines sent, the id to pass as `<after-id>` next (`-`: no
    /// record was examined; ask with the same `<after-id>` again), and
    /// whether more follow at once (`done`: nothing more for now; ask
    /// again later to follow).
    End {
        /// `found` lines sent.
        count: u32,
        /// The greatest id examined (sent or skipped by `since=`).
        cursor: Option<MessageId>,
        /// Whether asking again at once gives more.
        more: bool,
    },
    /// `ERROR <reason>`: this request failed; the connection goes on
    /// unless the reason says it closes.
    Error(String),
}

impl ReadReply {
    /// The reason of `ERROR unavailable: <nodes>: <why>`.
    pub fn unavailable(nodes: &str, why: &str) -> String {
        format!("{UNAVAILABLE}{nodes}: {why}; it may be stored there, ask again")
    }

    /// The reason of `ERROR incomplete: <why>`.
    pub fn incomplete(why: &str) -> String {
        format!("{INCOMPLETE}{why}")
    }

    /// Whether this is an `ERROR` that asking again may cure: `unavailable`
    /// or `incomplete`.
    pub fn is_retryable_error(reason: &str) -> bool {
        reason.starts_with(UNAVAILABLE) || reason.starts_with(INCOMPLETE)
    }

    /// Appends `found <id> <stored-ms> <holders> <key>|- <text>`.
    pub fn encode_found(record: &ReadRecord, holders: &[NodeId], buf: &mut BytesMut) {
        buf.reserve(record.text.len() + 160);
        buf.extend_from_slice(b"found ");
        record.id.put(buf);
        buf.put_u8(b' ');
        put_u64(buf, record.stored_ms);
        buf.put_u8(b' ');
        if holders.is_empty() {
            buf.put_u8(b'-');
        }
        for (i, node) in holders.iter().enumerate() {
            if i > 0 {
                buf.put_u8(b'+');
            }
            buf.extend_from_slice(node.as_str().as_bytes());
        }
        buf.put_u8(b' ');
        match &record.key {
            Some(key) => key.as_ref().put(buf),
            None => buf.put_u8(b'-'),
        }
        buf.put_u8(b' ');
        buf.extend_from_slice(record.text.as_bytes());
    }

    /// Appends the line's text (without terminator).
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            ReadReply::Found { record, holders } => ReadReply::encode_found(record, holders, buf),
            ReadReply::NotFound { what, removed } => {
                buf.extend_from_slice(b"notfound ");
                buf.extend_from_slice(what.as_bytes());
                if *removed {
                    buf.extend_from_slice(b" removed");
                }
            }
            ReadReply::End {
                count,
                cursor,
                more,
            } => {
                buf.extend_from_slice(b"end ");
                put_u64(buf, u64::from(*count));
                buf.put_u8(b' ');
                match cursor {
                    Some(id) => id.put(buf),
                    None => buf.put_u8(b'-'),
                }
                buf.extend_from_slice(if *more { b" more" } else { b" done" });
            }
            ReadReply::Error(reason) => {
                buf.extend_from_slice(ERROR_PREFIX.as_bytes());
                buf.extend_from_slice(reason.as_bytes());
            }
        }
    }

    /// Parses one answer line.
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        if let Some(reason) = line.strip_prefix(ERROR_PREFIX) {
            return Ok(ReadReply::Error(reason.to_owned()));
        }
        if let Some(rest) = line.strip_prefix("found ") {
            let mut parts = rest.splitn(5, ' ');
            let (Some(id), Some(stored), Some(holders), Some(key), Some(text)) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(ParseError::new(
                    "expected 'found <id> <stored-ms> <holders> <key>|- <text>'",
                ));
            };
            let holders = match holders {
                "-" => Vec::new(),
                list => list.split('+').map(str::parse).collect::<Result<_, _>>()?,
            };
            return Ok(ReadReply::Found {
                record: ReadRecord::from_words(id, stored, key, text)?,
                holders,
            });
        }
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("notfound"), Some(what), None, None) => Ok(ReadReply::NotFound {
                what: what.to_owned(),
                removed: false,
            }),
            (Some("notfound"), Some(what), Some("removed"), None) => Ok(ReadReply::NotFound {
                what: what.to_owned(),
                removed: true,
            }),
            (Some("end"), Some(count), Some(cursor), Some(more)) if words.next().is_none() => {
                Ok(ReadReply::End {
                    count: count
                        .parse()
                        .map_err(|_| ParseError::new("bad count in 'end'"))?,
                    cursor: match cursor {
                        "-" => None,
                        id => Some(id.parse()?),
                    },
                    more: match more {
                        "more" => true,
                        "done" => false,
                        _ => return Err(ParseError::new("expected 'more' or 'done'")),
                    },
                })
            }
            _ => Err(ParseError::new(format!(
                "unexpected answer {:?}",
                truncate_for_log(line)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u64, seq: u64) -> MessageId {
        MessageId { epoch, seq }
    }

    #[test]
    fn requests_round_trip() {
        let requests = [
            ReadRequest::Get(id(5, 6)),
            ReadRequest::GetKey("c-1/9".parse().unwrap()),
            ReadRequest::Tail {
                after: None,
                limit: 1000,
                since_ms: None,
            },
            ReadRequest::Tail {
                after: Some(id(1_795_413_330_851, 42)),
                limit: 1,
                since_ms: Some(1_795_413_331_000),
            },
        ];
        for request in requests {
            let line = request.to_string();
            assert_eq!(ReadRequest::parse(&line).unwrap(), request, "{line}");
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_short_reason() {
        let long = "x".repeat(10_000);
        for bad in [
            "",
            "get",
            "get 1-2 3",
            "get x",
            "get c 1/2",
            "tail",
            "tail start",
            "tail start 0",
            "tail start 1001",
            "tail start 99999999999999999999999",
            "tail nope 10",
            "tail start 10 since=x",
            "tail start 10 until=5",
            "tail start 10 since=5 extra",
            "scan 1 start 10",
            &long,
            &format!("get {long}"),
            &format!("tail start {long}"),
        ] {
            let reason = ReadRequest::parse(bad).unwrap_err().to_string();
            assert!(reason.len() < 240, "{}: {reason}", truncate_for_log(bad));
        }
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            ReadReply::Found {
                record: ReadRecord {
                    id: id(9, 13),
                    key: Some("c-1/77".parse().unwrap()),
                    stored_ms: 1_795_413_331_793,
                    text: "numero random: 7 with  spaces: - ".into(),
                },
                holders: vec!["dn1".parse().unwrap(), "dn3".parse().unwrap()],
            },
            ReadReply::Found {
                record: ReadRecord {
                    id: id(9, 14),
                    key: None,
                    stored_ms: 0,
                    text: String::new(),
                },
                holders: vec![],
            },
            ReadReply::NotFound {
                what: "9-15".into(),
                removed: false,
            },
            ReadReply::NotFound {
                what: "c-1/3".into(),
                removed: true,
            },
            ReadReply::End {
                count: 3,
                cursor: Some(id(9, 14)),
                more: true,
            },
            ReadReply::End {
                count: 0,
                cursor: None,
                more: false,
            },
            ReadReply::Error("not found".into()),
        ];
        for reply in replies {
            let mut buf = BytesMut::new();
            reply.encode(&mut buf);
            let line = std::str::from_utf8(&buf).unwrap();
            assert_eq!(ReadReply::parse(line).unwrap(), reply, "{line}");
        }
        for bad in ["found 1-2 3", "end 1 - maybe", "end x - done", "hello"] {
            assert!(ReadReply::parse(bad).is_err(), "{bad}");
        }
    }
}
