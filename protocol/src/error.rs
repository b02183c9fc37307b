//! Typed errors of the protocol layer, and the error line that carries
//! them: `ERROR <reason>`.
//!
//! Each variant's `Display` is the reason sent to the peer after `ERROR `, so
//! it is one short line a person can act on.

use std::io;

/// Prefix of every error line.
pub const ERROR_PREFIX: &str = "ERROR ";

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

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A line was longer than the limit. Fatal: where the next line starts
    /// is unknown, so the connection must close.
    #[error("line too long (max {max} bytes)")]
    LineTooLong {
        /// The configured limit.
        max: usize,
    },
    /// A complete line was not valid UTF-8. Not fatal: the line was
    /// consumed whole and the next one can be read.
    #[error("invalid UTF-8")]
    InvalidUtf8,
}

impl FrameError {
    /// Whether the stream can no longer be split into frames reliably.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::LineTooLong { .. })
    }
}

/// A line was a well-formed frame but not a valid message at that point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    /// An error with the given reason.
    pub fn new(reason: impl Into<String>) -> Self {
        ParseError(reason.into())
    }
}

/// Reading from a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes did not form a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer closed the connection in the middle of a line.
    #[error("connection closed mid-line ({buffered} bytes unread)")]
    ClosedMidLine {
        /// Bytes of the unfinished line.
        buffered: usize,
    },
    /// A line was left unfinished for longer than the line timeout.
    #[error("line not finished within {after:?} ({buffered} bytes received)")]
    LineTimedOut {
        /// The configured line timeout.
        after: std::time::Duration,
        /// Bytes of the unfinished line.
        buffered: usize,
    },
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ReadError {
    /// Whether the connection must be closed after this error.
    pub fn is_fatal(&self) -> bool {
        match self {
            ReadError::Frame(e) => e.is_fatal(),
            ReadError::ClosedMidLine { .. } | ReadError::LineTimedOut { .. } | ReadError::Io(_) => {
                true
            }
        }
    }
}

/// The opening handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer did not finish the handshake in time.
    #[error("handshake timed out after {0:?}")]
    TimedOut(std::time::Duration),
    /// The peer closed the connection during the handshake.
    #[error("peer closed the connection during the handshake")]
    Closed,
    /// The peer sent something other than the expected step.
    #[error("{0}")]
    Unexpected(#[from] ParseError),
    /// The server answered with an `ERROR` line.
    #[error("refused by server: {0}")]
    Refused(String),
    /// Reading or writing failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Read(ReadError::Io(e))
    }
}

#[cfg(test)]
mod tests {
    use crate::client::StoreReply;
    use crate::datanode::{FromDataNode, ToDataNode};
    use crate::handshake::Role;
    use crate::ids::{MessageId, NodeId};

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
}
