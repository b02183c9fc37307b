//! Reading stored messages back through the head node, as a reader
//! (`lector`): `client get` and `client tail`.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use node_kit::backoff::Backoff;
use protocol::connection::Connection;
use protocol::datanode::ReadRecord;
use protocol::handshake::ROLE_READER;
use protocol::ids::{MessageId, MessageKey, NodeId};
use protocol::reader::{MAX_TAIL_LIMIT, ReadReply, ReadRequest};
use tracing::warn;

use crate::session::{self, ClientError, ConnectOptions};

/// How long one answer may take to start arriving.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No live data node holds it.
    #[error("{what} not found{}", if *.removed { " (removed by retention)" } else { "" })]
    NotFound {
        /// What was asked for.
        what: String,
        /// Retention removed it.
        removed: bool,
    },
    /// The head node answered `ERROR <reason>`.
    #[error("the head node could not serve it: {0}")]
    Refused(String),
    /// A data node that could hold it did not answer (`ERROR unavailable:
    /// ...` to a `get`, `ERROR incomplete: ...` to a `tail`): not a
    /// definite answer; asking again may get one.
    #[error("not a definite answer, try again: {0}")]
    Unavailable(String),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The connection failed or closed mid-answer.
    #[error("connection to the head node lost: {0}")]
    Lost(String),
    /// The head node sent something unexpected.
    #[error("unexpected answer from the head node: {0}")]
    Protocol(String),
    /// Writing the output failed (a closed pipe, say).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl ReadError {
    /// Why the head node answered `ERROR <reason>`: retryable or not.
    fn from_error(reason: String) -> Self {
        if ReadReply::is_retryable_error(&reason) {
            ReadError::Unavailable(reason)
        } else {
            ReadError::Refused(reason)
        }
    }
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Output(e)
    }
}

/// What `client get` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A message id.
    Id(MessageId),
    /// A client key.
    Key(MessageKey),
}

/// A message read back, and the data nodes that hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The record.
    pub record: ReadRecord,
    /// Live data nodes that answered with it.
    pub holders: Vec<NodeId>,
}

/// Connection options for a reader of `server`.
pub fn reader_options(mut connect: ConnectOptions) -> ConnectOptions {
    connect.role = Some(ROLE_READER.to_owned());
    // An answer carries a message's text and a little more.
    connect.max_line = connect
        .max_line
        .saturating_add(protocol::datanode::READ_LINE_OVERHEAD);
    connect
}

async fn next_reply(conn: &mut Connection) -> Result<ReadReply, ReadError> {
    let line = tokio::time::timeout(ANSWER_TIMEOUT, conn.reader.read_frame())
        .await
        .map_err(|_| ReadError::Lost(format!("no answer within {ANSWER_TIMEOUT:?}")))?
        .map_err(|e| ReadError::Lost(e.to_string()))?
        .ok_or_else(|| ReadError::Lost("closed by the head node".into()))?;
    ReadReply::parse(line.as_str()).map_err(|e| ReadError::Protocol(e.to_string()))
}

async fn send(conn: &mut Connection, request: &ReadRequest) -> Result<(), ReadError> {
    conn.writer
        .send(request.to_string().as_bytes())
        .await
        .map_err(|e| ReadError::Lost(e.to_string()))
}

/// The ids of the first stored messages, at most `limit` (1 to
/// [`MAX_TAIL_LIMIT`]), in id order: one `tail start <limit>` on a reader
/// connection.
pub async fn first_ids(conn: &mut Connection, limit: u32) -> Result<Vec<MessageId>, ReadError> {
    let request = ReadRequest::Tail {
        after: None,
        limit: limit.clamp(1, MAX_TAIL_LIMIT),
        since_ms: None,
    };
    send(conn, &request).await?;
    let mut ids = Vec::new();
    loop {
        match next_reply(conn).await? {
            ReadReply::Found { record, .. } => ids.push(record.id),
            ReadReply::End { .. } => return Ok(ids),
            ReadReply::Error(reason) => return Err(ReadError::from_error(reason)),
            other => return Err(ReadError::Protocol(format!("{other:?}"))),
        }
    }
}

/// Reads one message by id or key from any live data node.
pub async fn get(connect: &ConnectOptions, wanted: &Wanted) -> Result<Found, ReadError> {
    let mut conn = session::connect(&reader_options(connect.clone())).await?;
    let request = match wanted {
        Wanted::Id(id) => ReadRequest::Get(*id),
        Wanted::Key(key) => ReadRequest::GetKey(key.clone()),
    };
    send(&mut conn, &request).await?;
    match next_reply(&mut conn).await? {
        ReadReply::Found { record, holders } => Ok(Found { record, holders }),
        ReadReply::NotFound { what, removed } => Err(ReadError::NotFound { what, removed }),
        ReadReply::Error(reason) => Err(ReadError::from_error(reason)),
        other => Err(ReadError::Protocol(format!("{other:?}"))),
    }
}

