use super::*;

const SECOND: Duration = Duration::from_secs(1);
const REMOVE_AFTER: Duration = Duration::from_secs(30);

fn id(name: &str) -> NodeId {
    name.parse().unwrap()
}

fn ids(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|n| id(n)).collect()
}

/// A set past recovery with these live members.
fn live(names: &[&str]) -> MemberSet {
    let mut set = MemberSet::new(REMOVE_AFTER);
    for name in names {
        set.live(&id(name));
    }
    set.learned(Instant::now());
    set
}

#[test]
fn a_majority_is_more_than_half_of_the_members() {
    for (live, members, holds) in [
        (0, 0, false),
        (1, 1, true),
        (1, 2, false),
        (2, 2, true),
        (2, 3, true),
        (1, 3, false),
        (2, 4, false),
        (3, 4, true),
        (3, 5, true),
    ] {
        let quorum = Quorum { live, members };
        assert_eq!(quorum.holds(), holds, "{quorum}");
    }
    assert_eq!(
        Quorum {
            live: 2,
            members: 4
        }
        .to_string(),
        "2 of 4 members live, 3 needed"
    );
}

#[test]
fn a_node_joins_when_it_registers_and_an_eviction_keeps_its_vote() {
    let t0 = Instant::now();
    let mut set = live(&["dn1", "dn2", "dn3"]);
    let version = set.version();
    set.absent(&id("dn2"), t0);
    set.absent(&id("dn3"), t0);
    assert_eq!(set.names(), ids(&["dn1", "dn2", "dn3"]));
    assert_eq!(set.version(), version, "who is live is not the set");
    assert_eq!(
        set.quorum(0),
        Quorum {
            live: 1,
            members: 3
        }
    );
    assert!(!set.quorum(0).holds());
    set.live(&id("dn2"));
    assert!(set.quorum(0).holds());
}

#[test]
fn a_graceful_leave_takes_the_node_out_of_the_set() {
    let mut set = live(&["dn1", "dn2", "dn3"]);
    let version = set.version();
    set.left(&id("dn3"));
    assert_eq!(set.names(), ids(&["dn1", "dn2"]));
    assert_ne!(set.version(), version);
    assert_eq!(
        set.quorum(0),
        Quorum {
            live: 2,
            members: 2
        }
    );
}

#[test]
fn an_absent_member_is_removed_after_the_wait_only_while_a_majority_is_live() {
    let t0 = Instant::now();
    let mut set = live(&["dn1", "dn2", "dn3"]);
    set.absent(&id("dn3"), t0);
    assert_eq!(set.remove_due(t0 + REMOVE_AFTER - SECOND, 0), None);
    assert_eq!(
        set.remove_due(t0 + REMOVE_AFTER, 0),
        Some((id("dn3"), REMOVE_AFTER))
    );
    assert_eq!(set.names(), ids(&["dn1", "dn2"]));

    // Without a majority, nobody is removed, however long they are gone.
    let mut set = live(&["dn1", "dn2", "dn3"]);
    set.absent(&id("dn2"), t0);
    set.absent(&id("dn3"), t0);
    assert_eq!(set.remove_due(t0 + 100 * REMOVE_AFTER, 0), None);
    assert_eq!(set.names(), ids(&["dn1", "dn2", "dn3"]));
}

#[test]
fn removals_go_one_at_a_time_the_longest_absent_first() {
    let t0 = Instant::now();
    let mut set = live(&["dn1", "dn2", "dn3", "dn4", "dn5"]);
    set.absent(&id("dn5"), t0);
    set.absent(&id("dn4"), t0 + SECOND);
    let later = t0 + 2 * REMOVE_AFTER;
    assert_eq!(set.remove_due(later, 0).map(|(n, _)| n), Some(id("dn5")));
    assert_eq!(set.names().len(), 4, "one per call");
    assert_eq!(set.remove_due(later, 0).map(|(n, _)| n), Some(id("dn4")));
    assert_eq!(set.remove_due(later, 0), None);
    assert_eq!(set.names(), ids(&["dn1", "dn2", "dn3"]));
}

#[test]
fn a_member_that_comes_back_before_the_wait_is_not_removed() {
    let t0 = Instant::now();
    let mut set = live(&["dn1", "dn2", "dn3"]);
    set.absent(&id("dn3"), t0);
    set.live(&id("dn3"));
    set.absent(&id("dn3"), t0 + REMOVE_AFTER);
    assert_eq!(set.remove_due(t0 + REMOVE_AFTER + SECOND, 0), None);
}

#[test]
fn reported_sets_join_until_recovery_is_done() {
    let t0 = Instant::now();
    let mut set = MemberSet::new(REMOVE_AFTER);
    set.live(&id("dn2"));
    set.reported(&ids(&["dn1", "dn2", "dn3"]), t0);
    assert_eq!(set.names(), ids(&["dn1", "dn2", "dn3"]));
    assert_eq!(
        set.quorum(0),
        Quorum {
            live: 1,
            members: 3
        }
    );
    // Nobody is removed while the head node is still learning the set.
    assert_eq!(set.remove_due(t0 + 10 * REMOVE_AFTER, 0), None);
    set.learned(t0);
    // A late node's old set changes nothing.
    set.reported(&ids(&["dn9"]), t0);
    assert!(!set.contains(&id("dn9")));
}

#[test]
fn original_system_nodes_count_while_connected() {
    let t0 = Instant::now();
    let mut set = live(&["dn1", "dn2"]);
    set.absent(&id("dn2"), t0);
    assert!(!set.quorum(0).holds());
    assert_eq!(
        set.quorum(1),
        Quorum {
            live: 2,
            members: 3
        }
    );
    assert!(set.quorum(1).holds());
    let only_legacy = MemberSet::new(REMOVE_AFTER);
    assert!(only_legacy.quorum(2).holds());
}

#[test]
fn the_set_holds_at_most_as_many_members_as_one_members_line_names() {
    let t0 = Instant::now();
    let mut set = MemberSet::new(REMOVE_AFTER);
    let names: Vec<NodeId> = (0..MAX_MEMBERS + 5)
        .map(|i| id(&format!("dn{i}")))
        .collect();
    set.reported(&names[..MAX_MEMBERS - 1], t0);
    set.live(&names[MAX_MEMBERS + 1]);
    set.live(&names[MAX_MEMBERS + 2]);
    assert_eq!(set.names().len(), MAX_MEMBERS);
    assert!(
        !set.contains(&names[MAX_MEMBERS + 2]),
        "served, but no member"
    );
    set.reported(&names, t0);
    assert_eq!(set.names().len(), MAX_MEMBERS);
}

#[test]
fn a_member_absent_when_recovery_ends_is_removed_only_the_wait_after_it() {
    // dn3 was named by a report at t0 and never came; recovery ends later.
    let t0 = Instant::now();
    let mut set = MemberSet::new(REMOVE_AFTER);
    set.live(&id("dn1"));
    set.live(&id("dn2"));
    set.reported(&ids(&["dn1", "dn2", "dn3"]), t0);
    let recovered = t0 + REMOVE_AFTER + SECOND;
    set.learned(recovered);
    assert_eq!(
        set.remove_due(recovered, 0),
        None,
        "absent from the end of recovery"
    );
    assert_eq!(set.remove_due(recovered + REMOVE_AFTER - SECOND, 0), None);
    assert_eq!(
        set.remove_due(recovered + REMOVE_AFTER, 0),
        Some((id("dn3"), REMOVE_AFTER))
    );
}
