//! `epoch`, beside `data.txt`: the highest head-node epoch this data node
//! has been welcomed by. A head node with an older epoch is a stale one
//! (a newer one has run since), so it is refused before it can store
//! anything. The file holds one decimal number and a newline.

use std::io;
use std::path::{Path, PathBuf};

use super::{StorageError, replace_durably};

/// Name of the epoch file inside a data directory.
pub const EPOCH_FILE: &str = "epoch";

/// What to do with a head node's `welcome` under `offered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochCheck {
    /// Older than the newest seen: refuse this head node.
    Stale {
        /// The newest epoch seen.
        newest: u64,
    },
    /// Serve it; `persist` when it is newer than any seen, and must be
    /// written down before anything else is sent to it.
    Accept {
        /// Whether the file must be raised to this epoch.
        persist: bool,
    },
}

/// Decides on a head node's epoch, given the newest seen.
pub fn check_epoch(newest: u64, offered: u64) -> EpochCheck {
    if offered < newest {
        EpochCheck::Stale { newest }
    } else {
        EpochCheck::Accept {
            persist: offered > newest,
        }
    }
}

/// The epoch file of one data directory and the value it holds.
#[derive(Debug)]
pub struct EpochFile {
    path: PathBuf,
    dir: PathBuf,
    newest: u64,
}

impl EpochFile {
    /// Reads `dir/epoch`; a missing file means no head node has welcomed
    /// this node yet (epoch 0).
    pub fn load(dir: &Path) -> Result<EpochFile, StorageError> {
        let path = dir.join(EPOCH_FILE);
        let newest = match std::fs::read_to_string(&path) {
            Ok(text) => {
                text.trim_end_matches('\n')
                    .parse()
                    .map_err(|_| StorageError::BadEpoch {
                        path: path.clone(),
                        content: protocol::error::truncate_for_log(&text).to_owned(),
                    })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(error) => return Err(StorageError::Read { path, error }),
        };
        Ok(EpochFile {
            path,
            dir: dir.to_owned(),
            newest,
        })
    }

    /// The newest epoch seen.
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `epoch` the newest seen, durably: a temporary file, synced,
    /// renamed over the old one, and the directory synced. Does nothing
    /// for an epoch not newer than the newest.
    pub fn raise(&mut self, epoch: u64) -> Result<(), StorageError> {
        if epoch <= self.newest {
            return Ok(());
        }
        replace_durably(&self.dir, EPOCH_FILE, format!("{epoch}\n").as_bytes())?;
        self.newest = epoch;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_epoch_is_stale_and_a_newer_one_is_persisted() {
        assert_eq!(check_epoch(5, 4), EpochCheck::Stale { newest: 5 });
        assert_eq!(check_epoch(5, 5), EpochCheck::Accept { persist: false });
        assert_eq!(check_epoch(5, 6), EpochCheck::Accept { persist: true });
        assert_eq!(check_epoch(0, 1), EpochCheck::Accept { persist: true });
    }

    #[test]
    fn the_epoch_survives_a_reload_and_never_goes_down() {
        let dir = tempfile::tempdir().unwrap();
        let mut epoch = EpochFile::load(dir.path()).unwrap();
        assert_eq!(epoch.newest(), 0);
        epoch.raise(1_795_413_330_851).unwrap();
        epoch.raise(1000).unwrap();
        assert_eq!(
            EpochFile::load(dir.path()).unwrap().newest(),
            1_795_413_330_851
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(EPOCH_FILE)).unwrap(),
            "1795413330851\n"
        );
        assert!(!dir.path().join("epoch.tmp").exists());
    }

    #[test]
    fn a_damaged_epoch_file_is_an_error_not_a_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(EPOCH_FILE), "12x\n").unwrap();
        let e = EpochFile::load(dir.path()).unwrap_err();
        assert!(matches!(e, StorageError::BadEpoch { .. }), "{e:?}");
    }
}
