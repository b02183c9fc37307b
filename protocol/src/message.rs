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
/// A data node's acknowledgement that a message is written.
pub const RECIBIDO: &str = "recibido";
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
        let (epoch, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(MessageId {
            epoch: epoch.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
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

/// A data node's name: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, so it
/// fits in logs, file names and space-separated protocol lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if s.is_empty() || s.len() > 64 || !s.chars().all(valid_char) {
            return Err(ParseError::new(format!(
                "invalid node id {:?} (1-64 characters of A-Z a-z 0-9 . _ -)",
                truncate_for_log(s)
            )));
        }
        Ok(NodeId(Arc::from(s)))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The role a peer announces in the third step of the head node's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `cliente`: sends messages to store.
    Client,
    /// `dataNode ...`: stores messages.
    DataNode(DataNodeHello),
}

/// What a data node says about itself when it registers.
///
/// Wire form: `dataNode id=<node-id> incarnation=<n> [nonce=<32 hex>]`; the
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
}

impl DataNodeHello {
    /// Whether this is an original-system data node (bare `dataNode`).
    pub fn is_legacy(&self) -> bool {
        self.node_id.is_none() && self.incarnation.is_none() && self.nonce.is_none()
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
        line
    }
}

impl FromStr for Role {
    type Err = ParseError;
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let mut words = line.split_whitespace();
        match words.next() {
            Some(ROLE_CLIENT) if words.next().is_none() => Ok(Role::Client),
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
                "expected role '{ROLE_CLIENT}' or '{ROLE_DATANODE}', got {:?}",
                truncate_for_log(line)
            ))),
        }
    }
}

/// A frame sent by the head node to a data node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToDataNode<'a> {
    /// `welcome <node-id>`: registration accepted, under this id.
    Welcome(NodeId),
    /// `challenge <head-nonce> <head-proof>`: the head node proves it knows
    /// the cluster token and asks the data node to prove it too.
    Challenge {
        /// The head node's nonce.
        nonce: Nonce,
        /// The head node's proof.
        proof: Proof,
    },
    /// `mensaje <id>: <text>`: store this message. Original-system data nodes
    /// get `mensaje: <text>`, without the id.
    Store {
        /// The id the head node assigned.
        id: Option<MessageId>,
        /// The client's text.
        text: &'a str,
    },
    /// `ping <n>`: application heartbeat; answer `pong <n>`.
    Ping(u64),
    /// `bye`: the head node has drained this node after it asked to leave.
    Bye,
    /// `ERROR <reason>`.
    Error(&'a str),
}

impl<'a> ToDataNode<'a> {
    /// Appends `mensaje <id>: <text>` (or `mensaje: <text>` without an id)
    /// from text that is already known to be UTF-8.
    pub fn encode_store(id: Option<MessageId>, text: &[u8], buf: &mut BytesMut) {
        buf.reserve(text.len() + 40);
        match id {
            Some(id) => {
                buf.extend_from_slice(b"mensaje ");
                id.put(buf);
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
                return Ok(ToDataNode::Store { id: None, text });
            }
            if let Some(rest) = rest.strip_prefix(' ')
                && let Some((id, text)) = rest.split_once(": ")
            {
                return Ok(ToDataNode::Store {
                    id: Some(id.parse()?),
                    text,
                });
            }
            return Err(ParseError::new("malformed 'mensaje' line"));
        }
        if let Some(reason) = line.strip_prefix(ERROR_PREFIX) {
            return Ok(ToDataNode::Error(reason));
        }
        let mut words = line.split(' ');
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some("welcome"), Some(id), None) => ToDataNode::Welcome(id.parse()?),
            (Some("challenge"), Some(nonce), Some(proof)) if words.next().is_none() => {
                ToDataNode::Challenge {
                    nonce: nonce.parse()?,
                    proof: proof.parse()?,
                }
            }
            (Some("ping"), Some(n), None) => ToDataNode::Ping(parse_counter(n)?),
            (Some("bye"), None, None) => ToDataNode::Bye,
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
            ToDataNode::Welcome(id) => {
                buf.extend_from_slice(b"welcome ");
                buf.extend_from_slice(id.as_str().as_bytes());
            }
            ToDataNode::Challenge { nonce, proof } => {
                buf.extend_from_slice(format!("challenge {nonce} {proof}").as_bytes());
            }
            ToDataNode::Store { id, text } => ToDataNode::encode_store(*id, text.as_bytes(), buf),
            ToDataNode::Ping(n) => {
                buf.extend_from_slice(b"ping ");
                put_u64(buf, *n);
            }
            ToDataNode::Bye => buf.extend_from_slice(b"bye"),
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
    /// `recibido <id>`: the message is written. Original-system data nodes
    /// send a bare `recibido` (id `None`), for the one message they hold.
    Stored(Option<MessageId>),
    /// `pong <n>`: answer to `ping <n>`.
    Pong(u64),
    /// `proof <node-proof>`: the data node's answer to a challenge.
    Proof(Proof),
    /// `bye`: the node is shutting down; send it nothing new.
    Leaving,
    /// `ERROR <reason>`.
    Error(String),
}

