//! Checking a whole `data.txt`, or a whole data directory (its segments,
//! then `data.txt`): torn lines, checksum mismatches, ids
//! stored more than once, client keys stored under more than one id. Read-only: it takes no lock, so it can check the
//! file of a running node.

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;

use protocol::ids::{MessageId, MessageKey};

use super::StorageError;
use super::record::{Checksum, LineError, parse_line};

/// What [`verify`] found in a `data.txt`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The files read, in order (file names).
    pub files: Vec<String>,
    /// Whole lines that are records: intact, unchecked or corrupt.
    pub records: u64,
    /// Records written before records carried a checksum.
    pub unchecked: u64,
    /// Records whose checksum does not match, in file order.
    pub corrupt: Vec<CorruptRecord>,
    /// Lines that are not whole records, in file order.
    pub torn: Vec<TornRecord>,
    /// Ids that more than one intact record carries, in order of first appearance.
    pub duplicates: Vec<DuplicateId>,
    /// Client keys that intact records carry under more than one id (a
    /// resend stored again), in order of first appearance.
    pub duplicate_keys: Vec<DuplicateKey>,
}

/// A client key stored under more than one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The key.
    pub key: MessageKey,
    /// The ids it is stored under, in file order.
    pub ids: Vec<MessageId>,
}

/// A record whose checksum does not match its line, or whose checksum
/// token is gone (fields before the text and no `crc32c=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    /// The file's name.
    pub file: String,
    /// Line number in the file, from 1.
    pub line: u64,
    /// The id as read (which may itself be what changed).
    pub id: Option<MessageId>,
}

/// A line that is not a whole record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornRecord {
    /// The file's name.
    pub file: String,
    /// Line number in the file, from 1.
    pub line: u64,
    /// What is wrong with it.
    pub why: Torn,
}

/// Why a line is not a whole record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Torn {
    /// The file ends without a newline: an interrupted write (or, on a
    /// running node, one still in progress).
    NoNewline,
    /// The line does not parse as a record.
    Unparseable(LineError),
}

/// An id stored more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateId {
    /// The id.
    pub id: MessageId,
    /// How many intact records carry it.
    pub count: u64,
}

impl VerifyReport {
    /// True when nothing is corrupt, torn or duplicated (by id or by key).
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.torn.is_empty()
            && self.duplicates.is_empty()
            && self.duplicate_keys.is_empty()
    }

    /// Copies beyond the first of every duplicated id.
    pub fn extra_copies(&self) -> u64 {
        self.duplicates.iter().map(|d| d.count - 1).sum()
    }

    /// Every problem, one line each: torn lines and corrupt records in file
    /// order, then duplicated ids, then keys stored under several ids.
    pub fn problems(&self) -> impl Iterator<Item = String> + '_ {
        // Files are named only when there are several.
        let several = self.files.len() > 1;
        let place = move |file: &str, line: u64| {
            let order = self.files.iter().position(|f| f == file).unwrap_or(0);
            let name = if several {
                format!("{file} line {line}")
            } else {
                format!("line {line}")
            };
            ((order, line), name)
        };
        let torn = self.torn.iter().map(move |t| {
            let (at, name) = place(&t.file, t.line);
            match &t.why {
                Torn::NoNewline => (
                    at,
                    format!(
                        "{name}: torn: the file ends without a newline (an interrupted write, or one in progress)"
                    ),
                ),
                Torn::Unparseable(e) => (at, format!("{name}: torn: not a record ({e})")),
            }
        });
        let corrupt = self.corrupt.iter().map(move |c| {
            let id =
                c.id.map_or_else(|| "no id".to_owned(), |id| format!("id {id}"));
            let (at, name) = place(&c.file, c.line);
            (at, format!("{name}: corrupt: checksum mismatch, {id}"))
        });
        let mut by_line: Vec<((usize, u64), String)> = torn.chain(corrupt).collect();
        by_line.sort_by_key(|(at, _)| *at);
        let duplicates = self
            .duplicates
            .iter()
            .map(|d| format!("id {}: stored {} times", d.id, d.count));
        let keys = self.duplicate_keys.iter().map(|d| {
            let ids: Vec<String> = d.ids.iter().map(ToString::to_string).collect();
            format!(
                "key {}: stored under {} ids ({})",
                d.key,
                d.ids.len(),
                ids.join(", ")
            )
        });
        by_line
            .into_iter()
            .map(|(_, problem)| problem)
            .chain(duplicates)
            .chain(keys)
    }
}

