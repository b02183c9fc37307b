use std::time::{Duration, SystemTime};

use protocol::ids::{KeyRef, MessageId};

use super::*;
use crate::reads::{Got, MAX_READS_IN_FLIGHT, ReadServer, SharedWriter};
use crate::storage::retention::{RETENTION_FILE, RetentionClock};
use crate::storage::{Backend, Faults, FsyncPolicy, RollStep, verify_dir};

const DAY: Duration = Duration::from_secs(86_400);

fn id(epoch: u64, seq: u64) -> MessageId {
    MessageId { epoch, seq }
}

/// Small segments: a roll after every few records.
fn config(segment_bytes: u64) -> StoreConfig {
    StoreConfig {
        segment_bytes,
        retention: RetentionPolicy::default(),
    }
}

struct Node {
    data: DataFile,
    store: Store,
    keys: KeyIndex,
}

fn open(dir: &Path, config: StoreConfig, backend: Backend) -> Node {
    let data = DataFile::open_with(dir, FsyncPolicy::Batch, backend).unwrap();
    let mut keys = KeyIndex::new(1000, Duration::from_secs(120));
    let store = Store::open(&data, config, &mut keys, SystemTime::now()).unwrap();
    Node { data, store, keys }
}

impl Node {
    /// Commits one batch of `ids` (keyed `c-1/<seq>`), then rolls if due.
    fn write(&mut self, ids: &[MessageId]) -> Result<bool, StorageError> {
        for &id in ids {
            let key = KeyRef {
                client: "c-1",
                seq: id.seq,
            };
            self.data
                .stage(Some(id), Some(key), format!("text of {id}").as_bytes());
        }
        self.data.commit()?;
        self.store.committed(&self.data);
        // As the data path does between batches.
        let now = SystemTime::now();
        let rolled = self.store.maybe_roll(&mut self.data, now)?;
        if !rolled && self.store.retention_due(now) {
            self.store.apply_retention(now)?;
        }
        Ok(rolled)
    }

    fn get(&self, id: MessageId) -> Got {
        self.store.reader(1024).get(id).unwrap()
    }

    fn scan_ids(&self, after: Option<MessageId>, limit: u32) -> Vec<MessageId> {
        let scanned = self
            .store
            .reader(1024)
            .scan(after, limit, usize::MAX)
            .unwrap();
        scanned.records.iter().map(|r| r.id).collect()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("data."))
        .collect();
    names.sort();
    names
}

fn found_text(got: Got) -> String {
    match got {
        Got::Found(record) => record.text,
        other => panic!("not found: {other:?}"),
    }
}

#[test]
fn data_txt_rolls_into_numbered_segments_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), config(300), Backend::File);
    assert!(!node.write(&[id(5, 1)]).unwrap(), "under the size");
    // This batch takes the file over the size: it rolls after it, whole.
    assert!(node.write(&[id(5, 2), id(5, 3), id(5, 4)]).unwrap());
    assert_eq!(names(dir.path()), ["data.000001.txt", "data.txt"]);
    assert_eq!(std::fs::read(dir.path().join("data.txt")).unwrap(), b"");
    let segment = std::fs::read_to_string(dir.path().join("data.000001.txt")).unwrap();
    assert_eq!(segment.lines().count(), 4, "the batch was not split");
    node.write(&[id(5, 5)]).unwrap();
    node.write(&[id(5, 6), id(5, 7), id(5, 8)]).unwrap();
    assert_eq!(
        names(dir.path()),
        ["data.000001.txt", "data.000002.txt", "data.txt"]
    );
    assert_eq!(node.store.active_number(), 3);
    for seq in 1..=8 {
        assert_eq!(found_text(node.get(id(5, seq))), format!("text of 5-{seq}"));
    }
}

#[test]
fn a_restart_rebuilds_the_index_and_the_keys_from_every_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut node = open(dir.path(), config(200), Backend::File);
        for seq in 1..=9 {
            node.write(&[id(5, seq)]).unwrap();
        }
    }
    assert!(names(dir.path()).len() > 3, "{:?}", names(dir.path()));
    let node = open(dir.path(), config(200), Backend::File);
    assert_eq!(node.store.indexed(), 9);
    for seq in 1..=9 {
        assert_eq!(found_text(node.get(id(5, seq))), format!("text of 5-{seq}"));
        let key = KeyRef { client: "c-1", seq };
        assert_eq!(
            node.keys.get(key),
            Some(id(5, seq)),
            "key {seq} from its segment"
        );
    }
    assert_eq!(node.get(id(5, 10)), Got::NotFound { removed: false });
    assert!(verify_dir(dir.path()).unwrap().is_clean());
}

