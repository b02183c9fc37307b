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
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return self.bounds.get(i).map(|&b| Duration::from_secs_f64(b));
            }
        }
        None
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
