use std::fs::File;
use std::path::Path;

use super::*;
use crate::storage::{
    CorruptRecord, LOCK_FILE, StoredMessage, stored_ids, stored_messages, verify,
};

fn id(seq: u64) -> MessageId {
    MessageId { epoch: 9, seq }
}

fn record(seq: u64, text: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    format_record(
        &mut buf,
        "2026-01-01 00:00:00,000",
        Some(id(seq)),
        None,
        text.as_bytes(),
    );
    buf
}

fn faulty(faults: Faults) -> Backend {
    Backend::Faulty(faults)
}

#[test]
fn staged_lines_are_appended_in_order_on_commit() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataFile::open(dir.path(), policy).unwrap();
        data.stage(Some(id(1)), None, b"numero random: 5");
        data.stage(Some(id(2)), None, b"hola");
        assert_eq!(data.staged(), 2);
        assert_eq!(
            std::fs::read_to_string(data.path()).unwrap(),
            "",
            "nothing before commit"
        );
        data.commit().unwrap();
        assert_eq!(data.staged(), 0);
        let text = std::fs::read_to_string(data.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{policy:?}: {text}");
        assert!(lines[0].contains(" - [9-1] crc32c="), "{}", lines[0]);
        assert!(
            lines[0].ends_with(" mensaje: numero random: 5"),
            "{}",
            lines[0]
        );
        assert!(lines[1].ends_with(" mensaje: hola"), "{}", lines[1]);
        assert_eq!(
            stored_messages(data.path()).unwrap(),
            [
                StoredMessage {
                    id: Some(id(1)),
                    text: "numero random: 5".into()
                },
                StoredMessage {
                    id: Some(id(2)),
                    text: "hola".into()
                },
            ]
        );
        assert!(verify(data.path()).unwrap().is_clean());
    }
}

#[test]
fn commits_are_counted_with_one_sync_per_batch_or_per_record() {
    for (policy, syncs) in [
        (FsyncPolicy::Always, 3),
        (FsyncPolicy::Batch, 1),
        (FsyncPolicy::Never, 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataFile::open(dir.path(), policy).unwrap();
        for n in 1..=3 {
            data.stage(Some(id(n)), None, b"x");
        }
        data.commit().unwrap();
        data.commit().unwrap();
        assert_eq!(
            data.stats(),
            CommitStats {
                records: 3,
                commits: 1,
                syncs
            },
            "{policy:?}: an empty commit counts nothing"
        );
    }
}

#[test]
fn the_page_cache_keeps_only_the_tail_of_the_file() {
    const MIB: u64 = 1024 * 1024;
    assert_eq!(CACHED_TAIL, 16 * MIB);
    // Nothing until 16 MiB more than the tail are written.
    assert_eq!(cache_to_drop(0, 0), None);
    assert_eq!(cache_to_drop(31 * MIB, 0), None);
    assert_eq!(cache_to_drop(32 * MIB, 0), Some(0..16 * MIB));
    // Then from where the last drop ended, never into the tail.
    assert_eq!(cache_to_drop(40 * MIB, 16 * MIB), None);
    assert_eq!(cache_to_drop(50 * MIB, 16 * MIB), Some(16 * MIB..34 * MIB));
    let mut uncached_to = 0;
    for len in (0..1000).map(|n| n * 700 * 1024) {
        if let Some(range) = cache_to_drop(len, uncached_to) {
            assert_eq!(range.start, uncached_to);
            assert_eq!(range.end, len - CACHED_TAIL);
            uncached_to = range.end;
        }
        assert!(len.saturating_sub(uncached_to) < 2 * CACHED_TAIL + 700 * 1024);
    }
}

/// Whether the 4 KiB at `offset` of `path` are in the page cache: a
/// read that must not wait for the disk gets them only then.
fn cached(path: &Path, offset: u64) -> bool {
    let file = File::open(path).unwrap();
    let mut buf = [0u8; 4096];
    match rustix::io::preadv2(
        &file,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        offset,
        rustix::io::ReadWriteFlags::NOWAIT,
    ) {
        Ok(n) => n > 0,
        Err(rustix::io::Errno::AGAIN) => false,
        Err(e) => panic!("preadv2: {e}"),
    }
}

#[test]
fn written_and_synced_bytes_leave_the_page_cache_behind_the_tail() {
    const MIB: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    let text = vec![b'x'; 1000];
    let mut n = 0;
    while data.committed_len < 2 * CACHED_TAIL + 4 * MIB {
        for _ in 0..256 {
            n += 1;
            data.stage(Some(id(n)), None, &text);
        }
        data.commit().unwrap();
    }
    let path = dir.path().join(DATA_FILE);
    let len = data.committed_len;
    // The advice is advice: the kernel keeps a page it holds for a
    // moment (seen once on a loaded machine), so most of the pages must
    // be out, not every one. Without the advice all of them stay in.
    let dropped: Vec<u64> = (0..CACHED_TAIL).step_by(256 * 1024).collect();
    let still_cached: Vec<u64> = dropped
        .iter()
        .copied()
        .filter(|&o| cached(&path, o))
        .collect();
    assert!(
        still_cached.len() * 4 <= dropped.len(),
        "{} of {} sampled pages before the tail are still cached ({still_cached:?}, file {len} bytes)",
        still_cached.len(),
        dropped.len()
    );
    for offset in [len - CACHED_TAIL, len - MIB, len - 4096] {
        assert!(cached(&path, offset), "{offset} of {len} is not cached");
    }
    // And everything is still there to read.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
}

#[test]
fn an_unstaged_record_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    for n in 1..=3 {
        data.stage(Some(id(n)), None, b"x");
    }
    let dropped = data.unstage(1).expect("the second record is staged");
    assert_eq!(parse_line(&dropped).unwrap().id, Some(id(2)));
    assert!(data.unstage(2).is_none());
    data.stage(Some(id(4)), None, b"x");
    assert!(data.unstage(0).is_some());
    data.commit().unwrap();
    assert_eq!(stored_ids(data.path()).unwrap(), [id(3), id(4)]);
    assert!(verify(data.path()).unwrap().is_clean());
}

