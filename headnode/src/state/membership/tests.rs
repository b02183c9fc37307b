use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn member(node: &str, incarnation: u64, conn: ConnId) -> MemberInfo {
    MemberInfo {
        node: node.parse().unwrap(),
        incarnation,
        conn,
        addr: "10.0.0.1".parse().unwrap(),
        legacy: false,
        zone: None,
        store: None,
    }
}

fn legacy(node: &str, incarnation: u64, conn: ConnId) -> MemberInfo {
    MemberInfo {
        legacy: true,
        zone: None,
        ..member(node, incarnation, conn)
    }
}

/// How long an absent member stays in the set here.
const REMOVE_AFTER: Duration = Duration::from_secs(30);

fn cluster() -> Membership {
    Membership::new(
        DetectorConfig {
            ping_misses: 3,
            suspect_after: 2 * SECOND,
            hung_grace: 3 * SECOND,
        },
        REMOVE_AFTER,
    )
}

const RTT: ProbeOutcome = ProbeOutcome::Reply(Duration::from_micros(80));
const LOST: ProbeOutcome = ProbeOutcome::NoReply;

fn missed(events: &[Event]) -> Vec<(String, u32, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Missed {
                member,
                misses,
                heartbeat_answers,
            } => Some((member.node.to_string(), *misses, *heartbeat_answers)),
            _ => None,
        })
        .collect()
}

fn routable(m: &Membership) -> Vec<String> {
    m.routable().map(|i| i.node.to_string()).collect()
}

fn evicted(events: &[Event]) -> Vec<(String, EvictReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Evicted { member, reason } => Some((member.node.to_string(), reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn joins_and_rejoins_are_told_apart() {
    let t0 = Instant::now();
    let mut m = cluster();
    let events = m.register(member("dn1", 1, 10), t0).unwrap();
    assert_eq!(
        events,
        vec![Event::Joined {
            member: member("dn1", 1, 10),
            rejoined: false
        }]
    );
    m.connection_lost(10, "reset", t0);
    let events = m.register(member("dn1", 2, 11), t0).unwrap();
    assert_eq!(
        events,
        vec![Event::Joined {
            member: member("dn1", 2, 11),
            rejoined: true
        }]
    );
}

#[test]
fn second_live_process_with_the_same_id_is_refused() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    let refusal = m.register(member("dn1", 2, 11), t0).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "node id dn1 is already in use by a live data node"
    );
    assert_eq!(routable(&m), ["dn1"]);
    assert!(m.is_member(10) && !m.is_member(11));
}

#[test]
fn older_incarnation_is_refused_whatever_became_of_the_newer_one() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 5, 10), t0).unwrap();
    let stale = "stale incarnation 4 of dn1: incarnation 5 has registered since";
    // The newer one is alive, ...
    let refusal = m.register(member("dn1", 4, 11), t0).unwrap_err();
    assert_eq!(refusal.to_string(), stale);
    // ... suspect, ...
    m.tick(t0 + 2 * SECOND);
    let refusal = m
        .register(member("dn1", 4, 12), t0 + 2 * SECOND)
        .unwrap_err();
    assert_eq!(refusal.to_string(), stale);
    assert!(m.is_member(10), "a refusal evicts no one");
    // ... or already evicted.
    m.connection_lost(10, "reset", t0);
    let refusal = m
        .register(member("dn1", 4, 13), t0 + 3 * SECOND)
        .unwrap_err();
    assert_eq!(
        refusal,
        Refusal::StaleIncarnation {
            node: "dn1".parse().unwrap(),
            incarnation: 4,
            newer: 5
        }
    );
    assert!(routable(&m).is_empty());
    // The newer process itself comes back, on a new connection.
    let events = m.register(member("dn1", 5, 14), t0 + 4 * SECOND).unwrap();
    assert!(matches!(
        &events[..],
        [Event::Joined { rejoined: true, .. }]
    ));
}

#[test]
fn incarnation_order_is_per_node_id() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 5, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    assert_eq!(routable(&m), ["dn1", "dn2"]);
}

