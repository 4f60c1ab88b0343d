//! Memory snapshots on Firecracker: `PUT /snapshot/create` of a paused VM,
//! and a fresh Firecracker that `PUT /snapshot/load`s a copy of it.
//!
//! Firecracker's snapshot names the host paths the VM had (drives, vsock
//! socket). A restore therefore overrides the vsock socket
//! (`vsock_override`) and loads the VM paused, points every drive at the
//! new workspace's files (`PATCH /drives/{id}`, post-boot), then resumes
//! it (`PATCH /vm`). The bodies mirror the swagger file's
//! `SnapshotCreateParams`, `SnapshotLoadParams` and `PartialDrive`; the
//! tests check them against it.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use vmkit_lifecycle::{BootPlan, Nic};
use vmkit_protocol::ProtocolError;

use crate::config::{self, ApiCall};

/// The VM state file in a snapshot folder.
pub const STATE_FILE: &str = "vmstate.fc";
/// The guest memory file in a snapshot folder.
pub const MEMORY_FILE: &str = "memory.fc";
/// Snapshots write and read the whole guest memory.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// `SnapshotCreateParams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotCreateParams {
    /// Where the guest memory goes.
    pub mem_file_path: String,
    /// Where the microVM state goes.
    pub snapshot_path: String,
    /// Always `Full`.
    pub snapshot_type: &'static str,
}

/// `MemoryBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryBackend {
    /// `File`.
    pub backend_type: &'static str,
    /// The memory file.
    pub backend_path: String,
}

/// `VsockOverride`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsockOverride {
    /// The new workspace's hybrid-vsock socket.
    pub uds_path: String,
}

/// `SnapshotLoadParams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotLoadParams {
    /// The microVM state file.
    pub snapshot_path: String,
    /// The guest memory.
    pub mem_backend: MemoryBackend,
    /// Loaded paused: drives are repointed first.
    pub resume_vm: bool,
    /// This workspace's vsock socket instead of the source's.
    pub vsock_override: VsockOverride,
    /// kvmclock advanced by the time elapsed since the snapshot.
    pub clock_realtime: bool,
    /// This workspace's TAP device instead of the source's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
}

/// `NetworkOverride`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new TAP device.
    pub host_dev_name: String,
}

/// `PartialDrive` with a new backing file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialDrive {
    /// The drive.
    pub drive_id: String,
    /// Its new file.
    pub path_on_host: String,
}

fn utf8(path: &Path) -> Result<String, ProtocolError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| ProtocolError::invalid(format!("{} is not UTF-8", path.display())))
}

/// `PUT /snapshot/create` into the folder `into`.
pub fn create(into: &Path) -> Result<ApiCall, ProtocolError> {
    Ok(ApiCall::new(
        "/snapshot/create",
        SnapshotCreateParams {
            mem_file_path: utf8(&into.join(MEMORY_FILE))?,
            snapshot_path: utf8(&into.join(STATE_FILE))?,
            snapshot_type: "Full",
        },
        SNAPSHOT_TIMEOUT,
    ))
}

/// The calls that restore `snapshot` into `plan`'s workspace: load paused,
/// repoint the drives, resume.
pub fn restore(plan: &BootPlan, snapshot: &Path) -> Result<Vec<ApiCall>, ProtocolError> {
    let mut calls = vec![ApiCall::new(
        "/snapshot/load",
        SnapshotLoadParams {
            snapshot_path: utf8(&snapshot.join(STATE_FILE))?,
            mem_backend: MemoryBackend {
                backend_type: "File",
                backend_path: utf8(&snapshot.join(MEMORY_FILE))?,
            },
            resume_vm: false,
            vsock_override: VsockOverride {
                uds_path: utf8(&plan.paths.vsock)?,
            },
            clock_realtime: true,
            network_overrides: match &plan.nic {
                Some(Nic::Tap { name, .. }) => vec![NetworkOverride {
                    iface_id: config::IFACE_ID.into(),
                    host_dev_name: name.clone(),
                }],
                _ => Vec::new(),
            },
        },
        SNAPSHOT_TIMEOUT,
    )];
    let mut drives = vec![(config::ROOT_DRIVE.to_owned(), plan.root_disk.clone())];
    for (i, d) in plan.config.disks.iter().enumerate() {
        drives.push((config::disk_drive_id(i), d.path.clone().into()));
    }
    drives.push((
        config::CONFIG_DRIVE.to_owned(),
        plan.paths.config_disk.clone(),
    ));
    for (drive_id, path) in drives {
        calls.push(ApiCall {
            method: "PATCH",
            ..ApiCall::new(
                format!("/drives/{drive_id}"),
                PartialDrive {
                    path_on_host: utf8(&path)?,
                    drive_id,
                },
                config::CONFIGURE_TIMEOUT,
            )
        });
    }
    calls.push(config::vm_state(false));
    Ok(calls)
}
