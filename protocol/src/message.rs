//! The messages of the protocol, parsed once at the edge into typed values.
//!
//! See `docs/protocol.md` for the conversation each one belongs to.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::auth::{Nonce, Proof};
use crate::error::ParseError;

/// First word of every handshake, sent by the connecting peer.
pub const PETICION: &str = "peticion";
/// The server's answer to [`PETICION`].
pub const CONFIRMACION: &str = "confirmacion";
/// Role of a peer that sends messages to be stored.
pub const ROLE_CLIENT: &str = "cliente";
/// Role of a peer that stores messages.
pub const ROLE_DATANODE: &str = "dataNode";
/// Role of a peer that reads stored messages back (see [`crate::reads`]).
pub const ROLE_READER: &str = "lector";
/// A data node's acknowledgement that a message is written.
pub const RECIBIDO: &str = "recibido";
/// Acknowledgement of a run of messages whose ids follow one another.
pub const RECIBIDOS: &str = "recibidos";
/// Prefix of every error line.
pub const ERROR_PREFIX: &str = "ERROR ";

/// A message id, unique across the cluster's life: the head node's start time
/// (Unix milliseconds, its *epoch*) and a sequence number within that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// Start time of the head node run that assigned the id, in Unix ms.
    pub epoch: u64,
    /// Position within that run, from 1.
    pub seq: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl FromStr for MessageId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::new(format!("bad message id {:?}", truncate_for_log(s)));
        let (epoch, seq) = split_at_first(s, b'-').ok_or_else(bad)?;
        Ok(MessageId {
            epoch: parse_decimal(epoch).ok_or_else(bad)?,
            seq: parse_decimal(seq).ok_or_else(bad)?,
        })
    }
}

impl MessageId {
    /// Appends the id's text to `buf` without allocating.
    pub fn put(&self, buf: &mut impl BufMut) {
        put_u64(buf, self.epoch);
        buf.put_u8(b'-');
        put_u64(buf, self.seq);
    }
}

/// Appends the decimal digits of `n` to `buf`.
pub fn put_u64(buf: &mut impl BufMut, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    buf.put_slice(&digits[i..]);
}

/// Whether `s` is a valid name (node id, zone, client id): 1 to 64
/// characters from `A-Z a-z 0-9 . _ -`, so it fits in logs, file names and
/// space-separated protocol lines.
pub fn is_valid_name(s: &str) -> bool {
    // A table lookup per byte: every keyed message's client id is checked
    // on the head node and again on each data node.
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(|b| NAME_BYTES[usize::from(b)])
}

/// The longest name, in bytes (see [`is_valid_name`]).
const MAX_NAME_LEN: usize = 64;

/// The bytes a name may hold: `A-Z a-z 0-9 . _ -`.
const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
        b += 1;
    }
    table
};

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if !is_valid_name(s) {
                    return Err(ParseError::new(format!(
                        concat!("invalid ", $what, " {:?} (1-64 characters of A-Z a-z 0-9 . _ -)"),
                        truncate_for_log(s)
                    )));
                }
                Ok($name(Arc::from(s)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A data node's name: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
    NodeId,
    "node id"
);
name_type!(
    /// A data node's failure domain (a host, a rack, a zone): replicas of
    /// one message go to distinct zones when there are enough of them.
    Zone,
    "zone"
);
name_type!(
    /// A client's name for itself, the first half of every key it sends:
    /// random per client process unless given.
    ClientId,
    "client id"
);

/// A client-chosen key, `<client-id>/<seq>`: a message resent with the same
/// key is stored once per replica and answered with its original id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    /// Who sent it.
    pub client: ClientId,
    /// The client's sequence number for it.
    pub seq: u64,
}

impl MessageKey {
    /// The key as a borrowed value, for encoding.
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            client: self.client.as_str(),
            seq: self.seq,
        }
    }
}

impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.client, self.seq)
    }
}

impl FromStr for MessageKey {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = KeyRef::parse(s)?;
        Ok(MessageKey {
            client: ClientId(Arc::from(key.client)),
            seq: key.seq,
        })
    }
}

