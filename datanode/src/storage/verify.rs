//! Checking a whole `data.txt`: torn lines, checksum mismatches, ids
//! stored more than once. Read-only: it takes no lock, so it can check the
//! file of a running node.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use protocol::message::MessageId;

use super::StorageError;
use super::record::{Checksum, LineError, parse_line};

/// What [`verify`] found in a `data.txt`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
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
}

/// A record whose checksum does not match its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    /// Line number, from 1.
    pub line: u64,
    /// The id as read (which may itself be what changed).
    pub id: Option<MessageId>,
}

/// A line that is not a whole record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornRecord {
    /// Line number, from 1.
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
    /// True when nothing is corrupt, torn or duplicated.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.torn.is_empty() && self.duplicates.is_empty()
    }

    /// Copies beyond the first of every duplicated id.
    pub fn extra_copies(&self) -> u64 {
        self.duplicates.iter().map(|d| d.count - 1).sum()
    }

    /// Every problem, one line each: torn lines and corrupt records in file
    /// order, then duplicated ids.
    pub fn problems(&self) -> impl Iterator<Item = String> + '_ {
        let torn = self.torn.iter().map(|t| match &t.why {
            Torn::NoNewline => (
                t.line,
                format!(
                    "line {}: torn: the file ends without a newline (an interrupted write, or one in progress)",
                    t.line
                ),
            ),
            Torn::Unparseable(e) => (t.line, format!("line {}: torn: not a record ({e})", t.line)),
        });
        let corrupt = self.corrupt.iter().map(|c| {
            let id =
                c.id.map_or_else(|| "no id".to_owned(), |id| format!("id {id}"));
            (
                c.line,
                format!("line {}: corrupt: checksum mismatch, {id}", c.line),
            )
        });
        let mut by_line: Vec<(u64, String)> = torn.chain(corrupt).collect();
        by_line.sort_by_key(|(line, _)| *line);
        let duplicates = self
            .duplicates
            .iter()
            .map(|d| format!("id {}: stored {} times", d.id, d.count));
        by_line
            .into_iter()
            .map(|(_, problem)| problem)
            .chain(duplicates)
    }
}

/// `10000 records, 0 corrupt, 0 torn, 2 duplicated ids (2 extra copies)`.
impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records, {} corrupt, {} torn, {} duplicated ids ({} extra copies)",
            self.records,
            self.corrupt.len(),
            self.torn.len(),
            self.duplicates.len(),
            self.extra_copies()
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
    let read_error = |error| StorageError::Read {
        path: path.to_owned(),
        error,
    };
    let file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file.take(len));
    let mut report = VerifyReport::default();
    let mut counts: HashMap<MessageId, u64> = HashMap::new();
    let mut order = Vec::new();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(read_error)? == 0 {
            break;
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            report.torn.push(TornRecord {
                line: number,
                why: Torn::NoNewline,
            });
            break;
        }
        let record = match parse_line(&line) {
            Ok(record) => record,
            Err(e) => {
                report.torn.push(TornRecord {
                    line: number,
                    why: Torn::Unparseable(e),
                });
                continue;
            }
        };
        report.records += 1;
        match record.checksum {
            Checksum::Valid => {}
            Checksum::Unchecked => report.unchecked += 1,
            Checksum::Mismatch { .. } => {
                report.corrupt.push(CorruptRecord {
                    line: number,
                    id: record.id,
                });
                continue;
            }
        }
        if let Some(id) = record.id {
            let count = counts.entry(id).or_insert(0);
            *count += 1;
            if *count == 2 {
                order.push(id);
            }
        }
    }
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
        format_record(&mut buf, STAMP, Some(id), text.as_bytes());
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
            "3 records, 0 corrupt, 0 torn, 0 duplicated ids (0 extra copies)"
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
                line: 2,
                id: Some(MessageId { epoch: 9, seq: 2 })
            }]
        );
        assert_eq!(
            report.torn,
            [
                TornRecord {
                    line: 3,
                    why: Torn::Unparseable(LineError::NoText)
                },
                TornRecord {
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
            "5 records, 1 corrupt, 2 torn, 1 duplicated ids (2 extra copies); 1 written without a checksum"
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
    fn a_missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = verify(&dir.path().join("data.txt")).unwrap_err();
        assert!(matches!(e, StorageError::Read { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }
}