#[test]
fn same_process_on_a_new_connection_replaces_the_stale_one() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    let events = m.register(member("dn1", 1, 11), t0).unwrap();
    assert_eq!(
        evicted(&events),
        [(
            "dn1".to_string(),
            EvictReason::Replaced { by_incarnation: 1 }
        )]
    );
    assert!(
        !events.contains(&Event::NoneLeft),
        "a replacement is not an empty cluster"
    );
    assert!(m.is_member(11) && !m.is_member(10));
    // Late news about the old connection changes nothing.
    assert!(m.connection_lost(10, "reset", t0).is_empty());
    assert!(m.round_result(&[(10, LOST)], t0).is_empty());
    assert_eq!(routable(&m), ["dn1"]);
}

#[test]
fn restarted_node_replaces_its_silent_predecessor() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.tick(t0 + 2 * SECOND);
    let events = m.register(member("dn1", 2, 11), t0 + 2 * SECOND).unwrap();
    assert_eq!(
        evicted(&events),
        [(
            "dn1".to_string(),
            EvictReason::Replaced { by_incarnation: 2 }
        )]
    );
    assert_eq!(routable(&m), ["dn1"]);
}

#[test]
fn one_lost_echo_evicts_no_one_whose_heartbeat_answers() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    let events = m.round_result(&[(10, RTT), (20, LOST)], t0 + SECOND);
    assert!(matches!(&events[0], Event::Available { member, .. } if member.conn == 10));
    assert_eq!(missed(&events), [("dn2".to_string(), 1, true)]);
    assert_eq!(routable(&m), ["dn1", "dn2"]);
}

#[test]
fn ping_misses_rounds_in_a_row_evict_as_unreachable() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    let round = |m: &mut Membership, s: u32, dn2: ProbeOutcome| {
        let now = t0 + s * SECOND;
        m.heartbeat(10, now);
        m.heartbeat(20, now);
        m.round_result(&[(10, RTT), (20, dn2)], now)
    };
    assert_eq!(missed(&round(&mut m, 1, LOST)), [("dn2".into(), 1, true)]);
    assert_eq!(missed(&round(&mut m, 2, LOST)), [("dn2".into(), 2, true)]);
    assert!(
        missed(&round(&mut m, 3, RTT)).is_empty(),
        "a reply resets the count"
    );
    assert_eq!(missed(&round(&mut m, 4, LOST)), [("dn2".into(), 1, true)]);
    assert_eq!(missed(&round(&mut m, 5, LOST)), [("dn2".into(), 2, true)]);
    assert_eq!(
        evicted(&round(&mut m, 6, LOST)),
        [("dn2".to_string(), EvictReason::Unreachable)]
    );
    assert_eq!(routable(&m), ["dn1"]);
}

#[test]
fn one_allowed_miss_evicts_at_the_first_missed_round() {
    let t0 = Instant::now();
    let mut m = Membership::new(
        DetectorConfig {
            ping_misses: 1,
            ..DetectorConfig::default()
        },
        REMOVE_AFTER,
    );
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    let events = m.round_result(&[(10, RTT), (20, LOST)], t0);
    assert_eq!(
        evicted(&events),
        [("dn2".to_string(), EvictReason::Unreachable)]
    );
}

#[test]
fn missed_round_evicts_a_suspect_member_at_once() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    m.heartbeat(20, t0 + 2 * SECOND);
    assert!(matches!(
        m.tick(t0 + 2 * SECOND)[..],
        [Event::Suspected { .. }]
    ));
    let events = m.round_result(&[(10, LOST), (20, RTT)], t0 + 2 * SECOND);
    assert_eq!(
        evicted(&events),
        [("dn1".to_string(), EvictReason::Unreachable)],
        "heartbeat and ICMP agree"
    );
}

#[test]
fn missed_round_evicts_a_member_silent_past_suspect_after_before_any_tick() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    m.heartbeat(20, t0 + 2 * SECOND);
    let events = m.round_result(&[(10, LOST), (20, RTT)], t0 + 2 * SECOND);
    assert_eq!(
        evicted(&events),
        [("dn1".to_string(), EvictReason::Unreachable)]
    );
}

#[test]
fn legacy_member_is_evicted_after_ping_misses_rounds() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(legacy("dn-10.0.0.9-4000", 7, 30), t0).unwrap();
    // Alone and without a heartbeat: nothing says ICMP rather than the host failed.
    let round = [(30, LOST)];
    assert_eq!(
        missed(&m.round_result(&round, t0 + SECOND)),
        [("dn-10.0.0.9-4000".into(), 1, false)]
    );
    assert_eq!(
        missed(&m.round_result(&round, t0 + 2 * SECOND)),
        [("dn-10.0.0.9-4000".into(), 2, false)]
    );
    let events = m.round_result(&round, t0 + 3 * SECOND);
    assert_eq!(
        evicted(&events),
        [("dn-10.0.0.9-4000".to_string(), EvictReason::Unreachable)]
    );
    assert_eq!(events.last(), Some(&Event::NoneLeft));
}

