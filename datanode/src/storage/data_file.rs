//! The open `data.txt`: records staged, then committed with one `write`
//! and (per the fsync policy) one `fdatasync`; a failed commit cuts the
//! file back to where its batch began; a torn record at the end is cut off
//! when the file is opened.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use node_kit::timefmt::write_timestamp;
use protocol::ids::{KeyRef, MessageId};
use tracing::{error, warn};

use super::{
    DATA_FILE, DirLock, Faults, FaultyFile, RollStep, StorageError, StorageFile, format_record,
    parse_line, sync_dir,
};
use crate::metrics::NodeMetrics;
use crate::node::Staging;

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
    /// The time written in a repair's copy ([`DataFile::stage_copy`]).
    copy_stamp: String,
    /// The newest time written in a staged record (Unix ms).
    staged_newest_ms: u64,
    /// The same, of the last successful commit.
    committed_newest_ms: u64,
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
    /// Then the file is synced, before anything reads it: see
    /// `sync_before_trusting`.
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
        sync_before_trusting(&file, backend).map_err(|error| StorageError::Sync {
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
            copy_stamp: String::with_capacity(32),
            staged_newest_ms: 0,
            committed_newest_ms: 0,
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
            self.start_batch();
        }
        format_record(&mut self.staged, &self.stamp, id, key, text);
        self.line_ends.push(self.staged.len());
        self.staged_ids.push(id);
        self.staged_newest_ms = self.staged_newest_ms.max(self.stamp_ms);
    }

    /// Stages a repair's copy of a message: as [`DataFile::stage`], with
    /// `stored_ms` (Unix ms, when its first copies were stored) as the
    /// record's time, so that retention by age counts from then. A time no
    /// record can carry (0, or past the year 9999) gets the batch's.
    pub fn stage_copy(
        &mut self,
        id: MessageId,
        key: Option<KeyRef<'_>>,
        text: &[u8],
        stored_ms: u64,
    ) {
        if self.line_ends.is_empty() {
            self.start_batch();
        }
        self.copy_stamp.clear();
        let at = SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(stored_ms));
        if let Some(at) = at.filter(|_| stored_ms > 0) {
            let _ = write_timestamp(&mut self.copy_stamp, at);
        }
        let (stamp, stamp_ms) = if self.copy_stamp.len() == self.stamp.len() {
            (&self.copy_stamp, stored_ms)
        } else {
            (&self.stamp, self.stamp_ms)
        };
        format_record(&mut self.staged, stamp, Some(id), key, text);
        self.line_ends.push(self.staged.len());
        self.staged_ids.push(Some(id));
        self.staged_newest_ms = self.staged_newest_ms.max(stamp_ms);
    }

    /// One timestamp per batch: its lines are written together.
    fn start_batch(&mut self) {
        let now = SystemTime::now();
        self.stamp.clear();
        let _ = write_timestamp(&mut self.stamp, now);
        self.stamp_ms = node_kit::timefmt::parse_timestamp_millis(&self.stamp).unwrap_or(0);
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

    /// The time written in the records of the last batch staged, Unix ms
    /// (a repair's copy carries its own).
    pub fn last_stamp_ms(&self) -> u64 {
        self.stamp_ms
    }

    /// The newest time written in a record of the last successful commit,
    /// Unix ms (0 if it wrote none).
    pub fn last_commit_newest_ms(&self) -> u64 {
        self.committed_newest_ms
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
        self.committed_newest_ms = 0;
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
            self.committed_newest_ms = self.staged_newest_ms;
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
        self.staged_newest_ms = 0;
        if self.staged.capacity() > 4 * 1024 * 1024 {
            self.staged = Vec::with_capacity(64 * 1024);
        }
    }
}

/// The node's decisions stage their batch straight into the write buffer:
/// a message's text is copied once, into its record.
impl Staging for DataFile {
    fn stage(&mut self, id: Option<MessageId>, key: Option<KeyRef<'_>>, text: &[u8]) {
        DataFile::stage(self, id, key, text);
    }

    fn stage_copy(&mut self, id: MessageId, key: Option<KeyRef<'_>>, text: &[u8], stored_ms: u64) {
        DataFile::stage_copy(self, id, key, text, stored_ms);
    }

    fn staged(&self) -> usize {
        DataFile::staged(self)
    }

    fn last_stamp_ms(&self) -> u64 {
        DataFile::last_stamp_ms(self)
    }

    fn unstage_record(
        &mut self,
        index: usize,
        dropped: impl FnOnce(Option<MessageId>, Option<KeyRef<'_>>),
    ) -> bool {
        let Some(line) = self.unstage(index) else {
            return false;
        };
        if let Ok(record) = parse_line(&line) {
            dropped(record.id, record.key);
        }
        true
    }

    fn discard_staged_records(
        &mut self,
        mut dropped: impl FnMut(Option<MessageId>, Option<KeyRef<'_>>),
    ) {
        self.discard_staged(|line| {
            if let Ok(record) = parse_line(line) {
                dropped(record.id, record.key);
            }
        });
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

/// Syncs `data.txt` as it is opened, before the store indexes it and the
/// node reports its keys. A process killed between a commit's `write` and
/// its `fdatasync` leaves records in the page cache that were never
/// acknowledged and may not be on disk: a restart would read them, index
/// them and report them as held, and a power loss after that would take
/// them. One `fdatasync` makes what the node is about to trust durable (or
/// fails, and the node does not start on a file it cannot vouch for).
/// Segments need none: each was synced before it was renamed, whatever the
/// fsync policy; so was the cut of a torn tail.
fn sync_before_trusting(file: &File, backend: Backend) -> io::Result<()> {
    if let Backend::Faulty(faults) = backend
        && faults.open_sync_fails
    {
        return Err(rustix::io::Errno::IO.into());
    }
    file.sync_data()
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

#[cfg(test)]
mod tests;
