//! The QEMU backend.
//!
//! Boots `qemu-system-x86_64 -M microvm` (no firmware, virtio-mmio devices)
//! with KVM when the host's KVM can really run a guest, and TCG otherwise.
//! The guest channel is vsock through `vhost-device-vsock`, which gives QEMU
//! the same hybrid-vsock Unix-socket convention Firecracker has natively, so
//! everything past the launch is the shared [`vmkit_lifecycle::Lifecycle`].
//!
//! Device order, which the guest init relies on: `/dev/vda` the root disk,
//! `/dev/vdb`... the extra disks in request order, then the config disk.

mod accel;
mod machine;
pub mod qmp;
mod snapshot;
pub mod transport;
mod volumes;

pub use accel::choose_accelerator;
pub use machine::{QemuMachine, QMP_SOCKET};
pub use transport::Transport;

/// The QEMU backend: the shared lifecycle over a [`QemuMachine`].
pub fn backend() -> vmkit_lifecycle::Lifecycle {
    vmkit_lifecycle::Lifecycle::new(QemuMachine::new())
}
