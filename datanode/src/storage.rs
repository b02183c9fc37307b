//! `data.txt`: append-only, one human-readable record per message.
//!
//! - the record format, `<timestamp> - [<message-id>]
//!   crc32c=<checksum> mensaje: <text>`, written by [`format_record`] and
//!   read by [`parse_line`];
//! - [`DataFile`]: the open file. Records are staged, then
//!   [`DataFile::commit`] appends everything staged with one `write` and,
//!   under [`FsyncPolicy::Batch`], makes it durable with one `fdatasync`
//!   before any of it is acknowledged (group commit). A failed commit cuts
//!   the file back to where the batch began. Blocking file I/O: it runs on
//!   the data node's data-path thread, never on an async runtime's worker;
//! - [`DirLock`]: one process per data directory;
//! - [`verify`]: checks a whole file without taking the lock;
//! - [`StorageFile`]: what a commit writes through, so tests can inject
//!   faults ([`FaultyFile`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use node_kit::timefmt::write_timestamp;
use protocol::ids::{KeyRef, MessageId};
use tracing::{error, warn};

use crate::metrics::NodeMetrics;

mod epoch;
mod file;
pub mod index;
mod lock;
mod record;
pub mod retention;
pub mod segments;
mod store_id;
mod verify;

pub use epoch::{EPOCH_FILE, EpochCheck, EpochFile, check_epoch};
pub use file::{Faults, FaultyFile, RollStep, StorageFile};
pub use lock::{DirLock, LOCK_FILE};
pub use record::{Checksum, LineError, Record, format_record, parse_line};
pub use store_id::{STORE_ID_FILE, load_or_create_store_id};
pub use verify::{
    CorruptRecord, DuplicateId, DuplicateKey, Torn, TornRecord, VerifyReport, verify, verify_dir,
};

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

/// What commits to `data.txt` are written through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// The file itself.
    #[default]
    File,
    /// A [`FaultyFile`] that injects these faults: for testing how a node
    /// handles a full or failing disk.
    Faulty(Faults),
}

