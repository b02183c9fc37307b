//! Logging shared by every binary: files in a log directory, and stdout so
//! `docker compose logs` shows the same lines.
//!
//! Each file receives the events of some tracing targets (the head node's
//! heartbeat file gets target `heartbeat`, its main file the rest). Writes go
//! through tracing-appender's non-blocking writer; the returned [`LogGuard`]
//! must live until the program ends, or buffered lines are lost.
//!
//! Lines look like `2026-11-23 05:37:10,123  INFO conn{peer=10.0.0.3:41234}: message key=value`
//! (UTC, the original system's `asctime` style).

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
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

/// Keeps the background log writers alive; drop it last, at exit, to flush.
#[must_use = "dropping the guard stops log writing"]
pub struct LogGuard {
    _workers: Vec<WorkerGuard>,
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
    let mut workers = Vec::new();
    for (name, route) in &spec.files {
        let file = open_log_file(&spec.dir, name)?;
        // Not lossy: a line that says a message was acknowledged must not vanish.
        let (writer, guard) = NonBlockingBuilder::default().lossy(false).finish(file);
        workers.push(guard);
        let route = route.clone();
        let claimed = claimed.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .with_timer(SeedTime)
            .with_target(false)
            .with_filter(filter::filter_fn(move |meta| match &route {
                FileRoute::Target(target) => meta.target() == *target,
                FileRoute::Rest => !claimed.contains(&meta.target()),
            }))
            .boxed();
        layers.push(layer);
    }
    if spec.stdout {
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .finish(io::stdout());
        workers.push(guard);
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .with_timer(SeedTime)
                .with_target(false)
                .boxed(),
        );
    }
    let env_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(layers)
        .with(env_filter)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(LogGuard { _workers: workers })
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
