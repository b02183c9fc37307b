//! Lines the head node sends a data node.

use bytes::{BufMut, BytesMut};

use super::record::SCAN_START;
use super::{HeadId, parse_names, put_names};
use crate::auth::{Nonce, Proof};
use crate::error::{ERROR_PREFIX, ParseError, truncate_for_log};
use crate::ids::{
    KeyRef, MAX_NAME_LEN, MessageId, NAME_BYTES, NodeId, parse_counter, parse_decimal, put_u64,
    split_at_first,
};

/// A frame sent by the head node to a data node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToDataNode<'a> {
    /// `welcome <node-id> <epoch> <head-id>`: registration accepted, under
    /// this id, by the head node `head-id` at this epoch. A data node
    /// accepts it only as [`Fence::admits`](super::Fence::admits) says.
    /// A node that sent no epoch in its hello (one older than epochs as
    /// counters) is welcomed without the head-id.
    Welcome {
        /// The node's id in the cluster.
        node: NodeId,
        /// The head node's epoch: above every epoch its data nodes report.
        epoch: u64,
        /// The head node's head-id; `None` for a node that sent no epoch.
        head: Option<HeadId>,
    },
    /// `challenge <head-nonce> <head-proof>`: the head node proves it knows
    /// the cluster token and asks the data node to prove it too.
    Challenge {
        /// The head node's nonce.
        nonce: Nonce,
        /// The head node's proof.
        proof: Proof,
    },
    /// `mensaje <id> [<client-id>/<seq>]: <text>`: store this message,
    /// under this key if it has one. Original-system data nodes get
    /// `mensaje: <text>`, without id or key.
    Store {
        /// The id the head node assigned.
        id: Option<MessageId>,
        /// The client's key, if it sent one.
        key: Option<KeyRef<'a>>,
        /// The client's text.
        text: &'a str,
    },
    /// `mensaje <id> [<client-id>/<seq>] @<unix-ms>: <text>`: a repair's
    /// copy of a stored message: store it as [`ToDataNode::Store`] does,
    /// with `stored_ms` as its record's time, the time its first copies
    /// were stored (so retention by age counts from then, not from the
    /// copy).
    StoreCopy {
        /// The message's id.
        id: MessageId,
        /// The client's key, if it sent one.
        key: Option<KeyRef<'a>>,
        /// When the copy it was made from was stored, Unix ms.
        stored_ms: u64,
        /// The client's text.
        text: &'a str,
    },
    /// `withdraw <id>`: the head node sent this message elsewhere after its
    /// acknowledgement timed out. If it is not yet written, do not write it
    /// and answer `withdrawn <id>`; if it is, its `recibido` stands.
    Withdraw(MessageId),
    /// `members <node-id>...`: the cluster's member set (sent when it
    /// changes). A data node keeps the last one it got on disk and reports
    /// it to every head node that welcomes it, which waits for those nodes
    /// before it serves, and counts its majority among them.
    Members(Vec<NodeId>),
    /// `horizon <id>`: the head node has forgotten every client key whose
    /// message id is at most this one (its deduplication window moved on):
    /// the data node forgets the keys it holds under such ids, so that it
    /// never remembers a key the head node has forgotten. Sent when it
    /// moves, before the next `mensaje`; not answered.
    Horizon(MessageId),
    /// `ping <n>`: application heartbeat; answer `pong <n>`.
    Ping(u64),
    /// `bye`: the head node has drained this node after it asked to leave.
    Bye,
    /// `get <req> <message-id>`: read the message stored under this id.
    /// Answered `found <req> ...` or `notfound <req>`.
    Get {
        /// The head node's number for this request, repeated in the answer.
        req: u64,
        /// The message wanted.
        id: MessageId,
    },
    /// `getkey <req> <client-id>/<seq>`: read the message stored under
    /// this client key, if the node's key index (its deduplication window)
    /// knows the key. Answered like [`ToDataNode::Get`].
    GetKey {
        /// The head node's number for this request.
        req: u64,
        /// The client key.
        key: KeyRef<'a>,
    },
    /// `scan <req> <after> <limit>`: the next records with an id greater
    /// than `after` (`start`: from the smallest), at most `limit` of them
    /// (at most [`MAX_SCAN_RECORDS`](super::MAX_SCAN_RECORDS)), in id order ([`MessageId`]'s order:
    /// epoch, then sequence number). Answered with one `found <req> ...`
    /// per record, then `scanned <req> ...`.
    Scan {
        /// The head node's number for this request.
        req: u64,
        /// Only ids greater than this; `None` from the smallest.
        after: Option<MessageId>,
        /// Records wanted, at most.
        limit: u32,
    },
    /// `ERROR <reason>`.
    Error(&'a str),
}

