//! Errors of the cluster layer.

/// What went wrong, as the callers branch on it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("configuration: {0}")]
    Config(String),
    /// Redis did not answer (down, unreachable, too slow): rooms already on this node go
    /// on, new placements wait until it is back.
    #[error("the cluster's Redis is unavailable: {0}")]
    Unavailable(String),
    /// Every registered node is draining, or none is registered.
    #[error("no node takes new rooms")]
    NoNode,
}
