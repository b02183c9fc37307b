//! The data node's Prometheus metrics, on its HTTP port (`--http-listen`,
//! off by default): `/metrics` and `/healthz`.
//!
//! The data-path thread adds to plain atomics once per batch (records,
//! bytes, fsyncs and their duration, keys held), the read thread once per
//! read (reads answered, records scanned); a scrape reads them. The
//! same fsync histogram gives the latency the node reports to the head
//! node (`FsyncWindow`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use node_kit::http::{Request, Response};
use node_kit::metrics::{self, AtomicHistogram, HistogramSnapshot, LATENCY_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::{Registry, Unit};
use protocol::datanode::FsyncReport;
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
    /// Reads answered, by kind: `get` (and `getkey`), then `scan`.
    reads: [AtomicU64; READ_KINDS.len()],
    /// Reads answered `readerror`.
    read_failures: AtomicU64,
    /// Records sent in answer to scans.
    records_scanned: AtomicU64,
    /// Records found damaged: at start (failing their checksum, or not
    /// records) and by reads since (no longer reading back where the index
    /// pointed).
    damaged: AtomicU64,
}

/// The kinds of read, as labels: `getkey` is a `get` once its key is
/// looked up.
const READ_KINDS: [&str; 2] = ["get", "scan"];

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            started: Instant::now(),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync: AtomicHistogram::new(LATENCY_BUCKETS),
            keys: AtomicU64::new(0),
            reads: std::array::from_fn(|_| AtomicU64::new(0)),
            read_failures: AtomicU64::new(0),
            records_scanned: AtomicU64::new(0),
            damaged: AtomicU64::new(0),
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

    /// A `get` (or `getkey`) answered `found` or `notfound`.
    pub(crate) fn get_served(&self) {
        self.reads[0].fetch_add(1, Ordering::Relaxed);
    }

    /// A `scan` answered with `records` records and its `scanned` line.
    pub(crate) fn scan_served(&self, records: usize) {
        self.reads[1].fetch_add(1, Ordering::Relaxed);
        self.records_scanned
            .fetch_add(records as u64, Ordering::Relaxed);
    }

    /// `records` more records found damaged.
    pub(crate) fn found_damaged(&self, records: u64) {
        self.damaged.fetch_add(records, Ordering::Relaxed);
    }

    /// Records found damaged since the node started (at its start and by
    /// reads).
    pub fn damaged(&self) -> u64 {
        self.damaged.load(Ordering::Relaxed)
    }

    /// A read answered `readerror` (refused at a bound, or failed).
    pub(crate) fn read_failed(&self) {
        self.read_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The 99th percentile of fsync durations (a bucket's upper bound).
    pub fn fsync_p99(&self) -> Option<Duration> {
        self.fsync.quantile_bound(0.99)
    }
}

/// The fsync latency this node reports to the head node: the fdatasyncs of
/// the last two report periods (about 10 s under the default 5 s), as the
/// difference of two snapshots of the `/metrics` histogram. The write path
/// pays nothing for it; the data-path thread copies the buckets once per
/// report.
#[derive(Debug)]
pub(crate) struct FsyncWindow {
    every: Duration,
    /// Where the next report's window starts.
    from: (Instant, HistogramSnapshot),
    /// The last report (or the start): where the window after next starts.
    last: (Instant, HistogramSnapshot),
}

impl FsyncWindow {
    /// A window starting `now`, reporting every `every`.
    pub(crate) fn new(every: Duration, now: Instant, metrics: &NodeMetrics) -> Self {
        let start = (now, metrics.fsync.snapshot());
        FsyncWindow {
            every,
            from: start,
            last: start,
        }
    }

    /// The report due at `now`; `None` until `every` has passed since the
    /// last one.
    pub(crate) fn report(&mut self, now: Instant, metrics: &NodeMetrics) -> Option<FsyncReport> {
        if now.saturating_duration_since(self.last.0) < self.every {
            return None;
        }
        let snapshot = metrics.fsync.snapshot();
        let window = snapshot.since(&self.from.1);
        let report = FsyncReport {
            window_ms: now.saturating_duration_since(self.from.0).as_millis() as u64,
            count: window.count(),
            p99_micros: window.quantile(0.99).map(|p99| p99.as_micros() as u64),
        };
        self.from = self.last;
        self.last = (now, snapshot);
        Some(report)
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
        metrics::counter_family(
            &mut e,
            "msgstore_datanode_reads",
            "Reads answered to the head node (found, notfound, or a scan's end), by kind; getkey counts as get.",
            None,
            "kind",
            READ_KINDS.iter().copied().zip(m.reads.iter().map(read)),
        )?;
        metrics::counter(
            &mut e,
            "msgstore_datanode_read_failures",
            "Reads answered readerror: refused at a bound, or a file that could not be read.",
            None,
            read(&m.read_failures),
        )?;
        metrics::counter(
            &mut e,
            "msgstore_datanode_damaged_records",
            "Records found damaged: at start (a checksum that fails, a line that is not a record) and by reads since (a record that no longer reads back where the index points); each is left out of reads and reported to the head node, whose repair gives it its copies.",
            None,
            read(&m.damaged),
        )?;
        metrics::counter(
            &mut e,
            "msgstore_datanode_records_scanned",
            "Records returned by scans.",
            None,
            read(&m.records_scanned),
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
    fn the_fsync_report_covers_the_last_two_periods() {
        let metrics = NodeMetrics::default();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // Before the start: not in any window.
        metrics.synced(Duration::from_secs(2));
        let mut window = FsyncWindow::new(Duration::from_secs(5), start, &metrics);
        for _ in 0..99 {
            metrics.synced(Duration::from_micros(300));
        }
        metrics.synced(Duration::from_millis(20));
        assert_eq!(window.report(at(4), &metrics), None, "not due yet");
        let first = window.report(at(5), &metrics).unwrap();
        assert_eq!((first.window_ms, first.count), (5_000, 100));
        let p99 = first.p99_micros.unwrap();
        assert!((250..=500).contains(&p99), "{p99} µs");

        for _ in 0..100 {
            metrics.synced(Duration::from_millis(3));
        }
        assert_eq!(window.report(at(9), &metrics), None);
        let second = window.report(at(10), &metrics).unwrap();
        assert_eq!((second.window_ms, second.count), (10_000, 200));
        let p99 = second.p99_micros.unwrap();
        assert!((2_500..=5_000).contains(&p99), "{p99} µs");

        // The first period has left the window; the second one is idle.
        let third = window.report(at(15), &metrics).unwrap();
        assert_eq!((third.window_ms, third.count), (10_000, 100));
        let fourth = window.report(at(20), &metrics).unwrap();
        assert_eq!(
            fourth,
            FsyncReport {
                window_ms: 10_000,
                count: 0,
                p99_micros: None
            }
        );
    }

    #[test]
    fn metrics_show_what_was_written_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        data.stage(None, None, b"uno");
        data.stage(None, None, b"dos");
        data.commit().unwrap();
        data.metrics.set_keys(7);
        data.metrics.get_served();
        data.metrics.get_served();
        data.metrics.scan_served(120);
        data.metrics.read_failed();
        let response = handle(
            &data.metrics(),
            &Request {
                path: "/metrics".into(),
                query: None,
            },
        );
        let node_kit::http::Body::Full { bytes, .. } = response.body else {
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
        assert!(
            text.contains("msgstore_datanode_reads_total{kind=\"get\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("msgstore_datanode_reads_total{kind=\"scan\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("msgstore_datanode_records_scanned_total 120\n"),
            "{text}"
        );
        assert!(
            text.contains("msgstore_datanode_read_failures_total 1\n"),
            "{text}"
        );
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
