//! Prometheus metrics shared by the servers: a lock-free histogram for
//! hot paths, and helpers to write values read at scrape time.
//!
//! `prometheus-client`'s own histogram takes a lock on every observation;
//! [`AtomicHistogram`] costs a few relaxed atomic additions instead, so a
//! per-message path can afford it. Everything else a server exposes is
//! kept as plain atomics (or in state it already has) and written out by a
//! [`Collector`](prometheus_client::collector::Collector) when scraped,
//! with [`counter`], [`gauge`] and their labelled forms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// `Content-Type` of [`encode`]'s output (OpenMetrics text, which
/// Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets from 50 µs to 10 s, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Buckets of at most this many bounds (plus `+Inf`).
const MAX_BUCKETS: usize = 24;

/// A histogram of durations whose observation takes no lock: a bucket
/// count, the total count and the sum (in nanoseconds) are relaxed atomic
/// additions. A scrape may see them a moment apart; Prometheus tolerates
/// that.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// Upper bounds in nanoseconds, for a comparison without floats.
    bounds_nanos: [u64; MAX_BUCKETS],
    /// One per bound, and the last for `+Inf`.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (seconds, ascending, at most 24).
    pub fn new(bounds: &'static [f64]) -> Self {
        let bounds = &bounds[..bounds.len().min(MAX_BUCKETS)];
        let mut bounds_nanos = [u64::MAX; MAX_BUCKETS];
        for (nanos, bound) in bounds_nanos.iter_mut().zip(bounds) {
            *nanos = (bound * 1e9) as u64;
        }
        AtomicHistogram {
            bounds,
            bounds_nanos,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, value: Duration) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bounds_nanos[..self.bounds.len()]
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding the `q` quantile (0 to 1), or
    /// `None` before any observation or when it lies beyond the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<Duration> {
        self.snapshot().quantile_bound(q)
    }

    /// The bucket counts now: a few relaxed loads into a copy, no
    /// allocation, so a caller may take one every few seconds on a hot
    /// thread and measure a window as the difference of two.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0; MAX_BUCKETS + 1];
        for (count, bucket) in counts.iter_mut().zip(&self.counts) {
            *count = bucket.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            bounds: self.bounds,
            counts,
        }
    }
}

/// The bucket counts of an [`AtomicHistogram`] at one moment, or of the
/// window between two moments ([`HistogramSnapshot::since`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramSnapshot {
    bounds: &'static [f64],
    /// Laid out as [`AtomicHistogram::counts`]: one per bound, then `+Inf`
    /// at `bounds.len()`; the rest stay zero.
    counts: [u64; MAX_BUCKETS + 1],
}

impl HistogramSnapshot {
    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The observations made after `earlier` (a snapshot of the same
    /// histogram) up to this one.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let mut counts = self.counts;
        for (count, before) in counts.iter_mut().zip(&earlier.counts) {
            // Counts only grow; a mismatched pair gives zeros, not a wrap.
            *count = count.saturating_sub(*before);
        }
        HistogramSnapshot {
            bounds: self.bounds,
            counts,
        }
    }

    /// The bucket holding the `q` quantile (0 to 1) and how many
    /// observations lie below it; `None` without observations.
    fn bucket_of(&self, rank: f64) -> Option<(usize, u64)> {
        let mut below = 0;
        for (i, &count) in self.counts[..=self.bounds.len()].iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                return Some((i, below));
            }
            below += count;
        }
        None
    }

    /// The upper bound of the bucket holding the `q` quantile (0 to 1), or
    /// `None` without observations or when it lies beyond the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<Duration> {
        let rank = ((self.count() as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0);
        let (bucket, _) = self.bucket_of(rank)?;
        self.bounds.get(bucket).map(|&b| Duration::from_secs_f64(b))
    }

    /// The `q` quantile (0 to 1), estimated as Prometheus's
    /// `histogram_quantile` does: linearly within the bucket that holds it
    /// (the first bucket starts at zero); a quantile beyond the last bound
    /// is that bound. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let rank = (self.count() as f64) * q.clamp(0.0, 1.0);
        let (bucket, below) = self.bucket_of(rank.max(f64::MIN_POSITIVE))?;
        let Some(&upper) = self.bounds.get(bucket) else {
            return self.bounds.last().map(|&b| Duration::from_secs_f64(b));
        };
        let lower = if bucket == 0 {
            0.0
        } else {
            self.bounds[bucket - 1]
        };
        let within = (rank - below as f64) / self.counts[bucket] as f64;
        Some(Duration::from_secs_f64(
            lower + (upper - lower) * within.clamp(0.0, 1.0),
        ))
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per bucket, not cumulative: the encoder adds them up.
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        for (i, bound) in self.bounds.iter().enumerate() {
            buckets.push((*bound, self.counts[i].load(Ordering::Relaxed)));
        }
        let beyond = self.counts[self.bounds.len()].load(Ordering::Relaxed);
        buckets.push((f64::INFINITY, beyond));
        // The count from the buckets themselves, so `+Inf` equals it.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Writes a counter (the encoder adds `_total`).
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// Writes a gauge.
pub fn gauge<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// Writes what every process serves: log lines dropped and uptime
/// (`process` names it in the help text, such as "head node").
pub fn process(
    encoder: &mut DescriptorEncoder,
    process: &str,
    uptime: Duration,
) -> Result<(), std::fmt::Error> {
    counter(
        encoder,
        "msgstore_log_lines_dropped",
        "Log lines dropped because a log sink fell behind.",
        None,
        crate::telemetry::dropped_lines(),
    )?;
    gauge(
        encoder,
        "msgstore_uptime",
        &format!("Time since the {process} started."),
        Some(&Unit::Seconds),
        uptime.as_secs_f64(),
    )
}

