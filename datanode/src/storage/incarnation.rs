//! `incarnation`, beside `data.txt`: a counter raised durably at every
//! start of the node's process, sent in its hello. The head node tells the
//! processes of one data directory apart by it: a lower incarnation than
//! one it has seen of the same directory is an older process, which must
//! stop. A counter, not a clock: a process started with its clock behind
//! is still the newest. One decimal number and a newline.

use std::io;
use std::path::Path;

use super::{StorageError, replace_durably};

/// Name of the incarnation file inside a data directory.
pub const INCARNATION_FILE: &str = "incarnation";

/// Raises `dir/incarnation` by one, durably (a temporary file, synced,
/// renamed, the directory synced), and returns the new value: 1 for a
/// directory that has none. Call once per start, holding the directory's
/// lock.
pub fn raise_incarnation(dir: &Path) -> Result<u64, StorageError> {
    let path = dir.join(INCARNATION_FILE);
    let last: u64 = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .strip_suffix('\n')
            .unwrap_or(&text)
            .parse()
            .map_err(|_| StorageError::BadIncarnation {
                path: path.clone(),
                content: protocol::error::truncate_for_log(&text).to_owned(),
            })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(StorageError::Read { path, error }),
    };
    let next = last.saturating_add(1);
    replace_durably(dir, INCARNATION_FILE, format!("{next}\n").as_bytes())?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_takes_the_next_number() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(raise_incarnation(dir.path()).unwrap(), 1);
        assert_eq!(raise_incarnation(dir.path()).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(INCARNATION_FILE)).unwrap(),
            "2\n"
        );
        assert!(!dir.path().join("incarnation.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INCARNATION_FILE), "-3\n").unwrap();
        let e = raise_incarnation(dir.path()).unwrap_err();
        assert!(matches!(e, StorageError::BadIncarnation { .. }), "{e:?}");
    }
}
