//! Mutual authentication of a data node and its head node with a shared
//! cluster token, by challenge and response: the token itself never
//! crosses the wire.
//!
//! ```text
//! data node                                   head node
//!  | dataNode id=<id> incarnation=<n> nonce=<Nn>   -->  |
//!  | <--   challenge <Nh> <HMAC(token, head | Nn Nh id n)> |   the head proves it knows the token
//!  | proof <HMAC(token, node | Nn Nh id n)>        -->  |   the node proves it knows the token
//!  | <--                                 welcome <id>     |
//! ```
//!
//! Each side picks a fresh random nonce, so a recorded exchange cannot be
//! replayed, and each proof carries a different label, so a head node's
//! answer can never be passed off as a data node's. Proofs are HMAC-SHA256
//! and are compared in constant time. This authenticates peers; it does not
//! encrypt the connection, so run the cluster on a private network.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ParseError;

/// Shortest accepted cluster token, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest accepted cluster token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 1024;

const HEAD_LABEL: &[u8] = b"msgstore head proof v1";
const NODE_LABEL: &[u8] = b"msgstore node proof v1";

/// The shared secret of a cluster. Its `Debug` output is redacted and it has
/// no `Display`, so it cannot end up in a log line or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken(Box<[u8]>);

/// A cluster token could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Too short to resist guessing.
    #[error("cluster token too short ({len} bytes; at least {MIN_TOKEN_BYTES})")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Unreasonably long.
    #[error("cluster token too long ({len} bytes; at most {MAX_TOKEN_BYTES})")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// It contains whitespace or control characters inside it.
    #[error("cluster token contains whitespace or control characters")]
    BadCharacters,
    /// The token file could not be read.
    #[error("cannot read the cluster token file {path}: {error}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

impl ClusterToken {
    /// A token from its text. Surrounding whitespace (a file's trailing
    /// newline) is ignored.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_BYTES {
            return Err(TokenError::TooShort { len: text.len() });
        }
        if text.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong { len: text.len() });
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::BadCharacters);
        }
        Ok(ClusterToken(text.as_bytes().into()))
    }

    /// A token read from a file (for example a Docker secret).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|error| TokenError::File {
            path: path.to_owned(),
            error,
        })?;
        ClusterToken::new(&text)
    }

    /// The head node's proof for this exchange.
    pub fn head_proof(&self, exchange: &Exchange<'_>) -> Proof {
        self.prove(HEAD_LABEL, exchange)
    }

    /// The data node's proof for this exchange.
    pub fn node_proof(&self, exchange: &Exchange<'_>) -> Proof {
        self.prove(NODE_LABEL, exchange)
    }

    /// The data node's side of a challenge: its proof for this exchange, but
    /// only if `head_proof` shows the head node knows the token too. `None`
    /// means it does not, and the node must not answer, so a data node
    /// never proves anything to a head node it has not authenticated.
    pub fn answer_challenge(&self, exchange: &Exchange<'_>, head_proof: &Proof) -> Option<Proof> {
        self.verify_head(exchange, head_proof)
            .then(|| self.node_proof(exchange))
    }

    /// Whether `proof` is the head node's proof for this exchange (constant time).
    pub fn verify_head(&self, exchange: &Exchange<'_>, proof: &Proof) -> bool {
        self.mac(HEAD_LABEL, exchange)
            .verify_slice(&proof.0)
            .is_ok()
    }

    /// Whether `proof` is the data node's proof for this exchange (constant time).
    pub fn verify_node(&self, exchange: &Exchange<'_>, proof: &Proof) -> bool {
        self.mac(NODE_LABEL, exchange)
            .verify_slice(&proof.0)
            .is_ok()
    }

    fn prove(&self, label: &[u8], exchange: &Exchange<'_>) -> Proof {
        Proof(self.mac(label, exchange).finalize().into_bytes().into())
    }

    fn mac(&self, label: &[u8], exchange: &Exchange<'_>) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        // Every field is fixed-length or followed by a separator that
        // cannot occur in it, so two different exchanges never feed the
        // MAC the same bytes.
        mac.update(label);
        mac.update(&[0]);
        mac.update(exchange.node_id.as_bytes());
        mac.update(&[0]);
        mac.update(exchange.incarnation.to_string().as_bytes());
        mac.update(&[0]);
        mac.update(&exchange.node_nonce.0);
        mac.update(&exchange.head_nonce.0);
        mac
    }
}

impl fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterToken(<redacted>)")
    }
}

