//! The `echo-server` binary as a process, with its stdout in a pipe that
//! nobody reads (a stuck `docker logs`): logging must not stop the server.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use test_support::WAIT;
use test_support::lines::{connect, read_line};
use test_support::process::Process;

/// Messages echoed while stdout is stalled. Each is logged at info, so this
/// is well over what a writer that blocks when full would absorb before
/// stopping the server: a 64 KiB pipe plus tracing-appender's default
/// buffer of 128,000 lines.
const MESSAGES: usize = 200_000;

/// Starts the binary on a port of its choosing, logging to `log_dir` and to
/// a stdout pipe that is returned unread.
fn start_server(log_dir: &Path) -> (Process, std::net::SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_echo-server"));
    command
        .args(["--listen", "127.0.0.1:0", "--log-dir"])
        .arg(log_dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // The port is known from the log file's "listening" line.
    Process::start(
        &mut command,
        &log_dir.join("log.txt"),
        "echo server listening",
    )
}

#[test]
fn keeps_echoing_while_nobody_reads_stdout() {
    let log_dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = start_server(log_dir.path());
    let stdout = server.child.stdout.take().expect("stdout is piped");

    let (mut reader, stream) = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(b"peticion\n").unwrap();
    assert_eq!(read_line(&mut reader, "confirmacion"), "confirmacion\n");

    // Send everything from one thread while this one checks the echoes.
    let sender = thread::spawn(move || -> std::io::Result<()> {
        let mut out = BufWriter::new(writer);
        for i in 0..MESSAGES {
            writeln!(out, "numero random: {i}")?;
        }
        out.flush()
    });
    for i in 0..MESSAGES {
        let echo = read_line(&mut reader, &format!("echo {i} of {MESSAGES}"));
        assert_eq!(echo, format!("numero random: {i}\n"));
    }
    sender.join().unwrap().unwrap();

    // Once stdout is read again, the gap is reported there.
    let (lines_tx, lines_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut writer = stream;
    let deadline = Instant::now() + WAIT;
    let notice = 'found: loop {
        assert!(
            Instant::now() < deadline,
            "no drop notice on stdout within {WAIT:?}"
        );
        // Each logged line is a chance for the notice to go out before it.
        writer.write_all(b"after the stall\n").unwrap();
        assert_eq!(read_line(&mut reader, "late echo"), "after the stall\n");
        while let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(50)) {
            if line.contains("log output fell behind") {
                break 'found line;
            }
        }
    };
    // `2026-11-24 12:00:00,000  WARN log output fell behind: 1234 lines dropped`
    let (timestamp, rest) = notice.split_at(23);
    assert!(
        timestamp.as_bytes()[4] == b'-' && timestamp.as_bytes()[19] == b',',
        "{notice}"
    );
    let dropped: u64 = rest
        .strip_prefix("  WARN log output fell behind: ")
        .and_then(|rest| {
            rest.strip_suffix(" lines dropped")
                .or_else(|| rest.strip_suffix(" line dropped"))
        })
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("unexpected notice: {notice}"));
    assert!(dropped > 0, "{notice}");
    drop(server);
}
