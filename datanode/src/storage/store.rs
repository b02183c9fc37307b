//! The data directory as a whole: its segments and `data.txt`, the message
//! index over all of them, rolling and retention.
//!
//! - [`Store::open`]: after [`DataFile::open`] (which cuts a torn tail off
//!   `data.txt`), reads every file once, oldest segment first, and builds
//!   the [`MessageIndex`], each file's [`SegmentMeta`] and the client keys
//!   within the deduplication window ([`KeyIndex`]);
//! - [`Store::committed`]: indexes what a commit wrote;
//! - [`Store::maybe_roll`]: between batches, rolls `data.txt` into a
//!   segment once it has reached `--segment-bytes`;
//! - [`Store::apply_retention`]: removes whole old segments per the
//!   [`RetentionPolicy`], recording each in `retention.txt` first;
//! - [`Store::reader`]: a handle the read thread uses
//!   ([`crate::reads::StoreReader`]).
//!
//! Runs on the data-path thread; the index is shared with the read thread
//! behind a lock that either side holds only for in-memory work (never
//! across file I/O), so reads never wait for a disk write, nor writes for
//! a disk read.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use node_kit::timefmt::parse_timestamp_millis;
use protocol::datanode::IdRange;
use protocol::ids::MessageId;
use tracing::{info, warn};

use crate::keys::KeyIndex;
use crate::reads::StoreReader;
use crate::storage::index::{IndexBuilder, Location, MessageIndex};
use crate::storage::removed::{IdSet, SetCache, write_set};
use crate::storage::retention::{
    Reason, RemovedIds, RetentionLog, RetentionPolicy, SegmentMeta, choose_removals, lookup_removed,
};
use crate::storage::segments::{
    DEFAULT_SEGMENT_BYTES, DataFileName, list_data_files, segment_name,
};
use crate::storage::{
    DATA_FILE, DataFile, StorageError, each_line, parse_line, read_lock, write_lock,
};

/// How the store rolls and prunes its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// `data.txt` is rolled into a segment once it is at least this long
    /// (`--segment-bytes`).
    pub segment_bytes: u64,
    /// Which old segments are removed.
    pub retention: RetentionPolicy,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            retention: RetentionPolicy::default(),
        }
    }
}

/// How often the data path checks retention by age when nothing rolls.
pub const RETENTION_CHECK_EVERY: Duration = Duration::from_secs(60);

/// What retention has removed since this process started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionStats {
    /// Segments removed.
    pub segments: u64,
    /// Their records.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What [`Store::open`] read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpenStats {
    /// Files read (segments and `data.txt`).
    pub files: usize,
    /// Intact records with an id, indexed or not.
    pub records: u64,
    /// Keys added to the key index.
    pub keys: usize,
    /// Lines skipped: torn, damaged or without an id.
    pub skipped: u64,
    /// Of those, the damaged ones: a record that fails its checksum (or
    /// has lost its checksum token), a line that is not a record, a
    /// segment that ends in a torn line. Reported to the head node, whose
    /// repair then gives their messages their copies.
    pub damaged: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    index: Arc<RwLock<MessageIndex>>,
    /// The number the active file will get when rolled; what index
    /// locations of its records carry.
    active: Arc<AtomicU32>,
    /// The closed segments, oldest first.
    segments: Vec<SegmentMeta>,
    /// The active file's records.
    active_meta: SegmentMeta,
    retention: RetentionLog,
    removed: Arc<RwLock<RemovedIds>>,
    /// The id sets of removed segments read last, shared with the readers
    /// (held only while one reads a set file).
    sets: Arc<Mutex<SetCache>>,
    /// The ids of the segments retention removed since the key index was
    /// last told ([`Store::take_removed_sets`]): their keys leave it too.
    removed_sets: Vec<IdSet>,
    stats: RetentionStats,
    opened: OpenStats,
    last_retention_ms: u64,
}