impl FromDataNode {
    /// Parses one line received from a data node.
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        if let Some(reason) = line.strip_prefix(ERROR_PREFIX) {
            return Ok(FromDataNode::Error(reason.to_owned()));
        }
        let mut words = line.split(' ');
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some(RECIBIDO), None, None) => FromDataNode::Stored(None),
            (Some(RECIBIDO), Some(id), None) => FromDataNode::Stored(Some(id.parse()?)),
            (Some("pong"), Some(n), None) => FromDataNode::Pong(parse_counter(n)?),
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
            FromDataNode::Pong(n) => {
                buf.extend_from_slice(b"pong ");
                put_u64(buf, *n);
            }
            FromDataNode::Proof(proof) => {
                buf.extend_from_slice(format!("proof {proof}").as_bytes());
            }
            FromDataNode::Leaving => buf.extend_from_slice(b"bye"),
            FromDataNode::Error(reason) => {
                buf.extend_from_slice(ERROR_PREFIX.as_bytes());
                buf.extend_from_slice(reason.as_bytes());
            }
        }
    }
}

/// The head node's answer to one client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReply {
    /// `<node-id> , mensaje: recibido <id>`: stored by that data node.
    Stored {
        /// The data node whose `data.txt` holds the message.
        node: String,
        /// The message id, as written in that `data.txt`.
        id: MessageId,
    },
    /// `ERROR <reason>`: not stored.
    Error(String),
}

/// The error reason a client gets when no data node can take its message.
pub const NO_DATA_NODES: &str = "no data nodes available";
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
            node: node.to_owned(),
            id: rest.parse()?,
        })
    }

    /// Appends the `Stored` reply text to `buf` without allocating.
    pub fn encode_stored(node: &NodeId, id: MessageId, buf: &mut BytesMut) {
        buf.reserve(node.as_str().len() + 64);
        buf.extend_from_slice(node.as_str().as_bytes());
        buf.extend_from_slice(b" , mensaje: recibido ");
        id.put(buf);
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
        assert_eq!("cliente".parse::<Role>().unwrap(), Role::Client);
        let Role::DataNode(legacy) = "dataNode".parse::<Role>().unwrap() else {
            panic!("expected a data node");
        };
        assert!(legacy.is_legacy());
        let nonce: crate::auth::Nonce = "00112233445566778899aabbccddeeff".parse().unwrap();
        let hello = DataNodeHello {
            node_id: Some("dn1".parse().unwrap()),
            incarnation: Some(77),
            nonce: Some(nonce),
        };
        assert_eq!(
            hello.to_line(),
            "dataNode id=dn1 incarnation=77 nonce=00112233445566778899aabbccddeeff"
        );
        assert_eq!(
            hello.to_line().parse::<Role>().unwrap(),
            Role::DataNode(hello.clone())
        );
        for bad in [
            "",
            "server",
            "cliente x",
            "dataNode id=",
            "dataNode foo=1",
            "dataNode id",
            "dataNode id=dn1 token=s3cret-in-clear",
            "dataNode id=dn1 nonce=short",
        ] {
            assert!(bad.parse::<Role>().is_err(), "{bad:?} should be refused");
        }
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
            ToDataNode::Welcome("dn-2".parse().unwrap()),
            ToDataNode::Challenge {
                nonce: crate::auth::Nonce::random(),
                proof: "ab".repeat(32).parse().unwrap(),
            },
            ToDataNode::Store {
                id: Some(id(5, 6)),
                text: "numero random: 7",
            },
            ToDataNode::Store {
                id: None,
                text: "numero random: 8",
            },
            ToDataNode::Store {
                id: Some(id(1, 1)),
                text: "text: with colons: ",
            },
            ToDataNode::Ping(3),
            ToDataNode::Bye,
            ToDataNode::Error("unauthorized"),
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
    }

    #[test]
    fn datanode_to_head_frames_round_trip() {
        let frames = [
            FromDataNode::Stored(Some(id(9, 10))),
            FromDataNode::Stored(None),
            FromDataNode::Pong(12),
            FromDataNode::Proof("0f".repeat(32).parse().unwrap()),
            FromDataNode::Leaving,
            FromDataNode::Error("disk full".into()),
        ];
        for frame in frames {
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            let text = std::str::from_utf8(&buf).unwrap();
            assert_eq!(FromDataNode::parse(text).unwrap(), frame, "{text}");
        }
        assert!(FromDataNode::parse("recibido x").is_err());
        assert!(FromDataNode::parse("recibidos").is_err());
    }

    #[test]
    fn store_reply_round_trips() {
        let mut buf = BytesMut::new();
        StoreReply::encode_stored(&"dn1".parse().unwrap(), id(3, 4), &mut buf);
        let text = std::str::from_utf8(&buf).unwrap();
        assert_eq!(text, "dn1 , mensaje: recibido 3-4");
        assert_eq!(
            StoreReply::parse(text).unwrap(),
            StoreReply::Stored {
                node: "dn1".into(),
                id: id(3, 4)
            }
        );
        assert_eq!(
            StoreReply::parse("ERROR no data nodes available").unwrap(),
            StoreReply::Error(NO_DATA_NODES.into())
        );
        assert!(StoreReply::parse("hello").is_err());
    }
}
