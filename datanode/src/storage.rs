//! `data.txt`: append-only, one human-readable record per message.
//!
//! Each record is `<timestamp> - [<message-id>] crc32c=<checksum> mensaje:
//! <text>`, written by [`format_record`] and read by [`parse_line`]. Records
//! are staged, then [`DataFile::commit`] appends everything staged with one
//! `write` and, under [`FsyncPolicy::Batch`], makes it durable with one
//! `fdatasync` before any of it is acknowledged (group commit). This is
//! blocking file I/O: it runs on the data node's data-path thread, never on
//! an async runtime's worker.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use protocol::message::MessageId;
use protocol::timefmt::write_timestamp;

mod record;

pub use record::{Checksum, LineError, Record, format_record, parse_line};

/// Name of the data file inside a data directory.
pub const DATA_FILE: &str = "data.txt";

/// When appended lines are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` after every message, before its acknowledgement.
    Always,
    /// One `fdatasync` for all messages written together, before any of their
    /// acknowledgements (group commit).
    #[default]
    Batch,
    /// Written to the file (the OS page cache) before the acknowledgement,
    /// never forced: survives a crash of this process, not a power loss.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "batch" => Ok(FsyncPolicy::Batch),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "unknown fsync policy {other:?} (always, batch or never)"
            )),
        }
    }
}

/// The open `data.txt` and the lines staged for the next commit.
#[derive(Debug)]
pub struct DataFile {
    file: File,
    path: PathBuf,
    policy: FsyncPolicy,
    staged: Vec<u8>,
    /// End offset in `staged` of each staged line (for `Always`).
    line_ends: Vec<usize>,
    stamp: String,
}

impl DataFile {
    /// Opens (creating if needed) `dir/data.txt` for appending.
    pub fn open(dir: &Path, policy: FsyncPolicy) -> io::Result<DataFile> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DATA_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        repair_partial_last_line(&mut file)?;
        Ok(DataFile {
            file,
            path,
            policy,
            staged: Vec::with_capacity(64 * 1024),
            line_ends: Vec::new(),
            stamp: String::with_capacity(32),
        })
    }

    /// Where the messages go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stages a record of `text` ([`format_record`]); nothing is written
    /// until [`DataFile::commit`].
    pub fn stage(&mut self, id: Option<MessageId>, text: &[u8]) {
        if self.line_ends.is_empty() {
            // One timestamp per batch: the lines are written together.
            self.stamp.clear();
            let _ = write_timestamp(&mut self.stamp, SystemTime::now());
        }
        format_record(&mut self.staged, &self.stamp, id, text);
        self.line_ends.push(self.staged.len());
    }

    /// Lines staged and not yet committed.
    pub fn staged(&self) -> usize {
        self.line_ends.len()
    }

    /// Appends every staged line and syncs per the policy. When this returns
    /// `Ok`, the lines may be acknowledged.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.line_ends.is_empty() {
            return Ok(());
        }
        let result = match self.policy {
            FsyncPolicy::Always => {
                let mut start = 0;
                let mut result = Ok(());
                for &end in &self.line_ends {
                    result = self
                        .file
                        .write_all(&self.staged[start..end])
                        .and_then(|()| self.file.sync_data());
                    if result.is_err() {
                        break;
                    }
                    start = end;
                }
                result
            }
            FsyncPolicy::Batch => self
                .file
                .write_all(&self.staged)
                .and_then(|()| self.file.sync_data()),
            FsyncPolicy::Never => self.file.write_all(&self.staged),
        };
        self.staged.clear();
        self.line_ends.clear();
        if self.staged.capacity() > 4 * 1024 * 1024 {
            self.staged = Vec::with_capacity(64 * 1024);
        }
        result
    }
}

/// A crash mid-append can leave a last line without its newline; start the
/// next line on a fresh one so no two messages share a line.
fn repair_partial_last_line(file: &mut File) -> io::Result<()> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(());
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    if last[0] != b'\n' {
        tracing::warn!("data.txt ended in a partial line (interrupted write); starting a new line");
        file.write_all(b"\n")?;
        file.sync_data()?;
    }
    Ok(())
}

/// One message read back from a `data.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its id, if it came with one.
    pub id: Option<MessageId>,
    /// Its text.
    pub text: String,
}

/// Every message in a `data.txt` whose record is whole and intact (or
/// written before records carried a checksum), in file order: for tests
/// and tools.
pub fn stored_messages(path: &Path) -> io::Result<Vec<StoredMessage>> {
    let contents = std::fs::read(path)?;
    Ok(contents
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| line.ends_with(b"\n"))
        .filter_map(|line| parse_line(line).ok())
        .filter(Record::is_intact)
        .map(|record| StoredMessage {
            id: record.id,
            text: record.text_lossy().into_owned(),
        })
        .collect())
}

/// The ids of [`stored_messages`], in file order.
pub fn stored_ids(path: &Path) -> io::Result<Vec<MessageId>> {
    Ok(stored_messages(path)?
        .into_iter()
        .filter_map(|message| message.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MessageId {
        MessageId { epoch: 9, seq }
    }

    #[test]
    fn staged_lines_are_appended_in_order_on_commit() {
        for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
            let dir = tempfile::tempdir().unwrap();
            let mut data = DataFile::open(dir.path(), policy).unwrap();
            data.stage(Some(id(1)), b"numero random: 5");
            data.stage(Some(id(2)), b"hola");
            assert_eq!(data.staged(), 2);
            assert_eq!(
                std::fs::read_to_string(data.path()).unwrap(),
                "",
                "nothing before commit"
            );
            data.commit().unwrap();
            assert_eq!(data.staged(), 0);
            let text = std::fs::read_to_string(data.path()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{policy:?}: {text}");
            assert!(lines[0].contains(" - [9-1] crc32c="), "{}", lines[0]);
            assert!(
                lines[0].ends_with(" mensaje: numero random: 5"),
                "{}",
                lines[0]
            );
            assert!(lines[1].ends_with(" mensaje: hola"), "{}", lines[1]);
            assert_eq!(
                stored_messages(data.path()).unwrap(),
                [
                    StoredMessage {
                        id: Some(id(1)),
                        text: "numero random: 5".into()
                    },
                    StoredMessage {
                        id: Some(id(2)),
                        text: "hola".into()
                    },
                ]
            );
        }
    }

    #[test]
    fn reopening_appends_and_repairs_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("data.txt"),
            b"2026-01-01 00:00:00,000 - [9-1] mensaje: a\n2026-01-01 00:00:00,000 - [9-2] men",
        )
        .unwrap();
        let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        data.stage(Some(id(3)), b"c");
        data.commit().unwrap();
        let text = std::fs::read_to_string(data.path()).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.contains("[9-2] men\n2026"),
            "the torn line stays on its own line"
        );
        // The torn line is not a record.
        assert_eq!(stored_ids(data.path()).unwrap(), [id(1), id(3)]);
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!("batch".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Batch);
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }
}
