//! What a data node says about itself when it registers: the `dataNode`
//! role line.

use crate::auth::Nonce;
use crate::error::{ParseError, truncate_for_log};
use crate::handshake::ROLE_DATANODE;
use crate::ids::{NodeId, Zone, parse_decimal};

/// What a data node says about itself when it registers.
///
/// Wire form: `dataNode id=<node-id> incarnation=<n> [nonce=<32 hex>]
/// [zone=<zone>] [store=<16 hex>] [epoch=<n>]`; the nonce opens the
/// challenge and response of [`crate::auth`]. An
/// original-system data node sends the bare word `dataNode`; all fields are
/// then `None` and the head node names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataNodeHello {
    /// The node's chosen name.
    pub node_id: Option<NodeId>,
    /// Changes on every process start, so a restarted node is told apart from
    /// a late message of its previous life.
    pub incarnation: Option<u64>,
    /// The node's challenge to the head node, when it holds a cluster token.
    pub nonce: Option<Nonce>,
    /// The node's failure domain.
    pub zone: Option<Zone>,
    /// Names the node's data directory: made when the directory is new,
    /// so a node that comes back with an empty or different store is told
    /// apart from one that kept its data (`store=<16 hex digits>`).
    pub store: Option<u64>,
    /// The newest head-node epoch the node has accepted (0: none): the head
    /// node takes an epoch above it before it welcomes the node. A node
    /// that sends it is welcomed with the head node's head-id too.
    pub epoch: Option<u64>,
}

impl DataNodeHello {
    /// Whether this is an original-system data node (bare `dataNode`).
    pub fn is_legacy(&self) -> bool {
        self.node_id.is_none()
            && self.incarnation.is_none()
            && self.nonce.is_none()
            && self.zone.is_none()
            && self.store.is_none()
            && self.epoch.is_none()
    }

    /// The role line a data node sends.
    pub fn to_line(&self) -> String {
        let mut line = String::from(ROLE_DATANODE);
        if let Some(id) = &self.node_id {
            line.push_str(&format!(" id={id}"));
        }
        if let Some(incarnation) = self.incarnation {
            line.push_str(&format!(" incarnation={incarnation}"));
        }
        if let Some(nonce) = &self.nonce {
            line.push_str(&format!(" nonce={nonce}"));
        }
        if let Some(zone) = &self.zone {
            line.push_str(&format!(" zone={zone}"));
        }
        if let Some(store) = self.store {
            line.push_str(&format!(" store={store:016x}"));
        }
        if let Some(epoch) = self.epoch {
            line.push_str(&format!(" epoch={epoch}"));
        }
        line
    }

    /// Reads the fields after the word `dataNode` (`id=<node-id>` and the
    /// rest, each `key=value`); none gives an original-system node's hello.
    pub(crate) fn from_fields<'a>(
        fields: impl Iterator<Item = &'a str>,
    ) -> Result<Self, ParseError> {
        let mut hello = DataNodeHello::default();
        for word in fields {
            let (key, value) = word.split_once('=').ok_or_else(|| {
                ParseError::new(format!(
                    "expected key=value in dataNode line, got {:?}",
                    truncate_for_log(word)
                ))
            })?;
            match key {
                "id" => hello.node_id = Some(value.parse()?),
                "incarnation" => {
                    hello.incarnation = Some(value.parse().map_err(|_| {
                        ParseError::new(format!("bad incarnation {:?}", truncate_for_log(value)))
                    })?)
                }
                "nonce" => hello.nonce = Some(value.parse()?),
                "zone" => hello.zone = Some(value.parse()?),
                "store" => {
                    hello.store = Some(
                        (value.len() == 16)
                            .then(|| u64::from_str_radix(value, 16).ok())
                            .flatten()
                            .ok_or_else(|| {
                                ParseError::new(format!(
                                    "bad store id {:?} (16 hex digits)",
                                    truncate_for_log(value)
                                ))
                            })?,
                    )
                }
                "epoch" => {
                    hello.epoch = Some(parse_decimal(value).ok_or_else(|| {
                        ParseError::new(format!("bad epoch {:?}", truncate_for_log(value)))
                    })?)
                }
                other => {
                    return Err(ParseError::new(format!(
                        "unknown dataNode field {:?}",
                        truncate_for_log(other)
                    )));
                }
            }
        }
        Ok(hello)
    }
}
