//! Command-line pieces every binary shares: duration values and the framing
//! and logging flags. Every flag can also be set by an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use protocol::auth::{ClusterToken, TokenError};
use protocol::codec::DEFAULT_MAX_LINE;
use protocol::connection::ReaderConfig;

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

/// Shortest accepted timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Shortest accepted period of a repeating timer (heartbeats, rounds).
pub const MIN_PERIOD: Duration = Duration::from_millis(10);
/// Longest accepted timeout or period.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// [`parse_duration`] for a timeout: at least 1 ms, at most a day. Zero
/// would mean "give up at once", which is never what a user wants.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_duration_in(text, MIN_TIMEOUT, MAX_DURATION)
}

/// [`parse_duration`] for the period of a repeating timer: at least 10 ms,
/// at most a day.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    parse_duration_in(text, MIN_PERIOD, MAX_DURATION)
}

fn parse_duration_in(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let value = parse_duration(text)?;
    if value < min || value > max {
        return Err(format!(
            "{} is out of range ({} to {})",
            text.trim(),
            show(min),
            show(max)
        ));
    }
    Ok(value)
}

fn show(d: Duration) -> String {
    if d >= Duration::from_secs(3600) && d.as_secs().is_multiple_of(3600) {
        format!("{}h", d.as_secs() / 3600)
    } else {
        format!("{d:?}")
    }
}

/// Parses a size in bytes: `65536`, `256KiB`, `64MiB`, `1GiB` (also `KB`,
/// `MB`, `GB` as powers of 1000).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("invalid size {text:?} (examples: 65536, 256KiB, 64MiB)"))?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} out of range"))
}

/// Where the cluster token comes from: the `CLUSTER_TOKEN` environment
/// variable or a file (a Docker secret, say). Never a command-line value,
/// which `ps` would show to every user of the machine.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// File holding the cluster token (for example /run/secrets/cluster_token).
    /// The token may also come from the CLUSTER_TOKEN environment variable,
    /// never from the command line.
    #[arg(long, env = "CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
}

/// Name of the environment variable that may hold the cluster token.
pub const CLUSTER_TOKEN_ENV: &str = "CLUSTER_TOKEN";

impl TokenArgs {
    /// The configured token, if any.
    pub fn load(&self) -> Result<Option<ClusterToken>, TokenError> {
        let from_env = std::env::var(CLUSTER_TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty());
        match (&self.cluster_token_file, from_env) {
            (Some(path), _) => ClusterToken::from_file(path).map(Some),
            (None, Some(text)) => ClusterToken::new(&text).map(Some),
            (None, None) => Ok(None),
        }
    }
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
    #[arg(long, env = "HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub handshake_timeout: Duration,
    /// Longest time one line may take to arrive, from its first byte to its
    /// newline; a peer that leaves a line unfinished longer is disconnected.
    #[arg(long, env = "LINE_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub line_timeout: Duration,
}

impl FramingArgs {
    /// The reader settings these flags describe.
    pub fn reader_config(&self) -> ReaderConfig {
        ReaderConfig {
            max_line: self.max_line,
            idle_flush: self.idle_flush,
            line_timeout: self.line_timeout,
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

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("65536").unwrap(), 65536);
        assert_eq!(parse_bytes("256KiB").unwrap(), 256 * 1024);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2MB").unwrap(), 2_000_000);
        for bad in ["", "MiB", "5 apples", "-1"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zero_and_absurd_timeouts_and_periods_are_refused() {
        assert_eq!(
            parse_timeout("0").unwrap_err(),
            "0 is out of range (1ms to 24h)"
        );
        assert!(parse_timeout("25h").is_err());
        assert!(parse_period("5ms").is_err());
        assert_eq!(parse_period("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_timeout("1ms").unwrap(), Duration::from_millis(1));
    }
}

/// A listen address that may be switched off (`--http-listen off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalListen(pub Option<std::net::SocketAddr>);

/// Parses an optional listen address: `IP:PORT`, or `off` (also an empty
/// value) for none.
pub fn parse_listen_or_off(text: &str) -> Result<OptionalListen, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(OptionalListen(None));
    }
    text.parse()
        .map(|addr| OptionalListen(Some(addr)))
        .map_err(|_| format!("expected IP:PORT or `off`, not {text:?}"))
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    #[test]
    fn a_listen_address_may_be_off() {
        assert_eq!(parse_listen_or_off("off"), Ok(OptionalListen(None)));
        assert_eq!(parse_listen_or_off(""), Ok(OptionalListen(None)));
        assert_eq!(
            parse_listen_or_off("127.0.0.1:8080"),
            Ok(OptionalListen(Some("127.0.0.1:8080".parse().unwrap())))
        );
        assert!(parse_listen_or_off("localhost:8080").is_err());
    }
}
