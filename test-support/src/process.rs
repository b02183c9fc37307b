//! A workspace binary as a child process.
//!
//! The binary's path comes from the test, as `env!("CARGO_BIN_EXE_<name>")`:
//! Cargo sets it only for the integration tests of the crate that builds
//! the binary.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output};
use std::thread;
use std::time::{Duration, Instant};

use crate::WAIT;

/// How often the log file is read again while waiting for the address.
const POLL: Duration = Duration::from_millis(20);

/// A child process that is killed and reaped when this is dropped, however
/// the test ends, so no server outlives its test.
#[derive(Debug)]
pub struct Process {
    /// The child itself: take its piped stdout, signal it by its id, or
    /// wait for its exit.
    pub child: Child,
}

impl Process {
    /// Spawns `command` and waits until its log file `log_file` has a line
    /// containing `listening` with an `addr=<socket address>` field (the
    /// binaries log `... <listening> addr=127.0.0.1:40123 ...` once bound,
    /// which tells a test the port behind `--listen 127.0.0.1:0`).
    ///
    /// Standard input, output and error are as `command` sets them.
    ///
    /// # Panics
    ///
    /// If the command cannot be spawned, exits before logging the line, or
    /// has not logged it within [`WAIT`].
    pub fn start(command: &mut Command, log_file: &Path, listening: &str) -> (Process, SocketAddr) {
        let name = program_name(command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut process = Process { child };
        let deadline = Instant::now() + WAIT;
        loop {
            let log = std::fs::read_to_string(log_file).unwrap_or_default();
            if let Some(addr) = listening_address(&log, listening) {
                return (process, addr);
            }
            if let Some(status) = process.child.try_wait().expect("child status") {
                panic!("{name} exited early: {status}");
            }
            assert!(Instant::now() < deadline, "{name} never listened");
            thread::sleep(POLL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // It may have exited already; then there is nothing to kill.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr=` field of the first line of `log` that contains `listening`.
fn listening_address(log: &str, listening: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|line| line.contains(listening))
        .flat_map(|line| line.split(' '))
        .find_map(|field| field.strip_prefix("addr="))
        .map(|addr| addr.parse().expect("listening address"))
}

/// The file name of the command's program, for messages.
fn program_name(command: &Command) -> String {
    let program = Path::new(command.get_program());
    program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// How a process that ran to its end ended, and what it wrote, as text.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output; bytes that are not UTF-8 become U+FFFD.
    pub stdout: String,
    /// Its standard error; bytes that are not UTF-8 become U+FFFD.
    pub stderr: String,
}

impl From<Output> for Finished {
    fn from(output: Output) -> Finished {
        Finished {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `command` to its end with its standard output and error captured
/// (and no standard input), as [`Command::output`] does.
///
/// # Panics
///
/// If the command cannot be spawned.
pub fn run_to_end(command: &mut Command) -> Finished {
    let name = program_name(command);
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
        .into()
}

/// [`run_to_end`] on a blocking thread, so the test's runtime keeps serving
/// the fake peers the process talks to meanwhile.
///
/// # Panics
///
/// If the command cannot be spawned or has not ended within [`WAIT`].
pub async fn run_to_end_async(mut command: Command) -> Finished {
    let name = program_name(&command);
    tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || run_to_end(&mut command)),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} did not end within {WAIT:?}"))
    .expect("the blocking thread running the process panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_the_listening_line_only() {
        let log = "\
2026-11-24 12:00:00,000  INFO starting addr=10.0.0.1:1
2026-11-24 12:00:00,001  INFO echo server listening addr=127.0.0.1:40123 max_connections=100
";
        assert_eq!(
            listening_address(log, "echo server listening"),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(listening_address(log, "head node listening"), None);
    }

    #[test]
    fn a_process_that_logs_its_address_is_started() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.txt");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("echo 'x listening addr=127.0.0.1:9' > \"$0\"; sleep 60")
            .arg(&log);
        let (mut process, addr) = Process::start(&mut command, &log, "listening");
        assert_eq!(addr, "127.0.0.1:9".parse().unwrap());
        assert!(process.child.try_wait().unwrap().is_none(), "still running");
    }

    #[test]
    #[should_panic(expected = "sh exited early")]
    fn a_process_that_exits_before_listening_fails_the_test() {
        let dir = tempfile::tempdir().unwrap();
        Process::start(
            Command::new("sh").args(["-c", "exit 3"]),
            &dir.path().join("log.txt"),
            "listening",
        );
    }

    #[tokio::test]
    async fn a_finished_process_gives_its_status_and_output_as_text() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 2"]);
        let finished = run_to_end_async(command).await;
        assert_eq!(finished.status.code(), Some(2));
        assert_eq!(finished.stdout, "out\n");
        assert_eq!(finished.stderr, "err\n");
    }
}
