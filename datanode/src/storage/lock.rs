//! One process per data directory: two nodes appending to one `data.txt`
//! would interleave their records and each cut the other's batches back on
//! a failure.

use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::path::Path;

use super::StorageError;

/// Name of the lock file inside a data directory.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive claim on a data directory: a lock on `DIR/.lock`, which
/// holds the claimant's pid. Dropping it releases the directory.
///
/// The lock is `flock`-style: it belongs to the open file, so a second
/// claim fails even from the same process, and the kernel releases it when
/// the process dies, however it dies.
#[derive(Debug)]
pub struct DirLock {
    // Held only to keep the lock: closing the file releases it.
    _file: File,
    created: bool,
}

impl DirLock {
    /// Claims `dir` (which must exist), or fails with
    /// [`StorageError::InUse`] while another claim on it is held.
    pub fn acquire(dir: &Path) -> Result<DirLock, StorageError> {
        let path = dir.join(LOCK_FILE);
        let open_error = |error| StorageError::Open {
            path: path.clone(),
            error,
        };
        let created = !path.try_exists().map_err(open_error)?;
        // Not truncated on open: until we hold the lock, the pid in it is
        // the holder's.
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StorageError::InUse {
                    dir: dir.to_owned(),
                    pid: holder.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(open_error(e)),
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(open_error)?;
        Ok(DirLock {
            _file: file,
            created,
        })
    }

    /// Whether this claim created the lock file (so the directory entry is new).
    pub fn created_file(&self) -> bool {
        self.created
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_directory_cannot_be_claimed_again_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        assert!(first.created_file());
        let e = DirLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(&e, StorageError::InUse { pid: Some(pid), .. } if *pid == std::process::id()),
            "{e:?}"
        );
        drop(first);
        let again = DirLock::acquire(dir.path()).unwrap();
        assert!(!again.created_file());
    }
}
