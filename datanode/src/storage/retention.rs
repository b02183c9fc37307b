//! Retention: old segments are removed whole, never the active file.
//!
//! - [`RetentionPolicy`]: by age (a segment whose newest record is older
//!   than `--retention-age`) and by size (the oldest segments while all the
//!   files together exceed `--retention-bytes`). Both off by default;
//! - [`choose_removals`]: which segments to remove, as a pure function of
//!   the segments and the time;
//! - [`RetentionLog`]: `retention.txt` beside `data.txt`, one line per
//!   removed segment, written and synced *before* the segment is deleted,
//!   and after the segment's exact ids are written to their own file
//!   (`removed.<NNNNNN>.ids`, see [`super::removed`]). From them the node
//!   knows which ids retention removed ([`RemovedIds`]), so that it
//!   answers `removed` for a message it held, never for one it did not
//!   (a repair then never brings the first back, and gives the second its
//!   copies); and the highest segment number ever used, so that numbers
//!   only grow.
//!
//! A `retention.txt` line:
//!
//! ```text
//! 2026-11-24 10:00:00,000 - removed segment=1 file=data.000001.txt records=1200 bytes=134217800 reason=age epochs=1795413330851:1-1150,1795413330999:1-50 ids=removed.000001.ids
//! ```
//!
//! A line without `ids=` was written before id sets were kept: an id
//! within its ranges (`epochs=`) is answered as removed.
//!
//! Bounds: the id sets of the last [`KEPT_SETS`] removed segments are
//! kept (on disk about a byte per id; older ones are deleted, and their
//! ids are answered as never held: a repair may then copy such a message
//! back, never leave one at too few copies); memory holds each kept
//! segment's ranges (tens of bytes) and the sets a reader looked at last
//! ([`super::removed::SetCache`]), never the lines.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use node_kit::timefmt::write_timestamp;
use protocol::datanode::IdRange;
use protocol::ids::MessageId;
use tracing::warn;

use super::StorageError;
use super::removed::{IdSet, parse_set_file_name, set_file_name};

/// Name of the retention record inside a data directory.
pub const RETENTION_FILE: &str = "retention.txt";

/// When whole segments are removed. Both bounds off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Remove a segment whose newest record is older than this.
    pub max_age: Option<Duration>,
    /// Remove the oldest segments while all files together (segments and
    /// the active file) are larger than this.
    pub max_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// Whether any bound is set.
    pub fn is_on(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }
}

/// Why a segment was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its newest record is older than the retention age.
    Age,
    /// The files together were over the retention size.
    Bytes,
}

impl Reason {
    /// `age` or `bytes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Age => "age",
            Reason::Bytes => "bytes",
        }
    }
}

/// The lowest and highest sequence number of one epoch in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochRange {
    /// The epoch.
    pub epoch: u64,
    /// Lowest sequence number of it in the segment.
    pub min_seq: u64,
    /// Highest.
    pub max_seq: u64,
}

/// What is known of one file's records: gathered when the node starts and
/// as batches are committed to the active file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Its number (the active file: the number it will get).
    pub number: u32,
    /// Its length in bytes.
    pub bytes: u64,
    /// Intact records with an id.
    pub records: u64,
    /// Time of its newest record, Unix ms (0 if none).
    pub newest_ms: u64,
    /// Per epoch, the range of sequence numbers it holds; few entries (one
    /// per head-node run whose messages it holds).
    pub epochs: Vec<EpochRange>,
}

impl SegmentMeta {
    /// An empty file numbered `number`.
    pub fn new(number: u32) -> Self {
        SegmentMeta {
            number,
            ..SegmentMeta::default()
        }
    }

    /// Counts one record.
    pub fn add(&mut self, id: MessageId, at_ms: Option<u64>) {
        self.records += 1;
        if let Some(at) = at_ms {
            self.newest_ms = self.newest_ms.max(at);
        }
        // The last epoch first: records of one run come together.
        match self.epochs.iter_mut().rev().find(|r| r.epoch == id.epoch) {
            Some(range) => {
                range.min_seq = range.min_seq.min(id.seq);
                range.max_seq = range.max_seq.max(id.seq);
            }
            None => self.epochs.push(EpochRange {
                epoch: id.epoch,
                min_seq: id.seq,
                max_seq: id.seq,
            }),
        }
    }

