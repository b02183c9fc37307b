//! `datanode verify`: its summary and its exit status, from the binary.

use std::path::Path;
use std::process::Command;

use datanode::storage::{DATA_FILE, format_record};
use protocol::ids::MessageId;
use test_support::process::run_to_end;

fn record(seq: u64, text: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    let id = MessageId { epoch: 9, seq };
    format_record(
        &mut buf,
        "2026-11-23 05:55:31,793",
        Some(id),
        None,
        text.as_bytes(),
    );
    buf
}

/// Exit status and standard output and error of `datanode verify <dir>`.
fn verify(dir: &Path) -> (i32, String, String) {
    let out = run_to_end(
        Command::new(env!("CARGO_BIN_EXE_datanode"))
            .arg("verify")
            .arg(dir)
            .env_remove("DATA_DIR"),
    );
    (out.status.code().unwrap(), out.stdout, out.stderr)
}

#[test]
fn a_clean_file_exits_0_with_a_one_line_summary() {
    let dir = tempfile::tempdir().unwrap();
    let contents: Vec<u8> = (1..=3).flat_map(|n| record(n, "x")).collect();
    std::fs::write(dir.path().join(DATA_FILE), contents).unwrap();
    let (status, out, _) = verify(dir.path());
    assert_eq!(status, 0, "{out}");
    let path = dir.path().join(DATA_FILE);
    assert_eq!(
        out,
        format!(
            "{}: 3 records, 0 corrupt, 0 torn, 0 duplicated ids (0 extra copies), 0 keys under several ids\n",
            path.display()
        )
    );
}

#[test]
fn problems_exit_1_and_are_listed_under_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut contents = record(1, "x");
    contents.extend(record(1, "x"));
    contents.extend(&record(2, "y")[..10]);
    std::fs::write(dir.path().join(DATA_FILE), contents).unwrap();
    let (status, out, _) = verify(dir.path());
    assert_eq!(status, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].ends_with(": 2 records, 0 corrupt, 1 torn, 1 duplicated ids (1 extra copies), 0 keys under several ids"),
        "{out}"
    );
    assert!(lines[1].starts_with("  line 3: torn: "), "{out}");
    assert_eq!(lines[2], "  id 9-1: stored 2 times", "{out}");
}

#[test]
fn an_unreadable_file_exits_2_with_one_line_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (status, out, err) = verify(dir.path());
    assert_eq!(status, 2);
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("datanode verify: cannot read "), "{err}");
}

#[test]
fn a_directory_with_segments_is_checked_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.000001.txt"), record(1, "x")).unwrap();
    std::fs::write(dir.path().join("data.000002.txt"), record(2, "y")).unwrap();
    let mut active = record(3, "z");
    active.extend(record(2, "y"));
    std::fs::write(dir.path().join(DATA_FILE), active).unwrap();
    let (status, out, _) = verify(dir.path());
    assert_eq!(status, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{} (3 files): 4 records, 0 corrupt, 0 torn, 1 duplicated ids (1 extra copies), 0 keys under several ids",
                dir.path().display()
            )
            .as_str(),
            "  id 9-2: stored 2 times",
        ],
        "{out}"
    );
}
