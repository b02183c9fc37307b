//! Why the head node stopped on its own.

use std::io;

use crate::config::ConfigError;

/// Why the head node stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A task the head node cannot work without ended. The process stops
    /// rather than go on looking alive while it drops messages.
    #[error("the {task} task stopped unexpectedly ({why})")]
    TaskStopped {
        /// Which task.
        task: &'static str,
        /// How it ended.
        why: String,
    },
    /// The listener's address could not be read.
    #[error(transparent)]
    Io(#[from] io::Error),
}