#[test]
fn discarded_records_are_handed_back_and_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    data.stage(Some(id(1)), None, b"x");
    data.commit().unwrap();
    for n in 2..=4 {
        data.stage(Some(id(n)), None, b"x");
    }
    let mut dropped = Vec::new();
    data.discard_staged(|line| dropped.push(parse_line(line).unwrap().id));
    assert_eq!(dropped, [Some(id(2)), Some(id(3)), Some(id(4))]);
    assert_eq!(data.staged(), 0);
    data.commit().unwrap();
    assert_eq!(stored_ids(data.path()).unwrap(), [id(1)]);
}

#[test]
fn reopening_cuts_off_a_torn_record_and_appends_after_the_last_whole_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut contents = record(1, "a");
    contents.extend(&record(2, "b")[..30]);
    std::fs::write(dir.path().join(DATA_FILE), &contents).unwrap();
    let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    assert_eq!(
        std::fs::read(data.path()).unwrap(),
        record(1, "a"),
        "the torn bytes are gone, the whole record stays"
    );
    data.stage(Some(id(3)), None, b"c");
    data.commit().unwrap();
    assert_eq!(stored_ids(data.path()).unwrap(), [id(1), id(3)]);
    assert!(verify(data.path()).unwrap().is_clean());
}

#[test]
fn a_file_that_is_all_torn_record_is_emptied() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DATA_FILE), &record(1, "a")[..10]).unwrap();
    let data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    assert_eq!(std::fs::read(data.path()).unwrap(), b"");
}

#[test]
fn a_last_whole_record_that_fails_its_checksum_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut contents = record(1, "a");
    let mut damaged = record(2, "b");
    let last_text_byte = damaged.len() - 2;
    damaged[last_text_byte] = b'B';
    contents.extend(&damaged);
    std::fs::write(dir.path().join(DATA_FILE), &contents).unwrap();
    let data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    assert_eq!(std::fs::read(data.path()).unwrap(), contents);
    assert_eq!(
        stored_ids(data.path()).unwrap(),
        [id(1)],
        "kept, but not read as intact"
    );
    let report = verify(data.path()).unwrap();
    assert_eq!(
        report.corrupt,
        [CorruptRecord {
            file: DATA_FILE.into(),
            line: 2,
            id: Some(id(2))
        }]
    );
}

#[test]
fn a_data_directory_is_used_by_one_data_file_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    let e = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "data directory {} is in use by another process (pid {})",
            dir.path().display(),
            std::process::id()
        )
    );
    drop(first);
    DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
}

#[test]
fn verify_reads_a_directory_a_data_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    data.stage(Some(id(1)), None, b"a");
    data.commit().unwrap();
    let report = verify(data.path()).unwrap();
    assert_eq!((report.records, report.is_clean()), (1, true));
    assert!(
        DataFile::open(dir.path(), FsyncPolicy::Batch).is_err(),
        "verify left the claim alone"
    );
}

