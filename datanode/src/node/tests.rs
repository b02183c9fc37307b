use std::time::{Duration, Instant};

use protocol::datanode::{FromDataNode, HeadId};
use protocol::ids::{KeyRef, MessageId, MessageKey};

use super::*;

const LINGER: Duration = Duration::from_micros(400);
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
const FSYNC_EVERY: Duration = Duration::from_secs(5);

fn id(seq: u64) -> MessageId {
    MessageId { epoch: 3, seq }
}

/// A record as the fake disk holds it.
type Record = (Option<MessageId>, Option<MessageKey>, String);

/// Staging in memory: what is staged, and what the commits wrote.
#[derive(Default)]
struct Disk {
    staged: Vec<Record>,
    written: Vec<Record>,
}

impl Staging for Disk {
    fn stage(&mut self, id: Option<MessageId>, key: Option<KeyRef<'_>>, text: &[u8]) {
        let text = String::from_utf8(text.to_vec()).unwrap();
        self.staged.push((id, key.map(|k| k.to_key()), text));
    }

    fn stage_copy(&mut self, id: MessageId, key: Option<KeyRef<'_>>, text: &[u8], stored_ms: u64) {
        let text = format!("{} @{stored_ms}", String::from_utf8(text.to_vec()).unwrap());
        self.staged.push((Some(id), key.map(|k| k.to_key()), text));
    }

    fn staged(&self) -> usize {
        self.staged.len()
    }

    fn last_stamp_ms(&self) -> u64 {
        1_000
    }

    fn unstage_record(
        &mut self,
        index: usize,
        dropped: impl FnOnce(Option<MessageId>, Option<KeyRef<'_>>),
    ) -> bool {
        if index >= self.staged.len() {
            return false;
        }
        let (id, key, _) = self.staged.remove(index);
        dropped(id, key.as_ref().map(MessageKey::as_ref));
        true
    }

    fn discard_staged_records(
        &mut self,
        mut dropped: impl FnMut(Option<MessageId>, Option<KeyRef<'_>>),
    ) {
        for (id, key, _) in self.staged.drain(..) {
            dropped(id, key.as_ref().map(MessageKey::as_ref));
        }
    }
}

impl Disk {
    fn written_ids(&self) -> Vec<Option<MessageId>> {
        self.written.iter().map(|r| r.0).collect()
    }
}

fn node() -> Node {
    node_with(Kept::default())
}

fn node_with(kept: Kept) -> Node {
    Node::new(
        KeyIndex::new(1000, Duration::from_secs(120)),
        kept,
        Arc::default(),
    )
}

/// The head node of most tests: epoch 3, as the ids of [`id`].
fn head() -> Fence {
    fence(3, 1)
}

fn fence(epoch: u64, head: u64) -> Fence {
    Fence {
        epoch,
        head: HeadId(head),
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        commit_linger: LINGER,
        fsync_report_every: FSYNC_EVERY,
        head_timeout: HEAD_TIMEOUT,
        leave_timeout: LEAVE_TIMEOUT,
    }
}

/// Hands `lines` in at `now` until one is not taken; what became of the
/// last one handed in, and how many were.
fn hand(
    session: &mut Session<'_>,
    disk: &mut Disk,
    lines: &[&str],
    now: Instant,
) -> (usize, Handled) {
    let mut last = Handled::Taken;
    for (n, line) in lines.iter().enumerate() {
        last = session.handle_line(line, now, disk);
        if !matches!(last, Handled::Taken) {
            return (n, last);
        }
    }
    (lines.len(), last)
}

/// Writes what is staged (as the driver does) and returns the batch's
/// answers.
fn commit(session: &mut Session<'_>, disk: &mut Disk, now: Instant) -> Vec<FromDataNode> {
    let staged = disk.staged.len();
    disk.written.append(&mut disk.staged);
    session.committed(staged, now);
    session.answers().collect()
}

#[test]
fn a_key_whose_record_retention_removed_is_written_again_when_resent() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(&mut session, &mut disk, &["mensaje 3-1 c1/7: first"], t0);
    commit(&mut session, &mut disk, t0);
    session.forget_removed(|removed| removed == id(1));
    hand(&mut session, &mut disk, &["mensaje 3-2 c1/7: first"], t0);
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::Stored(Some(id(2)))],
        "not answered as held under 3-1, which is gone"
    );
    assert_eq!(disk.written_ids(), [Some(id(1)), Some(id(2))]);
}