impl Store {
    /// Reads every file of `data`'s directory and rebuilds the message
    /// index, the files' metadata and `keys` (the keyed records within its
    /// window at `now_ms`); then applies retention once, at `now` or at
    /// the newest record's time if that is earlier (the start of its
    /// [`RetentionClock`](crate::storage::retention::RetentionClock)). `data` must be
    /// freshly opened (its torn tail already cut off).
    pub fn open(
        data: &DataFile,
        config: StoreConfig,
        keys: &mut KeyIndex,
        now: SystemTime,
    ) -> Result<Store, StorageError> {
        let dir = data.dir().to_owned();
        let retention = RetentionLog::load(&dir)?;
        let first_free = retention.removed().highest_segment().saturating_add(1);
        let files = list_data_files(&dir, first_free)?;
        let now_ms = millis(now);
        let mut rebuild = Rebuild {
            builder: MessageIndex::builder(),
            keys,
            now_ms,
            opened: OpenStats {
                files: files.len(),
                ..OpenStats::default()
            },
            last_stamp: ([0; 23], None),
        };
        let mut segments = Vec::new();
        let mut active_meta = None;
        for file in &files {
            let meta = rebuild.read_file(file)?;
            if file.active {
                active_meta = Some(meta);
            } else {
                segments.push(meta);
            }
        }
        let Rebuild {
            builder, opened, ..
        } = rebuild;
        let index = builder.finish();
        let active_meta = match active_meta {
            Some(meta) => meta,
            // open creates data.txt; a store without one is a bug upstream.
            None => SegmentMeta::new(
                segments
                    .last()
                    .map_or(first_free, |s| s.number.saturating_add(1))
                    .max(first_free),
            ),
        };
        if index.unindexed() > 0 {
            warn!(
                unindexed = index.unindexed(),
                "records that do not fit the message index (see docs/limits.md): they cannot be read by id"
            );
        }
        let removed = retention.removed().clone();
        // Retention at open goes by the records' own time when the wall
        // clock is ahead of it (see `RetentionClock`).
        let newest = segments
            .iter()
            .chain([&active_meta])
            .map(|s| s.newest_ms)
            .max()
            .filter(|&ms| ms > 0);
        let now = newest.map_or(now, |newest| {
            now.min(SystemTime::UNIX_EPOCH + Duration::from_millis(newest))
        });
        let mut store = Store {
            active: Arc::new(AtomicU32::new(active_meta.number)),
            dir,
            config,
            index: Arc::new(RwLock::new(index)),
            segments,
            active_meta,
            retention,
            removed: Arc::new(RwLock::new(removed)),
            sets: Arc::default(),
            removed_sets: Vec::new(),
            stats: RetentionStats::default(),
            opened,
            last_retention_ms: now_ms,
        };
        store.apply_retention(now)?;
        for set in store.take_removed_sets() {
            keys.forget_ids(|id| set.contains(id));
        }
        Ok(store)
    }

    /// The time of the newest record in the store (Unix ms), if it holds
    /// any: where its [`RetentionClock`](crate::storage::retention::RetentionClock) starts.
    pub fn newest_record_ms(&self) -> Option<u64> {
        self.segments
            .iter()
            .chain([&self.active_meta])
            .map(|s| s.newest_ms)
            .max()
            .filter(|&ms| ms > 0)
    }

    /// What the rebuild at open read.
    pub fn open_stats(&self) -> OpenStats {
        self.opened
    }

    /// Messages in the index.
    pub fn indexed(&self) -> usize {
        read_lock(&self.index).len()
    }

    /// Heap bytes of the message index.
    pub fn index_bytes(&self) -> usize {
        read_lock(&self.index).heap_bytes()
    }

    /// The closed segments, oldest first.
    pub fn segments(&self) -> &[SegmentMeta] {
        &self.segments
    }

