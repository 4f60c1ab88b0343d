//! Tar streams in and out of directory trees, for `microagent cp` (on the
//! host and in the guest) and for the rootfs builder's layer checks.
//!
//! Every archive is hostile: [`paths`] splits entry names (refusing
//! absolute names, `..` and NUL) and resolves them inside a root,
//! following symlinks only as the root's own (an absolute target means the
//! root, a `..` above it is refused), so no entry can reach outside it.
//! [`extract()`] applies an archive to a folder with those checks and never
//! writes through a symlink; [`pack()`] writes a tree as a tar stream without
//! following symlinks.
//!
//! ```no_run
//! use vmkit_archive::{extract, pack, ExtractOptions};
//!
//! let mut tar = Vec::new();
//! pack("/srv/project".as_ref(), "project".as_ref(), &mut tar)?;
//! extract(&tar[..], "/tmp/copy".as_ref(), &ExtractOptions::default())?;
//! # Ok::<(), vmkit_archive::ArchiveError>(())
//! ```

mod extract;
mod pack;
pub mod paths;
mod tempdir;

pub use extract::set_mtime;
pub use extract::{extract, ExtractOptions, ExtractStats, Owner};
pub use pack::{pack, PackStats};
pub use tempdir::TempDir;

/// Why an archive could not be written or applied.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry would escape the destination or is otherwise unsafe.
    #[error("refused archive entry {entry:?}: {reason}")]
    Refused {
        /// The entry's name, lossily decoded.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The archive is not a valid tar stream.
    #[error("malformed archive: {0}")]
    Malformed(String),
    /// A bound was exceeded.
    #[error("archive exceeds the limit on {what} ({limit})")]
    Limit {
        /// What was counted.
        what: &'static str,
        /// The bound.
        limit: u64,
    },
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ArchiveError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
        let context = context.into();
        move |source| ArchiveError::Io { context, source }
    }

    /// Whether writing the archive failed because its reader went away
    /// (the other side of a copy gave up first; its error is the real one).
    pub fn is_broken_pipe(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        matches!(self, ArchiveError::Io { source, .. } if matches!(source.kind(), BrokenPipe | ConnectionReset))
    }

    /// The OS error behind this one, if any (ENOSPC, EROFS, ...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            ArchiveError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
