//! Host folders: virtio-fs devices the host exported, mounted at the
//! paths the boot spec names. The host's file server enforces read-only
//! volumes; mounting them `ro` here as well gives a clean EROFS instead of
//! a refused request.

use nix::mount::{mount, MsFlags};
use vmkit_channel::VolumeMount;

/// Mounts every volume, in order (later ones may nest in earlier ones).
pub fn mount_volumes(volumes: &[VolumeMount]) -> Result<(), String> {
    for v in volumes {
        std::fs::create_dir_all(&v.mountpoint)
            .map_err(|e| format!("mkdir {}: {e}", v.mountpoint))?;
        let mut flags = MsFlags::MS_NODEV;
        if v.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(
            Some(v.tag.as_str()),
            v.mountpoint.as_str(),
            Some("virtiofs"),
            flags,
            None::<&str>,
        )
        .map_err(|e| {
            format!(
                "mounting volume {} (virtiofs) at {}: {e}",
                v.tag, v.mountpoint
            )
        })?;
    }
    Ok(())
}
