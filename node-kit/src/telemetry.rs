//! Logging shared by every binary: files in a log directory, and stdout so
//! `docker compose logs` shows the same lines.
//!
//! Each file receives the events of some tracing targets (the head node's
//! heartbeat file gets target `heartbeat`, its main file the rest). Each sink
//! has its own background writer thread, fed through a bounded queue, so a
//! logging call never waits for a file or for stdout (a pipe nobody reads, a
//! stuck `docker logs`). When a sink falls [`BUFFERED_LINES_LIMIT`] lines
//! behind, further lines to it are dropped and counted ([`dropped_lines`]);
//! the next line that fits is preceded in that sink by one line saying how
//! many were lost:
//!
//! ```text
//! 2026-11-24 12:00:00,000  WARN log output fell behind: 1234 lines dropped
//! ```
//!
//! The returned [`LogGuard`] must live until the program ends, or buffered
//! lines are lost.
//!
//! Lines look like `2026-11-23 05:37:10,123  INFO conn{peer=10.0.0.3:41234}: message key=value`
//! (UTC, the original system's `asctime` style).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter};

use crate::timefmt::write_timestamp;

/// Tracing target of the head node's heartbeat and membership lines.
pub const HEARTBEAT_TARGET: &str = "heartbeat";
/// Tracing target of per-message lines (one per forwarded or stored
/// message); `RUST_LOG=info,messages=off` silences them under heavy load.
pub const MESSAGES_TARGET: &str = "messages";

/// Which events go to which file.
#[derive(Debug, Clone)]
pub enum FileRoute {
    /// Every event whose target is not claimed by another route.
    Rest,
    /// Only events with this target.
    Target(&'static str),
}

/// Where a program writes its logs.
#[derive(Debug, Clone)]
pub struct LogSpec {
    /// Directory of the log files; created if missing.
    pub dir: PathBuf,
    /// Files in `dir` and the events each receives.
    pub files: Vec<(&'static str, FileRoute)>,
    /// Also write every event to stdout.
    pub stdout: bool,
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log directory or a file in it could not be created or opened.
    #[error("cannot write logs to {path}: {error}")]
    NotWritable {
        /// The directory or file that failed.
        path: PathBuf,
        /// Why (part of the message, so not repeated as a cause).
        error: io::Error,
    },
    /// A global subscriber was already installed.
    #[error("logging already initialised")]
    AlreadyInitialised,
}

/// Lines each sink may hold while its writer thread is behind; one more is
/// dropped. Formatted lines are assumed to be about 256 bytes at most (a
/// timestamp, a span or two and a short message), so a stalled sink holds
/// about 4 MiB of lines plus 512 KiB of channel slots. A line that carries a
/// long client message is larger, and so is the worst case.
pub const BUFFERED_LINES_LIMIT: usize = 16_384;

/// Lines dropped by every [`LossyWriter`] of this process.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// Resident memory of this process in bytes (`VmRSS` in `/proc/self/status`);
/// `None` where that file does not exist.
pub fn resident_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Log lines this process has dropped so far because a sink (a file or
/// stdout) was [`BUFFERED_LINES_LIMIT`] lines behind, over all sinks.
pub fn dropped_lines() -> u64 {
    DROPPED_LINES.load(Ordering::Relaxed)
}

/// Longest time dropping a [`LogGuard`] waits for the writer threads to
/// write out what they hold. A sink that takes nothing (a stdout pipe nobody
/// reads) must not keep a stopping process alive.
pub const FLUSH_AT_EXIT_LIMIT: Duration = Duration::from_secs(2);

/// Keeps the background log writers alive; drop it last, at exit, to flush.
/// Dropping it waits at most [`FLUSH_AT_EXIT_LIMIT`].
#[must_use = "dropping the guard stops log writing"]
pub struct LogGuard {
    writers: Vec<LossyWriter>,
    /// The files' workers first, stdout's last, so the files are flushed
    /// even when stdout is stuck.
    workers: Vec<WorkerGuard>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Runs before the workers are flushed and stopped, so a gap at the
        // very end is reported too.
        for writer in &self.writers {
            writer.write_pending_notice();
        }
        // A `WorkerGuard` whose queue is full reports that with `println!`,
        // which waits for the lock on stdout; the stdout worker holds that
        // lock while it is blocked writing to a pipe nobody reads. Dropped
        // here, the guards would then keep the process from ever exiting.
        drop_within(std::mem::take(&mut self.workers), FLUSH_AT_EXIT_LIMIT);
    }
}

/// Drops `value` on a thread of its own and waits at most `limit` for the
/// drop to finish. True if it finished; if not, the thread is left behind
/// (it ends with the process).
fn drop_within<T: Send + 'static>(value: T, limit: Duration) -> bool {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("log shutdown".into())
        .spawn(move || {
            drop(value);
            let _ = done_tx.send(());
        });
    // If no thread can be started, the value was dropped right here.
    spawned.is_err() || done_rx.recv_timeout(limit).is_ok()
}

/// A [`MakeWriter`] that never blocks: tracing-appender's lossy
/// [`NonBlocking`] writer, bounded to [`BUFFERED_LINES_LIMIT`] lines, with a
/// record of the lines it dropped.
///
/// Every `write` is one line for the background thread (the fmt layer writes
/// each event with one `write_all`). A line that finds the buffer full is
/// dropped and counted. The next line that finds room is preceded by a
/// notice, `<timestamp>  WARN log output fell behind: <n> lines dropped`
/// (`1 line dropped` for one), so the gap shows in the sink where it
/// happened. A notice that is itself dropped is not counted as a lost line;
/// it is tried again before the following line.
///
/// Drops are detected through the writer's [`ErrorCounter`], which grows by
/// one for each line that did not fit. Writes to one sink take a short lock
/// so that a change of the counter belongs to the line just written; the lock
/// is never held while anything waits for the sink.
#[derive(Clone, Debug)]
struct LossyWriter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sink: Mutex<Sink>,
    /// Lines this writer has dropped, for its whole life.
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Sink {
    writer: NonBlocking,
    failed_sends: ErrorCounter,
    /// Lines dropped since the last notice that got through.
    unreported: u64,
}

impl LossyWriter {
    /// Starts a background thread named `thread_name` that writes lines to
    /// `sink`. The [`WorkerGuard`] flushes and stops it when dropped.
    fn new<W: Write + Send + 'static>(sink: W, thread_name: &str) -> (Self, WorkerGuard) {
        Self::with_limit(sink, thread_name, BUFFERED_LINES_LIMIT)
    }

