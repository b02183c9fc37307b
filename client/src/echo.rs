//! `client echo`: Activity 1's client. Every `interval` it sends
//! `numero random: N` (N uniform in 0..=100) and logs the echo as
//! `Servidor recibio: <reply>`.

use std::time::Duration;

use protocol::ReadError;
use rand::RngExt;
use tracing::{info, warn};

use crate::session::{self, ClientError, ConnectOptions};

/// Settings of an echo run.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Where to connect.
    pub connect: ConnectOptions,
    /// Pause between messages.
    pub interval: Duration,
    /// Stop after this many echoes; `None` runs until shutdown.
    pub count: Option<u64>,
}

/// What an echo run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EchoSummary {
    /// Messages sent and echoed back.
    pub echoed: u64,
    /// Echoes that differed from what was sent.
    pub mismatched: u64,
    /// Times the connection was lost and made again.
    pub reconnects: u64,
}

/// Runs the echo client until `count` echoes or `shutdown`.
pub async fn run(
    config: EchoConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<EchoSummary, ClientError> {
    tokio::pin!(shutdown);
    let mut summary = EchoSummary::default();
    let mut ticker = tokio::time::interval(config.interval.max(Duration::from_micros(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    'connection: loop {
        let mut conn = tokio::select! {
            _ = &mut shutdown => return Ok(summary),
            conn = session::connect(&config.connect) => conn?,
        };
        loop {
            if config.count.is_some_and(|count| summary.echoed >= count) {
                return Ok(summary);
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(summary),
                _ = ticker.tick() => {}
            }
            let number: u8 = rand::rng().random_range(0..=100);
            let message = format!("numero random: {number}");
            let reply = async {
                conn.writer.send(message.as_bytes()).await?;
                conn.reader.read_frame().await
            };
            match reply.await {
                Ok(Some(reply)) => {
                    summary.echoed += 1;
                    info!("Servidor recibio: {}", reply.as_str());
                    if reply.as_str() != message {
                        summary.mismatched += 1;
                        warn!(sent = %message, "echo differs from the message sent");
                    }
                }
                Ok(None) => {
                    warn!(server = %config.connect.server, "server closed the connection; reconnecting");
                    summary.reconnects += 1;
                    continue 'connection;
                }
                Err(ReadError::Io(e)) => {
                    warn!(server = %config.connect.server, error = %e, "connection lost; reconnecting");
                    summary.reconnects += 1;
                    continue 'connection;
                }
                Err(e) => {
                    return Err(ClientError::Protocol {
                        server: config.connect.server.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
}
