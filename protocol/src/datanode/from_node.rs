//! Lines a data node sends the head node.

use bytes::{BufMut, BytesMut};

use super::record::{ReadRecord, parse_found};
use super::{parse_names, put_names};
use crate::auth::Proof;
use crate::error::{ERROR_PREFIX, ParseError, truncate_for_log};
use crate::ids::{ClientId, MessageId, MessageKey, NodeId, parse_counter, parse_decimal, put_u64};

/// A data node's acknowledgement that a message is written.
pub const RECIBIDO: &str = "recibido";
/// Acknowledgement of a run of messages whose ids follow one another.
pub const RECIBIDOS: &str = "recibidos";
/// How a data node's refusal of a head node with an older epoch starts.
pub const STALE_HEAD: &str = "stale head node";
/// Keys per `held` line of a data node's report.
pub const HELD_PER_LINE: usize = 64;
/// Ranges per `removed` line.
pub const REMOVED_PER_LINE: usize = 64;

/// Ids of one epoch, `first` to `last` (sequence numbers, both included):
/// a range a data node's retention removed messages from (`removed`
/// lines). It covers every id retention removed there, and may cover ids
/// the node never held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdRange {
    /// The lowest id.
    pub first: MessageId,
    /// The highest id, of the same epoch, not below `first`.
    pub last: MessageId,
}

impl IdRange {
    /// The range `first..=last`, if both are of one epoch and in order.
    pub fn new(first: MessageId, last: MessageId) -> Option<IdRange> {
        (first.epoch == last.epoch && first.seq <= last.seq).then_some(IdRange { first, last })
    }

    /// Whether `id` is within it.
    pub fn contains(&self, id: MessageId) -> bool {
        (self.first..=self.last).contains(&id)
    }

    /// Adds `range` to `ranges`, which stay sorted with one range per
    /// epoch: one already there for its epoch grows to cover both (so the
    /// ranges only ever cover more ids, never fewer).
    pub fn merge_into(ranges: &mut Vec<IdRange>, range: IdRange) {
        match ranges.binary_search_by_key(&range.first.epoch, |r| r.first.epoch) {
            Ok(at) => {
                let known = &mut ranges[at];
                known.first = known.first.min(range.first);
                known.last = known.last.max(range.last);
            }
            Err(at) => ranges.insert(at, range),
        }
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.first, self.last)
    }
}

