//! Round-trip properties of the wire format, checked with generated values.
//!
//! Whatever one side encodes, the other side decodes to the same value:
//! lines through the codec however the stream is split, and every message
//! through its `encode`/`Display` and its parser.

use bytes::BytesMut;
use proptest::prelude::*;
use protocol::auth::Nonce;
use protocol::client::StoreReply;
use protocol::codec::{DEFAULT_MAX_LINE, LineDecoder, encode_line};
use protocol::datanode::{DataNodeHello, FromDataNode, HeadId, ToDataNode};
use protocol::handshake::Role;
use protocol::ids::{KeyRef, MessageId, NodeId};

/// Text a frame can carry: no `\n`, and no `\r` at the end (see `encode_line`).
fn frame_text() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|text| text.replace('\n', "").trim_end_matches('\r').to_owned())
}

fn message_id() -> impl Strategy<Value = MessageId> {
    (any::<u64>(), any::<u64>()).prop_map(|(epoch, seq)| MessageId { epoch, seq })
}

fn node_id() -> impl Strategy<Value = NodeId> {
    "[A-Za-z0-9._-]{1,64}".prop_map(|id| id.parse().expect("the pattern only makes valid ids"))
}

fn data_node_hello() -> impl Strategy<Value = DataNodeHello> {
    (
        proptest::option::of(node_id()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<[u8; 16]>()),
        proptest::option::of(node_id()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(node_id, incarnation, nonce, zone, store, epoch)| DataNodeHello {
                node_id,
                incarnation,
                store,
                epoch,
                zone: zone.map(|z| z.as_str().parse().expect("a node id is a valid zone")),
                nonce: nonce.map(|bytes| {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    hex.parse::<Nonce>().expect("32 hex digits")
                }),
            },
        )
}

/// Cut points in a stream of `len` bytes, in order.
fn cuts(len: usize, wanted: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = wanted.iter().map(|&at| at % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

proptest! {
    #[test]
    fn lines_survive_encoding_and_any_split_of_the_stream(
        texts in proptest::collection::vec(frame_text(), 1..8),
        wanted_cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut stream = BytesMut::new();
        for text in &texts {
            encode_line(text.as_bytes(), true, &mut stream);
        }
        let mut decoder = LineDecoder::new(DEFAULT_MAX_LINE);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for end in cuts(stream.len(), &wanted_cuts).into_iter().chain([stream.len()]) {
            buf.extend_from_slice(&stream[start..end]);
            start = end;
            while let Some(line) = decoder.decode(&mut buf).expect("encoded text decodes") {
                prop_assert!(line.is_terminated());
                decoded.push(line.as_str().to_owned());
            }
        }
        prop_assert_eq!(decoded, texts);
        prop_assert!(buf.is_empty(), "nothing is left over");
    }

    #[test]
    fn bare_frames_come_back_whole_after_an_idle_cut(text in frame_text()) {
        let mut buf = BytesMut::new();
        encode_line(text.as_bytes(), false, &mut buf);
        prop_assert_eq!(&buf[..], text.as_bytes(), "nothing is added to a bare frame");
        let line = LineDecoder::new(DEFAULT_MAX_LINE).decode_unterminated(&mut buf).unwrap();
        prop_assert_eq!(line.as_ref().map(|l| l.as_str()), (!text.is_empty()).then_some(&text[..]));
    }

    #[test]
    fn carriage_returns_before_the_newline_are_not_part_of_the_text(
        text in frame_text(),
        carriage_returns in 0..4usize,
    ) {
        let mut buf = BytesMut::from(text.as_bytes());
        buf.extend_from_slice(&b"\r".repeat(carriage_returns));
        buf.extend_from_slice(b"\n");
        let line = LineDecoder::new(DEFAULT_MAX_LINE).decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(line.as_str(), text);
    }

    #[test]
    fn message_id_text_parses_back_to_the_same_id(id in message_id()) {
        let shown = id.to_string();
        prop_assert_eq!(shown.parse::<MessageId>(), Ok(id));
        let mut put = BytesMut::new();
        id.put(&mut put);
        prop_assert_eq!(&put[..], shown.as_bytes());
    }

    #[test]
    fn frames_to_a_data_node_parse_back_to_themselves(
        node in node_id(),
        id in proptest::option::of(message_id()),
        text in any::<String>(),
        counter in any::<u64>(),
        seq in any::<u64>(),
        which in 0..8u8,
    ) {
        let client = node.to_string();
        let frame = match which {
            0 => ToDataNode::Welcome {
                node,
                epoch: counter,
                head: (seq % 2 == 0).then_some(HeadId(seq)),
            },
            1 => ToDataNode::Store { id, key: None, text: &text },
            5 => ToDataNode::Store {
                id: Some(id.unwrap_or(MessageId { epoch: 1, seq: 1 })),
                key: Some(KeyRef { client: &client, seq }),
                text: &text,
            },
            6 => ToDataNode::Members(vec![node.clone(), node]),
            7 => ToDataNode::Horizon(MessageId { epoch: counter, seq }),
            2 => ToDataNode::Ping(counter),
            3 => ToDataNode::Bye,
            _ => ToDataNode::Error(&text),
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let encoded = std::str::from_utf8(&buf).unwrap();
        prop_assert_eq!(ToDataNode::parse(encoded), Ok(frame));
    }

    #[test]
    fn stored_message_frame_names_its_id_and_text(
        id in proptest::option::of(message_id()),
        text in any::<String>(),
    ) {
        // The hot path builds `mensaje` frames without a `ToDataNode`.
        let mut buf = BytesMut::new();
        ToDataNode::encode_store(id, None, text.as_bytes(), &mut buf);
        let encoded = std::str::from_utf8(&buf).unwrap();
        prop_assert_eq!(ToDataNode::parse(encoded), Ok(ToDataNode::Store { id, key: None, text: &text }));
    }

    #[test]
    fn frames_from_a_data_node_parse_back_to_themselves(
        id in proptest::option::of(message_id()),
        reason in any::<String>(),
        counter in any::<u64>(),
        which in 0..4u8,
    ) {
        let frame = match which {
            0 => FromDataNode::Stored(id),
            1 => FromDataNode::Pong(counter),
            2 => FromDataNode::Leaving,
            _ => FromDataNode::Error(reason),
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let encoded = std::str::from_utf8(&buf).unwrap();
        prop_assert_eq!(FromDataNode::parse(encoded), Ok(frame));
    }

    #[test]
    fn runs_of_acknowledgements_name_every_id_in_order(
        seqs in proptest::collection::vec((0..3u64, 0..4u64), 0..200),
    ) {
        // Ids that often, but not always, follow one another.
        let mut ids = Vec::new();
        let mut seq = 1u64;
        for (epoch, step) in seqs {
            seq += step;
            ids.push(MessageId { epoch: 1 + epoch / 2, seq });
        }
        let mut sent = BytesMut::new();
        FromDataNode::encode_answers(ids.iter().map(|&id| FromDataNode::Stored(Some(id))), &mut sent);
        let text = std::str::from_utf8(&sent).unwrap();
        let read: Vec<MessageId> = text
            .lines()
            .flat_map(|line| FromDataNode::parse(line).unwrap().stored_ids().collect::<Vec<_>>())
            .collect();
        prop_assert_eq!(read, ids);
    }

    #[test]
    fn stored_reply_tells_the_client_its_holders_and_id(
        holders in proptest::collection::vec(node_id(), 1..4),
        id in message_id(),
    ) {
        let mut buf = BytesMut::new();
        StoreReply::encode_stored(&holders, id, &mut buf);
        let encoded = std::str::from_utf8(&buf).unwrap();
        prop_assert_eq!(
            StoreReply::parse(encoded),
            Ok(StoreReply::Stored {
                holders: holders.iter().map(|n| n.as_str().to_owned()).collect(),
                id,
            })
        );
        prop_assert_eq!(StoreReply::stored_id(encoded), Some(id));
    }

    #[test]
    fn data_node_hello_parses_back_to_the_same_role(hello in data_node_hello()) {
        let line = hello.to_line();
        prop_assert_eq!(line.parse::<Role>(), Ok(Role::DataNode(hello)));
    }
}
