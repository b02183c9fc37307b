//! Segments: `data.txt` is the active file; when it reaches the segment
//! size it is renamed `data.<NNNNNN>.txt` beside it (numbers only grow, six
//! digits so that `ls` lists them in order, before `data.txt`) and a new,
//! empty `data.txt` is started. A segment is never written again; only
//! retention removes one, whole.

use std::path::{Path, PathBuf};

use super::{DATA_FILE, StorageError};

/// Default of `--segment-bytes`: 128 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 128 << 20;
/// Smallest `--segment-bytes` accepted (tests roll far smaller files
/// through [`crate::storage::StoreConfig`]).
pub const MIN_SEGMENT_BYTES: u64 = 1 << 20;
/// Largest `--segment-bytes` accepted: a record's offset in its file must
/// fit the index's 40 bits with room for the batch that crosses the size.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 30;

/// The file name of segment `number`: `data.000001.txt`.
pub fn segment_name(number: u32) -> String {
    format!("data.{number:06}.txt")
}

/// The segment number in a file name `data.<digits>.txt`, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("data.")?.strip_suffix(".txt")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

/// One file of a data directory: a segment or the active `data.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFileName {
    /// The segment number; the active file carries the number it will
    /// have once rolled.
    pub number: u32,
    /// Its path.
    pub path: PathBuf,
    /// Whether this is `data.txt`.
    pub active: bool,
}

/// The segments of `dir`, oldest (lowest number) first. A directory
/// without any gives an empty list; one that does not exist too.
pub fn list_segments(dir: &Path) -> Result<Vec<DataFileName>, StorageError> {
    let mut segments = Vec::new();
    for (name, path) in super::fs::named_entries(dir)? {
        if let Some(number) = parse_segment_name(&name) {
            segments.push(DataFileName {
                number,
                path,
                active: false,
            });
        }
    }
    segments.sort_by_key(|s| s.number);
    Ok(segments)
}

/// Every file of `dir` holding records, in the order they were written:
/// its segments, then `data.txt` (if it exists). The active file's number
/// is one more than the highest segment's, or `at_least` if that is more.
pub fn list_data_files(dir: &Path, at_least: u32) -> Result<Vec<DataFileName>, StorageError> {
    let mut files = list_segments(dir)?;
    let active = dir.join(DATA_FILE);
    let next = files
        .last()
        .map_or(1, |s| s.number.saturating_add(1))
        .max(at_least);
    if active.exists() {
        files.push(DataFileName {
            number: next,
            path: active,
            active: true,
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_in_number_order_and_before_the_active_file() {
        let mut names = vec![
            DATA_FILE.to_owned(),
            segment_name(10),
            segment_name(2),
            segment_name(999_999),
        ];
        names.sort();
        assert_eq!(
            names,
            [
                "data.000002.txt",
                "data.000010.txt",
                "data.999999.txt",
                "data.txt"
            ]
        );
        assert_eq!(parse_segment_name("data.000010.txt"), Some(10));
        assert_eq!(parse_segment_name("data.1234567.txt"), Some(1_234_567));
        for not_one in [
            "data.txt",
            "data.10.txt",
            "data.00001x.txt",
            "data.000000.txt",
            "x.000001.txt",
        ] {
            assert_eq!(parse_segment_name(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn data_files_list_segments_oldest_first_then_the_active_file() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            segment_name(3),
            segment_name(1),
            DATA_FILE.into(),
            "epoch".into(),
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let files = list_data_files(dir.path(), 0).unwrap();
        let numbers: Vec<(u32, bool)> = files.iter().map(|f| (f.number, f.active)).collect();
        assert_eq!(numbers, [(1, false), (3, false), (4, true)]);
        let files = list_data_files(dir.path(), 9).unwrap();
        assert_eq!(
            files.last().map(|f| f.number),
            Some(9),
            "past a removed segment"
        );
    }
}
