//! The QEMU backend.
//!
//! Boots `qemu-system-x86_64 -M microvm` (no firmware, virtio-mmio devices)
//! with KVM when the host's KVM can really run a guest, and TCG otherwise.

mod accel;

pub use accel::choose_accelerator;

use vmkit_protocol::{Backend, BackendKind, ErrorCode, HostInfo, Outcome, ProtocolError, Request};

/// The QEMU backend.
#[derive(Debug, Default)]
pub struct QemuBackend {}

impl QemuBackend {
    /// A QEMU backend with default settings.
    pub fn new() -> Self {
        Self::default()
    }
}

fn unsupported(what: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unsupported,
        format!("qemu backend: {what} is not implemented yet"),
    )
}

impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn host(&self) -> Result<HostInfo, ProtocolError> {
        let kvm = vmkit_host::probe_kvm();
        let (accelerator, accelerator_reason) = choose_accelerator(&kvm);
        Ok(HostInfo {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            accelerator,
            accelerator_reason,
            checks: Vec::new(),
        })
    }

    fn check(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported("check"))
    }
    fn prepare(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported("prepare"))
    }
    fn start(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported("start"))
    }
    fn run(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported("run"))
    }
    fn inspect(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported("inspect"))
    }
    fn halt(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported("halt"))
    }
    fn stop(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported("stop"))
    }
    fn kill(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported("kill"))
    }
    fn delete(&self, _request: &Request) -> Result<Outcome, ProtocolError> {
        Err(unsupported("delete"))
    }
}
