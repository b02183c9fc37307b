//! `client store`: Activity 2's client. Sends `numero random: N` (or a fixed
//! text) to the head node under keys `<client-id>/<seq>`, keeps up to
//! `pipeline` messages in flight, and logs every answer as `Servidor
//! recibio: <answer> key=<client-id>/<seq>`.
//!
//! Nothing is given up on lightly, and nothing is stored twice: a message
//! answered `ERROR no data nodes available`, `ERROR not enough data nodes
//! ...` or `ERROR outcome unknown: ...` is sent again with the same key after
//! a backoff (for at most `retry_for`), and when the connection drops, every
//! message not yet answered is sent again with the same key on the next one
//! (in order). The head node answers a key it has seen with the original id.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use node_kit::backoff::Backoff;
use protocol::client::encode_keyed_message;
use protocol::handshake::ROLE_CLIENT;
use protocol::ids::ClientId;
use rand::RngExt;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::reply::{self, Answer, KeyLedger, Verdict};
use crate::session::{self, ClientError, ConnectOptions};

/// Settings of a store run.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where to connect; the role is set to `cliente id=<client-id>`.
    pub connect: ConnectOptions,
    /// The client id of every key; `None` picks a random one
    /// ([`reply::random_client_id`]).
    pub client_id: Option<ClientId>,
    /// Pause between new messages; zero sends as fast as the pipeline allows.
    pub interval: Duration,
    /// Stop once this many messages are answered (or failed for good).
    pub count: Option<u64>,
    /// Messages in flight at once.
    pub pipeline: usize,
    /// Fixed text instead of `numero random: N`.
    pub message: Option<String>,
}

/// What a store run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreSummary {
    /// The client id of the run's keys.
    pub client_id: String,
    /// Messages answered as stored.
    pub answered: u64,
    /// Messages the head node refused for good (for example, too long), or
    /// that kept being refused for longer than `retry_for`.
    pub failed: u64,
    /// Sends of a message after its first (same key).
    pub resent: u64,
    /// Resends answered with the id an earlier send of the key was given:
    /// the first send was stored and its answer lost. Expected.
    pub answered_with_earlier_id: u64,
    /// A key answered with two different ids, or one id given to two keys:
    /// a bug (of the head node, or in the pairing of answers with messages).
    pub conflicting_ids: u64,
    /// Connections lost and made again.
    pub reconnects: u64,
}

struct Pending {
    seq: u64,
    text: String,
    /// Times sent so far.
    sends: u32,
    /// When the head node first answered it with a retryable error.
    refused_since: Option<Instant>,
}