#[test]
fn icmp_unavailable_never_evicts() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(legacy("dn-10.0.0.9-4000", 7, 30), t0).unwrap();
    for s in 0..10 {
        let round = [
            (10, ProbeOutcome::Unavailable),
            (30, ProbeOutcome::Unavailable),
        ];
        assert!(m.round_result(&round, t0 + s * SECOND).is_empty());
    }
    assert_eq!(routable(&m), ["dn-10.0.0.9-4000", "dn1"]);
}

#[test]
fn results_about_former_connections_are_ignored() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.connection_lost(10, "reset", t0);
    m.register(member("dn1", 1, 11), t0).unwrap();
    for s in 1..=5 {
        assert!(m.round_result(&[(10, LOST)], t0 + s * SECOND).is_empty());
    }
    assert_eq!(routable(&m), ["dn1"]);
}

/// A round in which `conns` all miss, at `t0 + s` seconds, after each
/// member answers its heartbeat.
fn silent_round(m: &mut Membership, t0: Instant, s: u32, conns: &[ConnId]) -> Vec<Event> {
    let now = t0 + s * SECOND;
    for conn in conns {
        m.heartbeat(*conn, now);
    }
    let results: Vec<_> = conns.iter().map(|conn| (*conn, LOST)).collect();
    m.round_result(&results, now)
}

#[test]
fn no_host_answering_while_every_heartbeat_does_evicts_no_one_and_is_told_once() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    assert!(silent_round(&mut m, t0, 1, &[10, 20]).is_empty());
    assert!(silent_round(&mut m, t0, 2, &[10, 20]).is_empty());
    assert_eq!(
        silent_round(&mut m, t0, 3, &[10, 20]),
        [Event::IcmpUnanswered { rounds: 3 }]
    );
    for s in 4..=20 {
        assert!(
            silent_round(&mut m, t0, s, &[10, 20]).is_empty(),
            "round {s}"
        );
    }
    assert_eq!(routable(&m), ["dn1", "dn2"]);

    // The first reply ends it, and the count starts from zero.
    m.heartbeat(10, t0 + 21 * SECOND);
    m.heartbeat(20, t0 + 21 * SECOND);
    let events = m.round_result(&[(10, RTT), (20, LOST)], t0 + 21 * SECOND);
    assert_eq!(events[0], Event::IcmpAnswering);
    assert_eq!(missed(&events), [("dn2".into(), 1, true)]);
    assert!(matches!(&events[1], Event::Available { member, .. } if member.conn == 10));
    assert!(
        !m.round_result(&[(10, RTT)], t0 + 21 * SECOND)
            .contains(&Event::IcmpAnswering),
        "told once"
    );
}

#[test]
fn a_lone_member_whose_icmp_is_filtered_stays() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    let events: Vec<Event> = (1..=10)
        .flat_map(|s| silent_round(&mut m, t0, s, &[10]))
        .collect();
    assert_eq!(events, [Event::IcmpUnanswered { rounds: 3 }]);
    assert_eq!(routable(&m), ["dn1"]);
}

#[test]
fn rounds_without_replies_must_be_in_a_row_to_count_as_an_icmp_outage() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    for s in [1, 3, 5, 7] {
        assert!(silent_round(&mut m, t0, s, &[10, 20]).is_empty());
        assert!(silent_round(&mut m, t0, s + 1, &[10, 20]).is_empty());
        m.round_result(&[(10, RTT), (20, RTT)], t0 + (s + 1) * SECOND);
    }
    assert_eq!(routable(&m), ["dn1", "dn2"]);
}

#[test]
fn no_host_answering_is_not_an_icmp_outage_while_a_member_is_suspect() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    m.heartbeat(20, t0 + 2 * SECOND);
    m.tick(t0 + 2 * SECOND);
    let events = m.round_result(&[(10, LOST), (20, LOST)], t0 + 2 * SECOND);
    assert_eq!(
        evicted(&events),
        [("dn1".to_string(), EvictReason::Unreachable)]
    );
    assert_eq!(missed(&events), [("dn2".into(), 1, true)]);
}

