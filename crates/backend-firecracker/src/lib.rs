//! The Firecracker backend: drives the `firecracker` binary over its HTTP
//! API socket.
//!
//! Firecracker needs hardware KVM; this crate never falls back ([`Machine::check`]
//! refuses without it, pointing at `--backend qemu`). Past the launch,
//! everything (state, events, the config disk, the hybrid-vsock guest
//! channel, process supervision) is the shared [`vmkit_lifecycle::Lifecycle`]:
//! this crate only starts the VMM.
//!
//! # What a launch does
//!
//! ```text
//! firecracker --api-sock <workspace>/fc.sock --id <workspace name>
//!     stdin:  a pipe, closed at once   (no serial input)
//!     stdout: <workspace>/console.log  (guest serial console + Firecracker's log lines)
//!     stderr: <workspace>/vmm.log      (with microagent's notes of each API call)
//!
//! PUT /machine-config  {"vcpu_count": N, "mem_size_mib": M}
//! PUT /boot-source     {"kernel_image_path": "<vmlinux>",
//!                       "boot_args": "console=ttyS0 reboot=k panic=-1 pci=off
//!                                     root=/dev/vda rw init=... <kernelArgs>"}
//! PUT /drives/root     {"drive_id": "root", "path_on_host": "<workspace>/rootfs.ext4",
//!                       "is_root_device": true, "is_read_only": false}
//! PUT /drives/disk0 …  one per extra disk, in request order, read-only per its mode
//! PUT /drives/config   the boot-spec disk, read-only
//! PUT /vsock           {"guest_cid": 3, "uds_path": "<workspace>/v.sock"}
//! PUT /actions         {"action_type": "InstanceStart"}
//! ```
//!
//! - The process is started with [`vmkit_lifecycle::spawn_supervised`]: it
//!   dies with a one-shot `run` and outlives a workspace `start`.
//! - The kernel command line is [`vmkit_kernel::boot::firecracker_cmdline_base`]
//!   (see the `vmkit_kernel::boot` docs for each argument: `reboot=k` makes a
//!   guest reboot end Firecracker, which has no ACPI power-off), then the
//!   lifecycle's `root=`/`init=`/config-device arguments, then the user's
//!   `kernelArgs`. Firecracker appends `virtio_mmio.device=` entries itself.
//! - Drive order is device order: Firecracker attaches block devices in the
//!   order they were added, root device first, so the guest sees `/dev/vda`
//!   root, `/dev/vdb`… the extra disks, and the config disk after them, as
//!   the lifecycle's boot spec says.
//! - Vsock: Firecracker implements the hybrid-vsock convention natively
//!   (host→guest: connect to `uds_path`, `CONNECT <port>\n`; guest→host:
//!   Firecracker connects to `<uds_path>_<port>`), so the lifecycle's
//!   channel works unchanged and no helper process is needed.
//! - Any API error kills the process and is returned with Firecracker's
//!   `fault_message` quoted, e.g. `firecracker refused PUT /drives/disk1
//!   (HTTP 400): Unable to create the block device ...`.
//!
//! Every request body follows Firecracker's published API description
//! (its swagger file); the tests run launches against a stand-in that
//! validates each request against that file.
//!
//! ```no_run
//! # fn main() -> Result<(), vmkit_protocol::ProtocolError> {
//! use vmkit_lifecycle::Machine;
//!
//! let machine = vmkit_firecracker::FirecrackerMachine::new();
//! println!("{:?}", machine.host().accelerator);
//! // Or, with state, events and the guest channel:
//! let _backend = vmkit_firecracker::backend();
//! # Ok(()) }
//! ```

pub mod api;
pub mod config;
mod machine;
pub mod snapshot;

pub use machine::{FirecrackerMachine, API_SOCKET};
use vmkit_lifecycle::Lifecycle;
#[cfg(doc)]
use vmkit_lifecycle::Machine;

/// The Firecracker backend: the shared lifecycle over a [`FirecrackerMachine`].
pub fn backend() -> Lifecycle {
    Lifecycle::new(FirecrackerMachine::default())
}
