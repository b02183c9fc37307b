//! The seed's opening handshake, one implementation for every server and peer.
//!
//! ```text
//! peer                      server
//!  | peticion  ------------> |
//!  | <--------- confirmacion |
//!  | cliente | dataNode ... > |   (head node only: the role step)
//! ```
//!
//! The role words and [`Role`], what the third step names, live here too.

use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::connection::{FrameReader, FrameWriter, close_with_error};
use crate::datanode::DataNodeHello;
use crate::error::{ERROR_PREFIX, HandshakeError, ParseError, ReadError, truncate_for_log};
use crate::ids::ClientId;

/// First word of every handshake, sent by the connecting peer.
pub const PETICION: &str = "peticion";
/// The server's answer to [`PETICION`].
pub const CONFIRMACION: &str = "confirmacion";
/// Role of a peer that sends messages to be stored.
pub const ROLE_CLIENT: &str = "cliente";
/// Role of a peer that stores messages.
pub const ROLE_DATANODE: &str = "dataNode";
/// Role of a peer that reads stored messages back (see [`crate::reader`]).
pub const ROLE_READER: &str = "lector";

/// The role a peer announces in the third step of the head node's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `cliente`: sends messages to store, one per line, unkeyed (the
    /// original form). `cliente id=<client-id>`: every line is then
    /// `<seq> <text>`, keyed `<client-id>/<seq>`
    /// ([`crate::client::parse_keyed_message`]).
    Client(Option<ClientId>),
    /// `dataNode ...`: stores messages; the fields that follow are the
    /// data node's [`DataNodeHello`].
    DataNode(DataNodeHello),
    /// `lector`: reads stored messages back, one request per line
    /// ([`crate::reader::ReadRequest`]).
    Reader,
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
            Some(ROLE_DATANODE) => Ok(Role::DataNode(DataNodeHello::from_fields(words)?)),
            _ => Err(ParseError::new(format!(
                "expected role '{ROLE_CLIENT}', '{ROLE_READER}' or '{ROLE_DATANODE}', got {:?}",
                truncate_for_log(line)
            ))),
        }
    }
}

/// Default time a peer has to finish the handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the server expects the third, role step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleStep {
    /// Echo server: `peticion` / `confirmacion` only.
    None,
    /// Head node: the peer then names its role.
    Required,
}

/// Server side. Waits for `peticion`, answers `confirmacion` in the peer's
/// framing, and (with [`RoleStep::Required`]) reads the role.
///
/// On failure the peer is sent `ERROR <reason>` (best effort) and the
/// caller should close the connection.
pub async fn accept<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    role_step: RoleStep,
    timeout: Duration,
) -> Result<Option<Role>, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let result = tokio::time::timeout(timeout, accept_steps(reader, writer, role_step))
        .await
        .unwrap_or(Err(HandshakeError::TimedOut(timeout)));
    if let Err(error) = &result {
        // A peer whose socket failed or closed cannot read a reason; one that
        // sent too long a line, or stalled mid-line, can.
        let reason = match error {
            HandshakeError::Read(ReadError::Io(_) | ReadError::ClosedMidLine { .. })
            | HandshakeError::Closed => None,
            other => Some(other.to_string()),
        };
        if let Some(reason) = reason {
            close_with_error(reader, writer, &reason).await;
        }
    }
    result
}

async fn accept_steps<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    role_step: RoleStep,
) -> Result<Option<Role>, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let first = reader.read_frame().await?.ok_or(HandshakeError::Closed)?;
    if first.as_str() != PETICION {
        return Err(ParseError::new(format!(
            "expected '{PETICION}', got {:?}",
            truncate_for_log(first.as_str())
        ))
        .into());
    }
    writer.match_framing(reader.framing());
    writer.send(CONFIRMACION.as_bytes()).await?;
    match role_step {
        RoleStep::None => Ok(None),
        RoleStep::Required => {
            let line = reader.read_frame().await?.ok_or(HandshakeError::Closed)?;
            Ok(Some(line.as_str().parse()?))
        }
    }
}