/// Why a data directory or its `data.txt` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another claim ([`DirLock`]) on the directory is held: another node,
    /// in this process or another.
    #[error(
        "data directory {} is in use by another process{}",
        dir.display(),
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's process id, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The directory, the lock file or `data.txt` could not be created or opened.
    #[error("cannot open {}: {error}", path.display())]
    Open {
        /// What could not be opened.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A torn record at the end of `data.txt` could not be cut off.
    #[error("cannot repair the end of {}: {error}", path.display())]
    Repair {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Appending a batch failed (a full disk, a short write).
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Forcing a batch to disk failed: what the disk holds is unknown.
    #[error("cannot sync {} to disk: {error}", path.display())]
    Sync {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// An earlier commit failed; nothing more is written to the file.
    #[error("{} is not written after a failed commit", path.display())]
    Failed {
        /// The file.
        path: PathBuf,
    },
    /// The epoch file holds something other than one number.
    #[error("{} does not hold an epoch: {content:?}", path.display())]
    BadEpoch {
        /// The file.
        path: PathBuf,
        /// What it holds (at most 80 characters of it).
        content: String,
    },
    /// The store-id file holds something other than 16 hex digits.
    #[error("{} does not hold a store id: {content:?}", path.display())]
    BadStoreId {
        /// The file.
        path: PathBuf,
        /// What it holds (at most 80 characters of it).
        content: String,
    },
    /// Rolling `data.txt` into a segment failed at some step: the node
    /// stops, and its next start recovers from whatever step was reached.
    #[error("cannot roll {} into {}: {error}", path.display(), segment.display())]
    Roll {
        /// The active file.
        path: PathBuf,
        /// The segment it was becoming.
        segment: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A segment could not be removed by retention.
    #[error("cannot remove {}: {error}", path.display())]
    Remove {
        /// The segment.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
}

/// How much of the end of `data.txt` stays in the page cache after each
/// commit; what is older is dropped from it (it is on disk, synced).
/// Appending to a file takes a fresh page of memory for every 4 KiB, and
/// a page never used before, or given back to the host by a virtual
/// machine, costs several times the copy itself; dropping the pages behind
/// the writes lets the next writes reuse them. Reads of older records go
/// to the disk. The tail kept serves the readers that follow the writes.
pub const CACHED_TAIL: u64 = 16 * 1024 * 1024;

/// The bytes of a file `len` long to drop from the page cache when those
/// before `uncached_to` are dropped already: all but the last
/// [`CACHED_TAIL`], once that is [`CACHED_TAIL`] or more (one call per
/// 16 MiB written, not one per commit).
fn cache_to_drop(len: u64, uncached_to: u64) -> Option<std::ops::Range<u64>> {
    let keep_from = len.saturating_sub(CACHED_TAIL);
    (keep_from >= uncached_to.saturating_add(CACHED_TAIL)).then_some(uncached_to..keep_from)
}

/// The open `data.txt` and the records staged for the next commit. Holds
/// the claim on its directory for as long as it lives.
#[derive(Debug)]
pub struct DataFile {
    file: Box<dyn StorageFile>,
    path: PathBuf,
    dir: PathBuf,
    policy: FsyncPolicy,
    backend: Backend,
    staged: Vec<u8>,
    /// End offset in `staged` of each staged line (for `Always`).
    line_ends: Vec<usize>,
    /// The id of each staged line (same index as `line_ends`).
    staged_ids: Vec<Option<MessageId>>,
    /// The records with an id of the last successful commit, with their
    /// offsets in the file: for the message index. Bounded by the batch.
    last_commit: Vec<(MessageId, u64)>,
    stamp: String,
    /// `stamp` in Unix milliseconds.
    stamp_ms: u64,
    /// The file's length after the last successful commit: where a failed
    /// commit cuts it back to.
    committed_len: u64,
    /// Bytes before this offset were let go of from the page cache.
    uncached_to: u64,
    /// Set by a failed commit. What the disk holds is unknown from then on
    /// (a failed fsync may have dropped pages it will never report again),
    /// so nothing more is written.
    failed: bool,
    stats: CommitStats,
    /// The same, and fsync durations, for `/metrics`.
    pub(crate) metrics: Arc<NodeMetrics>,
    _lock: DirLock,
}

/// What this process has written to `data.txt`, for the log at shutdown
/// (the benchmark reads fsyncs per second from it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Records written and synced (per the policy).
    pub records: u64,
    /// Successful commits (batches).
    pub commits: u64,
    /// `fdatasync` calls that succeeded.
    pub syncs: u64,
}

impl DataFile {
    /// [`DataFile::open_with`], writing to the file itself.
    pub fn open(dir: &Path, policy: FsyncPolicy) -> Result<DataFile, StorageError> {
        DataFile::open_with(dir, policy, Backend::File)
    }

    /// Claims `dir` ([`DirLock`]), creating it if needed, and opens (or
    /// creates) `dir/data.txt` for appending, through `backend`. Directory
    /// entries it creates are synced to disk. A torn record at the end of
    /// the file (an interrupted write, never acknowledged) is cut off; a
    /// last whole record that fails its checksum is kept, with a warning.
    pub fn open_with(
        dir: &Path,
        policy: FsyncPolicy,
        backend: Backend,
    ) -> Result<DataFile, StorageError> {
        create_dir_synced(dir).map_err(|error| StorageError::Open {
            path: dir.to_owned(),
            error,
        })?;
        let lock = DirLock::acquire(dir)?;
        let path = dir.join(DATA_FILE);
        let open_error = |error| StorageError::Open {
            path: path.clone(),
            error,
        };
        let created = !path.try_exists().map_err(open_error)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(open_error)?;
        if created || lock.created_file() {
            sync_dir(dir).map_err(|error| StorageError::Open {
                path: dir.to_owned(),
                error,
            })?;
        }
        cut_torn_tail(&file, &path).map_err(|error| StorageError::Repair {
            path: path.clone(),
            error,
        })?;
        let file: Box<dyn StorageFile> = match backend {
            Backend::File => Box::new(file),
            Backend::Faulty(faults) => Box::new(FaultyFile::new(file, faults)),
        };
        let committed_len = file.len().map_err(open_error)?;
        Ok(DataFile {
            file,
            path,
            dir: dir.to_owned(),
            policy,
            backend,
            staged: Vec::with_capacity(64 * 1024),
            line_ends: Vec::new(),
            staged_ids: Vec::new(),
            last_commit: Vec::new(),
            stamp: String::with_capacity(32),
            stamp_ms: 0,
            committed_len,
            uncached_to: 0,
            failed: false,
            stats: CommitStats::default(),
            metrics: Arc::default(),
            _lock: lock,
        })
    }

    /// Where the messages go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stages a record of `text` under `key` ([`format_record`]); nothing
    /// is written until [`DataFile::commit`].
    pub fn stage(&mut self, id: Option<MessageId>, key: Option<KeyRef<'_>>, text: &[u8]) {
        if self.line_ends.is_empty() {
            // One timestamp per batch: the lines are written together.
            let now = SystemTime::now();
            self.stamp.clear();
            let _ = write_timestamp(&mut self.stamp, now);
            self.stamp_ms = node_kit::timefmt::parse_timestamp_millis(&self.stamp).unwrap_or(0);
        }
        format_record(&mut self.staged, &self.stamp, id, key, text);
        self.line_ends.push(self.staged.len());
        self.staged_ids.push(id);
    }

    /// The directory of the file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file's length after the last successful commit.
    pub fn len(&self) -> u64 {
        self.committed_len
    }

    /// Whether nothing has been committed to the file.
    pub fn is_empty(&self) -> bool {
        self.committed_len == 0
    }

    /// The records with an id of the last successful commit, with the
    /// offsets where they start in the file, in file order; empty after a
    /// commit with nothing staged.
    pub fn last_commit(&self) -> &[(MessageId, u64)] {
        &self.last_commit
    }

    /// The time written in the records of the last batch staged, Unix ms.
    pub fn last_stamp_ms(&self) -> u64 {
        self.stamp_ms
    }

    /// Rolls the active file into segment `segment` (its path): syncs
    /// `data.txt` (whatever the fsync policy, so that only the active file
    /// can ever end in a torn record), renames it, syncs the directory,
    /// creates an empty `data.txt` and syncs the directory again. Called
    /// between batches only (nothing may be staged).
    ///
    /// A crash at any step leaves a directory that opens without loss or
    /// duplication: before the rename, nothing changed; after it, the
    /// records are in the segment and [`DataFile::open`] creates the
    /// missing `data.txt`. A failure here marks the file failed (no commit
    /// succeeds after it): the node stops and its next start recovers.
    pub fn roll(&mut self, segment: &Path) -> Result<(), StorageError> {
        if self.failed {
            return Err(StorageError::Failed {
                path: self.path.clone(),
            });
        }
        debug_assert!(self.line_ends.is_empty(), "never in the middle of a batch");
        let result = self.roll_steps(segment);
        if let Err(error) = result {
            self.failed = true;
            return Err(StorageError::Roll {
                path: self.path.clone(),
                segment: segment.to_owned(),
                error,
            });
        }
        Ok(())
    }

    fn roll_steps(&mut self, segment: &Path) -> io::Result<()> {
        let stop_after = match self.backend {
            Backend::Faulty(faults) => faults.roll_stops_after,
            Backend::File => None,
        };
        let injected = |step: RollStep| {
            if stop_after == Some(step) {
                Err(io::Error::other(format!("injected crash after {step:?}")))
            } else {
                Ok(())
            }
        };
        self.file.sync_data()?;
        injected(RollStep::Synced)?;
        if segment.try_exists()? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the segment already exists",
            ));
        }
        std::fs::rename(&self.path, segment)?;
        sync_dir(&self.dir)?;
        injected(RollStep::Renamed)?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(&self.path)?;
        sync_dir(&self.dir)?;
        injected(RollStep::Created)?;
        self.file = match self.backend {
            Backend::File => Box::new(file),
            Backend::Faulty(faults) => Box::new(FaultyFile::new(file, faults)),
        };
        self.committed_len = 0;
        self.uncached_to = 0;
        Ok(())
    }

    /// Drops the `index`-th staged record (from 0) before it is written;
    /// the later ones move down by one. The dropped record's line, or
    /// `None` if there is no such record.
    pub fn unstage(&mut self, index: usize) -> Option<Vec<u8>> {
        if index >= self.line_ends.len() {
            return None;
        }
        let start = if index == 0 {
            0
        } else {
            self.line_ends[index - 1]
        };
        let end = self.line_ends[index];
        let line = self.staged.drain(start..end).collect();
        self.line_ends.remove(index);
        self.staged_ids.remove(index);
        for later in &mut self.line_ends[index..] {
            *later -= end - start;
        }
        Some(line)
    }

    /// Drops every staged record unwritten (a session that ends before its
    /// batch's commit: nothing of it was acknowledged), handing each line
    /// to `dropped` first.
    pub fn discard_staged(&mut self, mut dropped: impl FnMut(&[u8])) {
        let mut start = 0;
        for &end in &self.line_ends {
            dropped(&self.staged[start..end]);
            start = end;
        }
        self.clear_staged();
    }

    /// What `/metrics` shows of this file (and the keys held, set by the node).
    pub fn metrics(&self) -> Arc<NodeMetrics> {
        self.metrics.clone()
    }

    /// What this process has committed so far.
    pub fn stats(&self) -> CommitStats {
        self.stats
    }

    /// Lines staged and not yet committed.
    pub fn staged(&self) -> usize {
        self.line_ends.len()
    }

    /// Appends every staged line and syncs per the policy. When this returns
    /// `Ok`, the lines may be acknowledged.
    ///
    /// When it fails, none of them may be: the file is cut back to its
    /// length before the batch (best effort, and not synced: after a failed
    /// fsync another one proves nothing), and every later commit fails with
    /// [`StorageError::Failed`].
    pub fn commit(&mut self) -> Result<(), StorageError> {
        if self.failed {
            self.clear_staged();
            return Err(StorageError::Failed {
                path: self.path.clone(),
            });
        }
        self.last_commit.clear();
        if self.line_ends.is_empty() {
            return Ok(());
        }
        let result = self.append_staged();
        let batch_len = self.staged.len() as u64;
        let records = self.line_ends.len() as u64;
        if result.is_ok() {
            let mut start = self.committed_len;
            for (&end, id) in self.line_ends.iter().zip(&self.staged_ids) {
                if let Some(id) = id {
                    self.last_commit.push((*id, start));
                }
                start = self.committed_len + end as u64;
            }
        }
        self.clear_staged();
        match result {
            Ok(()) => {
                self.committed_len += batch_len;
                self.drop_written_from_cache();
                self.stats.records += records;
                self.stats.commits += 1;
                self.metrics.committed(records, batch_len);
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                self.cut_back_failed_batch();
                Err(e)
            }
        }
    }

    fn append_staged(&mut self) -> Result<(), StorageError> {
        let path = &self.path;
        let write_error = |error| StorageError::Write {
            path: path.clone(),
            error,
        };
        let sync_error = |error| StorageError::Sync {
            path: path.clone(),
            error,
        };
        match self.policy {
            FsyncPolicy::Always => {
                let mut start = 0;
                for &end in &self.line_ends {
                    self.file
                        .write_all(&self.staged[start..end])
                        .map_err(write_error)?;
                    let started = std::time::Instant::now();
                    self.file.sync_data().map_err(sync_error)?;
                    self.metrics.synced(started.elapsed());
                    self.stats.syncs += 1;
                    start = end;
                }
            }
            FsyncPolicy::Batch => {
                self.file.write_all(&self.staged).map_err(write_error)?;
                let started = std::time::Instant::now();
                self.file.sync_data().map_err(sync_error)?;
                self.metrics.synced(started.elapsed());
                self.stats.syncs += 1;
            }
            FsyncPolicy::Never => self.file.write_all(&self.staged).map_err(write_error)?,
        }
        Ok(())
    }

    /// Lets the page cache drop what is written and synced, except the
    /// last [`CACHED_TAIL`]: appends then reuse the pages just freed
    /// instead of taking new ones (see the constant).
    fn drop_written_from_cache(&mut self) {
        if self.policy == FsyncPolicy::Never {
            // Unsynced pages are dirty: the advice would start writeback.
            return;
        }
        if let Some(range) = cache_to_drop(self.committed_len, self.uncached_to) {
            self.file.drop_cached(range.start, range.end - range.start);
            self.uncached_to = range.end;
        }
    }

    /// Nothing of a failed batch is acknowledged, so none of it should stay
    /// in the file looking stored.
    fn cut_back_failed_batch(&mut self) {
        match self.file.set_len(self.committed_len) {
            Ok(()) => warn!(
                length = self.committed_len,
                "cut {} back to its length before the failed batch",
                self.path.display()
            ),
            Err(e) => error!(
                length = self.committed_len,
                "cannot cut {} back to its length before the failed batch ({e}); \
                 records after that length were never acknowledged",
                self.path.display()
            ),
        }
    }

    fn clear_staged(&mut self) {
        self.staged.clear();
        self.line_ends.clear();
        self.staged_ids.clear();
        if self.staged.capacity() > 4 * 1024 * 1024 {
            self.staged = Vec::with_capacity(64 * 1024);
        }
    }
}