#[test]
fn past_the_head_nodes_horizon_a_resend_is_a_new_message_written_under_its_new_id() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(
        &mut session,
        &mut disk,
        &["mensaje 3-1 c1/7: first", "mensaje 3-2 c1/8: second"],
        t0,
    );
    commit(&mut session, &mut disk, t0);
    // The head node forgot the keys of ids up to 3-1: so does the node,
    // and the resend it is sent under a new id is written under it (it was
    // answered 'recibido 3-5 3-1', naming a copy the head node could not
    // account for).
    hand(
        &mut session,
        &mut disk,
        &[
            "horizon 3-1",
            "mensaje 3-5 c1/7: first",
            "mensaje 3-6 c1/8: second",
        ],
        t0,
    );
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [
            FromDataNode::Stored(Some(id(5))),
            FromDataNode::AlreadyHeld {
                id: id(6),
                held: id(2)
            }
        ],
        "c1/8, held under 3-2, is within the window"
    );
    assert_eq!(disk.written_ids(), [Some(id(1)), Some(id(2)), Some(id(5))]);
    // An older horizon changes nothing.
    hand(
        &mut session,
        &mut disk,
        &["horizon 3-0", "mensaje 3-7 c1/7: x"],
        t0,
    );
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::AlreadyHeld {
            id: id(7),
            held: id(5)
        }]
    );
}

#[test]
fn a_repair_copy_is_staged_with_its_record_time_and_keyed_as_any_message() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(
        &mut session,
        &mut disk,
        &["mensaje 3-1 c1/7 @1795413331793: first"],
        t0,
    );
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::Stored(Some(id(1)))]
    );
    assert_eq!(
        disk.written,
        [(
            Some(id(1)),
            Some("c1/7".parse().unwrap()),
            "first @1795413331793".to_owned()
        )]
    );
    hand(&mut session, &mut disk, &["mensaje 3-2 c1/7: again"], t0);
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::AlreadyHeld {
            id: id(2),
            held: id(1)
        }],
        "its key is held"
    );
}

#[test]
fn a_key_held_under_another_id_is_answered_with_that_id_and_not_written_again() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(&mut session, &mut disk, &["mensaje 3-1 c1/7: first"], t0);
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::Stored(Some(id(1)))]
    );
    let (_, handled) = hand(&mut session, &mut disk, &["mensaje 3-2 c1/7: resent"], t0);
    assert!(matches!(handled, Handled::Taken));
    assert_eq!(disk.staged(), 0, "nothing staged for the resend");
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::AlreadyHeld {
            id: id(2),
            held: id(1)
        }]
    );
    assert_eq!(disk.written_ids(), [Some(id(1))]);
}

#[test]
fn a_resend_under_the_same_id_is_acknowledged_without_a_second_write() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(&mut session, &mut disk, &["mensaje 3-1 c1/7: first"], t0);
    commit(&mut session, &mut disk, t0);
    hand(&mut session, &mut disk, &["mensaje 3-1 c1/7: first"], t0);
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::Stored(Some(id(1)))]
    );
    assert_eq!(disk.written_ids(), [Some(id(1))]);
}