    /// `1795413330851:1-1150,1795413330999:1-50` (`-` without records).
    pub fn epochs_text(&self) -> String {
        if self.epochs.is_empty() {
            return "-".into();
        }
        let ranges: Vec<String> = self
            .epochs
            .iter()
            .map(|r| format!("{}:{}-{}", r.epoch, r.min_seq, r.max_seq))
            .collect();
        ranges.join(",")
    }
}

/// The clock age retention reads: the wall clock, but never ahead of the
/// newest record time the store held when it opened plus the monotonic
/// time since. A wall clock stepped forward (by a year, say) then removes
/// nothing the data's own age does not allow: the segments are judged
/// against the time their own records and a clock that cannot jump say it
/// is. Time the node was down does not count until its records say so (a
/// node back after a week keeps its old segments a week longer), and a
/// clock stepped back removes less, never more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionClock {
    /// The newest record time at open (Unix ms), or the wall clock then if
    /// there was none.
    anchor_ms: u64,
    /// The monotonic clock at open.
    anchor: Instant,
}

impl RetentionClock {
    /// The clock of a store opened at `wall` and `mono`, whose newest
    /// record was written at `newest_record_ms` (Unix ms; `None`: no
    /// record).
    pub fn new(newest_record_ms: Option<u64>, wall: SystemTime, mono: Instant) -> Self {
        RetentionClock {
            anchor_ms: newest_record_ms.unwrap_or_else(|| unix_ms(wall)),
            anchor: mono,
        }
    }

    /// The time retention goes by when the wall clock reads `wall` and the
    /// monotonic clock `mono`.
    pub fn now(&self, wall: SystemTime, mono: Instant) -> SystemTime {
        let elapsed = mono.saturating_duration_since(self.anchor).as_millis() as u64;
        let bound = self.anchor_ms.saturating_add(elapsed);
        SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms(wall).min(bound))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which segments to remove now, oldest first, and why: by age first,
/// then by size. `segments` are the closed segments, oldest first;
/// `active_bytes` is the length of `data.txt`, which is never removed.
pub fn choose_removals(
    segments: &[SegmentMeta],
    active_bytes: u64,
    now_ms: u64,
    policy: &RetentionPolicy,
) -> Vec<(u32, Reason)> {
    let mut removals = Vec::new();
    let mut kept: Vec<&SegmentMeta> = Vec::with_capacity(segments.len());
    for segment in segments {
        let too_old = policy
            .max_age
            .is_some_and(|age| segment.newest_ms.saturating_add(age.as_millis() as u64) < now_ms);
        if too_old {
            removals.push((segment.number, Reason::Age));
        } else {
            kept.push(segment);
        }
    }
    if let Some(max_bytes) = policy.max_bytes {
        let mut total = active_bytes + kept.iter().map(|s| s.bytes).sum::<u64>();
        for segment in kept {
            if total <= max_bytes {
                break;
            }
            total -= segment.bytes;
            removals.push((segment.number, Reason::Bytes));
        }
    }
    removals.sort_by_key(|&(number, _)| number);
    removals
}

/// Removed segments whose exact id sets are kept (their files and their
/// entries in memory); when one more is removed, the oldest set is
/// forgotten (its file deleted): its ids are then answered as never held.
pub const KEPT_SETS: usize = 4096;

/// One segment retention removed, as far as the node still knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemovedSegment {
    number: u32,
    /// Per epoch, the range of its sequence numbers: most ids are told
    /// apart without reading the set.
    epochs: Vec<EpochRange>,
    /// Its ids are in its set file ([`set_file_name`]). `false`: removed
    /// before id sets were kept, so only its ranges are known, and an id
    /// within them is answered as removed.
    exact: bool,
}

impl RemovedSegment {
    fn covers(&self, id: MessageId) -> bool {
        self.epochs
            .iter()
            .any(|r| r.epoch == id.epoch && (r.min_seq..=r.max_seq).contains(&id.seq))
    }
}

/// What [`RemovedIds::lookup`] can tell without reading a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Retention removed it here (by the range of a segment removed before
    /// id sets were kept).
    Removed,
    /// Retention removed no segment that may have held it.
    NotRemoved,
    /// It is within the ranges of these removed segments (newest first):
    /// removed iff one of their id sets holds it.
    InSets(Vec<u32>),
}