/// Creates `dir` and any missing parent, syncing each parent whose entries
/// changed so that the new directories survive a power loss.
fn create_dir_synced(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut ancestor = Some(dir);
    while let Some(d) = ancestor.filter(|d| !d.as_os_str().is_empty()) {
        if d.try_exists()? {
            break;
        }
        missing.push(d);
        ancestor = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for new in missing {
        match new.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

/// Calls `each` with every line of the file at `path` (its newline
/// included; the last one may have none), reading only as far as the
/// file's length when it was opened, so that a running node's appends do
/// not keep it reading. Stops early when `each` says so.
pub(crate) fn each_line(
    path: &Path,
    mut each: impl FnMut(&[u8]) -> std::ops::ControlFlow<()>,
) -> Result<(), StorageError> {
    use std::io::{BufRead, BufReader, Read};
    let read_error = |error| StorageError::Read {
        path: path.to_owned(),
        error,
    };
    let file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file.take(len));
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(read_error)? == 0 {
            return Ok(());
        }
        if each(&line).is_break() {
            return Ok(());
        }
    }
}

/// Makes the entries of `dir` (files created, renamed or removed in it)
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `contents` durably: written to `name.tmp`,
/// synced, renamed over it, and the directory synced, so a crash leaves
/// the old contents or the new, never a mix.
pub(crate) fn replace_durably(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StorageError> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    let write_error = |error| StorageError::Write {
        path: path.clone(),
        error,
    };
    let sync_error = |error| StorageError::Sync {
        path: path.clone(),
        error,
    };
    let mut file = File::create(&temp).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(sync_error)?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(write_error)?;
    sync_dir(dir).map_err(sync_error)
}

/// A crash mid-append can leave a torn record at the end of the file. It
/// was never acknowledged (a record is, only once its whole batch has been
/// written and synced), so it is cut off, back to just after the last
/// newline. The last whole record is kept even if it fails its checksum:
/// it may have been acknowledged. That is only reported.
fn cut_torn_tail(file: &File, path: &Path) -> io::Result<()> {
    let len = file.metadata()?.len();
    let whole = last_newline_before(file, len)?.map_or(0, |at| at + 1);
    if whole < len {
        file.set_len(whole)?;
        file.sync_data()?;
        warn!(
            removed_bytes = len - whole,
            "{} ended in a torn record (an interrupted write, never acknowledged); removed its {} bytes",
            path.display(),
            len - whole
        );
    }
    if whole > 0 {
        warn_if_last_record_damaged(file, whole, path)?;
    }
    Ok(())
}

/// Longer than any record the node writes: not read whole into memory.
const LONGEST_RECORD: u64 = 16 << 20;

/// Warns when the last line of the file, which ends at `end` (just after
/// its newline), is not an intact record.
fn warn_if_last_record_damaged(file: &File, end: u64, path: &Path) -> io::Result<()> {
    let start = last_newline_before(file, end - 1)?.map_or(0, |at| at + 1);
    let problem = if end - start > LONGEST_RECORD {
        "is too long to be a record".to_owned()
    } else {
        let mut line = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut line, start)?;
        match parse_line(&line) {
            Ok(record) if record.is_intact() => return Ok(()),
            Ok(_) => "fails its checksum".to_owned(),
            Err(e) => format!("is not a record ({e})"),
        }
    };
    let line = newlines_before(file, start)? + 1;
    warn!(
        line,
        "the last record of {} (line {line}) {problem}; kept, as it may have been acknowledged \
         (`datanode verify` lists every damaged record)",
        path.display()
    );
    Ok(())
}