/// `10000 records, 0 corrupt, 0 torn, 2 duplicated ids (2 extra copies), 0
/// keys under several ids`.
impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records, {} corrupt, {} torn, {} duplicated ids ({} extra copies), {} keys under several ids",
            self.records,
            self.corrupt.len(),
            self.torn.len(),
            self.duplicates.len(),
            self.extra_copies(),
            self.duplicate_keys.len()
        )?;
        if self.unchecked > 0 {
            write!(f, "; {} written without a checksum", self.unchecked)?;
        }
        Ok(())
    }
}

/// Reads the `data.txt` at `path` and reports what is wrong with it.
///
/// Reads only as far as the file's length when it starts, so that a
/// running node's appends do not keep it reading.
pub fn verify(path: &Path) -> Result<VerifyReport, StorageError> {
    verify_files(&[path.to_owned()])
}

/// Checks every file of the data directory `dir`: its segments, oldest
/// first, then `data.txt`, as one store (an id in two files is stored
/// twice). A segment that ends without a newline is torn, as `data.txt`
/// may be.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, StorageError> {
    let files: Vec<_> = super::segments::list_data_files(dir, 0)?
        .into_iter()
        .map(|f| f.path)
        .collect();
    if files.is_empty() {
        // Reports the missing data.txt as `verify` does.
        return verify(&dir.join(super::DATA_FILE));
    }
    verify_files(&files)
}

