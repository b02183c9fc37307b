//! The data-node conversation: registration, messages to store and their
//! acknowledgements, heartbeats, the report to a new head node, and reads
//! (`docs/protocol.md`, "Head node ↔ data node").
//!
//! - [`DataNodeHello`]: the `dataNode ...` role line a data node registers
//!   with (`hello.rs`);
//! - [`Fence`]: a head node's epoch and head-id, and the rule by which a
//!   data node accepts or refuses a head node (`fence.rs`);
//! - [`ToDataNode`]: every line the head node sends it (`to_node.rs`);
//! - [`FromDataNode`]: every line it sends the head node (`from_node.rs`);
//! - [`ReadRecord`]: a stored message read back, the payload of `found`,
//!   and the words and bounds of a scan (`record.rs`);
//! - [`register`]: the data node's side of registration (hello, the
//!   challenge both ways, welcome, a stale head node refused), one
//!   implementation for the data node, the simulation and the head node's
//!   tests.

use bytes::{BufMut, BytesMut};

use crate::error::{ParseError, truncate_for_log};
use crate::ids::NodeId;

mod fence;
mod from_node;
mod hello;
mod record;
pub mod register;
mod to_node;

pub use fence::{Fence, HeadId, newest_in_refusal};
pub use from_node::{
    FSYNC_REPORT_EVERY, FromDataNode, FsyncReport, HELD_PER_LINE, IdRange, RECIBIDO, RECIBIDOS,
    REMOVED_PER_LINE, STALE_HEAD,
};
pub use hello::DataNodeHello;
pub use record::{MAX_SCAN_RECORDS, READ_LINE_OVERHEAD, ReadRecord, SCAN_START};
pub use to_node::ToDataNode;

/// Parses ` <name> <name>...` (possibly empty) into node ids.
pub(crate) fn parse_names(rest: &str) -> Result<Vec<NodeId>, ParseError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(ParseError::new(format!(
            "unexpected line {:?}",
            truncate_for_log(rest)
        )));
    }
    let names: Vec<NodeId> = rest
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if names.len() > MAX_NAMES_PER_LINE {
        return Err(ParseError::new(format!(
            "more than {MAX_NAMES_PER_LINE} node ids in one line"
        )));
    }
    Ok(names)
}

/// Most node ids in one `members` or `peers` line.
pub const MAX_NAMES_PER_LINE: usize = 512;

/// Appends ` <name> <name>...` (nothing for no nodes).
pub(crate) fn put_names(nodes: &[NodeId], buf: &mut BytesMut) {
    for node in nodes {
        buf.put_u8(b' ');
        buf.extend_from_slice(node.as_str().as_bytes());
    }
}