#[test]
fn a_key_staged_earlier_in_the_batch_splits_it_and_is_decided_after_the_commit() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    // A bigger batch first, so a smaller one would linger if it could.
    let warm: Vec<String> = (10..20).map(|n| format!("mensaje 3-{n}: warm")).collect();
    let warm: Vec<&str> = warm.iter().map(String::as_str).collect();
    hand(&mut session, &mut disk, &warm, t0);
    commit(&mut session, &mut disk, t0);
    assert!(matches!(session.next(t0), Next::Read));

    let lines = [
        "mensaje 3-1 c1/1: once",
        "mensaje 3-2 c1/1: twice",
        "ping 4",
    ];
    let (taken, handled) = hand(&mut session, &mut disk, &lines, t0);
    assert_eq!(taken, 1, "the repeat waits; nothing after it is handed in");
    assert!(matches!(handled, Handled::AfterCommit), "{handled:?}");
    assert_eq!(
        session.when_to_commit(disk.staged(), t0),
        Commit::Now,
        "a batch cut short by a repeated key does not linger"
    );
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::Stored(Some(id(1)))]
    );
    assert!(matches!(session.next(t0), Next::HandBack));

    let (taken, handled) = hand(&mut session, &mut disk, &lines[1..], t0);
    assert_eq!(taken, 2);
    assert!(matches!(handled, Handled::Taken));
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [
            FromDataNode::AlreadyHeld {
                id: id(2),
                held: id(1)
            },
            FromDataNode::Pong(4)
        ]
    );
    assert!(matches!(session.next(t0), Next::Read), "split once only");
    assert_eq!(disk.written.len(), 11, "written once");
}

#[test]
fn a_withdraw_before_the_commit_drops_the_message_and_its_key() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(
        &mut session,
        &mut disk,
        &[
            "mensaje 3-1 c1/1: one",
            "mensaje 3-2 c1/2: two",
            "withdraw 3-1",
            // Written already or never sent: its recibido stands.
            "withdraw 3-9",
        ],
        t0,
    );
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [
            FromDataNode::Withdrawn(id(1)),
            FromDataNode::Stored(Some(id(2)))
        ]
    );
    assert_eq!(disk.written_ids(), [Some(id(2))]);
    drop(session);
    assert_eq!(
        node.keys().get(KeyRef {
            client: "c1",
            seq: 1
        }),
        None
    );
    assert_eq!(
        node.keys().get(KeyRef {
            client: "c1",
            seq: 2
        }),
        Some(id(2))
    );
}

#[test]
fn a_withdraw_after_the_commit_leaves_the_recibido_standing() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(&mut session, &mut disk, &["mensaje 3-1: one"], t0);
    commit(&mut session, &mut disk, t0);
    hand(&mut session, &mut disk, &["withdraw 3-1"], t0);
    assert_eq!(commit(&mut session, &mut disk, t0), []);
    assert_eq!(disk.written_ids(), [Some(id(1))]);
}

#[test]
fn a_scan_over_the_page_limit_is_refused_at_once_and_one_within_it_goes_after_the_commit() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let slots = ReadSlots::default();
    let mut session = node.session(config(), slots.clone(), head(), t0);
    let over = MAX_SCAN_RECORDS + 1;
    let lines = [
        format!("scan 1 start {over}"),
        "mensaje 3-1: one".to_owned(),
        format!("scan 2 3-0 {MAX_SCAN_RECORDS}"),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    hand(&mut session, &mut disk, &lines, t0);
    let answers = commit(&mut session, &mut disk, t0);
    assert!(
        matches!(&answers[0], FromDataNode::ReadError { req: 1, reason } if reason.contains("over the most one scan may ask")),
        "{answers:?}"
    );
    assert_eq!(answers[1], FromDataNode::Stored(Some(id(1))));
    let reads: Vec<ReadJob> = session.reads().collect();
    assert_eq!(
        reads,
        [ReadJob::Scan {
            req: 2,
            after: Some(id(0)),
            limit: MAX_SCAN_RECORDS
        }]
    );
    assert_eq!(slots.in_flight(), 1, "the admitted scan holds a place");
}