/// A [`MessageKey`] borrowed from a line: parsing one allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRef<'a> {
    /// The client id, already validated.
    pub client: &'a str,
    /// The client's sequence number.
    pub seq: u64,
}

impl<'a> KeyRef<'a> {
    /// Parses `<client-id>/<seq>`.
    pub fn parse(s: &'a str) -> Result<Self, ParseError> {
        let bad = || ParseError::new(format!("bad message key {:?}", truncate_for_log(s)));
        let at = s.bytes().rposition(|b| b == b'/').ok_or_else(bad)?;
        let (client, seq) = (&s[..at], &s[at + 1..]);
        if !is_valid_name(client) {
            return Err(bad());
        }
        Ok(KeyRef {
            client,
            seq: parse_decimal(seq).ok_or_else(bad)?,
        })
    }

    /// Appends `<client-id>/<seq>` to `buf`.
    pub fn put(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.client.as_bytes());
        buf.put_u8(b'/');
        put_u64(buf, self.seq);
    }

    /// An owned copy.
    pub fn to_key(&self) -> MessageKey {
        MessageKey {
            client: ClientId(Arc::from(self.client)),
            seq: self.seq,
        }
    }
}

impl fmt::Display for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.client, self.seq)
    }
}

/// `<epoch>-<seq>[ <client>/<seq>]: <text>`, the rest of a `mensaje` line.
fn parse_store(rest: &str) -> Result<ToDataNode<'_>, ParseError> {
    // The id and key hold no `:`: the first one ends them.
    let Some((head, text)) = split_at_first(rest, b':') else {
        return Err(ParseError::new("malformed 'mensaje' line"));
    };
    let Some(text) = text.strip_prefix(' ') else {
        return Err(ParseError::new("malformed 'mensaje' line"));
    };
    let (id, key) = match split_at_first(head, b' ') {
        Some((id, key)) => (id, Some(KeyRef::parse(key)?)),
        None => (head, None),
    };
    Ok(ToDataNode::Store {
        id: Some(id.parse()?),
        key,
        text,
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

/// Parses a plain decimal `u64` (digits only, no sign, at most 20 digits).
/// `s` split around its first `byte`, an ASCII byte: on the short fields
/// of a line a plain scan beats `split_once`'s searcher.
fn split_at_first(s: &str, byte: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == byte)?;
    Some((&s[..at], &s[at + 1..]))
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    // One pass, digits only (no sign, unlike `str::parse`), on every id
    // of every acknowledgement.
    s.bytes().try_fold(0u64, |n, b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

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

/// The role a peer announces in the third step of the head node's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `cliente`: sends messages to store, one per line, unkeyed (the
    /// original form). `cliente id=<client-id>`: every line is then `<seq>
    /// <text>`, keyed `<client-id>/<seq>` ([`parse_keyed_message`]).
    Client(Option<ClientId>),
    /// `dataNode ...`: stores messages.
    DataNode(DataNodeHello),
    /// `lector`: reads stored messages back, one request per line
    /// ([`crate::reads::ReadRequest`]).
    Reader,
}

/// What a data node says about itself when it registers.
///
/// Wire form: `dataNode id=<node-id> incarnation=<n> [nonce=<32 hex>]
/// [zone=<zone>]`; the
/// nonce opens the challenge and response of [`crate::auth`]. An
/// original-system data node sends the bare word `dataNode`; all fields are
/// then `None` and the head node names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataNodeHello {
    /// The node's chosen name.
    pub node_id: Option<NodeId>,
    /// Changes on every process start, so a restarted node is told apart from
    /// a late message of its previous life.
    pub incarnation: Option<u64>,
    /// The node's challenge to the head node, when it holds a cluster token.
    pub nonce: Option<Nonce>,
    /// The node's failure domain.
    pub zone: Option<Zone>,
    /// Names the node's data directory: made when the directory is new,
    /// so a node that comes back with an empty or different store is told
    /// apart from one that kept its data (`store=<16 hex digits>`).
    pub store: Option<u64>,
}

impl DataNodeHello {
    /// Whether this is an original-system data node (bare `dataNode`).
    pub fn is_legacy(&self) -> bool {
        self.node_id.is_none()
            && self.incarnation.is_none()
            && self.nonce.is_none()
            && self.zone.is_none()
            && self.store.is_none()
    }

    /// The role line a data node sends.
    pub fn to_line(&self) -> String {
        let mut line = String::from(ROLE_DATANODE);
        if let Some(id) = &self.node_id {
            line.push_str(&format!(" id={id}"));
        }
        if let Some(incarnation) = self.incarnation {
            line.push_str(&format!(" incarnation={incarnation}"));
        }
        if let Some(nonce) = &self.nonce {
            line.push_str(&format!(" nonce={nonce}"));
        }
        if let Some(zone) = &self.zone {
            line.push_str(&format!(" zone={zone}"));
        }
        if let Some(store) = self.store {
            line.push_str(&format!(" store={store:016x}"));
        }
        line
    }
}

impl FromStr for Role {
    type Err = ParseError;
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let mut words = line.split_whitespace();
        match words.next() {
            Some(ROLE_CLIENT) => match (words.next(), words.next()) {
                (None, _) => Ok(Role::Client(None)),
                (Some(word), None) if word.starts_with("id=") => {
                    Ok(Role::Client(Some(word["id=".len()..].parse()?)))
                }
                _ => Err(ParseError::new(format!(
                    "expected '{ROLE_CLIENT}' or '{ROLE_CLIENT} id=<client-id>', got {:?}",
                    truncate_for_log(line)
                ))),
            },
            Some(ROLE_READER) => match words.next() {
                None => Ok(Role::Reader),
                Some(_) => Err(ParseError::new(format!(
                    "expected '{ROLE_READER}' alone, got {:?}",
                    truncate_for_log(line)
                ))),
            },
            Some(ROLE_DATANODE) => {
                let mut hello = DataNodeHello::default();
                for word in words {
                    let (key, value) = word.split_once('=').ok_or_else(|| {
                        ParseError::new(format!(
                            "expected key=value in dataNode line, got {:?}",
                            truncate_for_log(word)
                        ))
                    })?;
                    match key {
                        "id" => hello.node_id = Some(value.parse()?),
                        "incarnation" => {
                            hello.incarnation = Some(value.parse().map_err(|_| {
                                ParseError::new(format!(
                                    "bad incarnation {:?}",
                                    truncate_for_log(value)
                                ))
                            })?)
                        }
                        "nonce" => hello.nonce = Some(value.parse()?),
                        "zone" => hello.zone = Some(value.parse()?),
                        "store" => {
                            hello.store = Some(
                                (value.len() == 16)
                                    .then(|| u64::from_str_radix(value, 16).ok())
                                    .flatten()
                                    .ok_or_else(|| {
                                        ParseError::new(format!(
                                            "bad store id {:?} (16 hex digits)",
                                            truncate_for_log(value)
                                        ))
                                    })?,
                            )
                        }
                        other => {
                            return Err(ParseError::new(format!(
                                "unknown dataNode field {:?}",
                                truncate_for_log(other)
                            )));
                        }
                    }
                }
                Ok(Role::DataNode(hello))
            }
            _ => Err(ParseError::new(format!(
                "expected role '{ROLE_CLIENT}', '{ROLE_READER}' or '{ROLE_DATANODE}', got {:?}",
                truncate_for_log(line)
            ))),
        }
    }
}

