//! The seed's opening handshake, one implementation for every server and peer.
//!
//! ```text
//! peer                      server
//!  | peticion  ------------> |
//!  | <--------- confirmacion |
//!  | cliente | dataNode ... > |   (head node only: the role step)
//! ```

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::connection::{FrameReader, FrameWriter, close_with_error};
use crate::error::{HandshakeError, ParseError, ReadError};
use crate::message::{CONFIRMACION, ERROR_PREFIX, PETICION, Role, truncate_for_log};

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