    /// The number of the active file (the one it will get when rolled).
    pub fn active_number(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// What retention has removed since this process started.
    pub fn retention_stats(&self) -> RetentionStats {
        self.stats
    }

    /// Whether retention removed `id` from this directory (per
    /// `retention.txt` and the removed segments' id sets): a repair must
    /// never bring such a message back. See [`RemovedIds::lookup`].
    pub fn retention_removed(&self, id: MessageId) -> bool {
        retention_removed(&self.dir, &self.removed, &self.sets, id)
    }

    /// Per epoch, a range covering every id retention removed here (as far
    /// as the node still knows): for the report to a head node.
    pub fn removed_ranges(&self) -> Vec<IdRange> {
        read_lock(&self.removed).ranges()
    }

    /// The ids of the segments retention removed since the last call: the
    /// key index forgets their keys (a key whose record is gone must not
    /// be answered as stored).
    pub fn take_removed_sets(&mut self) -> Vec<IdSet> {
        std::mem::take(&mut self.removed_sets)
    }

    /// A handle for the read thread; `max_record` bounds one record's
    /// length as read back.
    pub fn reader(&self, max_record: usize) -> StoreReader {
        StoreReader::new(
            self.dir.clone(),
            self.index.clone(),
            self.active.clone(),
            self.removed.clone(),
            self.sets.clone(),
            max_record,
        )
    }

    /// Indexes what the last commit of `data` wrote.
    pub fn committed(&mut self, data: &DataFile) {
        let written = data.last_commit();
        self.active_meta.bytes = data.len();
        if written.is_empty() {
            return;
        }
        let segment = self.active_meta.number;
        // A repair's copy keeps its first copies' time: the batch's newest
        // record, not the batch's time, is how old the file's data is.
        let stamp = Some(data.last_commit_newest_ms());
        let mut index = write_lock(&self.index);
        for &(id, offset) in written {
            index.insert(id, Location { segment, offset });
        }
        drop(index);
        for &(id, _) in written {
            self.active_meta.add(id, stamp);
        }
    }

    /// Rolls `data.txt` into the next segment if it has reached the
    /// segment size (call between batches), then applies retention. True
    /// if it rolled.
    pub fn maybe_roll(
        &mut self,
        data: &mut DataFile,
        now: SystemTime,
    ) -> Result<bool, StorageError> {
        if data.len() < self.config.segment_bytes {
            return Ok(false);
        }
        let number = self.active_meta.number;
        let segment = self.dir.join(segment_name(number));
        data.roll(&segment)?;
        let next = number.saturating_add(1);
        // Records already indexed keep their location: the number was the
        // active file's all along.
        self.active.store(next, Ordering::Release);
        let mut closed = std::mem::replace(&mut self.active_meta, SegmentMeta::new(next));
        closed.bytes = data_len_or(&segment, closed.bytes);
        info!(
            segment = %segment.display(),
            records = closed.records,
            bytes = closed.bytes,
            ids = %closed.epochs_text(),
            "rolled {DATA_FILE} into {} at {} bytes; a new {DATA_FILE} is started",
            segment_name(number),
            closed.bytes
        );
        self.segments.push(closed);
        self.apply_retention(now)?;
        Ok(true)
    }

    /// Whether retention is due between two batches: by age every
    /// [`RETENTION_CHECK_EVERY`]; by size as soon as the files are over it
    /// and a segment could go.
    pub fn retention_due(&self, now: SystemTime) -> bool {
        let policy = &self.config.retention;
        let age_due = policy.max_age.is_some()
            && millis(now).saturating_sub(self.last_retention_ms)
                >= RETENTION_CHECK_EVERY.as_millis() as u64;
        let over_size = policy.max_bytes.is_some_and(|max| {
            !self.segments.is_empty()
                && self.active_meta.bytes + self.segments.iter().map(|s| s.bytes).sum::<u64>() > max
        });
        age_due || over_size
    }

    /// Removes the segments the retention policy says to remove at `now`,
    /// oldest first: each one's ids are written to its id set file and it
    /// is recorded in `retention.txt` (both synced), dropped from the
    /// index, then deleted, and logged. How many were removed; their ids
    /// wait for [`Store::take_removed_sets`].
    pub fn apply_retention(&mut self, now: SystemTime) -> Result<usize, StorageError> {
        let now_ms = millis(now);
        self.last_retention_ms = now_ms;
        let policy = self.config.retention;
        if !policy.is_on() {
            return Ok(0);
        }
        let removals = choose_removals(&self.segments, self.active_meta.bytes, now_ms, &policy);
        for &(number, reason) in &removals {
            let Some(at) = self.segments.iter().position(|s| s.number == number) else {
                continue;
            };
            let meta = self.segments[at].clone();
            let name = segment_name(number);
            let path = self.dir.join(&name);
            // Its ids first: once the line is written, `removed` is
            // answered from them.
            let ids = IdSet::from_sorted(read_lock(&self.index).ids_in_segment(number));
            write_set(&self.dir, number, &ids)?;
            self.retention.record(&meta, &name, reason, now)?;
            // Readers see it removed before it leaves the index, so a get
            // never finds it neither held nor removed.
            *write_lock(&self.removed) = self.retention.removed().clone();
            write_lock(&self.index).remove_segment(number);
            self.removed_sets.push(ids);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(StorageError::Remove { path, error }),
            }
            crate::storage::sync_dir(&self.dir).map_err(|error| StorageError::Remove {
                path: path.clone(),
                error,
            })?;
            self.segments.remove(at);
            self.stats.segments += 1;
            self.stats.records += meta.records;
            self.stats.bytes += meta.bytes;
            let why = match reason {
                Reason::Age => format!(
                    "its newest record is older than the retention age {:?}",
                    policy.max_age.unwrap_or_default()
                ),
                Reason::Bytes => format!(
                    "the data files were over the retention size of {} bytes",
                    policy.max_bytes.unwrap_or_default()
                ),
            };
            info!(
                segment = %name, records = meta.records, bytes = meta.bytes,
                ids = %meta.epochs_text(), reason = reason.as_str(),
                removed_total = self.stats.segments,
                "retention removed {name} ({} records, ids {}): {why}",
                meta.records,
                meta.epochs_text()
            );
        }
        Ok(removals.len())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What [`Store::open`] builds as it reads the files, oldest first.
struct Rebuild<'k> {
    builder: IndexBuilder,
    keys: &'k mut KeyIndex,
    now_ms: u64,
    opened: OpenStats,
    /// The last record timestamp parsed, and its Unix ms: a batch's records
    /// share one, so it is parsed once per run.
    last_stamp: ([u8; 23], Option<u64>),
}

impl Rebuild<'_> {
    /// Indexes every intact record with an id of `file` and adds its keys
    /// within the window; the file's metadata.
    fn read_file(&mut self, file: &DataFileName) -> Result<SegmentMeta, StorageError> {
        let mut meta = SegmentMeta::new(file.number);
        let mut offset = 0u64;
        let mut torn = false;
        each_line(&file.path, |line| {
            let at = offset;
            offset += line.len() as u64;
            if line.last() != Some(&b'\n') {
                torn = true;
                return ControlFlow::Break(());
            }
            self.add_line(line, file.number, at, &mut meta);
            ControlFlow::Continue(())
        })?;
        meta.bytes = offset;
        if torn && !file.active {
            self.opened.damaged += 1;
        }
        if torn {
            // Only the active file may end torn, and open cut that.
            warn!(
                "{} ends in a line without a newline; its records before it are read, \
                 the torn line is left as it is (`datanode verify` reports it)",
                file.path.display()
            );
        }
        Ok(meta)
    }

