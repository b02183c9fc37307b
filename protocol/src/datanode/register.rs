//! The data node's side of registration: one implementation, used by the
//! data node, by the simulation and by the head node's tests.
//!
//! ```text
//! data node                                              head node
//!  | peticion / confirmacion (the handshake)                   |
//!  | dataNode id=<id> incarnation=<n> [nonce=..] [zone=..] [store=..] epoch=<n>
//!  | <----------------- challenge <head-nonce> <head-proof>    |  with a token
//!  | proof <node-proof> --------------------------------->     |
//!  | <------------------------ welcome <id> <epoch> <head-id>  |
//!  | ERROR stale head node: ... newest <n> -------------->     |  refused
//! ```
//!
//! The data node checks the head node's proof before it gives its own, so
//! a head node that does not know the cluster token learns nothing from
//! it; and it accepts the head node's epoch and head-id only as
//! [`Fence::admits`] says: a newer epoch, or the one it has accepted from
//! this same head node. A refusal names the newest epoch, so the head node
//! can go above it before the node tries again. What follows `welcome`,
//! the report of what the node holds, is the caller's.

use std::io;
use std::time::Duration;

use super::{DataNodeHello, Fence, FromDataNode, ToDataNode};
use crate::auth::{ClusterToken, Exchange, Nonce};
use crate::connection::Connection;
use crate::error::{HandshakeError, ReadError, truncate_for_log};
use crate::handshake;
use crate::ids::{NodeId, Zone};
use crate::net::Stream;

/// How a head node's `ERROR` reason starts when it refuses this node's
/// proof of the cluster token (or has no token itself).
pub const UNAUTHORIZED: &str = "unauthorized";
/// How a head node's `ERROR` reason starts when a newer process with this
/// node's id has registered: this one is stale and must stop.
pub const STALE_INCARNATION: &str = "stale incarnation";

/// Who registers, and what it checks the head node against.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    /// This node's id.
    pub node_id: NodeId,
    /// This process's incarnation (it changes on every start).
    pub incarnation: u64,
    /// This node's failure domain, if it has one.
    pub zone: Option<Zone>,
    /// The name of this node's data directory, if it sends one.
    pub store: Option<u64>,
    /// The cluster token and this attempt's nonce (a fresh one per
    /// attempt). `None` registers without one: a head node that asks for a
    /// proof is then refused.
    pub token: Option<(&'a ClusterToken, Nonce)>,
    /// The newest head node's fence this node has accepted (sent as its
    /// epoch in the hello); a welcome it does not admit is refused.
    pub newest: Fence,
    /// Time allowed for the handshake, and for each answer after it.
    pub step_timeout: Duration,
}

/// A head node's `welcome`, accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcomed {
    /// This node's id in the cluster.
    pub node: NodeId,
    /// The head node's epoch and head-id, admitted by the newest fence this
    /// node had accepted (head-id 0 from a head node that sends none).
    pub fence: Fence,
}

/// Why registering failed. [`RegisterError::is_fatal`] says whether trying
/// again can help.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The handshake failed (a refusal other than [`UNAUTHORIZED`] included).
    #[error(transparent)]
    Handshake(HandshakeError),
    /// The head node closed the connection before `welcome`.
    #[error("head node closed the connection during registration")]
    Closed,
    /// Reading an answer failed.
    #[error(transparent)]
    Read(ReadError),
    /// No answer within the step timeout.
    #[error("no registration answer from the head node")]
    TimedOut,
    /// Writing our proof failed.
    #[error(transparent)]
    Write(io::Error),
    /// The head node refused this node's proof (or has no token), or asks
    /// for a proof this node, without a token, cannot give. Fatal.
    #[error("{0}")]
    Unauthorized(String),
    /// The head node did not prove it knows the cluster token: its proof
    /// is wrong, or it welcomed this node without one. Fatal.
    #[error("the head node did not prove it knows the cluster token")]
    HeadNotAuthenticated,
    /// A newer process with this node id has registered. Fatal.
    #[error("{0}")]
    Superseded(String),
    /// The head node answered `ERROR` with this reason.
    #[error("refused: {0}")]
    Refused(String),
    /// The newest fence this node has accepted does not admit the head
    /// node's; it was told so (`ERROR stale head node: ... newest <n>`).
    /// The head node goes above that epoch, or a newer one may take its
    /// address: try again.
    #[error("{}", newest.refusal(offered))]
    StaleHead {
        /// The head node's epoch and head-id.
        offered: Fence,
        /// The newest this node has accepted.
        newest: Fence,
    },
    /// An answer that has no place in registration (at most the first 80
    /// characters of it).
    #[error("unexpected registration answer {0:?}")]
    Unexpected(String),
}

