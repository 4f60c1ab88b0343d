//! The workspace lifecycle shared by the Linux backends.
//!
//! QEMU and Firecracker differ only in how a VMM process is launched. All
//! else is the same and lives here, once: the state machine and its events
//! (appended to `events.jsonl` and handed to an observer for `--json`), the
//! workspace lock, the boot spec on a config disk, the hybrid-vsock channel
//! to the guest init, supervision of the VMM and its helper processes (pid +
//! start time recorded, killed and reaped on every failure path), and `gc`
//! of VMs whose driving command died.
//!
//! A backend implements [`Machine`]; [`Lifecycle`] turns it into a
//! [`vmkit_protocol::Backend`]. A launch builds its result in a
//! [`LaunchGuard`], which kills what it started on any early return.
//!
//! Inside, every command works on one locked workspace (`workspace.rs`:
//! the store, the held lock, the record, the caller's identity), with one
//! module per command: `prepare`, `boot`, `run`, `exec`, `halt`, `gc`, and
//! the [`vmkit_protocol::Backend`] impl in `backend`.

mod backend;
mod boot;
mod exec;
mod gc;
mod guest_memory;
mod halt;
mod lifecycle;
mod machine;
pub mod network;
mod paths;
mod pause;
mod prepare;
mod process;
mod run;
mod snapshot;
pub mod vmm_files;
pub mod volumes;
mod workspace;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use guest_memory::{ensure_memory_dir, remove_orphaned_memory, OrphanedMemory};
pub use lifecycle::{ExecOptions, Lifecycle, Observer, RunOutput};
pub use machine::{
    check_config_files, check_volume_folders, BootPlan, LaunchGuard, Launched, Machine,
    INJECTED_FAILURE,
};
pub use network::Nic;
pub use paths::WorkspacePaths;
pub use process::{spawn_supervised, spawn_supervised_passing, terminate, Supervision};