#[test]
fn opening_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    let data = DataFile::open(&nested, FsyncPolicy::Batch).unwrap();
    assert!(data.path().exists());
    assert!(nested.join(LOCK_FILE).exists());
}

#[test]
fn running_out_of_space_mid_batch_acknowledges_nothing_and_cuts_the_batch_off() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let first = record(1, "a").len() as u64;
        let faults = Faults {
            // The first batch and part of the second fit.
            write_budget: Some(first + 50),
            ..Faults::default()
        };
        let mut data = DataFile::open_with(dir.path(), policy, faulty(faults)).unwrap();
        data.stage(Some(id(1)), None, b"a");
        data.commit().unwrap();
        let before = std::fs::read(data.path()).unwrap();
        for n in 2..=4 {
            data.stage(Some(id(n)), None, b"a longer text than the first");
        }
        let e = data.commit().unwrap_err();
        assert!(
            matches!(&e, StorageError::Write { error, .. } if error.raw_os_error() == Some(28)),
            "{policy:?}: {e:?}"
        );
        assert_eq!(
            std::fs::read(data.path()).unwrap(),
            before,
            "{policy:?}: back to its length before the batch"
        );
        data.stage(Some(id(5)), None, b"a");
        assert!(
            matches!(data.commit(), Err(StorageError::Failed { .. })),
            "{policy:?}: nothing more is written"
        );
        assert_eq!(std::fs::read(data.path()).unwrap(), before);
    }
}

#[test]
fn a_failed_fsync_acknowledges_nothing_and_is_never_retried() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Batch] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults {
            syncs_before_eio: Some(1),
            ..Faults::default()
        };
        let mut data = DataFile::open_with(dir.path(), policy, faulty(faults)).unwrap();
        data.stage(Some(id(1)), None, b"a");
        data.commit().unwrap();
        data.stage(Some(id(2)), None, b"b");
        let e = data.commit().unwrap_err();
        assert!(
            matches!(&e, StorageError::Sync { error, .. } if error.raw_os_error() == Some(5)),
            "{policy:?}: {e:?}"
        );
        assert_eq!(stored_ids(data.path()).unwrap(), [id(1)], "{policy:?}");
        data.stage(Some(id(3)), None, b"c");
        assert!(
            matches!(data.commit(), Err(StorageError::Failed { .. })),
            "{policy:?}: a failed commit is not retried"
        );
    }
}

#[test]
fn an_open_syncs_data_txt_before_anything_trusts_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Written and never synced: as a process killed before its
        // commit's fdatasync leaves it, in the page cache.
        let mut data = DataFile::open(dir.path(), FsyncPolicy::Never).unwrap();
        data.stage(Some(id(1)), None, b"a");
        data.commit().unwrap();
    }
    let faults = Faults {
        open_sync_fails: true,
        ..Faults::default()
    };
    let e = DataFile::open_with(dir.path(), FsyncPolicy::Batch, faulty(faults)).unwrap_err();
    assert!(
        matches!(&e, StorageError::Sync { error, .. } if error.raw_os_error() == Some(5)),
        "a file that cannot be synced is not read as stored: {e:?}"
    );
    let data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    assert_eq!(stored_ids(data.path()).unwrap(), [id(1)]);
}

#[test]
fn a_repair_copy_keeps_the_time_of_the_copy_it_was_made_from() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    data.stage(Some(id(1)), None, b"a");
    data.stage_copy(id(2), None, b"b", 1_795_413_331_793);
    data.stage_copy(id(3), None, b"c", u64::MAX);
    data.commit().unwrap();
    let text = std::fs::read_to_string(data.path()).unwrap();
    let stamps: Vec<&str> = text.lines().map(|line| &line[..23]).collect();
    assert_eq!(stamps[1], "2026-11-23 05:55:31,793", "{text}");
    assert_eq!(
        stamps[2], stamps[0],
        "a time no record can carry: the batch's"
    );
    assert!(verify(data.path()).unwrap().is_clean());
    assert_eq!(
        data.last_commit_newest_ms(),
        data.last_stamp_ms().max(1_795_413_331_793)
    );
    data.stage_copy(id(4), None, b"d", 1_000);
    data.commit().unwrap();
    assert_eq!(
        data.last_commit_newest_ms(),
        1_000,
        "a batch of old copies is as old as they are"
    );
}

#[test]
fn fsync_policy_parses() {
    assert_eq!("batch".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Batch);
    assert!("sometimes".parse::<FsyncPolicy>().is_err());
}
