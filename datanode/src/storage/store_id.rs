//! `store-id`, beside `data.txt`: a random number made when the data
//! directory is first used. The node names it when it registers, so the
//! head node can tell a node that kept its data from one that came back
//! with an empty or different directory (a lost disk, a new volume), and
//! repair the copies the old directory held. One line of 16 hex digits.

use std::io;
use std::path::Path;

use super::{StorageError, replace_durably};

/// Name of the store-id file inside a data directory.
pub const STORE_ID_FILE: &str = "store-id";

/// Reads `dir/store-id`, or makes one durably (written to a temporary
/// file, synced, renamed, the directory synced) when there is none.
pub fn load_or_create_store_id(dir: &Path) -> Result<u64, StorageError> {
    let path = dir.join(STORE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let digits = text.trim_end_matches('\n');
            return (digits.len() == 16)
                .then(|| u64::from_str_radix(digits, 16).ok())
                .flatten()
                .ok_or_else(|| StorageError::BadStoreId {
                    path: path.clone(),
                    content: protocol::error::truncate_for_log(&text).to_owned(),
                });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(StorageError::Read { path, error }),
    }
    let id: u64 = rand::random();
    replace_durably(dir, STORE_ID_FILE, format!("{id:016x}\n").as_bytes())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_store_id(dir.path()).unwrap();
        assert_eq!(load_or_create_store_id(dir.path()).unwrap(), first);
        let text = std::fs::read_to_string(dir.path().join(STORE_ID_FILE)).unwrap();
        assert_eq!(text, format!("{first:016x}\n"));
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_store_id(other.path()).unwrap(), first);
    }

    #[test]
    fn a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STORE_ID_FILE), "xyz\n").unwrap();
        let e = load_or_create_store_id(dir.path()).unwrap_err();
        assert!(matches!(e, StorageError::BadStoreId { .. }), "{e:?}");
    }
}