/// A frame sent by a data node to the head node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromDataNode {
    /// `recibido <id>`: the message is written (or its key was already
    /// held under this same id, and nothing was written again).
    /// Original-system data nodes send a bare `recibido` (id `None`), for
    /// the one message they hold.
    Stored(Option<MessageId>),
    /// `recibidos <first-id> <count>`: `count` (at least 2) messages sent
    /// one after another, whose ids follow one another from `first` (same
    /// epoch, sequence numbers `first.seq` to `first.seq + count - 1`),
    /// are each stored as by `recibido <id>`, in that order. One line for
    /// a group commit's run of answers instead of one per message.
    StoredRun {
        /// The first message's id.
        first: MessageId,
        /// How many messages, at least 2.
        count: u32,
    },
    /// `recibido <id> <held-id>`: the message's key is already held here
    /// under another id, `held`; nothing was written.
    AlreadyHeld {
        /// The id the head node sent.
        id: MessageId,
        /// The id this node holds the key under.
        held: MessageId,
    },
    /// `withdrawn <id>`: answer to `withdraw <id>`: not written, and never
    /// will be.
    Withdrawn(MessageId),
    /// `held <client-id> <seq>:<id>...`: part of the report a data node
    /// sends after `welcome`: keys of this client it holds (within its
    /// deduplication window), with their ids. At most
    /// [`HELD_PER_LINE`] per line.
    Held {
        /// Whose keys.
        client: ClientId,
        /// Sequence numbers and the ids they are stored under.
        keys: Vec<(u64, MessageId)>,
    },
    /// `peers <node-id>...`: part of the report: the data nodes the
    /// previous head node last named in `members` (possibly none).
    Peers(Vec<NodeId>),
    /// `damaged <count>`: part of the report, sent only when `count` is
    /// not 0: records this node found damaged since it started (failing
    /// their checksum when it opened its files, or no longer reading back
    /// where its index pointed). They are left out of its reads; the head
    /// node runs a repair pass so their messages get their copies.
    Damaged(u64),
    /// `removed <first-id>..<last-id>...`: ranges of ids (each within one
    /// epoch) that cover every message this node's retention removed, at
    /// most [`REMOVED_PER_LINE`] per line. Part of the report (every range
    /// the node knows of), and sent again after a `pong` when retention
    /// has removed segments since (their ranges only). A repair never
    /// copies a message back while a node that may have removed it cannot
    /// say whether it did.
    Removed(Vec<IdRange>),
    /// `ready`: the report is complete; the node can take messages.
    Ready,
    /// `pong <n>`: answer to `ping <n>`.
    Pong(u64),
    /// `proof <node-proof>`: the data node's answer to a challenge.
    Proof(Proof),
    /// `bye`: the node is shutting down; send it nothing new.
    Leaving,
    /// `found <req> <message-id> <stored-ms> <client-id>/<seq>|- <text>`:
    /// one record, the answer to `get` or `getkey`, or one of a scan's.
    Found {
        /// The request it answers.
        req: u64,
        /// The record.
        record: ReadRecord,
    },
    /// `notfound <req>` (this node holds no such message) or `notfound
    /// <req> removed` (retention removed it here): the answer to `get` or
    /// `getkey`.
    NotFound {
        /// The request it answers.
        req: u64,
        /// Whether the node's retention removed it (so it must not be
        /// brought back).
        removed: bool,
    },
    /// `scanned <req> <count> <last-id>|- more|done`: the end of a scan's
    /// answer: how many `found` lines it sent, the last id among them
    /// (send `scan <req> <last-id> ...` to go on), and whether records
    /// with greater ids may follow (`done`: none here now).
    Scanned {
        /// The request it answers.
        req: u64,
        /// `found` lines sent for it.
        count: u32,
        /// The greatest id sent; `None` if none was.
        last: Option<MessageId>,
        /// Whether more records may follow.
        more: bool,
    },
    /// `readerror <req> <reason>`: this read was not served (too many
    /// reads outstanding, a limit out of bounds, a file that cannot be
    /// read). Only this request failed: unlike `ERROR`, the connection
    /// stays open.
    ReadError {
        /// The request it answers.
        req: u64,
        /// Why, one line.
        reason: String,
    },
    /// `fsync <window-ms> <count> <p99-µs>|-`: this node's fdatasync
    /// latency over a recent window, sent every
    /// [`FSYNC_REPORT_EVERY`] (after a `pong`). Only for the status
    /// table: the head node decides nothing on it.
    Fsync(FsyncReport),
    /// `ERROR <reason>`.
    Error(String),
}

/// How often a data node reports its fsync latency ([`FromDataNode::Fsync`]),
/// about: with the first `pong` after this long.
pub const FSYNC_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A data node's fdatasync latency over a recent window: the payload of an
/// `fsync` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsyncReport {
    /// How long the window is, in milliseconds: up to the report.
    pub window_ms: u64,
    /// fdatasyncs completed in the window.
    pub count: u64,
    /// Their 99th percentile in microseconds, estimated from the node's
    /// histogram buckets; `None` without any.
    pub p99_micros: Option<u64>,
}