    fn with_limit<W: Write + Send + 'static>(
        sink: W,
        thread_name: &str,
        buffered_lines_limit: usize,
    ) -> (Self, WorkerGuard) {
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(buffered_lines_limit)
            .thread_name(thread_name)
            .finish(sink);
        let failed_sends = writer.error_counter();
        let shared = Shared {
            sink: Mutex::new(Sink {
                writer,
                failed_sends,
                unreported: 0,
            }),
            dropped: AtomicU64::new(0),
        };
        (
            LossyWriter {
                shared: Arc::new(shared),
            },
            guard,
        )
    }

    /// Writes one line, preceded by the notice of earlier drops if any.
    fn write_line(&self, line: &[u8]) {
        let mut sink = self
            .shared
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sink.write_notice();
        if !sink.send(line) {
            sink.unreported += 1;
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the notice of drops not yet reported, if there is room.
    fn write_pending_notice(&self) {
        self.shared
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_notice();
    }
}

impl Sink {
    /// Hands `line` to the background thread; false if it was dropped.
    fn send(&mut self, line: &[u8]) -> bool {
        let before = self.failed_sends.dropped_lines();
        // A lossy `NonBlocking` never fails a write; a full buffer shows
        // only in its error counter.
        let _ = self.writer.write_all(line);
        self.failed_sends.dropped_lines() == before
    }

    fn write_notice(&mut self) {
        if self.unreported > 0 && self.send(drop_notice(self.unreported).as_bytes()) {
            self.unreported = 0;
        }
    }
}

/// The line that reports `dropped` lost lines, timestamped now.
fn drop_notice(dropped: u64) -> String {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(80);
    let lines = if dropped == 1 { "line" } else { "lines" };
    // Writing to a String cannot fail.
    let _ = write_timestamp(&mut line, std::time::SystemTime::now());
    let _ = writeln!(
        line,
        "  WARN log output fell behind: {dropped} {lines} dropped"
    );
    line
}

impl<'a> MakeWriter<'a> for LossyWriter {
    type Writer = LossyLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LossyLine { writer: self }
    }
}

/// The [`io::Write`] handed to a layer for one event; see [`LossyWriter`].
#[derive(Debug)]
struct LossyLine<'a> {
    writer: &'a LossyWriter,
}

impl Write for LossyLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write_line(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.writer.write_line(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Timestamps in the original system's `asctime` style, UTC.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeedTime;

impl FormatTime for SeedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write_timestamp(w, std::time::SystemTime::now())
    }
}