/// A frame sent by the head node to a data node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToDataNode<'a> {
    /// `welcome <node-id> <epoch>`: registration accepted, under this id,
    /// by a head node run with this epoch. A data node that has seen a
    /// newer epoch refuses it: it is a stale head node.
    Welcome {
        /// The node's id in the cluster.
        node: NodeId,
        /// The head node's epoch (its start time in Unix ms); only grows.
        epoch: u64,
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
    /// `withdraw <id>`: the head node sent this message elsewhere after its
    /// acknowledgement timed out. If it is not yet written, do not write it
    /// and answer `withdrawn <id>`; if it is, its `recibido` stands.
    Withdraw(MessageId),
    /// `members <node-id>...`: the data nodes the head node routes to now
    /// (sent on every change). A data node reports the last list it got to
    /// the next head node, which waits for those nodes before it serves.
    Members(Vec<NodeId>),
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
    /// (at most [`MAX_SCAN_RECORDS`]), in id order ([`MessageId`]'s order:
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
            (Some("welcome"), Some(id), Some(epoch)) if words.next().is_none() => {
                ToDataNode::Welcome {
                    node: id.parse()?,
                    epoch: parse_counter(epoch)?,
                }
            }
            (Some("withdraw"), Some(id), None) => ToDataNode::Withdraw(id.parse()?),
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
            ToDataNode::Welcome { node, epoch } => {
                buf.extend_from_slice(b"welcome ");
                buf.extend_from_slice(node.as_str().as_bytes());
                buf.put_u8(b' ');
                put_u64(buf, *epoch);
            }
            ToDataNode::Withdraw(id) => {
                buf.extend_from_slice(b"withdraw ");
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
            FromDataNode::Ready => buf.extend_from_slice(b"ready"),
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
                answer.encode(buf);
                buf.put_u8(b'\n');
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
            answer.encode(buf);
            buf.put_u8(b'\n');
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
fn parse_found(rest: &str) -> Result<FromDataNode, ParseError> {
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
/// How a data node's refusal of a head node with an older epoch starts.
pub const STALE_HEAD: &str = "stale head node";
/// Keys per `held` line of a data node's report.
pub const HELD_PER_LINE: usize = 64;
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

/// Parses ` <name> <name>...` (possibly empty) into node ids.
fn parse_names(rest: &str) -> Result<Vec<NodeId>, ParseError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(ParseError::new(format!(
            "unexpected line {:?}",
            truncate_for_log(rest)
        )));
    }
    let names: Vec<NodeId> = rest
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if names.len() > MAX_NAMES_PER_LINE {
        return Err(ParseError::new(format!(
            "more than {MAX_NAMES_PER_LINE} node ids in one line"
        )));
    }
    Ok(names)
}

/// Most node ids in one `members` or `peers` line.
pub const MAX_NAMES_PER_LINE: usize = 512;

fn put_names(nodes: &[NodeId], buf: &mut BytesMut) {
    for node in nodes {
        buf.put_u8(b' ');
        buf.extend_from_slice(node.as_str().as_bytes());
    }
}

fn parse_counter(n: &str) -> Result<u64, ParseError> {
    n.parse()
        .map_err(|_| ParseError::new(format!("bad counter {:?}", truncate_for_log(n))))
}

/// At most 80 characters of a peer's line, for error messages and logs.
///
/// Every refusal quotes the peer's text through this, so its reason stays
/// one short line whatever the peer sent.
pub fn truncate_for_log(line: &str) -> &str {
    match line.char_indices().nth(80) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u64, seq: u64) -> MessageId {
        MessageId { epoch, seq }
    }

    #[test]
    fn message_id_round_trips() {
        let original = id(1_763_876_230_123, 42);
        assert_eq!(original.to_string(), "1763876230123-42");
        assert_eq!("1763876230123-42".parse::<MessageId>().unwrap(), original);
        let mut buf = BytesMut::new();
        original.put(&mut buf);
        assert_eq!(&buf[..], b"1763876230123-42");
        assert!("12".parse::<MessageId>().is_err());
        assert!("a-1".parse::<MessageId>().is_err());
    }

    #[test]
    fn the_one_pass_store_reading_agrees_with_the_general_one() {
        let canonical = [
            "1796634734630-4: numero random: 24",
            "1796634734630-4 c-124902eec645/4: numero random: 24",
            "0-0 a/0: ",
            "9999999999999999999-9999999999999999999 x/9999999999999999999: t",
        ];
        for rest in canonical {
            let fast = parse_store_fast(rest).expect("the usual shape is read in one pass");
            assert_eq!(Ok(fast), parse_store(rest), "{rest:?}");
        }
        // Every shape built from these pieces, and every one-byte change of
        // the usual lines: whatever the one-pass reading accepts, the
        // general one reads the same way.
        let numbers = [
            "",
            "0",
            "007",
            "42",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "1-2",
            "x",
        ];
        let names = [
            "",
            "c",
            "c-1.a_b",
            &"n".repeat(64),
            &"n".repeat(65),
            "c d",
            "c:d",
            "c/d",
            "ñ",
        ];
        let mut rests = Vec::new();
        for epoch in numbers {
            for seq in numbers {
                for tail in [": t", ":t", ": ", ":", " : t", ": a: b", ""] {
                    rests.push(format!("{epoch}-{seq}{tail}"));
                    rests.push(format!("{epoch}{seq}{tail}"));
                    for name in names {
                        for key_seq in numbers {
                            rests.push(format!("{epoch}-{seq} {name}/{key_seq}{tail}"));
                        }
                        rests.push(format!("{epoch}-{seq} {name}{tail}"));
                    }
                }
            }
        }
        for line in canonical {
            for at in 0..line.len() {
                for b in [b' ', b':', b'-', b'/', b'0', b'9', b'a', b'\t', 0xC3] {
                    let mut bytes = line.as_bytes().to_vec();
                    bytes[at] = b;
                    rests.push(String::from_utf8_lossy(&bytes).into_owned());
                    bytes.remove(at);
                    rests.push(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
        }
        let mut read_fast = 0;
        for rest in &rests {
            if let Some(fast) = parse_store_fast(rest) {
                read_fast += 1;
                assert_eq!(Ok(fast), parse_store(rest), "{rest:?}");
            }
        }
        assert!(
            read_fast > 1000,
            "{read_fast} of {} read in one pass",
            rests.len()
        );
    }

    #[test]
    fn a_bad_mensaje_line_is_refused_with_what_is_wrong() {
        // Lines the one-pass reading does not take reach the general one,
        // which names the fault.
        for (line, expected) in [
            ("mensaje 1-2", "malformed 'mensaje' line"),
            ("mensaje 1-2:x", "malformed 'mensaje' line"),
            ("mensaje x-2: t", "bad message id \"x-2\""),
            ("mensaje 1-2-3: t", "bad message id \"1-2-3\""),
            (
                "mensaje 1-18446744073709551616: t",
                "bad message id \"1-18446744073709551616\"",
            ),
            ("mensaje 1-2 c d/1: t", "bad message key \"c d/1\""),
            ("mensaje 1-2 c/x: t", "bad message key \"c/x\""),
            ("mensaje 1-2 /1: t", "bad message key \"/1\""),
        ] {
            let error = ToDataNode::parse(line).unwrap_err();
            assert!(error.to_string().contains(expected), "{line}: {error}");
        }
    }

    #[test]
    fn a_name_holds_letters_digits_dot_underscore_and_dash_only() {
        for b in 0..=255u8 {
            let allowed = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
            let name = [b'a', b, b'z'];
            let name = String::from_utf8_lossy(&name);
            assert_eq!(is_valid_name(&name), allowed, "byte {b:#04x}");
        }
        assert!(is_valid_name("dn-1.rack_2"));
        assert!(!is_valid_name(""));
        assert!(is_valid_name(&"x".repeat(64)));
        assert!(!is_valid_name(&"x".repeat(65)));
        assert!(!is_valid_name("dn 1"));
        assert!(!is_valid_name("dñ"));
    }

    #[test]
    fn put_u64_writes_decimal() {
        for n in [
            0,
            7,
            10,
            99,
            100,
            101,
            999,
            1000,
            12345,
            1795413330851,
            u64::MAX,
        ] {
            let mut buf = BytesMut::new();
            put_u64(&mut buf, n);
            assert_eq!(std::str::from_utf8(&buf).unwrap(), n.to_string());
        }
    }

    #[test]
    fn node_ids_are_validated() {
        assert!("datanode-1".parse::<NodeId>().is_ok());
        assert!("host.example_2".parse::<NodeId>().is_ok());
        for bad in ["", "has space", "a,b", "ñ", &"x".repeat(65)] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn roles_parse() {
        assert_eq!("cliente".parse::<Role>().unwrap(), Role::Client(None));
        assert_eq!("lector".parse::<Role>().unwrap(), Role::Reader);
        assert_eq!(
            "cliente id=c-7f".parse::<Role>().unwrap(),
            Role::Client(Some("c-7f".parse().unwrap()))
        );
        let Role::DataNode(legacy) = "dataNode".parse::<Role>().unwrap() else {
            panic!("expected a data node");
        };
        assert!(legacy.is_legacy());
        let nonce: crate::auth::Nonce = "00112233445566778899aabbccddeeff".parse().unwrap();
        let hello = DataNodeHello {
            node_id: Some("dn1".parse().unwrap()),
            incarnation: Some(77),
            nonce: Some(nonce),
            zone: Some("rack-2".parse().unwrap()),
            store: Some(0x00ab_cdef_0123_4567),
        };
        assert_eq!(
            hello.to_line(),
            "dataNode id=dn1 incarnation=77 nonce=00112233445566778899aabbccddeeff zone=rack-2 store=00abcdef01234567"
        );
        assert_eq!(
            hello.to_line().parse::<Role>().unwrap(),
            Role::DataNode(hello.clone())
        );
        for bad in [
            "",
            "server",
            "cliente x",
            "lector x",
            "cliente id=",
            "cliente id=a b",
            "cliente id=a/b",
            "dataNode id=",
            "dataNode foo=1",
            "dataNode id",
            "dataNode id=dn1 token=s3cret-in-clear",
            "dataNode id=dn1 nonce=short",
            "dataNode id=dn1 store=123",
            "dataNode id=dn1 store=zzzzzzzzzzzzzzzz",
        ] {
            assert!(bad.parse::<Role>().is_err(), "{bad:?} should be refused");
        }
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
    fn refusals_quote_at_most_80_characters_of_the_peer_text() {
        let long = "x".repeat(10_000);
        let reasons = [
            long.parse::<MessageId>().unwrap_err(),
            format!("1-{long}").parse::<MessageId>().unwrap_err(),
            format!("{long}!").parse::<NodeId>().unwrap_err(),
            format!("dataNode id={long}").parse::<Role>().unwrap_err(),
            format!("dataNode {long}").parse::<Role>().unwrap_err(),
            format!("dataNode incarnation={long}")
                .parse::<Role>()
                .unwrap_err(),
            format!("dataNode {long}=1").parse::<Role>().unwrap_err(),
            format!("{long} x").parse::<Role>().unwrap_err(),
            ToDataNode::parse(&format!("ping {long}")).unwrap_err(),
            ToDataNode::parse(&format!("mensaje {long}: hola")).unwrap_err(),
            FromDataNode::parse(&format!("pong {long}")).unwrap_err(),
            FromDataNode::parse(&format!("fsync 1 2 {long}")).unwrap_err(),
            FromDataNode::parse(&format!("recibido {long}")).unwrap_err(),
            StoreReply::parse(&format!("dn1 , mensaje: recibido {long}")).unwrap_err(),
        ];
        for reason in reasons {
            let reason = reason.to_string();
            assert!(reason.len() < 200, "{} bytes: {reason}", reason.len());
        }
    }

    #[test]
    fn head_to_datanode_frames_round_trip() {
        let frames = [
            ToDataNode::Welcome {
                node: "dn-2".parse().unwrap(),
                epoch: 1_795_413_330_851,
            },
            ToDataNode::Withdraw(id(4, 5)),
            ToDataNode::Members(vec!["dn1".parse().unwrap(), "dn3".parse().unwrap()]),
            ToDataNode::Members(vec![]),
            ToDataNode::Store {
                id: Some(id(5, 7)),
                key: Some(KeyRef {
                    client: "c-1",
                    seq: 99,
                }),
                text: "numero random: 7: x",
            },
            ToDataNode::Challenge {
                nonce: crate::auth::Nonce::random(),
                proof: "ab".repeat(32).parse().unwrap(),
            },
            ToDataNode::Store {
                id: Some(id(5, 6)),
                key: None,
                text: "numero random: 7",
            },
            ToDataNode::Store {
                id: None,
                key: None,
                text: "numero random: 8",
            },
            ToDataNode::Store {
                id: Some(id(1, 1)),
                key: None,
                text: "text: with colons: ",
            },
            ToDataNode::Ping(3),
            ToDataNode::Bye,
            ToDataNode::Error("unauthorized"),
            ToDataNode::Get {
                req: 1,
                id: id(5, 6),
            },
            ToDataNode::GetKey {
                req: 2,
                key: KeyRef {
                    client: "c-1",
                    seq: 99,
                },
            },
            ToDataNode::Scan {
                req: 3,
                after: None,
                limit: 1000,
            },
            ToDataNode::Scan {
                req: u64::MAX,
                after: Some(id(1_795_413_330_851, 42)),
                limit: 1,
            },
        ];
        for frame in frames {
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            let text = std::str::from_utf8(&buf).unwrap();
            assert_eq!(ToDataNode::parse(text).unwrap(), frame, "{text}");
        }
        assert!(ToDataNode::parse("mensaje").is_err());
        assert!(ToDataNode::parse("mensaje x").is_err());
        assert!(ToDataNode::parse("ping").is_err());
        assert!(ToDataNode::parse("welcome dn1").is_err());
        assert!(ToDataNode::parse("mensaje 1-2 bad key: x").is_err());
        assert!(ToDataNode::parse("membersx").is_err());
        for bad in [
            "get 1",
            "get x 1-2",
            "get 1 1-2 extra",
            "getkey 1 c-1",
            "getkey 1 c 1/2",
            "scan 1 start",
            "scan 1 start 0",
            "scan 1 start -1",
            "scan 1 start 4294967296",
            "scan 1 nope 10",
            "scan 1 start 10 more",
        ] {
            assert!(ToDataNode::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ToDataNode::parse("scan 7 start 1000").unwrap(),
            ToDataNode::Scan {
                req: 7,
                after: None,
                limit: 1000
            }
        );
    }

    #[test]
    fn consecutive_acknowledgements_become_one_run_and_nothing_else_does() {
        let mut answers: Vec<FromDataNode> = [5, 6, 7, 9, 10]
            .into_iter()
            .map(|seq| FromDataNode::Stored(Some(id(1, seq))))
            .collect();
        answers.push(FromDataNode::Pong(3));
        answers.push(FromDataNode::Stored(Some(id(1, 11))));
        // Another epoch never continues a run, even with the next number.
        answers.push(FromDataNode::Stored(Some(id(2, 12))));
        answers.push(FromDataNode::Stored(None));
        let mut buf = BytesMut::new();
        FromDataNode::encode_answers(answers, &mut buf);
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            "recibidos 1-5 3\nrecibidos 1-9 2\npong 3\nrecibido 1-11\nrecibido 2-12\nrecibido\n"
        );
        let ids: Vec<u64> = std::str::from_utf8(&buf)
            .unwrap()
            .lines()
            .flat_map(|line| FromDataNode::parse(line).unwrap().stored_ids())
            .map(|id| id.seq)
            .collect();
        assert_eq!(ids, [5, 6, 7, 9, 10, 11, 12]);
    }

    #[test]
    fn a_run_must_hold_two_ids_or_more_and_stay_within_its_epoch() {
        for bad in [
            "recibidos 1-5 1",
            "recibidos 1-5 0",
            "recibidos 1-5",
            "recibidos 1-5 2 3",
            "recibidos 1-5 -2",
            "recibidos 1-5 4294967296",
            "recibidos 1-18446744073709551615 2",
        ] {
            assert!(FromDataNode::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            FromDataNode::parse("recibidos 1-18446744073709551614 2"),
            Ok(FromDataNode::StoredRun {
                first: id(1, u64::MAX - 1),
                count: 2
            })
        );
    }

    #[test]
    fn datanode_to_head_frames_round_trip() {
        let frames = [
            FromDataNode::Stored(Some(id(9, 10))),
            FromDataNode::Stored(None),
            FromDataNode::StoredRun {
                first: id(9, 20),
                count: 700,
            },
            FromDataNode::Pong(12),
            FromDataNode::Proof("0f".repeat(32).parse().unwrap()),
            FromDataNode::Leaving,
            FromDataNode::Error("disk full".into()),
            FromDataNode::AlreadyHeld {
                id: id(9, 11),
                held: id(8, 2),
            },
            FromDataNode::Withdrawn(id(9, 12)),
            FromDataNode::Held {
                client: "c-1".parse().unwrap(),
                keys: vec![(1, id(8, 2)), (2, id(8, 5))],
            },
            FromDataNode::Peers(vec!["dn2".parse().unwrap()]),
            FromDataNode::Peers(vec![]),
            FromDataNode::Ready,
            FromDataNode::Found {
                req: 4,
                record: ReadRecord {
                    id: id(9, 13),
                    key: Some("c-1/77".parse().unwrap()),
                    stored_ms: 1_795_413_331_793,
                    text: "numero random: 7 with  spaces: and - dashes ".into(),
                },
            },
            FromDataNode::Found {
                req: 5,
                record: ReadRecord {
                    id: id(9, 14),
                    key: None,
                    stored_ms: 0,
                    text: String::new(),
                },
            },
            FromDataNode::NotFound {
                req: 6,
                removed: false,
            },
            FromDataNode::NotFound {
                req: 7,
                removed: true,
            },
            FromDataNode::Scanned {
                req: 8,
                count: 1000,
                last: Some(id(9, 14)),
                more: true,
            },
            FromDataNode::Scanned {
                req: 9,
                count: 0,
                last: None,
                more: false,
            },
            FromDataNode::ReadError {
                req: 10,
                reason: "too many reads outstanding (at most 16)".into(),
            },
            FromDataNode::Fsync(FsyncReport {
                window_ms: 10_012,
                count: 4_183,
                p99_micros: Some(1_840),
            }),
            FromDataNode::Fsync(FsyncReport {
                window_ms: 5_000,
                count: 0,
                p99_micros: None,
            }),
            FromDataNode::Fsync(FsyncReport {
                window_ms: u64::MAX,
                count: u64::MAX,
                p99_micros: Some(0),
            }),
        ];
        for frame in frames {
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            let text = std::str::from_utf8(&buf).unwrap();
            assert_eq!(FromDataNode::parse(text).unwrap(), frame, "{text}");
        }
        assert!(FromDataNode::parse("recibido x").is_err());
        assert!(FromDataNode::parse("recibidos").is_err());
        for bad in [
            "found 1 9-1 0 -",
            "found x 9-1 0 - text",
            "found 1 9-1 0 bad-key text",
            "notfound",
            "notfound 1 gone",
            "scanned 1 2 9-1",
            "scanned 1 2 9-1 maybe",
            "scanned 1 4294967296 - done",
            "readerror x why",
            "fsync",
            "fsync 10000 12",
            "fsync 10000 12 1.5",
            "fsync 10000 -1 900",
            "fsync 10000 12 900 extra",
            "fsync x 12 900",
            "fsync 10000 12 ms",
        ] {
            assert!(FromDataNode::parse(bad).is_err(), "{bad}");
        }
        let mut buf = BytesMut::new();
        FromDataNode::Fsync(FsyncReport {
            window_ms: 10_000,
            count: 812,
            p99_micros: Some(1_930),
        })
        .encode(&mut buf);
        assert_eq!(&buf[..], b"fsync 10000 812 1930");
        let mut buf = BytesMut::new();
        FromDataNode::encode_found(3, id(1, 2), None, 5, b"a b", &mut buf);
        assert_eq!(&buf[..], b"found 3 1-2 5 - a b");
    }

    #[test]
    fn decimals_are_digits_only_and_fit_in_u64() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("007"), Some(7));
        assert_eq!(parse_decimal("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "18446744073709551616",
            "99999999999999999999",
            "+1",
            "-1",
            "1a",
            " 1",
            "1/",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
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