#[test]
fn scans_go_in_id_order_across_segments_and_interleaved_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), config(250), Backend::File);
    // Epoch 20's run, a late copy from epoch 10, epoch 30, a resend.
    let file_order = [
        id(20, 1),
        id(20, 2),
        id(10, 5),
        id(20, 3),
        id(30, 1),
        id(10, 4),
        id(30, 2),
        id(20, 2),
    ];
    for &one in &file_order {
        node.write(&[one]).unwrap();
    }
    let in_order = [
        id(10, 4),
        id(10, 5),
        id(20, 1),
        id(20, 2),
        id(20, 3),
        id(30, 1),
        id(30, 2),
    ];
    assert_eq!(node.scan_ids(None, 1000), in_order);
    assert_eq!(node.scan_ids(Some(id(10, 5)), 3), in_order[2..5]);
    assert_eq!(node.scan_ids(Some(id(30, 2)), 3), []);
    // The same after a restart, from the files alone.
    drop(node);
    let node = open(dir.path(), config(250), Backend::File);
    assert_eq!(node.scan_ids(None, 1000), in_order);
    let scanned = node.store.reader(1024).scan(None, 3, usize::MAX).unwrap();
    assert!(scanned.more, "stopped at the limit");
    let scanned = node.store.reader(1024).scan(None, 1000, 1).unwrap();
    assert_eq!(
        scanned.records.len(),
        1,
        "the byte bound, with one record at least"
    );
    assert!(scanned.more);
    let scanned = node
        .store
        .reader(1024)
        .scan(Some(id(30, 1)), 1000, usize::MAX)
        .unwrap();
    assert_eq!((scanned.records.len(), scanned.more), (1, false));
}

#[test]
fn a_crash_at_any_step_of_a_roll_loses_and_duplicates_nothing() {
    for step in [RollStep::Synced, RollStep::Renamed, RollStep::Created] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults {
            roll_stops_after: Some(step),
            ..Faults::default()
        };
        {
            let mut node = open(dir.path(), config(200), Backend::Faulty(faults));
            node.write(&[id(5, 1)]).unwrap();
            let e = node.write(&[id(5, 2), id(5, 3)]).unwrap_err();
            assert!(matches!(e, StorageError::Roll { .. }), "{step:?}: {e}");
            assert!(
                matches!(node.write(&[id(5, 4)]), Err(StorageError::Failed { .. })),
                "{step:?}: nothing is written after a failed roll"
            );
        }
        // The restart, on a sound disk, from whatever the crash left.
        let mut node = open(dir.path(), config(200), Backend::File);
        assert_eq!(
            node.scan_ids(None, 1000),
            [id(5, 1), id(5, 2), id(5, 3)],
            "{step:?}: {:?}",
            names(dir.path())
        );
        node.write(&[id(5, 5), id(5, 6), id(5, 7)]).unwrap();
        node.write(&[id(5, 8)]).unwrap();
        let report = verify_dir(dir.path()).unwrap();
        assert!(report.is_clean(), "{step:?}: {report:?}");
        assert_eq!(report.records, 7, "{step:?}");
        // The segment the crash left (if the rename happened) keeps its
        // number: the next roll takes the one after.
        let segments = names(dir.path());
        let expected: &[&str] = match step {
            RollStep::Synced => &["data.000001.txt", "data.txt"],
            RollStep::Renamed | RollStep::Created => {
                &["data.000001.txt", "data.000002.txt", "data.txt"]
            }
        };
        assert_eq!(segments, expected, "{step:?}");
    }
}