#[test]
fn reads_beyond_the_bound_are_answered_readerror_until_a_place_is_given_back() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let slots = ReadSlots::default();
    let mut session = node.session(config(), slots.clone(), head(), t0);
    let lines: Vec<String> = (0..=MAX_READS_IN_FLIGHT)
        .map(|req| format!("get {req} 3-1"))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    hand(&mut session, &mut disk, &lines, t0);
    let answers = commit(&mut session, &mut disk, t0);
    assert!(
        matches!(&answers[..], [FromDataNode::ReadError { req, .. }] if *req == MAX_READS_IN_FLIGHT as u64),
        "{answers:?}"
    );
    assert_eq!(session.reads().count(), MAX_READS_IN_FLIGHT);
    slots.release();
    hand(&mut session, &mut disk, &["get 99 3-1"], t0);
    assert_eq!(commit(&mut session, &mut disk, t0), []);
    assert_eq!(
        session.reads().collect::<Vec<_>>(),
        [ReadJob::Get { req: 99, id: id(1) }]
    );
}

#[test]
fn a_getkey_reads_the_id_the_key_is_held_under_or_answers_notfound() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(&mut session, &mut disk, &["mensaje 3-5 c1/1: one"], t0);
    commit(&mut session, &mut disk, t0);
    hand(
        &mut session,
        &mut disk,
        &["getkey 1 c1/1", "getkey 2 c1/2"],
        t0,
    );
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::NotFound {
            req: 2,
            removed: false
        }]
    );
    assert_eq!(
        session.reads().collect::<Vec<_>>(),
        [ReadJob::Get { req: 1, id: id(5) }]
    );
}

#[test]
fn a_ping_is_answered_after_the_writes_read_before_it_with_an_fsync_report_when_due() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(
        &mut session,
        &mut disk,
        &["mensaje 3-1: one", "ping 1", "mensaje 3-2: two"],
        t0,
    );
    assert!(disk.written.is_empty(), "nothing written before the commit");
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [
            FromDataNode::Stored(Some(id(1))),
            FromDataNode::Pong(1),
            FromDataNode::Stored(Some(id(2)))
        ]
    );
    let later = t0 + FSYNC_EVERY;
    hand(&mut session, &mut disk, &["ping 2"], later);
    let answers = commit(&mut session, &mut disk, later);
    assert_eq!(answers[0], FromDataNode::Pong(2));
    assert!(
        matches!(&answers[1..], [FromDataNode::Fsync(report)] if report.window_ms == FSYNC_EVERY.as_millis() as u64),
        "{answers:?}"
    );
}

#[test]
fn bye_ends_the_session_once_its_batch_is_answered() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    let warm: Vec<String> = (10..20).map(|n| format!("mensaje 3-{n}: warm")).collect();
    let warm: Vec<&str> = warm.iter().map(String::as_str).collect();
    hand(&mut session, &mut disk, &warm, t0);
    commit(&mut session, &mut disk, t0);
    session.next(t0);
    hand(&mut session, &mut disk, &["mensaje 3-1: last", "bye"], t0);
    assert_eq!(
        session.when_to_commit(disk.staged(), t0),
        Commit::Now,
        "the last batch does not linger"
    );
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::Stored(Some(id(1)))]
    );
    assert!(matches!(session.next(t0), Next::Drained));
}

#[test]
fn a_leaving_node_says_bye_after_its_batch_and_leaves_when_drained_closed_or_out_of_time() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(&mut session, &mut disk, &["mensaje 3-1: one"], t0);
    session.request_leave();
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::Stored(Some(id(1))), FromDataNode::Leaving]
    );
    assert!(matches!(session.next(t0), Next::Read));
    assert!(
        matches!(session.closed(), SessionEnd::Left),
        "closed while leaving"
    );
    hand(&mut session, &mut disk, &["mensaje 3-2: two"], t0);
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::Stored(Some(id(2)))],
        "bye once"
    );
    assert!(matches!(
        session.next(t0 + LEAVE_TIMEOUT),
        Next::End(SessionEnd::Left)
    ));
}

