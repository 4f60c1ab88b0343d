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
//! [`vmkit_protocol::Backend`].

mod gc;
mod lifecycle;
mod machine;
mod paths;
mod pause;
mod process;
mod snapshot;
pub mod vmm_files;

pub use lifecycle::{ExecOptions, Lifecycle, Observer, RunOutput};
pub use machine::{check_config_files, BootPlan, Launched, Machine};
pub use paths::WorkspacePaths;
pub use process::{spawn_supervised, terminate, Supervision};
