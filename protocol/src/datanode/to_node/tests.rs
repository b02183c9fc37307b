use bytes::BytesMut;

use super::*;

fn id(epoch: u64, seq: u64) -> MessageId {
    MessageId { epoch, seq }
}

#[test]
fn the_one_pass_store_reading_agrees_with_the_general_one() {
    let canonical = [
        "1796634734630-4: numero random: 24",
        "1796634734630-4 c-124902eec645/4: numero random: 24",
        "0-0 a/0: ",
        "9999999999999999999-9999999999999999999 x/9999999999999999999: t",
    ];
    for rest in canonical {
        let fast = parse_store_fast(rest).expect("the usual shape is read in one pass");
        assert_eq!(Ok(fast), parse_store(rest), "{rest:?}");
    }
    // Every shape built from these pieces, and every one-byte change of
    // the usual lines: whatever the one-pass reading accepts, the
    // general one reads the same way.
    let numbers = [
        "",
        "0",
        "007",
        "42",
        "9999999999999999999",
        "18446744073709551615",
        "18446744073709551616",
        "1-2",
        "x",
    ];
    let names = [
        "",
        "c",
        "c-1.a_b",
        &"n".repeat(64),
        &"n".repeat(65),
        "c d",
        "c:d",
        "c/d",
        "ñ",
    ];
    let mut rests = Vec::new();
    for epoch in numbers {
        for seq in numbers {
            for tail in [": t", ":t", ": ", ":", " : t", ": a: b", ""] {
                rests.push(format!("{epoch}-{seq}{tail}"));
                rests.push(format!("{epoch}{seq}{tail}"));
                for name in names {
                    for key_seq in numbers {
                        rests.push(format!("{epoch}-{seq} {name}/{key_seq}{tail}"));
                    }
                    rests.push(format!("{epoch}-{seq} {name}{tail}"));
                }
            }
        }
    }
    for line in canonical {
        for at in 0..line.len() {
            for b in [b' ', b':', b'-', b'/', b'0', b'9', b'a', b'\t', 0xC3] {
                let mut bytes = line.as_bytes().to_vec();
                bytes[at] = b;
                rests.push(String::from_utf8_lossy(&bytes).into_owned());
                bytes.remove(at);
                rests.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    let mut read_fast = 0;
    for rest in &rests {
        if let Some(fast) = parse_store_fast(rest) {
            read_fast += 1;
            assert_eq!(Ok(fast), parse_store(rest), "{rest:?}");
        }
    }
    assert!(
        read_fast > 1000,
        "{read_fast} of {} read in one pass",
        rests.len()
    );
}

#[test]
fn a_bad_mensaje_line_is_refused_with_what_is_wrong() {
    // Lines the one-pass reading does not take reach the general one,
    // which names the fault.
    for (line, expected) in [
        ("mensaje 1-2", "malformed 'mensaje' line"),
        ("mensaje 1-2:x", "malformed 'mensaje' line"),
        ("mensaje x-2: t", "bad message id \"x-2\""),
        ("mensaje 1-2-3: t", "bad message id \"1-2-3\""),
        (
            "mensaje 1-18446744073709551616: t",
            "bad message id \"1-18446744073709551616\"",
        ),
        ("mensaje 1-2 c d/1: t", "bad message key \"c d/1\""),
        ("mensaje 1-2 c/x: t", "bad message key \"c/x\""),
        ("mensaje 1-2 /1: t", "bad message key \"/1\""),
    ] {
        let error = ToDataNode::parse(line).unwrap_err();
        assert!(error.to_string().contains(expected), "{line}: {error}");
    }
}

#[test]
fn a_repair_copy_carries_its_record_time_after_the_key() {
    let key = KeyRef {
        client: "c-1",
        seq: 99,
    };
    for (line, expected) in [
        (
            "mensaje 5-7 c-1/99 @1795413331793: numero random: 7",
            ToDataNode::StoreCopy {
                id: id(5, 7),
                key: Some(key),
                stored_ms: 1_795_413_331_793,
                text: "numero random: 7",
            },
        ),
        (
            "mensaje 5-7 @0: a @1: b",
            ToDataNode::StoreCopy {
                id: id(5, 7),
                key: None,
                stored_ms: 0,
                text: "a @1: b",
            },
        ),
    ] {
        assert_eq!(ToDataNode::parse(line), Ok(expected.clone()), "{line}");
        let mut buf = BytesMut::new();
        expected.encode(&mut buf);
        assert_eq!(&buf[..], line.as_bytes());
    }
    for bad in [
        "mensaje 5-7 @: t",
        "mensaje 5-7 @+1: t",
        "mensaje 5-7 @1x: t",
        "mensaje 5-7 c-1/99 @1 @2: t",
        "mensaje 5-7 @1 c-1/99: t",
        "mensaje @1: t",
    ] {
        assert!(ToDataNode::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        ToDataNode::parse("mensaje 5-7 c-1/99: @1: t"),
        Ok(ToDataNode::Store {
            id: Some(id(5, 7)),
            key: Some(key),
            text: "@1: t",
        }),
        "after the colon it is text"
    );
}

#[test]
fn head_to_datanode_frames_round_trip() {
    let frames = [
        ToDataNode::Welcome {
            node: "dn-2".parse().unwrap(),
            epoch: 1_795_413_330_851,
            head: None,
        },
        ToDataNode::Welcome {
            node: "dn-2".parse().unwrap(),
            epoch: 7,
            head: Some(crate::datanode::HeadId(0xfeed)),
        },
        ToDataNode::Withdraw(id(4, 5)),
        ToDataNode::Horizon(id(4, 6)),
        ToDataNode::Members(vec!["dn1".parse().unwrap(), "dn3".parse().unwrap()]),
        ToDataNode::Members(vec![]),
        ToDataNode::Store {
            id: Some(id(5, 7)),
            key: Some(KeyRef {
                client: "c-1",
                seq: 99,
            }),
            text: "numero random: 7: x",
        },
        ToDataNode::Challenge {
            nonce: crate::auth::Nonce::random(),
            proof: "ab".repeat(32).parse().unwrap(),
        },
        ToDataNode::Store {
            id: Some(id(5, 6)),
            key: None,
            text: "numero random: 7",
        },
        ToDataNode::Store {
            id: None,
            key: None,
            text: "numero random: 8",
        },
        ToDataNode::Store {
            id: Some(id(1, 1)),
            key: None,
            text: "text: with colons: ",
        },
        ToDataNode::Ping(3),
        ToDataNode::Bye,
        ToDataNode::Error("unauthorized"),
        ToDataNode::Get {
            req: 1,
            id: id(5, 6),
        },
        ToDataNode::GetKey {
            req: 2,
            key: KeyRef {
                client: "c-1",
                seq: 99,
            },
        },
        ToDataNode::Scan {
            req: 3,
            after: None,
            limit: 1000,
        },
        ToDataNode::Scan {
            req: u64::MAX,
            after: Some(id(1_795_413_330_851, 42)),
            limit: 1,
        },
    ];
    for frame in frames {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let text = std::str::from_utf8(&buf).unwrap();
        assert_eq!(ToDataNode::parse(text).unwrap(), frame, "{text}");
    }
    assert!(ToDataNode::parse("mensaje").is_err());
    assert!(ToDataNode::parse("mensaje x").is_err());
    assert!(ToDataNode::parse("ping").is_err());
    assert!(ToDataNode::parse("welcome dn1").is_err());
    assert!(ToDataNode::parse("welcome dn1 5 00000000000000ag").is_err());
    assert!(ToDataNode::parse("welcome dn1 5 000000000000000a x").is_err());
    assert!(ToDataNode::parse("mensaje 1-2 bad key: x").is_err());
    assert!(ToDataNode::parse("membersx").is_err());
    for bad in [
        "get 1",
        "get x 1-2",
        "get 1 1-2 extra",
        "getkey 1 c-1",
        "getkey 1 c 1/2",
        "scan 1 start",
        "scan 1 start 0",
        "scan 1 start -1",
        "scan 1 start 4294967296",
        "scan 1 nope 10",
        "scan 1 start 10 more",
    ] {
        assert!(ToDataNode::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        ToDataNode::parse("scan 7 start 1000").unwrap(),
        ToDataNode::Scan {
            req: 7,
            after: None,
            limit: 1000
        }
    );
}