#[test]
fn a_connection_closed_when_not_leaving_is_a_reason_to_reconnect() {
    let mut node = node();
    let session = node.session(config(), ReadSlots::default(), head(), Instant::now());
    assert!(matches!(session.closed(), SessionEnd::Reconnect(why) if why == "connection closed"));
}

#[test]
fn a_head_node_silent_for_the_timeout_ends_the_session() {
    let mut node = node();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    assert!(session.silent(t0 + HEAD_TIMEOUT / 2).is_none());
    session.heard(t0 + HEAD_TIMEOUT / 2);
    assert!(session.silent(t0 + HEAD_TIMEOUT).is_none(), "heard since");
    assert!(matches!(
        session.silent(t0 + HEAD_TIMEOUT * 3 / 2),
        Some(SessionEnd::Reconnect(why)) if why.starts_with("no word from the head node")
    ));
}

#[test]
fn a_stale_incarnation_error_stops_the_node_and_other_errors_reconnect() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    let (_, handled) = hand(
        &mut session,
        &mut disk,
        &["ERROR stale incarnation 1 of dn1: incarnation 2 has registered since"],
        t0,
    );
    assert!(matches!(handled, Handled::End(SessionEnd::Superseded(_))));
    for line in ["ERROR something else", "challenge x y", "nonsense"] {
        let (_, handled) = hand(&mut session, &mut disk, &[line], t0);
        assert!(
            matches!(handled, Handled::End(SessionEnd::Reconnect(_))),
            "{line}: {handled:?}"
        );
    }
}

#[test]
fn an_abandoned_batch_is_never_written_and_its_keys_leave_the_index() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(&mut session, &mut disk, &["mensaje 3-1 c1/1: one"], t0);
    session.abandon(&mut disk);
    assert!(disk.staged.is_empty() && disk.written.is_empty());
    assert_eq!(
        node.keys().get(KeyRef {
            client: "c1",
            seq: 1
        }),
        None
    );
}

#[test]
fn the_report_lists_the_keys_held_the_last_members_and_ready() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(
        &mut session,
        &mut disk,
        &["mensaje 3-1 c1/1: one", "members dn1 dn2"],
        t0,
    );
    commit(&mut session, &mut disk, t0);
    drop(session);
    let mut lines = Vec::new();
    node.report(1_000, &[], |line| {
        lines.push(encoded(&line));
        Ok::<_, ()>(())
    })
    .unwrap();
    assert_eq!(lines, ["held c1 1:3-1", "peers dn1 dn2", "ready"]);
}

#[test]
fn the_report_says_how_many_damaged_records_the_node_found() {
    let metrics = Arc::new(NodeMetrics::default());
    let mut node = Node::new(
        KeyIndex::new(1000, Duration::from_secs(120)),
        Kept::default(),
        metrics.clone(),
    );
    let report = |node: &mut Node| {
        let mut lines = Vec::new();
        node.report(1_000, &[], |line| {
            lines.push(encoded(&line));
            Ok::<_, ()>(())
        })
        .unwrap();
        lines
    };
    assert_eq!(report(&mut node), ["ready"], "none: no line");
    metrics.found_damaged(2);
    assert_eq!(report(&mut node), ["damaged 2", "ready"]);
}

#[test]
fn what_retention_removed_is_in_the_report_and_after_the_next_pong() {
    let range = |first, last| IdRange::new(id(first), id(last)).unwrap();
    let mut node = node();
    let mut disk = Disk::default();
    let mut lines = Vec::new();
    node.report(1_000, &[range(1, 40)], |line| {
        lines.push(encoded(&line));
        Ok::<_, ()>(())
    })
    .unwrap();
    assert_eq!(lines, ["removed 3-1..3-40", "ready"]);
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    session.removed_by_retention([range(41, 60), range(61, 90)]);
    hand(&mut session, &mut disk, &["ping 1"], t0);
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [
            FromDataNode::Pong(1),
            FromDataNode::Removed(vec![range(41, 90)])
        ]
    );
    hand(&mut session, &mut disk, &["ping 2"], t0);
    assert_eq!(
        commit(&mut session, &mut disk, t0),
        [FromDataNode::Pong(2)],
        "told once"
    );
}