impl FromDataNode {
    /// Parses one line received from a data node.
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        // The usual line first: an acknowledgement of one message.
        if let Some(id) = line
            .strip_prefix(RECIBIDO)
            .and_then(|rest| rest.strip_prefix(' '))
            && !id.bytes().any(|b| b == b' ')
        {
            return Ok(FromDataNode::Stored(Some(id.parse()?)));
        }
        if let Some(reason) = line.strip_prefix(ERROR_PREFIX) {
            return Ok(FromDataNode::Error(reason.to_owned()));
        }
        if let Some(rest) = line.strip_prefix("peers") {
            return Ok(FromDataNode::Peers(parse_names(rest)?));
        }
        if let Some(rest) = line.strip_prefix("held ") {
            let mut words = rest.split(' ');
            let client = words.next().unwrap_or_default().parse()?;
            let keys = words
                .map(|pair| {
                    let bad =
                        || ParseError::new(format!("bad held key {:?}", truncate_for_log(pair)));
                    let (seq, id) = pair.split_once(':').ok_or_else(bad)?;
                    Ok((parse_decimal(seq).ok_or_else(bad)?, id.parse()?))
                })
                .collect::<Result<Vec<_>, ParseError>>()?;
            if keys.len() > HELD_PER_LINE {
                return Err(ParseError::new(format!(
                    "more than {HELD_PER_LINE} keys in one held line"
                )));
            }
            return Ok(FromDataNode::Held { client, keys });
        }
        if let Some(rest) = line.strip_prefix("found ") {
            return parse_found(rest);
        }
        if let Some(rest) = line.strip_prefix("removed ") {
            let ranges = rest
                .split(' ')
                .map(|word| {
                    let bad =
                        || ParseError::new(format!("bad id range {:?}", truncate_for_log(word)));
                    let (first, last) = word.split_once("..").ok_or_else(bad)?;
                    IdRange::new(first.parse()?, last.parse()?).ok_or_else(bad)
                })
                .collect::<Result<Vec<_>, ParseError>>()?;
            if ranges.len() > REMOVED_PER_LINE {
                return Err(ParseError::new(format!(
                    "more than {REMOVED_PER_LINE} ranges in one removed line"
                )));
            }
            return Ok(FromDataNode::Removed(ranges));
        }
        if let Some(rest) = line.strip_prefix("readerror ") {
            let (req, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            return Ok(FromDataNode::ReadError {
                req: parse_counter(req)?,
                reason: reason.to_owned(),
            });
        }
        let mut words = line.split(' ');
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some("notfound"), Some(req), None) => FromDataNode::NotFound {
                req: parse_counter(req)?,
                removed: false,
            },
            (Some("notfound"), Some(req), Some("removed")) if words.next().is_none() => {
                FromDataNode::NotFound {
                    req: parse_counter(req)?,
                    removed: true,
                }
            }
            (Some("scanned"), Some(req), Some(count)) => {
                let (Some(last), Some(more), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(ParseError::new(
                        "expected 'scanned <req> <count> <last-id>|- more|done'",
                    ));
                };
                FromDataNode::Scanned {
                    req: parse_counter(req)?,
                    count: u32::try_from(parse_counter(count)?)
                        .map_err(|_| ParseError::new("scanned count out of range"))?,
                    last: match last {
                        "-" => None,
                        id => Some(id.parse()?),
                    },
                    more: match more {
                        "more" => true,
                        "done" => false,
                        _ => return Err(ParseError::new("expected 'more' or 'done'")),
                    },
                }
            }
            (Some(RECIBIDO), None, None) => FromDataNode::Stored(None),
            (Some(RECIBIDO), Some(id), None) => FromDataNode::Stored(Some(id.parse()?)),
            (Some(RECIBIDO), Some(id), Some(held)) if words.next().is_none() => {
                FromDataNode::AlreadyHeld {
                    id: id.parse()?,
                    held: held.parse()?,
                }
            }
            (Some(RECIBIDOS), Some(first), Some(count)) if words.next().is_none() => {
                let first: MessageId = first.parse()?;
                let count = parse_decimal(count)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n >= 2)
                    .ok_or_else(|| {
                        ParseError::new(format!("bad run length {:?}", truncate_for_log(count)))
                    })?;
                if first.seq.checked_add(u64::from(count) - 1).is_none() {
                    return Err(ParseError::new(
                        "run of ids beyond the last sequence number",
                    ));
                }
                FromDataNode::StoredRun { first, count }
            }
            (Some("withdrawn"), Some(id), None) => FromDataNode::Withdrawn(id.parse()?),
            (Some("ready"), None, None) => FromDataNode::Ready,
            (Some("damaged"), Some(count), None) => FromDataNode::Damaged(parse_counter(count)?),
            (Some("pong"), Some(n), None) => FromDataNode::Pong(parse_counter(n)?),
            (Some("fsync"), Some(window), Some(count)) => {
                let (Some(p99), None) = (words.next(), words.next()) else {
                    return Err(ParseError::new(
                        "expected 'fsync <window-ms> <count> <p99-us>|-'",
                    ));
                };
                FromDataNode::Fsync(FsyncReport {
                    window_ms: parse_counter(window)?,
                    count: parse_counter(count)?,
                    p99_micros: match p99 {
                        "-" => None,
                        p99 => Some(parse_counter(p99)?),
                    },
                })
            }
            (Some("proof"), Some(proof), None) => FromDataNode::Proof(proof.parse()?),
            (Some("bye"), None, None) => FromDataNode::Leaving,
            _ => {
                return Err(ParseError::new(format!(
                    "unexpected line from data node: {:?}",
                    truncate_for_log(line)
                )));
            }
        };
        Ok(parsed)
    }

    /// Appends the frame's text (without terminator) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            FromDataNode::Stored(id) => {
                buf.extend_from_slice(RECIBIDO.as_bytes());
                if let Some(id) = id {
                    buf.put_u8(b' ');
                    id.put(buf);
                }
            }
            FromDataNode::StoredRun { first, count } => {
                buf.extend_from_slice(RECIBIDOS.as_bytes());
                buf.put_u8(b' ');
                first.put(buf);
                buf.put_u8(b' ');
                put_u64(buf, u64::from(*count));
            }
            FromDataNode::AlreadyHeld { id, held } => {
                buf.extend_from_slice(RECIBIDO.as_bytes());
                buf.put_u8(b' ');
                id.put(buf);
                buf.put_u8(b' ');
                held.put(buf);
            }
            FromDataNode::Withdrawn(id) => {
                buf.extend_from_slice(b"withdrawn ");
                id.put(buf);
            }
            FromDataNode::Held { client, keys } => {
                buf.extend_from_slice(b"held ");
                buf.extend_from_slice(client.as_str().as_bytes());
                for (seq, id) in keys {
                    buf.put_u8(b' ');
                    put_u64(buf, *seq);
                    buf.put_u8(b':');
                    id.put(buf);
                }
            }
            FromDataNode::Peers(nodes) => {
                buf.extend_from_slice(b"peers");
                put_names(nodes, buf);
            }
            FromDataNode::Removed(ranges) => {
                buf.extend_from_slice(b"removed");
                for range in ranges {
                    buf.put_u8(b' ');
                    range.first.put(buf);
                    buf.extend_from_slice(b"..");
                    range.last.put(buf);
                }
            }
            FromDataNode::Ready => buf.extend_from_slice(b"ready"),
            FromDataNode::Damaged(count) => {
                buf.extend_from_slice(b"damaged ");
                put_u64(buf, *count);
            }
            FromDataNode::Pong(n) => {
                buf.extend_from_slice(b"pong ");
                put_u64(buf, *n);
            }
            FromDataNode::Proof(proof) => {
                buf.extend_from_slice(format!("proof {proof}").as_bytes());
            }
            FromDataNode::Leaving => buf.extend_from_slice(b"bye"),
            FromDataNode::Fsync(report) => {
                buf.extend_from_slice(b"fsync ");
                put_u64(buf, report.window_ms);
                buf.put_u8(b' ');
                put_u64(buf, report.count);
                buf.put_u8(b' ');
                match report.p99_micros {
                    Some(p99) => put_u64(buf, p99),
                    None => buf.put_u8(b'-'),
                }
            }
            FromDataNode::Found { req, record } => {
                FromDataNode::encode_found(
                    *req,
                    record.id,
                    record.key.as_ref().map(MessageKey::as_ref),
                    record.stored_ms,
                    record.text.as_bytes(),
                    buf,
                );
            }
            FromDataNode::NotFound { req, removed } => {
                buf.extend_from_slice(b"notfound ");
                put_u64(buf, *req);
                if *removed {
                    buf.extend_from_slice(b" removed");
                }
            }
            FromDataNode::Scanned {
                req,
                count,
                last,
                more,
            } => {
                buf.extend_from_slice(b"scanned ");
                put_u64(buf, *req);
                buf.put_u8(b' ');
                put_u64(buf, u64::from(*count));
                buf.put_u8(b' ');
                match last {
                    Some(id) => id.put(buf),
                    None => buf.put_u8(b'-'),
                }
                buf.extend_from_slice(if *more { b" more" } else { b" done" });
            }
            FromDataNode::ReadError { req, reason } => {
                buf.extend_from_slice(b"readerror ");
                put_u64(buf, *req);
                buf.put_u8(b' ');
                buf.extend_from_slice(reason.as_bytes());
            }
            FromDataNode::Error(reason) => {
                buf.extend_from_slice(ERROR_PREFIX.as_bytes());
                buf.extend_from_slice(reason.as_bytes());
            }
        }
    }
}