impl RegisterError {
    /// Whether trying again cannot help: a wrong or missing token on either
    /// side, or a newer process with this id.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            RegisterError::Unauthorized(_)
                | RegisterError::HeadNotAuthenticated
                | RegisterError::Superseded(_)
        )
    }
}

/// Registers on `conn`, a fresh connection to the head node: the
/// handshake with the hello line, the challenge both ways, and `welcome`.
/// A head node with a stale epoch is answered `ERROR stale head node: ...`
/// (best effort) and refused.
pub async fn register<S: Stream>(
    conn: &mut Connection<S>,
    registration: &Registration<'_>,
) -> Result<Welcomed, RegisterError> {
    let hello = DataNodeHello {
        node_id: Some(registration.node_id.clone()),
        incarnation: Some(registration.incarnation),
        nonce: registration.token.map(|(_, nonce)| nonce),
        zone: registration.zone.clone(),
        store: registration.store,
        epoch: Some(registration.newest.epoch),
    };
    let timeout = registration.step_timeout;
    match handshake::initiate(
        &mut conn.reader,
        &mut conn.writer,
        Some(&hello.to_line()),
        timeout,
    )
    .await
    {
        Ok(_) => {}
        Err(HandshakeError::Refused(reason)) if reason.starts_with(UNAUTHORIZED) => {
            return Err(RegisterError::Unauthorized(reason));
        }
        Err(e) => return Err(RegisterError::Handshake(e)),
    }
    let mut authenticated = false;
    loop {
        let answer = match tokio::time::timeout(timeout, conn.reader.read_frame()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => return Err(RegisterError::Closed),
            Ok(Err(e)) => return Err(RegisterError::Read(e)),
            Err(_) => return Err(RegisterError::TimedOut),
        };
        match ToDataNode::parse(answer.as_str()) {
            Ok(ToDataNode::Challenge { nonce, proof }) if !authenticated => {
                let Some((token, node_nonce)) = &registration.token else {
                    return Err(RegisterError::Unauthorized(
                        "the head node requires a cluster token".into(),
                    ));
                };
                let exchange = Exchange {
                    node_id: registration.node_id.as_str(),
                    incarnation: registration.incarnation,
                    node_nonce,
                    head_nonce: &nonce,
                };
                let Some(ours) = token.answer_challenge(&exchange, &proof) else {
                    return Err(RegisterError::HeadNotAuthenticated);
                };
                authenticated = true;
                conn.writer
                    .queue_with(|buf| FromDataNode::Proof(ours).encode(buf));
                conn.writer.flush().await.map_err(RegisterError::Write)?;
            }
            Ok(ToDataNode::Welcome { node, epoch, head }) => {
                if registration.token.is_some() && !authenticated {
                    return Err(RegisterError::HeadNotAuthenticated);
                }
                let offered = Fence {
                    epoch,
                    head: head.unwrap_or_default(),
                };
                let newest = registration.newest;
                if !newest.admits(&offered) {
                    let refusal = RegisterError::StaleHead { offered, newest };
                    conn.writer
                        .queue_with(|buf| FromDataNode::Error(refusal.to_string()).encode(buf));
                    let _ = conn.writer.flush().await;
                    return Err(refusal);
                }
                return Ok(Welcomed {
                    node,
                    fence: offered,
                });
            }
            Ok(ToDataNode::Error(reason)) if reason.starts_with(UNAUTHORIZED) => {
                return Err(RegisterError::Unauthorized(reason.to_owned()));
            }
            Ok(ToDataNode::Error(reason)) if reason.starts_with(STALE_INCARNATION) => {
                return Err(RegisterError::Superseded(reason.to_owned()));
            }
            Ok(ToDataNode::Error(reason)) => {
                return Err(RegisterError::Refused(reason.to_owned()));
            }
            _ => {
                return Err(RegisterError::Unexpected(
                    truncate_for_log(answer.as_str()).to_owned(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
