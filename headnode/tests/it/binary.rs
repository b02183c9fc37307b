//! The `headnode` binary as a process, with its stdout in a pipe that
//! nobody reads: it must still stop on SIGTERM.

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use test_support::lines::{connect, read_line};
use test_support::process::Process;

/// Lines that each make the head node log one line: far more than the
/// stdout pipe (64 KiB) and the stdout writer's queue (16,384 lines) hold.
const LOGGED: usize = 40_000;

/// How long the head node may take to exit after SIGTERM: well within the
/// 10 s `docker stop` gives before it kills.
const EXIT_WITHIN: Duration = Duration::from_secs(8);

/// Starts the binary on a port of its choosing, logging to `log_dir` and to
/// a stdout pipe that is never read.
fn start_head(log_dir: &Path) -> (Process, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_headnode"));
    command
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
        .stderr(Stdio::null());
    Process::start(
        &mut command,
        &log_dir.join("registro_server.txt"),
        "head node listening",
    )
}

#[test]
fn stops_on_sigterm_while_nobody_reads_stdout() {
    let log_dir = tempfile::tempdir().unwrap();
    let (mut head, addr) = start_head(log_dir.path());
    // Held, never read.
    let _stdout = head.child.stdout.take().expect("stdout is piped");

    let (mut reader, stream) = connect(addr);
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