impl<'a> ToDataNode<'a> {
    /// Appends `mensaje <id> <key>: <text>` (`mensaje: <text>` without an
    /// id, and no key without an id) from text that is already known to be
    /// UTF-8.
    pub fn encode_store(
        id: Option<MessageId>,
        key: Option<KeyRef<'_>>,
        text: &[u8],
        buf: &mut BytesMut,
    ) {
        buf.reserve(text.len() + 120);
        match id {
            Some(id) => {
                buf.extend_from_slice(b"mensaje ");
                id.put(buf);
                if let Some(key) = key {
                    buf.put_u8(b' ');
                    key.put(buf);
                }
                buf.extend_from_slice(b": ");
            }
            None => buf.extend_from_slice(b"mensaje: "),
        }
        buf.extend_from_slice(text);
    }

    /// Appends `mensaje <id> [<key>] @<stored-ms>: <text>`, a repair's
    /// copy ([`ToDataNode::StoreCopy`]), from text that is already known
    /// to be UTF-8.
    pub fn encode_copy(
        id: MessageId,
        key: Option<KeyRef<'_>>,
        stored_ms: u64,
        text: &[u8],
        buf: &mut BytesMut,
    ) {
        buf.reserve(text.len() + 140);
        buf.extend_from_slice(b"mensaje ");
        id.put(buf);
        if let Some(key) = key {
            buf.put_u8(b' ');
            key.put(buf);
        }
        buf.extend_from_slice(b" @");
        put_u64(buf, stored_ms);
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(text);
    }

    /// Parses one line received from the head node.
    pub fn parse(line: &'a str) -> Result<Self, ParseError> {
        if let Some(rest) = line.strip_prefix("mensaje") {
            if let Some(text) = rest.strip_prefix(": ") {
                return Ok(ToDataNode::Store {
                    id: None,
                    key: None,
                    text,
                });
            }
            let Some(rest) = rest.strip_prefix(' ') else {
                return Err(ParseError::new("malformed 'mensaje' line"));
            };
            // Anything unusual is read the general way, which also names
            // what is wrong.
            return parse_store_fast(rest).map_or_else(|| parse_store(rest), Ok);
        }
        if let Some(reason) = line.strip_prefix(ERROR_PREFIX) {
            return Ok(ToDataNode::Error(reason));
        }
        if let Some(rest) = line.strip_prefix("members") {
            return Ok(ToDataNode::Members(parse_names(rest)?));
        }
        let mut words = line.split(' ');
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some("welcome"), Some(id), Some(epoch)) => {
                let head = match (words.next(), words.next()) {
                    (None, _) => None,
                    (Some(head), None) => Some(head.parse()?),
                    _ => {
                        return Err(ParseError::new(
                            "expected 'welcome <node-id> <epoch> [<head-id>]'",
                        ));
                    }
                };
                ToDataNode::Welcome {
                    node: id.parse()?,
                    epoch: parse_counter(epoch)?,
                    head,
                }
            }
            (Some("withdraw"), Some(id), None) => ToDataNode::Withdraw(id.parse()?),
            (Some("horizon"), Some(id), None) => ToDataNode::Horizon(id.parse()?),
            (Some("challenge"), Some(nonce), Some(proof)) if words.next().is_none() => {
                ToDataNode::Challenge {
                    nonce: nonce.parse()?,
                    proof: proof.parse()?,
                }
            }
            (Some("ping"), Some(n), None) => ToDataNode::Ping(parse_counter(n)?),
            (Some("bye"), None, None) => ToDataNode::Bye,
            (Some("get"), Some(req), Some(id)) if words.next().is_none() => ToDataNode::Get {
                req: parse_counter(req)?,
                id: id.parse()?,
            },
            (Some("getkey"), Some(req), Some(key)) if words.next().is_none() => {
                ToDataNode::GetKey {
                    req: parse_counter(req)?,
                    key: KeyRef::parse(key)?,
                }
            }
            (Some("scan"), Some(req), Some(after)) => {
                let (Some(limit), None) = (words.next(), words.next()) else {
                    return Err(ParseError::new(
                        "expected 'scan <req> <after-id|start> <limit>'",
                    ));
                };
                let limit = parse_decimal(limit)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        ParseError::new(format!("bad scan limit {:?}", truncate_for_log(limit)))
                    })?;
                ToDataNode::Scan {
                    req: parse_counter(req)?,
                    after: match after {
                        SCAN_START => None,
                        id => Some(id.parse()?),
                    },
                    limit,
                }
            }
            _ => {
                return Err(ParseError::new(format!(
                    "unexpected line from head node: {:?}",
                    truncate_for_log(line)
                )));
            }
        };
        Ok(parsed)
    }

    /// Appends the frame's text (without terminator) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            ToDataNode::Welcome { node, epoch, head } => {
                buf.extend_from_slice(b"welcome ");
                buf.extend_from_slice(node.as_str().as_bytes());
                buf.put_u8(b' ');
                put_u64(buf, *epoch);
                if let Some(head) = head {
                    buf.extend_from_slice(format!(" {head}").as_bytes());
                }
            }
            ToDataNode::Withdraw(id) => {
                buf.extend_from_slice(b"withdraw ");
                id.put(buf);
            }
            ToDataNode::Horizon(id) => {
                buf.extend_from_slice(b"horizon ");
                id.put(buf);
            }
            ToDataNode::Members(nodes) => {
                buf.extend_from_slice(b"members");
                put_names(nodes, buf);
            }
            ToDataNode::Challenge { nonce, proof } => {
                buf.extend_from_slice(format!("challenge {nonce} {proof}").as_bytes());
            }
            ToDataNode::Store { id, key, text } => {
                ToDataNode::encode_store(*id, *key, text.as_bytes(), buf)
            }
            ToDataNode::StoreCopy {
                id,
                key,
                stored_ms,
                text,
            } => ToDataNode::encode_copy(*id, *key, *stored_ms, text.as_bytes(), buf),
            ToDataNode::Ping(n) => {
                buf.extend_from_slice(b"ping ");
                put_u64(buf, *n);
            }
            ToDataNode::Bye => buf.extend_from_slice(b"bye"),
            ToDataNode::Get { req, id } => {
                buf.extend_from_slice(b"get ");
                put_u64(buf, *req);
                buf.put_u8(b' ');
                id.put(buf);
            }
            ToDataNode::GetKey { req, key } => {
                buf.extend_from_slice(b"getkey ");
                put_u64(buf, *req);
                buf.put_u8(b' ');
                key.put(buf);
            }
            ToDataNode::Scan { req, after, limit } => {
                buf.extend_from_slice(b"scan ");
                put_u64(buf, *req);
                buf.put_u8(b' ');
                match after {
                    Some(id) => id.put(buf),
                    None => buf.extend_from_slice(SCAN_START.as_bytes()),
                }
                buf.put_u8(b' ');
                put_u64(buf, u64::from(*limit));
            }
            ToDataNode::Error(reason) => {
                buf.extend_from_slice(ERROR_PREFIX.as_bytes());
                buf.extend_from_slice(reason.as_bytes());
            }
        }
    }
}