fn encoded(line: &FromDataNode) -> String {
    let mut buf = bytes::BytesMut::new();
    line.encode(&mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

#[test]
fn a_session_with_a_head_node_older_than_the_newest_accepted_stores_nothing() {
    // The driver refuses such a head node at its welcome; the decisions
    // refuse its messages too, whoever drives them.
    for (newest, stale) in [(fence(9, 2), fence(3, 1)), (fence(3, 2), fence(3, 1))] {
        let mut node = node_with(Kept {
            newest,
            members: None,
        });
        let mut disk = Disk::default();
        let t0 = Instant::now();
        let mut session = node.session(config(), ReadSlots::default(), stale, t0);
        let (taken, handled) = hand(
            &mut session,
            &mut disk,
            &["mensaje 3-1 c1/1: one", "mensaje 3-2: two"],
            t0,
        );
        let Handled::End(SessionEnd::StaleHead(refusal)) = handled else {
            panic!("{newest:?} then {stale:?}: {handled:?}");
        };
        assert_eq!(taken, 0, "its first message ends the session");
        assert!(refusal.starts_with("stale head node: "), "{refusal}");
        assert_eq!(
            protocol::datanode::newest_in_refusal(&refusal),
            Some(newest.epoch)
        );
        assert!(disk.staged.is_empty());
        assert_eq!(session.fence_to_record(), None);
        drop(session);
        assert_eq!(node.newest(), newest, "never goes back");
    }
}

#[test]
fn a_message_under_a_newer_epoch_of_the_same_head_node_raises_the_fence_before_its_write() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    assert_eq!(session.fence_to_record(), None, "recorded at the welcome");
    hand(&mut session, &mut disk, &["mensaje 3-1: one"], t0);
    assert_eq!(session.fence_to_record(), None);
    // The head node went above an epoch another node reported; a repair
    // copy, or a message given its id before, keeps its older epoch.
    hand(
        &mut session,
        &mut disk,
        &[
            "mensaje 5-1: two",
            "mensaje 3-2: three",
            "mensaje 2-9: copy",
        ],
        t0,
    );
    assert_eq!(session.fence_to_record(), Some(fence(5, 1)));
    assert_eq!(session.fence_to_record(), None, "once per raise");
    let answers = commit(&mut session, &mut disk, t0);
    assert_eq!(answers.len(), 4);
    assert_eq!(disk.written.len(), 4);
    drop(session);
    assert_eq!(node.newest(), fence(5, 1));
    // Its next session is with a head node at least as new.
    let session = node.session(config(), ReadSlots::default(), fence(4, 7), t0);
    drop(session);
    assert_eq!(node.newest(), fence(5, 1), "an older one does not lower it");
}

#[test]
fn a_new_member_set_is_recorded_once_and_reported_after_a_restart() {
    let mut node = node();
    let mut disk = Disk::default();
    let t0 = Instant::now();
    let mut session = node.session(config(), ReadSlots::default(), head(), t0);
    hand(&mut session, &mut disk, &["members dn1 dn2"], t0);
    assert_eq!(
        session.members_to_record(),
        Some(vec!["dn1".parse().unwrap(), "dn2".parse().unwrap()])
    );
    hand(&mut session, &mut disk, &["members dn1 dn2"], t0);
    assert_eq!(session.members_to_record(), None, "the same set again");
    drop(session);
    // What the driver recorded is what the next process starts with.
    let mut restarted = node_with(Kept {
        newest: head(),
        members: node.members().map(<[_]>::to_vec),
    });
    let mut lines = Vec::new();
    restarted
        .report(1_000, &[], |line| {
            lines.push(encoded(&line));
            Ok::<_, ()>(())
        })
        .unwrap();
    assert_eq!(lines, ["peers dn1 dn2", "ready"]);
}
