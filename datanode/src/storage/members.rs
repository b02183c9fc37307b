//! `members`, beside `data.txt`: the cluster's member set as the head node
//! last sent it (`members <node-id>...`), reported to every head node that
//! welcomes this node, across restarts of either. A new head node waits
//! for those nodes before it serves, and counts its majority among them.
//! One line of node ids separated by spaces; rewritten, durably, only when
//! the set changes.

use std::io;
use std::path::{Path, PathBuf};

use protocol::ids::NodeId;

use super::{StorageError, replace_durably};

/// Name of the members file inside a data directory.
pub const MEMBERS_FILE: &str = "members";

/// The members file of one data directory and the set it holds.
#[derive(Debug)]
pub struct MembersFile {
    dir: PathBuf,
    members: Option<Vec<NodeId>>,
}

impl MembersFile {
    /// Reads `dir/members`; `None` inside when no head node has sent a set.
    pub fn load(dir: &Path) -> Result<MembersFile, StorageError> {
        let path = dir.join(MEMBERS_FILE);
        let members = match std::fs::read_to_string(&path) {
            Ok(text) => Some(parse(&text).ok_or_else(|| StorageError::BadMembers {
                path: path.clone(),
                content: protocol::error::truncate_for_log(&text).to_owned(),
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(StorageError::Read { path, error }),
        };
        Ok(MembersFile {
            dir: dir.to_owned(),
            members,
        })
    }

    /// The set last recorded, if any.
    pub fn members(&self) -> Option<&[NodeId]> {
        self.members.as_deref()
    }

    /// Records `members` durably (a temporary file, synced, renamed, the
    /// directory synced), unless the file holds that set already.
    pub fn record(&mut self, members: &[NodeId]) -> Result<(), StorageError> {
        if self.members.as_deref() == Some(members) {
            return Ok(());
        }
        let names: Vec<&str> = members.iter().map(NodeId::as_str).collect();
        let line = format!("{}\n", names.join(" "));
        replace_durably(&self.dir, MEMBERS_FILE, line.as_bytes())?;
        self.members = Some(members.to_vec());
        Ok(())
    }
}

fn parse(text: &str) -> Option<Vec<NodeId>> {
    let line = text.strip_suffix('\n')?;
    line.split(' ')
        .filter(|name| !name.is_empty())
        .map(|name| name.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_set_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = MembersFile::load(dir.path()).unwrap();
        assert_eq!(file.members(), None);
        file.record(&ids(&["dn1", "dn2"])).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(MEMBERS_FILE)).unwrap(),
            "dn1 dn2\n"
        );
        let mut again = MembersFile::load(dir.path()).unwrap();
        assert_eq!(again.members(), Some(&ids(&["dn1", "dn2"])[..]));
        again.record(&[]).unwrap();
        assert_eq!(
            MembersFile::load(dir.path()).unwrap().members(),
            Some(&[][..])
        );
    }

    #[test]
    fn the_same_set_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = MembersFile::load(dir.path()).unwrap();
        file.record(&ids(&["dn1"])).unwrap();
        std::fs::remove_file(dir.path().join(MEMBERS_FILE)).unwrap();
        file.record(&ids(&["dn1"])).unwrap();
        assert!(!dir.path().join(MEMBERS_FILE).exists(), "not rewritten");
    }

    #[test]
    fn a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["dn1 d/n2\n", "dn1"] {
            std::fs::write(dir.path().join(MEMBERS_FILE), bad).unwrap();
            let e = MembersFile::load(dir.path()).unwrap_err();
            assert!(
                matches!(e, StorageError::BadMembers { .. }),
                "{bad:?}: {e:?}"
            );
        }
    }
}