impl FromDataNode {
    /// Appends the frame and its line terminator to `buf`: how a data node
    /// writes every line it sends (it speaks to line-framed peers only).
    pub fn encode_line(&self, buf: &mut BytesMut) {
        self.encode(buf);
        buf.put_u8(b'\n');
    }

    /// Appends `answers`, each with its line terminator, to `buf`; the
    /// acknowledgements of messages whose ids follow one another (a group
    /// commit's, mostly) go out as one `recibidos` line per run.
    pub fn encode_answers(answers: impl IntoIterator<Item = FromDataNode>, buf: &mut BytesMut) {
        let mut run: Option<(MessageId, u32)> = None;
        let flush_run = |run: &mut Option<(MessageId, u32)>, buf: &mut BytesMut| {
            if let Some((first, count)) = run.take() {
                let answer = match count {
                    1 => FromDataNode::Stored(Some(first)),
                    count => FromDataNode::StoredRun { first, count },
                };
                answer.encode_line(buf);
            }
        };
        for answer in answers {
            if let FromDataNode::Stored(Some(id)) = answer {
                match &mut run {
                    Some((first, count))
                        if first.epoch == id.epoch
                            && *count < u32::MAX
                            && first.seq.checked_add(u64::from(*count)) == Some(id.seq) =>
                    {
                        *count += 1;
                    }
                    _ => {
                        flush_run(&mut run, buf);
                        run = Some((id, 1));
                    }
                }
                continue;
            }
            flush_run(&mut run, buf);
            answer.encode_line(buf);
        }
        flush_run(&mut run, buf);
    }

    /// The ids a `Stored` or `StoredRun` answer acknowledges, in order.
    pub fn stored_ids(&self) -> impl Iterator<Item = MessageId> + use<> {
        let (first, count) = match self {
            FromDataNode::Stored(Some(id)) => (Some(*id), 1),
            FromDataNode::StoredRun { first, count } => (Some(*first), u64::from(*count)),
            _ => (None, 0),
        };
        (0..count).filter_map(move |i| {
            first.map(|first| MessageId {
                epoch: first.epoch,
                seq: first.seq + i,
            })
        })
    }
}

#[cfg(test)]
mod tests;
