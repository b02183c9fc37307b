//! Retention: old segments are removed whole, never the active file.
//!
//! - [`RetentionPolicy`]: by age (a segment whose newest record is older
//!   than `--retention-age`) and by size (the oldest segments while all the
//!   files together exceed `--retention-bytes`). Both off by default;
//! - [`choose_removals`]: which segments to remove, as a pure function of
//!   the segments and the time;
//! - [`RetentionLog`]: `retention.txt` beside `data.txt`, one line per
//!   removed segment, written and synced *before* the segment is deleted.
//!   From it the node knows, per epoch, the highest sequence number
//!   retention has removed ([`RetentionLog::removed`]), so that a repair
//!   never brings such a message back, and the highest segment number ever
//!   used, so that numbers only grow.
//!
//! A `retention.txt` line:
//!
//! ```text
//! 2026-11-24 10:00:00,000 - removed segment=1 file=data.000001.txt records=1200 bytes=134217800 reason=age epochs=1795413330851:1-1150,1795413330999:1-50
//! ```
//!
//! Bound: memory holds one number per epoch ever removed from (at most
//! [`super::index::MAX_EPOCHS`] in practice), never the lines.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use node_kit::timefmt::write_timestamp;
use protocol::ids::MessageId;
use tracing::warn;

use super::StorageError;

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

/// What retention has removed, from `retention.txt`; see the module
/// documentation.
#[derive(Debug, Clone, Default)]
pub struct RemovedIds {
    /// Per epoch, the highest sequence number removed.
    highest: HashMap<u64, u64>,
    /// The highest segment number removed.
    highest_segment: u32,
}

impl RemovedIds {
    /// Whether retention may have removed `id` here: its epoch has had
    /// records up to at least its sequence number removed. A message for
    /// which this is true must never be brought back by a repair (it may
    /// still be held here, as a later copy: look it up first).
    pub fn removed(&self, id: MessageId) -> bool {
        self.highest
            .get(&id.epoch)
            .is_some_and(|&highest| id.seq <= highest)
    }

    /// The highest segment number retention has removed (0: none).
    pub fn highest_segment(&self) -> u32 {
        self.highest_segment
    }

    fn note(&mut self, segment: u32, epochs: &[EpochRange]) {
        self.highest_segment = self.highest_segment.max(segment);
        for range in epochs {
            let highest = self.highest.entry(range.epoch).or_default();
            *highest = (*highest).max(range.max_seq);
        }
    }
}

/// `retention.txt`: see the module documentation.
#[derive(Debug)]
pub struct RetentionLog {
    path: PathBuf,
    removed: RemovedIds,
}

impl RetentionLog {
    /// Reads `dir/retention.txt`, if there is one. A line that cannot be
    /// read is skipped with a warning.
    pub fn load(dir: &Path) -> Result<RetentionLog, StorageError> {
        let path = dir.join(RETENTION_FILE);
        let mut removed = RemovedIds::default();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(StorageError::Read { path, error }),
        };
        for (n, line) in text.lines().enumerate() {
            match parse_removed_line(line) {
                Some((segment, epochs)) => removed.note(segment, &epochs),
                None => warn!(
                    line = n + 1,
                    "{}: line {} is not a retention record; skipped",
                    path.display(),
                    n + 1
                ),
            }
        }
        Ok(RetentionLog { path, removed })
    }

    /// What has been removed so far.
    pub fn removed(&self) -> &RemovedIds {
        &self.removed
    }

    /// Appends the line for `segment`, removed for `reason` at `now`, and
    /// syncs it: call before deleting the segment.
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
            " - removed segment={} file={file_name} records={} bytes={} reason={} epochs={}\n",
            segment.number,
            segment.records,
            segment.bytes,
            reason.as_str(),
            segment.epochs_text()
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
        self.removed.note(segment.number, &segment.epochs);
        Ok(())
    }
}

/// `(segment, epochs)` of one `retention.txt` line.
fn parse_removed_line(line: &str) -> Option<(u32, Vec<EpochRange>)> {
    let fields = line.split_once(" - removed ")?.1;
    let mut segment = None;
    let mut epochs = None;
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
            _ => {}
        }
    }
    Some((segment?, epochs?))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_record_of_removals_survives_a_restart_and_answers_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RetentionLog::load(dir.path()).unwrap();
        let mut meta = SegmentMeta::new(3);
        meta.add(MessageId { epoch: 7, seq: 5 }, Some(1));
        meta.add(MessageId { epoch: 7, seq: 9 }, Some(2));
        meta.add(MessageId { epoch: 4, seq: 2 }, Some(3));
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
            "1970-01-01 00:00:00,000 - removed segment=3 file=data.000003.txt records=3 bytes=0 reason=age epochs=7:5-9,4:2-2\n"
        );
        std::fs::write(dir.path().join(RETENTION_FILE), format!("{text}garbage\n")).unwrap();
        let log = RetentionLog::load(dir.path()).unwrap();
        let removed = log.removed();
        assert!(removed.removed(MessageId { epoch: 7, seq: 1 }));
        assert!(removed.removed(MessageId { epoch: 7, seq: 9 }));
        assert!(!removed.removed(MessageId { epoch: 7, seq: 10 }));
        assert!(removed.removed(MessageId { epoch: 4, seq: 2 }));
        assert!(!removed.removed(MessageId { epoch: 5, seq: 1 }));
        assert_eq!(removed.highest_segment(), 3);
    }
}