#[test]
fn with_a_legacy_member_no_host_answering_counts_against_everyone() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(legacy("dn-10.0.0.9-4000", 7, 30), t0).unwrap();
    let mut events = Vec::new();
    for s in 1..=3 {
        m.heartbeat(10, t0 + s * SECOND);
        events.extend(m.round_result(&[(10, LOST), (30, LOST)], t0 + s * SECOND));
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::IcmpUnanswered { .. }))
    );
    assert_eq!(evicted(&events).len(), 2, "{events:?}");
}

#[test]
fn during_an_icmp_outage_icmp_alone_evicts_no_one() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    for s in 1..=3 {
        silent_round(&mut m, t0, s, &[10]);
    }
    // An original node joins meanwhile: it has no heartbeat to vouch for
    // it, but ICMP cannot judge it either.
    m.register(legacy("dn-10.0.0.9-4000", 7, 30), t0 + 3 * SECOND)
        .unwrap();
    for s in 4..=10 {
        m.heartbeat(10, t0 + s * SECOND);
        assert!(
            m.round_result(&[(10, LOST), (30, LOST)], t0 + s * SECOND)
                .is_empty()
        );
    }
    assert_eq!(routable(&m), ["dn-10.0.0.9-4000", "dn1"]);
}

#[test]
fn during_an_icmp_outage_a_silent_member_is_evicted_as_silent_not_unreachable() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    for s in 1..=3 {
        silent_round(&mut m, t0, s, &[10]);
    }
    // dn1 last answered at 3 s.
    assert!(matches!(
        m.tick(t0 + 5 * SECOND)[..],
        [Event::Suspected { .. }]
    ));
    assert!(
        m.round_result(&[(10, LOST)], t0 + 5 * SECOND).is_empty(),
        "no verdict from ICMP"
    );
    assert!(matches!(
        m.tick(t0 + 8 * SECOND)[..],
        [Event::ProbeNow { .. }]
    ));
    let events = m.confirm_result(10, LOST, t0 + 8 * SECOND);
    assert_eq!(
        evicted(&events),
        [(
            "dn1".to_string(),
            EvictReason::Silent {
                silent_for: 5 * SECOND
            }
        )]
    );
}

#[test]
fn silent_member_is_suspect_then_confirmed_hung_when_ping_answers() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    // dn2 keeps answering; dn1 goes quiet at t0.
    for s in 1..=4 {
        m.heartbeat(20, t0 + s * SECOND);
    }
    assert!(m.tick(t0 + SECOND).is_empty());
    let events = m.tick(t0 + 2 * SECOND);
    assert!(
        matches!(&events[..], [Event::Suspected { member, .. }] if member.node.as_str() == "dn1")
    );
    assert_eq!(routable(&m), ["dn2"], "a suspect gets no new messages");
    assert!(m.tick(t0 + 4 * SECOND).is_empty(), "still within the grace");
    let events = m.tick(t0 + 5 * SECOND);
    assert!(matches!(&events[..], [Event::ProbeNow { member }] if member.conn == 10));
    let events = m.confirm_result(
        10,
        ProbeOutcome::Reply(Duration::from_micros(50)),
        t0 + 5 * SECOND,
    );
    assert_eq!(
        evicted(&events),
        [(
            "dn1".to_string(),
            EvictReason::Hung {
                silent_for: 5 * SECOND
            }
        )]
    );
    assert_eq!(
        events[0].clone(),
        Event::Evicted {
            member: member("dn1", 1, 10),
            reason: EvictReason::Hung {
                silent_for: 5 * SECOND
            }
        }
    );
}

#[test]
fn silent_member_whose_host_is_gone_is_unreachable() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.tick(t0 + 2 * SECOND);
    m.tick(t0 + 5 * SECOND);
    let events = m.confirm_result(10, ProbeOutcome::NoReply, t0 + 5 * SECOND);
    assert_eq!(
        evicted(&events),
        [("dn1".to_string(), EvictReason::Unreachable)]
    );
}

#[test]
fn silent_member_without_icmp_is_evicted_as_silent() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.tick(t0 + 2 * SECOND);
    m.tick(t0 + 5 * SECOND);
    let events = m.confirm_result(10, ProbeOutcome::Unavailable, t0 + 5 * SECOND);
    assert_eq!(
        evicted(&events),
        [(
            "dn1".to_string(),
            EvictReason::Silent {
                silent_for: 5 * SECOND
            }
        )]
    );
}

