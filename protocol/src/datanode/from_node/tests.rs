use bytes::BytesMut;

use super::*;
use crate::datanode::ReadRecord;

fn id(epoch: u64, seq: u64) -> MessageId {
    MessageId { epoch, seq }
}

#[test]
fn consecutive_acknowledgements_become_one_run_and_nothing_else_does() {
    let mut answers: Vec<FromDataNode> = [5, 6, 7, 9, 10]
        .into_iter()
        .map(|seq| FromDataNode::Stored(Some(id(1, seq))))
        .collect();
    answers.push(FromDataNode::Pong(3));
    answers.push(FromDataNode::Stored(Some(id(1, 11))));
    // Another epoch never continues a run, even with the next number.
    answers.push(FromDataNode::Stored(Some(id(2, 12))));
    answers.push(FromDataNode::Stored(None));
    let mut buf = BytesMut::new();
    FromDataNode::encode_answers(answers, &mut buf);
    assert_eq!(
        std::str::from_utf8(&buf).unwrap(),
        "recibidos 1-5 3\nrecibidos 1-9 2\npong 3\nrecibido 1-11\nrecibido 2-12\nrecibido\n"
    );
    let ids: Vec<u64> = std::str::from_utf8(&buf)
        .unwrap()
        .lines()
        .flat_map(|line| FromDataNode::parse(line).unwrap().stored_ids())
        .map(|id| id.seq)
        .collect();
    assert_eq!(ids, [5, 6, 7, 9, 10, 11, 12]);
}