/// Peer side. Sends `peticion`, expects an answer that starts with
/// `confirmacion`, then sends `role_line` if given. Returns the server's
/// confirmation text.
pub async fn initiate<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    role_line: Option<&str>,
    timeout: Duration,
) -> Result<String, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let steps = async {
        writer.send(PETICION.as_bytes()).await?;
        let answer = reader.read_frame().await?.ok_or(HandshakeError::Closed)?;
        let answer = answer.as_str();
        if let Some(reason) = answer.strip_prefix(ERROR_PREFIX) {
            return Err(HandshakeError::Refused(reason.to_owned()));
        }
        if !answer.starts_with(CONFIRMACION) {
            return Err(ParseError::new(format!(
                "expected '{CONFIRMACION}', got {:?}",
                truncate_for_log(answer)
            ))
            .into());
        }
        if let Some(role) = role_line {
            writer.send(role.as_bytes()).await?;
        }
        Ok(answer.to_owned())
    };
    tokio::time::timeout(timeout, steps)
        .await
        .unwrap_or(Err(HandshakeError::TimedOut(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{Framing, ReaderConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

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
            epoch: Some(12),
        };
        assert_eq!(
            hello.to_line(),
            "dataNode id=dn1 incarnation=77 nonce=00112233445566778899aabbccddeeff zone=rack-2 store=00abcdef01234567 epoch=12"
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
            "dataNode id=dn1 epoch=-1",
            "dataNode id=dn1 epoch=",
        ] {
            assert!(bad.parse::<Role>().is_err(), "{bad:?} should be refused");
        }
    }

    #[tokio::test]
    async fn client_and_server_agree() {
        let (client_side, server_side) = duplex(1024);
        let (sr, sw) = tokio::io::split(server_side);
        let (cr, cw) = tokio::io::split(client_side);
        let server = tokio::spawn(async move {
            let mut reader = FrameReader::detecting(sr, ReaderConfig::default(), b"peticion");
            let mut writer = FrameWriter::new(sw);
            accept(
                &mut reader,
                &mut writer,
                RoleStep::Required,
                Duration::from_secs(5),
            )
            .await
        });
        let mut reader = FrameReader::lines(cr, 1024);
        let mut writer = FrameWriter::new(cw);
        let confirmation = initiate(
            &mut reader,
            &mut writer,
            Some("cliente"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(confirmation, "confirmacion");
        assert_eq!(server.await.unwrap().unwrap(), Some(Role::Client(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn original_peer_gets_bare_confirmacion() {
        let (mut peer, server_side) = duplex(1024);
        let (sr, sw) = tokio::io::split(server_side);
        let server = tokio::spawn(async move {
            let mut reader = FrameReader::detecting(sr, ReaderConfig::default(), b"peticion");
            let mut writer = FrameWriter::new(sw);
            let role = accept(
                &mut reader,
                &mut writer,
                RoleStep::Required,
                Duration::from_secs(5),
            )
            .await;
            (role, reader.framing())
        });
        peer.write_all(b"peticion").await.unwrap();
        let mut answer = [0u8; 64];
        let n = peer.read(&mut answer).await.unwrap();
        assert_eq!(&answer[..n], b"confirmacion", "exact string, no newline");
        peer.write_all(b"dataNode").await.unwrap();
        let (role, framing) = server.await.unwrap();
        assert!(matches!(role.unwrap(), Some(Role::DataNode(hello)) if hello.is_legacy()));
        assert_eq!(framing, Framing::Unterminated);
    }

    #[tokio::test]
    async fn garbage_first_line_is_refused_with_error() {
        let (mut peer, server_side) = duplex(1024);
        let (sr, sw) = tokio::io::split(server_side);
        let server = tokio::spawn(async move {
            let mut reader = FrameReader::detecting(sr, ReaderConfig::default(), b"peticion");
            let mut writer = FrameWriter::new(sw);
            accept(
                &mut reader,
                &mut writer,
                RoleStep::None,
                Duration::from_secs(5),
            )
            .await
        });
        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut answer = String::new();
        peer.read_to_string(&mut answer).await.unwrap_or_default();
        assert!(answer.starts_with("ERROR expected 'peticion'"), "{answer}");
        assert!(matches!(
            server.await.unwrap(),
            Err(HandshakeError::Unexpected(_))
        ));
    }

    #[tokio::test]
    async fn too_long_a_first_line_is_answered_with_the_reason() {
        let (mut peer, server_side) = duplex(4096);
        let (sr, sw) = tokio::io::split(server_side);
        let server = tokio::spawn(async move {
            let config = ReaderConfig {
                max_line: 16,
                ..ReaderConfig::default()
            };
            let mut reader = FrameReader::detecting(sr, config, b"peticion");
            let mut writer = FrameWriter::new(sw);
            accept(
                &mut reader,
                &mut writer,
                RoleStep::None,
                Duration::from_secs(5),
            )
            .await
        });
        peer.write_all(&[b'x'; 100]).await.unwrap();
        let mut answer = String::new();
        peer.read_to_string(&mut answer).await.unwrap_or_default();
        assert_eq!(answer, "ERROR line too long (max 16 bytes)\n");
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (_peer, server_side) = duplex(1024);
        let (sr, sw) = tokio::io::split(server_side);
        let mut reader = FrameReader::detecting(sr, ReaderConfig::default(), b"peticion");
        let mut writer = FrameWriter::new(sw);
        let result = accept(
            &mut reader,
            &mut writer,
            RoleStep::None,
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(result, Err(HandshakeError::TimedOut(_))));
    }
}