/// Writes a gauge with one value per label (`label`=`value`).
pub fn gauge_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value_of_label, value) in values {
        let labels = [(label, value_of_label)];
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes a counter with one value per label (`label`=`value`).
pub fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (value_of_label, value) in values {
        let labels = [(label, value_of_label)];
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes a histogram.
pub fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    histogram: &AtomicHistogram,
) -> Result<(), std::fmt::Error> {
    histogram.encode(encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?)
}

/// Writes a histogram with one series per label (`label`=`value`).
pub fn histogram_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, &'a AtomicHistogram)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (value_of_label, histogram) in values {
        let labels = [(label, value_of_label)];
        histogram.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The registry in OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String fails only if a collector fails, and ours do not.
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
        out.push_str("# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;

    #[derive(Debug)]
    struct Sample(AtomicHistogram);

    #[derive(Debug)]
    struct ByKind([AtomicHistogram; 2]);

    impl Collector for ByKind {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            histogram_family(
                &mut encoder,
                "demo_read_latency",
                "Latency by kind.",
                Some(&Unit::Seconds),
                "kind",
                ["get", "tail"].into_iter().zip(&self.0),
            )
        }
    }

    #[test]
    fn a_histogram_family_has_one_labelled_series_per_value() {
        let by_kind = ByKind(std::array::from_fn(|_| {
            AtomicHistogram::new(LATENCY_BUCKETS)
        }));
        by_kind.0[0].observe(Duration::from_millis(2));
        by_kind.0[0].observe(Duration::from_millis(3));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(by_kind));
        let text = encode(&registry);
        assert!(
            text.contains("# TYPE demo_read_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_read_latency_seconds_count{kind=\"get\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_read_latency_seconds_bucket{le=\"0.005\",kind=\"get\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_read_latency_seconds_count{kind=\"tail\"} 0\n"),
            "{text}"
        );
    }

    impl Collector for Sample {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            counter(&mut encoder, "demo_things", "Things.", None, 3)?;
            gauge_family(
                &mut encoder,
                "demo_nodes",
                "Nodes.",
                "state",
                [("live", 2), ("evicted", 1)],
            )?;
            histogram(
                &mut encoder,
                "demo_latency",
                "Latency.",
                Some(&Unit::Seconds),
                &self.0,
            )
        }
    }

    #[test]
    fn a_window_between_two_snapshots_holds_only_what_came_between() {
        let h = AtomicHistogram::new(LATENCY_BUCKETS);
        assert_eq!(h.snapshot().count(), 0);
        assert_eq!(h.snapshot().quantile(0.99), None);
        for _ in 0..50 {
            h.observe(Duration::from_secs(3));
        }
        let before = h.snapshot();
        // 100 fsyncs of 0.5 to 1 ms, then one of 2.5 to 5 ms.
        for _ in 0..100 {
            h.observe(Duration::from_micros(800));
        }
        h.observe(Duration::from_millis(4));
        let window = h.snapshot().since(&before);
        assert_eq!(window.count(), 101);
        assert_eq!(
            window.quantile_bound(0.99),
            Some(Duration::from_secs_f64(0.001))
        );
        // Rank 99.99 of 101: within the (0.5 ms, 1 ms] bucket, near its top.
        let p99 = window.quantile(0.99).unwrap();
        assert!(
            p99 > Duration::from_micros(990) && p99 <= Duration::from_millis(1),
            "{p99:?}"
        );
        let p100 = window.quantile(1.0).unwrap();
        assert_eq!(p100, Duration::from_secs_f64(0.005));
        // The first bucket starts at zero.
        let first = AtomicHistogram::new(LATENCY_BUCKETS);
        first.observe(Duration::from_micros(10));
        first.observe(Duration::from_micros(20));
        assert_eq!(
            first.snapshot().quantile(0.5),
            Some(Duration::from_secs_f64(0.000_025))
        );
        // Beyond the last bound: that bound.
        let slow = AtomicHistogram::new(LATENCY_BUCKETS);
        slow.observe(Duration::from_secs(60));
        assert_eq!(
            slow.snapshot().quantile(0.99),
            Some(Duration::from_secs(10))
        );
        assert_eq!(slow.snapshot().quantile_bound(0.99), None);
        // Snapshots in the wrong order give an empty window, not a wrap.
        assert_eq!(before.since(&h.snapshot()).count(), 0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_the_text_is_prometheus_shaped() {
        let h = AtomicHistogram::new(LATENCY_BUCKETS);
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count(), 3);
        assert_eq!(h.quantile_bound(0.5), Some(Duration::from_secs_f64(0.005)));
        assert_eq!(h.quantile_bound(0.99), None, "beyond the last bound");
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sample(h)));
        let text = encode(&registry);
        assert!(text.contains("demo_things_total 3"), "{text}");
        assert!(text.contains("demo_nodes{state=\"live\"} 2"), "{text}");
        assert!(
            text.contains("demo_latency_seconds_bucket{le=\"5.0e-5\"} 1")
                || text.contains("demo_latency_seconds_bucket{le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(text.contains("demo_latency_seconds_count 3"), "{text}");
        assert!(
            text.contains("demo_latency_seconds_bucket{le=\"0.005\"} 2\n"),
            "cumulative: {text}"
        );
        assert!(
            text.contains("demo_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
