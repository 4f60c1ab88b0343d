use std::path::{Path, PathBuf};

/// Everything that can go wrong installing, building or checking a kernel.
///
/// Messages name the file and the problem so a user can act on them without
/// reading the source.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What we were doing ("reading", "creating", ...).
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `install --from` was given something that is not a usable kernel.
    #[error("{} is not a usable guest kernel: {reason}", path.display())]
    NotAKernel {
        /// The rejected file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },

    /// The manifest next to an installed kernel cannot be read or parsed.
    #[error("kernel manifest {} is unreadable: {reason}", path.display())]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A tool the build needs is not installed.
    #[error("{what} is needed to build the kernel but was not found; run scripts/setup (or apt-get install {package})")]
    MissingTool {
        /// The tool or file that is missing.
        what: String,
        /// The Debian package that provides it.
        package: String,
    },

    /// A build step exited unsuccessfully.
    #[error("kernel build failed while {step} (exit status {status}); see the log {}{tail}", log.display())]
    BuildFailed {
        /// The step that failed ("compiling", "configuring", ...).
        step: String,
        /// The process exit status, as text.
        status: String,
        /// The build log.
        log: PathBuf,
        /// The last lines of the log, prefixed with a newline, or empty.
        tail: String,
    },

    /// The kernel configuration did not end up as the fragment asked.
    #[error("the kernel configuration does not match the fragment: {0}")]
    ConfigMismatch(String),

    /// The kernel source given with `--source` is not usable.
    #[error("kernel source {}: {reason}", path.display())]
    BadSource {
        /// The given path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// This host architecture has no kernel recipe.
    #[error("building a guest kernel for {0} is not supported (only x86_64); install one with `microagent kernel install --from PATH`")]
    UnsupportedArch(String),
}

impl KernelError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        KernelError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
