use std::io;
use std::path::PathBuf;

/// Failures of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or folder operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What we were doing ("creating", "reading", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record on disk is not valid JSON of the expected shape.
    #[error("workspace record {} is corrupt: {source}", path.display())]
    Corrupt {
        /// The record's path.
        path: PathBuf,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// Another command holds the workspace's lock.
    #[error("workspace {name:?} is busy: another microagent command is working on it (try again, or wait for it)")]
    Busy {
        /// The workspace name.
        name: String,
    },
    /// The workspace does not exist.
    #[error("workspace {name:?} does not exist")]
    NotFound {
        /// The workspace name.
        name: String,
    },
    /// The workspace exists already.
    #[error("workspace {name:?} already exists")]
    AlreadyExists {
        /// The workspace name.
        name: String,
    },
    /// The name is not a valid workspace name.
    #[error(transparent)]
    InvalidName(#[from] vmkit_protocol::ProtocolError),
    /// A lock taken for one workspace was used for another.
    #[error("lock for {held:?} used for workspace {wanted:?}")]
    WrongLock {
        /// The lock's workspace.
        held: String,
        /// The workspace the caller touched.
        wanted: String,
    },
}

impl StateError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StateError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
