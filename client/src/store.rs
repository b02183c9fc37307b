//! `client store`: Activity 2's client. Sends `numero random: N` (or a fixed
//! text) to the head node, keeps up to `pipeline` messages in flight, and
//! logs every answer as `Servidor recibio: <answer>`.
//!
//! Nothing is given up on: a message answered `ERROR no data nodes
//! available` or `ERROR outcome unknown: ...` is sent again after a
//! backoff, and when the connection drops,
//! every message not yet acknowledged is sent again on the next one (in
//! order). A message may therefore be stored twice, never lost.

use std::collections::VecDeque;
use std::time::Duration;

use protocol::backoff::Backoff;
use protocol::message::{NO_DATA_NODES, OUTCOME_UNKNOWN, ROLE_CLIENT, StoreReply};
use rand::RngExt;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::session::{self, ClientError, ConnectOptions};

/// Settings of a store run.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where to connect; the role is set to `cliente`.
    pub connect: ConnectOptions,
    /// Pause between new messages; zero sends as fast as the pipeline allows.
    pub interval: Duration,
    /// Stop once this many messages are acknowledged (or failed for good).
    pub count: Option<u64>,
    /// Messages in flight at once.
    pub pipeline: usize,
    /// Fixed text instead of `numero random: N`.
    pub message: Option<String>,
}

/// What a store run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreSummary {
    /// Messages acknowledged as stored.
    pub acknowledged: u64,
    /// Messages the head node refused for good (for example, too long).
    pub failed: u64,
    /// Times a message was sent again (no data node, or a lost connection).
    pub resent: u64,
    /// Connections lost and made again.
    pub reconnects: u64,
}

struct Pending {
    text: String,
}

/// Runs until `count` messages are settled or `shutdown`.
pub async fn run(
    mut config: StoreConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<StoreSummary, ClientError> {
    config.connect.role = Some(ROLE_CLIENT);
    let pipeline = config.pipeline.max(1);
    let mut summary = StoreSummary::default();
    let mut generated = 0u64;
    // Sent on the current connection and not yet answered, in order.
    let mut unanswered: VecDeque<Pending> = VecDeque::new();
    // To send: messages to retry first, then new ones.
    let mut to_send: VecDeque<Pending> = VecDeque::new();
    let mut ticker = tokio::time::interval(config.interval.max(Duration::from_micros(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut allowance = 0u64;
    let mut no_nodes_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut hold_until: Option<Instant> = None;
    tokio::pin!(shutdown);

    'connection: loop {
        let mut conn = tokio::select! {
            _ = &mut shutdown => return Ok(summary),
            conn = session::connect(&config.connect) => conn?,
        };
        // Unanswered messages of the lost connection go first, in order.
        if !unanswered.is_empty() {
            summary.resent += unanswered.len() as u64;
            info!(
                messages = unanswered.len(),
                "sending again the messages the lost connection left unanswered"
            );
        }
        while let Some(pending) = unanswered.pop_back() {
            to_send.push_front(pending);
        }

        loop {
            let settled = summary.acknowledged + summary.failed;
            if config.count.is_some_and(|count| settled >= count) {
                return Ok(summary);
            }
            let in_hold = hold_until.is_some_and(|until| Instant::now() < until);
            if !in_hold {
                hold_until = None;
                while unanswered.len() < pipeline {
                    let next = match to_send.pop_front() {
                        Some(pending) => pending,
                        None => {
                            let may_generate = config.count.is_none_or(|count| generated < count)
                                && (config.interval.is_zero() || allowance > 0);
                            if !may_generate {
                                break;
                            }
                            generated += 1;
                            allowance = allowance.saturating_sub(1);
                            Pending {
                                text: next_text(&config),
                            }
                        }
                    };
                    conn.writer.queue(next.text.as_bytes());
                    unanswered.push_back(next);
                }
            }
            let generation_waits =
                config.count.is_none_or(|count| generated < count) && !config.interval.is_zero();
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(summary),
                flushed = conn.writer.flush(), if conn.writer.pending() > 0 => {
                    if let Err(e) = flushed {
                        warn!(error = %e, "connection lost; reconnecting");
                        summary.reconnects += 1;
                        continue 'connection;
                    }
                }
                frame = conn.reader.read_frame(), if !unanswered.is_empty() => {
                    let line = match frame {
                        Ok(Some(line)) => line,
                        Ok(None) | Err(protocol::ReadError::Io(_)) | Err(protocol::ReadError::ClosedMidLine { .. }) => {
                            warn!(unanswered = unanswered.len(), "head node connection lost; reconnecting");
                            summary.reconnects += 1;
                            continue 'connection;
                        }
                        Err(e) => {
                            return Err(ClientError::Protocol {
                                server: config.connect.server.clone(),
                                reason: e.to_string(),
                            });
                        }
                    };
                    let Some(pending) = unanswered.pop_front() else { continue };
                    match StoreReply::parse(line.as_str()) {
                        Ok(StoreReply::Stored { .. }) => {
                            info!("Servidor recibio: {}", line.as_str());
                            summary.acknowledged += 1;
                            no_nodes_backoff.reset();
                        }
                        // Nothing stored, or perhaps stored by a data node that
                        // failed before acknowledging: sending it again may
                        // store it twice (same text, another id), never lose it.
                        Ok(StoreReply::Error(reason))
                            if reason == NO_DATA_NODES || reason.starts_with(OUTCOME_UNKNOWN) =>
                        {
                            warn!("Servidor recibio: {}", line.as_str());
                            let delay = no_nodes_backoff.next_delay();
                            hold_until = Some(Instant::now() + delay);
                            summary.resent += 1;
                            // Answers arrive in order: the rest of the window
                            // will be retried after it, keeping the order.
                            to_send.push_back(pending);
                        }
                        Ok(StoreReply::Error(reason)) => {
                            warn!("Servidor recibio: {}", line.as_str());
                            warn!(%reason, message = %pending.text, "message refused for good");
                            summary.failed += 1;
                        }
                        Err(e) => {
                            return Err(ClientError::Protocol {
                                server: config.connect.server.clone(),
                                reason: e.to_string(),
                            });
                        }
                    }
                }
                _ = ticker.tick(), if generation_waits => allowance = (allowance + 1).min(pipeline as u64),
                _ = tokio::time::sleep_until(hold_until.unwrap_or_else(Instant::now)), if hold_until.is_some() => {}
            }
        }
    }
}

fn next_text(config: &StoreConfig) -> String {
    match &config.message {
        Some(text) => text.clone(),
        None => format!("numero random: {}", rand::rng().random_range(0..=100u8)),
    }
}
