//! The one error type of the rootfs builder.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, pulling, importing or
/// building an image. Messages name the offending thing (a reference, a
/// digest, a layer entry) so a user can act on them.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the user gave.
        reference: String,
        /// Why it was refused.
        reason: String,
    },

    /// The platform string could not be parsed.
    #[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")]
    InvalidPlatform(String),

    /// A manifest, index, config or archive is malformed.
    #[error("malformed image {what}: {reason}")]
    Malformed {
        /// Which document (e.g. "manifest sha256:...").
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An image index has no manifest for the wanted platform.
    #[error("image {reference} has no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        /// The image.
        reference: String,
        /// The wanted platform.
        platform: String,
        /// The platforms the index offers.
        available: String,
    },

    /// A blob did not match its descriptor.
    #[error("{what} failed verification: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// The digest or size the descriptor promised.
        expected: String,
        /// What the content actually hashed to, or its actual size.
        actual: String,
    },

    /// A resource bound was exceeded (hostile or absurd input).
    #[error("{what} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What grew too large.
        what: String,
        /// The bound that was hit.
        limit: String,
    },

    /// A layer entry was refused because applying it could escape the root
    /// or is otherwise unsafe.
    #[error("layer {layer}: refused entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// Layer index (0 = bottom).
        layer: usize,
        /// The entry name as it appears in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },

    /// A registry operation failed.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What failed.
        message: String,
    },

    /// The auth file could not be read.
    #[error("auth file {path}: {reason}")]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An image, tag or blob is not where it should be; the message says
    /// what and what to do.
    #[error("{0}")]
    NotFound(String),

    /// The requested disk size cannot hold the image.
    #[error("--size-mib {requested} is too small for this image: it needs at least {needed} MiB")]
    TooSmall {
        /// What was asked for.
        requested: u64,
        /// The smallest size that fits.
        needed: u64,
    },

    /// An external tool (mke2fs, debugfs) failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// The program.
        tool: String,
        /// Its diagnostics.
        message: String,
    },

    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl RootfsError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RootfsError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl ToString) -> Self {
        RootfsError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn limit(what: impl Into<String>, limit: impl ToString) -> Self {
        RootfsError::LimitExceeded {
            what: what.into(),
            limit: limit.to_string(),
        }
    }
}

/// Adds path context to I/O results.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, RootfsError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, RootfsError> {
        self.map_err(|e| RootfsError::io(context(), e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, RootfsError> {
        self.map_err(|e| RootfsError::io(context(), e.into()))
    }
}