/// What both proofs of one registration are bound to.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The data node's id, as it registered.
    pub node_id: &'a str,
    /// The data node's incarnation, as it registered.
    pub incarnation: u64,
    /// The data node's nonce.
    pub node_nonce: &'a Nonce,
    /// The head node's nonce.
    pub head_nonce: &'a Nonce,
}

/// 16 random bytes, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; 16]);

impl Nonce {
    /// A fresh random nonce.
    pub fn random() -> Self {
        Nonce(rand::random())
    }

    /// A nonce drawn from `rng` (a seeded one gives reproducible runs).
    pub fn from_rng<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Nonce(bytes)
    }
}

/// An HMAC-SHA256 proof, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Proof([u8; 32]);

macro_rules! hex_bytes {
    ($ty:ident, $len:literal, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for byte in self.0 {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($ty))
            }
        }

        impl FromStr for $ty {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let bad = || {
                    ParseError::new(format!(
                        concat!("bad ", $what, " (expected {} hex digits)"),
                        2 * $len
                    ))
                };
                if s.len() != 2 * $len {
                    return Err(bad());
                }
                let mut bytes = [0u8; $len];
                for (i, byte) in bytes.iter_mut().enumerate() {
                    let pair = s.get(2 * i..2 * i + 2).ok_or_else(bad)?;
                    *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
                }
                Ok($ty(bytes))
            }
        }
    };
}

hex_bytes!(Nonce, 16, "nonce");
hex_bytes!(Proof, 32, "proof");

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> ClusterToken {
        ClusterToken::new(text).unwrap()
    }

    #[test]
    fn each_side_verifies_the_others_proof_only_with_the_same_token() {
        let (node_nonce, head_nonce) = (Nonce::random(), Nonce::random());
        let exchange = Exchange {
            node_id: "dn1",
            incarnation: 7,
            node_nonce: &node_nonce,
            head_nonce: &head_nonce,
        };
        let ours = token("correct-horse-battery-staple");
        let theirs = token("correct-horse-battery-stapl3");
        assert!(ours.verify_head(&exchange, &ours.head_proof(&exchange)));
        assert!(ours.verify_node(&exchange, &ours.node_proof(&exchange)));
        assert!(!ours.verify_head(&exchange, &theirs.head_proof(&exchange)));
        assert_eq!(
            ours.answer_challenge(&exchange, &ours.head_proof(&exchange)),
            Some(ours.node_proof(&exchange))
        );
        assert_eq!(
            ours.answer_challenge(&exchange, &theirs.head_proof(&exchange)),
            None,
            "no proof for a head node that does not know the token"
        );
        assert!(!ours.verify_node(&exchange, &theirs.node_proof(&exchange)));
    }

    #[test]
    fn a_head_proof_is_never_a_node_proof() {
        let (a, b) = (Nonce::random(), Nonce::random());
        let exchange = Exchange {
            node_id: "dn1",
            incarnation: 1,
            node_nonce: &a,
            head_nonce: &b,
        };
        let t = token("0123456789abcdef");
        assert!(!t.verify_node(&exchange, &t.head_proof(&exchange)));
    }

    #[test]
    fn proofs_are_bound_to_the_node_id_incarnation_and_both_nonces() {
        let (a, b, c) = (Nonce::random(), Nonce::random(), Nonce::random());
        let t = token("0123456789abcdef");
        let base = Exchange {
            node_id: "dn1",
            incarnation: 1,
            node_nonce: &a,
            head_nonce: &b,
        };
        let proof = t.node_proof(&base);
        for other in [
            Exchange {
                node_id: "dn2",
                ..base
            },
            Exchange {
                incarnation: 2,
                ..base
            },
            Exchange {
                node_nonce: &c,
                ..base
            },
            Exchange {
                head_nonce: &c,
                ..base
            },
        ] {
            assert!(!t.verify_node(&other, &proof), "{other:?}");
        }
    }

    #[test]
    fn tokens_are_validated_and_never_shown() {
        assert!(matches!(
            ClusterToken::new("short"),
            Err(TokenError::TooShort { len: 5 })
        ));
        assert!(matches!(
            ClusterToken::new("has a space inside it"),
            Err(TokenError::BadCharacters)
        ));
        let t = token("  s3cret-s3cret-s3cret\n");
        assert_eq!(t, token("s3cret-s3cret-s3cret"));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn nonces_and_proofs_round_trip_as_hex() {
        let nonce = Nonce::random();
        let text = nonce.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<Nonce>().unwrap(), nonce);
        assert!("xyz".parse::<Nonce>().is_err());
        assert!("zz".repeat(16).parse::<Nonce>().is_err());
        assert!("é".repeat(16).parse::<Nonce>().is_err());
    }
}
