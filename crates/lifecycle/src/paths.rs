use std::path::{Path, PathBuf};

use vmkit_protocol::{ErrorCode, ProtocolError};

/// Where a workspace keeps its files. Socket names are short because a Unix
/// socket path must fit in 108 bytes, suffixes included.
#[derive(Debug, Clone)]
pub struct WorkspacePaths {
    /// The workspace folder.
    pub dir: PathBuf,
    /// The workspace's own writable root disk.
    pub disk: PathBuf,
    /// The read-only boot-spec disk, rewritten at every start.
    pub config_disk: PathBuf,
    /// The hybrid-vsock Unix socket (guest ports are reached through it;
    /// guest-initiated connections arrive on `<this>_<port>`).
    pub vsock: PathBuf,
    /// The guest's RAM as a file, for VMMs that keep it in one (QEMU with
    /// the serial transport): removed whenever the VM is gone. On tmpfs
    /// (see [`memory_file`]), not in the workspace folder.
    pub memory: PathBuf,
    /// The guest's serial console.
    pub console_log: PathBuf,
    /// The VMM's own stdout/stderr.
    pub vmm_log: PathBuf,
    /// The network helper's frontend socket (QEMU connects to it).
    pub net_socket: PathBuf,
    /// The VMM's own end of a datagram NIC (Apple VF binds it and
    /// connects to `net_socket`, so the helper can answer it).
    pub net_vmm_socket: PathBuf,
    /// The network helper's `NetConfig`, rewritten at every start.
    pub net_config: PathBuf,
    /// The published-port forwarder's config, rewritten at every start.
    pub publish_config: PathBuf,
    /// The network helper's own messages (capped by a log relay).
    pub net_log: PathBuf,
    /// The egress audit log (one JSON line per decision, rotated to `.1`).
    pub egress_log: PathBuf,
}

/// Longest path `sockaddr_un` holds, less the `_<port>` suffix we append.
const MAX_SOCKET_PATH: usize = 107 - 6;

impl WorkspacePaths {
    /// The paths for a workspace folder.
    pub fn new(dir: &Path) -> Result<Self, ProtocolError> {
        let vsock = dir.join("v.sock");
        if vsock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ProtocolError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "state folder path is too long for a Unix socket ({} > {MAX_SOCKET_PATH} bytes): {}; use a shorter --state-dir",
                    vsock.as_os_str().len(),
                    vsock.display()
                ),
            ));
        }
        Ok(WorkspacePaths {
            dir: dir.to_owned(),
            disk: dir.join("rootfs.ext4"),
            config_disk: dir.join("config.img"),
            vsock,
            memory: memory_file(dir),
            console_log: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
            net_socket: dir.join("n.sock"),
            net_vmm_socket: dir.join("nv.sock"),
            net_config: dir.join("net.json"),
            publish_config: dir.join("publish.json"),
            net_log: dir.join("net.log"),
            egress_log: dir.join("egress.jsonl"),
        })
    }
}

/// Where a VM's RAM file lives: in a private folder on tmpfs
/// (`/dev/shm/microagent-<uid>/`), named by a digest of the workspace
/// folder, so every later command finds it. Not in the workspace folder:
/// guest RAM on a disk-backed file system is written back to the disk
/// while the VM runs, which made a short run three tenths of a second
/// slower here and loads the disk for every VM; tmpfs pages are the same
/// shared memory a memfd would give. Hosts without `/dev/shm` keep it in
/// the workspace folder.
fn memory_file(dir: &Path) -> PathBuf {
    use sha2::Digest;
    let shm = Path::new(SHM);
    if !shm.is_dir() {
        return dir.join("memory.ram");
    }
    let digest = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    memory_dir(shm).join(format!("{}.ram", &hex::encode(digest)[..32]))
}

const SHM: &str = "/dev/shm";

fn memory_dir(shm: &Path) -> PathBuf {
    shm.join(format!("microagent-{}", nix::unistd::getuid()))
}

/// Makes the folder of [`WorkspacePaths::memory`] if it is on tmpfs:
/// mode 0700 and ours, since guest RAM holds whatever the guest knows. A
/// folder of that name that another user made, or a symlink, is refused.
pub fn ensure_memory_dir(paths: &WorkspacePaths) -> Result<(), ProtocolError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let Some(dir) = paths.memory.parent() else {
        return Ok(());
    };
    if dir == paths.dir {
        return Ok(());
    }
    let refuse = |why: String| {
        ProtocolError::new(
            ErrorCode::Internal,
            format!("the guest RAM folder {}: {why}", dir.display()),
        )
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refuse(e.to_string())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(refuse(
            "it is not a folder of this user's; remove it".into(),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| refuse(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ram_file_is_on_tmpfs_named_by_the_workspace_folder() {
        let a = WorkspacePaths::new(Path::new("/s/workspaces/a")).unwrap();
        let again = WorkspacePaths::new(Path::new("/s/workspaces/a")).unwrap();
        let b = WorkspacePaths::new(Path::new("/t/workspaces/a")).unwrap();
        assert_eq!(a.memory, again.memory);
        assert_ne!(a.memory, b.memory);
        assert!(
            a.memory.starts_with(memory_dir(Path::new(SHM))),
            "{:?}",
            a.memory
        );
    }

    #[test]
    fn the_ram_folder_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let paths = WorkspacePaths::new(&dir.path().join("ws")).unwrap();
        ensure_memory_dir(&paths).unwrap();
        let ram_dir = paths.memory.parent().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ram_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