/// What retention has removed, from `retention.txt`; see the module
/// documentation.
#[derive(Debug, Clone, Default)]
pub struct RemovedIds {
    /// Oldest first: at most [`KEPT_SETS`] with exact sets, and those
    /// removed before sets were kept.
    segments: Vec<RemovedSegment>,
    /// The highest segment number removed.
    highest_segment: u32,
}

impl RemovedIds {
    /// Whether retention removed `id` here, as far as the ranges tell; see
    /// [`Lookup`]. A message removed here must never be brought back by a
    /// repair (it may still be held here, as a later copy: look it up in
    /// the index first).
    pub fn lookup(&self, id: MessageId) -> Lookup {
        let mut sets = Vec::new();
        for segment in self.segments.iter().rev().filter(|s| s.covers(id)) {
            if !segment.exact {
                return Lookup::Removed;
            }
            sets.push(segment.number);
        }
        if sets.is_empty() {
            Lookup::NotRemoved
        } else {
            Lookup::InSets(sets)
        }
    }

    /// Whether retention removed `id` here, reading the id sets of the
    /// segments that may have held it through `set_of`.
    pub fn removed(&self, id: MessageId, set_of: impl FnMut(u32) -> Option<Arc<IdSet>>) -> bool {
        lookup_removed(self.lookup(id), id, set_of)
    }

    /// Per epoch, one range covering the ids of every removed segment
    /// still known here: what the report to a head node says (`removed`
    /// lines). A segment whose set was forgotten is not in it, as its ids
    /// are answered as never held.
    pub fn ranges(&self) -> Vec<IdRange> {
        let mut ranges = Vec::new();
        for segment in &self.segments {
            for r in &segment.epochs {
                let first = MessageId {
                    epoch: r.epoch,
                    seq: r.min_seq,
                };
                let last = MessageId {
                    epoch: r.epoch,
                    seq: r.max_seq,
                };
                if let Some(range) = IdRange::new(first, last) {
                    IdRange::merge_into(&mut ranges, range);
                }
            }
        }
        ranges
    }

    /// The highest segment number retention has removed (0: none).
    pub fn highest_segment(&self) -> u32 {
        self.highest_segment
    }

    /// Removed segments whose exact ids are kept.
    pub fn exact_sets(&self) -> usize {
        self.segments.iter().filter(|s| s.exact).count()
    }

    /// Notes segment `number`, removed; the number of an exact set this
    /// forgets to stay within `kept` sets, if it does.
    fn note(
        &mut self,
        number: u32,
        epochs: &[EpochRange],
        exact: bool,
        kept: usize,
    ) -> Option<u32> {
        self.highest_segment = self.highest_segment.max(number);
        // A segment removed twice (a crash between its line and its
        // deletion): the later line stands.
        self.segments.retain(|s| s.number != number);
        self.segments.push(RemovedSegment {
            number,
            epochs: epochs.to_vec(),
            exact,
        });
        if self.exact_sets() <= kept {
            return None;
        }
        let oldest = self.segments.iter().position(|s| s.exact)?;
        Some(self.segments.remove(oldest).number)
    }
}

/// Whether `id` is removed, given what the ranges told ([`Lookup`]) and
/// `set_of` to read the id sets: for after the lock on [`RemovedIds`] is
/// let go of, since reading a set is file I/O.
pub fn lookup_removed(
    lookup: Lookup,
    id: MessageId,
    mut set_of: impl FnMut(u32) -> Option<Arc<IdSet>>,
) -> bool {
    match lookup {
        Lookup::Removed => true,
        Lookup::NotRemoved => false,
        Lookup::InSets(numbers) => numbers
            .into_iter()
            .any(|number| set_of(number).is_some_and(|set| set.contains(id))),
    }
}

/// `retention.txt`: see the module documentation.
#[derive(Debug)]
pub struct RetentionLog {
    path: PathBuf,
    dir: PathBuf,
    removed: RemovedIds,
    /// Exact id sets kept at most: [`KEPT_SETS`].
    kept: usize,
}

impl RetentionLog {
    /// Reads `dir/retention.txt`, if there is one. A line that cannot be
    /// read is skipped with a warning. Id set files that no line names (a
    /// crash before the line was written: the segment is still there) are
    /// deleted; a line whose set file is gone (forgotten past
    /// [`KEPT_SETS`]) leaves no trace in memory.
    pub fn load(dir: &Path) -> Result<RetentionLog, StorageError> {
        RetentionLog::load_keeping(dir, KEPT_SETS)
    }

