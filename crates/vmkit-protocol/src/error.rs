use serde::{Deserialize, Serialize};

/// Machine-readable class of a failure, so callers can branch without
/// parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// The request could not be parsed or failed validation.
    InvalidRequest,
    /// The command is not legal in the workspace's current state.
    InvalidState,
    /// The workspace does not exist.
    NotFound,
    /// The workspace exists already.
    AlreadyExists,
    /// Another command holds the workspace lock.
    Busy,
    /// The backend cannot run on this host (missing binary, no hypervisor).
    Unavailable,
    /// The command is not implemented by this backend.
    Unsupported,
    /// The guest did not come up or the guest channel failed.
    GuestFailure,
    /// A deadline passed.
    Timeout,
    /// Anything else: I/O errors, a crashed VMM.
    Internal,
}

/// An error as it travels in a [`crate::Response`]: a code and a message a
/// person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{message}")]
pub struct ProtocolError {
    /// The class of failure.
    pub code: ErrorCode,
    /// What went wrong and, where possible, what to do about it.
    pub message: String,
}

impl ProtocolError {
    /// Builds an error of the given class.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for [`ErrorCode::InvalidRequest`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
}
