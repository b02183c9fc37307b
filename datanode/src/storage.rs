//! `data.txt`: append-only, one human-readable line per message, written on a
//! dedicated thread so disk waits never block the async runtime.
//!
//! Each line is `<timestamp> - [<message-id>] mensaje: <text>`. The thread
//! takes every job queued since its last write, appends them with one
//! `write`, and under [`FsyncPolicy::Batch`] makes them durable with one
//! `fdatasync` before any of them is acknowledged (group commit).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::thread;
use std::time::SystemTime;

use bytes::Bytes;
use protocol::message::MessageId;
use protocol::timefmt::write_timestamp;
use tokio::sync::mpsc;

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

/// One unit of work, in the order the head node sent it.
#[derive(Debug)]
pub enum Item {
    /// Append this message.
    Store {
        /// Id assigned by the head node.
        id: Option<MessageId>,
        /// The client's text.
        text: Bytes,
    },
    /// Answer this heartbeat once everything before it is written: the
    /// answer proves the whole write path works, not just the socket.
    Ping(u64),
}

/// What became of one [`Item`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Written (and synced per policy).
    Stored(Option<MessageId>),
    /// The heartbeat, answered after the items before it.
    Pong(u64),
}

/// A batch of items and where to report them.
#[derive(Debug)]
pub struct Job {
    /// The items, in order.
    pub items: Vec<Item>,
    /// Receives the [`Done`]s of a whole write at once, or the write error.
    pub done: mpsc::UnboundedSender<Result<Vec<Done>, String>>,
}

/// The storage thread's handle. Dropping it lets the thread finish the jobs
/// already queued and exit; [`Storage::close`] also waits for that.
#[derive(Debug)]
pub struct Storage {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Storage {
    /// Opens (creating if needed) `dir/data.txt` and starts the thread.
    pub fn open(dir: &Path, policy: FsyncPolicy) -> io::Result<Storage> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("data.txt");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        repair_partial_last_line(&mut file)?;
        let (jobs, receiver) = mpsc::unbounded_channel();
        let thread = thread::Builder::new()
            .name("data.txt writer".into())
            .spawn(move || write_loop(file, policy, receiver))?;
        Ok(Storage {
            jobs: Some(jobs),
            thread: Some(thread),
            path,
        })
    }

    /// Where the messages go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a job. Returns `false` if the thread has stopped.
    pub fn submit(&self, job: Job) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// Finishes the queued jobs and stops the thread.
    pub async fn close(mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
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

/// Largest batch written at once, so acknowledgements keep flowing under load.
const MAX_BATCH_ITEMS: usize = 8192;

fn write_loop(mut file: File, policy: FsyncPolicy, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut stamp = String::with_capacity(32);
    let mut batch: Vec<Job> = Vec::new();
    while let Some(job) = jobs.blocking_recv() {
        batch.push(job);
        let mut items = batch[0].items.len();
        while items < MAX_BATCH_ITEMS {
            match jobs.try_recv() {
                Ok(job) => {
                    items += job.items.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        stamp.clear();
        let _ = write_timestamp(&mut stamp, SystemTime::now());
        let result = write_batch(&mut file, policy, &batch, &stamp, &mut buf);
        for job in batch.drain(..) {
            let report = match &result {
                Ok(()) => Ok(job
                    .items
                    .iter()
                    .map(|item| match item {
                        Item::Store { id, .. } => Done::Stored(*id),
                        Item::Ping(n) => Done::Pong(*n),
                    })
                    .collect()),
                Err(e) => Err(e.to_string()),
            };
            let _ = job.done.send(report);
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write data.txt; no further messages will be acknowledged");
            return;
        }
        if buf.capacity() > 4 * 1024 * 1024 {
            buf = Vec::with_capacity(64 * 1024);
        }
    }
}

fn write_batch(
    file: &mut File,
    policy: FsyncPolicy,
    batch: &[Job],
    stamp: &str,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    buf.clear();
    for item in batch.iter().flat_map(|job| &job.items) {
        let Item::Store { id, text } = item else {
            continue;
        };
        format_line(buf, stamp, *id, text);
        if policy == FsyncPolicy::Always {
            file.write_all(buf)?;
            file.sync_data()?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        file.write_all(buf)?;
        if policy == FsyncPolicy::Batch {
            file.sync_data()?;
        }
    }
    Ok(())
}

/// Appends `<stamp> - [<id>] mensaje: <text>\n`.
fn format_line(buf: &mut Vec<u8>, stamp: &str, id: Option<MessageId>, text: &[u8]) {
    buf.extend_from_slice(stamp.as_bytes());
    buf.extend_from_slice(b" - ");
    if let Some(id) = id {
        buf.push(b'[');
        id.put(buf);
        buf.extend_from_slice(b"] ");
    }
    buf.extend_from_slice(b"mensaje: ");
    buf.extend_from_slice(text);
    buf.push(b'\n');
}

/// Reads back the message ids stored in a `data.txt` (for tests and tools).
pub fn stored_ids(path: &Path) -> io::Result<Vec<MessageId>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let start = line.find(" - [")? + 4;
            let end = start + line[start..].find(']')?;
            line[start..end].parse().ok()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MessageId {
        MessageId { epoch: 9, seq }
    }

    async fn store_all(storage: &Storage, items: Vec<Item>) -> Vec<Done> {
        let (done, mut reports) = mpsc::unbounded_channel();
        assert!(storage.submit(Job { items, done }));
        reports.recv().await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn lines_are_appended_in_order_with_ids_and_pongs_come_after() {
        for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
            let dir = tempfile::tempdir().unwrap();
            let storage = Storage::open(dir.path(), policy).unwrap();
            let done = store_all(
                &storage,
                vec![
                    Item::Store {
                        id: Some(id(1)),
                        text: Bytes::from_static(b"numero random: 5"),
                    },
                    Item::Ping(7),
                    Item::Store {
                        id: Some(id(2)),
                        text: Bytes::from_static(b"hola"),
                    },
                ],
            )
            .await;
            assert_eq!(
                done,
                [
                    Done::Stored(Some(id(1))),
                    Done::Pong(7),
                    Done::Stored(Some(id(2)))
                ]
            );
            let path = storage.path().to_owned();
            storage.close().await;
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{policy:?}: {text}");
            assert!(
                lines[0].ends_with(" - [9-1] mensaje: numero random: 5"),
                "{}",
                lines[0]
            );
            assert!(lines[1].ends_with(" - [9-2] mensaje: hola"), "{}", lines[1]);
            assert_eq!(
                lines[0].len(),
                "2026-11-23 05:37:10,123 - [9-1] mensaje: numero random: 5".len()
            );
            assert_eq!(stored_ids(&path).unwrap(), [id(1), id(2)]);
        }
    }

    #[tokio::test]
    async fn reopening_appends_and_repairs_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("data.txt"),
            b"2026-01-01 00:00:00,000 - [9-1] mensaje: a\n2026-01-01 00:00:00,000 - [9-2] men",
        )
        .unwrap();
        let storage = Storage::open(dir.path(), FsyncPolicy::Batch).unwrap();
        store_all(
            &storage,
            vec![Item::Store {
                id: Some(id(3)),
                text: Bytes::from_static(b"c"),
            }],
        )
        .await;
        let path = storage.path().to_owned();
        storage.close().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.contains("[9-2] men\n2026"),
            "the torn line stays on its own line"
        );
        assert_eq!(stored_ids(&path).unwrap(), [id(1), id(2), id(3)]);
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!("batch".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Batch);
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }
}
