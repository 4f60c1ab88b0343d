//! The Apple Virtualization.framework backend: spawns the Swift supervisor
//! and speaks one JSON request/response with it over stdin/stdout.

use vmkit_protocol::{Backend, BackendKind, ErrorCode, HostInfo, Outcome, ProtocolError, Request};

/// The Apple Virtualization.framework backend.
#[derive(Debug, Default)]
pub struct AppleVfBackend {}

impl AppleVfBackend {
    /// An Apple VF backend with default settings.
    pub fn new() -> Self {
        Self::default()
    }
}

fn unsupported() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unsupported,
        "the apple-vf backend runs only on macOS with the Swift supervisor, which is not built yet",
    )
}

impl Backend for AppleVfBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::AppleVf
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
