//! Each check against a history that keeps it and one that breaks it, the
//! way the defect it guards against would: the proof that a check can
//! fail.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::datanode::{Fence, HeadId};
use protocol::ids::MessageId;

use super::*;
use crate::disk::{FenceChange, Record, Removed};
use crate::heads::HeadRun;

const OLD: HeadRun = HeadRun { host: 0, start: 1 };
const NEW: HeadRun = HeadRun { host: 1, start: 1 };

fn id(epoch: u64, seq: u64) -> MessageId {
    MessageId { epoch, seq }
}

fn fence(epoch: u64, head: u64) -> Fence {
    Fence {
        epoch,
        head: HeadId(head),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn record(id: MessageId, text: &str, written_for: Fence, serial: u64) -> Record {
    Record {
        id: Some(id),
        key: None,
        text: text.to_owned(),
        stored_ms: 0,
        written_for,
        serial,
    }
}

fn answer(text: &str, holders: &[&str], id: MessageId, at: Duration, head: HeadRun) -> Answer {
    Answer {
        text: text.to_owned(),
        holders: holders.iter().map(|h| (*h).to_owned()).collect(),
        id,
        at,
        head,
    }
}

fn node(name: &str, records: Vec<Record>) -> NodeHistory {
    NodeHistory {
        name: name.to_owned(),
        records,
        ..NodeHistory::default()
    }
}

fn accepted(at: Duration, before_serial: u64, fence: Fence, head: HeadRun) -> FenceChange {
    FenceChange {
        at,
        before_serial,
        fence,
        head,
    }
}

/// Runs `check` and returns what it found.
fn problems(check: impl FnOnce(&mut Vec<String>)) -> Vec<String> {
    let mut problems = Vec::new();
    check(&mut problems);
    problems
}

#[test]
fn an_answer_naming_a_node_without_the_id_is_a_lost_ack() {
    let f = fence(2, 7);
    let nodes = [
        node("dn1", vec![record(id(2, 1), "c1-0", f, 1)]),
        node("dn2", vec![record(id(2, 9), "c1-0", f, 1)]),
    ];
    let good = answer("c1-0", &["dn1"], id(2, 1), secs(1), OLD);
    assert!(problems(|p| acks_are_durable(std::slice::from_ref(&good), &nodes, p)).is_empty());

    // The key's text is on dn2, but under another id: by key it would
    // pass; by id it is a phantom holder.
    let phantom = answer("c1-0", &["dn1", "dn2"], id(2, 1), secs(1), OLD);
    let found = problems(|p| acks_are_durable(&[phantom], &nodes, p));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("not durable there"), "{found:?}");

    let wrong_text = answer("c2-0", &["dn1"], id(2, 1), secs(1), OLD);
    let found = problems(|p| acks_are_durable(&[wrong_text], &nodes, p));
    assert!(found[0].contains("which stored"), "{found:?}");
}

#[test]
fn an_answer_whose_copy_retention_removed_is_kept() {
    let f = fence(2, 7);
    let mut dn1 = node("dn1", vec![]);
    dn1.removed.push(Removed {
        record: record(id(2, 1), "c1-0", f, 1),
        from_serial: 5,
    });
    let answered = answer("c1-0", &["dn1"], id(2, 1), secs(1), OLD);
    assert!(problems(|p| acks_are_durable(&[answered], &[dn1], p)).is_empty());
}

#[test]
fn a_key_under_two_ids_is_found() {
    let f = fence(2, 7);
    let keyed = |n: MessageId, serial| {
        let mut r = record(n, "c3-4", f, serial);
        r.key = Some("c3/5".parse().expect("a key"));
        r
    };
    let one = [
        node("dn1", vec![keyed(id(2, 4), 1)]),
        node("dn2", vec![keyed(id(2, 4), 1)]),
    ];
    assert!(problems(|p| one_id_per_key(&one, p)).is_empty());
    let two = [
        node("dn1", vec![keyed(id(2, 4), 1)]),
        node("dn2", vec![keyed(id(3, 1), 1)]),
    ];
    let found = problems(|p| one_id_per_key(&two, p));
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn a_write_for_an_older_head_after_accepting_a_newer_one_is_found() {
    let (old, new) = (fence(2, 7), fence(3, 9));
    // dn1 wrote serials 1 and 2 for the old head node, accepted the new
    // one before serial 3, then wrote serial 3 for the new one: fine.
    let mut dn1 = node(
        "dn1",
        vec![
            record(id(2, 1), "c1-0", old, 1),
            record(id(2, 2), "c1-1", old, 2),
            record(id(3, 1), "c1-2", new, 3),
        ],
    );
    dn1.fences = vec![
        accepted(secs(0), 1, old, OLD),
        accepted(secs(5), 3, new, NEW),
    ];
    assert!(problems(|p| no_writes_for_older_heads(&[dn1.clone()], &[], p)).is_empty());

    // What a data node that fences only at registration does: the old
    // head node's session goes on storing after the node took the new one.
    dn1.records.push(record(id(2, 3), "c1-3", old, 4));
    let named = answer("c1-3", &["dn1", "dn2"], id(2, 3), secs(6), OLD);
    let found = problems(|p| no_writes_for_older_heads(&[dn1.clone()], &[named], p));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("an answer names it"), "{found:?}");

    // Same epoch, another head node: two head nodes never share one.
    let twin = fence(3, 11);
    dn1.records.pop();
    dn1.records.push(record(id(3, 2), "c1-3", twin, 4));
    assert_eq!(
        problems(|p| no_writes_for_older_heads(&[dn1], &[], p)).len(),
        1
    );
}

#[test]
fn an_old_head_answering_past_the_fencing_time_is_found() {
    let (old, new) = (fence(2, 7), fence(3, 9));
    let started: BTreeMap<HeadRun, Duration> = [(OLD, secs(0)), (NEW, secs(10))].into();
    let fencing = secs(6);
    let moved = |name: &str, at: Duration| {
        let mut n = node(name, vec![]);
        n.fences = vec![accepted(secs(0), 1, old, OLD), accepted(at, 1, new, NEW)];
        n
    };
    let stayed = |name: &str| {
        let mut n = node(name, vec![]);
        n.fences = vec![accepted(secs(0), 1, old, OLD)];
        n
    };
    // dn2 and dn3 (a majority) took the new head node at 12 s and 13 s.
    let nodes = [
        stayed("dn1"),
        moved("dn2", secs(12)),
        moved("dn3", secs(13)),
    ];
    let within = answer("c1-5", &["dn1", "dn2"], id(2, 5), secs(18), OLD);
    let by_new = answer("c1-6", &["dn2", "dn3"], id(3, 1), secs(30), NEW);
    let none =
        problems(|p| old_heads_stop_answering(&[within, by_new], &nodes, &started, fencing, p));
    assert!(none.is_empty(), "{none:?}");

    // What a head node that keeps acknowledging without a majority does.
    let late = answer("c1-7", &["dn1"], id(2, 7), secs(20), OLD);
    let found = problems(|p| old_heads_stop_answering(&[late], &nodes, &started, fencing, p));
    assert_eq!(found.len(), 1, "{found:?}");

    // One node away is no majority of three.
    let one_away = [stayed("dn1"), stayed("dn2"), moved("dn3", secs(12))];
    let later = answer("c1-8", &["dn1", "dn2"], id(2, 8), secs(60), OLD);
    assert!(
        problems(|p| old_heads_stop_answering(
            std::slice::from_ref(&later),
            &one_away,
            &started,
            fencing,
            p
        ))
        .is_empty()
    );

    // A node that went back to the old head node (which went above the
    // new epoch) is not away any more.
    let mut back = moved("dn2", secs(12));
    back.fences.push(accepted(secs(40), 1, fence(4, 7), OLD));
    let nodes = [stayed("dn1"), back, moved("dn3", secs(13))];
    assert!(
        problems(|p| old_heads_stop_answering(&[later], &nodes, &started, fencing, p)).is_empty()
    );
}

#[test]
fn a_copy_restored_after_retention_removed_it_is_found() {
    let f = fence(2, 7);
    let mut dn1 = node("dn1", vec![record(id(2, 9), "c1-8", f, 9)]);
    dn1.removed.push(Removed {
        record: record(id(2, 1), "c1-0", f, 1),
        from_serial: 8,
    });
    assert!(problems(|p| retention_is_not_undone(&[dn1.clone()], p)).is_empty());
    // A repair that took `notfound removed` for a missing copy.
    dn1.records.push(record(id(2, 1), "c1-0", f, 10));
    let found = problems(|p| retention_is_not_undone(&[dn1], p));
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn a_tail_that_skips_or_repeats_is_found() {
    let acked = [
        answer("c1-0", &["dn1"], id(2, 1), secs(1), OLD),
        answer("c1-1", &["dn2"], id(2, 2), secs(1), OLD),
    ];
    let whole = [id(2, 1), id(2, 2), id(3, 1)];
    assert!(problems(|p| tails_print_every_ack_once("r1", &whole, &acked, p)).is_empty());

    // Across a head-node restart, a reader served before recovery moved
    // its cursor past an id only an absent node held.
    let skipped = [id(2, 1), id(3, 1)];
    let found = problems(|p| tails_print_every_ack_once("r1", &skipped, &acked, p));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("never printed 2-2"), "{found:?}");

    let twice = [id(2, 1), id(2, 2), id(2, 2)];
    assert_eq!(
        problems(|p| tails_print_every_ack_once("r1", &twice, &acked, p)).len(),
        1
    );
    let backwards = [id(2, 2), id(2, 1)];
    assert_eq!(
        problems(|p| tails_print_every_ack_once("r1", &backwards, &acked, p)).len(),
        1
    );
}

#[test]
fn many_problems_of_one_kind_are_summed_up() {
    let nodes = [node("dn1", vec![])];
    let answers: Vec<Answer> = (1..=20)
        .map(|n| answer("c1-0", &["dn1"], id(2, n), secs(1), OLD))
        .collect();
    let found = problems(|p| acks_are_durable(&answers, &nodes, p));
    assert_eq!(found.len(), MAX_REPORTED + 1, "{found:?}");
    assert!(found[MAX_REPORTED].contains("12 more"), "{found:?}");
}