/// First and longest pause after a retryable error answer.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Runs until `count` messages are settled or `shutdown`.
pub async fn run(
    mut config: StoreConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<StoreSummary, ClientError> {
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(reply::random_client_id);
    config.connect.role = Some(format!("{ROLE_CLIENT} id={client_id}"));
    info!(client_id = %client_id, server = %config.connect.server, "store client starting");
    let pipeline = config.pipeline.max(1);
    let mut summary = StoreSummary {
        client_id: client_id.to_string(),
        ..StoreSummary::default()
    };
    let mut ledger = KeyLedger::default();
    let mut next_seq = 1u64;
    // Sent on the current connection and not yet answered, in order; at
    // most `pipeline`.
    let mut unanswered: VecDeque<Pending> = VecDeque::with_capacity(pipeline);
    // To send: messages to send again first, then new ones; at most
    // `pipeline` (only sent messages come back here).
    let mut to_send: VecDeque<Pending> = VecDeque::new();
    let mut ticker = tokio::time::interval(config.interval.max(Duration::from_micros(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut allowance = 0u64;
    let mut retry_backoff = Backoff::new(RETRY_BACKOFF.0, RETRY_BACKOFF.1, rand::make_rng());
    let mut hold_until: Option<Instant> = None;
    let mut line = BytesMut::new();
    tokio::pin!(shutdown);

    'connection: loop {
        let mut conn = tokio::select! {
            _ = &mut shutdown => return Ok(summary),
            conn = session::connect(&config.connect) => conn?,
        };
        // Unanswered messages of the lost connection go first, in order.
        if !unanswered.is_empty() {
            info!(
                messages = unanswered.len(),
                first_key = %format_args!("{client_id}/{}", unanswered[0].seq),
                "sending again, with the same keys, the messages the lost connection left unanswered"
            );
        }
        while let Some(pending) = unanswered.pop_back() {
            to_send.push_front(pending);
        }

        loop {
            let settled = summary.answered + summary.failed;
            if config.count.is_some_and(|count| settled >= count) {
                return Ok(summary);
            }
            let in_hold = hold_until.is_some_and(|until| Instant::now() < until);
            if !in_hold {
                hold_until = None;
                while unanswered.len() < pipeline {
                    let mut next = match to_send.pop_front() {
                        Some(pending) => pending,
                        None => {
                            let generated = next_seq - 1;
                            let may_generate = config.count.is_none_or(|count| generated < count)
                                && (config.interval.is_zero() || allowance > 0);
                            if !may_generate {
                                break;
                            }
                            allowance = allowance.saturating_sub(1);
                            let seq = next_seq;
                            next_seq += 1;
                            Pending {
                                seq,
                                text: next_text(&config),
                                sends: 0,
                                refused_since: None,
                            }
                        }
                    };
                    if next.sends > 0 {
                        summary.resent += 1;
                    }
                    next.sends += 1;
                    line.clear();
                    encode_keyed_message(next.seq, next.text.as_bytes(), &mut line);
                    conn.writer.queue(&line);
                    unanswered.push_back(next);
                }
            }
            let generation_waits =
                config.count.is_none_or(|count| next_seq - 1 < count) && !config.interval.is_zero();
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(summary),
                flushed = conn.writer.flush(), if conn.writer.pending() > 0 => {
                    if let Err(e) = flushed {
                        warn!(error = %e, unanswered = unanswered.len(), "connection to the head node lost while sending; reconnecting");
                        summary.reconnects += 1;
                        continue 'connection;
                    }
                }
                frame = conn.reader.read_frame(), if !unanswered.is_empty() => {
                    let answer = match frame {
                        Ok(Some(answer)) => answer,
                        Ok(None) | Err(protocol::ReadError::Io(_)) | Err(protocol::ReadError::ClosedMidLine { .. }) => {
                            warn!(unanswered = unanswered.len(), "connection to the head node lost; reconnecting");
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
                    let Some(mut pending) = unanswered.pop_front() else { continue };
                    let key = format!("{client_id}/{}", pending.seq);
                    let class = reply::classify(answer.as_str()).map_err(|e| ClientError::Protocol {
                        server: config.connect.server.clone(),
                        reason: format!("answer to {key}: {e}"),
                    })?;
                    match class {
                        Answer::Stored { id, .. } => {
                            info!("Servidor recibio: {} key={key}", answer.as_str());
                            summary.answered += 1;
                            retry_backoff.reset();
                            match ledger.record(pending.seq, id, pending.sends) {
                                Verdict::New => {}
                                Verdict::EarlierId => {
                                    summary.answered_with_earlier_id += 1;
                                    info!(key = %key, %id, sends = pending.sends, "resend answered with the id of an earlier send");
                                }
                                Verdict::Conflict => {
                                    summary.conflicting_ids += 1;
                                    error!(key = %key, %id, "conflicting ids: this key or this id was answered differently before");
                                }
                            }
                        }
                        Answer::Retry(reason) => {
                            warn!("Servidor recibio: {} key={key}", answer.as_str());
                            let now = Instant::now();
                            let since = *pending.refused_since.get_or_insert(now);
                            if now.duration_since(since) >= config.connect.retry_for {
                                warn!(key = %key, %reason, refused_for = ?now.duration_since(since), "message still refused after --retry-for; giving up on it");
                                summary.failed += 1;
                                continue;
                            }
                            let delay = retry_backoff.next_delay();
                            hold_until = Some(now + delay);
                            // Answers arrive in order: the rest of the window
                            // will be sent again after it, keeping the order.
                            to_send.push_back(pending);
                        }
                        Answer::Refused(reason) => {
                            warn!("Servidor recibio: {} key={key}", answer.as_str());
                            warn!(key = %key, %reason, "message refused for good");
                            summary.failed += 1;
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
