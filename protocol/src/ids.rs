//! Ids, names and keys: what identifies a message, a data node, a zone and
//! a client on the wire, and the decimal numbers lines carry.
//!
//! Each is parsed once, at the edge, into a typed value; a name follows one
//! rule everywhere ([`is_valid_name`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::BufMut;

use crate::error::{ParseError, truncate_for_log};

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
pub(crate) const MAX_NAME_LEN: usize = 64;

/// The bytes a name may hold: `A-Z a-z 0-9 . _ -`.
pub(crate) const NAME_BYTES: [bool; 256] = {
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

/// `s` split around its first `byte`, an ASCII byte: on the short fields
/// of a line a plain scan beats `split_once`'s searcher.
pub(crate) fn split_at_first(s: &str, byte: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == byte)?;
    Some((&s[..at], &s[at + 1..]))
}

/// Parses a plain decimal `u64` (digits only, no sign, at most 20 digits).
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
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

/// Parses a counter in a line: a request number, a ping's number, an epoch.
pub(crate) fn parse_counter(n: &str) -> Result<u64, ParseError> {
    n.parse()
        .map_err(|_| ParseError::new(format!("bad counter {:?}", truncate_for_log(n))))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

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
}