/// Opens (creating if needed) the log directory and each file, for appending.
/// Gives a clear error instead of a panic when the directory is not writable.
pub fn open_log_file(dir: &Path, name: &str) -> Result<fs::File, TelemetryError> {
    fs::create_dir_all(dir).map_err(|error| TelemetryError::NotWritable {
        path: dir.to_owned(),
        error,
    })?;
    let path = dir.join(name);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|error| TelemetryError::NotWritable { path, error })
}

/// Installs the global subscriber described by `spec`. `RUST_LOG` sets the
/// level (default `info`).
pub fn init(spec: &LogSpec) -> Result<LogGuard, TelemetryError> {
    let claimed: Vec<&'static str> = spec
        .files
        .iter()
        .filter_map(|(_, route)| match route {
            FileRoute::Target(target) => Some(*target),
            FileRoute::Rest => None,
        })
        .collect();

    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    let mut writers = Vec::new();
    let mut workers = Vec::new();
    for (name, route) in &spec.files {
        let file = open_log_file(&spec.dir, name)?;
        let (writer, guard) = LossyWriter::new(file, &format!("log {name}"));
        writers.push(writer.clone());
        workers.push(guard);
        let route = route.clone();
        let claimed = claimed.clone();
        let layer = line_layer(writer)
            .with_filter(filter::filter_fn(move |meta| match &route {
                FileRoute::Target(target) => meta.target() == *target,
                FileRoute::Rest => !claimed.contains(&meta.target()),
            }))
            .boxed();
        layers.push(layer);
    }
    if spec.stdout {
        let (writer, guard) = LossyWriter::new(io::stdout(), "log stdout");
        writers.push(writer.clone());
        workers.push(guard);
        layers.push(line_layer(writer).boxed());
    }
    let env_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(layers)
        .with(env_filter)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(LogGuard { writers, workers })
}

/// Formats events as `2026-11-23 05:37:10,123  INFO span{field=1}: message key=value`.
fn line_layer<S>(writer: LossyWriter) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_timer(SeedTime)
        .with_target(false)
}