    /// One whole line of segment `segment`, at `offset`.
    fn add_line(&mut self, line: &[u8], segment: u32, offset: u64, meta: &mut SegmentMeta) {
        let record = match parse_line(line) {
            Ok(record) if record.is_intact() => record,
            _ => {
                self.opened.skipped += 1;
                self.opened.damaged += 1;
                return;
            }
        };
        let Some(id) = record.id else {
            self.opened.skipped += 1;
            return;
        };
        self.opened.records += 1;
        self.builder.push(id, Location { segment, offset });
        let at_ms = if self.last_stamp.0.as_slice() == record.timestamp.as_bytes() {
            self.last_stamp.1
        } else {
            let at_ms = parse_timestamp_millis(record.timestamp);
            if let Ok(stamp) = record.timestamp.as_bytes().try_into() {
                self.last_stamp = (stamp, at_ms);
            }
            at_ms
        };
        meta.add(id, at_ms);
        if let (Some(key), Some(at_ms)) = (record.key, at_ms)
            && self.keys.insert(key, id, at_ms, self.now_ms)
        {
            self.opened.keys += 1;
        }
    }
}

/// Whether retention removed `id` from `dir`: the ranges under the lock
/// on `removed`, then (the lock let go of) the id sets that may hold it,
/// through `sets`.
pub(crate) fn retention_removed(
    dir: &Path,
    removed: &RwLock<RemovedIds>,
    sets: &Mutex<SetCache>,
    id: MessageId,
) -> bool {
    let lookup = read_lock(removed).lookup(id);
    lookup_removed(lookup, id, |number| {
        sets.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(dir, number)
    })
}

/// The length of the file at `path`, or `fallback` if it cannot be read.
fn data_len_or(path: &Path, fallback: u64) -> u64 {
    std::fs::metadata(path).map_or(fallback, |m| m.len())
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses a retention age: a number and a unit, `d` (days), `h`, `m` or
/// `s` (`7d`, `12h`, `90m`); at least a second.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("invalid age {text:?} (examples: 7d, 12h, 30m)");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(unit_secs).ok_or_else(bad)?;
    if secs == 0 {
        return Err(format!("age {text:?} must be at least 1s"));
    }
    Ok(Duration::from_secs(secs))
}

/// Parses a size in bytes: a number, optionally followed by `KiB`, `MiB`,
/// `GiB` or `TiB` (`128MiB`, `2GiB`, `1048576`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("invalid size {text:?} (examples: 128MiB, 2GiB, 1048576)");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// [`parse_bytes`] within the segment size's bounds.
pub fn parse_segment_bytes(text: &str) -> Result<u64, String> {
    use crate::storage::segments::{MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES};
    let bytes = parse_bytes(text)?;
    if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&bytes) {
        return Err(format!(
            "segment size {bytes} is out of range ({MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES} bytes)"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