/// `<epoch>-<seq>[ <client>/<seq>][ @<unix-ms>]: <text>`, the rest of a
/// `mensaje` line: a message to store, or (with the time) a repair's copy.
fn parse_store(rest: &str) -> Result<ToDataNode<'_>, ParseError> {
    // The id, key and time hold no `:`: the first one ends them.
    let Some((head, text)) = split_at_first(rest, b':') else {
        return Err(ParseError::new("malformed 'mensaje' line"));
    };
    let Some(text) = text.strip_prefix(' ') else {
        return Err(ParseError::new("malformed 'mensaje' line"));
    };
    // A client id never starts with `@`: the time is told apart by it.
    let (head, stored_ms) = match head.rsplit_once(" @") {
        Some((head, time)) => {
            let stored_ms = parse_decimal(time).ok_or_else(|| {
                ParseError::new(format!(
                    "bad record time {:?} in 'mensaje' line",
                    truncate_for_log(time)
                ))
            })?;
            (head, Some(stored_ms))
        }
        None => (head, None),
    };
    let (id, key) = match split_at_first(head, b' ') {
        Some((id, key)) => (id, Some(KeyRef::parse(key)?)),
        None => (head, None),
    };
    let id = id.parse()?;
    Ok(match stored_ms {
        Some(stored_ms) => ToDataNode::StoreCopy {
            id,
            key,
            stored_ms,
            text,
        },
        None => ToDataNode::Store {
            id: Some(id),
            key,
            text,
        },
    })
}

/// `<epoch>-<seq>[ <client>/<seq>]: <text>`, the rest of a `mensaje` line
/// (every message a data node stores), read in one pass; `None` for any
/// other shape, which [`parse_store`] then reads the general way.
/// Accepts nothing the general way refuses, and reads the same values.
fn parse_store_fast(rest: &str) -> Option<ToDataNode<'_>> {
    let bytes = rest.as_bytes();
    let mut at = 0;
    let epoch = short_decimal(bytes, &mut at)?;
    (bytes.get(at) == Some(&b'-')).then_some(())?;
    at += 1;
    let seq = short_decimal(bytes, &mut at)?;
    let key = if bytes.get(at) == Some(&b' ') {
        at += 1;
        let client_at = at;
        while bytes.get(at).is_some_and(|&b| NAME_BYTES[usize::from(b)]) {
            at += 1;
        }
        let client = &rest[client_at..at];
        (!client.is_empty() && client.len() <= MAX_NAME_LEN && bytes.get(at) == Some(&b'/'))
            .then_some(())?;
        at += 1;
        let seq = short_decimal(bytes, &mut at)?;
        Some(KeyRef { client, seq })
    } else {
        None
    };
    (bytes.get(at..at + 2) == Some(b": ")).then_some(())?;
    Some(ToDataNode::Store {
        id: Some(MessageId { epoch, seq }),
        key,
        text: &rest[at + 2..],
    })
}

/// The decimal number of 1 to 19 digits at `bytes[*at..]` (19 digits
/// cannot overflow a `u64`), moving `at` past it; `None` if there is none
/// or it is longer.
fn short_decimal(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let start = *at;
    let mut n = 0u64;
    while let Some(&b) = bytes.get(*at) {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        if *at - start == 19 {
            return None;
        }
        n = n * 10 + u64::from(digit);
        *at += 1;
    }
    (*at > start).then_some(n)
}

#[cfg(test)]
mod tests;