#[test]
fn stall_shorter_than_the_grace_evicts_no_one() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    // Silent for 2 s (suspect), then answers at 2.5 s.
    let suspected = m.tick(t0 + 2 * SECOND);
    assert!(matches!(suspected[..], [Event::Suspected { .. }]));
    let recovered = m.heartbeat(10, t0 + 2 * SECOND + SECOND / 2);
    assert!(matches!(recovered[..], [Event::Recovered { .. }]));
    assert_eq!(routable(&m), ["dn1"]);
    for s in 3..=10 {
        m.heartbeat(10, t0 + s * SECOND);
        assert!(m.tick(t0 + s * SECOND).is_empty());
    }
}

#[test]
fn heartbeat_during_the_confirming_probe_cancels_the_eviction() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.tick(t0 + 2 * SECOND);
    m.tick(t0 + 5 * SECOND);
    m.heartbeat(10, t0 + 5 * SECOND);
    assert!(
        m.confirm_result(10, ProbeOutcome::Reply(SECOND), t0 + 5 * SECOND)
            .is_empty()
    );
    assert_eq!(routable(&m), ["dn1"]);
}

#[test]
fn legacy_members_are_not_judged_by_the_application_heartbeat() {
    let t0 = Instant::now();
    let mut m = cluster();
    let mut legacy = member("legacy-10.0.0.9-4000", 7, 30);
    legacy.legacy = true;
    m.register(legacy, t0).unwrap();
    assert!(m.tick(t0 + 60 * SECOND).is_empty());
    assert_eq!(
        evicted(&m.ack_timeout(30, t0)),
        [("legacy-10.0.0.9-4000".to_string(), EvictReason::AckTimeout)]
    );
}

#[test]
fn leaving_member_is_drained_then_removed() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    assert!(matches!(m.leaving(10)[..], [Event::Leaving { .. }]));
    assert_eq!(routable(&m), ["dn2"]);
    assert_eq!(
        evicted(&m.left(10, t0)),
        [("dn1".to_string(), EvictReason::Left)]
    );
}

#[test]
fn eviction_reasons_read_well_in_logs() {
    assert_eq!(EvictReason::Unreachable.to_string(), "no disponible");
    assert_eq!(
        EvictReason::Hung {
            silent_for: Duration::from_millis(5100)
        }
        .to_string(),
        "hung (no heartbeat reply for 5.1s while its host still answers ping)"
    );
    assert_eq!(
        EvictReason::ConnectionLost("reset by peer".into()).to_string(),
        "connection lost (reset by peer)"
    );
}

/// Registers `n` made-up ids, each dropping its connection at once.
fn churn(m: &mut Membership, t0: Instant, prefix: &str, n: usize, first_conn: ConnId) {
    for i in 0..n {
        let conn = first_conn + i as ConnId;
        m.register(member(&format!("{prefix}{i}"), 1, conn), t0)
            .unwrap();
        m.connection_lost(conn, "reset", t0);
    }
}

#[test]
fn remembered_ids_are_bounded_under_registration_churn() {
    let t0 = Instant::now();
    let mut m = cluster();
    churn(&mut m, t0, "made-up-", REMEMBERED_IDS + 100, 1000);
    assert_eq!(m.ever_seen.len(), REMEMBERED_IDS);
    assert_eq!(m.forgettable.len(), REMEMBERED_IDS);
    // The least recently registered are forgotten: such an id joins anew.
    let events = m.register(member("made-up-0", 1, 1), t0).unwrap();
    assert!(matches!(
        &events[..],
        [Event::Joined {
            rejoined: false,
            ..
        }]
    ));
    let last = format!("made-up-{}", REMEMBERED_IDS + 99);
    let events = m.register(member(&last, 1, 2), t0).unwrap();
    assert!(matches!(
        &events[..],
        [Event::Joined { rejoined: true, .. }]
    ));
    assert_eq!(m.ever_seen.len(), REMEMBERED_IDS);
}