#[test]
fn retention_by_age_removes_old_segments_never_the_active_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), config(200), Backend::File);
    for seq in 1..=6 {
        node.write(&[id(5, seq)]).unwrap();
    }
    let segments = node.store.segments().len();
    assert!(segments >= 2);
    let mut store_config = config(200);
    store_config.retention.max_age = Some(7 * DAY);
    node.store.config = store_config;
    let now = SystemTime::now();
    assert!(
        !node.store.retention_due(now),
        "checked at most once a minute"
    );
    assert!(node.store.retention_due(now + 6 * DAY));
    assert_eq!(
        node.store.apply_retention(now + 6 * DAY).unwrap(),
        0,
        "not old enough"
    );
    assert_eq!(node.store.apply_retention(now + 8 * DAY).unwrap(), segments);
    assert_eq!(names(dir.path()), ["data.txt"]);
    let stats = node.store.retention_stats();
    assert_eq!(stats.segments, segments as u64);
    // Ids 1..=6 were all in segments (each write rolled at most after it).
    let kept: Vec<MessageId> = node.scan_ids(None, 1000);
    for seq in 1..=6 {
        let one = id(5, seq);
        if kept.contains(&one) {
            continue;
        }
        assert!(node.store.retention_removed(one), "{one}");
        assert_eq!(node.get(one), Got::NotFound { removed: true });
    }
    assert!(!node.store.retention_removed(id(5, 7)));
    assert!(!node.store.retention_removed(id(6, 1)));
    let record = std::fs::read_to_string(dir.path().join(RETENTION_FILE)).unwrap();
    assert_eq!(record.lines().count(), segments);
    assert!(record.contains("reason=age epochs=5:1-"), "{record}");
    // A restart still knows, and goes on numbering after what it removed.
    drop(node);
    let mut node = open(dir.path(), store_config, Backend::File);
    assert!(node.store.retention_removed(id(5, 1)));
    assert!(node.store.active_number() > segments as u32);
    for seq in 10..=13 {
        node.write(&[id(5, seq)]).unwrap();
    }
    assert!(!names(dir.path()).contains(&"data.000001.txt".to_owned()));
}

#[test]
fn a_forward_clock_step_removes_nothing_the_records_age_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), config(200), Backend::File);
    for seq in 1..=6 {
        node.write(&[id(5, seq)]).unwrap();
    }
    let segments = node.store.segments().len();
    assert!(segments >= 2);
    let mut store_config = config(200);
    store_config.retention.max_age = Some(7 * DAY);
    node.store.config = store_config;
    // Fabricated clocks: the wall clock jumps a year ahead a second
    // after the store opened.
    let (wall, mono) = (SystemTime::now(), std::time::Instant::now());
    let clock = RetentionClock::new(node.store.newest_record_ms(), wall, mono);
    let year = 365 * DAY;
    let stepped = clock.now(wall + year, mono + Duration::from_secs(1));
    assert_eq!(
        node.store.apply_retention(stepped).unwrap(),
        0,
        "a year's step of the wall clock removes nothing"
    );
    assert_eq!(node.store.segments().len(), segments);
    // Once the records are truly older than the age, they go.
    let later = clock.now(wall + year, mono + 8 * DAY);
    assert_eq!(node.store.apply_retention(later).unwrap(), segments);
    // A store opened under a stepped clock judges by its records too.
    drop(node);
    let dir = tempfile::tempdir().unwrap();
    {
        let mut node = open(dir.path(), config(200), Backend::File);
        for seq in 1..=6 {
            node.write(&[id(5, seq)]).unwrap();
        }
    }
    let data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    let mut keys = KeyIndex::new(1000, Duration::from_secs(120));
    let store = Store::open(&data, store_config, &mut keys, SystemTime::now() + year).unwrap();
    assert_eq!(store.segments().len(), segments, "nothing removed at open");
}

#[test]
fn retention_by_bytes_removes_the_oldest_segments_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), config(200), Backend::File);
    let mut store_config = config(200);
    store_config.retention.max_bytes = Some(700);
    node.store.config = store_config;
    for seq in 1..=20 {
        node.write(&[id(5, seq)]).unwrap();
    }
    let total: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("data."))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(total <= 700, "{total} bytes left");
    assert!(node.store.retention_stats().segments > 0);
    let kept = node.scan_ids(None, 1000);
    assert_eq!(kept.last(), Some(&id(5, 20)), "the newest stay");
    assert!(
        kept.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
        "a suffix: {kept:?}"
    );
    assert!(node.store.retention_removed(id(5, kept[0].seq - 1)));
    assert!(!node.store.retention_removed(kept[0]) || kept[0].seq == 1);
    let record = std::fs::read_to_string(dir.path().join(RETENTION_FILE)).unwrap();
    assert!(record.contains("reason=bytes"), "{record}");
}