const SCAN_CHUNK: usize = 64 * 1024;

/// Offset of the last `\n` before offset `end`, if any.
fn last_newline_before(file: &File, mut end: u64) -> io::Result<Option<u64>> {
    let mut chunk = vec![0u8; SCAN_CHUNK];
    while end > 0 {
        let start = end.saturating_sub(SCAN_CHUNK as u64);
        let buf = &mut chunk[..(end - start) as usize];
        file.read_exact_at(buf, start)?;
        if let Some(at) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + at as u64));
        }
        end = start;
    }
    Ok(None)
}

/// How many `\n` the file has before offset `end`.
fn newlines_before(file: &File, end: u64) -> io::Result<u64> {
    let mut chunk = vec![0u8; SCAN_CHUNK];
    let mut count = 0;
    let mut at = 0;
    while at < end {
        let len = (end - at).min(SCAN_CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..len], at)?;
        count += chunk[..len].iter().filter(|&&b| b == b'\n').count() as u64;
        at += len as u64;
    }
    Ok(count)
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
pub fn stored_messages(path: &Path) -> Result<Vec<StoredMessage>, StorageError> {
    let contents = std::fs::read(path).map_err(|error| StorageError::Read {
        path: path.to_owned(),
        error,
    })?;
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
pub fn stored_ids(path: &Path) -> Result<Vec<MessageId>, StorageError> {
    Ok(stored_messages(path)?
        .into_iter()
        .filter_map(|message| message.id)
        .collect())
}

/// The index and the removed ids hold no invariant a panicking holder
/// could break halfway through a read; a poisoned lock is still usable.
pub(crate) fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// See [`read_lock`].
pub(crate) fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MessageId {
        MessageId { epoch: 9, seq }
    }

    fn record(seq: u64, text: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        format_record(
            &mut buf,
            "2026-01-01 00:00:00,000",
            Some(id(seq)),
            None,
            text.as_bytes(),
        );
        buf
    }

    fn faulty(faults: Faults) -> Backend {
        Backend::Faulty(faults)
    }

    #[test]
    fn staged_lines_are_appended_in_order_on_commit() {
        for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
            let dir = tempfile::tempdir().unwrap();
            let mut data = DataFile::open(dir.path(), policy).unwrap();
            data.stage(Some(id(1)), None, b"numero random: 5");
            data.stage(Some(id(2)), None, b"hola");
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
            assert!(verify(data.path()).unwrap().is_clean());
        }
    }

    #[test]
    fn commits_are_counted_with_one_sync_per_batch_or_per_record() {
        for (policy, syncs) in [
            (FsyncPolicy::Always, 3),
            (FsyncPolicy::Batch, 1),
            (FsyncPolicy::Never, 0),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut data = DataFile::open(dir.path(), policy).unwrap();
            for n in 1..=3 {
                data.stage(Some(id(n)), None, b"x");
            }
            data.commit().unwrap();
            data.commit().unwrap();
            assert_eq!(
                data.stats(),
                CommitStats {
                    records: 3,
                    commits: 1,
                    syncs
                },
                "{policy:?}: an empty commit counts nothing"
            );
        }
    }

    #[test]
    fn the_page_cache_keeps_only_the_tail_of_the_file() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(CACHED_TAIL, 16 * MIB);
        // Nothing until 16 MiB more than the tail are written.
        assert_eq!(cache_to_drop(0, 0), None);
        assert_eq!(cache_to_drop(31 * MIB, 0), None);
        assert_eq!(cache_to_drop(32 * MIB, 0), Some(0..16 * MIB));
        // Then from where the last drop ended, never into the tail.
        assert_eq!(cache_to_drop(40 * MIB, 16 * MIB), None);
        assert_eq!(cache_to_drop(50 * MIB, 16 * MIB), Some(16 * MIB..34 * MIB));
        let mut uncached_to = 0;
        for len in (0..1000).map(|n| n * 700 * 1024) {
            if let Some(range) = cache_to_drop(len, uncached_to) {
                assert_eq!(range.start, uncached_to);
                assert_eq!(range.end, len - CACHED_TAIL);
                uncached_to = range.end;
            }
            assert!(len.saturating_sub(uncached_to) < 2 * CACHED_TAIL + 700 * 1024);
        }
    }

    /// Whether the 4 KiB at `offset` of `path` are in the page cache: a
    /// read that must not wait for the disk gets them only then.
    fn cached(path: &Path, offset: u64) -> bool {
        let file = File::open(path).unwrap();
        let mut buf = [0u8; 4096];
        match rustix::io::preadv2(
            &file,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            offset,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) => n > 0,
            Err(rustix::io::Errno::AGAIN) => false,
            Err(e) => panic!("preadv2: {e}"),
        }
    }

    #[test]
    fn written_and_synced_bytes_leave_the_page_cache_behind_the_tail() {
        const MIB: u64 = 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        let text = vec![b'x'; 1000];
        let mut n = 0;
        while data.committed_len < 2 * CACHED_TAIL + 4 * MIB {
            for _ in 0..256 {
                n += 1;
                data.stage(Some(id(n)), None, &text);
            }
            data.commit().unwrap();
        }
        let path = dir.path().join(DATA_FILE);
        let len = data.committed_len;
        // The advice is advice: the kernel keeps a page it holds for a
        // moment (seen once on a loaded machine), so most of the pages must
        // be out, not every one. Without the advice all of them stay in.
        let dropped: Vec<u64> = (0..CACHED_TAIL).step_by(256 * 1024).collect();
        let still_cached: Vec<u64> = dropped
            .iter()
            .copied()
            .filter(|&o| cached(&path, o))
            .collect();
        assert!(
            still_cached.len() * 4 <= dropped.len(),
            "{} of {} sampled pages before the tail are still cached ({still_cached:?}, file {len} bytes)",
            still_cached.len(),
            dropped.len()
        );
        for offset in [len - CACHED_TAIL, len - MIB, len - 4096] {
            assert!(cached(&path, offset), "{offset} of {len} is not cached");
        }
        // And everything is still there to read.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }

    #[test]
    fn an_unstaged_record_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        for n in 1..=3 {
            data.stage(Some(id(n)), None, b"x");
        }
        let dropped = data.unstage(1).expect("the second record is staged");
        assert_eq!(parse_line(&dropped).unwrap().id, Some(id(2)));
        assert!(data.unstage(2).is_none());
        data.stage(Some(id(4)), None, b"x");
        assert!(data.unstage(0).is_some());
        data.commit().unwrap();
        assert_eq!(stored_ids(data.path()).unwrap(), [id(3), id(4)]);
        assert!(verify(data.path()).unwrap().is_clean());
    }

    #[test]
    fn discarded_records_are_handed_back_and_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        data.stage(Some(id(1)), None, b"x");
        data.commit().unwrap();
        for n in 2..=4 {
            data.stage(Some(id(n)), None, b"x");
        }
        let mut dropped = Vec::new();
        data.discard_staged(|line| dropped.push(parse_line(line).unwrap().id));
        assert_eq!(dropped, [Some(id(2)), Some(id(3)), Some(id(4))]);
        assert_eq!(data.staged(), 0);
        data.commit().unwrap();
        assert_eq!(stored_ids(data.path()).unwrap(), [id(1)]);
    }

    #[test]
    fn reopening_cuts_off_a_torn_record_and_appends_after_the_last_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut contents = record(1, "a");
        contents.extend(&record(2, "b")[..30]);
        std::fs::write(dir.path().join(DATA_FILE), &contents).unwrap();
        let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        assert_eq!(
            std::fs::read(data.path()).unwrap(),
            record(1, "a"),
            "the torn bytes are gone, the whole record stays"
        );
        data.stage(Some(id(3)), None, b"c");
        data.commit().unwrap();
        assert_eq!(stored_ids(data.path()).unwrap(), [id(1), id(3)]);
        assert!(verify(data.path()).unwrap().is_clean());
    }

    #[test]
    fn a_file_that_is_all_torn_record_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DATA_FILE), &record(1, "a")[..10]).unwrap();
        let data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        assert_eq!(std::fs::read(data.path()).unwrap(), b"");
    }

    #[test]
    fn a_last_whole_record_that_fails_its_checksum_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut contents = record(1, "a");
        let mut damaged = record(2, "b");
        let last_text_byte = damaged.len() - 2;
        damaged[last_text_byte] = b'B';
        contents.extend(&damaged);
        std::fs::write(dir.path().join(DATA_FILE), &contents).unwrap();
        let data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        assert_eq!(std::fs::read(data.path()).unwrap(), contents);
        assert_eq!(
            stored_ids(data.path()).unwrap(),
            [id(1)],
            "kept, but not read as intact"
        );
        let report = verify(data.path()).unwrap();
        assert_eq!(
            report.corrupt,
            [CorruptRecord {
                file: DATA_FILE.into(),
                line: 2,
                id: Some(id(2))
            }]
        );
    }

    #[test]
    fn a_data_directory_is_used_by_one_data_file_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        let e = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "data directory {} is in use by another process (pid {})",
                dir.path().display(),
                std::process::id()
            )
        );
        drop(first);
        DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    }

    #[test]
    fn verify_reads_a_directory_a_data_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
        data.stage(Some(id(1)), None, b"a");
        data.commit().unwrap();
        let report = verify(data.path()).unwrap();
        assert_eq!((report.records, report.is_clean()), (1, true));
        assert!(
            DataFile::open(dir.path(), FsyncPolicy::Batch).is_err(),
            "verify left the claim alone"
        );
    }

    #[test]
    fn opening_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let data = DataFile::open(&nested, FsyncPolicy::Batch).unwrap();
        assert!(data.path().exists());
        assert!(nested.join(LOCK_FILE).exists());
    }

    #[test]
    fn running_out_of_space_mid_batch_acknowledges_nothing_and_cuts_the_batch_off() {
        for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
            let dir = tempfile::tempdir().unwrap();
            let first = record(1, "a").len() as u64;
            let faults = Faults {
                // The first batch and part of the second fit.
                write_budget: Some(first + 50),
                ..Faults::default()
            };
            let mut data = DataFile::open_with(dir.path(), policy, faulty(faults)).unwrap();
            data.stage(Some(id(1)), None, b"a");
            data.commit().unwrap();
            let before = std::fs::read(data.path()).unwrap();
            for n in 2..=4 {
                data.stage(Some(id(n)), None, b"a longer text than the first");
            }
            let e = data.commit().unwrap_err();
            assert!(
                matches!(&e, StorageError::Write { error, .. } if error.raw_os_error() == Some(28)),
                "{policy:?}: {e:?}"
            );
            assert_eq!(
                std::fs::read(data.path()).unwrap(),
                before,
                "{policy:?}: back to its length before the batch"
            );
            data.stage(Some(id(5)), None, b"a");
            assert!(
                matches!(data.commit(), Err(StorageError::Failed { .. })),
                "{policy:?}: nothing more is written"
            );
            assert_eq!(std::fs::read(data.path()).unwrap(), before);
        }
    }

    #[test]
    fn a_failed_fsync_acknowledges_nothing_and_is_never_retried() {
        for policy in [FsyncPolicy::Always, FsyncPolicy::Batch] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Faults {
                syncs_before_eio: Some(1),
                ..Faults::default()
            };
            let mut data = DataFile::open_with(dir.path(), policy, faulty(faults)).unwrap();
            data.stage(Some(id(1)), None, b"a");
            data.commit().unwrap();
            data.stage(Some(id(2)), None, b"b");
            let e = data.commit().unwrap_err();
            assert!(
                matches!(&e, StorageError::Sync { error, .. } if error.raw_os_error() == Some(5)),
                "{policy:?}: {e:?}"
            );
            assert_eq!(stored_ids(data.path()).unwrap(), [id(1)], "{policy:?}");
            data.stage(Some(id(3)), None, b"c");
            assert!(
                matches!(data.commit(), Err(StorageError::Failed { .. })),
                "{policy:?}: a failed commit is not retried"
            );
        }
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!("batch".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Batch);
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }
}
