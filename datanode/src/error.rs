//! Why a data node stops for good.

use crate::storage::StorageError;

/// Why a data node stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum DataNodeError {
    /// The data directory could not be used, or a commit to `data.txt`
    /// failed (nothing in that batch was acknowledged).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data-path thread could not be started, or died.
    #[error("the data-path thread failed: {0}")]
    DataPathThread(String),
    /// The head node refused this node's proof of the cluster token.
    #[error("head node {0} refused this node: {1} (check the cluster token)")]
    Unauthorized(String, String),
    /// The head node could not prove it knows the cluster token: it is not
    /// this cluster's head node, or its token differs.
    #[error("head node {0} did not prove it knows the cluster token; not registering with it")]
    HeadNotAuthenticated(String),
    /// A newer process with this node id has registered since this one
    /// started: this one is stale and stops.
    #[error("head node refused this node: {0}")]
    Superseded(String),
    /// Neither a token nor open registration was configured.
    #[error(
        "no cluster token: set CLUSTER_TOKEN or --cluster-token-file (or --open-registration to join a head node without one)"
    )]
    NoToken,
}