    /// [`RetentionLog::load`], keeping at most `kept` id sets.
    fn load_keeping(dir: &Path, kept: usize) -> Result<RetentionLog, StorageError> {
        let path = dir.join(RETENTION_FILE);
        let mut removed = RemovedIds::default();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(StorageError::Read { path, error }),
        };
        let set_files = list_set_files(dir)?;
        let mut forgotten = Vec::new();
        for (n, line) in text.lines().enumerate() {
            match parse_removed_line(line) {
                Some(line) if line.with_set && !set_files.contains(&line.segment) => {
                    // Forgotten: past the bound, or deleted by hand.
                    removed.highest_segment = removed.highest_segment.max(line.segment);
                    removed.segments.retain(|s| s.number != line.segment);
                }
                Some(line) => {
                    forgotten.extend(removed.note(line.segment, &line.epochs, line.with_set, kept))
                }
                None => warn!(
                    line = n + 1,
                    "{}: line {} is not a retention record; skipped",
                    path.display(),
                    n + 1
                ),
            }
        }
        for number in set_files {
            let named = removed
                .segments
                .iter()
                .any(|s| s.exact && s.number == number);
            if !named {
                forgotten.push(number);
            }
        }
        for number in forgotten {
            delete_set(dir, number);
        }
        Ok(RetentionLog {
            path,
            dir: dir.to_owned(),
            removed,
            kept,
        })
    }

    /// What has been removed so far.
    pub fn removed(&self) -> &RemovedIds {
        &self.removed
    }

    /// Appends the line for `segment`, removed for `reason` at `now`, and
    /// syncs it: call after its id set is written ([`super::removed::write_set`]), before
    /// deleting the segment. Beyond [`KEPT_SETS`], forgets the oldest set.
    pub fn record(
        &mut self,
        segment: &SegmentMeta,
        file_name: &str,
        reason: Reason,
        now: SystemTime,
    ) -> Result<(), StorageError> {
        let mut line = String::with_capacity(200);
        let _ = write_timestamp(&mut line, now);
        line.push_str(&format!(
            " - removed segment={} file={file_name} records={} bytes={} reason={} epochs={} ids={}\n",
            segment.number,
            segment.records,
            segment.bytes,
            reason.as_str(),
            segment.epochs_text(),
            set_file_name(segment.number)
        ));
        let write_error = |error| StorageError::Write {
            path: self.path.clone(),
            error,
        };
        let created = !self.path.exists();
        let mut file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(write_error)?;
        file.write_all(line.as_bytes()).map_err(write_error)?;
        file.sync_data().map_err(|error| StorageError::Sync {
            path: self.path.clone(),
            error,
        })?;
        if created && let Some(dir) = self.path.parent() {
            super::sync_dir(dir).map_err(write_error)?;
        }
        let forgotten = self
            .removed
            .note(segment.number, &segment.epochs, true, self.kept);
        if let Some(forgotten) = forgotten {
            delete_set(&self.dir, forgotten);
        }
        Ok(())
    }
}

