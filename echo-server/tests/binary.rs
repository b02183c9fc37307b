//! The `echo-server` binary as a process, with its stdout in a pipe that
//! nobody reads (a stuck `docker logs`): logging must not stop the server.

use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Messages echoed while stdout is stalled. Each is logged at info, so this
/// is well over what a writer that blocks when full would absorb before
/// stopping the server: a 64 KiB pipe plus tracing-appender's default
/// buffer of 128,000 lines.
const MESSAGES: usize = 200_000;

/// Bound on every single wait; generous, so a loaded machine does not flake.
const WAIT: Duration = Duration::from_secs(30);

/// The child process; killed when the test ends, however it ends.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on a port of its choosing, logging to `log_dir` and to
/// a stdout pipe that is returned unread.
fn start_server(log_dir: &Path) -> (Server, SocketAddr) {
    let child = Command::new(env!("CARGO_BIN_EXE_echo-server"))
        .args(["--listen", "127.0.0.1:0", "--log-dir"])
        .arg(log_dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start echo-server");
    let mut server = Server { child };
    // The port is known from the log file's "listening" line.
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(log_dir.join("log.txt")).unwrap_or_default();
        if let Some(addr) = log
            .lines()
            .filter(|line| line.contains("echo server listening"))
            .flat_map(|line| line.split(' '))
            .find_map(|field| field.strip_prefix("addr="))
        {
            return (server, addr.parse().expect("listening address"));
        }
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("echo-server exited early: {status}");
        }
        assert!(Instant::now() < deadline, "echo-server never listened");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads one line, failing the test instead of hanging.
fn read_line(reader: &mut impl BufRead, what: &str) -> String {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => panic!("server closed the connection before {what}"),
        Ok(_) => line,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("{what} did not arrive within {WAIT:?}: the server is stuck")
        }
        Err(e) => panic!("reading {what}: {e}"),
    }
}

#[test]
fn keeps_echoing_while_nobody_reads_stdout() {
    let log_dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = start_server(log_dir.path());
    let stdout = server.child.stdout.take().expect("stdout is piped");

    let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
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