#[test]
fn retention_answers_removed_only_for_ids_this_node_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), config(200), Backend::File);
    let mut store_config = config(200);
    store_config.retention.max_bytes = Some(700);
    node.store.config = store_config;
    // Two ids of every three, as a node gets them with R=2 of 3 nodes.
    let held = |seq: u64| !seq.is_multiple_of(3);
    for seq in (1..=30).filter(|&seq| held(seq)) {
        node.write(&[id(5, seq)]).unwrap();
    }
    assert!(node.store.retention_stats().segments > 0);
    let removed_ids: Vec<MessageId> = node
        .store
        .take_removed_sets()
        .iter()
        .flat_map(|set| {
            (1..=30)
                .map(|seq| id(5, seq))
                .filter(|&id| set.contains(id))
        })
        .collect();
    let first_kept = node.scan_ids(None, 1000)[0];
    let below: Vec<MessageId> = (1..first_kept.seq)
        .map(|seq| id(5, seq))
        .filter(|id| held(id.seq))
        .collect();
    assert_eq!(removed_ids, below, "the sets hold what was removed");
    let check = |node: &Node| {
        for seq in 1..first_kept.seq {
            assert_eq!(
                node.get(id(5, seq)),
                Got::NotFound { removed: held(seq) },
                "5-{seq}: removed only if it was held here"
            );
        }
        assert_eq!(node.get(id(5, 30)), Got::NotFound { removed: false });
        assert_eq!(node.get(id(6, 1)), Got::NotFound { removed: false });
    };
    check(&node);
    drop(node);
    check(&open(dir.path(), store_config, Backend::File));
}

#[test]
fn keys_leave_the_key_index_with_their_segment() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut node = open(dir.path(), config(200), Backend::File);
        for seq in 1..=20 {
            node.write(&[id(5, seq)]).unwrap();
        }
    }
    let mut store_config = config(200);
    store_config.retention.max_bytes = Some(700);
    // Retention removes the oldest segments as the store opens.
    let node = open(dir.path(), store_config, Backend::File);
    let kept = node.scan_ids(None, 1000);
    assert!(kept.len() < 20 && !kept.is_empty(), "{kept:?}");
    for seq in 1..=20 {
        let key = KeyRef { client: "c-1", seq };
        let on_disk = kept.contains(&id(5, seq)).then_some(id(5, seq));
        assert_eq!(node.keys.get(key), on_disk, "key c-1/{seq}");
    }
}

#[test]
fn a_record_damaged_after_it_was_indexed_costs_one_read_not_every_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), config(300), Backend::File);
    for seq in 1..=6 {
        node.write(&[id(5, seq)]).unwrap();
    }
    // A byte of 5-2's text changes on disk, under the index.
    let segment = dir.path().join("data.000001.txt");
    let contents = std::fs::read_to_string(&segment).unwrap();
    assert!(contents.contains("text of 5-2\n"), "{contents}");
    std::fs::write(&segment, contents.replace("text of 5-2\n", "text of 5-7\n")).unwrap();
    let reader = node.store.reader(1024);
    let scanned = reader.scan(None, 100, usize::MAX).unwrap();
    let ids: Vec<MessageId> = scanned.records.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        [1, 3, 4, 5, 6].map(|seq| id(5, seq)),
        "the scan goes past it"
    );
    assert_eq!(scanned.damaged, 1);
    let again = reader.scan(None, 100, usize::MAX).unwrap();
    assert_eq!(
        (again.records.len(), again.damaged),
        (5, 0),
        "marked: not read again"
    );
    assert_eq!(node.get(id(5, 2)), Got::NotFound { removed: false });
    // A new copy (a repair's) is found again.
    node.write(&[id(5, 2)]).unwrap();
    assert_eq!(found_text(node.get(id(5, 2))), "text of 5-2");
    // The next start counts the damaged line, to report it.
    drop(node);
    let node = open(dir.path(), config(300), Backend::File);
    assert_eq!(node.store.open_stats().damaged, 1);
    assert_eq!(found_text(node.get(id(5, 2))), "text of 5-2");
}

#[test]
fn reads_beyond_the_bound_are_not_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path(), config(1 << 20), Backend::File);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let reads = ReadServer::start(
        node.store.reader(1024),
        SharedWriter::new(stream),
        Default::default(),
    )
    .unwrap();
    for _ in 0..MAX_READS_IN_FLIGHT {
        assert!(reads.admit());
    }
    assert!(!reads.admit(), "one more than the bound");
    assert_eq!(reads.in_flight(), MAX_READS_IN_FLIGHT);
}

#[test]
fn sizes_and_ages_parse() {
    assert_eq!(parse_age("7d").unwrap(), 7 * DAY);
    assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3600));
    assert!(parse_age("0d").is_err());
    assert!(parse_age("7").is_err());
    assert!(parse_age("1w").is_err());
    assert_eq!(parse_bytes("128MiB").unwrap(), 128 << 20);
    assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
    assert!(parse_bytes("1MB").is_err());
    assert!(parse_segment_bytes("1KiB").is_err());
    assert_eq!(parse_segment_bytes("2GiB").unwrap(), 2 << 30);
}