/// What `client tail` does.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Where and how to connect.
    pub connect: ConnectOptions,
    /// Only ids greater than this.
    pub after: Option<MessageId>,
    /// Only messages stored at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// Keep polling for new messages.
    pub follow: bool,
    /// Pause between polls when following.
    pub poll: Duration,
    /// Records per request (1 to [`MAX_TAIL_LIMIT`]).
    pub batch: u32,
}

impl TailOptions {
    /// Every message, once, polling every 200 ms if following.
    pub fn new(connect: ConnectOptions) -> Self {
        TailOptions {
            connect,
            after: None,
            since_ms: None,
            follow: false,
            poll: Duration::from_millis(200),
            batch: MAX_TAIL_LIMIT,
        }
    }
}

/// Pause before asking again after `ERROR incomplete`, at first; it
/// doubles (with jitter) up to [`INCOMPLETE_MAX_BACKOFF`].
pub const INCOMPLETE_MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two requests answered `ERROR incomplete`.
pub const INCOMPLETE_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Prints every stored message once, in id order, through `on_record`,
/// until caught up (or, following, until `stop`). Returns the last id
/// printed. While following, a lost connection is made again and the tail
/// goes on after the last id printed. An answer `ERROR incomplete` (a data
/// node that could hold the next messages could not be read) is asked
/// again from the last id printed, after a backoff: for as long as
/// `retry_for` of the connect options when not following (then it fails
/// with [`ReadError::Unavailable`]), until `stop` when following. Nothing
/// is printed twice and nothing skipped.
pub async fn tail(
    options: &TailOptions,
    mut on_record: impl FnMut(&Found) -> std::io::Result<()>,
    stop: impl Future<Output = ()>,
) -> Result<Option<MessageId>, ReadError> {
    tokio::pin!(stop);
    let connect = reader_options(options.connect.clone());
    let batch = options.batch.clamp(1, MAX_TAIL_LIMIT);
    let mut after = options.after;
    let mut conn = session::connect(&connect).await?;
    let mut backoff = Backoff::new(
        INCOMPLETE_MIN_BACKOFF,
        INCOMPLETE_MAX_BACKOFF,
        rand::make_rng(),
    );
    // Since when every answer has been `incomplete`.
    let mut incomplete_since: Option<tokio::time::Instant> = None;
    loop {
        let request = ReadRequest::Tail {
            after,
            limit: batch,
            since_ms: options.since_ms,
        };
        let served = async {
            send(&mut conn, &request).await?;
            loop {
                match next_reply(&mut conn).await? {
                    ReadReply::Found { record, holders } => {
                        if after.is_some_and(|a| record.id <= a) {
                            return Err(ReadError::Protocol(format!(
                                "{} after {}: out of order",
                                record.id,
                                after.map(|a| a.to_string()).unwrap_or_default()
                            )));
                        }
                        after = Some(record.id);
                        on_record(&Found { record, holders })?;
                    }
                    ReadReply::End { cursor, more, .. } => {
                        if cursor.is_some_and(|c| after.is_none_or(|a| c > a)) {
                            after = cursor;
                        }
                        return Ok(more);
                    }
                    ReadReply::Error(reason) => return Err(ReadError::from_error(reason)),
                    other => return Err(ReadError::Protocol(format!("{other:?}"))),
                }
            }
        };
        let more = tokio::select! {
            _ = &mut stop => return Ok(after),
            served = served => served,
        };
        if !matches!(more, Err(ReadError::Unavailable(_))) {
            incomplete_since = None;
            backoff.reset();
        }
        match more {
            Ok(true) => continue,
            Ok(false) if !options.follow => return Ok(after),
            Ok(false) => {}
            Err(ReadError::Unavailable(reason)) => {
                let since = *incomplete_since.get_or_insert_with(tokio::time::Instant::now);
                if !options.follow && since.elapsed() >= connect.retry_for {
                    return Err(ReadError::Unavailable(reason));
                }
                let delay = backoff.next_delay();
                warn!(reason, retry_in = ?delay, "tail incomplete: asking again from the last id printed");
                tokio::select! {
                    _ = &mut stop => return Ok(after),
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            Err(ReadError::Lost(why)) if options.follow => {
                warn!(error = %why, "lost the head node; reconnecting to follow on");
                conn = tokio::select! {
                    _ = &mut stop => return Ok(after),
                    conn = session::connect(&connect) => conn?,
                };
                continue;
            }
            Err(ReadError::Refused(reason)) if options.follow => {
                // No data node now, the head node busy: try again.
                warn!(reason, "tail request refused; trying again");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = &mut stop => return Ok(after),
            _ = tokio::time::sleep(options.poll) => {}
        }
    }
}

/// `2026-11-24T10:00:00.123Z`: a time in Unix ms, in UTC.
pub fn utc(ms: u64) -> String {
    let stamp = node_kit::timefmt::timestamp(UNIX_EPOCH + Duration::from_millis(ms));
    format!("{}Z", stamp.replacen(' ', "T", 1).replacen(',', ".", 1))
}

/// Parses `--since`: Unix milliseconds (12 digits or more), a UTC time
/// (`2026-11-24T10:00:00Z`, optionally with `.mmm`), or a duration ago
/// (`10m`, `90s`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<u64, String> {
    if text.len() >= 12 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("bad time {text:?}"));
    }
    if let Some(utc) = text.strip_suffix('Z')
        && utc.contains('T')
    {
        let mut asctime = utc.replacen('T', " ", 1).replacen('.', ",", 1);
        if asctime.len() == 19 {
            asctime.push_str(",000");
        }
        return node_kit::timefmt::parse_timestamp_millis(&asctime)
            .ok_or_else(|| format!("bad UTC time {text:?} (expected 2026-11-24T10:00:00Z)"));
    }
    let ago = node_kit::cli::parse_duration(text).map_err(|e| {
        format!("bad --since {text:?}: a Unix ms time, a UTC time like 2026-11-24T10:00:00Z, or a duration ago ({e})")
    })?;
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    Ok(now_ms.saturating_sub(ago.as_millis() as u64))
}