/// The segment numbers of the id set files in `dir`; leftovers of an
/// interrupted write (`.tmp`) are deleted.
fn list_set_files(dir: &Path) -> Result<Vec<u32>, StorageError> {
    let mut numbers = Vec::new();
    for (name, path) in super::fs::named_entries(dir)? {
        if let Some(number) = parse_set_file_name(&name) {
            numbers.push(number);
        } else if let Some(partial) = name.strip_suffix(".tmp")
            && parse_set_file_name(partial).is_some()
        {
            let _ = std::fs::remove_file(path);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Deletes the id set file of segment `number` (best effort: a file left
/// behind is deleted at the next start).
fn delete_set(dir: &Path, number: u32) {
    let path = dir.join(set_file_name(number));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot delete {}: {e}", path.display()),
    }
}

/// One `retention.txt` line, read.
struct RemovedLine {
    segment: u32,
    epochs: Vec<EpochRange>,
    /// It names an id set file (`ids=`): its exact ids were kept.
    with_set: bool,
}

/// One `retention.txt` line; fields it does not know are skipped.
fn parse_removed_line(line: &str) -> Option<RemovedLine> {
    let fields = line.split_once(" - removed ")?.1;
    let mut segment = None;
    let mut epochs = None;
    let mut with_set = false;
    for field in fields.split(' ') {
        let (key, value) = field.split_once('=')?;
        match key {
            "segment" => segment = Some(value.parse().ok()?),
            "epochs" if value == "-" => epochs = Some(Vec::new()),
            "epochs" => {
                let ranges = value.split(',').map(|range| {
                    let (epoch, seqs) = range.split_once(':')?;
                    let (min, max) = seqs.split_once('-')?;
                    Some(EpochRange {
                        epoch: epoch.parse().ok()?,
                        min_seq: min.parse().ok()?,
                        max_seq: max.parse().ok()?,
                    })
                });
                epochs = Some(ranges.collect::<Option<Vec<_>>>()?);
            }
            "ids" => with_set = true,
            _ => {}
        }
    }
    Some(RemovedLine {
        segment: segment?,
        epochs: epochs?,
        with_set,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::removed::{read_set, write_set};

    const HOUR: u64 = 3_600_000;

    fn segment(number: u32, bytes: u64, newest_ms: u64) -> SegmentMeta {
        SegmentMeta {
            number,
            bytes,
            records: 10,
            newest_ms,
            epochs: vec![],
        }
    }

    #[test]
    fn nothing_is_removed_when_retention_is_off() {
        let segments = [segment(1, 100, 0), segment(2, 100, 0)];
        assert_eq!(
            choose_removals(&segments, 1 << 40, u64::MAX, &RetentionPolicy::default()),
            []
        );
    }

    #[test]
    fn segments_whose_newest_record_is_older_than_the_age_are_removed() {
        let now = 100 * HOUR;
        let policy = RetentionPolicy {
            max_age: Some(Duration::from_secs(12 * 3600)),
            max_bytes: None,
        };
        let segments = [
            segment(1, 100, now - 30 * HOUR),
            segment(2, 100, now - 13 * HOUR),
            segment(3, 100, now - 12 * HOUR),
            segment(4, 100, now - HOUR),
        ];
        assert_eq!(
            choose_removals(&segments, 0, now, &policy),
            [(1, Reason::Age), (2, Reason::Age)],
            "exactly 12 h old is kept"
        );
    }

    #[test]
    fn the_retention_clock_never_runs_ahead_of_the_newest_record_and_monotonic_time() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(100 * HOUR);
        let mono = Instant::now();
        let ms = |t: SystemTime| unix_ms(t);
        let clock = RetentionClock::new(Some(99 * HOUR), wall, mono);
        let year = Duration::from_secs(365 * 86_400);
        let minute = Duration::from_secs(60);
        assert_eq!(
            ms(clock.now(wall + year, mono + minute)),
            99 * HOUR + 60_000,
            "a step forward is not followed"
        );
        assert_eq!(
            ms(clock.now(wall + minute, mono + 2 * HOUR_D)),
            100 * HOUR + 60_000,
            "the wall clock, while it is within the bound"
        );
        assert_eq!(
            ms(clock.now(wall - year, mono + minute)),
            ms(wall - year),
            "a step back is followed: it removes less"
        );
        let empty = RetentionClock::new(None, wall, mono);
        assert_eq!(
            ms(empty.now(wall + year, mono + minute)),
            100 * HOUR + 60_000
        );
    }

    const HOUR_D: Duration = Duration::from_secs(3_600);

    #[test]
    fn the_oldest_segments_go_while_the_files_are_over_the_size() {
        let policy = RetentionPolicy {
            max_age: None,
            max_bytes: Some(250),
        };
        let segments = [segment(1, 100, 0), segment(2, 100, 0), segment(3, 100, 0)];
        // 300 + 40 active: 1 and 2 must go to get to 140.
        assert_eq!(
            choose_removals(&segments, 40, 0, &policy),
            [(1, Reason::Bytes)],
            "340 - 100 = 240 fits"
        );
        assert_eq!(
            choose_removals(&segments, 60, 0, &policy),
            [(1, Reason::Bytes), (2, Reason::Bytes)]
        );
        assert_eq!(
            choose_removals(&segments, 1000, 0, &policy).len(),
            3,
            "never the active file, however large"
        );
    }

    #[test]
    fn age_and_size_combine() {
        let policy = RetentionPolicy {
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: Some(150),
        };
        let segments = [
            segment(1, 100, 0),
            segment(2, 100, 10 * HOUR),
            segment(3, 100, 10 * HOUR),
        ];
        assert_eq!(
            choose_removals(&segments, 0, 10 * HOUR, &policy),
            [(1, Reason::Age), (2, Reason::Bytes)]
        );
    }

    #[test]
    fn the_record_of_removals_survives_a_restart_and_answers_removed_for_held_ids_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RetentionLog::load(dir.path()).unwrap();
        let mut meta = SegmentMeta::new(3);
        let held = [
            MessageId { epoch: 4, seq: 2 },
            MessageId { epoch: 7, seq: 5 },
            MessageId { epoch: 7, seq: 9 },
        ];
        for (at, &id) in held.iter().enumerate() {
            meta.add(id, Some(at as u64));
        }
        write_set(dir.path(), 3, &IdSet::from_sorted(held)).unwrap();
        log.record(
            &meta,
            "data.000003.txt",
            Reason::Age,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join(RETENTION_FILE)).unwrap();
        assert_eq!(
            text,
            "1970-01-01 00:00:00,000 - removed segment=3 file=data.000003.txt records=3 bytes=0 reason=age epochs=4:2-2,7:5-9 ids=removed.000003.ids\n"
        );
        std::fs::write(dir.path().join(RETENTION_FILE), format!("{text}garbage\n")).unwrap();
        let log = RetentionLog::load(dir.path()).unwrap();
        let removed = |seq_epoch: (u64, u64)| {
            let id = MessageId {
                epoch: seq_epoch.0,
                seq: seq_epoch.1,
            };
            log.removed()
                .removed(id, |number| read_set(dir.path(), number).map(Arc::new))
        };
        for held in [(7, 5), (7, 9), (4, 2)] {
            assert!(removed(held), "{held:?} was held and removed");
        }
        for never in [(7, 1), (7, 6), (7, 10), (4, 1), (5, 1)] {
            assert!(!removed(never), "{never:?} was never held");
        }
        assert_eq!(log.removed().highest_segment(), 3);
    }

    #[test]
    fn a_segment_removed_before_id_sets_were_kept_answers_by_its_ranges() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RETENTION_FILE),
            "1970-01-01 00:00:00,000 - removed segment=3 file=data.000003.txt records=3 bytes=0 reason=age epochs=7:5-9,4:2-2\n",
        )
        .unwrap();
        let log = RetentionLog::load(dir.path()).unwrap();
        let lookup = |epoch, seq| log.removed().lookup(MessageId { epoch, seq });
        assert_eq!(lookup(7, 6), Lookup::Removed, "within its range");
        assert_eq!(lookup(7, 4), Lookup::NotRemoved, "below its range");
        assert_eq!(lookup(7, 10), Lookup::NotRemoved, "above it");
        assert_eq!(lookup(5, 1), Lookup::NotRemoved);
    }

    #[test]
    fn only_the_newest_id_sets_are_kept_and_stray_set_files_go_at_start() {
        let dir = tempfile::tempdir().unwrap();
        const KEPT: usize = 5;
        let mut log = RetentionLog::load_keeping(dir.path(), KEPT).unwrap();
        let id = |seq| MessageId { epoch: 1, seq };
        let total = KEPT as u32 + 2;
        for number in 1..=total {
            let mut meta = SegmentMeta::new(number);
            meta.add(id(number.into()), Some(1));
            write_set(dir.path(), number, &IdSet::from_sorted([id(number.into())])).unwrap();
            log.record(&meta, "x", Reason::Bytes, SystemTime::UNIX_EPOCH)
                .unwrap();
        }
        assert_eq!(log.removed().exact_sets(), KEPT);
        assert!(!dir.path().join(set_file_name(2)).exists(), "forgotten");
        assert!(dir.path().join(set_file_name(3)).exists());
        assert_eq!(log.removed().lookup(id(2)), Lookup::NotRemoved);
        assert_eq!(log.removed().lookup(id(3)), Lookup::InSets(vec![3]));
        // A set written by a removal the crash cut short, and a torn one.
        write_set(dir.path(), total + 1, &IdSet::default()).unwrap();
        std::fs::write(dir.path().join("removed.999999.ids.tmp"), b"x").unwrap();
        let log = RetentionLog::load_keeping(dir.path(), KEPT).unwrap();
        assert_eq!(log.removed().exact_sets(), KEPT);
        assert_eq!(log.removed().lookup(id(2)), Lookup::NotRemoved);
        assert_eq!(log.removed().highest_segment(), total);
        assert!(!dir.path().join(set_file_name(total + 1)).exists());
        assert!(!dir.path().join("removed.999999.ids.tmp").exists());
    }
}
