//! Every parser of peer text on arbitrary UTF-8.
//!
//! The input is read as UTF-8 (invalid sequences become U+FFFD); the parsers
//! see the whole text and each of its `\n`-separated lines.
//!
//! Properties: no parser panics; whatever parses encodes to text that parses
//! back to the same value; a refusal's reason, which is sent to the peer
//! after `ERROR `, is one line of at most [`MAX_REASON`] bytes.

use std::str::FromStr;

use bytes::BytesMut;
use protocol::client::StoreReply;
use protocol::datanode::{FromDataNode, ToDataNode};
use protocol::error::{ERROR_PREFIX, ParseError, truncate_for_log};
use protocol::handshake::Role;
use protocol::ids::{MessageId, NodeId};

/// Longest acceptable error reason: 80 characters of the peer's text,
/// escaped, plus the explanation around them.
const MAX_REASON: usize = 1024;

pub(crate) fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_text(&text);
    for line in text.split('\n') {
        check_text(line);
    }
}

fn check_text(text: &str) {
    message_id(text);
    node_id(text);
    role(text);
    to_data_node(text);
    from_data_node(text);
    store_reply(text);

    let short = truncate_for_log(text);
    assert!(text.starts_with(short), "truncate_for_log is not a prefix");
    assert!(
        short.chars().count() <= 80,
        "truncate_for_log kept more than 80 characters"
    );
}

fn message_id(text: &str) {
    let Some(id) = parsed("MessageId", text, MessageId::from_str(text)) else {
        return;
    };
    let shown = id.to_string();
    assert_eq!(
        shown.parse::<MessageId>(),
        Ok(id),
        "{text:?} shown as {shown:?}"
    );
    let mut put = BytesMut::new();
    id.put(&mut put);
    assert_eq!(
        &put[..],
        shown.as_bytes(),
        "MessageId::put differs from Display"
    );
}

fn node_id(text: &str) {
    let Some(id) = parsed("NodeId", text, NodeId::from_str(text)) else {
        return;
    };
    assert_eq!(id.as_str(), text, "a node id is kept exactly as sent");
    assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
}

fn role(text: &str) {
    let Some(role) = parsed("Role", text, Role::from_str(text)) else {
        return;
    };
    let line = match &role {
        Role::Client(None) => protocol::handshake::ROLE_CLIENT.to_owned(),
        Role::Client(Some(id)) => format!("{} id={id}", protocol::handshake::ROLE_CLIENT),
        Role::DataNode(hello) => hello.to_line(),
        Role::Reader => protocol::handshake::ROLE_READER.to_owned(),
    };
    assert_eq!(
        line.parse::<Role>(),
        Ok(role),
        "{text:?} sent again as {line:?}"
    );
}

fn to_data_node(text: &str) {
    let Some(frame) = parsed("ToDataNode", text, ToDataNode::parse(text)) else {
        return;
    };
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    let encoded = std::str::from_utf8(&buf).expect("ToDataNode encodes UTF-8");
    assert_eq!(
        ToDataNode::parse(encoded),
        Ok(frame),
        "{text:?} encoded as {encoded:?}"
    );
}

fn from_data_node(text: &str) {
    let Some(frame) = parsed("FromDataNode", text, FromDataNode::parse(text)) else {
        return;
    };
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    let encoded = std::str::from_utf8(&buf).expect("FromDataNode encodes UTF-8");
    assert_eq!(
        FromDataNode::parse(encoded),
        Ok(frame),
        "{text:?} encoded as {encoded:?}"
    );
}

fn store_reply(text: &str) {
    let Some(reply) = parsed("StoreReply", text, StoreReply::parse(text)) else {
        return;
    };
    let encoded = match &reply {
        // The head node only ever names its data nodes by their `NodeId`.
        StoreReply::Stored { holders, id } => match holders
            .iter()
            .map(|node| node.parse::<NodeId>())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(holders) => {
                let mut buf = BytesMut::new();
                StoreReply::encode_stored(&holders, *id, &mut buf);
                String::from_utf8(buf.to_vec()).expect("StoreReply encodes UTF-8")
            }
            Err(_) => return,
        },
        // What `FrameWriter::queue_error` sends.
        StoreReply::Error(reason) => format!("{ERROR_PREFIX}{reason}"),
    };
    assert_eq!(
        StoreReply::parse(&encoded),
        Ok(reply),
        "{text:?} encoded as {encoded:?}"
    );
}

/// The value, or `None` after checking that the refusal's reason is fit to
/// send to the peer.
fn parsed<T>(parser: &str, text: &str, result: Result<T, ParseError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            let reason = error.to_string();
            assert!(
                !reason.contains(['\n', '\r']),
                "{parser}: reason for refusing {text:?} spans lines: {reason:?}"
            );
            assert!(
                reason.len() <= MAX_REASON,
                "{parser}: reason for refusing a {}-byte text is {} bytes long: {reason:?}",
                text.len(),
                reason.len()
            );
            None
        }
    }
}
