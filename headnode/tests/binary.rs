//! The `headnode` binary as a process, with its stdout in a pipe that
//! nobody reads: it must still stop on SIGTERM.

use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Lines that each make the head node log one line: far more than the
/// stdout pipe (64 KiB) and the stdout writer's queue (16,384 lines) hold.
const LOGGED: usize = 40_000;

/// Bound on every single wait; generous, so a loaded machine does not flake.
const WAIT: Duration = Duration::from_secs(30);

/// How long the head node may take to exit after SIGTERM: well within the
/// 10 s `docker stop` gives before it kills.
const EXIT_WITHIN: Duration = Duration::from_secs(8);

/// The child process; killed when the test ends, however it ends.
struct Head {
    child: Child,
}

impl Drop for Head {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on a port of its choosing, logging to `log_dir` and to
/// a stdout pipe that is never read.
fn start_head(log_dir: &Path) -> (Head, SocketAddr) {
    let child = Command::new(env!("CARGO_BIN_EXE_headnode"))
        .args([
            "--listen",
            "127.0.0.1:0",
            // Tests run at once: a port of its choosing here too.
            "--http-listen",
            "127.0.0.1:0",
            "--ping-interval",
            "1h",
            "--log-dir",
        ])
        .arg(log_dir)
        .env("RUST_LOG", "info")
        .env_remove("CLUSTER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start headnode");
    let mut head = Head { child };
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(log_dir.join("registro_server.txt")).unwrap_or_default();
        if let Some(addr) = log
            .lines()
            .filter(|line| line.contains("head node listening"))
            .flat_map(|line| line.split(' '))
            .find_map(|field| field.strip_prefix("addr="))
        {
            return (head, addr.parse().expect("listening address"));
        }
        if let Some(status) = head.child.try_wait().unwrap() {
            panic!("headnode exited early: {status}");
        }
        assert!(Instant::now() < deadline, "headnode never listened");
        thread::sleep(Duration::from_millis(20));
    }
}

fn read_line(reader: &mut impl BufRead, what: &str) -> String {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => panic!("head node closed the connection before {what}"),
        Ok(_) => line,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("{what} did not arrive within {WAIT:?}")
        }
        Err(e) => panic!("reading {what}: {e}"),
    }
}

#[test]
fn stops_on_sigterm_while_nobody_reads_stdout() {
    let log_dir = tempfile::tempdir().unwrap();
    let (mut head, addr) = start_head(log_dir.path());
    // Held, never read.
    let _stdout = head.child.stdout.take().expect("stdout is piped");

    let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(b"peticion\n").unwrap();
    assert_eq!(read_line(&mut reader, "confirmacion"), "confirmacion\n");
    writer.write_all(b"cliente\n").unwrap();

    // Each line that is not UTF-8 is answered and logged as a warning.
    let sender = thread::spawn(move || -> std::io::Result<()> {
        let mut out = BufWriter::new(writer);
        for _ in 0..LOGGED {
            out.write_all(b"\xff\n")?;
        }
        out.flush()
    });
    for i in 0..LOGGED {
        let answer = read_line(&mut reader, &format!("answer {i} of {LOGGED}"));
        assert_eq!(answer, "ERROR invalid UTF-8\n");
    }
    sender.join().unwrap().unwrap();
    drop(reader);
    drop(stream);

    let status = Command::new("kill")
        .args(["-TERM", &head.child.id().to_string()])
        .status()
        .expect("cannot run kill");
    assert!(status.success());
    let signalled = Instant::now();
    let exit = loop {
        if let Some(exit) = head.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < EXIT_WITHIN,
            "the head node did not exit within {EXIT_WITHIN:?} of SIGTERM while its stdout was not read"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    let log = std::fs::read_to_string(log_dir.path().join("registro_server.txt")).unwrap();
    assert!(
        log.contains("head node stopped"),
        "the log file was not flushed"
    );
}
