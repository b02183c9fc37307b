//! Fencing: which head node a data node takes messages from.
//!
//! A head node's claim is its [`Fence`]: an epoch, a counter it takes above
//! every epoch its data nodes report (never a clock), and a [`HeadId`], a
//! random number it draws when it starts. A data node keeps the newest
//! fence it has accepted (in its `epoch` file) and accepts a head node only
//! with a newer epoch, or the same epoch from the same head node
//! ([`Fence::admits`]): no data node takes messages from two head nodes
//! under one epoch, and none from a head node older than one it has
//! accepted. A refusal names the newest epoch (`... newest <n>`), so the
//! head node can go above it and be welcomed when the node tries again.

use std::fmt;
use std::str::FromStr;

use super::STALE_HEAD;
use crate::error::{ParseError, truncate_for_log};

/// A head node's random name for one run: 16 hex digits on the wire. `0`
/// stands for a head node that sends none (one older than head-ids).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeadId(pub u64);

impl fmt::Display for HeadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for HeadId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
            .map(HeadId)
            .ok_or_else(|| {
                ParseError::new(format!(
                    "bad head id {:?} (16 hex digits)",
                    truncate_for_log(s)
                ))
            })
    }
}

/// A head node's epoch and head-id: what a data node accepts or refuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fence {
    /// The head node's epoch.
    pub epoch: u64,
    /// The head node's head-id.
    pub head: HeadId,
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {} of head node {}", self.epoch, self.head)
    }
}

impl Fence {
    /// Whether a data node whose newest accepted fence is `self` accepts
    /// `offered`: a newer epoch, or this epoch from this same head node.
    pub fn admits(&self, offered: &Fence) -> bool {
        offered.epoch > self.epoch || *offered == *self
    }

    /// Why a data node whose newest accepted fence is `self` refuses
    /// `offered`, as the reason of its `ERROR` line: starts with
    /// [`STALE_HEAD`] and ends with `newest <epoch>`
    /// (see [`newest_in_refusal`]).
    pub fn refusal(&self, offered: &Fence) -> String {
        let newest = self.epoch;
        if offered.epoch < newest {
            format!(
                "{STALE_HEAD}: epoch {} is older than {newest}, the newest this data node has seen; \
                 a newer head node has run since, so this one may not store anything; newest {newest}",
                offered.epoch
            )
        } else {
            format!(
                "{STALE_HEAD}: epoch {newest} belongs to head node {}, not {}; \
                 two head nodes never share an epoch; newest {newest}",
                self.head, offered.head
            )
        }
    }
}

/// The newest epoch a data node's `stale head node` refusal names, if the
/// reason is one: a head node goes above it before the node tries again.
/// A data node older than epochs as counters names it only as `epoch <e>
/// is older than <n>, ...`, which is read too.
pub fn newest_in_refusal(reason: &str) -> Option<u64> {
    if !reason.starts_with(STALE_HEAD) {
        return None;
    }
    if let Some((_, newest)) = reason.rsplit_once("; newest ") {
        return newest.parse().ok();
    }
    let (_, rest) = reason.split_once(" is older than ")?;
    rest.split(',').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(epoch: u64, head: u64) -> Fence {
        Fence {
            epoch,
            head: HeadId(head),
        }
    }

    #[test]
    fn a_newer_epoch_is_admitted_from_any_head_node() {
        assert!(fence(5, 1).admits(&fence(6, 2)));
        assert!(fence(0, 0).admits(&fence(1, 9)));
    }

    #[test]
    fn the_same_epoch_is_admitted_only_from_the_same_head_node() {
        assert!(fence(5, 1).admits(&fence(5, 1)));
        assert!(!fence(5, 1).admits(&fence(5, 2)));
    }

    #[test]
    fn an_older_epoch_is_refused_whatever_the_head_node() {
        assert!(!fence(5, 1).admits(&fence(4, 1)));
        assert!(!fence(5, 1).admits(&fence(4, 2)));
    }

    #[test]
    fn a_refusal_names_the_newest_epoch_for_the_head_node_to_go_above() {
        let older = fence(9, 1).refusal(&fence(4, 1));
        assert!(
            older.starts_with("stale head node: epoch 4 is older than 9, "),
            "{older}"
        );
        assert_eq!(newest_in_refusal(&older), Some(9));
        let twin = fence(9, 1).refusal(&fence(9, 2));
        assert!(
            twin.starts_with(
                "stale head node: epoch 9 belongs to head node 0000000000000001, not 0000000000000002"
            ),
            "{twin}"
        );
        assert_eq!(newest_in_refusal(&twin), Some(9));
        assert_eq!(newest_in_refusal("node id dn1 is in use; newest 3"), None);
        // As a data node of an older version words it.
        assert_eq!(
            newest_in_refusal(
                "stale head node: epoch 1 is older than 1795413330851, the newest this data node \
                 has seen; a newer head node has run since, so this one may not store anything"
            ),
            Some(1_795_413_330_851)
        );
    }

    #[test]
    fn a_head_id_is_sixteen_hex_digits() {
        let head: HeadId = "00000000000000ab".parse().unwrap();
        assert_eq!(head, HeadId(0xab));
        assert_eq!(head.to_string(), "00000000000000ab");
        for bad in ["ab", "00000000000000ag", "+0000000000000ab", ""] {
            assert!(bad.parse::<HeadId>().is_err(), "{bad}");
        }
    }
}
