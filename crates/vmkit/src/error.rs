use vmkit_protocol::{ErrorCode, ProtocolError};

/// Everything the library can fail with, by the piece that failed.
#[derive(Debug, thiserror::Error)]
pub enum VmkitError {
    /// A backend or lifecycle operation failed.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// Building or finding the kernel failed.
    #[error("kernel: {0}")]
    Kernel(#[from] vmkit_kernel::KernelError),
    /// Building the root disk failed.
    #[error("image: {0}")]
    Rootfs(#[from] vmkit_rootfs::RootfsError),
    /// The state store failed.
    #[error("{0}")]
    State(#[from] vmkit_state::StateError),
    /// A `cp` failed.
    #[error("cp: {0}")]
    Copy(#[from] crate::copy::CopyError),
    /// The guest init binary could not be found.
    #[error("{0}")]
    GuestInit(String),
}

impl VmkitError {
    /// Whether the VM failed to come up (as opposed to a bad request or a
    /// host-side failure): the CLI gives these their own exit code.
    pub fn is_boot_failure(&self) -> bool {
        matches!(
            self,
            VmkitError::Protocol(ProtocolError {
                code: ErrorCode::GuestFailure | ErrorCode::Timeout,
                ..
            })
        )
    }
}
