//! A Firecracker stand-in checked against Firecracker's published API
//! description, for hosts where the real binary cannot run.
#![allow(dead_code)]

pub mod server;
pub mod swagger;

use std::path::Path;

use vmkit_lifecycle::{BootPlan, WorkspacePaths};
use vmkit_protocol::{Disk, MachineConfig};

/// A plan for workspace `name` under `state` with the given extra disks.
pub fn plan(state: &Path, name: &str, disks: Vec<Disk>, detached: bool) -> BootPlan {
    let dir = state.join("workspaces").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let paths = WorkspacePaths::new(&dir).unwrap();
    BootPlan {
        config: MachineConfig {
            disks,
            kernel_args: Some("loglevel=4".into()),
            ..MachineConfig::new(
                state.join("vmlinux").display().to_string(),
                paths.disk.display().to_string(),
                state.display().to_string(),
                256,
                2,
            )
        },
        root_disk: paths.disk.clone(),
        paths,
        kernel_args: "root=/dev/vda rw init=/sbin/microagent-init microagent.config=/dev/vdd"
            .into(),
        detached,
        nic: None,
        restore: None,
    }
}