/// For tests: logs to the test harness's captured output when `TEST_LOG` is
/// set, otherwise nowhere. Safe to call from every test.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug")),
            )
            .with_timer(SeedTime)
            .with_test_writer()
            .try_init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};
    use tracing::Dispatch;

    /// Bound on each wait in these tests; generous for a loaded machine.
    const WAIT: Duration = Duration::from_secs(30);

    /// A sink whose first write parks until the test releases it.
    struct StalledSink {
        entered_tx: mpsc::Sender<()>,
        release_rx: mpsc::Receiver<()>,
        stalled: bool,
        out: Arc<Mutex<Vec<u8>>>,
    }

    /// The test's side of a [`StalledSink`].
    struct Stall {
        entered_rx: mpsc::Receiver<()>,
        release_tx: mpsc::Sender<()>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    fn stalled_sink() -> (StalledSink, Stall) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = StalledSink {
            entered_tx,
            release_rx,
            stalled: true,
            out: out.clone(),
        };
        let stall = Stall {
            entered_rx,
            release_tx,
            out,
        };
        (sink, stall)
    }

    impl Write for StalledSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.stalled {
                self.stalled = false;
                let _ = self.entered_tx.send(());
                // Also returns if the test is gone.
                let _ = self.release_rx.recv();
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Stall {
        fn wait_until_entered(&self) {
            self.entered_rx
                .recv_timeout(WAIT)
                .expect("the sink was never written to");
        }

        fn release(&self) {
            self.release_tx.send(()).unwrap();
        }

        /// Waits until the sink's text satisfies `done`, then returns it.
        fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
            let deadline = Instant::now() + WAIT;
            loop {
                let text = String::from_utf8(self.out.lock().unwrap().clone()).unwrap();
                if done(&text) {
                    return text;
                }
                assert!(Instant::now() < deadline, "{what}; sink holds:\n{text}");
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Lines `writer` has dropped (notices not included).
    fn dropped_by(writer: &LossyWriter) -> u64 {
        writer.shared.dropped.load(Ordering::Relaxed)
    }

    /// A subscriber that formats like the real ones and writes to `writer`.
    fn dispatch_to(writer: &LossyWriter) -> Dispatch {
        Dispatch::new(tracing_subscriber::registry().with(line_layer(writer.clone())))
    }

    #[test]
    fn logging_to_a_stalled_sink_returns_and_the_gap_is_reported_later() {
        const LIMIT: usize = 4;
        const EVENTS: u64 = 1_000;
        let (sink, stall) = stalled_sink();
        let (writer, _worker) = LossyWriter::with_limit(sink, "test sink", LIMIT);
        let dispatch = dispatch_to(&writer);

        // The background thread takes line 0 and parks in the sink.
        tracing::dispatcher::with_default(&dispatch, || tracing::info!("line 0"));
        stall.wait_until_entered();

        // The rest are logged on a thread, so a blocked call fails the test
        // after WAIT instead of hanging it.
        let (done_tx, done_rx) = mpsc::channel();
        let logging = dispatch.clone();
        thread::spawn(move || {
            tracing::dispatcher::with_default(&logging, || {
                for i in 1..EVENTS {
                    tracing::info!("line {i}");
                }
            });
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(WAIT)
            .expect("logging calls blocked on a stalled sink");

        // LIMIT lines wait in the buffer; every later one was dropped. The
        // notices tried before each of those lines failed too, and are not
        // counted.
        let dropped = EVENTS - 1 - LIMIT as u64;
        assert_eq!(dropped_by(&writer), dropped);
        assert!(dropped_lines() >= dropped);

        stall.release();
        stall.wait_for("buffered lines never reached the sink", |text| {
            text.lines().count() == 1 + LIMIT
        });
        tracing::dispatcher::with_default(&dispatch, || tracing::info!("after the stall"));
        let text = stall.wait_for("the line after the stall never arrived", |text| {
            text.contains("after the stall")
        });

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), LIMIT + 3, "{text}");
        for (i, line) in lines[..=LIMIT].iter().enumerate() {
            assert!(line.ends_with(&format!("  INFO line {i}")), "{line}");
        }
        let notice = lines[LIMIT + 1];
        assert_eq!(
            &notice[23..],
            format!("  WARN log output fell behind: {dropped} lines dropped"),
            "{text}"
        );
        assert_eq!(&lines[LIMIT + 2][23..], "  INFO after the stall", "{text}");
        // The notice's timestamp is laid out like every other line's.
        let shape = |line: &str| -> String {
            line[..23]
                .chars()
                .map(|c| if c.is_ascii_digit() { '9' } else { c })
                .collect()
        };
        assert_eq!(shape(notice), shape(lines[0]), "{text}");
        assert_eq!(dropped_by(&writer), dropped, "a notice is not a drop");
    }

    #[test]
    fn a_gap_at_the_end_is_reported_when_logging_stops() {
        let (sink, stall) = stalled_sink();
        let (writer, _worker) = LossyWriter::with_limit(sink, "test sink", 1);
        let mut line = writer.make_writer();
        line.write_all(b"first\n").unwrap();
        stall.wait_until_entered();
        line.write_all(b"buffered\n").unwrap();
        line.write_all(b"dropped\n").unwrap();
        assert_eq!(dropped_by(&writer), 1);

        stall.release();
        stall.wait_for("buffered line never arrived", |text| {
            text.ends_with("buffered\n")
        });
        // What `LogGuard` does on drop.
        writer.write_pending_notice();
        let text = stall.wait_for("no notice", |text| text.lines().count() == 3);
        assert!(
            text.ends_with("  WARN log output fell behind: 1 line dropped\n"),
            "{text}"
        );
        // Reported once only.
        writer.write_pending_notice();
        line.write_all(b"last\n").unwrap();
        let text = stall.wait_for("last line never arrived", |text| text.ends_with("last\n"));
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn dropping_the_guards_waits_a_bounded_time_for_a_drop_that_never_ends() {
        /// Its drop parks until the test releases it, or for ever.
        struct Stuck(mpsc::Receiver<()>);
        impl Drop for Stuck {
            fn drop(&mut self) {
                let _ = self.0.recv();
            }
        }
        let (release, parked) = mpsc::channel();
        let started = Instant::now();
        assert!(!drop_within(Stuck(parked), Duration::from_millis(200)));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        drop(release);

        // A drop that ends (its sender is gone) is waited for.
        let (gone, quick) = mpsc::channel::<()>();
        drop(gone);
        assert!(drop_within(Stuck(quick), WAIT));
    }

    #[test]
    fn unwritable_log_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, b"").unwrap();
        let err = open_log_file(&blocker.join("logs"), "log.txt").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("cannot write logs to "), "{text}");
        assert!(text.contains("not-a-dir"), "{text}");
    }

    #[test]
    fn log_file_is_created_and_appended() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        use std::io::Write;
        writeln!(open_log_file(&sub, "x.txt").unwrap(), "one").unwrap();
        writeln!(open_log_file(&sub, "x.txt").unwrap(), "two").unwrap();
        assert_eq!(fs::read_to_string(sub.join("x.txt")).unwrap(), "one\ntwo\n");
    }
}