fn verify_files(paths: &[std::path::PathBuf]) -> Result<VerifyReport, StorageError> {
    let mut report = VerifyReport::default();
    let mut counts: HashMap<MessageId, u64> = HashMap::new();
    let mut order = Vec::new();
    // Each key's distinct ids, and the keys with more than one, in order.
    let mut key_ids: HashMap<MessageKey, Vec<MessageId>> = HashMap::new();
    let mut key_order = Vec::new();
    for path in paths {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        report.files.push(file.clone());
        let mut number = 0;
        super::each_line(path, |line| {
            number += 1;
            if line.last() != Some(&b'\n') {
                report.torn.push(TornRecord {
                    file: file.clone(),
                    line: number,
                    why: Torn::NoNewline,
                });
                return ControlFlow::Break(());
            }
            let record = match parse_line(line) {
                Ok(record) => record,
                Err(e) => {
                    report.torn.push(TornRecord {
                        file: file.clone(),
                        line: number,
                        why: Torn::Unparseable(e),
                    });
                    return ControlFlow::Continue(());
                }
            };
            report.records += 1;
            match record.checksum {
                Checksum::Valid => {}
                Checksum::Unchecked => report.unchecked += 1,
                Checksum::Mismatch { .. } | Checksum::Missing => {
                    report.corrupt.push(CorruptRecord {
                        file: file.clone(),
                        line: number,
                        id: record.id,
                    });
                    return ControlFlow::Continue(());
                }
            }
            if let Some(id) = record.id {
                let count = counts.entry(id).or_insert(0);
                *count += 1;
                if *count == 2 {
                    order.push(id);
                }
                if let Some(key) = record.key {
                    let ids = key_ids.entry(key.to_key()).or_default();
                    if !ids.contains(&id) {
                        ids.push(id);
                        if ids.len() == 2 {
                            key_order.push(key.to_key());
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        })?;
    }
    report.duplicate_keys = key_order
        .into_iter()
        .map(|key| DuplicateKey {
            ids: key_ids.remove(&key).unwrap_or_default(),
            key,
        })
        .collect();
    report.duplicates = order
        .into_iter()
        .map(|id| DuplicateId {
            id,
            count: counts[&id],
        })
        .collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::record::format_record;
    use super::*;

    const STAMP: &str = "2026-11-23 05:55:31,793";

    fn record(seq: u64, text: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        let id = MessageId { epoch: 9, seq };
        format_record(&mut buf, STAMP, Some(id), None, text.as_bytes());
        buf
    }

    fn verify_bytes(contents: &[u8]) -> VerifyReport {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.txt");
        std::fs::write(&path, contents).unwrap();
        verify(&path).unwrap()
    }

    #[test]
    fn a_clean_file_reports_only_its_record_count() {
        let contents: Vec<u8> = (1..=3).flat_map(|n| record(n, "x")).collect();
        let report = verify_bytes(&contents);
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.records, 3);
        assert_eq!(
            report.to_string(),
            "3 records, 0 corrupt, 0 torn, 0 duplicated ids (0 extra copies), 0 keys under several ids"
        );
    }

    #[test]
    fn finds_corrupt_torn_and_duplicated_records() {
        let mut contents = Vec::new();
        contents.extend(record(1, "a"));
        let mut changed = record(2, "b");
        let last_text_byte = changed.len() - 2;
        changed[last_text_byte] = b'B';
        contents.extend(changed);
        contents.extend(b"2026-11-23 05:55:31,793 - [9-3] men\n");
        contents.extend(record(1, "a"));
        contents.extend(record(1, "a"));
        contents.extend(b"2026-01-01 00:00:00,000 - [9-4] mensaje: old\n");
        contents.extend(&record(5, "cut")[..20]);
        let report = verify_bytes(&contents);
        assert_eq!(report.records, 5);
        assert_eq!(report.unchecked, 1);
        assert_eq!(
            report.corrupt,
            [CorruptRecord {
                file: "data.txt".into(),
                line: 2,
                id: Some(MessageId { epoch: 9, seq: 2 })
            }]
        );
        assert_eq!(
            report.torn,
            [
                TornRecord {
                    file: "data.txt".into(),
                    line: 3,
                    why: Torn::Unparseable(LineError::NoText)
                },
                TornRecord {
                    file: "data.txt".into(),
                    line: 7,
                    why: Torn::NoNewline
                },
            ]
        );
        assert_eq!(
            report.duplicates,
            [DuplicateId {
                id: MessageId { epoch: 9, seq: 1 },
                count: 3
            }]
        );
        assert!(!report.is_clean());
        assert_eq!(
            report.to_string(),
            "5 records, 1 corrupt, 2 torn, 1 duplicated ids (2 extra copies), 0 keys under several ids; 1 written without a checksum"
        );
        let problems: Vec<String> = report.problems().collect();
        assert_eq!(
            problems,
            [
                "line 2: corrupt: checksum mismatch, id 9-2",
                "line 3: torn: not a record (no \"mensaje: \")",
                "line 7: torn: the file ends without a newline (an interrupted write, or one in progress)",
                "id 9-1: stored 3 times",
            ]
        );
    }

    #[test]
    fn a_record_whose_checksum_token_was_damaged_is_counted_corrupt() {
        let damaged = String::from_utf8(record(2, "b"))
            .unwrap()
            .replace("crc32c=", "crc32e=");
        let mut contents = record(1, "a");
        contents.extend(damaged.as_bytes());
        let report = verify_bytes(&contents);
        assert_eq!(
            report.unchecked, 0,
            "not read as a record without a checksum"
        );
        assert_eq!(
            report.corrupt,
            [CorruptRecord {
                file: "data.txt".into(),
                line: 2,
                id: Some(MessageId { epoch: 9, seq: 2 })
            }]
        );
        assert!(!report.is_clean());
    }

    #[test]
    fn finds_keys_stored_under_several_ids() {
        let keyed = |seq: u64, key_seq: u64| {
            let mut buf = Vec::new();
            let id = MessageId { epoch: 9, seq };
            let key = protocol::ids::KeyRef {
                client: "c-1",
                seq: key_seq,
            };
            format_record(&mut buf, STAMP, Some(id), Some(key), b"x");
            buf
        };
        let mut contents = keyed(1, 1);
        contents.extend(keyed(2, 2));
        contents.extend(keyed(3, 1));
        contents.extend(keyed(3, 1));
        let report = verify_bytes(&contents);
        assert_eq!(
            report.duplicate_keys,
            [DuplicateKey {
                key: "c-1/1".parse().unwrap(),
                ids: vec![
                    MessageId { epoch: 9, seq: 1 },
                    MessageId { epoch: 9, seq: 3 }
                ],
            }]
        );
        assert_eq!(
            report.to_string(),
            "4 records, 0 corrupt, 0 torn, 1 duplicated ids (1 extra copies), 1 keys under several ids"
        );
        let problems: Vec<String> = report.problems().collect();
        assert_eq!(
            problems,
            [
                "id 9-3: stored 2 times",
                "key c-1/1: stored under 2 ids (9-1, 9-3)"
            ]
        );
        assert!(!report.is_clean());
    }

    #[test]
    fn a_directory_is_checked_across_its_segments_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = record(1, "a");
        first.extend(&record(2, "b")[..20]);
        std::fs::write(dir.path().join("data.000001.txt"), first).unwrap();
        std::fs::write(dir.path().join("data.000002.txt"), record(3, "c")).unwrap();
        let mut active = record(1, "a");
        active.extend(record(4, "d"));
        std::fs::write(dir.path().join("data.txt"), active).unwrap();
        let report = verify_dir(dir.path()).unwrap();
        assert_eq!(
            report.files,
            ["data.000001.txt", "data.000002.txt", "data.txt"]
        );
        assert_eq!(report.records, 4);
        let problems: Vec<String> = report.problems().collect();
        assert_eq!(
            problems,
            [
                "data.000001.txt line 2: torn: the file ends without a newline (an interrupted write, or one in progress)",
                "id 9-1: stored 2 times",
            ]
        );
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = verify(&dir.path().join("data.txt")).unwrap_err();
        assert!(matches!(e, StorageError::Read { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }
}
