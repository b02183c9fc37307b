//! Command-line pieces every binary shares: duration values and the framing
//! and logging flags. Every flag can also be set by an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use crate::codec::DEFAULT_MAX_LINE;
use crate::connection::ReaderConfig;

/// Parses `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (examples: 250ms, 5s, 2m)"))?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1_000_000.0,
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (use us, ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration {text:?} out of range"))
}

/// Flags about how peers frame their messages.
#[derive(Debug, Clone, clap::Args)]
pub struct FramingArgs {
    /// Longest accepted line, in bytes; a longer one is refused with an error
    /// and the connection closed.
    #[arg(long, env = "MAX_LINE_BYTES", default_value_t = DEFAULT_MAX_LINE)]
    pub max_line: usize,
    /// For peers of the original system, which send messages without a
    /// newline: the pause that ends such a message.
    #[arg(long, env = "LEGACY_IDLE_FLUSH", default_value = "10ms", value_parser = parse_duration)]
    pub idle_flush: Duration,
    /// Time a new connection has to complete the `peticion` handshake.
    #[arg(long, env = "HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
}

impl FramingArgs {
    /// The reader settings these flags describe.
    pub fn reader_config(&self) -> ReaderConfig {
        ReaderConfig {
            max_line: self.max_line,
            idle_flush: self.idle_flush,
        }
    }
}

/// The log directory flag.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Directory for this program's log files (created if missing).
    #[arg(long, env = "LOG_DIR")]
    pub log_dir: Option<PathBuf>,
}

impl LogArgs {
    /// The log directory given, or `default`.
    pub fn dir_or(&self, default: impl Into<PathBuf>) -> PathBuf {
        self.log_dir.clone().unwrap_or_else(|| default.into())
    }
}

/// Ends `main`: on error, prints one line `<program>: <error: cause: ...>` to
/// stderr and returns a failure exit code.
pub fn exit_code<E: std::fmt::Display>(
    program: &str,
    result: Result<(), E>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("200us").unwrap(), Duration::from_micros(200));
        assert_eq!(parse_duration("50µs").unwrap(), Duration::from_micros(50));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "s", "5d", "-1s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
