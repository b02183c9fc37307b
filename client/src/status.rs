//! `client status`: fetches the head node's status snapshot from its HTTP
//! port (`/status.json`) and prints it as a table a person reads at a
//! glance.

use std::fmt::Write as _;
use std::time::Duration;

use protocol::status::{NodeStatus, StatusSnapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest answer read: a snapshot of 64 members, 64 departed nodes and
/// 50 events is far smaller.
const MAX_ANSWER: usize = 4 << 20;

/// Why the status could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No connection, or it broke.
    #[error("cannot reach the head node's HTTP port at {addr}: {error}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why.
        error: std::io::Error,
    },
    /// No complete answer in time.
    #[error("no answer from {0} in time")]
    Timeout(String),
    /// Not an HTTP 200 answer with a body.
    #[error("unexpected answer from {addr}: {status}")]
    BadAnswer {
        /// The address asked.
        addr: String,
        /// Its status line, or what was wrong.
        status: String,
    },
    /// The body is not a status snapshot.
    #[error("the status from {addr} is not readable: {error}")]
    BadJson {
        /// The address asked.
        addr: String,
        /// Why.
        error: serde_json::Error,
    },
}

/// `GET /status.json` from `addr` (`HOST:PORT`): the raw JSON text.
pub async fn fetch_json(addr: &str, timeout: Duration) -> Result<String, StatusError> {
    let exchange = async {
        let mut stream =
            TcpStream::connect(addr)
                .await
                .map_err(|error| StatusError::Unreachable {
                    addr: addr.to_owned(),
                    error,
                })?;
        let request = format!(
            "GET /status.json HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        let io = |error| StatusError::Unreachable {
            addr: addr.to_owned(),
            error,
        };
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        Ok(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| StatusError::Timeout(addr.to_owned()))??;
    let text = String::from_utf8_lossy(&answer);
    let bad = |status: &str| StatusError::BadAnswer {
        addr: addr.to_owned(),
        status: status.to_owned(),
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of the HTTP head"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split(' ').nth(1) != Some("200") {
        return Err(bad(status_line));
    }
    Ok(body.to_owned())
}

/// [`fetch_json`], read into a snapshot.
pub async fn fetch(addr: &str, timeout: Duration) -> Result<StatusSnapshot, StatusError> {
    let json = fetch_json(addr, timeout).await?;
    serde_json::from_str(&json).map_err(|error| StatusError::BadJson {
        addr: addr.to_owned(),
        error,
    })
}

/// The snapshot as a table, like `hdfs dfsadmin -report`.
pub fn render(s: &StatusSnapshot) -> String {
    let mut out = String::new();
    let members = s
        .nodes
        .iter()
        .filter(|n| !matches!(n.state.as_str(), "evicted" | "left"))
        .count();
    let live = s.nodes.iter().filter(|n| n.state == "live").count();
    let _ = writeln!(
        out,
        "head node  epoch {}  up {}  R={} W={}  clients {}  at {} UTC",
        s.epoch,
        duration(s.uptime_seconds),
        s.replicas,
        s.min_replicas,
        s.clients,
        s.at
    );
    let _ = writeln!(
        out,
        "data nodes {live} live of {members}  rate {:.1} msg/s (last {:.0} s)  stored {}  under-replicated {}  over-replicated {}  repair: {}",
        s.message_rate,
        s.rate_window_seconds,
        s.totals.messages_stored,
        s.totals.under_replicated,
        s.totals.over_replicated,
        s.totals.repair
    );
    out.push('\n');
    let header = [
        "NODE",
        "STATE",
        "ZONE",
        "ADDRESS",
        "INCARNATION",
        "HEARTBEAT",
        "RTT",
        "MESSAGES",
        "BYTES",
        "FSYNC P99",
        "LAST EVICTION",
    ];
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.state.to_uppercase(),
                n.zone.clone().unwrap_or_else(|| "-".into()),
                n.address.clone(),
                n.incarnation.to_string(),
                n.last_heartbeat_seconds_ago
                    .map_or("-".into(), |s| format!("{} ago", duration(s))),
                n.icmp_rtt_ms.map_or("-".into(), |ms| format!("{ms:.3}ms")),
                n.messages_stored.to_string(),
                bytes(n.bytes_stored),
                fsync_p99(n),
                n.last_eviction.as_ref().map_or("-".into(), |e| {
                    format!("{} ({} ago)", e.reason, duration(e.seconds_ago))
                }),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str], out: &mut String| {
        let mut text = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header, &mut out);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells, &mut out);
    }
    if s.nodes.is_empty() {
        out.push_str("(no data nodes)\n");
    }
    if !s.recent_events.is_empty() {
        out.push_str("\nrecent events (newest last):\n");
        let start = s.recent_events.len().saturating_sub(10);
        for e in &s.recent_events[start..] {
            let _ = writeln!(out, "  {}  {}", e.at, e.detail);
        }
    }
    out
}