/// One line of `client tail`: `<id> <stored UTC> <key>|- <text>`.
pub fn tail_line(found: &Found) -> String {
    let r = &found.record;
    let key = r.key.as_ref().map_or("-".to_owned(), ToString::to_string);
    format!("{} {} {key} {}", r.id, utc(r.stored_ms), r.text)
}

/// One JSON object for `--json`.
pub fn to_json(found: &Found) -> String {
    let r = &found.record;
    serde_json::json!({
        "id": r.id.to_string(),
        "stored_ms": r.stored_ms,
        "stored": utc(r.stored_ms),
        "key": r.key.as_ref().map(ToString::to_string),
        "holders": found.holders.iter().map(NodeId::as_str).collect::<Vec<_>>(),
        "text": r.text,
    })
    .to_string()
}

/// What `client get` prints.
pub fn describe(found: &Found) -> String {
    let r = &found.record;
    let holders: Vec<&str> = found.holders.iter().map(NodeId::as_str).collect();
    format!(
        "id:      {}\nkey:     {}\nstored:  {} ({} ms)\nholders: {}\ntext:    {}\n",
        r.id,
        r.key.as_ref().map_or("-".to_owned(), ToString::to_string),
        utc(r.stored_ms),
        r.stored_ms,
        holders.join(" "),
        r.text
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_and_parse_in_utc() {
        assert_eq!(utc(1_795_413_331_793), "2026-11-23T05:55:31.793Z");
        let now = UNIX_EPOCH + Duration::from_millis(1_795_413_331_793);
        assert_eq!(
            parse_since("1795413331793", now).unwrap(),
            1_795_413_331_793
        );
        assert_eq!(
            parse_since("2026-11-23T05:55:31.793Z", now).unwrap(),
            1_795_413_331_793
        );
        assert_eq!(
            parse_since("2026-11-23T05:55:31Z", now).unwrap(),
            1_795_413_331_000
        );
        assert_eq!(parse_since("10s", now).unwrap(), 1_795_413_321_793);
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("2026-13-24T03:15:31Z", now).is_err());
    }

    #[test]
    fn lines_show_id_time_key_and_text() {
        let found = Found {
            record: ReadRecord {
                id: "5-6".parse().unwrap(),
                key: Some("c-1/2".parse().unwrap()),
                stored_ms: 1_795_413_331_793,
                text: "hola  mundo".into(),
            },
            holders: vec!["dn1".parse().unwrap(), "dn2".parse().unwrap()],
        };
        assert_eq!(
            tail_line(&found),
            "5-6 2026-11-23T05:55:31.793Z c-1/2 hola  mundo"
        );
        let json: serde_json::Value = serde_json::from_str(&to_json(&found)).unwrap();
        assert_eq!(json["holders"][1], "dn2");
        assert!(describe(&found).contains("holders: dn1 dn2"));
    }
}