#[test]
fn members_and_recently_registered_ids_are_not_forgotten() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("member", 5, 1), t0).unwrap();
    m.register(member("returning", 5, 2), t0).unwrap();
    m.connection_lost(2, "reset", t0);
    churn(&mut m, t0, "made-up-", REMEMBERED_IDS / 2, 1000);
    // Registering again makes it recent.
    m.register(member("returning", 5, 3), t0).unwrap();
    m.connection_lost(3, "reset", t0);
    // Ten more than fit: the oldest made-up ids go, and nothing else.
    churn(&mut m, t0, "more-", REMEMBERED_IDS / 2 + 8, 100_000);
    assert_eq!(m.ever_seen.len(), REMEMBERED_IDS);
    let remembered = |id: &str| m.ever_seen.contains_key(&id.parse::<NodeId>().unwrap());
    assert!(!remembered("made-up-9") && remembered("made-up-10"));
    assert!(matches!(
        m.register(member("member", 4, 4), t0),
        Err(Refusal::StaleIncarnation { newer: 5, .. })
    ));
    assert!(matches!(
        m.register(member("returning", 4, 5), t0),
        Err(Refusal::StaleIncarnation { newer: 5, .. })
    ));
}

#[test]
fn with_more_members_than_remembered_ids_every_member_is_remembered() {
    let t0 = Instant::now();
    let mut m = cluster();
    let n = REMEMBERED_IDS + 10;
    for i in 0..n {
        m.register(member(&format!("dn{i}"), 1, i as ConnId), t0)
            .unwrap();
    }
    assert_eq!(m.ever_seen.len(), n);
    for i in 0..n {
        m.connection_lost(i as ConnId, "reset", t0);
    }
    churn(&mut m, t0, "made-up-", 1, 1_000_000);
    assert_eq!(m.ever_seen.len(), REMEMBERED_IDS);
}

fn stored(node: &str, incarnation: u64, conn: ConnId, store: u64) -> MemberInfo {
    MemberInfo {
        store: Some(store),
        ..member(node, incarnation, conn)
    }
}

#[test]
fn incarnations_are_compared_only_within_one_data_directory() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(stored("dn1", 57, 10, 0xaa), t0).unwrap();
    m.connection_lost(10, "reset", t0);
    // Its disk was replaced: the new directory's counter starts again.
    let events = m.register(stored("dn1", 1, 11, 0xbb), t0).unwrap();
    assert!(matches!(
        &events[..],
        [Event::Joined { rejoined: true, .. }]
    ));
    m.connection_lost(11, "reset", t0);
    // The old directory's process comes back: it is the stale one now.
    let refusal = m.register(stored("dn1", 58, 12, 0xaa), t0).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "stale incarnation 58 of dn1: its data directory (store 00000000000000aa) has been replaced by store 00000000000000bb"
    );
    // Within the new directory the order holds as before.
    m.register(stored("dn1", 2, 13, 0xbb), t0).unwrap();
    m.connection_lost(13, "reset", t0);
    let refusal = m.register(stored("dn1", 1, 14, 0xbb), t0).unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::StaleIncarnation { newer: 2, .. }
    ));
    // A node that names no directory is compared with any.
    let refusal = m.register(member("dn1", 1, 15), t0).unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::StaleIncarnation { newer: 2, .. }
    ));
}

#[test]
fn superseded_directories_are_remembered_up_to_a_bound() {
    let t0 = Instant::now();
    let mut m = cluster();
    for (n, store) in (1..=SUPERSEDED_STORES as u64 + 2).enumerate() {
        let conn = n as ConnId + 10;
        m.register(stored("dn1", 1, conn, store), t0).unwrap();
        m.connection_lost(conn, "reset", t0);
    }
    // The oldest beyond the bound is forgotten: its process may come back.
    m.register(stored("dn1", 9, 100, 1), t0).unwrap();
    m.connection_lost(100, "reset", t0);
    let refusal = m.register(stored("dn1", 9, 101, 4), t0).unwrap_err();
    assert!(
        matches!(refusal, Refusal::SupersededStore { .. }),
        "{refusal}"
    );
}

#[test]
fn the_member_set_holds_every_registered_node_until_it_leaves_gracefully() {
    let t0 = Instant::now();
    let mut m = cluster();
    for (n, name) in ["dn1", "dn2", "dn3"].iter().enumerate() {
        m.register(member(name, 1, n as ConnId + 1), t0).unwrap();
    }
    m.recovered(t0);
    assert_eq!(
        m.quorum(),
        Quorum {
            live: 3,
            members: 3
        }
    );
    m.connection_lost(3, "reset", t0);
    m.tick(t0 + SECOND);
    assert_eq!(
        m.quorum(),
        Quorum {
            live: 2,
            members: 3
        }
    );
    m.connection_lost(2, "reset", t0);
    assert!(!m.quorum().holds(), "evicted is not removed");
    m.register(member("dn2", 2, 4), t0).unwrap();
    m.leaving(1);
    let version = m.member_set_version();
    m.left(1, t0);
    assert_ne!(m.member_set_version(), version);
    let names: Vec<String> = m.member_set().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["dn2", "dn3"]);
    assert_eq!(
        m.quorum(),
        Quorum {
            live: 1,
            members: 2
        }
    );
}