#[test]
fn a_run_must_hold_two_ids_or_more_and_stay_within_its_epoch() {
    for bad in [
        "recibidos 1-5 1",
        "recibidos 1-5 0",
        "recibidos 1-5",
        "recibidos 1-5 2 3",
        "recibidos 1-5 -2",
        "recibidos 1-5 4294967296",
        "recibidos 1-18446744073709551615 2",
    ] {
        assert!(FromDataNode::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        FromDataNode::parse("recibidos 1-18446744073709551614 2"),
        Ok(FromDataNode::StoredRun {
            first: id(1, u64::MAX - 1),
            count: 2
        })
    );
}

#[test]
fn datanode_to_head_frames_round_trip() {
    let frames = [
        FromDataNode::Stored(Some(id(9, 10))),
        FromDataNode::Stored(None),
        FromDataNode::StoredRun {
            first: id(9, 20),
            count: 700,
        },
        FromDataNode::Pong(12),
        FromDataNode::Proof("0f".repeat(32).parse().unwrap()),
        FromDataNode::Leaving,
        FromDataNode::Error("disk full".into()),
        FromDataNode::AlreadyHeld {
            id: id(9, 11),
            held: id(8, 2),
        },
        FromDataNode::Withdrawn(id(9, 12)),
        FromDataNode::Held {
            client: "c-1".parse().unwrap(),
            keys: vec![(1, id(8, 2)), (2, id(8, 5))],
        },
        FromDataNode::Peers(vec!["dn2".parse().unwrap()]),
        FromDataNode::Peers(vec![]),
        FromDataNode::Ready,
        FromDataNode::Damaged(3),
        FromDataNode::Removed(vec![
            IdRange::new(id(8, 1), id(8, 1150)).unwrap(),
            IdRange::new(id(9, 7), id(9, 7)).unwrap(),
        ]),
        FromDataNode::Found {
            req: 4,
            record: ReadRecord {
                id: id(9, 13),
                key: Some("c-1/77".parse().unwrap()),
                stored_ms: 1_795_413_331_793,
                text: "numero random: 7 with  spaces: and - dashes ".into(),
            },
        },
        FromDataNode::Found {
            req: 5,
            record: ReadRecord {
                id: id(9, 14),
                key: None,
                stored_ms: 0,
                text: String::new(),
            },
        },
        FromDataNode::NotFound {
            req: 6,
            removed: false,
        },
        FromDataNode::NotFound {
            req: 7,
            removed: true,
        },
        FromDataNode::Scanned {
            req: 8,
            count: 1000,
            last: Some(id(9, 14)),
            more: true,
        },
        FromDataNode::Scanned {
            req: 9,
            count: 0,
            last: None,
            more: false,
        },
        FromDataNode::ReadError {
            req: 10,
            reason: "too many reads outstanding (at most 16)".into(),
        },
        FromDataNode::Fsync(FsyncReport {
            window_ms: 10_012,
            count: 4_183,
            p99_micros: Some(1_840),
        }),
        FromDataNode::Fsync(FsyncReport {
            window_ms: 5_000,
            count: 0,
            p99_micros: None,
        }),
        FromDataNode::Fsync(FsyncReport {
            window_ms: u64::MAX,
            count: u64::MAX,
            p99_micros: Some(0),
        }),
    ];
    for frame in frames {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let text = std::str::from_utf8(&buf).unwrap();
        assert_eq!(FromDataNode::parse(text).unwrap(), frame, "{text}");
    }
    assert!(FromDataNode::parse("recibido x").is_err());
    assert!(FromDataNode::parse("recibidos").is_err());
    for bad in [
        "found 1 9-1 0 -",
        "found x 9-1 0 - text",
        "found 1 9-1 0 bad-key text",
        "notfound",
        "notfound 1 gone",
        "scanned 1 2 9-1",
        "scanned 1 2 9-1 maybe",
        "scanned 1 4294967296 - done",
        "readerror x why",
        "fsync",
        "fsync 10000 12",
        "fsync 10000 12 1.5",
        "fsync 10000 -1 900",
        "fsync 10000 12 900 extra",
        "fsync x 12 900",
        "fsync 10000 12 ms",
    ] {
        assert!(FromDataNode::parse(bad).is_err(), "{bad}");
    }
    let mut buf = BytesMut::new();
    FromDataNode::Fsync(FsyncReport {
        window_ms: 10_000,
        count: 812,
        p99_micros: Some(1_930),
    })
    .encode(&mut buf);
    assert_eq!(&buf[..], b"fsync 10000 812 1930");
    let mut buf = BytesMut::new();
    FromDataNode::encode_found(3, id(1, 2), None, 5, b"a b", &mut buf);
    assert_eq!(&buf[..], b"found 3 1-2 5 - a b");
}

#[test]
fn a_removed_line_takes_only_ranges_within_one_epoch_and_in_order() {
    assert_eq!(
        FromDataNode::parse("removed 8-1..8-20").unwrap(),
        FromDataNode::Removed(vec![IdRange::new(id(8, 1), id(8, 20)).unwrap()])
    );
    for bad in [
        "removed 8-20..8-1",
        "removed 8-1..9-20",
        "removed 8-1",
        "removed 8-1..8-2  8-3..8-4",
        "removed ",
        "removed",
    ] {
        assert!(FromDataNode::parse(bad).is_err(), "{bad:?}");
    }
    let too_many = vec!["1-1..1-2"; REMOVED_PER_LINE + 1].join(" ");
    assert!(FromDataNode::parse(&format!("removed {too_many}")).is_err());
    let range = IdRange::new(id(8, 5), id(8, 9)).unwrap();
    assert!(range.contains(id(8, 5)) && range.contains(id(8, 9)));
    assert!(!range.contains(id(8, 4)) && !range.contains(id(8, 10)) && !range.contains(id(9, 6)));
}

#[test]
fn merged_ranges_keep_one_per_epoch_covering_every_range_added() {
    let r = |e, a, b| IdRange::new(id(e, a), id(e, b)).unwrap();
    let mut ranges = Vec::new();
    for range in [
        r(5, 10, 20),
        r(3, 1, 4),
        r(5, 30, 40),
        r(5, 1, 2),
        r(4, 7, 7),
    ] {
        IdRange::merge_into(&mut ranges, range);
    }
    assert_eq!(ranges, vec![r(3, 1, 4), r(4, 7, 7), r(5, 1, 40)]);
}
