//! The Firecracker backend: drives the `firecracker` binary over its HTTP API
//! socket. Firecracker needs hardware KVM; this crate never falls back. Past
//! the launch, everything (state, events, the hybrid-vsock guest channel,
//! which Firecracker implements natively) is the shared
//! [`vmkit_lifecycle::Lifecycle`].

use vmkit_host::{find_in_path, probe_kvm, Tool};
use vmkit_lifecycle::{BootPlan, Launched, Lifecycle, Machine};
use vmkit_protocol::{Accelerator, BackendKind, ErrorCode, HostInfo, MachineConfig, ProtocolError};

/// Launches Firecracker microVMs.
#[derive(Debug, Default)]
pub struct FirecrackerMachine {}

/// The Firecracker backend: the shared lifecycle over a [`FirecrackerMachine`].
pub fn backend() -> Lifecycle {
    Lifecycle::new(FirecrackerMachine::default())
}

impl Machine for FirecrackerMachine {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn host(&self) -> HostInfo {
        let kvm = probe_kvm();
        HostInfo {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            accelerator: if kvm.usable() {
                Accelerator::Kvm
            } else {
                Accelerator::None
            },
            accelerator_reason: kvm.detail,
            checks: Vec::new(),
        }
    }

    fn check(&self, _config: &MachineConfig) -> Result<(), ProtocolError> {
        if find_in_path(Tool::Firecracker.program()).is_none() {
            return Err(ProtocolError::new(
                ErrorCode::Unavailable,
                "firecracker not found in PATH; install a release binary or use --backend qemu",
            ));
        }
        let kvm = probe_kvm();
        if !kvm.usable() {
            return Err(ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "firecracker needs usable KVM: {}; use --backend qemu",
                    kvm.detail
                ),
            ));
        }
        Ok(())
    }

    fn launch(&self, _plan: &BootPlan) -> Result<Launched, ProtocolError> {
        Err(ProtocolError::new(
            ErrorCode::Unsupported,
            "the firecracker launch is not implemented yet; use --backend qemu",
        ))
    }
}