/// The cold start of a long-lived node: 10,000,000 records in 128 MiB
/// segments (five head-node runs, 2% of records resent late from the run
/// before, 1,000 clients' keys, times over five days up to now), then
/// `DataFile::open` + `Store::open` (message index and key index rebuilt
/// from every file) until the node could serve, and the resident memory
/// this added per message. The files are written straight in the record
/// format and dropped from the page cache before the open.
///
/// `cargo test --release -p datanode --lib cold_start_10m -- --ignored --nocapture`
#[test]
#[ignore = "writes 1.2 GB; a measurement, run by hand"]
fn cold_start_10m_records() {
    use std::io::Write;
    use std::time::Instant;

    use crate::storage::format_record;
    use crate::storage::segments::{DEFAULT_SEGMENT_BYTES, segment_name};

    const RECORDS: u64 = 10_000_000;
    const RUNS: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let start_ms = now_ms - 5 * 86_400_000;
    let epochs: Vec<u64> = (0..RUNS).map(|run| start_ms + run * 86_400_000).collect();
    let started = Instant::now();
    let mut segment = 1u32;
    let mut buf = Vec::with_capacity(DEFAULT_SEGMENT_BYTES as usize + 4096);
    let mut stamp = String::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let flush = |buf: &mut Vec<u8>, name: String| {
        let path = dir.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(buf).unwrap();
        file.sync_data().unwrap();
        // Out of the page cache: the open reads from the disk.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        buf.clear();
    };
    for n in 0..RECORDS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run = n * RUNS / RECORDS;
        let seq_in_run = n - run * RECORDS / RUNS + 1;
        // 2% are late copies of the previous run's messages.
        let id = if run > 0 && rng.is_multiple_of(50) {
            MessageId {
                epoch: epochs[run as usize - 1],
                seq: rng % (RECORDS / RUNS) + 1,
            }
        } else {
            MessageId {
                epoch: epochs[run as usize],
                seq: seq_in_run,
            }
        };
        if n.is_multiple_of(100) {
            // One batch every 100 records; the last batches are now.
            let at_ms = start_ms + (now_ms - start_ms) * n / RECORDS;
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms);
            stamp.clear();
            node_kit::timefmt::write_timestamp(&mut stamp, at).unwrap();
        }
        let client = format!("c-{:012x}", rng % 1000);
        let key = KeyRef {
            client: &client,
            seq: seq_in_run,
        };
        let text = format!("numero random: {:05}", rng % 100_000);
        format_record(&mut buf, &stamp, Some(id), Some(key), text.as_bytes());
        if buf.len() as u64 >= DEFAULT_SEGMENT_BYTES {
            flush(&mut buf, segment_name(segment));
            segment += 1;
        }
    }
    flush(&mut buf, DATA_FILE.into());
    drop(buf);
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "wrote {RECORDS} records, {bytes} bytes, {segment} files in {:?}",
        started.elapsed()
    );

    let before = node_kit::telemetry::resident_bytes().expect("resident memory");
    let started = Instant::now();
    let data = DataFile::open(dir.path(), FsyncPolicy::Batch).unwrap();
    let mut keys = KeyIndex::new(
        crate::keys::DEFAULT_DEDUP_KEYS,
        crate::keys::DEFAULT_DEDUP_WINDOW,
    );
    let store = Store::open(&data, StoreConfig::default(), &mut keys, SystemTime::now()).unwrap();
    let took = started.elapsed();
    let after = node_kit::telemetry::resident_bytes().expect("resident memory");
    let opened = store.open_stats();
    let per_message = (after.saturating_sub(before)) as f64 / RECORDS as f64;
    println!(
        "cold start: {took:?} to open {} files: {} records read, {} indexed ({} index bytes, {:.1} per message), {} keys in the window",
        opened.files,
        opened.records,
        store.indexed(),
        store.index_bytes(),
        store.index_bytes() as f64 / store.indexed() as f64,
        keys.len()
    );
    println!(
        "resident memory: {before} bytes before, {after} after: {per_message:.1} bytes per message"
    );
    // It serves: a read by id from the oldest segment.
    let first = store
        .reader(1024)
        .scan(None, 1, usize::MAX)
        .unwrap()
        .records;
    assert_eq!(first.len(), 1);
    assert!(opened.records == RECORDS);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(per_message < 32.0, "{per_message:.1} bytes per message");
}
