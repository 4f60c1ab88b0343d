//! Host folders as volumes: the names both sides use for them. The VMM
//! exports volume `i` as virtio-fs tag `vol<i>`; the boot spec tells the
//! guest init to mount that tag at the volume's guest path.

use std::path::{Path, PathBuf};

use vmkit_channel::VolumeMount;
use vmkit_protocol::Volume;

/// The virtio-fs tag of the `index`-th volume.
pub fn tag(index: usize) -> String {
    format!("vol{index}")
}

/// The vhost-user socket of the `index`-th volume's file server, in the
/// workspace folder (short: Unix socket paths are limited).
pub fn socket(workspace_dir: &Path, index: usize) -> PathBuf {
    workspace_dir.join(format!("fs{index}.sock"))
}

/// What the guest init mounts, in order.
pub fn mounts(volumes: &[Volume]) -> Vec<VolumeMount> {
    volumes
        .iter()
        .enumerate()
        .map(|(i, v)| VolumeMount {
            tag: tag(i),
            mountpoint: v.guest_path.clone(),
            read_only: v.read_only,
        })
        .collect()
}