/// The fsync column: the node's recent p99, `no fsyncs` when it reported
/// a window without any, `-` when it reports nothing.
fn fsync_p99(n: &NodeStatus) -> String {
    match (n.fsync_p99_ms, n.fsyncs_in_window) {
        (Some(ms), _) => format!("{ms:.2}ms"),
        (None, Some(0)) => "no fsyncs".into(),
        _ => "-".into(),
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 86_400.0 {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else {
        format!(
            "{}d{:02}h",
            (s / 86_400.0) as u64,
            ((s % 86_400.0) / 3600.0) as u64
        )
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::status::{Eviction, Totals};

    #[test]
    fn the_table_has_one_row_per_node_with_its_eviction() {
        let node = |id: &str, state: &str| NodeStatus {
            id: id.into(),
            zone: None,
            address: "10.0.0.2".into(),
            state: state.into(),
            incarnation: 7,
            last_heartbeat_seconds_ago: (state == "live").then_some(0.4),
            icmp_rtt_ms: Some(0.081),
            messages_stored: 12,
            bytes_stored: 3000,
            fsync_p99_ms: (state == "live").then_some(1.834),
            fsyncs_in_window: (state == "live").then_some(4_180),
            fsync_window_seconds: (state == "live").then_some(10.2),
            last_eviction: (state == "evicted").then(|| Eviction {
                reason: "hung".into(),
                detail: "dn2 10.0.0.2 hung, eliminado".into(),
                at: "2026-11-24 12:00:00,000".into(),
                seconds_ago: 75.0,
            }),
        };
        let snapshot = StatusSnapshot {
            at: "2026-11-24 12:01:15,000".into(),
            epoch: 42,
            uptime_seconds: 3700.0,
            replicas: 2,
            min_replicas: 2,
            clients: 1,
            message_rate: 12.5,
            rate_window_seconds: 5.0,
            nodes: vec![node("dn1", "live"), node("dn2", "evicted")],
            totals: Totals {
                messages_stored: 10,
                under_replicated: 0,
                over_replicated: 1,
                repair_in_progress: false,
                repair: "idle; first check 30s after start".into(),
                repair_pass: None,
            },
            recent_events: Vec::new(),
        };
        let table = render(&snapshot);
        assert!(table.contains("data nodes 1 live of 1"), "{table}");
        assert!(
            table.contains("repair: idle; first check 30s after start"),
            "{table}"
        );
        let dn2 = table.lines().find(|l| l.starts_with("dn2")).unwrap();
        assert!(dn2.contains("EVICTED"), "{table}");
        assert!(dn2.contains("hung (1m15s ago)"), "{table}");
        let header = table.lines().find(|l| l.starts_with("NODE")).unwrap();
        let column = header.find("FSYNC P99").unwrap();
        let dn1 = table.lines().find(|l| l.starts_with("dn1")).unwrap();
        assert_eq!(&dn1[column..column + 6], "1.83ms", "{table}");
        assert_eq!(&dn2[column..column + 2], "- ", "{table}");
        let idle = NodeStatus {
            fsync_p99_ms: None,
            fsyncs_in_window: Some(0),
            ..node("dn3", "live")
        };
        assert_eq!(fsync_p99(&idle), "no fsyncs");
        assert!(table.contains("2.9KiB"), "{table}");
        assert_eq!(duration(3700.0), "1h01m");
    }
}