#[test]
fn an_absent_member_is_removed_by_the_tick_after_the_wait_with_a_majority_live() {
    let t0 = Instant::now();
    let mut m = cluster();
    for (n, name) in ["dn1", "dn2", "dn3"].iter().enumerate() {
        m.register(member(name, 1, n as ConnId + 1), t0).unwrap();
    }
    m.recovered(t0);
    m.connection_lost(3, "reset", t0);
    // Heartbeats keep the others alive meanwhile.
    let mut at = t0;
    while at < t0 + REMOVE_AFTER - SECOND {
        at += SECOND;
        m.heartbeat(1, at);
        m.heartbeat(2, at);
        assert!(
            !m.tick(at)
                .iter()
                .any(|e| matches!(e, Event::Removed { .. }))
        );
    }
    m.heartbeat(1, t0 + REMOVE_AFTER);
    m.heartbeat(2, t0 + REMOVE_AFTER);
    let events = m.tick(t0 + REMOVE_AFTER);
    assert_eq!(
        events,
        [Event::Removed {
            node: "dn3".parse().unwrap(),
            absent_for: REMOVE_AFTER
        }]
    );
    assert_eq!(
        m.quorum(),
        Quorum {
            live: 2,
            members: 2
        }
    );
}

#[test]
fn a_restarted_head_node_learns_the_set_from_reports_until_it_has_recovered() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn2", 1, 1), t0).unwrap();
    m.reported(
        &[
            "dn1".parse().unwrap(),
            "dn2".parse().unwrap(),
            "dn3".parse().unwrap(),
        ],
        t0,
    );
    assert_eq!(
        m.quorum(),
        Quorum {
            live: 1,
            members: 3
        }
    );
    m.register(member("dn1", 1, 2), t0).unwrap();
    assert!(m.quorum().holds());
    m.recovered(t0);
    m.reported(&["dn9".parse().unwrap()], t0);
    assert_eq!(m.member_set().len(), 3);
}

#[test]
fn original_system_members_count_only_while_connected_and_are_not_in_the_kept_set() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 1), t0).unwrap();
    m.register(legacy("dn-10.0.0.9-4000", 1, 2), t0).unwrap();
    m.recovered(t0);
    assert_eq!(
        m.quorum(),
        Quorum {
            live: 2,
            members: 2
        }
    );
    assert_eq!(m.member_set().len(), 1);
    m.connection_lost(2, "reset", t0);
    assert_eq!(
        m.quorum(),
        Quorum {
            live: 1,
            members: 1
        }
    );
}

#[test]
fn a_node_back_with_a_new_data_directory_is_rebuilding_until_repaired() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(stored("dn1", 3, 10, 0xaa), t0).unwrap();
    m.register(stored("dn2", 1, 11, 0xcc), t0).unwrap();
    assert!(m.rebuilding().is_empty(), "first seen: nothing to tell");
    m.connection_lost(10, "reset", t0);
    m.register(stored("dn1", 4, 12, 0xaa), t0).unwrap();
    assert!(m.rebuilding().is_empty(), "the same directory");
    m.connection_lost(12, "reset", t0);
    m.register(stored("dn1", 1, 13, 0xbb), t0).unwrap();
    let dn1: NodeId = "dn1".parse().unwrap();
    assert_eq!(m.rebuilding(), vec![(dn1.clone(), 0xbb)]);
    // A pass that began before yet another directory does not clear it.
    let began = m.rebuilding();
    m.connection_lost(13, "reset", t0);
    m.register(stored("dn1", 1, 14, 0xdd), t0).unwrap();
    assert!(!m.repaired(&began));
    assert_eq!(m.rebuilding(), vec![(dn1.clone(), 0xdd)]);
    assert!(m.repaired(&m.rebuilding()));
    assert!(m.rebuilding().is_empty());
    m.connection_lost(14, "reset", t0);
    m.register(stored("dn1", 2, 15, 0xdd), t0).unwrap();
    assert!(m.rebuilding().is_empty(), "repaired stays repaired");
}
