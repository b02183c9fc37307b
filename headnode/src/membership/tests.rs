use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn member(node: &str, incarnation: u64, conn: ConnId) -> MemberInfo {
    MemberInfo {
        node: node.parse().unwrap(),
        incarnation,
        conn,
        addr: "10.0.0.1".parse().unwrap(),
        legacy: false,
    }
}

fn cluster() -> Membership {
    Membership::new(DetectorConfig {
        ping_misses: 1,
        suspect_after: 2 * SECOND,
        hung_grace: 3 * SECOND,
    })
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
    m.connection_lost(10, "reset");
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
    assert!(m.connection_lost(10, "reset").is_empty());
    assert!(m.round_result(10, ProbeOutcome::NoReply).is_empty());
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
fn icmp_miss_evicts_as_unreachable_at_the_next_round() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    m.register(member("dn2", 1, 20), t0).unwrap();
    let ok = m.round_result(10, ProbeOutcome::Reply(Duration::from_micros(80)));
    assert!(matches!(ok[..], [Event::Available { .. }]));
    let events = m.round_result(20, ProbeOutcome::NoReply);
    assert_eq!(
        evicted(&events),
        [("dn2".to_string(), EvictReason::Unreachable)]
    );
    assert_eq!(routable(&m), ["dn1"]);
    let events = m.round_result(10, ProbeOutcome::NoReply);
    assert_eq!(events.last(), Some(&Event::NoneLeft));
}

#[test]
fn icmp_misses_allowance_is_respected() {
    let t0 = Instant::now();
    let mut m = Membership::new(DetectorConfig {
        ping_misses: 3,
        ..DetectorConfig::default()
    });
    m.register(member("dn1", 1, 10), t0).unwrap();
    assert!(matches!(
        m.round_result(10, ProbeOutcome::NoReply)[..],
        [Event::Missed { misses: 1, .. }]
    ));
    m.round_result(10, ProbeOutcome::Reply(SECOND / 1000));
    assert!(matches!(
        m.round_result(10, ProbeOutcome::NoReply)[..],
        [Event::Missed { misses: 1, .. }]
    ));
    assert!(matches!(
        m.round_result(10, ProbeOutcome::NoReply)[..],
        [Event::Missed { misses: 2, .. }]
    ));
    assert_eq!(evicted(&m.round_result(10, ProbeOutcome::NoReply)).len(), 1);
}

#[test]
fn icmp_unavailable_never_evicts() {
    let t0 = Instant::now();
    let mut m = cluster();
    m.register(member("dn1", 1, 10), t0).unwrap();
    for _ in 0..10 {
        assert!(m.round_result(10, ProbeOutcome::Unavailable).is_empty());
    }
    assert_eq!(routable(&m), ["dn1"]);
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
        evicted(&m.ack_timeout(30)),
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
        evicted(&m.left(10)),
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
