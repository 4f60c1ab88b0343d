//! The Firecracker backend: drives the `firecracker` binary over its HTTP API
//! socket. Firecracker needs hardware KVM; this crate never falls back.

use vmkit_protocol::{Backend, BackendKind, ErrorCode, HostInfo, Outcome, ProtocolError, Request};

/// The Firecracker backend.
#[derive(Debug, Default)]
pub struct FirecrackerBackend {}

impl FirecrackerBackend {
    /// A Firecracker backend with default settings.
    pub fn new() -> Self {
        Self::default()
    }
}

fn unsupported() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unsupported,
        "the firecracker backend is not implemented yet; use --backend qemu",
    )
}

impl Backend for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }
    fn host(&self) -> Result<HostInfo, ProtocolError> {
        Err(unsupported())
    }
    fn check(&self, _r: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported())
    }
    fn prepare(&self, _r: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported())
    }
    fn start(&self, _r: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported())
    }
    fn run(&self, _r: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported())
    }
    fn inspect(&self, _r: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported())
    }
    fn halt(&self, _r: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported())
    }
    fn stop(&self, _r: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported())
    }
    fn kill(&self, _r: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported())
    }
    fn delete(&self, _r: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported())
    }
}
