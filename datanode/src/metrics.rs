//! The data node's Prometheus metrics, on its HTTP port (`--http-listen`,
//! off by default): `/metrics` and `/healthz`.
//!
//! The data-path thread adds to plain atomics once per batch (records,
//! bytes, fsyncs and their duration, keys held); a scrape reads them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::{Registry, Unit};
use protocol::http::{Request, Response};
use protocol::metrics::{self, AtomicHistogram, LATENCY_BUCKETS};
use std::time::Instant;

/// What this process has written, for `/metrics`.
#[derive(Debug)]
pub struct NodeMetrics {
    started: Instant,
    records: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    fsync: AtomicHistogram,
    keys: AtomicU64,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            started: Instant::now(),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync: AtomicHistogram::new(LATENCY_BUCKETS),
            keys: AtomicU64::new(0),
        }
    }
}

impl NodeMetrics {
    /// A committed batch of `records` records, `bytes` long.
    pub(crate) fn committed(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One successful `fdatasync`, and how long it took.
    pub(crate) fn synced(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync.observe(took);
    }

    /// Keys held now.
    pub(crate) fn set_keys(&self, keys: usize) {
        self.keys.store(keys as u64, Ordering::Relaxed);
    }

    /// The 99th percentile of fsync durations (a bucket's upper bound).
    pub fn fsync_p99(&self) -> Option<Duration> {
        self.fsync.quantile_bound(0.99)
    }
}

#[derive(Debug)]
struct Scrape(Arc<NodeMetrics>);

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metrics::counter(
            &mut e,
            "msgstore_datanode_records_written",
            "Records written to data.txt (and synced, per --fsync).",
            None,
            read(&m.records),
        )?;
        metrics::counter(
            &mut e,
            "msgstore_datanode_written",
            "Bytes written to data.txt.",
            Some(&Unit::Bytes),
            read(&m.bytes),
        )?;
        metrics::counter(
            &mut e,
            "msgstore_datanode_fsyncs",
            "Successful fdatasync calls on data.txt.",
            None,
            read(&m.fsyncs),
        )?;
        metrics::histogram(
            &mut e,
            "msgstore_datanode_fsync_duration",
            "Duration of each fdatasync of data.txt.",
            Some(&Unit::Seconds),
            &m.fsync,
        )?;
        metrics::gauge(
            &mut e,
            "msgstore_datanode_keys_held",
            "Client keys held to answer resends with their first id.",
            None,
            read(&m.keys) as i64,
        )?;
        metrics::process(&mut e, "data node", m.started.elapsed())
    }
}

/// Answers the data node's HTTP endpoints.
pub(crate) fn handle(metrics: &Arc<NodeMetrics>, request: &Request) -> Response {
    match request.path.as_str() {
        "/metrics" => {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(Scrape(metrics.clone())));
            Response::ok(metrics::CONTENT_TYPE, metrics::encode(&registry))
        }
        "/healthz" => Response::text(200, "ok"),
        _ => Response::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DataFile, FsyncPolicy};

    #[test]
    fn metrics_show_what_was_written_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        data.stage(None, None, b"uno");
        data.stage(None, None, b"dos");
        data.commit().unwrap();
        data.metrics.set_keys(7);
        let response = handle(
            &data.metrics(),
            &Request {
                path: "/metrics".into(),
                query: None,
            },
        );
        let protocol::http::Body::Full { bytes, .. } = response.body else {
            panic!("a full body");
        };
        let text = String::from_utf8(bytes).unwrap();
        let written = std::fs::metadata(data.path()).unwrap().len();
        assert!(
            text.contains("msgstore_datanode_records_written_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "msgstore_datanode_written_bytes_total {written}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("msgstore_datanode_fsyncs_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("msgstore_datanode_fsync_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(text.contains("msgstore_datanode_keys_held 7\n"), "{text}");
        assert!(text.contains("msgstore_log_lines_dropped_total "), "{text}");
        assert!(data.metrics().fsync_p99().is_some());
        let health = handle(
            &data.metrics(),
            &Request {
                path: "/healthz".into(),
                query: None,
            },
        );
        assert_eq!(health.status, 200);
    }
}
