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
    /// (see `guest_memory`), not in the workspace folder.
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
            memory: crate::guest_memory::memory_file(dir),
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
